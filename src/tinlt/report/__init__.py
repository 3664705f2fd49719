"""Reports a person wants to look at: figures, a stand-alone HTML page and Markdown for runs.

One concept per module: :mod:`.view` reads a run folder (through ``RunFolder``),
:mod:`.figures` draws one run's figures, :mod:`.binary` a two-class run's operating points,
:mod:`.samples` the test images shown, :mod:`.page` writes ``report/`` (``tinlt report``),
:mod:`.hooks` attaches to training, :mod:`.sweep_page` is a grid's page. Every figure uses the
one style of :mod:`tinlt.plots`; comparing runs is :mod:`tinlt.compare`'s.
"""

from __future__ import annotations

from .binary import fig_pr_roc, operating_point
from .figures import CAPTIONS, FIGURE_FILES, fig_grad_ratio, group_bounds, pct, run_figures
from .hooks import ReportHook, training_hooks
from .page import build_report, refresh_report, table_html, table_md
from .samples import select_grid
from .view import RunView, load_run, training_run

__all__ = ["RunView", "load_run", "training_run", "run_figures", "fig_grad_ratio", "fig_pr_roc", "group_bounds",
           "operating_point", "pct", "select_grid", "build_report", "refresh_report", "table_html", "table_md",
           "ReportHook", "training_hooks", "CAPTIONS", "FIGURE_FILES"]
