"""All-or-nothing file writes: the one helper every tinlt file goes through.

A reader (or a process killed mid-write) never sees half a file under the final name:
we write a temporary file in the same folder, flush and fsync it, rename it over the
target (atomic on POSIX) and fsync the folder so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_target(dst: str | os.PathLike, *, shared: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it is fsynced and renamed over ``dst``.

    For writers that want a path (``torch.save``, ``onnx.save``). ``shared`` gives the file
    the usual umask permissions (mkstemp makes it owner-only); checkpoints pass False.
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
        _fsync_dir(dst.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    # a name that is not UTF-8 (lone surrogates) is written as an escape, never a crash mid-report
    return write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a one-line TinltError naming the file (and line) when it cannot be read."""
    from .errors import TinltError

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise TinltError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise TinltError(f"{path}: cannot read ({e.strerror})") from None


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
