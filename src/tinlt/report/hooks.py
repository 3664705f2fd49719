"""How reports attach to training (engine/hooks.py): figures in TensorBoard every epoch and
the report folder when the run finishes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .figures import run_figures
from .page import build_report
from .view import load_run, training_run

# figures that need only run.json + log.jsonl (drawn every epoch) and those that need metrics.json (at the end)
EPOCH_FIGURES = ("grad_ratio.png", "eval_curves.png")
FINAL_FIGURES = ("per_class_accuracy.png", "groups.png", "confusion.png", "pr_roc.png")


def _figure_to_rgb(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class ReportHook:
    """A training hook (engine/hooks.py): the report's figures in TensorBoard every epoch
    (``train.tensorboard``) and the report folder when training ends (``train.report``)."""

    def __init__(self, *, figures: bool, report: bool) -> None:
        self.figures, self.report = figures, report

    def _log_figures(self, ctx, final: bool) -> None:
        try:  # a figure must never stop training
            rf, only = (load_run(ctx.run.path), EPOCH_FIGURES + FINAL_FIGURES) if final else \
                (training_run(ctx.run.path), EPOCH_FIGURES)
            if rf is not None:
                figs = run_figures(rf, notes=[], only=only)
                ctx.logger.log_images(ctx.epoch, {Path(n).stem: _figure_to_rgb(f) for n, f in figs.items()})
        except Exception as e:  # noqa: BLE001
            from ..engine.progress import echo

            echo(f"tensorboard: figures skipped ({type(e).__name__}: {e})")

    def on_epoch_end(self, ctx) -> None:
        if self.figures:
            self._log_figures(ctx, final=False)

    def on_finish(self, ctx) -> None:
        from ..engine.progress import echo

        if self.figures:
            self._log_figures(ctx, final=True)
        if self.report:
            try:  # figures and pages for people: a failure here must never lose the run
                echo(f"report: {build_report(ctx.run.path) / 'index.html'}")
            except Exception as e:  # noqa: BLE001
                print(f"tinlt: warning: report not written ({type(e).__name__}: {e})", file=sys.stderr)


def training_hooks(cfg) -> list:
    """The hooks ``tinlt train``, ``demo`` and ``sweep`` attach to a run of ``cfg``."""
    figures, report = bool(cfg.train.get("tensorboard", False)), bool(cfg.train.get("report", True))
    return [ReportHook(figures=figures, report=report)] if (figures or report) else []
