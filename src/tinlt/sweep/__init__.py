"""Sweeps: a grid file -> one training run per cell -> one results table per data set.

:mod:`.grid` reads the grid language (``_base_``, ``datasets``, ``kind``; every cell's config
resolved before any runs), :mod:`.run` runs or reuses the cells, :mod:`.table` writes
``results.md`` / ``results.csv``. A cell whose folder holds ``metrics.json`` for the same
resolved config is reused; one with a ``last.pt`` for it resumes; a changed cell starts
afresh (the run folder's rule, engine/run_folder.py). After upgrading tinlt, ``--fresh``
retrains (the reuse line names the release that made each run).
"""

from __future__ import annotations

from .grid import Cell, Sweep, load_sweep, load_sweeps, safe_name
from .run import cell_state, run_sweep, subsampling_note
from ..tables import mean_std
from .table import format_markdown, grouped, results_rows, val_score, write_results

__all__ = ["Cell", "Sweep", "load_sweep", "load_sweeps", "safe_name", "run_sweep", "cell_state", "subsampling_note",
           "results_rows", "write_results", "format_markdown", "grouped", "mean_std", "val_score"]
