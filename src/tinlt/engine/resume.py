"""Resuming a run: which checkpoint ``--resume`` means and what it checks before training on.

The resumed run's config is the run folder's own (``run_folder.config_for_train``); the
checkpoint supplies every piece of state (weights, optimizer, scheduler, scaler, loss,
RNG states, position in the epoch). Training data that changed since the checkpoint is
reported: the sample order then differs, so the run is no longer an exact continuation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from ..errors import TinltError
from . import checkpoint as ckpt_io
from .run_folder import RunFolder


def load_resume(resume, run: RunFolder, log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint to resume from (``resume``: a path, or "auto" / True for the run's last.pt)."""
    if not resume:
        return None
    path = None if str(resume) in ("auto", "True") else Path(resume)
    path = path or run.resume_checkpoint()
    if path is None:
        raise TinltError(f"--resume: no checkpoint in {run.path}")
    ckpt = ckpt_io.load_checkpoint(path)
    log(f"resuming from {path} (epoch {ckpt['epoch']}, optimizer step {ckpt['global_step']})")
    return ckpt


def check_data(ckpt: dict, train_counts) -> None:
    """Warn when the training split's class counts differ from the checkpoint's."""
    before, now = list(ckpt.get("train_counts", [])), list(map(int, train_counts))
    if before != now:  # e.g. a file went bad and is now skipped
        print(f"tinlt: warning: training data changed since the checkpoint (class counts {before} -> {now}); "
              "the resumed run will differ from an uninterrupted one", file=sys.stderr)
