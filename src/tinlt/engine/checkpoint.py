"""Checkpoints: atomic writes, clear errors on corrupt files, and what a run needs to resume.

A checkpoint is a plain dict saved with torch.save. A kill during a save can never leave a
half-written file under the final name: we write a temporary file in the same folder,
flush and fsync it, then rename it over the old one (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import TinltError

LAST = "last.pt"
BEST = "best.pt"


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
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


def find_resume(output_dir: str | Path) -> Path | None:
    p = Path(output_dir) / LAST
    return p if p.is_file() else None


@contextlib.contextmanager
def atomic_target(dst: str | Path, *, shared: bool = False):
    """Yield a temporary path beside ``dst``; on success it is fsynced and renamed over ``dst``.

    ``shared`` gives the file the usual umask permissions (mkstemp makes it owner-only).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if shared:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished checkpoint under another name, with the same all-or-nothing rule."""
    import shutil

    with atomic_target(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
