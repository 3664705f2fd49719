"""Image-tower outputs cached on disk, so a fixed image tower runs once per dataset, not per epoch.

Owns: deciding whether a model's image path is fixed (``cacheable_kind``), the cache key,
building and reading cache entries (``FeatureStore``), and the dataset that feeds cached
features to the training loop and to evaluation (``FeatureDataset``).

What is cached depends on how much of the image path is fixed during training:

* ``split``: the tower's ``forward_split`` output (last spatial map + the ViT class token),
  when the tower is frozen but TIN's visual attention (or a tower's new projection) trains.
  Attention and ``forward_merge`` still run every step.
* ``embedding``: the un-normalised ``forward_merge`` output, when nothing in the image path
  trains (attention off or fixed, e.g. ``model.freeze_features``): 512 floats per image
  instead of a 768x7x7 map.
* ``prefix``: the activations after the tower's first n blocks (``forward_prefix``), when the
  tower trains but only from block n on (``last_k``, or a tuning method limited to the last
  blocks with ``model.tune_image.blocks``): the frozen blocks run once per dataset, the rest
  every step.

"Fixed" is checked, not assumed: the path must hold no module whose output depends on
training mode while in training mode (BatchNorm, dropout), and its output, computed with
gradients enabled, must not require grad, i.e. no trainable parameter reaches it.

A cache entry is a folder ``<root>/<model>-<kind>-<hash>/`` of float32 ``.npy`` arrays
(memory-mapped when read) and ``meta.json``. The hash covers everything the features
depend on: model name, tower class, a SHA-256 of the fixed weights, the preprocessing
(image size, mean/std, the transform's repr, the JPEG draft size), the data (each path
with its size and mtime, or the bytes of in-memory arrays), the compute precision and
device type. Change any of them and a new entry is built; old entries are never read
again (``tinlt cache prune`` removes them, see cache_entries.py). Entries are written to a temporary folder
and renamed into place, so an interrupted build leaves nothing that could be read.

Features are computed in the precision training uses (``train.amp``: bf16 autocast on
CUDA, fp32 on CPU) and stored as float32, which holds bf16/fp16 values exactly; on CPU
the cached path's logits equal the uncached path's to float rounding (tested to 1e-5).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.base import PrefixFeatures, SplitFeatures
from ..models.tin import TIN, ImageEmbedding
from .cache_entries import default_cache_dir, resolve_cache_dir, touch  # noqa: F401 (re-exported)
from .device import autocast_for
from .progress import echo, progress

FORMAT_VERSION = 1
KINDS = ("split", "embedding", "prefix")
ARRAYS = {"split": ("fmap", "aside"), "embedding": ("embedding",), "prefix": ("prefix",)}


# --------------------------------------------------------------------------- batches


class CachedSplit(SplitFeatures):
    """A batch of cached ``forward_split`` outputs that moves like a tensor (``.to``), so
    loops written for image batches (``images.to(device)``) take it unchanged."""

    __slots__ = ()

    def to(self, *args: Any, **kwargs: Any) -> "CachedSplit":
        aside = None if self.aside is None else self.aside.to(*args, **kwargs)
        return CachedSplit(self.fmap.to(*args, **kwargs), aside)


class CachedEmbedding(ImageEmbedding):
    """A batch of cached ``forward_merge`` outputs; ``.to`` like a tensor."""

    __slots__ = ()

    def to(self, *args: Any, **kwargs: Any) -> "CachedEmbedding":
        return CachedEmbedding(self.embedding.to(*args, **kwargs))


class CachedPrefix(PrefixFeatures):
    """A batch of cached ``forward_prefix`` outputs; ``.to`` like a tensor."""

    __slots__ = ()

    def to(self, *args: Any, **kwargs: Any) -> "CachedPrefix":
        return CachedPrefix(self.x.to(*args, **kwargs), self.blocks)


def _already_collated(batch):
    return batch


class FeatureDataset(Dataset):
    """Cached features of one split as ``(features, label, index)``, like ``ImageDataset``.

    Keys may be indices or ``(index, sample_seed)`` pairs (``EpochOrder``; the seed is
    unused: cached features had no random augmentation). ``__getitems__`` reads a whole
    batch with one fancy index per array; use ``collate_fn`` with a DataLoader. The arrays
    are opened lazily (and not pickled), so worker processes map the files themselves.
    """

    collate_fn = staticmethod(_already_collated)

    def __init__(self, entry: Path, kind: str, labels: np.ndarray, prefix_blocks: int = 0) -> None:
        self.entry = Path(entry)
        self.kind = kind
        self.prefix_blocks = int(prefix_blocks)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_index = np.load(self.entry / "source_index.npy")
        self._arrays: Optional[dict[str, np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.source_index)

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            names = [n for n in ARRAYS[self.kind] if (self.entry / f"{n}.npy").is_file()]
            self._arrays = {n: np.load(self.entry / f"{n}.npy", mmap_mode="r") for n in names}
        return self._arrays

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def _batch(self, index: np.ndarray):
        arrays = self.arrays()
        feats = {n: torch.from_numpy(np.ascontiguousarray(a[index])) for n, a in arrays.items()}
        if self.kind == "split":
            return CachedSplit(feats["fmap"], feats.get("aside"))
        if self.kind == "prefix":
            return CachedPrefix(feats["prefix"], self.prefix_blocks)
        return CachedEmbedding(feats["embedding"])

    def __getitems__(self, keys: list):
        index = np.fromiter((k[0] if isinstance(k, tuple) else k for k in keys), dtype=np.int64, count=len(keys))
        source = self.source_index[index]  # an undecodable file's stand-in, as ImageDataset picked it
        return self._batch(index), torch.from_numpy(self.labels[source]), torch.from_numpy(source)

    def __getitem__(self, key):
        batch, labels, source = self.__getitems__([key])
        one = type(batch)(*(t[0] if isinstance(t, torch.Tensor) else t for t in batch))
        return one, int(labels[0]), int(source[0])


# --------------------------------------------------------------------------- is the path fixed?


def _mode_dependent(module: nn.Module) -> list[str]:
    """Submodules in training mode whose output depends on it (norm statistics, dropout)."""
    found = []
    for name, m in module.named_modules():
        if not m.training:
            continue
        stats = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and (
            m.track_running_stats or isinstance(m, nn.modules.batchnorm._BatchNorm)
        )
        drop = any(float(getattr(m, attr, 0) or 0) > 0 for attr in ("p", "drop_prob", "prob")) and (
            "drop" in type(m).__name__.lower()
        )
        mha = isinstance(m, nn.MultiheadAttention) and m.dropout > 0
        if stats or drop or mha:
            found.append(name or type(m).__name__)
    return found


def _tensors(out: Any) -> Iterable[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)


def _any_trainable(*modules: Optional[nn.Module]) -> bool:
    return any(p.requires_grad for m in modules if m is not None for p in m.parameters())


def frozen_prefix(tower: nn.Module) -> int:
    """How many leading blocks of the tower (``prefix_blocks``) neither train nor change with
    the mode, with a frozen stem before them; 0 when there is no such prefix."""
    blocks = tower.prefix_blocks()
    if not blocks or any(p.requires_grad for p in tower.stem_parameters()) or getattr(tower, "prompts", None) is not None:
        return 0
    n = 0
    for b in blocks:
        if _any_trainable(b) or _mode_dependent(b):
            break
        n += 1
    return n


def cacheable_kind(model: TIN, image_size: int) -> tuple[Optional[str], str]:
    """("embedding" | "split" | "prefix" | None, reason when None) for ``model`` as it will train.

    Runs one zero image through the tower (with gradients on) only when some tower
    parameters train, to see whether they act before the cached point.
    """
    was_training = model.training
    model.train(True)  # the mode training runs in; frozen towers stay in eval mode
    try:
        tower, attention = model.image_tower, model.attention
        busy = _mode_dependent(tower)
        if busy:
            return None, f"the image tower trains (its {busy[0]} is in training mode)"
        device = next(tower.parameters(), torch.empty(0)).device
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        split = None
        if _any_trainable(tower):
            with torch.enable_grad():
                split = tower.forward_split(probe)
            if any(t.requires_grad for t in _tensors(split)):
                n = frozen_prefix(tower)
                if n:
                    with torch.enable_grad():
                        if not tower.forward_prefix(probe, n).requires_grad:
                            return "prefix", ""
                if not model.is_tuned("image"):
                    return None, "the image tower trains (model.freeze_image is false)"
                return None, "the image tower trains from its first block on (model.tune_image: no frozen prefix)"
        if attention is not None and (_any_trainable(attention) or _mode_dependent(attention)):
            return "split", ""
        if _any_trainable(tower):
            with torch.enable_grad():
                fmap, aside = split
                emb = tower.forward_merge(attention(fmap) if attention is not None else fmap, aside)
            if emb.requires_grad:
                return "split", ""
        return "embedding", ""
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- keys


def _hash_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_hash(model: TIN, kind: str) -> str:
    """SHA-256 of the fixed tensors the cached output depends on: the tower's (and for
    ``embedding`` the attention's) parameters that do not train, and their buffers."""
    parts = [("image_tower.", model.image_tower)]
    if kind == "embedding" and model.attention is not None:
        parts.append(("attention.", model.attention))
    named = []
    for prefix, module in parts:
        named += [(prefix + n, p) for n, p in module.named_parameters() if not p.requires_grad]
        named += [(prefix + "buffer." + n, b) for n, b in module.named_buffers()]
    return _hash_tensors(named)


def data_hash(samples) -> str:
    """SHA-256 of a split's images: path + size + mtime per file, or the array bytes."""
    h = hashlib.sha256()
    if samples.in_memory:
        arr = np.ascontiguousarray(samples.items)
        h.update(f"array|{arr.dtype}|{arr.shape}\n".encode())
        h.update(memoryview(arr).cast("B"))
        return h.hexdigest()
    for path in samples.items:
        try:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    return h.hexdigest()


def _precision(device: torch.device, amp: str) -> str:
    if device.type != "cuda" or amp == "off":
        return "fp32"
    return "fp16" if amp == "fp16" else "bf16"


# --------------------------------------------------------------------------- the store


class FeatureStore:
    """Builds or opens cache entries for one model (fixed weights) and one preprocessing.

    ``dataset(samples)`` returns the split's ``FeatureDataset``, building the entry first
    when no valid one exists. Under DDP the main process builds and the others wait at
    ``barrier``; a rank that still finds no entry (a node-local cache) builds its own.
    """

    def __init__(
            self,
            model: TIN,
            *,
            root: str | os.PathLike,
            kind: str,
            transform: Callable,
            image_size: int,
            model_name: str,
            device: torch.device,
            amp: str = "auto",
            batch_size: int = 256,
            num_workers: int = 0,
            is_main: bool = True,
            barrier: Callable[[], None] = lambda: None,
            draft_size: Optional[int] = None,
            prefix_blocks: int = 0,
    ) -> None:
        from ..data.dataset import DEFAULT_DRAFT_SIZE

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.model, self.root, self.kind = model, Path(root), kind
        self.transform, self.device, self.amp = transform, device, amp
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.is_main, self.barrier = is_main, barrier
        self.prefix_blocks = int(prefix_blocks) if kind == "prefix" else 0
        self.draft_size = DEFAULT_DRAFT_SIZE if draft_size is None else draft_size
        tower = model.image_tower
        self.base_key = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "model": model_name,
            "tower": f"{type(tower).__module__}.{type(tower).__qualname__}",
            "weights": weights_hash(model, kind),
            "image_size": int(image_size),
            "mean": [float(m) for m in tower.image_mean],
            "std": [float(s) for s in tower.image_std],
            "transform": repr(transform),
            "draft_size": self.draft_size,
            "precision": _precision(device, amp),
            "device": device.type,
            **({"prefix_blocks": self.prefix_blocks} if kind == "prefix" else {}),
        }
        self._name = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)[:40] or "model"
        self._open: dict[int, FeatureDataset] = {}
        self.built: list[Path] = []  # entries this store computed (tests, logs)
        self.build_seconds: list[float] = []  # wall time of each build (benchmarks)

    # -- keys and entries ----------------------------------------------------------
    def key(self, samples) -> dict:
        return {**self.base_key, "num_samples": len(samples), "data": data_hash(samples)}

    def entry_for(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / f"{self._name}-{self.kind}-{digest}"

    def _valid(self, entry: Path, key: dict) -> bool:
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if json.dumps(meta["key"], sort_keys=True) != json.dumps(key, sort_keys=True):
                return False
            n = key["num_samples"]
            if np.load(entry / "source_index.npy", mmap_mode="r").shape != (n,):
                return False
            for name, shape in meta["arrays"].items():
                if np.load(entry / f"{name}.npy", mmap_mode="r").shape != tuple(shape):
                    return False
            return True
        except (OSError, ValueError, KeyError, TypeError):  # missing, truncated or foreign files
            return False

    # -- public --------------------------------------------------------------------
    def dataset(self, samples, *, desc: str = "features") -> FeatureDataset:
        """The split's cached features (built now if needed); memoised per ``samples`` object."""
        if id(samples) in self._open:
            return self._open[id(samples)]
        key = self.key(samples)
        entry = self.entry_for(key)
        if self.is_main and not self._valid(entry, key):
            self._build_once(samples, entry, key, desc)
        self.barrier()
        if not self._valid(entry, key):
            self._build_once(samples, entry, key, desc)
        touch(entry)  # recency for `tinlt cache prune`
        ds = FeatureDataset(entry, self.kind, samples.labels, prefix_blocks=self.prefix_blocks)
        self._open[id(samples)] = ds
        return ds

    # -- building ------------------------------------------------------------------
    @torch.no_grad()
    def _compute(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast_for(self.device, self.amp):
            if self.kind == "embedding":
                return {"embedding": self.model.encode_image(images, normalize=False)}
            if self.kind == "prefix":
                return {"prefix": self.model.image_tower.forward_prefix(images, self.prefix_blocks)}
            fmap, aside = self.model.image_tower.forward_split(images)
            return {"fmap": fmap} if aside is None else {"fmap": fmap, "aside": aside}

    def _build_once(self, samples, entry: Path, key: dict, desc: str) -> None:
        """Build the entry unless another process (a sweep's other worker) is building it or
        just did: they queue on a lock file beside it, and the second finds it valid."""
        import fcntl

        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(entry.with_name(f"{entry.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
            if not self._valid(entry, key):
                self._build(samples, entry, key, desc)

    def _build(self, samples, entry: Path, key: dict, desc: str) -> None:
        from ..data.dataset import ImageDataset

        start = time.time()
        n = len(samples)
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)  # stale or damaged: same key, so ours to replace
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        loader = DataLoader(
            ImageDataset(samples, self.transform, draft_size=self.draft_size),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),  # worker seeds must not draw from the global RNG
        )
        arrays: dict[str, np.ndarray] = {}
        source = np.zeros(n, dtype=np.int64)
        was_training = self.model.training
        self.model.eval()  # the cached path is mode-independent (cacheable_kind); eval is the safe side
        try:
            pos = 0
            for images, _, index in progress(loader, desc=f"caching {desc}", unit="batch"):
                outs = self._compute(images.to(self.device, non_blocking=True))
                for name, t in outs.items():
                    if name not in arrays:
                        arrays[name] = np.lib.format.open_memmap(
                            tmp / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, *t.shape[1:])
                        )
                    arrays[name][pos : pos + len(t)] = t.float().cpu().numpy()
                source[pos : pos + len(index)] = index.numpy()
                pos += len(index)
        finally:
            self.model.train(was_training)
        for a in arrays.values():
            a.flush()
        np.save(tmp / "source_index.npy", source)
        meta = {"key": key, "arrays": {k: list(a.shape) for k, a in arrays.items()}, "created": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        del arrays
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        self.built.append(entry)
        self.build_seconds.append(time.time() - start)
        size = sum(f.stat().st_size for f in entry.glob("*.npy")) / 2**20
        echo(f"feature cache: {desc}: {n} images in {time.time() - start:.1f}s, {size:.1f} MiB -> {entry}")


def feature_store_for(
        model: TIN,
        cfg,
        *,
        transform: Callable,
        device: torch.device,
        is_main: bool = True,
        barrier: Callable[[], None] = lambda: None,
) -> Optional[FeatureStore]:
    """The run's store per ``train.feature_cache``, or None when it is off or the image path
    trains (a one-line notice says why). The caller decides which splits may use it: the
    training split only with ``data.augment: none`` (random crops cannot be cached)."""
    root = resolve_cache_dir(cfg.train.get("feature_cache", ""))
    if root is None:
        return None
    kind, why = cacheable_kind(model, int(cfg.data.image_size))
    if kind is None:
        echo(f"train.feature_cache: not used: {why}")
        return None
    if cfg.data.augment != "none":
        echo(f"train.feature_cache: evaluation splits only (data.augment = {cfg.data.augment!r} draws random crops)")
    return FeatureStore(
        model,
        root=root,
        kind=kind,
        transform=transform,
        image_size=int(cfg.data.image_size),
        model_name=str(cfg.model.name),
        device=device,
        amp=cfg.train.amp,
        batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.data.num_workers,
        is_main=is_main,
        barrier=barrier,
        prefix_blocks=frozen_prefix(model.image_tower) if kind == "prefix" else 0,
    )
