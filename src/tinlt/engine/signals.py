"""Stopping a training run cleanly: SIGINT/SIGTERM ask the loop to save and exit.

The loop checks the flag at each optimizer-step boundary, saves a resumable ``last.pt``
and raises ``Interrupted``; the CLI exits with 128 + the signal number. A second signal
gives up waiting.
"""

from __future__ import annotations

import signal
from typing import Optional


class StopRequest:
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
