"""``tinlt cache list|prune``: see and bound the image-feature cache (``train.feature_cache``)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path


def register(subparsers) -> dict:
    p = subparsers.add_parser(
        "cache",
        help="list or prune the image-feature cache",
        description="List the entries of the image-feature cache (train.feature_cache), or remove old ones. "
        "prune always removes unfinished builds of dead processes and damaged entries.",
    )
    p.add_argument("action", choices=("list", "prune"))
    p.add_argument("--dir", default=None, help="cache folder (default: train.feature_cache=auto's, "
                   "$XDG_CACHE_HOME/tinlt/features)")
    p.add_argument("--max-size", type=float, default=None, metavar="GB",
                   help="prune: remove least recently used entries until the cache holds at most GB gigabytes")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="prune: remove entries no run has opened for DAYS days")
    p.add_argument("--all", action="store_true", help="prune: remove every entry")
    p.add_argument("--dry-run", action="store_true", help="prune: show what would be removed")
    return {"cache": _cmd_cache}


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _cmd_cache(a: argparse.Namespace) -> int:
    from ..engine.cache_entries import default_cache_dir, list_entries, remove, select_for_pruning
    from ..errors import TinltError

    root = Path(a.dir).expanduser() if a.dir else default_cache_dir()
    entries = list_entries(root)
    if a.action == "list":
        if a.max_size is not None or a.older_than is not None or a.all or a.dry_run:
            raise TinltError("tinlt cache list takes no --max-size / --older-than / --all / --dry-run")
        for e in entries:
            used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
            print(f"{_fmt(e.size):>11s}  {used}  {e.kind:10s}  {e.path.name}")
        print(f"{len(entries)} entries, {_fmt(sum(e.size for e in entries))} in {root}")
        return 0
    for name, value in (("--max-size", a.max_size), ("--older-than", a.older_than)):
        if value is not None and value < 0:
            raise TinltError(f"{name} must be >= 0, got {value:g}")
    doomed = select_for_pruning(
        entries,
        max_bytes=None if a.max_size is None else int(a.max_size * 2**30),
        older_than_s=None if a.older_than is None else a.older_than * 86400,
        everything=a.all,
    )
    for e in doomed:
        print(f"{'would remove' if a.dry_run else 'remove'} {e.path.name} ({_fmt(e.size)}, {e.kind})")
    freed = sum(e.size for e in doomed) if a.dry_run else remove(doomed)
    left = sum(e.size for e in entries) - freed
    print(f"{'would free' if a.dry_run else 'freed'} {_fmt(freed)}; {len(entries) - len(doomed)} entries, "
          f"{_fmt(left)} left in {root}")
    return 0
