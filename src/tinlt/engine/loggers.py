"""Where training numbers go besides ``log.jsonl``: the ``RunLogger`` protocol and its loggers.

The trainer talks to one :class:`RunLogger` on the main process: per-step scalars, the
per-epoch record, and images. :class:`NullLogger` does nothing; :class:`TensorBoardLogger`
writes TensorBoard event files through torch's own ``SummaryWriter`` (the ``tensorboard``
package is an optional dependency: ``pip install tinlt[tensorboard]``). The engine draws
no figures: the report's hook (:mod:`tinlt.report`) hands its figures to ``log_images``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import TinltError
from .run_folder import TENSORBOARD_DIR


@runtime_checkable
class RunLogger(Protocol):
    def log_step(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None: ...

    def log_images(self, epoch: int, images: Mapping[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Logs nothing (non-main ranks, or no logger asked for)."""

    def log_step(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        pass

    def log_images(self, epoch: int, images: Mapping[str, np.ndarray]) -> None:
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

    def log_images(self, epoch: int, images: Mapping[str, np.ndarray]) -> None:
        """(H, W, 3) uint8 images, e.g. the report's figures, under ``figures/<name>``."""
        for name, rgb in images.items():
            self.writer.add_image(f"figures/{name}", rgb, epoch, dataformats="HWC")
        self.writer.flush()

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
