"""``tinlt fit``: folds, out-of-fold pooling, choices on them, refit, doubtful labels, resume.

Expected values come from first principles (fold counts, set algebra on indices), a
re-implementation written here (the paired bootstrap), scikit-learn (the solved probe) and
cleanlab's definition (labels flipped on purpose are found).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import COLOURS, write_class_folders
from tinlt.cli import main
from tinlt.data.holdout import fold_of
from tinlt.errors import TinltError
from tinlt.fit import oof
from tinlt.fit.run import advance, parse_budget, refit_warning

GRID = """cells:
  - {name: text, kind: tin, overrides: [optim.epochs=2]}
  - {name: probe, kind: baseline, overrides: [model.head=linear, model.visual_attention=false,
     model.tune_image.method=frozen, model.classifier_init=logistic, optim.epochs=0]}
"""


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """Three colour classes (20 / 8 / 3 training images) a probe separates, and a test tree."""
    root = tmp_path_factory.mktemp("fit")
    names = ["red", "green", "blue"]
    cols = dict(zip(names, COLOURS))
    write_class_folders(root / "train", dict(zip(names, [20, 8, 3])), cols, seed=0, spread=30)
    write_class_folders(root / "test", dict(zip(names, [4, 4, 4])), cols, seed=1, spread=30)
    (root / "base.yaml").write_text(
        "model: {name: tiny-vit}\n"
        f"data: {{train: {{kind: folder, path: {root / 'train'}}}, test: {{kind: folder, path: {root / 'test'}}},"
        " image_size: 32, num_workers: 0}\n"
        "optim: {name: adamw, lr: 1.0e-3, batch_size: 8, epochs: 2}\n"
        "train: {eval_batch_size: 16, quiet: true, report: false}\n")
    (root / "grid.yaml").write_text(GRID)
    return root


def _fit(root: Path, out: Path, *extra: str) -> dict:
    assert main(["fit", "-c", str(root / "base.yaml"), "--grid", str(root / "grid.yaml"), "--folds", "3",
                 "--out", str(out), "-q", *extra]) == 0
    return json.loads((out / "fit.json").read_text())


@pytest.fixture(scope="module")
def fitted(colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitout") / "fit"
    return colours, out, _fit(colours, out)


# --------------------------------------------------------------------------- folds


def test_folds_are_stratified_and_each_image_is_out_of_fold_once():
    labels = np.repeat(np.arange(5), [23, 7, 4, 2, 1])
    f = fold_of(labels, 5, seed=3)
    assert sorted(np.bincount(f).tolist()) == [7, 7, 7, 8, 8]  # sizes differ by at most one
    for c, n in enumerate([23, 7, 4, 2, 1]):
        per = np.bincount(f[labels == c], minlength=5)
        assert per.max() - per.min() <= 1 and per.sum() == n  # spread evenly, none dropped
        if n < 5:
            assert per.max() == 1  # a class smaller than K: one image per fold, the rest still train
    assert np.array_equal(fold_of(labels, 5, seed=3), f) and not np.array_equal(fold_of(labels, 5, seed=4), f)


def test_no_fold_model_scores_its_own_training_images(fitted):
    _, out, rec = fitted
    n = rec["train_images"]
    for recipe in ("text", "probe"):
        seen = []
        for k in range(3):
            run = out / "folds" / f"{recipe}__fold{k}"
            held = set(json.loads((run / "run.json").read_text())["held_out"])
            pred = np.load(run / "val_predictions.npz")
            assert set(pred["origin"].tolist()) == held  # scored: exactly its own held-out fold
            info = json.loads((run / "run.json").read_text())
            assert info["train_images"] == n - len(held)  # trained: everything else
            seen += pred["origin"].tolist()
        assert sorted(seen) == list(range(n))  # every image out of fold exactly once


# --------------------------------------------------------------------------- choices on the pooled predictions


def test_the_paired_bootstrap_matches_a_hand_computation():
    rng = np.random.default_rng(5)
    target = np.repeat([0, 1, 2], [12, 6, 3])
    a, b = rng.normal(size=(21, 3)), rng.normal(size=(21, 3))
    a[np.arange(21), target] += 1.0  # a is better on average
    d = oof.bootstrap_diff(a, b, target, oof.per_class_accuracy, n=200, seed=9)
    # by hand: the same resamples, the metric written out with loops
    def acc(logits, t):
        vals = []
        for c in sorted(set(t.tolist())):
            rows = [i for i in range(len(t)) if t[i] == c]
            vals.append(sum(int(np.argmax(logits[i]) == c) for i in rows) / len(rows))
        return 100 * sum(vals) / len(vals)
    r = np.random.default_rng(9)
    diffs = []
    for _ in range(200):
        idx = r.integers(0, 21, 21)
        diffs.append(acc(a[idx], target[idx]) - acc(b[idx], target[idx]))
    assert (d.lo, d.hi) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    mean = sum(diffs) / 200
    assert d.se == pytest.approx((sum((x - mean) ** 2 for x in diffs) / 199) ** 0.5)  # sample std of the resamples
    assert d.diff == pytest.approx(acc(a, target) - acc(b, target))  # on every image, not a resample
    assert d.diff > 0 and d.lo < d.diff < d.hi
    assert oof.bootstrap_diff(a, a, target, oof.per_class_accuracy, n=50) == (0.0, 0.0, 0.0, 0.0)


def test_the_cheaper_recipe_wins_within_the_noise():
    D = oof.Diff  # (difference, 95% lo, 95% hi, standard error), points
    diffs = {"probe": D(-1.0, -3.0, 1.0, 1.2), "ft": D(-4.0, -9.0, -0.5, 2.0), "lift": D(-0.5, -2.0, 4.0, 1.5)}
    cost = {"tin": 900.0, "probe": 20.0, "ft": 5.0, "lift": 400.0}
    for rule in oof.NOISE_RULES:
        chosen, why = oof.pick_cheapest("tin", diffs, cost, rule=rule)
        assert chosen == "probe" and "within the noise" in why  # ft is cheaper but clearly worse
        assert oof.pick_cheapest("tin", {"ft": diffs["ft"]}, cost, rule=rule)[0] == "tin"


def test_one_standard_error_is_narrower_than_an_interval_that_reaches_zero():
    # the clamp-like fit's probe (seed 1): 5.4 points behind, SE 4.1, interval -14.0 .. +2.0
    probe = oof.Diff(-5.4, -14.0, 2.0, 4.1)
    cost = {"ft_bs": 4.7e9, "probe": 1.3e4}
    assert oof.pick_cheapest("ft_bs", {"probe": probe}, cost)[0] == "probe"  # ci95, the default
    chosen, why = oof.pick_cheapest("ft_bs", {"probe": probe}, cost, rule="one_se")
    assert chosen == "ft_bs" and why == "the best pooled out-of-fold score"
    level = oof.Diff(-4.0, -12.0, 4.0, 4.1)  # one SE behind or less: level
    chosen, why = oof.pick_cheapest("ft_bs", {"probe": level}, cost, rule="one_se")
    assert chosen == "probe" and "-4.0 points, within one standard error (4.1)" in why
    assert oof.within_noise(oof.Diff(-4.1, -12.0, 4.0, 4.1), "one_se")
    assert not oof.within_noise(oof.Diff(-4.2, -12.0, 4.0, 4.1), "one_se")
    assert not oof.within_noise(oof.Diff(-0.1, -0.5, -0.01, 0.1))  # ci95: an interval below 0, however close
    with pytest.raises(TinltError, match="--noise-rule") as e:
        oof.within_noise(probe, "two\nse")
    assert "\n" not in str(e.value)  # the hostile value is quoted, not printed raw


def test_tau_and_epoch_are_chosen_on_the_pooled_predictions():
    counts = np.array([90, 10])
    target = np.array([0] * 9 + [1] * 3)
    logits = np.zeros((2, 12, 2))
    logits[0, :, 0] = 1.0  # epoch 1: everything called the common class
    logits[1, :9, 0] = 2.5  # epoch 2: the rare images lean rare, but only after adjustment
    logits[1, 9:, 0] = 1.0
    p = oof.Pooled(np.arange(12), target, np.array([1, 2]), logits)
    c = oof.choose(p, counts, oof.per_class_accuracy)
    # by hand: log prior ratio = log 9 = 2.197; tau 0.5 shifts the rare logit up by 1.10: rare wins at 1.0, not at 2.5
    assert (c.epoch, c.tau, c.score) == (2, 0.5, 100.0)


def test_budget_keeps_the_leaders_that_fit():
    scores, walls = {"a": 70.0, "b": 80.0, "c": 60.0}, {"a": 10.0, "b": 100.0, "c": 15.0}
    assert advance(scores, walls, 5, None) == ["b", "a", "c"]
    # 12 min: 125 s spent on fold 0 and 125 kept for the refit (the costliest, b: 100 x 5/4), 470 s left;
    # b needs 4 x 100 (it leads: always), a 40 (30 left), c 60: out
    assert advance(scores, walls, 5, parse_budget("12m")) == ["b", "a"]
    assert advance(scores, walls, 5, parse_budget("13m")) == ["b", "a", "c"]  # 530 left: 400 + 40 + 60
    assert advance(scores, walls, 5, parse_budget("3m")) == ["b"]  # nothing left: the leader alone
    # trainings: 3 spent on fold 0, 1 kept for the refit, each recipe needs 4 more
    assert advance(scores, walls, 5, parse_budget("11")) == ["b"]  # 7 left
    assert advance(scores, walls, 5, parse_budget("12")) == ["b", "a"]  # 8 left
    with pytest.raises(Exception, match="--budget"):
        parse_budget("soon")


# --------------------------------------------------------------------------- the refit and its outputs


def test_the_refit_trains_on_every_image_and_leaves_the_test_split_unread(fitted):
    _, out, rec = fitted
    model = out / "model"
    info = json.loads((model / "run.json").read_text())
    assert info["train_images"] == rec["train_images"] == 31 and info["held_out"] is None
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["split"] is None and "overall" not in metrics  # nothing scored
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((model / "config.yaml").read_text())))
    chosen = next(r for r in rec["recipes"] if r["name"] == rec["chosen"])
    assert cfg["train"]["posthoc_tau"] == chosen["tau"]
    assert rec["noise_rule"] == "ci95"  # the default: the issue's "within the noise"
    assert main(["eval", "--checkpoint", str(model), "-q"]) == 0  # the one scoring of the test split
    assert json.loads((model / "eval" / "metrics.json").read_text())["overall"] is not None
    lb = (out / "leaderboard.md").read_text()
    assert f"**{rec['chosen']}**" in lb and (out / "index.html").is_file()
    rows = (out / "oof_predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 31


def _losses(*values: float) -> list[dict]:
    return [{"epoch": i + 1, "loss": v} for i, v in enumerate(values)]


def test_a_refit_whose_loss_fell_less_than_half_the_folds_least_is_said():
    folds = [_losses(1.0, 0.6, 0.5, 0.4), _losses(2.0, 1.4, 1.1, 0.9)]  # to epoch 3: 50% and 45% falls
    assert refit_warning(_losses(1.0, 0.9, 0.77), folds, 3) is None  # 23%: at least half of 45%
    said = refit_warning(_losses(1.0, 0.9, 0.8), folds, 3)  # 20%
    assert "fell 20%" in said and "45-50%" in said and "--ensemble" in said
    # the folds at the refit's epoch count, not at their own last epoch (60% and 55% there)
    assert refit_warning(_losses(1.0, 0.8), folds, 2) is None  # 20% against 30-40%
    assert refit_warning(_losses(1.0, 0.86), folds, 2) is not None  # 14%: under half of 30%
    assert refit_warning(_losses(1.0), folds, 1) is None and refit_warning([], folds, 3) is None


def test_a_refit_that_did_not_learn_is_said_in_the_fit_folder(colours, tmp_path):
    from tinlt.engine.run_folder import RunFolder

    out = tmp_path / "fit"
    rec = _fit(colours, out, "--only", "text")
    assert rec["chosen"] == "text" and rec["refit_warning"] is None
    epochs = rec["recipes"][0]["epoch"]
    assert epochs == 2
    # the fold runs' logs as falling runs, the refit's as one stuck at its first loss: the fit
    # again reuses every run and reads the logs anew
    for k in range(3):
        RunFolder(out / "folds" / f"text__fold{k}").rewrite_log(_losses(1.0, 0.5))
    RunFolder(out / "model").rewrite_log(_losses(1.0, 0.97))
    rec = _fit(colours, out, "--only", "text")
    assert "fell 3%" in rec["refit_warning"] and "50-50%" in rec["refit_warning"]
    assert "**warning**: the refit's training loss fell 3%" in (out / "leaderboard.md").read_text()
    assert "it may not have learned" in (out / "index.html").read_text()


def test_scrambled_test_labels_change_no_choice(colours, fitted, tmp_path):
    """The fit reads nothing of the test split: with its labels scrambled every choice and every
    weight is the same."""
    _, _, rec = fitted
    scrambled = tmp_path / "data"
    import shutil

    shutil.copytree(colours / "train", scrambled / "train")
    shutil.copytree(colours / "test", scrambled / "test")
    (scrambled / "test" / "red").rename(scrambled / "test" / "tmp")
    (scrambled / "test" / "blue").rename(scrambled / "test" / "red")
    (scrambled / "test" / "tmp").rename(scrambled / "test" / "blue")
    base = (colours / "base.yaml").read_text().replace(str(colours / "test"), str(scrambled / "test"))
    (scrambled / "base.yaml").write_text(base)
    (scrambled / "grid.yaml").write_text(GRID)
    other = _fit(scrambled, tmp_path / "fit")
    keys = ("chosen", "leader", "why", "threshold")
    assert {k: other[k] for k in keys} == {k: rec[k] for k in keys}
    assert [(r["score"], r["tau"], r["epoch"]) for r in other["recipes"]] == \
        [(r["score"], r["tau"], r["epoch"]) for r in rec["recipes"]]
    a = torch.load(Path(rec["model"]) / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "fit" / "model" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_solved_probe_is_scikit_learns_logistic_regression(colours, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from tinlt.data.sources import load_folder
    from tinlt.engine.classifier_init import training_embeddings
    from tinlt.engine.inference import load_model

    out = tmp_path / "probe"
    assert main(["train", "-c", str(colours / "base.yaml"), "model.head=linear", "model.visual_attention=false",
                 "model.tune_image.method=frozen", "model.classifier_init=logistic", "model.probe_c=0.3",
                 "optim.epochs=0", f"train.output_dir={out}", "-q"]) == 0
    model, cfg, _ = load_model(out / "best.pt")
    from tinlt.engine.loaders import eval_transform

    train = load_folder(colours / "train")
    feats, labels = training_embeddings(model, train, eval_transform(model, cfg, views=False), cfg,
                                        torch.device("cpu"))
    x = feats.numpy().astype(np.float64)
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    ref = LogisticRegression(C=0.3, max_iter=5000, tol=1e-8).fit(z, labels).decision_function(z)
    with torch.no_grad():
        ours = model.head(feats).numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_flipped_labels_are_found(tmp_path):
    """Confident learning on out-of-fold probabilities: with labels flipped on purpose (both
    directions), the top of the ranking holds them."""
    from tinlt.fit.outputs import label_issues

    rng = np.random.default_rng(0)
    target = np.repeat([0, 1], [120, 30])
    probs = np.where(np.eye(2)[target] == 1, 0.9, 0.1) + rng.uniform(-0.05, 0.05, (150, 2))
    probs /= probs.sum(1, keepdims=True)
    flipped = np.array([3, 50, 77, 125, 140])
    given = target.copy()
    given[flipped] = 1 - given[flipped]
    ranked, flagged = label_issues(probs, given)
    assert set(ranked[:len(flipped)].tolist()) == set(flipped.tolist())
    assert flagged[flipped].sum() >= 3 and flagged.sum() <= 8  # cleanlab's verdict: most flips, few others


def test_a_killed_fit_restarts_where_it_stopped(colours, tmp_path):
    out = tmp_path / "fit"
    cmd = [sys.executable, "-m", "tinlt", "fit", "-c", str(colours / "base.yaml"), "--grid",
           str(colours / "grid.yaml"), "--folds", "3", "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("folds/*/metrics.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("folds/*/metrics.json")}
    assert len(done) >= 2
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the finished folds were reused, not retrained
    assert (out / "model" / "best.pt").is_file() and (out / "leaderboard.md").is_file()


def test_two_classes_get_a_threshold_the_model_applies(tmp_path):
    root = tmp_path
    write_class_folders(root / "train", {"sound": 24, "rusty": 6}, {"sound": (200, 60, 60), "rusty": (60, 60, 200)},
                        seed=0, spread=40)
    write_class_folders(root / "test", {"sound": 4, "rusty": 4}, {"sound": (200, 60, 60), "rusty": (60, 60, 200)},
                        seed=1, spread=40)
    (root / "base.yaml").write_text(
        "model: {name: tiny-vit}\n"
        f"data: {{train: {{kind: folder, path: {root / 'train'}}}, test: {{kind: folder, path: {root / 'test'}}},"
        " image_size: 32, num_workers: 0}\noptim: {name: adamw, lr: 1.0e-3, batch_size: 8, epochs: 1}\n"
        "train: {eval_batch_size: 16, quiet: true, report: false}\n")
    (root / "grid.yaml").write_text("cells:\n  - {name: probe, kind: baseline, overrides: [model.head=linear, "
                                    "model.visual_attention=false, model.tune_image.method=frozen, "
                                    "model.classifier_init=logistic, optim.epochs=0]}\n")
    rec = _fit(root, tmp_path / "fit", "--target-recall", "0.8", "--noise-rule", "one_se")
    assert rec["noise_rule"] == "one_se"  # the flag reaches the choice
    thr = rec["threshold"]
    assert thr["recall"] >= 0.8 and thr["num_positive"] == 6 and rec["classnames"][thr["positive_class"]] == "rusty"
    ckpt = torch.load(tmp_path / "fit" / "model" / "best.pt", weights_only=True)
    assert ckpt["threshold"] == pytest.approx(thr["threshold"])
    assert main(["predict", str(root / "test"), "--checkpoint", str(tmp_path / "fit" / "model"), "--out",
                 str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    for r in rows:  # the decision is the threshold's, not argmax
        assert r["prediction"]["class"] == ("rusty" if r["probs"]["rusty"] >= thr["threshold"] else "sound")


def test_bad_fit_arguments_are_one_line(colours, tmp_path, capsys):
    base = ["fit", "-c", str(colours / "base.yaml"), "--grid", str(colours / "grid.yaml"), "--out", str(tmp_path)]
    for extra, needle in ((["--folds", "1"], "--folds"), (["--metric", "f1"], "--metric"),
                          (["--budget", "later"], "--budget"), (["--target-recall", "1.5"], "--target-recall"),
                          (["--noise-rule", "two_se"], "--noise-rule")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err


def test_the_probes_c_is_the_best_on_inner_folds_by_scikit_learn():
    """C is chosen on inner stratified folds by the logit-adjusted balanced accuracy of the pooled
    predictions; recomputed here with cross_val_predict and balanced_accuracy_score, each C fitted cold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from tinlt.engine.classifier_init import PROBE_CS, solve_probe

    rng = np.random.default_rng(3)
    counts = np.array([60, 20, 6])
    labels = np.repeat(np.arange(3), counts)
    means = rng.normal(0, 0.6, (3, 40))  # weak signal in 40 dimensions: the penalty matters
    feats = means[labels] + rng.normal(0, 1, (len(labels), 40)) * rng.uniform(0.5, 3, 40)
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=7)
    prior = np.log(counts / counts.sum())
    scores = []
    for c in PROBE_CS:
        logits = cross_val_predict(LogisticRegression(C=c, max_iter=5000, tol=1e-8), z, labels, cv=folds,
                                   method="decision_function")
        scores.append(balanced_accuracy_score(labels, (logits - prior).argmax(1)))
    assert len(set(np.round(scores, 6))) > 2  # the choice is informative on this data
    best = PROBE_CS[int(np.argmax(scores))]  # argmax: the first (smallest) C among ties
    weight, bias, c, how = solve_probe(feats.astype(np.float32), labels, 3, seed=7)
    assert c == best and "5 inner folds" in how
    ref = LogisticRegression(C=best, max_iter=5000, tol=1e-8).fit(z, labels).decision_function(z)
    np.testing.assert_allclose(feats @ weight.T.astype(np.float64) + bias, ref, rtol=1e-3, atol=5e-3)  # float32 rows


def test_label_issues_rank_on_probabilities_before_the_balance_adjustment(tmp_path):
    """cleanlab wants p(given label | image) under the training labels' own distribution. By
    hand, 60 T-labelled images at p(T) = 0.6 and 8 flipped ones labelled S at p(S) = 0.15 (12
    real S at 0.8), counts 60 : 20, tau 1: adjusted, p(T) of the first becomes
    1 / (1 + 1.5^-1 * 3) = 0.333 and p(S) of the flipped 1 / (1 + (0.85/0.15) / 3) = 0.346, so the
    60 would outrank the 8; unadjusted, the 8 (0.15) come first."""
    import csv

    from tinlt.data.samples import Samples
    from tinlt.fit import oof
    from tinlt.fit.outputs import LABEL_ISSUES, write_outputs

    p_label = np.r_[np.full(60, 0.6), np.full(8, 0.15), np.full(12, 0.8)]
    target = np.repeat([0, 1], [60, 20])
    p_t = np.where(target == 0, p_label, 1 - p_label)
    logits = np.log(np.stack([p_t, 1 - p_t], axis=1))[None]
    counts = np.array([60, 20])
    pooled = {"probe": oof.Pooled(np.arange(80), target, np.array([1]), logits)}
    choices = {"probe": oof.Choice(epoch_index=0, epoch=1, tau=1.0, score=50.0)}
    record = {"chosen": "probe", "leader": "probe", "metric": "per_class", "folds": 5, "train_images": 80,
              "why": "the only one", "model": "model", "recipes": [
                  {"name": "probe", "kind": "baseline", "score": 50.0, "interval_vs_leader": None, "tau": 1.0,
                   "epoch": 1, "fold0": 50.0, "cost_s": 1.0, "status": "all folds"}]}
    train = Samples(items=np.zeros((80, 4, 4), dtype=np.uint8), labels=target, classnames=["T", "S"])
    write_outputs(tmp_path, record, pooled, choices, counts, train, oof.adjust(logits[0], counts, 1.0),
                  log=lambda *a: None)
    with open(tmp_path / LABEL_ISSUES, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows[:8]) == list(range(60, 68))
    assert float(rows[0]["p_label"]) == pytest.approx(0.15, abs=1e-6)


# --------------------------------------------------------------------------- --ensemble


def _ensemble_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 3, 32, 32, generator=g)


def test_the_ensemble_is_the_mean_of_its_fold_models_logits(colours, tmp_path, capsys):
    """``--ensemble``: FIT/ensemble holds the chosen recipe's 3 fold models; every command that
    scores it (the checkpoint, the ONNX export) gives the mean of the members' raw logits plus
    the post-hoc offset -tau * log prior of **all** training images (20 / 8 / 3), by hand."""
    import onnxruntime as ort

    from tinlt.deploy.export import read_metadata
    from tinlt.engine.inference import load_model

    out = tmp_path / "fit"
    rec = _fit(colours, out, "--only", "text", "--ensemble")
    ens = out / "ensemble"
    assert rec["model"] == str(ens)
    assert rec["ensemble"] == 3 and rec["chosen"] == "text"
    chosen = next(r for r in rec["recipes"] if r["name"] == "text")
    ckpt = torch.load(ens / "best.pt", weights_only=True)
    full = {"red": 20, "green": 8, "blue": 3}
    assert len(ckpt["members"]) == 3 and ckpt["train_counts"] == [full[c] for c in rec["classnames"]]
    info = json.loads((ens / "run.json").read_text())
    # each fold model trained on the other two folds: together every image twice, none all of them
    assert info["train_images"] == 31 and sum(info["member_train_images"]) == 2 * 31
    assert all(n < 31 for n in info["member_train_images"])
    assert "3 fold models of text, logits averaged" in (out / "leaderboard.md").read_text()

    x = _ensemble_inputs()
    model, _, _ = load_model(ens / "best.pt")
    tau1, _, _ = load_model(ens / "best.pt", overrides=["train.posthoc_tau=1"])  # an offset that shows
    with torch.no_grad():
        got, got_tau1, scored = model(x).numpy(), tau1(x).numpy(), model.scorer()(x).numpy()  # scorer: eval, predict
        raws = []
        for src in ckpt["ensemble"]["sources"]:
            member_ckpt = torch.load(src, weights_only=True)
            assert member_ckpt["epoch"] == chosen["epoch"]  # epochs done: the count the folds chose
            m, _, _ = load_model(src, overrides=["train.posthoc_tau=0"])
            raws.append(m(x).numpy())
    assert np.abs(raws[0] - raws[1]).max() > 1e-3  # the members differ: a mean is not any one of them
    prior = np.array([full[c] for c in rec["classnames"]], dtype=np.float64) / 31.0
    expected = np.mean(raws, axis=0) - chosen["tau"] * np.log(prior)
    assert np.allclose(got, expected, atol=1e-4), np.abs(got - expected).max()
    assert np.allclose(scored, expected, atol=1e-4)
    assert np.allclose(got_tau1, np.mean(raws, axis=0) - np.log(prior), atol=1e-4)

    onnx = tmp_path / "ens.onnx"
    assert main(["export", "--checkpoint", str(ens), "--out", str(onnx)]) == 0
    assert read_metadata(onnx)["model"]["members"] == 3
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(onnx_logits, expected, atol=1e-4)
    assert main(["eval", "--checkpoint", str(ens), "-q"]) == 0
    assert json.loads((ens / "eval" / "metrics.json").read_text())["overall"] is not None
    assert main(["report", str(out)]) == 0  # the fit folder's report is its chosen model's: the ensemble's
    assert (ens / "eval" / "report" / "index.html").is_file() or any(ens.rglob("index.html"))
    # the refit goes beside it: neither is taken for the other (the same config)
    plain = _fit(colours, out, "--only", "text")
    assert plain["model"] == str(out / "model") and plain["ensemble"] is None
    refit = torch.load(out / "model" / "best.pt", weights_only=True)
    assert "members" not in refit and refit["model"] is not None
    assert torch.load(ens / "best.pt", weights_only=True)["members"]
    # an ensemble cannot seed one model's weights: one line, not a traceback
    assert main(["train", "-c", str(colours / "base.yaml"), f"model.init_from={ens}", "optim.epochs=1",
                 f"train.output_dir={tmp_path / 'seeded'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is an ensemble of 3 models" in err and "Traceback" not in err


def test_an_earlier_chosen_epoch_trains_the_fold_models_again_to_it(colours, tmp_path):
    """When the pooled predictions choose epoch 1 of 2, the members are the folds trained for
    1 epoch (not the 2-epoch fold runs); when they choose the last, the fold runs are kept."""
    from tinlt.fit.ensemble import ENSEMBLE_FOLDS_DIR, member_runs
    from tinlt.fit.plan import fold_sweep, recipes

    recipe = next(c for c in recipes(str(colours / "grid.yaml"), str(colours / "base.yaml")) if c.name == "text")
    assert int(recipe.cfg.optim.epochs) == 2
    kept = fold_sweep([recipe], 3, 0, tmp_path).cells
    reused = member_runs(recipe, kept, 3, 0, tmp_path, epoch=2, log=lambda *_: None)
    assert [r.path for r in reused] == [c.run.path for c in kept]
    runs = member_runs(recipe, kept, 3, 0, tmp_path, epoch=1, log=lambda *_: None)
    assert [r.path.parent.name for r in runs] == [ENSEMBLE_FOLDS_DIR] * 3
    sizes = []
    for r in runs:
        ckpt = torch.load(r.last, weights_only=True)
        assert ckpt["epoch"] == 1  # epochs done
        sizes.append(int(sum(ckpt["train_counts"])))
    assert sum(sizes) == 2 * 31 and all(s < 31 for s in sizes)
