"""The feature cache's folder as a whole: where it is, what is in it, and pruning it.

``FeatureStore`` (feature_cache.py) builds and reads single entries; nothing there ever
deletes an entry with another key, so a cache grows with every change of weights, data or
preprocessing. ``tinlt cache list`` / ``tinlt cache prune`` use this module. It imports
no torch, so the commands start instantly.

Recency is the mtime of an entry's ``meta.json``: ``FeatureStore`` touches it whenever a
run opens the entry, so pruning by size removes the least recently used entries first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_TMP = re.compile(r"\.tmp-(\d+)$")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinlt" / "features"


def resolve_cache_dir(setting: Optional[str]) -> Optional[Path]:
    """``train.feature_cache``: "" -> None (off), "auto" -> default_cache_dir(), else that folder."""
    setting = (setting or "").strip()
    if not setting:
        return None
    return default_cache_dir() if setting == "auto" else Path(setting).expanduser()


@dataclass
class Entry:
    path: Path
    size: int  # bytes
    last_used: float  # epoch seconds
    kind: str  # "split" | "embedding" | "unfinished" (an interrupted build) | "damaged"
    model: str


def touch(entry: Path) -> None:
    """Mark an entry as used now (best effort: a read-only cache still works)."""
    try:
        os.utime(entry / "meta.json")
    except OSError:
        pass


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_entries(root: Path) -> list[Entry]:
    """Cache entries directly under ``root``, least recently used first. Folders that are
    not entries (no ``meta.json``, not a ``*.tmp-<pid>`` build) are not listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    entries = []
    for d in root.iterdir():
        if not d.is_dir() or d.is_symlink():
            continue
        tmp = _TMP.search(d.name)
        meta_file = d / "meta.json"
        if tmp:
            if _pid_alive(int(tmp.group(1))):
                continue  # a build in progress
            kind, model, used = "unfinished", d.name[: tmp.start()], d.stat().st_mtime
        elif meta_file.is_file():
            used = meta_file.stat().st_mtime
            try:
                key = json.loads(meta_file.read_text())["key"]
                kind, model = str(key.get("kind", "?")), str(key.get("model", "?"))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                kind, model = "damaged", d.name
        else:
            continue
        entries.append(Entry(d, _size(d), used, kind, model))
    return sorted(entries, key=lambda e: e.last_used)


def select_for_pruning(
        entries: list[Entry], *, max_bytes: Optional[int] = None, older_than_s: Optional[float] = None,
        everything: bool = False, now: Optional[float] = None,
) -> list[Entry]:
    """What ``prune`` removes: everything; or unfinished/damaged entries, entries unused for
    ``older_than_s``, then least recently used ones until the rest fits in ``max_bytes``."""
    if everything:
        return list(entries)
    now = time.time() if now is None else now
    doomed = [e for e in entries if e.kind in ("unfinished", "damaged")
              or (older_than_s is not None and now - e.last_used > older_than_s)]
    if max_bytes is not None:
        kept = [e for e in entries if e not in doomed]
        total = sum(e.size for e in kept)
        for e in kept:  # least recently used first
            if total <= max_bytes:
                break
            doomed.append(e)
            total -= e.size
    return doomed


def remove(entries: list[Entry]) -> int:
    """Delete the entries' folders; returns the bytes freed."""
    freed = 0
    for e in entries:
        shutil.rmtree(e.path, ignore_errors=True)
        if not e.path.exists():
            freed += e.size
    return freed
