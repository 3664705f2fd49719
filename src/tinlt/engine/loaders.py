"""Transforms and data loaders: what turns a split into batches for training or evaluation.

The training loader reads its order from ``EpochOrder`` (sampling.py), re-read at every
``iter()``, so one loader with persistent workers serves every epoch and a resumed run
starts mid-epoch. Evaluation loaders shard without padding (``Shard``) and, when a
``FeatureStore`` is given, read the image tower's outputs from disk instead of images.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from .distributed import DistInfo
from .sampling import EpochOrder, SeededDataset, Shard


def quiet_worker(_worker_id: int) -> None:
    """Data-loader workers leave SIGINT / SIGTERM to the main process, which saves and stops
    the run; otherwise a SIGTERM to the process group (Slurm, Kubernetes) kills the workers
    first and the run ends in a worker traceback instead of a resumable checkpoint."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_transforms(model, cfg: DictConfig):
    """(train, eval) transforms for ``model``'s image tower at ``data.image_size``; with
    ``data.tta`` the eval transform gives a stack of test-time views per image. Training
    images stay uint8 until the trainer normalises them on its device (``normalize_batch``)."""
    from ..data.transforms import build_transforms

    tower = model.image_tower
    train_tf = build_transforms(cfg.data.image_size, tower.image_mean, tower.image_std, train=True,
                                augment=cfg.data.augment, uint8=True)
    return train_tf, eval_transform(model, cfg)


def eval_transform(model, cfg: DictConfig, *, views: bool = True):
    """The evaluation transform; ``views=False``: one view per image whatever ``data.tta`` says
    (the feature cache, classifier initialisation, export's parity images)."""
    from ..data.transforms import build_transforms

    tower = model.image_tower
    tta = cfg.data.get("tta", "none") if views else "none"
    return build_transforms(cfg.data.image_size, tower.image_mean, tower.image_std, train=False, augment="none",
                            tta=tta, tta_expand=cfg.data.get("tta_expand", 24))


@functools.lru_cache(maxsize=4)
def _open_image_cache(path: str):
    from ..data.image_cache import ImageCache

    return ImageCache(path)


def image_dataset(samples, transform, cfg: DictConfig, draft_size=None):
    """An ImageDataset that reads ``data.image_cache`` when one is set, and says once how
    many of the split's images it does not hold (those are decoded from their files)."""
    from ..data.dataset import DEFAULT_DRAFT_SIZE, ImageDataset
    from .progress import echo

    setting = str(cfg.data.get("image_cache", "") or "").strip()
    cache = _open_image_cache(setting) if setting else None
    ds = ImageDataset(samples, transform, draft_size=draft_size or DEFAULT_DRAFT_SIZE, image_cache=cache)
    if cache is not None and ds.uncached:
        echo(f"data.image_cache: {ds.uncached} of {len(samples)} images of {samples.source or 'a split'} "
             "are not in the cache (new or changed files); decoding those from their files")
    return ds


def eval_loader(samples, transform, cfg: DictConfig, dist_info: DistInfo = DistInfo(),
                device: torch.device = torch.device("cpu"), features=None, persistent: bool = False) -> DataLoader:
    """``features``: a FeatureStore (engine/feature_cache.py) to read the image tower's outputs from.
    ``persistent``: its workers survive between passes (the trainer's loader, used every epoch;
    restarting them cost a worker start-up per epoch)."""
    ds = features.dataset(samples, desc="eval") if features is not None else image_dataset(samples, transform, cfg)
    workers = 0 if features is not None else cfg.data.num_workers
    return DataLoader(
        ds,
        batch_size=cfg.train.eval_batch_size,
        sampler=Shard(len(ds), dist_info.rank, dist_info.world_size),
        num_workers=workers,
        collate_fn=getattr(ds, "collate_fn", None),
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
        worker_init_fn=quiet_worker if cfg.data.num_workers and features is None else None,
    )


def epoch_order(train_samples, cfg: DictConfig, dist_info: DistInfo) -> EpochOrder:
    """The training sample order: instance sampling shuffles inside EpochOrder, re-balancing
    samplers draw theirs; either global order is the same for any number of processes."""
    from ..data.samplers import build_sampler

    base = None if cfg.data.sampler == "instance" else build_sampler(
        cfg.data.sampler, train_samples.labels, seed=cfg.train.seed, rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    # compiled: whole global batches only, so N processes drop the same samples one process does
    whole = cfg.optim.batch_size * dist_info.world_size if cfg.train.get("compile", False) else 0
    return EpochOrder(len(train_samples), seed=cfg.train.seed, base=base, rank=dist_info.rank,
                      world_size=dist_info.world_size, whole=whole)


def train_loader(dataset, order: EpochOrder, cfg: DictConfig, device: torch.device,
                 num_workers: Optional[int] = None) -> DataLoader:
    """Built once: persistent workers survive epochs; ``order.set_epoch`` still takes effect.
    The last short batch is dropped when the model is compiled (``optim.drops_last``)."""
    from .optim import drops_last

    workers = cfg.data.num_workers if num_workers is None else num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        sampler=order,
        num_workers=workers,
        collate_fn=getattr(dataset, "collate_fn", None),
        pin_memory=device.type == "cuda",
        drop_last=drops_last(cfg, len(order.order())),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # leave the global RNG alone
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=quiet_worker if workers > 0 else None,
    )


def train_dataset(train_samples, transform, cfg: Optional[DictConfig] = None) -> SeededDataset:
    """Training images with a per-sample augmentation seed (exact resume, any worker count);
    with ``cfg``, big JPEGs are decoded at the reduced scale its crops allow (``draft_size``)."""
    from ..data.dataset import ImageDataset
    from ..data.transforms import draft_size

    if cfg is None:
        return SeededDataset(ImageDataset(train_samples, transform))
    draft = draft_size(cfg.data.image_size, True, cfg.data.augment)
    return SeededDataset(image_dataset(train_samples, transform, cfg, draft_size=draft))
