"""Where training numbers go besides ``log.jsonl``: the ``RunLogger`` protocol and its loggers.

The trainer talks to one :class:`RunLogger` on the main process: per-step scalars, the
per-epoch record, and figures drawn from the run folder. :class:`NullLogger` does nothing;
:class:`TensorBoardLogger` writes TensorBoard event files through torch's own
``SummaryWriter`` (the ``tensorboard`` package is an optional dependency:
``pip install tinlt[tensorboard]``). Figures are the report's own (:mod:`tinlt.report`).
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import TinltError

TENSORBOARD_DIR = "tensorboard"  # inside the run folder

# figures that need only run.json + log.jsonl (drawn every epoch) and those that need metrics.json (at the end)
EPOCH_FIGURES = ("grad_ratio.png", "eval_curves.png")
FINAL_FIGURES = ("per_class_accuracy.png", "groups.png", "confusion.png", "pr_roc.png")


@runtime_checkable
class RunLogger(Protocol):
    def log_step(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None: ...

    def log_figures(self, epoch: int, run_dir: str | Path) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Logs nothing (non-main ranks, or no logger asked for)."""

    def log_step(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        pass

    def log_figures(self, epoch: int, run_dir: str | Path) -> None:
        pass

    def close(self) -> None:
        pass


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def _scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) record as ``{"test/overall": 41.2, ...}``; lists are skipped."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, Mapping):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def _figure_to_rgb(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class TensorBoardLogger:
    """TensorBoard event files in ``log_dir``: ``train/*`` per step, ``epoch/*`` and ``<split>/*`` per epoch,
    ``figures/*`` images.

    ``step_every``: log step scalars every this many optimizer steps (and at step 1).
    """

    def __init__(self, log_dir: str | Path, *, step_every: int = 1) -> None:
        if not tensorboard_available():
            raise TinltError(
                "config key 'train.tensorboard' is true but the tensorboard package is not installed: "
                "pip install tinlt[tensorboard]"
            )
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.step_every = max(1, int(step_every))
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._started = time.time()

    def log_step(self, step: int, scalars: Mapping[str, float]) -> None:
        if step != 1 and step % self.step_every:
            return
        for k, v in _scalars(scalars).items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        for k, v in _scalars(record).items():
            if k in ("epoch", "step"):  # the x-axis, not a curve
                continue
            self.writer.add_scalar(k if "/" in k else f"epoch/{k}", v, epoch)
        self.writer.flush()  # a killed run keeps what it logged

    def log_figures(self, epoch: int, run_dir: str | Path) -> None:
        """The report's figures for the run folder as it is now; never raises (figures are a bonus)."""
        from ..report import load_run, run_figures, training_run

        run_dir = Path(run_dir)
        metrics = run_dir / "metrics.json"
        try:
            if metrics.is_file() and metrics.stat().st_mtime >= self._started:
                rf, only = load_run(run_dir), EPOCH_FIGURES + FINAL_FIGURES
            else:  # mid-training: no fresh metrics.json yet
                rf, only = training_run(run_dir), EPOCH_FIGURES
            if rf is None:
                return
            for name, fig in run_figures(rf, notes=[], only=only).items():
                self.writer.add_image(f"figures/{Path(name).stem}", _figure_to_rgb(fig), epoch, dataformats="HWC")
            self.writer.flush()
        except Exception as e:  # noqa: BLE001 - a figure must never stop training
            from .progress import echo

            echo(f"tensorboard: figures skipped ({type(e).__name__}: {e})")

    def close(self) -> None:
        self.writer.close()


def make_logger(cfg, run_dir: str | Path, is_main: bool = True) -> RunLogger:
    """The logger a config asks for; every rank checks the dependency, only the main one writes."""
    if not bool(cfg.train.get("tensorboard", False)):
        return NullLogger()
    if not tensorboard_available():
        TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR)  # raises the one-line install hint
    if not is_main:
        return NullLogger()
    return TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR)
