"""Progress bars (tqdm: rate + ETA, maintained, silent when asked) and console lines.

Bars show only on the main process and only when stderr is a terminal or the user did
not ask for quiet; logs and pipes get the one-line summaries instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Optional

from tqdm.auto import tqdm

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


@contextlib.contextmanager
def quiet_while(quiet: bool):
    """``set_quiet`` for one block (a training run); the previous setting comes back after it."""
    before = _QUIET
    set_quiet(quiet)
    try:
        yield
    finally:
        set_quiet(before)


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def bars_enabled(quiet: bool = False) -> bool:
    if quiet or _QUIET or not _is_main():
        return False
    if os.environ.get("TINLT_PROGRESS") == "1":  # force bars into logs, e.g. under CI
        return True
    return sys.stderr.isatty()


def progress(it: Iterable, *, desc: str = "", total: Optional[int] = None, quiet: bool = False, unit: str = "it"):
    return tqdm(it, desc=desc, total=total, unit=unit, disable=not bars_enabled(quiet), dynamic_ncols=True, leave=False)


def echo(msg: str, *, quiet: bool = False) -> None:
    """A line for the user (main process only); goes through tqdm so bars are not broken."""
    if quiet or _QUIET or not _is_main():
        return
    tqdm.write(msg, file=sys.stdout)
