"""The training loop: one readable function from a config to a run folder with metrics.

A run folder holds ``config.yaml`` (resolved), ``run.json`` (seed, versions, command),
``log.jsonl`` (one record per epoch), ``last.pt`` / ``best.pt`` and ``metrics.json``,
so any number in a table can be traced back to the command that made it.

Resumption is exact on CPU: the sample order and each sample's augmentation are pure
functions of (seed, epoch, position) (see ``sampling.py``), and the checkpoint carries the
optimizer, scheduler, scaler, loss (seesaw's online counts), RNG states and the position
inside the epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from .. import __version__
from ..config import to_dict, to_yaml
from ..errors import Interrupted, TinltError
from . import checkpoint as ckpt_io
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .evaluate import autocast_for, metrics_from_predictions, predict_loader
from .feature_cache import feature_store_for
from .progress import echo, progress, set_quiet
from .sampling import EpochOrder, SeededDataset, Shard


# --------------------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TinltError(f"config key 'train.device' = {name!r} but no CUDA device is available")
    return dev


def is_convolutional(tower: torch.nn.Module) -> bool:
    """A CNN tower (channels-last helps its convolutions); a ViT's one patch-embedding conv does not count."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in tower.modules()) > 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    import open_clip  # noqa: WPS433

    return {
        "tinlt": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "numpy": np.__version__,
    }


@dataclass
class DataBundle:
    train: object  # Samples
    evaluation: object  # Samples used per epoch (val, else test)
    test: Optional[object]
    eval_name: str
    classnames: list
    train_counts: np.ndarray
    groups: dict
    skipped: list = field(default_factory=list)  # (item, reason) removed by the up-front data check
    check: Optional[object] = None  # tinlt.data.validate.DataCheck, when data.validate is on


def build_data(cfg: DictConfig) -> DataBundle:
    """Load the splits, then check them up front (``data.validate``): bad samples are skipped
    and listed in ``<output_dir>/data_report.txt``, or fail the run if ``data.strict``."""
    from ..data.build import build_split, check_same_classes
    from ..data.groups import shot_groups
    from ..data.validate import print_summary, validate_data

    train = build_split(cfg.data.train)
    if train is None:
        raise TinltError("config key 'data.train.kind' is empty: a training split is required")
    val = build_split(cfg.data.val)
    test = build_split(cfg.data.test)
    check = None
    if cfg.data.get("validate", True):
        is_main = os.environ.get("RANK", "0") == "0"  # every rank cleans alike; one writes the report
        check = validate_data(
            {"data.train": train, "data.val": val, "data.test": test},
            out_dir=cfg.train.output_dir if is_main else None,
            strict=bool(cfg.data.get("strict", False)),
        )
        train, val, test = (check.samples(k) for k in ("data.train", "data.val", "data.test"))
        if is_main:
            print_summary(check, quiet=cfg.train.quiet)
    for name, other in (("val", val), ("test", test)):
        if other is not None:
            check_same_classes(train, other, f"data.{name}")
    evaluation, eval_name = (val, "val") if val is not None else (test, "test")
    if evaluation is None:
        raise TinltError("no evaluation split: set 'data.val' or 'data.test'")
    counts = train.class_counts()
    groups = shot_groups(
        counts, many_threshold=cfg.data.many_threshold, few_threshold=cfg.data.few_threshold, mode=cfg.data.groups
    )
    skipped = check.skipped if check is not None else []
    return DataBundle(train, evaluation, test, eval_name, list(train.classnames), counts, groups, skipped, check)


def make_transforms(model, cfg: DictConfig):
    from ..data.transforms import build_transforms

    tower = model.image_tower
    size = cfg.data.image_size
    train_tf = build_transforms(size, tower.image_mean, tower.image_std, train=True, augment=cfg.data.augment)
    eval_tf = build_transforms(size, tower.image_mean, tower.image_std, train=False, augment="none")
    return train_tf, eval_tf


def eval_loader(
    samples, transform, cfg: DictConfig, dist_info: DistInfo, device: torch.device, features=None
) -> DataLoader:
    """``features``: a FeatureStore (engine/feature_cache.py) to read the image tower's outputs from."""
    from ..data.dataset import ImageDataset

    ds = features.dataset(samples, desc="eval") if features is not None else ImageDataset(samples, transform)
    return DataLoader(
        ds,
        batch_size=cfg.train.eval_batch_size,
        sampler=Shard(len(ds), dist_info.rank, dist_info.world_size),
        num_workers=0 if features is not None else cfg.data.num_workers,
        collate_fn=getattr(ds, "collate_fn", None),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
    )


def effective_lr(optim_cfg, global_batch: int) -> float:
    """The base lr after the explicit batch-size scaling rule (``optim.lr_scaling``)."""
    ratio = global_batch / optim_cfg.lr_base_batch
    if optim_cfg.lr_scaling == "linear":
        return optim_cfg.lr * ratio
    if optim_cfg.lr_scaling == "sqrt":
        return optim_cfg.lr * math.sqrt(ratio)
    return optim_cfg.lr


def build_optimizer(model, cfg: DictConfig, global_batch: Optional[int] = None) -> torch.optim.Optimizer:
    o = cfg.optim
    base_lr = effective_lr(o, global_batch or o.batch_size * o.accum_steps)
    mult = {"image": 1.0, "text": o.lr_text_mult, "new": o.lr_new_mult}
    groups = []
    for name, params in model.param_groups().items():
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # norms, biases, gates, logit scale
        for ps, wd in ((decay, o.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": base_lr * mult[name], "weight_decay": wd, "name": name})
    if not groups:
        raise TinltError("nothing to train: both towers are frozen and the model has no new parameters")
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=o.momentum)
    return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(o.betas))


def warmup_cosine(total_steps: int, warmup_steps: int, schedule: str):
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


# --------------------------------------------------------------------------- the loop


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: give up waiting
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class GradientRatio:
    """Accumulated positive / negative gradient on each class's logit (seesaw paper, Fig. 4).

    Read from the logits' own gradient, so it is exact for whatever loss is in use.
    """

    def __init__(self, num_classes: int) -> None:
        self.pos = np.zeros(num_classes, dtype=np.float64)
        self.neg = np.zeros(num_classes, dtype=np.float64)

    def update(self, grad: torch.Tensor, targets: torch.Tensor) -> None:
        g = grad.detach().float().abs()
        onehot = torch.zeros_like(g).scatter_(1, targets.view(-1, 1), 1.0)
        self.pos += (g * onehot).sum(0).cpu().numpy()
        self.neg += (g * (1 - onehot)).sum(0).cpu().numpy()

    def ratio(self) -> np.ndarray:
        return self.pos / np.maximum(self.neg, 1e-12)

    def state_dict(self) -> dict:
        return {"pos": self.pos.copy(), "neg": self.neg.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.pos, self.neg = np.asarray(d["pos"]), np.asarray(d["neg"])


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def write_metrics(folder: Path, metrics: dict) -> Path:
    """``folder/metrics.json``, stamped with the release that made it (a reused run names it)."""
    metrics["tinlt_version"] = __version__
    _write_json(folder / "metrics.json", metrics)
    return folder / "metrics.json"


def train(cfg: DictConfig, *, resume: Optional[str | bool] = None, command: Optional[list[str]] = None) -> dict:
    """Train TIN as configured; returns the final test metrics (also in ``metrics.json``)."""
    from ..data.dataset import ImageDataset
    from ..data.samplers import build_sampler
    from ..losses import build_loss
    from ..models.factory import create_model
    from ..two_stage import eval_adjustments, prepare_model

    set_quiet(cfg.train.quiet)
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.train.output_dir)
    main = dist_info.is_main

    # resume restores state only; the caller passes the run's config (the CLI reads it from
    # the run folder's config.yaml, plus any overrides such as a longer optim.epochs)
    ckpt = None
    if resume:
        path = None if str(resume) in ("auto", "True") else Path(resume)
        path = path or ckpt_io.find_resume(out)
        if path is None:
            raise TinltError(f"--resume: no checkpoint in {out}")
        ckpt = ckpt_io.load_checkpoint(path)
        if main:
            echo(f"resuming from {path} (epoch {ckpt['epoch']}, optimizer step {ckpt['global_step']})")

    seed_everything(cfg.train.seed + dist_info.rank)
    data = build_data(cfg)
    if ckpt is not None and main and list(ckpt.get("train_counts", [])) != data.train_counts.tolist():
        # e.g. a file went bad and is now skipped: the sample order differs, so resume is no longer exact
        print(
            f"tinlt: warning: training data changed since the checkpoint (class counts {ckpt.get('train_counts')} "
            f"-> {data.train_counts.tolist()}); the resumed run will differ from an uninterrupted one",
            file=sys.stderr,
        )
    C = len(data.classnames)
    model = create_model(cfg.model, data.classnames, image_size=cfg.data.image_size).to(device)
    # two-stage set-up (model.init_from / reinit_head / freeze_features), see tinlt/two_stage.py
    prepare_model(model, cfg.model, classnames=data.classnames, resuming=ckpt is not None,
                  log=lambda msg: echo(msg) if main else None)
    if device.type == "cuda" and cfg.train.channels_last and is_convolutional(model.image_tower):
        model = model.to(memory_format=torch.channels_last)
    train_tf, eval_tf = make_transforms(model, cfg)
    loss_fn = build_loss(cfg.loss, data.train_counts).to(device)

    # data loading
    train_ds = SeededDataset(ImageDataset(data.train, train_tf))
    # instance sampling shuffles inside EpochOrder, whose global order is the same for any
    # number of processes; re-balancing samplers shard their own global order by rank
    base_sampler = None if cfg.data.sampler == "instance" else build_sampler(
        cfg.data.sampler, data.train.labels, seed=cfg.train.seed, rank=dist_info.rank, world_size=dist_info.world_size
    )
    order = EpochOrder(
        len(train_ds), seed=cfg.train.seed, base=base_sampler, rank=dist_info.rank, world_size=dist_info.world_size
    )
    bs, accum = cfg.optim.batch_size, cfg.optim.accum_steps
    workers = cfg.data.num_workers

    def train_loader() -> DataLoader:
        # built once: persistent workers survive epochs; the sampler (EpochOrder) is re-read
        # in this process at every iter(), so set_epoch still takes effect
        return DataLoader(
            train_ds,
            batch_size=bs,
            sampler=order,
            num_workers=workers,
            collate_fn=getattr(train_ds, "collate_fn", None),
            pin_memory=device.type == "cuda",
            drop_last=False,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.train.seed),  # leave the global RNG alone
            prefetch_factor=4 if workers > 0 else None,
        )

    per_epoch_batches = math.ceil(len(order.order()) / bs)
    steps_per_epoch = max(1, per_epoch_batches // accum)
    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.train.max_steps > 0:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup_steps = int(round(cfg.optim.warmup_epochs * steps_per_epoch))

    global_batch = bs * accum * dist_info.world_size
    optimizer = build_optimizer(model, cfg, global_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * cfg.optim.epochs, warmup_steps, cfg.optim.schedule)
    )
    use_scaler = device.type == "cuda" and cfg.train.amp == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    grad_ratio = GradientRatio(C)

    train_model = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
    if cfg.train.compile:  # the training forward only; evaluation runs the eager model
        train_model = torch.compile(train_model)

    epoch, batch_in_epoch, global_step = 0, 0, 0
    best_score, history = -1.0, []
    loss_sum, n_seen = 0.0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        loss_fn.load_state_dict(ckpt["loss"])
        grad_ratio.load_state_dict(ckpt["grad_ratio"])
        epoch, batch_in_epoch, global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
        best_score, history = ckpt["best_score"], ckpt["history"]
        loss_sum, n_seen = ckpt["epoch_loss"]
        _set_rng_state(ckpt["rng"][dist_info.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])

    # a fixed image path: its outputs come from disk (train.feature_cache; engine/feature_cache.py),
    # for training only without random augmentation; weights are final here (init_from, resume)
    features = feature_store_for(model, cfg, transform=eval_tf, device=device, is_main=main, barrier=barrier)
    if features is not None and cfg.data.augment == "none":
        train_ds, workers = features.dataset(data.train, desc="train"), 0  # no decoding left for workers
    loader = train_loader()

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        if ckpt is not None:  # the log holds what the checkpoint holds: drop records of a killed run's lost work
            (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        _write_json(
            out / "run.json",
            {
                "command": command or sys.argv,
                "seed": cfg.train.seed,
                "versions": versions(),
                "device": str(device),
                "world_size": dist_info.world_size,
                "per_device_batch": bs,
                "global_batch": global_batch,
                "lr_effective": effective_lr(cfg.optim, global_batch),
                "lr_scaling": cfg.optim.lr_scaling,
                "train_images": len(data.train),
                "train_counts": data.train_counts.tolist(),
                "groups": {k: np.asarray(v).tolist() for k, v in data.groups.items()},
                "eval_split": data.eval_name,
                "classnames": data.classnames,
            },
        )
        echo(
            f"tinlt: {cfg.name} | {C} classes, {len(data.train)} train images | model {cfg.model.name} | "
            f"loss {cfg.loss.name} | device {device} x{dist_info.world_size} | batch {bs}/device, "
            f"global {global_batch} | lr {effective_lr(cfg.optim, global_batch):.3g} ({cfg.optim.lr_scaling} scaling) | "
            f"{total_steps} steps | out {out}"
        )
    from .loggers import make_logger

    run_logger = make_logger(cfg, out, is_main=main)  # TensorBoard if train.tensorboard, else a no-op

    def state(epoch_: int, batch_: int) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else None,
            "loss": loss_fn.state_dict(),
            "grad_ratio": grad_ratio.state_dict(),
            "epoch": epoch_,
            "batch_in_epoch": batch_,
            "global_step": global_step,
            "best_score": best_score,
            "history": history,
            "epoch_loss": (loss_sum, n_seen),
            "rng": _gather_rng(),
            "config": to_dict(cfg),
            "classnames": data.classnames,
            "train_counts": data.train_counts.tolist(),
            "groups": {k: np.asarray(v).tolist() for k, v in data.groups.items()},
            "versions": versions(),
        }

    def save(name: str, epoch_: int, batch_: int, best: bool = False) -> Path:
        # never replace the last good checkpoint with diverged weights (every rank holds the same ones)
        if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
            raise TinltError(
                f"non-finite weights after optimizer step {global_step}, not saved; last good checkpoint: "
                f"{ckpt_io.find_resume(out) or 'none yet'}; lower optim.lr or check the data"
            )
        st = state(epoch_, batch_)  # every rank joins the RNG gather
        path = out / name
        if main:
            if best:  # best.pt first: a kill between the two writes leaves last.pt behind best.pt, never ahead
                ckpt_io.save_atomic(st, out / ckpt_io.BEST)
                ckpt_io.copy_atomic(out / ckpt_io.BEST, path)
            else:
                ckpt_io.save_atomic(st, path)
        barrier()
        return path

    eval_dl = eval_loader(data.evaluation, eval_tf, cfg, dist_info, device, features=features)
    amp = cfg.train.amp
    start_time = time.time()
    done = global_step >= total_steps

    with _StopRequest() as stop:
        while epoch < cfg.optim.epochs and not done:
            loss_fn.set_epoch(epoch) if hasattr(loss_fn, "set_epoch") else None
            order.set_epoch(epoch, start=batch_in_epoch * bs)
            train_model.train()
            t0 = time.time()
            if batch_in_epoch == 0:
                loss_sum, n_seen = 0.0, 0
            it = progress(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                total=per_epoch_batches - batch_in_epoch,
                unit="batch",
            )
            optimizer.zero_grad(set_to_none=True)
            for images, targets, _ in it:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                with autocast_for(device, amp):
                    logits = compiled_forward(train_model, images) if cfg.train.compile else train_model(images)
                logits = logits.float()
                logits.retain_grad()
                loss = loss_fn(logits, targets)
                if not torch.isfinite(loss):
                    if use_scaler:  # fp16 overflow: skip the step and lower the scale, as AMP does
                        back_off(scaler, loss)
                        optimizer.zero_grad(set_to_none=True)
                        batch_in_epoch += 1
                        continue
                    last = ckpt_io.find_resume(out)
                    raise TinltError(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, optimizer step {global_step + 1}; "
                        f"last good checkpoint: {last or 'none yet'}; lower optim.lr or check the data"
                    )
                scaler.scale(loss / accum).backward()
                if logits.grad is not None:
                    grad_ratio.update(logits.grad * (accum / scaler.get_scale()), targets)  # unscaled (fp16)
                batch_in_epoch += 1
                loss_sum += loss.item() * len(targets)
                n_seen += len(targets)
                if batch_in_epoch % accum and batch_in_epoch < per_epoch_batches:
                    continue
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                global_step += 1
                run_logger.log_step(global_step, {"loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
                if hasattr(it, "set_postfix"):
                    it.set_postfix(loss=f"{loss_sum / max(n_seen, 1):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if global_step >= total_steps:
                    done = True
                    break
                if stop.signum is not None:
                    path = save(ckpt_io.LAST, epoch, batch_in_epoch)
                    raise Interrupted(stop.signum, path)
                if cfg.train.save_every_steps and global_step % cfg.train.save_every_steps == 0:
                    save(ckpt_io.LAST, epoch, batch_in_epoch)
            it.close() if hasattr(it, "close") else None

            finished_epoch = batch_in_epoch >= per_epoch_batches
            if finished_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            record = {
                "epoch": epoch,
                "step": global_step,
                "loss": loss_sum / max(n_seen, 1),
                "lr": scheduler.get_last_lr()[0],
                "time_s": round(time.time() - t0, 2),
            }
            last_epoch = done or epoch >= cfg.optim.epochs
            if (cfg.train.eval_every and epoch % cfg.train.eval_every == 0) or last_epoch:
                with eval_adjustments(model, cfg, data.train_counts) as logit_transform:  # train.tau_norm/posthoc_tau
                    pred = predict_loader(
                        model, eval_dl, num_classes=C, device=device, amp=amp, desc=f"eval ({data.eval_name})",
                        logit_transform=logit_transform,
                    )
                m = metrics_from_predictions(
                    pred, groups=data.groups, classnames=data.classnames, train_counts=data.train_counts
                )
                record[data.eval_name] = {k: m[k] for k in ("overall", "instance_acc", "many", "medium", "few")}
                score = m["overall"]
                if data.eval_name == "test" or score > best_score:  # without a val split, "best" is the last
                    best_score = score
                    record["best"] = True
            record["grad_ratio"] = grad_ratio.ratio().tolist()
            history.append(record)
            if main:
                _append_jsonl(out / "log.jsonl", record)
                echo(_epoch_line(record, data.eval_name, cfg.optim.epochs))
                run_logger.log_epoch(epoch, record)
                run_logger.log_figures(epoch, out)
            save(ckpt_io.LAST, epoch, batch_in_epoch, best=bool(record.get("best")))
            if stop.signum is not None and not last_epoch:
                raise Interrupted(stop.signum, out / ckpt_io.LAST)

    # final evaluation on the test split with the selected weights
    final = ckpt_io.load_checkpoint(out / ckpt_io.BEST) if (out / ckpt_io.BEST).is_file() else None
    if final is not None:
        model.load_state_dict(final["model"])
    test = data.test if data.test is not None else data.evaluation
    metrics = evaluate_samples(model, test, eval_tf, cfg, dist_info, device, data, desc="test", features=features)
    metrics["train_time_s"] = round(time.time() - start_time, 1)
    if main:
        write_metrics(out, metrics)
        echo(f"test: {_summary(metrics)} | metrics: {out / 'metrics.json'}")
        run_logger.log_figures(epoch, out)
        run_logger.close()
        if cfg.train.report:
            try:  # figures and pages for people (tinlt/report.py); a failure here must never lose the run
                from ..report import build_report

                echo(f"report: {build_report(out) / 'index.html'}")
            except Exception as e:  # noqa: BLE001
                print(f"tinlt: warning: report not written ({type(e).__name__}: {e})", file=sys.stderr)
    cleanup()
    return metrics


def _gather_rng():
    from .distributed import is_dist
    import torch.distributed as dist

    st = _rng_state()
    if not is_dist():
        return st
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, st)
    return out


def back_off(scaler: "torch.amp.GradScaler", loss: torch.Tensor) -> None:
    """A non-finite fp16 loss skips its step; lower the loss scale as GradScaler does when
    the gradients overflow, or every later batch would overflow the same way."""
    scaler.scale(loss)  # initialises the scale on a first-batch overflow
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


def compiled_forward(model, images):
    """The compiled forward, with a compiler failure as one line instead of dynamo's traceback."""
    try:
        return model(images)
    except torch._dynamo.exc.TorchDynamoException as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TinltError(f"train.compile: torch.compile failed ({type(e).__name__}: {first}); "
                         "set train.compile=false to train without it") from None


def evaluate_samples(model, samples, transform, cfg, dist_info, device, data, desc="eval", features=None,
                     threshold_rule=None) -> dict:
    """Metrics of ``model`` on ``samples``; with a two-class ``threshold_rule`` (tinlt calibrate)
    also ``at_threshold``: the same metrics for the thresholded decisions."""
    from ..two_stage import eval_adjustments

    loader = eval_loader(samples, transform, cfg, dist_info, device, features=features)
    with eval_adjustments(model, cfg, data.train_counts) as logit_transform:  # train.tau_norm / train.posthoc_tau
        pred = predict_loader(
            model, loader, num_classes=len(data.classnames), device=device, amp=cfg.train.amp, desc=desc,
            logit_transform=logit_transform,
        )
    m = metrics_from_predictions(pred, groups=data.groups, classnames=data.classnames, train_counts=data.train_counts)
    m["predictions"] = {
        "index": pred.indices.tolist(),
        "target": pred.targets.tolist(),
        "pred": pred.preds.tolist(),
        "confidence": [round(float(c), 5) for c in pred.confidence],
    }
    if pred.scores is not None:
        m["predictions"]["scores"] = np.round(pred.scores, 6).tolist()
    if threshold_rule is not None and pred.scores is not None:
        from ..metrics import confusion_matrix

        decided = threshold_rule.decide(pred.scores)
        confusion = confusion_matrix(pred.targets, decided, len(data.classnames))
        at = metrics_from_predictions(dataclasses.replace(pred, confusion=confusion, preds=decided),
                                      groups=data.groups, classnames=data.classnames, train_counts=data.train_counts)
        m["at_threshold"] = {"threshold": threshold_rule.value, "rule": threshold_rule.describe(), **at}
    return m


def _fmt(v) -> str:
    return "  -  " if v is None else f"{v:5.1f}"


def _summary(m: dict) -> str:
    return (
        f"overall {_fmt(m['overall'])} | many {_fmt(m['many'])} | medium {_fmt(m['medium'])} | "
        f"few {_fmt(m['few'])} | instance {_fmt(m['instance_acc'])}"
    )


def _epoch_line(r: dict, split: str, epochs: int) -> str:
    line = f"epoch {r['epoch']}/{epochs} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | {r['time_s']:.0f}s"
    if split in r:
        line += f" | {split}: " + _summary(r[split])
    return line
