"""Checkpoints: atomic writes, clear errors on corrupt files, and the state a run needs to resume.

A checkpoint is a plain dict saved with torch.save through :func:`tinlt.fileio.atomic_target`
(temporary file, fsync, rename), so a kill during a save never leaves a half-written file
under the final name. Which file a run folder means is :mod:`.run_folder`'s rule.
"""

from __future__ import annotations

import pickle
import random
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, fileio
from ..errors import TinltError


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    with fileio.atomic_target(path, shared=False) as tmp:
        torch.save(obj, tmp)
    return path


def check_finite(model: torch.nn.Module, step: int, last_good: Path | None) -> None:
    """Never replace the last good checkpoint with diverged weights (every rank holds the same ones)."""
    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
        raise TinltError(
            f"non-finite weights after optimizer step {step}, not saved; last good checkpoint: "
            f"{last_good or 'none yet'}; lower optim.lr or check the data"
        )


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished checkpoint under another name, with the same all-or-nothing rule."""
    with fileio.atomic_target(dst, shared=False) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint file's dict (a run folder is resolved by the caller, see run_folder.resolve_checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise TinltError(f"checkpoint not found: {path}")
    try:
        # our checkpoints hold plain Python containers, numpy arrays and RNG states
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TinltError(f"checkpoint {path} is corrupt or truncated ({first}); use an earlier one") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise TinltError(f"{path} is not a tinlt checkpoint (no 'model'/'config' entries)")
    return ckpt


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
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
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
