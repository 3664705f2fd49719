"""What a report reads from a run folder, through :class:`~tinlt.engine.run_folder.RunFolder`.

Owns :class:`RunView` and :func:`load_run`: ``metrics.json`` (required), and ``run.json``,
``config.yaml`` and ``log.jsonl`` when present. A ``tinlt eval`` folder holds only
``metrics.json``; it borrows the rest from the training run one level up when the class
names agree. Every missing piece costs a figure (with a note on the page), never the report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import fileio
from ..engine.run_folder import CONFIG, LOG, METRICS, RUN_INFO, RunFolder
from ..errors import TinltError

GROUP_NAMES = ("many", "medium", "few")


@dataclass
class RunView:
    """Everything a report needs from one run (or eval) folder."""

    path: Path
    metrics: dict
    run: dict = field(default_factory=dict)  # run.json, {} when absent
    log: list = field(default_factory=list)  # log.jsonl records, de-duplicated by epoch
    config_text: str = ""  # config.yaml as written
    config: Any = None  # the loaded DictConfig, or None
    meta_dir: Optional[Path] = None  # where run.json / config.yaml were found (path or its parent)
    notes: list = field(default_factory=list)  # what could not be shown, and why

    @property
    def name(self) -> str:
        if self.meta_dir is not None and self.meta_dir != self.path:
            return f"{self.meta_dir.name}/{self.path.name}"
        return self.path.name

    @property
    def per_class(self) -> list:
        return self.metrics["per_class"]

    @property
    def classnames(self) -> list:
        return [str(r["name"]) for r in self.per_class]

    @property
    def train_counts(self) -> np.ndarray:
        return np.array([int(r["train_count"]) for r in self.per_class], dtype=np.int64)

    @property
    def accuracy(self) -> np.ndarray:
        return np.array([np.nan if r["accuracy"] is None else float(r["accuracy"]) for r in self.per_class])

    def group_of(self) -> list:
        """Group name of each class: run.json's stored groups, else metrics.json's per-class field."""
        groups = self.run.get("groups")
        out: list = [None] * len(self.per_class)
        if isinstance(groups, dict):
            for name in GROUP_NAMES:
                for c in groups.get(name, []):
                    if 0 <= int(c) < len(out) and out[int(c)] is None:
                        out[int(c)] = name
            if any(g is not None for g in out):
                return out
        return [r.get("group") for r in self.per_class]


def load_run(path: str | os.PathLike) -> RunView:
    """Read a run folder (or a ``tinlt eval`` folder); TinltError if it holds no usable metrics.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise TinltError(f"{folder}: no such run folder")
    mpath = folder / METRICS
    if not mpath.is_file():
        raise TinltError(f"{folder}: no {METRICS} here (not a finished tinlt run or eval folder)")
    metrics = fileio.load_json(mpath)
    if not isinstance(metrics, dict):
        raise TinltError(f"{mpath}: expected a JSON object")
    for key in ("per_class", "confusion", "overall"):
        if key not in metrics:
            raise TinltError(f"{mpath}: missing key '{key}' (not written by tinlt?)")
    rows = metrics["per_class"]
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"name", "train_count", "test_count", "accuracy"} <= r.keys() for r in rows
    ):
        raise TinltError(f"{mpath}: 'per_class' must be a list of rows with name, train_count, test_count, accuracy")
    names = [str(r.get("name")) for r in rows]
    rf = RunView(path=folder, metrics=metrics)

    def _matches(d: Path) -> bool:
        if not (d / RUN_INFO).is_file():
            return (d / CONFIG).is_file()
        try:
            run = json.loads((d / RUN_INFO).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(run, dict) and list(map(str, run.get("classnames", names))) == names

    # an eval folder sits inside (or next to) the checkpoint's run folder
    for d in (folder, folder.parent):
        if ((d / RUN_INFO).is_file() or (d / CONFIG).is_file()) and _matches(d):
            rf.meta_dir = d
            break
    if rf.meta_dir is not None and rf.meta_dir != folder:
        rf.notes.append(f"{RUN_INFO}, {CONFIG} and {LOG} are those of the training run in {rf.meta_dir}")
    _read_meta(rf)
    return rf


def training_run(path: str | os.PathLike) -> Optional[RunView]:
    """A run still training (no metrics.json yet) from run.json and log.jsonl, or None without run.json.

    Holds no accuracies: only the figures drawn from the log (gradient ratio, accuracy per
    epoch) make sense for it.
    """
    folder = Path(path)
    try:
        run = json.loads((folder / RUN_INFO).read_text())
        names, counts = list(run["classnames"]), list(run["train_counts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    per_class = [{"class": c, "name": str(n), "train_count": int(k), "test_count": 0, "accuracy": None, "group": None}
                 for c, (n, k) in enumerate(zip(names, counts))]
    rf = RunView(path=folder, metrics={"per_class": per_class, "confusion": [], "overall": None}, meta_dir=folder)
    _read_meta(rf)
    return rf


def _read_meta(rf: RunView) -> None:
    if rf.meta_dir is not None:
        if (rf.meta_dir / RUN_INFO).is_file():
            try:
                run = fileio.load_json(rf.meta_dir / RUN_INFO)
                rf.run = run if isinstance(run, dict) else {}
            except TinltError as e:
                rf.notes.append(str(e))
        cpath = rf.meta_dir / CONFIG
        if cpath.is_file():
            rf.config_text = cpath.read_text()
            from ..config import load_config

            try:
                rf.config = load_config(cpath)
            except TinltError as e:
                rf.notes.append(f"config not loaded: {e}")
        lpath = rf.meta_dir / LOG
        if lpath.is_file():
            rf.log = RunFolder(rf.meta_dir).read_log(notes=rf.notes)
