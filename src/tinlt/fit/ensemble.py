"""``tinlt fit --ensemble``: the chosen recipe's K fold models kept and averaged, in place of
one model refit on every image.

Each fold model trained on (K-1)/K of the images; together they saw every image K-1 times.
The ensemble's checkpoint (``FIT/ensemble/best.pt``, and ``last.pt``, the same) holds every
member's weights (``members``) beside the keys any checkpoint has, with the whole training
split's counts and groups and the choices made on the pooled out-of-fold predictions (post-hoc
tau, threshold), so ``eval``, ``predict``, ``export``, ``serve``, ``mine`` and ``report`` take
it as they take a refit model (engine/inference.py builds a models/ensemble.py LogitEnsemble).

The fold runs stop at the recipe's last epoch. When the pooled predictions chose an earlier
one, the folds are trained again to that epoch count (what the refit does too: a schedule of
that length), into ``FIT/ensemble_folds``, through the sweep machinery like every fold run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..engine import checkpoint as ckpt_io
from ..engine.run_folder import RunFolder
from ..errors import TinltError
from ..sweep import Cell, Sweep, run_sweep
from .plan import fold_cell, with_changes

ENSEMBLE_FOLDS_DIR = "ensemble_folds"


def member_runs(recipe: Cell, fold_runs: Sequence[Cell], folds: int, seed: int, root: Path, *,
                epoch: Optional[int], launch=None, log=print) -> list[RunFolder]:
    """The K fold models at the chosen epoch: the fold runs themselves when it is their last
    (or the recipe trains no epochs), else the folds trained again to ``epoch`` epochs."""
    trained = int(recipe.cfg.optim.epochs)
    if epoch is None or trained <= 0 or int(epoch) == trained:
        return [c.run for c in sorted(fold_runs, key=lambda c: c.name)]
    log(f"fit: --ensemble: the folds chose {epoch} of {trained} epochs; training the {folds} fold models to "
        f"{epoch} epochs ({root / ENSEMBLE_FOLDS_DIR})")
    cells = []
    for k in range(folds):
        c = fold_cell(recipe, k, folds, seed, root)
        cfg = with_changes(c.cfg, {"optim": {"epochs": int(epoch)}, "train": {"save_val_predictions": False}},
                           root / ENSEMBLE_FOLDS_DIR / c.name)
        cells.append(Cell(name=c.name, overrides=c.overrides, cfg=cfg, group=c.group, label=c.label, kind=c.kind))
    sweep = Sweep(path=root, name="fit ensemble folds", base="(chosen recipe)", overrides=[],
                  out=(root / ENSEMBLE_FOLDS_DIR).resolve(), cells=cells)
    rows = run_sweep(sweep, quiet=True, log=log, tables=False, launch=launch)
    bad = [r for r in rows if r["status"] not in ("done", "reused")]
    if bad:
        raise TinltError(f"fit: --ensemble: fold run {bad[0].get('name', '?')} did not finish ({bad[0]['status']}); "
                         "run the same command again")
    return [c.run for c in cells]


def write_ensemble(members: Sequence[RunFolder], model_cfg, counts: np.ndarray, out: Path, *, recipe: str) -> RunFolder:
    """``out`` (FIT/ensemble) as a run folder whose checkpoints hold every member's weights; an
    earlier ensemble there (and its scoring) is replaced whole."""
    from ..config import to_dict
    from ..data.groups import shot_groups

    entries, seen, first = [], [], None  # seen: the images each member trained on
    for run in members:
        path = run.last
        if not path.is_file():
            raise TinltError(f"fit: --ensemble: {path} is missing; run the same command again")
        ckpt = ckpt_io.load_checkpoint(path)
        first = first or ckpt
        if list(ckpt["classnames"]) != list(first["classnames"]):
            raise TinltError(f"fit: --ensemble: {path} has other classes than {members[0].last}")
        entries.append({k: ckpt.get(k) for k in ("model", "trainable_only", "base")})
        seen.append(int(np.sum(ckpt["train_counts"])))
    d = model_cfg.data
    groups = shot_groups(counts, many_threshold=d.many_threshold, few_threshold=d.few_threshold, mode=d.groups)
    model = RunFolder(out)
    if model.path.is_dir():  # another ensemble's files, or its eval/, must not outlive it
        shutil.rmtree(model.path)
    model.path.mkdir(parents=True)
    ckpt = {"members": entries, "model": None, "trainable_only": any(e["trainable_only"] for e in entries),
            "ensemble": {"members": len(entries), "recipe": recipe, "sources": [str(m.last) for m in members]},
            "config": to_dict(model_cfg), "classnames": list(first["classnames"]),
            "train_counts": np.asarray(counts).tolist(), "groups": {k: np.asarray(v).tolist() for k, v in groups.items()},
            "versions": ckpt_io.versions(), "epoch": first.get("epoch"), "global_step": first.get("global_step")}
    ckpt_io.save_atomic(ckpt, model.best)
    ckpt_io.copy_atomic(model.best, model.last)
    model.write_config(model_cfg)
    model.write_metrics({"split": None, "ensemble": len(entries)})  # nothing scored: tinlt eval does that, once
    model.write_run_info({"ensemble": len(entries), "recipe": recipe, "train_images": int(np.sum(counts)),
                          "members": [str(m.path) for m in members],
                          "member_train_images": seen})
    return model
