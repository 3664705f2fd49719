"""The one figure style every tinlt figure is drawn in (reports, the benchmark, calibration).

matplotlib, the well-kept standard Python plotting library, through its object API on the
non-interactive Agg canvas: no display, no pyplot global state, and the caller's own
matplotlib backend is left alone. Also the precision-recall curve both the report and
``tinlt calibrate`` draw. Imports nothing of tinlt (a core module, usable from any layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728", "overall": "#4d4d4d", None: "#8c8c8c"}
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "savefig.dpi": 110,
    "figure.dpi": 110,
}


def figure(width: float, height: float):
    """A Figure on the Agg canvas (no pyplot), constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def style():
    """``with style():`` draws in tinlt's figure style."""
    import matplotlib

    return matplotlib.rc_context(STYLE)


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, facecolor="white")
    return path


def short(text: str, limit: int = 18) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def draw_pr(ax, precision: np.ndarray, recall: np.ndarray, name: str, prevalence: float | None = None,
            points: Sequence[tuple] = ()) -> None:
    """A precision-recall curve of the class ``name`` (step-wise, AP in the label), the chance
    line at ``prevalence``, and operating points ``(label, precision, recall, marker style)``."""
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))  # step-wise area, as average precision is defined
    ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", color="#1f77b4", linewidth=2,
            label=f"PR curve (AP {ap:.3f})")
    if prevalence is not None:
        ax.axhline(prevalence, color="#888", linestyle=":", label=f"chance (prevalence {prevalence:.2f})")
    for label, p, r, st in points:
        ax.plot([r], [p], label=label, **dict(st, linestyle="none", markersize=st.get("markersize", 8)))
    ax.set(xlabel=f"recall of '{name}'", ylabel="precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
