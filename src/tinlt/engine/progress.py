"""Progress bars (tqdm: rate + ETA, maintained, silent when asked) and console lines.

Bars show only on the main process and only when stderr is a terminal or the user did
not ask for quiet. Logs and pipes (Slurm, nohup, CI) get a :class:`LogTicker` line every
``TINLT_PROGRESS_EVERY`` seconds (default 60) instead: step, rate, and ETAs for the epoch
and the run, so a log is never silent for a whole epoch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
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


_NO_BARS = False  # -q: no bars and no periodic progress lines; results still print


def hide_bars(hide: bool = True) -> None:
    global _NO_BARS
    _NO_BARS = hide


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def bars_enabled(quiet: bool = False) -> bool:
    if quiet or _QUIET or _NO_BARS or not _is_main():
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


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(max(0.0, seconds))), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class LogTicker:
    """Progress lines for logs: printed when no bar is shown, at most one per ``every`` seconds.

    ``tick`` takes the run's optimizer steps so far and in total; the ETA is the rate over
    the steps this process has run (a resumed run does not count the steps before it).
    """

    def __init__(self, total_steps: int, *, every: Optional[float] = None, quiet: bool = False) -> None:
        if every is None:
            try:
                every = float(os.environ.get("TINLT_PROGRESS_EVERY", "60"))
            except ValueError:
                every = 60.0
        self.total, self.every = int(total_steps), every
        self.on = not (quiet or _QUIET or _NO_BARS or not _is_main() or bars_enabled(quiet)) and every > 0
        self.t_start = self.t_last = time.monotonic()
        self.step_start: Optional[int] = None

    def tick(self, step: int, *, epoch: int, epochs: int, batch: int, batches: int, accum: int = 1) -> Optional[str]:
        """Print (and return) a line when one is due: optimizer ``step`` of the run, ``batch`` of
        ``batches`` in ``epoch`` (1-based), ``accum`` batches per step."""
        if not self.on:
            return None
        now = time.monotonic()
        if self.step_start is None:  # the first step this process runs: the clock starts here
            self.step_start, self.t_start = step, now
            return None
        if now - self.t_last < self.every or step <= self.step_start:
            return None
        self.t_last = now
        rate = (now - self.t_start) / (step - self.step_start)  # seconds per optimizer step
        line = (f"epoch {epoch}/{epochs}: batch {batch}/{batches} | step {step}/{self.total} | {rate:.2f} s/step | "
                f"epoch ETA {_clock(max(0, batches - batch) * rate / max(1, accum))} | "
                f"run ETA {_clock((self.total - step) * rate)}")
        echo(line)
        return line
