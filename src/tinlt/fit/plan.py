"""What ``tinlt fit`` trains: the recipes (a grid file's cells over the user's config) and, for
each, one run per stratified fold of the training split, plus the refit on every image.

Each fold run is an ordinary run folder (``FIT/folds/<recipe>__fold<k>``) of the recipe's
config with the fold held out (``data.val.kind: kfold``), its raw logits on the fold kept
for every evaluated epoch (``train.save_val_predictions``), the final epoch as its model, no
choice of its own (post-hoc tau, epochs and thresholds are chosen on the pooled out-of-fold
predictions) and no test scoring (``train.final_test: false``). So the sweep machinery runs
them: finished folds are reused, interrupted ones resume, the launcher spreads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from ..config import from_dict, to_dict, validate
from ..errors import TinltError
from ..sweep import Cell, Sweep, load_sweeps

DEFAULT_GRID = "grids/fit_default"
FOLDS_DIR, MODEL_DIR = "folds", "model"
ENSEMBLE_DIR = "ensemble"  # tinlt fit --ensemble: beside the refit, so neither is mistaken for the other


def recipes(grid: str, base: str, overrides: Sequence[str] = ()) -> list[Cell]:
    """The grid's training cells, each resolved over ``base`` (the user's config)."""
    sweeps = load_sweeps(grid, out=Path("."), overrides=list(overrides), base_override=base)
    cells = [c for s in sweeps for c in s.cells]
    for c in cells:
        if c.eval_from is not None or c.zeroshot:
            raise TinltError(f"{grid}: cell '{c.name}': fit recipes train (no eval_from / zeroshot cells)")
        if c.seed is not None:
            raise TinltError(f"{grid}: fit runs one seed (train.seed); give the grid no 'seeds'")
    if not cells:
        raise TinltError(f"{grid}: no recipes")
    return cells


def with_changes(cfg, changes: dict, out: Path):
    """``cfg`` with ``changes`` merged in and its output folder ``out``, validated."""
    merged = OmegaConf.merge(cfg, changes, {"train": {"output_dir": str(out)}})
    cfg = from_dict(to_dict(merged))
    validate(cfg)
    return cfg


def fold_cell(recipe: Cell, k: int, folds: int, seed: int, root: Path) -> Cell:
    """The recipe on fold ``k``: trained on the other folds, its logits on fold k kept."""
    name = f"{recipe.name}__fold{k}"
    cfg = with_changes(recipe.cfg, {
        # the test split is not even loaded: no fold run can read it
        "data": {"val": {"kind": "kfold", "folds": int(folds), "fold": int(k), "seed": int(seed)},
                 "test": {"kind": ""}},
        "train": {"final_test": False, "save_val_predictions": True, "best_checkpoint": "last", "eval_every": 1,
                  "posthoc_tau": 0.0, "posthoc_tau_grid": [], "early_stopping": 0, "report": False}},
        root / FOLDS_DIR / name)
    return Cell(name=name, overrides=list(recipe.overrides), cfg=cfg, group=recipe.name, label=recipe.label,
                kind=recipe.kind)


def fold_sweep(recipes_: Sequence[Cell], folds: int, seed: int, root: Path,
               which: Optional[dict] = None) -> Sweep:
    """One sweep of every (recipe, fold) run; ``which`` {recipe: [folds]} narrows it."""
    cells = [fold_cell(r, k, folds, seed, root) for r in recipes_ for k in range(folds)
             if which is None or k in which.get(r.name, ())]
    return Sweep(path=root, name="fit folds", base="(the recipes)", overrides=[], out=(root / FOLDS_DIR).resolve(),
                 cells=cells)


def refit_config(recipe: Cell, root: Path, *, epochs: Optional[int], tau: float):
    """The recipe on every training image, with the choices made on the pooled out-of-fold
    predictions frozen (epochs, post-hoc tau), no validation split, and nothing scored: the
    test split is left for ``tinlt eval``."""
    changes = {"data": {"val": {"kind": ""}},
               "train": {"final_test": False, "save_val_predictions": False, "best_checkpoint": "last",
                         "eval_every": 0, "posthoc_tau": float(tau), "posthoc_tau_grid": [], "early_stopping": 0}}
    if epochs is not None:
        changes["optim"] = {"epochs": int(epochs)}
    return with_changes(recipe.cfg, changes, root / MODEL_DIR)
