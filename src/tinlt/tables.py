"""How numbers are written in tinlt's tables: a value over seeds as ``mean ± std``. One place,
so the sweep tables, the grid's page and ``tinlt compare`` agree. Imports nothing of tinlt."""

from __future__ import annotations

import statistics
from typing import Optional, Sequence


def mean_std(values: Sequence[Optional[float]], digits: int = 1) -> str:
    """``mean ± std`` over the values given (sample std); one value alone; ``-`` for none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"
