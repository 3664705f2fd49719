"""``tinlt fit``: the best model for a user's own data, chosen by cross-validation, refit on
every image, with its operating point and its doubtful labels (see :mod:`.run`)."""

from __future__ import annotations

from .plan import DEFAULT_GRID
from .run import folder_config, parse_budget, run_fit

__all__ = ["run_fit", "folder_config", "parse_budget", "DEFAULT_GRID"]
