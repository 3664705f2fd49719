"""End to end through the CLI on a tiny random model and generated images.

Covers the three ways to name a split (list file, folder tree, CSV), training, resume,
evaluation and prediction, and the one-line errors a user sees for bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinlt.cli import main

from conftest import CLASSES, TRAIN_COUNTS, common_args as _common, split_args as _split_args  # noqa: E402


@pytest.mark.parametrize("kind", ["list", "folder", "csv"])
def test_train_eval_predict(kind, dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_common(out), *_split_args(kind, dataset)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the test split has 3 images per class, so per-class accuracies are multiples of 1/3
    for row in metrics["per_class"]:
        assert row["test_count"] == 3
        assert round(row["accuracy"] * 3 / 100, 6) == pytest.approx(round(row["accuracy"] * 3 / 100))
    assert metrics["num_samples"] == 9
    # overall is the mean of the per-class accuracies, recomputed here from the confusion matrix
    conf = np.array(metrics["confusion"])
    assert metrics["overall"] == pytest.approx(100 * np.mean(np.diag(conf) / conf.sum(1)))
    # groups come from the training counts 9/5/2 -> all "few" (< 20)
    assert metrics["few"] == pytest.approx(metrics["overall"])
    assert metrics["many"] is None and metrics["medium"] is None
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    run = json.loads((out / "run.json").read_text())
    # folder trees order classes by name; compare by name
    assert dict(zip(run["classnames"], run["train_counts"])) == dict(zip(CLASSES, TRAIN_COUNTS))

    # evaluate the checkpoint: same weights, same data -> same confusion matrix
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["confusion"] == metrics["confusion"]

    # predict on a folder; top-1 must agree with the evaluation's predictions
    preds = tmp_path / "preds.json"
    assert main(["predict", str(dataset / "test"), "--checkpoint", str(out / "best.pt"), "--topk", "2",
                 "--out", str(preds)]) == 0
    rows = json.loads(preds.read_text())
    assert len(rows) == 9
    assert all(len(r["topk"]) == 2 and r["topk"][0]["score"] >= r["topk"][1]["score"] for r in rows)
    pred_counts = np.zeros((3, 3), dtype=int)
    for r in rows:
        true = CLASSES.index(Path(r["path"]).parent.name.replace("_", " "))
        pred_counts[true, CLASSES.index(r["topk"][0]["class"])] += 1
    assert pred_counts.tolist() == metrics["confusion"]


def test_resume_continues_where_it_stopped(dataset, tmp_path):
    out = tmp_path / "run"
    args = [*_common(out), *_split_args("list", dataset)]
    assert main(["train", *args, "optim.epochs=1"]) == 0
    first = torch.load(out / "last.pt", weights_only=False)
    assert first["epoch"] == 1
    # resume with a longer schedule: one more epoch, continuing the step count
    assert main(["train", "--resume", str(out / "last.pt"), "optim.epochs=2"]) == 0
    second = torch.load(out / "last.pt", weights_only=False)
    assert second["epoch"] == 2
    assert second["global_step"] == 2 * first["global_step"]
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


def test_resumed_run_equals_uninterrupted_run(dataset, tmp_path):
    """Exact resume on CPU: stop mid-training, resume, compare final weights bit for bit."""
    base = [*_split_args("folder", dataset), "optim.epochs=2", "train.save_every_steps=1"]
    full = tmp_path / "full"
    assert main(["train", *_common(full), *base]) == 0
    part = tmp_path / "part"
    # max_steps stops after 3 optimizer steps (mid-epoch 1 of 2: 16 images / batch 4 = 4 steps per epoch)
    assert main(["train", *_common(part), *base, "train.max_steps=3"]) == 0
    assert main(["train", "--resume", str(part / "last.pt"), "train.max_steps=0"]) == 0
    a = torch.load(full / "last.pt", weights_only=False)["model"]
    b = torch.load(part / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "args, needle",
    [
        (["data.train.path=/nonexistent/list.txt"], "/nonexistent/list.txt"),
        (["modle.name=tiny-vit"], "model"),
        (["loss.pp=0.5"], "loss.p"),
        (["model.name=no-such-model"], "no-such-model"),
    ],
)
def test_bad_input_is_one_line(dataset, tmp_path, capsys, args, needle):
    argv = ["train", *_common(tmp_path / "r"), *_split_args("list", dataset), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinlt: error:") and "\n" not in err and needle in err
    assert "Traceback" not in err


def test_data_inspect_json(dataset, capsys):
    assert main(["data", "inspect", "--train-list", str(dataset / "train.txt"),
                 "--classnames", str(dataset / "classnames.txt"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_classes"] == 3 and s["num_images"] == sum(TRAIN_COUNTS)
    assert s["imbalance_ratio"] == pytest.approx(9 / 2)
    assert s["groups"] == {"many": 0, "medium": 0, "few": 3}


def test_data_inspect_takes_a_root_and_fails_when_nothing_is_readable(dataset, tmp_path, capsys):
    """A list moved away from its images: every file is missing, which is an error naming --root,
    not a table of zeros and exit 0; with --root the same list counts every image."""
    moved = tmp_path / "lists" / "train.txt"
    moved.parent.mkdir()
    moved.write_text((dataset / "train.txt").read_text())
    argv = ["data", "inspect", "--train-list", str(moved), "--classnames", str(dataset / "classnames.txt"), "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinlt: error: none of the 16 listed files") and "--root" in err and "\n" not in err
    assert main([*argv, "--root", str(dataset)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_images"] == sum(TRAIN_COUNTS) == 16 and s["unreadable"] == []


def test_quiet_hides_bars_not_results(dataset, tmp_path, capsys):
    """-q is documented as "no progress bars": the epoch lines and the final scores still print."""
    out = tmp_path / "run"
    args = [a for a in _common(out, epochs=1) if a != "train.quiet=true"]
    assert main(["train", "-q", *args, *_split_args("folder", dataset)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1 | loss" in printed and "test: overall" in printed
    assert main(["eval", "-q", "--checkpoint", str(out)]) == 0
    assert "overall" in capsys.readouterr().out


def test_eval_group_thresholds_regroup_the_classes_and_training_only_keys_are_said(dataset, tmp_path, capsys):
    """Training counts 9 / 5 / 2: at many > 6 and few < 3 (absolute) each class is its own group, so
    each group's score is that class's accuracy from the confusion matrix."""
    import numpy as np

    out = tmp_path / "run"
    assert main(["train", *_common(out, epochs=1), *_split_args("folder", dataset)]) == 0
    ev = tmp_path / "ev"
    assert main(["eval", "-q", "--checkpoint", str(out), "--out", str(ev), "data.groups=absolute",
                 "data.many_threshold=6", "data.few_threshold=3", "data.augment=none"]) == 0
    err = capsys.readouterr().err
    assert "data.augment applies to training only" in err
    m = json.loads((ev / "metrics.json").read_text())
    conf = np.array(m["confusion"], dtype=float)
    acc = 100 * np.diag(conf) / conf.sum(1)
    # folder classes sort by name: blue_thing (2 training images), green_thing (5), red_thing (9)
    want = {"many": acc[2], "medium": acc[1], "few": acc[0]}
    for g, v in want.items():
        assert m[g] == pytest.approx(v, abs=0.05), g
