"""Choices without the test split: a held-out validation split, post-hoc tau and early stopping
on it, a warning when a run would select on test, seeds in sweeps (mean ± std).

The central check: a run whose test labels are scrambled trains and selects exactly like one
with the true labels (same checkpoints, same validation log); only the final test metrics
differ. So no code path reads test labels before the final evaluation.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TRAIN_COUNTS, common_args, split_args
from tinlt.cli import main
from tinlt.data.holdout import hold_out
from tinlt.data.samples import Samples
from tinlt.errors import TinltError

HOLDOUT = ["data.val.kind=holdout", "data.val.fraction=0.34", "train.eval_every=1"]


def test_hold_out_is_stratified_reproducible_and_keeps_every_class():
    labels = np.repeat(np.arange(4), [20, 7, 3, 2])
    s = Samples([f"img{i}.png" for i in range(len(labels))], labels, ["a", "b", "c", "d"])
    rest, val, idx = hold_out(s, 0.1, seed=5)
    # by the rule: max(1, round(0.1 * n)), keeping at least one image for training
    assert val.class_counts().tolist() == [2, 1, 1, 1]
    assert rest.class_counts().tolist() == [18, 6, 2, 1]
    assert sorted(set(rest.items) | set(val.items)) == sorted(s.items) and not set(rest.items) & set(val.items)
    assert np.array_equal(hold_out(s, 0.1, seed=5)[2], idx)  # the seed fixes it
    assert not np.array_equal(hold_out(s, 0.5, seed=6)[2], hold_out(s, 0.5, seed=7)[2])
    lonely = Samples(["x.png", "y.png", "z.png"], np.array([0, 0, 1]), ["a", "b"])
    with pytest.raises(TinltError, match="class 1 \\('b'\\) has 1 training image"):
        hold_out(lonely, 0.2, seed=0)


def test_hold_out_keeps_one_training_image_of_a_class_of_two_even_at_fraction_0_9():
    labels = np.repeat(np.arange(3), [2, 3, 10])
    s = Samples([f"img{i}.png" for i in range(len(labels))], labels, ["pair", "three", "ten"])
    rest, val, _ = hold_out(s, 0.9, seed=0)
    # round(0.9 * n) would take every image of the two small classes; one of each must stay
    assert rest.class_counts().tolist() == [1, 1, 1]
    assert val.class_counts().tolist() == [1, 2, 9]


def _held_out(out: Path) -> list[int]:
    return json.loads((out / "run.json").read_text())["held_out"]


def test_the_held_out_split_moves_with_the_seed_through_the_config(dataset, tmp_path):
    """train.seed picks the held-out images unless data.val.seed pins them; each run records them."""
    def run(name: str, *extra: str) -> list[int]:
        out = tmp_path / name
        argv = ["train", *common_args(out, epochs=1), *split_args("folder", dataset), "data.val.kind=holdout",
                "data.val.fraction=0.5", "train.max_steps=1", *extra]
        assert main(argv) == 0
        return _held_out(out)

    a, b = run("seed0", "train.seed=0"), run("seed1", "train.seed=1")
    assert a != b and len(a) == len(b) == sum(max(1, round(0.5 * n)) for n in TRAIN_COUNTS)
    assert run("again", "train.seed=0") == a  # reproducible from the config
    pinned = [run("pin0", "train.seed=0", "data.val.seed=7"), run("pin1", "train.seed=1", "data.val.seed=7")]
    assert pinned[0] == pinned[1]
    # the indices are those of the training split, in its own order: the held-out files are not trained on
    from tinlt.data.sources import load_folder

    train = load_folder(dataset / "train")
    held = {train.items[i] for i in a}
    info = json.loads((tmp_path / "seed0" / "run.json").read_text())
    assert info["train_images"] == len(train) - len(held)
    assert sorted(Counter(int(train.labels[i]) for i in a).values()) == sorted(
        max(1, round(0.5 * n)) for n in TRAIN_COUNTS)


def _scrambled_test(root: Path, tmp: Path) -> Path:
    """The test list with its labels permuted (same images)."""
    lines = (root / "test.txt").read_text().splitlines()
    labels = [ln.rsplit(" ", 1)[1] for ln in lines]
    perm = np.random.default_rng(0).permutation(labels)
    assert list(perm) != labels
    out = tmp / "test_scrambled.txt"
    out.write_text("".join(f"{ln.rsplit(' ', 1)[0]} {y}\n" for ln, y in zip(lines, perm)))
    return out


def test_test_labels_are_not_read_before_the_final_evaluation(dataset, tmp_path):
    runs = {}
    for name, test_list in (("true", dataset / "test.txt"), ("scrambled", _scrambled_test(dataset, tmp_path))):
        out = tmp_path / name
        argv = ["train", *common_args(out, epochs=3), *split_args("list", dataset), f"data.test.path={test_list}",
                f"data.test.root={dataset}", *HOLDOUT, "train.posthoc_tau_grid=[0,0.5,1]"]
        assert main(argv) == 0
        runs[name] = out
    a, b = (torch.load(runs[n] / "best.pt", weights_only=True) for n in ("true", "scrambled"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # trained and selected the same
    assert a["config"]["train"]["posthoc_tau"] == b["config"]["train"]["posthoc_tau"]
    logs = [[{k: v for k, v in json.loads(r).items() if k not in ("time_s", "cpu_s")}
             for r in (runs[n] / "log.jsonl").read_text().splitlines()] for n in ("true", "scrambled")]
    assert logs[0] == logs[1] and all("val" in r and "test" not in r for r in logs[0])
    ma, mb = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("true", "scrambled"))
    assert ma["selection"] == mb["selection"]
    assert ma["predictions"]["pred"] == mb["predictions"]["pred"]  # the same predictions ...
    assert ma["predictions"]["target"] != mb["predictions"]["target"]  # ... scored against other labels
    run = json.loads((runs["true"] / "run.json").read_text())
    assert run["eval_split"] == "val" and len(run["held_out"]) == sum(max(1, round(0.34 * n)) for n in TRAIN_COUNTS)
    assert run["train_counts"] == [n - max(1, round(0.34 * n)) for n in TRAIN_COUNTS]


def test_posthoc_tau_is_chosen_on_val_and_deployed(dataset, tmp_path, capsys):
    from tinlt.engine.inference import load_model, resolve_split
    from tinlt.engine.loaders import eval_loader, make_transforms
    from tinlt.engine.selection import split_logits

    out = tmp_path / "run"
    grid = [0.0, 0.5, 1.0, 2.0]
    argv = ["train", *common_args(out, epochs=2), *split_args("folder", dataset), *HOLDOUT,
            f"train.posthoc_tau_grid=[{','.join(map(str, grid))}]"]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    tau = m["selection"]["posthoc_tau"]
    # by hand: the held-out images' raw logits, shifted by -tau * log prior, mean per-class accuracy
    model, cfg, ckpt = load_model(out / "best.pt", overrides=["train.posthoc_tau=0"])
    val, _ = resolve_split(cfg, "val")
    logits, y = split_logits(model, eval_loader(val, make_transforms(model, cfg)[1], cfg), torch.device("cpu"))
    prior = np.asarray(ckpt["train_counts"], float) / sum(ckpt["train_counts"])
    by_hand = {}
    for t in grid:
        pred = (logits - t * np.log(prior)).argmax(1)
        by_hand[t] = 100 * np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)])
        assert m["selection"]["val_overall_by_tau"][str(t)] == pytest.approx(by_hand[t])
    assert by_hand[tau] == max(by_hand.values()) and tau == min(t for t in grid if by_hand[t] == by_hand[tau])
    assert ckpt["config"]["train"]["posthoc_tau"] == tau  # deployment applies the choice
    # the chosen tau written back to config.yaml does not make the finished run look like a new one
    # (sweep / benchmark / demo reuse it instead of retraining)
    from tinlt.config import load_config
    from tinlt.engine.run_folder import RunFolder

    if tau != 0.0:
        assert RunFolder(out).saved_config()["train"]["posthoc_tau"] == tau
    assert RunFolder(out).state(load_config(None, argv[1:])) == "done"
    assert RunFolder(out).state(load_config(None, [*argv[1:], "train.posthoc_tau_grid=[0,1]"])) == "run"
    # without a validation split the choice would be made on the test split: refused
    assert main(["train", *common_args(tmp_path / "r2"), *split_args("folder", dataset),
                 "train.posthoc_tau_grid=[0,1]"]) == 2
    assert "would select on the test split" in capsys.readouterr().err


def test_selecting_on_test_warns_and_early_stopping_stops(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *common_args(out, epochs=2), *split_args("folder", dataset)]) == 0
    assert "warning: no validation split: best.pt and every choice" in capsys.readouterr().err
    # lr 0: the val score never improves after the first evaluation; patience 2 stops after epoch 3 of 10
    es = tmp_path / "es"
    assert main(["train", *common_args(es, epochs=10), *split_args("folder", dataset), *HOLDOUT,
                 "optim.lr=1e-30", "train.early_stopping=2"]) == 0
    log = [json.loads(r) for r in (es / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and log[-1].get("stopped_early") is True
    assert torch.load(es / "best.pt", weights_only=True)["epoch"] == 1  # the first evaluation stays the best


def test_best_checkpoint_last_keeps_the_final_epoch(dataset, tmp_path):
    from tinlt.engine.run_folder import RunFolder
    from tinlt.sweep import val_score

    # lr 0 again: the first evaluation is the best on val, yet best.pt must be the final epoch
    out = tmp_path / "last"
    assert main(["train", *common_args(out, epochs=3), *split_args("folder", dataset), *HOLDOUT,
                 "optim.lr=1e-30", "train.best_checkpoint=last"]) == 0
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 3 and all(r["best"] for r in log)
    # the score a recipe is chosen by is then the final epoch's on val
    m = json.loads((out / "metrics.json").read_text())
    assert val_score(RunFolder(out), m) == pytest.approx(log[-1]["val"]["overall"])


def test_sweep_seeds_report_mean_and_std(dataset, tmp_path):
    from tinlt.sweep import mean_std

    grid = tmp_path / "grid.yaml"
    base = tmp_path / "base.yaml"
    from omegaconf import OmegaConf

    base.write_text(OmegaConf.to_yaml(OmegaConf.from_dotlist(
        [o for o in [*common_args(tmp_path / "x", epochs=1), *split_args("folder", dataset)]
         if not o.startswith("train.output_dir")])))
    grid.write_text(f"base: {base}\nseeds: [0, 1, 2]\ncells:\n  - {{name: lin, label: linear, overrides: "
                    f"[model.head=linear, loss.name=ce]}}\n  - {{name: zs, zeroshot: true}}\n")
    # seed 0 of every row first (a small machine's first pass); the others stay pending
    assert main(["sweep", "--config", str(grid), "--out", str(tmp_path / "sw"), "--quiet", "--seeds", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir()) == ["lin__seed0", "zs__seed0"]
    first = list(csv.DictReader(open(tmp_path / "sw" / "results.csv")))
    assert [(r["cell"], r["status"]) for r in first if r["group"] == "lin"] == [
        ("lin__seed0", "done"), ("lin__seed1", "pending"), ("lin__seed2", "pending")]
    assert main(["sweep", "--config", str(grid), "--out", str(tmp_path / "sw"), "--seeds", "7"]) == 2
    assert main(["sweep", "--config", str(grid), "--out", str(tmp_path / "sw"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sw" / "results.csv")))
    assert [r["overall"] for r in rows if r["cell"] == "lin__seed0"] == [r["overall"] for r in first
                                                                         if r["cell"] == "lin__seed0"]
    lin = [float(r["overall"]) for r in rows if r["group"] == "lin"]
    assert [r["seed"] for r in rows if r["group"] == "lin"] == ["0", "1", "2"] and len(lin) == 3
    expect = f"{statistics.mean(lin):.1f} ± {statistics.stdev(lin):.1f}"
    md = (tmp_path / "sw" / "results.md").read_text()
    assert any(ln.startswith("| linear |") and expect in ln for ln in md.splitlines())
    assert mean_std([1.0, 2.0, 4.0]) == f"{7 / 3:.1f} ± {math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2):.1f}"
    assert all((tmp_path / "sw" / f"zs__seed{k}" / "metrics.json").is_file() for k in range(3))
