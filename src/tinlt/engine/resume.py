"""Resuming a run: which checkpoint ``--resume`` means and what it checks before training on.

The resumed run's config is the run folder's own plus any overrides
(``run_folder.config_for_train``); the checkpoint supplies every piece of state (weights,
optimizer, scheduler, scaler, loss, RNG states, position in the epoch). Before any of it is
restored, the config is compared with the checkpoint's:

* keys that shape the model, the data, the batches or the random streams cannot change:
  resume refuses them in one line listing each (start a new run instead);
* keys that may change take effect and are recorded in config.yaml: the number of epochs
  (the cosine schedule stretches to it), evaluation, logging and checkpoint settings, the
  device, and the learning rate / weight decay, which :func:`retune_optimizer` writes into
  the restored optimizer and schedule (never recorded but ignored);
* data paths may change (a moved dataset); a changed training split is reported by its
  class counts, since the sample order then differs and the run is no longer exact.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import TinltError
from . import checkpoint as ckpt_io
from .run_folder import RunFolder

# keys that may differ from the checkpoint's config; every other key must be equal
MUTABLE = ("name", "optim.epochs", "optim.grad_clip", "data.num_workers", "data.validate", "data.strict")
MUTABLE_PREFIXES = ("train.",)
RETUNED = ("optim.lr", "optim.lr_new_mult", "optim.lr_text_mult", "optim.weight_decay")  # applied to the optimizer
IMMUTABLE_TRAIN = ("train.seed",)
PATH_KEYS = ("path", "root", "classnames")  # data.<split>.<key>: where the data is, not what it is


def claim(run: RunFolder, cfg, ckpt: Optional[dict], *, fresh: bool, main: bool,
          log: Callable[[str], None]) -> set[str]:
    """Before training into ``run``: a resumed run checks what changed (returns the keys that
    take effect); a new one never lands on an old run's results (``fresh`` clears them)."""
    from .run_folder import CONFIG, RUN_INFO

    ckpt_io.check_lean(cfg)
    if ckpt is not None:
        return check_config(ckpt["config"], cfg)
    held = run.holds_results()
    if held and not fresh:
        raise TinltError(f"train.output_dir {run.path} holds a run ({', '.join(held)}); continue it with "
                         "--resume, replace it with --fresh, or choose another train.output_dir")
    if main and fresh:
        run.clear(extra=(CONFIG, RUN_INFO))
    return set()


def load_resume(resume, run: RunFolder, log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint to resume from (``resume``: a path, or "auto" / True for the run's last.pt)."""
    if not resume:
        return None
    path = None if str(resume) in ("auto", "True") else Path(resume)
    path = path or run.resume_checkpoint()
    if path is None:
        raise TinltError(f"--resume: no checkpoint in {run.path}")
    ckpt = ckpt_io.load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise TinltError(f"--resume: {path} holds weights only (a deployable checkpoint, e.g. tinlt calibrate's); "
                         "resume from the run's last.pt")
    log(f"resuming from {path} (epoch {ckpt['epoch']}, optimizer step {ckpt['global_step']})")
    return ckpt


def _flat(d: Any, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def _may_change(key: str) -> bool:
    if key in IMMUTABLE_TRAIN:
        return False
    if key in MUTABLE or key in RETUNED or key.startswith(MUTABLE_PREFIXES):
        return True
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "data" and parts[2] in PATH_KEYS


def check_config(saved: dict, cfg) -> set[str]:
    """Refuse keys that cannot change on resume; returns the changed keys that take effect
    (said on stderr, quiet or not: they change what the rest of the run does)."""
    from ..config import from_dict, to_dict

    old = _flat(to_dict(from_dict(saved)))  # through the schema: keys added since are at their defaults
    new = _flat(to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    refused = [k for k in changed if not _may_change(k)]
    if refused:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise TinltError(f"--resume: the config differs from the checkpoint's in keys a run cannot change: "
                         f"{shown}{more}; undo them, or start a new run (--fresh)")
    effective = [k for k in changed if k != "train.output_dir"]
    if effective:
        print("tinlt: note: --resume: taking effect: " + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}"
                                                                 for k in effective), file=sys.stderr)
    return set(effective)


def retune_optimizer(optimizer, scheduler, configured: list[tuple[float, float]]) -> None:
    """After restoring optimizer and schedule, use the configured base lr and weight decay of
    each parameter group (``configured``, in group order); the schedule's position is kept."""
    for group, (lr, wd), factor in zip(optimizer.param_groups, configured, scheduler.lr_lambdas):
        group["initial_lr"], group["weight_decay"] = lr, wd
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler.base_lrs = [lr for lr, _ in configured]
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def check_data(ckpt: dict, classnames, train_counts) -> None:
    """Refuse other classes than the checkpoint's; warn when the class counts differ."""
    if list(ckpt.get("classnames", classnames)) != list(classnames):
        raise TinltError(f"--resume: the training split has classes {list(classnames)[:6]}, the checkpoint "
                         f"{list(ckpt['classnames'])[:6]}; a run cannot change its classes (start a new run)")
    before, now = list(ckpt.get("train_counts", [])), list(map(int, train_counts))
    if before != now:  # e.g. a file went bad and is now skipped
        print(f"tinlt: warning: training data changed since the checkpoint (class counts {before} -> {now}); "
              "the resumed run will differ from an uninterrupted one", file=sys.stderr)


def check_world(ckpt: dict, world_size: int, global_batch: int) -> None:
    """Refuse to resume in another number of processes or another global batch: the shards, the
    steps per epoch and the schedule would all change (a 2-process run resumed in 1 process went
    from global batch 8 to 4 and from 195 to 325 steps, and said nothing). Checkpoints written
    before these were recorded are not checked."""
    was_world, was_batch = ckpt.get("world_size"), ckpt.get("global_batch")
    if was_world is None or (was_world == world_size and was_batch == global_batch):
        return
    how = (f"torchrun --nproc_per_node {was_world} -m tinlt train --resume ..." if was_world > 1
           else "tinlt train --resume ... (one process, without torchrun)")
    raise TinltError(f"--resume: the checkpoint was written by {was_world} process(es) at global batch {was_batch}, "
                     f"this run has {world_size} at global batch {global_batch}; resume as it ran: {how}")


def resume_command(path, environ=None) -> Optional[str]:
    """The command that continues an interrupted run as it ran: under torchrun (its WORLD_SIZE /
    LOCAL_WORLD_SIZE in ``environ``) a torchrun line with the same processes, said by rank 0 only
    (None on the other ranks); else ``tinlt train --resume``."""
    import os

    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return f"tinlt train --resume {path}"
    if int(env.get("RANK", "0") or 0) != 0:
        return None
    local = int(env.get("LOCAL_WORLD_SIZE", str(world)) or world)
    nodes = f"--nnodes {world // local} " if world > local else ""
    return f"torchrun {nodes}--nproc_per_node {local} -m tinlt train --resume {path}"
