"""The exception types the CLI turns into one-line messages, and the one "did you mean" hint.

Everything here is plain Python, so every layer (the torch-free ONNX predictor included)
can raise and explain errors the same way.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class TinltError(Exception):
    """A user-facing error: bad input, bad config, missing file.

    The message must stand alone on one line and name the file, line or key at fault.
    """


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a resumable checkpoint."""

    def __init__(self, signum: int, path) -> None:
        super().__init__(f"stopped by signal {signum}; resumable checkpoint: {path}")
        self.signum = signum
        self.path = path


def close_matches(word: str, candidates: Iterable[str], *, n: int = 1, cutoff: float = 0.5) -> list[str]:
    """Candidates that look like ``word`` (case-insensitive), best first."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(str(c).lower(), str(c))
    found = difflib.get_close_matches(str(word).lower(), list(by_lower), n=n, cutoff=cutoff)
    return [by_lower[m] for m in found]


def did_you_mean(word: str, candidates: Iterable[str], *, n: int = 1, cutoff: float = 0.5, quote: str = "'") -> str:
    """``"; did you mean 'x'?"`` (or ``"x, y"`` for n > 1), or "" when nothing is close."""
    found = close_matches(word, candidates, n=n, cutoff=cutoff)
    if not found:
        return ""
    return "; did you mean " + ", ".join(f"{quote}{m}{quote}" for m in found) + "?"
