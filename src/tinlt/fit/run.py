"""``tinlt fit``: the best model for your data, chosen by cross-validation and refit on every image.

1. **Folds.** The training split is cut into K stratified folds (``data.val.kind: kfold``);
   every image is out of fold exactly once, a class with fewer than K images included.
2. **Successive halving.** Every recipe of the grid trains on fold 0 first; the leaders by
   that fold's score (all of them without ``budget``; with one, as many as its estimate
   allows, the best first) then train on the other folds. Everything runs through the sweep
   machinery: finished fold runs are reused, interrupted ones resume, a killed fit restarts
   where it stopped, and the launcher (``--workers``, ``--gpus``, SLURM) spreads the runs.
3. **Choices on the pooled out-of-fold predictions** (:mod:`.oof`), never the test split:
   each recipe's epoch count and post-hoc tau, then the recipe (the cheapest one within the
   noise of the leader: by default its paired bootstrap's 95% interval reaches 0), then the
   threshold for ``target_recall``.
4. **Refit** of the chosen recipe on every training image with those choices frozen, into an
   ordinary run folder (``FIT/model``: eval, predict, export, serve, mine and report work on
   it unchanged), the threshold in its checkpoints; or, with ``ensemble``, the K fold models
   kept and their logits averaged, in ``FIT/ensemble`` (:mod:`.ensemble`). The test split is
   not read: ``tinlt eval --checkpoint FIT/model`` scores it, once.
5. **Doubtful labels** from the chosen recipe's out-of-fold probabilities (cleanlab), and
   the fit folder's leaderboard, predictions and page (:mod:`.outputs`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import fileio
from ..engine.run_folder import RunFolder
from ..errors import TinltError
from ..launch import LaunchOptions
from ..sweep import run_sweep
from ..sweep.table import CELL_FILE
from . import oof
from .plan import DEFAULT_GRID, ENSEMBLE_DIR, MODEL_DIR, fold_sweep, recipes, refit_config

FIT_JSON = "fit.json"


def parse_budget(text: Optional[str]) -> Optional[tuple[str, float]]:
    """``30m`` / ``2h`` / ``90s`` -> ("seconds", s); ``20`` -> ("trainings", 20); None -> None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise TinltError(f"--budget {text!r}: expected a duration (30m, 2h, 90s) or a number of trainings (20)")
    value, unit = float(m.group(1)), m.group(2)
    if not unit:
        return ("trainings", value)
    return ("seconds", value * {"s": 1, "m": 60, "h": 3600}[unit])


def _wall(cell) -> float:
    return float((cell.run.read_json(CELL_FILE) or {}).get("wall_s") or 0.0)


def _work(cell) -> float:
    """A fold run's cost as the choice compares it: optimizer steps x trainable parameters (a
    solved head counts one step). Deterministic, unlike wall time, so the same folds give the
    same choice on any machine; the leaderboard shows the walls beside it."""
    info = cell.run.read_run_info() or {}
    return float(max(1, int(info.get("total_steps") or 0)) * int(info.get("trainable_params") or 0))


def _fold_score(cell, counts: np.ndarray, metric) -> Optional[float]:
    pred = cell.run.read_val_predictions()
    if pred is None:
        return None
    part = oof.Pooled(pred["origin"], pred["target"], pred["epochs"], pred["logits"])
    return oof.choose(part, counts, metric).score


def advance(scores: dict, walls: dict, folds: int, budget: Optional[tuple[str, float]]) -> list[str]:
    """The recipes that train on the remaining folds: every one with a fold-0 score, or with a
    budget the best first while the estimate (fold-0 wall x the folds left) fits; the leader always.
    The budget keeps back one refit: the costliest fold-0 wall x K/(K-1) images, as the chosen
    recipe is not known yet (Fashion-MNIST-LT, seed 0, 40 min: without it all six recipes went on
    and the refit took the fit to 43.5 min)."""
    ranked = sorted((r for r in scores if scores[r] is not None), key=lambda r: -scores[r])
    if budget is None:
        return ranked
    kind, left = budget
    kind_trainings = kind == "trainings"
    left -= len(walls) if kind_trainings else sum(walls.values())
    left -= 1 if kind_trainings else max([walls[r] for r in ranked] or [0.0]) * folds / (folds - 1)
    chosen = []
    for r in ranked:
        need = (folds - 1) if kind_trainings else walls[r] * (folds - 1)
        if not chosen or need <= left:
            chosen.append(r)
            left -= need
    return chosen


def run_fit(config: str, out: str | Path, *, grid: str = DEFAULT_GRID, folds: int = 5, metric: str = "per_class",
            target_recall: Optional[float] = None, budget: Optional[str] = None, overrides: Sequence[str] = (),
            launch: Optional[LaunchOptions] = None, quiet: bool = False, bootstrap: int = oof.BOOTSTRAP,
            only: Optional[Sequence[str]] = None, ensemble: bool = False, noise_rule: str = "ci95",
            log=print) -> dict:
    """Run the whole fit (see the module doc) into ``out``; returns fit.json's record.
    ``ensemble``: keep the chosen recipe's K fold models (logits averaged, :mod:`.ensemble`)
    in place of the refit. ``noise_rule``: when a cheaper recipe is level with the leader
    (:data:`.oof.NOISE_RULES`)."""
    from ..data.build import build_split

    t0 = time.time()
    root = Path(out).resolve()
    if folds < 2:
        raise TinltError(f"--folds must be >= 2, got {folds}")
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise TinltError(f"--target-recall must lie in (0, 1], got {target_recall}")
    oof.check_noise_rule(noise_rule)  # before any training
    cells = recipes(grid, config, overrides)
    if only:
        from ..errors import did_you_mean

        names = [c.name for c in cells]
        for n in only:
            if n not in names:
                raise TinltError(f"--only: no recipe '{n}' in {grid}{did_you_mean(n, names)}")
        cells = [c for c in cells if c.name in only]
    base = cells[0].cfg
    train = build_split(base.data.train, where="data.train")
    counts = train.class_counts()
    measure = oof.metric_fn(metric, counts)
    seed = int(base.data.val.seed) if base.data.val.seed >= 0 else int(base.train.seed)
    plan_budget = parse_budget(budget)
    log(f"fit: {len(cells)} recipes x {folds} folds of {len(train)} training images ({len(counts)} classes) -> {root}")

    # rung 1: every recipe on fold 0
    first = fold_sweep(cells, folds, seed, root, which={c.name: [0] for c in cells})
    run_sweep(first, quiet=True, log=log, tables=False, launch=launch)
    by_name = {c.name: c for c in first.cells}
    scores = {r.name: _fold_score(by_name[f"{r.name}__fold0"], counts, measure) for r in cells}
    walls = {r.name: _wall(by_name[f"{r.name}__fold0"]) for r in cells}
    leaders = advance(scores, walls, folds, plan_budget)
    dropped = [r.name for r in cells if r.name not in leaders]
    log(f"fit: fold 0 scores {', '.join(f'{n} {s:.1f}' for n, s in scores.items() if s is not None)}; "
        f"on to all folds: {', '.join(leaders)}" + (f" (budget leaves out {', '.join(dropped)})" if dropped else ""))

    # rung 2: the leaders on the other folds
    rest = fold_sweep(cells, folds, seed, root, which={n: list(range(1, folds)) for n in leaders})
    run_sweep(rest, quiet=True, log=log, tables=False, launch=launch)

    # the pooled out-of-fold predictions and each recipe's choices
    every = fold_sweep(cells, folds, seed, root, which={n: list(range(folds)) for n in leaders})
    pooled, choices, cost, status, fold_walls = {}, {}, {}, {}, {}
    for r in cells:
        runs = [c for c in every.cells if c.group == r.name]
        parts = [c.run.read_val_predictions() for c in runs]
        if r.name not in leaders:
            status[r.name] = "fold 0 only (left out by the budget)"
        elif any(p is None for p in parts):
            status[r.name] = "failed: " + next(str((c.run.read_json(CELL_FILE) or {}).get("status", "not run"))
                                              for c, p in zip(runs, parts) if p is None)
        else:
            pooled[r.name] = oof.pool(parts, len(train))
            choices[r.name] = oof.choose(pooled[r.name], counts, measure,
                                         tune_epochs=int(r.cfg.optim.epochs) > 0)
            cost[r.name] = sum(_work(c) for c in runs)
            fold_walls[r.name] = sum(_wall(c) for c in runs)
            status[r.name] = "all folds"
    if not pooled:
        raise TinltError(f"fit: no recipe finished all {folds} folds; see the fold runs in {root / 'folds'}")
    leader = max(pooled, key=lambda n: choices[n].score)
    adjusted = {n: oof.adjust(pooled[n].logits[choices[n].epoch_index], counts, choices[n].tau) for n in pooled}
    target = pooled[leader].target
    diffs = {n: oof.bootstrap_diff(adjusted[n], adjusted[leader], target, measure, n=bootstrap, seed=seed)
             for n in pooled if n != leader}
    chosen, why = oof.pick_cheapest(leader, diffs, cost, rule=noise_rule)
    recipe = next(r for r in cells if r.name == chosen)
    choice = choices[chosen]
    log(f"fit: chosen {chosen} ({why}); out-of-fold {metric} {choice.score:.1f}, tau {choice.tau:g}"
        + (f", {choice.epoch} epochs" if int(recipe.cfg.optim.epochs) > 0 else ""))
    threshold = None
    if target_recall is not None:
        threshold = oof.threshold_for(pooled[chosen], choice, counts, target_recall)
        log(f"fit: threshold {threshold['threshold']:.4g} on P({train.classnames[threshold['positive_class']]}) "
            f"reaches recall {threshold['recall']:.3f} (precision {threshold['precision']:.3f}) on all "
            f"{threshold['num_positive']} rare training images out of fold")

    # refit on every image, the choices frozen (or the fold models kept, averaged)
    epochs = choice.epoch if int(recipe.cfg.optim.epochs) > 0 else None
    refit_cfg = refit_config(recipe, root, epochs=epochs, tau=choice.tau)
    if ensemble:
        from .ensemble import member_runs, write_ensemble

        runs = member_runs(recipe, [c for c in every.cells if c.group == chosen], folds, seed, root, epoch=epochs,
                           launch=launch, log=log)
        model = write_ensemble(runs, refit_cfg, counts, root / ENSEMBLE_DIR, recipe=chosen)
        log(f"fit: --ensemble: {len(runs)} fold models of {chosen}, logits averaged -> {model.path}")
    else:
        from ..sweep import Cell, Sweep

        refit = Sweep(path=root, name="fit refit", base="(chosen recipe)", overrides=[], out=root,
                      cells=[Cell(name=MODEL_DIR, overrides=list(recipe.overrides), cfg=refit_cfg, group=chosen,
                                  label=recipe.label, kind=recipe.kind)])
        rows = run_sweep(refit, quiet=quiet, log=log, tables=False, launch=launch)
        if rows[0]["status"] not in ("done", "reused"):
            raise TinltError(f"fit: the refit of {chosen} did not finish ({rows[0]['status']}); "
                             "run the same command again")
        model = RunFolder(root / MODEL_DIR)
    warning = None
    if not ensemble and epochs is not None:
        warning = refit_warning(model.read_log(), [c.run.read_log() for c in every.cells if c.group == chosen],
                                epochs)
        if warning:
            log(f"fit: warning: {warning}")
    if threshold is not None:
        _set_threshold(model, threshold, train.classnames, target_recall)

    from .outputs import write_outputs

    record = {
        "recipes": [{"name": r.name, "kind": r.kind, "label": r.label, "status": status[r.name],
                     "fold0": scores[r.name], "score": choices[r.name].score if r.name in choices else None,
                     "interval_vs_leader": [diffs[r.name].lo, diffs[r.name].hi] if r.name in diffs else None,
                     "se_vs_leader": diffs[r.name].se if r.name in diffs else None,
                     "tau": choices[r.name].tau if r.name in choices else None,
                     "epoch": choices[r.name].epoch if r.name in choices else None,
                     "work": cost.get(r.name), "cost_s": fold_walls.get(r.name),
                     "overrides": r.overrides} for r in cells],
        "metric": metric, "folds": folds, "seed": seed, "leader": leader, "chosen": chosen, "why": why,
        "noise_rule": noise_rule, "refit_warning": warning,
        "threshold": threshold, "model": str(model.path), "ensemble": folds if ensemble else None,
        "train_images": len(train),
        "train_counts": counts.tolist(), "classnames": list(train.classnames), "budget": budget,
        "wall_s": round(time.time() - t0, 1),
    }
    write_outputs(root, record, pooled, choices, counts, train, adjusted[chosen], log=log)
    fileio.write_json(root / FIT_JSON, record)
    return record


def _loss_drop(records: list[dict], epoch: int) -> Optional[float]:
    """How far the training loss fell from the first epoch to ``epoch``, as a fraction of the first."""
    loss = {int(r["epoch"]): r.get("loss") for r in records}
    first, then = loss.get(1), loss.get(epoch)
    if not isinstance(first, (int, float)) or not isinstance(then, (int, float)) or first <= 0:
        return None
    return (first - then) / first


def refit_warning(refit_log: list[dict], fold_logs: list[list[dict]], epochs: int) -> Optional[str]:
    """A refit that did not learn, said in words, or None. Its training loss must fall from the
    first epoch to the last by at least half as much as the least of the fold runs' falls to the
    same epoch. Clamp-like set, seed 1: ft_bs's refit stayed at the prior's loss (0.111 -> 0.108,
    3%) while its folds fell 13-37%; it scored 79.0 on test, its fold models' mean 81.0, and its
    out-of-fold threshold predicted every image rare. A bare "worse than every fold" would cry
    wolf one refit in six."""
    drops = [d for d in (_loss_drop(f, epochs) for f in fold_logs) if d is not None]
    mine = _loss_drop(refit_log, epochs)
    if mine is None or not drops or mine >= 0.5 * min(drops):
        return None
    return (f"the refit's training loss fell {100 * mine:.0f}% from its first epoch to epoch {epochs}, the fold "
            f"runs' {100 * min(drops):.0f}-{100 * max(drops):.0f}%: it may not have learned (a bad start), and "
            "the out-of-fold threshold and tau may not fit it. Run the fit again with another train.seed, "
            "or keep the fold models with --ensemble")


def _set_threshold(model: RunFolder, threshold: dict, classnames, target_recall: float) -> None:
    """The threshold into the model's checkpoints, as ``tinlt calibrate`` stores it (predict,
    export, serve and eval apply it), chosen on the pooled out-of-fold predictions."""
    from ..engine import checkpoint as ckpt_io

    pos = int(threshold["positive_class"])
    info = {"target_recall": float(target_recall), "recall": threshold["recall"], "precision": threshold["precision"],
            "split": "out-of-fold (tinlt fit)", "positive_class": pos, "positive_name": classnames[pos],
            "num_samples": threshold["num_samples"], "num_positive": threshold["num_positive"],
            "score_at_point": threshold["score_at_point"], "next_score": threshold["next_score"],
            "rule": f"predict '{classnames[pos]}' when P({classnames[pos]}) >= threshold"}
    for path in (model.best, model.last):
        if path.is_file():
            ckpt = ckpt_io.load_checkpoint(path)
            ckpt.update(threshold=float(threshold["threshold"]), threshold_info=info)
            ckpt_io.save_atomic(ckpt, path)


def folder_config(train_folder: str, test_folder: Optional[str], out: Path) -> Path:
    """A config for the common case: the offline starter recipe over two folder trees."""
    test = f"  test: {{kind: folder, path: {Path(test_folder).resolve()}}}\n" if test_folder else ""
    text = (f"_base_: starter_offline\ndata:\n  train: {{kind: folder, path: {Path(train_folder).resolve()}}}\n{test}"
            f"train: {{output_dir: {out / MODEL_DIR}}}\n")
    return fileio.write_text(out / "base.yaml", text)
