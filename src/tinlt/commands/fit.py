"""``tinlt fit``: recipes compared by K-fold cross-validation on your training images, the best
refit on all of them (tinlt.fit; docs/fit.md)."""

from __future__ import annotations

import argparse

from .common import add_launch_args, launch_options


def register(subparsers) -> dict:
    p = subparsers.add_parser(
        "fit",
        help="choose the best recipe for your data by cross-validation, refit it on every image",
        description="Runs every recipe of a grid (default grids/fit_default) on K stratified folds of the training "
        "split, chooses on the pooled out-of-fold predictions (recipe, epochs, post-hoc tau, threshold), refits the "
        "choice on every training image into OUT/model and writes OUT/leaderboard.md, oof_predictions.csv, "
        "label_issues.csv and index.html. The test split is not read: tinlt eval --checkpoint OUT/model scores it.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", "-c", help="your config (data, towers, budget), e.g. my_run.yaml")
    src.add_argument("--train-folder", help="a class-per-folder training tree (with the offline starter recipe)")
    p.add_argument("--test-folder", default=None, help="with --train-folder: the test tree (for tinlt eval)")
    p.add_argument("--out", default="runs/fit", help="the fit folder (default: runs/fit)")
    p.add_argument("--grid", default="grids/fit_default", help="the recipes: a grid file")
    p.add_argument("--only", default=None, help="comma-separated recipes of the grid to compare (default: all)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--metric", default="per_class",
                   help="per_class (mean per-class accuracy), balanced_accuracy, auc, or recall@P (two classes)")
    p.add_argument("--target-recall", type=float, default=None,
                   help="two classes: the rare class's recall the threshold must reach (out of fold)")
    p.add_argument("--budget", default=None,
                   help="30m / 2h (time) or 20 (trainings): only the leaders on fold 0 get the other folds")
    p.add_argument("--ensemble", action="store_true",
                   help="keep the chosen recipe's K fold models (logits averaged) instead of refitting one model")
    p.add_argument("--noise-rule", default="ci95",
                   help="when a cheaper recipe is level with the leader: ci95 (its 95%% bootstrap interval reaches "
                        "0, the default) or one_se (its difference is within one bootstrap standard error: narrower)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every recipe (e.g. train.seed=1)")
    p.add_argument("--quiet", "-q", action="store_true")
    add_launch_args(p)
    return {"fit": _cmd_fit}


def _cmd_fit(a: argparse.Namespace) -> int:
    from pathlib import Path

    from ..fit import folder_config, run_fit

    out = Path(a.out)
    config = a.config or str(folder_config(a.train_folder, a.test_folder, out.resolve()))
    record = run_fit(config, out, grid=a.grid, folds=a.folds, metric=a.metric, target_recall=a.target_recall,
                     budget=a.budget, overrides=a.overrides, launch=launch_options(a), quiet=a.quiet,
                     only=[n.strip() for n in a.only.split(",") if n.strip()] if a.only else None,
                     ensemble=a.ensemble, noise_rule=a.noise_rule)
    print((out / "leaderboard.md").read_text())
    print(f"model: {record['model']}  (tinlt eval --checkpoint {record['model']} scores the test split)")
    return 0
