"""A run's data: its splits loaded, checked up front, and summarised (counts, shot groups).

Owns ``DataBundle`` / :func:`build_data`: the train, evaluation (val, else test) and test
splits of a config, cleaned by the up-front data check (``data.validate``; bad samples
skipped and listed in the run folder's data report, or fatal with ``data.strict``), the
training-split class counts and the shot groups computed from them once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import TinltError
from .samples import Samples


@dataclass
class DataBundle:
    train: Optional[Samples]
    evaluation: Samples  # the split scored every epoch and used for selection (val, else test)
    test: Optional[Samples]
    eval_name: str  # "val" or "test"
    classnames: list
    train_counts: np.ndarray
    groups: dict
    skipped: list = field(default_factory=list)  # (item, reason) removed by the up-front data check
    check: Optional[object] = None  # tinlt.data.validate.DataCheck, when data.validate is on
    held_out: Optional[np.ndarray] = None  # data.val.kind=holdout: the validation images' indices in data.train

    def summary(self) -> dict:
        """Classes, training counts and shot groups as plain lists (run.json, checkpoints)."""
        return {"classnames": list(self.classnames), "train_counts": np.asarray(self.train_counts).tolist(),
                "groups": {k: np.asarray(v).tolist() for k, v in self.groups.items()}}

    def selection_note(self, scores_test: bool = True) -> Optional[str]:
        """A warning when model selection would look at the test split (no validation split)."""
        if self.eval_name == "test" and scores_test:
            return ("no validation split: best.pt and every choice made during training use the test split; "
                    "hold one out with data.val.kind=holdout data.val.fraction=0.1")
        return None

    @property
    def final(self) -> Samples:
        """The split the final metrics are computed on: test, else the evaluation split."""
        return self.test if self.test is not None else self.evaluation

    @classmethod
    def from_counts(cls, test: Samples, classnames, train_counts, groups) -> "DataBundle":
        """A bundle for scoring a checkpoint: class counts and groups travel in the checkpoint."""
        groups = {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
        return cls(None, test, test, "test", list(classnames), np.asarray(train_counts), groups)


def build_data(cfg, *, report_dir: Optional[str] = None) -> DataBundle:
    """Load the splits of ``cfg.data``, then check them up front (``data.validate``): bad
    samples are skipped and listed in ``report_dir``'s data report, or fail the run if
    ``data.strict``. ``report_dir`` defaults to ``train.output_dir``."""
    from .build import build_split, check_same_classes
    from .groups import shot_groups
    from .validate import print_summary, validate_data

    train = build_split(cfg.data.train)
    if train is None:
        raise TinltError("config key 'data.train.kind' is empty: a training split is required")
    held_out = None
    kind = str(cfg.data.val.kind or "")
    if kind in ("holdout", "kfold"):
        from .holdout import hold_out, k_fold

        seed = cfg.data.val.seed if cfg.data.val.seed >= 0 else cfg.train.seed
        if kind == "holdout":
            train, val, held_out = hold_out(train, float(cfg.data.val.fraction), int(seed))
        else:
            train, val, held_out = k_fold(train, int(cfg.data.val.folds), int(cfg.data.val.fold), int(seed))
    else:
        val = build_split(cfg.data.val)
    test = build_split(cfg.data.test)
    check = None
    if cfg.data.get("validate", True):
        is_main = os.environ.get("RANK", "0") == "0"  # every rank cleans alike; one writes the report
        check = validate_data(
            {"data.train": train, "data.val": val, "data.test": test},
            out_dir=(report_dir or cfg.train.output_dir) if is_main else None,
            strict=bool(cfg.data.get("strict", False)),
        )
        train, val, test = (check.samples(k) for k in ("data.train", "data.val", "data.test"))
        if is_main:
            print_summary(check, quiet=cfg.train.quiet)
    for name, other in (("val", val), ("test", test)):
        if other is not None:
            check_same_classes(train, other, f"data.{name}")
    evaluation, eval_name = (val, "val") if val is not None else (test, "test")
    if evaluation is None and cfg.train.get("final_test", True):
        raise TinltError("no evaluation split: set 'data.val' or 'data.test'")
    counts = train.class_counts()
    groups = shot_groups(
        counts, many_threshold=cfg.data.many_threshold, few_threshold=cfg.data.few_threshold, mode=cfg.data.groups
    )
    skipped = check.skipped if check is not None else []
    bundle = DataBundle(train, evaluation, test, eval_name, list(train.classnames), counts, groups, skipped, check)
    bundle.held_out = held_out
    return bundle
