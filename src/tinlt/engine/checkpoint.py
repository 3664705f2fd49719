"""Checkpoints: a format that loads without running code, atomic writes, clear errors, RNG state.

A checkpoint is a dict of tensors and plain Python values (str, int, float, bool, None,
lists, tuples, dicts) only, so every path loads it with ``torch.load(weights_only=True)``:
a file whose pickle names anything else (a class, a function, a numpy object) is refused
with one line that says why, and no code in it runs. :func:`to_plain` converts what the
trainer holds (numpy arrays and scalars, RNG states) on the way in.

Checkpoints from tinlt before this format pickled numpy RNG states. They load only when
the user says the file is trusted (``--trust-checkpoint`` or ``TINLT_TRUST_CHECKPOINT=1``):
then a full unpickle runs, with a warning, as it would run any code inside the file.

Writes go through :func:`tinlt.fileio.atomic_target` (temporary file, fsync, rename), so a
kill or a full disk during a save never leaves a half-written file under the final name,
and the previous checkpoint survives. Which file a run folder means is :mod:`.run_folder`'s.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import __version__, fileio
from ..errors import TinltError

TRUST_ENV = "TINLT_TRUST_CHECKPOINT"
_trusted = False


def trust_pickled_checkpoints(enable: bool = True) -> None:
    """Allow full unpickling for this process (``--trust-checkpoint``); only for files the user trusts."""
    global _trusted
    _trusted = bool(enable)


def _trust() -> bool:
    return _trusted or os.environ.get(TRUST_ENV) == "1"


# --------------------------------------------------------------------------- plain values


def to_plain(obj: Any) -> Any:
    """``obj`` as tensors and plain Python values: numpy arrays become tensors, numpy scalars
    and subclasses of plain types (e.g. ``torch.__version__``) their plain base type."""
    if obj is None or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (np.generic, np.ndarray)):
        return torch.from_numpy(np.ascontiguousarray(obj).copy()) if isinstance(obj, np.ndarray) else obj.item()
    for plain in (bool, int, float, str):  # bool first: it is an int
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, dict):
        items = ((k if isinstance(k, (int, str)) else str(k), to_plain(v)) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if type(obj) in (list, tuple) else list(map(to_plain, obj))
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} as a plain value")


# --------------------------------------------------------------------------- writing


def _write_error(exc: BaseException, path: Path) -> str:
    """The cause of a failed write in words: the OS error, or for torch's own writer the
    disk space left (its 'enforce fail at inline_container.cc' names no cause)."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        return f"no space left on device ({free / 2**20:.0f} MiB free)"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def save_atomic(obj: Any, path: str | Path, *, last_good: Optional[Path] = None) -> Path:
    """Write checkpoint ``obj`` (made plain) to ``path``, all or nothing; TinltError on failure."""
    path = Path(path)
    state = to_plain(obj)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_target(path, shared=False) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)  # through a Python file, a full disk is an OSError with its errno
    except (OSError, RuntimeError) as e:
        kept = last_good if last_good is not None else (path if path.is_file() else None)
        raise TinltError(f"cannot write checkpoint {path}: {_write_error(e, path)}; "
                         f"last good checkpoint: {kept or 'none yet'}") from None
    return path


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are fresh CPU copies: what a background write saves while
    training goes on changing the live weights and optimizer state in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v)) for k, v in obj.items()) if isinstance(obj, OrderedDict) \
            else {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """One checkpoint write at a time, on a thread: the trainer copies its state to host memory
    and goes on (under torchrun the other ranks no longer wait at a barrier for rank 0's
    disk). :meth:`wait` joins the write and raises its error, so none is lost: the trainer
    waits before the next write, before reading best.pt and before it exits."""

    def __init__(self) -> None:
        import threading

        self._threading = threading
        self._thread = None
        self._error: Optional[BaseException] = None

    def submit(self, write) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as e:  # noqa: BLE001 - handed to wait(), raised in the trainer's thread
                self._error = e

        self._thread = self._threading.Thread(target=run, name="tinlt-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished checkpoint under another name, with the same all-or-nothing rule."""
    dst = Path(dst)
    try:
        with fileio.atomic_target(dst, shared=False) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as e:
        raise TinltError(f"cannot write checkpoint {dst}: {_write_error(e, dst)}; last good checkpoint: {src}") from None
    return dst


def model_state(model: torch.nn.Module, trainable_only: bool = False) -> dict:
    """The model's state dict; ``trainable_only``: only the parameters that train, and buffers."""
    state = model.state_dict()
    if not trainable_only:
        return state
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return type(state)((k, v) for k, v in state.items() if k in keep)


def check_lean(cfg) -> None:
    """``train.save_trainable_only`` needs base weights that can be loaded again: an open_clip
    checkpoint (``model.pretrained``) or the offline towers' packaged weights, not random ones."""
    from ..models.registry import registered_names

    m = cfg.model
    packaged = m.name in registered_names() and m.get("pretrained_image", True) and m.get("pretrained_text", True)
    if cfg.train.get("save_trainable_only", False) and not (m.get("pretrained") or packaged):
        raise TinltError(f"config key 'train.save_trainable_only' needs base weights to point to, but model "
                         f"'{m.name}' starts from random weights (set model.pretrained, or save whole checkpoints)")


def model_entries(model: torch.nn.Module, cfg) -> dict:
    """A checkpoint's model entries: ``model`` (all tensors, or with ``train.save_trainable_only``
    the tuned ones), ``trainable_only``, and ``base``, the weights a lean checkpoint points to."""
    lean = bool(cfg.train.get("save_trainable_only", False))
    base = {k: cfg.model.get(k) for k in ("name", "pretrained", "pretrained_image", "pretrained_text")}
    return {"model": model_state(model, lean), "trainable_only": lean, "base": base if lean else None}


def load_model_state(model: torch.nn.Module, ckpt: dict, where: str = "checkpoint") -> None:
    """Load ``ckpt["model"]``: every tensor, or for a trainable-only checkpoint the tuned ones
    onto a model built from the base weights (checked: nothing that trains may be missing)."""
    if not ckpt.get("trainable_only"):
        model.load_state_dict(ckpt["model"])
        return
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    lost = sorted((set(missing) & trains) | set(unexpected))
    if lost:
        raise TinltError(f"{where}: a trainable-only checkpoint that does not fit this model ({lost[0]} ...)")


def check_finite(model: torch.nn.Module, step: int, last_good: Path | None) -> None:
    """Never replace the last good checkpoint with diverged weights (every rank holds the same ones)."""
    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
        raise TinltError(
            f"non-finite weights after optimizer step {step}, not saved; last good checkpoint: "
            f"{last_good or 'none yet'}; lower optim.lr or check the data"
        )


# --------------------------------------------------------------------------- reading


def _unsafe_global(exc: BaseException) -> Optional[str]:
    """The class or function a refused pickle names (torch's messages: 'Unsupported global:
    GLOBAL x.y' or 'unsupported GLOBAL x.y whose module x is blocked'), or None (garbage)."""
    found = re.search(r"(?i)unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", str(exc))
    return found.group(1) if found else None


def _refused(path: Path, name: str) -> TinltError:
    what = f" ({name})" if name else ""
    return TinltError(
        f"checkpoint {path} refused: it pickles an object other than tensors and plain values{what}, and loading "
        f"it could run code; tinlt < 0.2 wrote such files (numpy RNG states). If you made it or trust its source, "
        f"load it with --trust-checkpoint (or {TRUST_ENV}=1)"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint file's dict, loaded with ``weights_only=True`` unless the user trusts pickles."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise TinltError(f"checkpoint not found: {path}")
    trusted = _trust()
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if not trusted and _unsafe_global(e):
            raise _refused(path, _unsafe_global(e)) from None
        raise TinltError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)}); use an earlier one") from None
    except OSError as e:
        raise TinltError(f"checkpoint {path}: cannot read ({os.strerror(e.errno) if e.errno else e})") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises RuntimeError, KeyError (tarfile), EOFError, ...
        raise TinltError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)}); use an earlier one") from None
    if trusted:
        print(f"tinlt: warning: {path} loaded with full unpickling ({TRUST_ENV}/--trust-checkpoint): "
              "only do this for files you trust", file=sys.stderr)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise TinltError(f"{path} is not a tinlt checkpoint (no 'model'/'config' entries)")
    return ckpt


def _first_line(exc: BaseException) -> str:
    """The cause in torch.load's long messages: the unpickler's complaint, or the first line."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "legacy .tar format" in text:
        return "not a zip archive of tensors"
    return (text.strip().splitlines() or [type(exc).__name__])[0][:200]


# --------------------------------------------------------------------------- seeds, RNG state, versions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    import open_clip

    return {
        "tinlt": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "numpy": np.__version__,
    }


def rng_state() -> dict:
    """Python's, numpy's and torch's generator states as plain values and tensors."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = st["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)  # old files: an ndarray
    np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def gather_rng_state():
    """This process's RNG state, or every rank's (a list, in rank order) under DDP."""
    import torch.distributed as dist

    from .distributed import is_dist

    st = rng_state()
    if not is_dist():
        return st
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, st)
    return out
