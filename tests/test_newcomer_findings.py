"""One test per finding of the newcomer's walk-through (starter recipe, subsampling, per-image
results, operating point, data inspection, messages, smaller things). The path itself is
``tests/test_newcomer.py``; the report's 1,200 px check is in ``tests/test_report.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY as TINY_MODEL, write_class_folders
from tinlt.cli import main
from tinlt.errors import TinltError

REPO = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL, "optim.batch_size=4", "optim.epochs=1", "optim.lr=1e-3",
        "train.eval_batch_size=8", "train.quiet=true", "train.report=false"]


def _folders(root: Path, counts: dict) -> Path:
    return write_class_folders(root, counts)  # random pixels


@pytest.fixture()
def tree(tmp_path) -> Path:
    _folders(tmp_path / "train", {"sound": 12, "rusty": 4})
    _folders(tmp_path / "test", {"sound": 3, "rusty": 3})
    return tmp_path


def _one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if not l.startswith(("tinlt: warning:", "tinlt: note:"))]
    assert len(lines) == 1 and lines[0].startswith("tinlt: error:") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- 1. a recipe for own data


@pytest.mark.parametrize("name", ["starter_offline", "starter_clip"])
def test_starter_configs_hold_nothing_from_fashion_mnist(name):
    from tinlt.config import load_config

    cfg = load_config(name, ["data.train.path=/d/train", "data.test.path=/d/test"])
    for split in ("train", "test"):
        s = cfg.data[split]
        assert s.kind == "folder" and list(s.classes) == [] and list(s.counts) == []
        assert s.lt_n_max == 0 and s.per_class_limit == 0
    # selection on held-out training images, an optimiser that moves in a few epochs
    assert cfg.data.val.kind == "holdout" and cfg.optim.name == "adamw"
    assert cfg.train.eval_every == 1


def test_readme_minimal_config_uses_the_starter():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using tinlt on your own data", 1)[1].split("\n## ", 1)[0]
    assert "_base_: starter_offline" in section and "paper_clamp_rn50" not in section.split("```yaml", 1)[1][:300]


def test_starter_trains_on_two_folders_without_resets(tree, tmp_path):
    # basing own data on the Fashion-MNIST demo failed (class 6 out of range); the starter needs only paths
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"_base_: starter_offline\ndata:\n  train: {{path: {tree / 'train'}}}\n"
                   f"  test: {{path: {tree / 'test'}}}\n")
    assert main(["train", "-c", str(cfg), *TINY, "data.num_workers=0", f"train.output_dir={tmp_path / 'r'}"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [r["name"] for r in m["per_class"]] == ["rusty", "sound"] and m["num_samples"] == 6


# ---------------------------------------------------------------- 2. subsampling never silent


def test_subsampling_own_data_prints_before_and_after(tree, capsys):
    from tinlt.data.build import build_split

    out = build_split({"kind": "folder", "path": str(tree / "train"), "per_class_limit": 5}, where="data.train")
    assert out.class_counts().tolist() == [4, 5]
    err = capsys.readouterr().err
    assert "data.train.per_class_limit keep 9 of 16 images" in err and "[4, 12] -> [4, 5]" in err


def test_bundled_grid_dry_run_names_the_subsampling(tree, tmp_path, capsys):
    assert main(["sweep", "-c", "grids/methods", "--dry-run", "--out", str(tmp_path / "s"),
                 "data.train.kind=folder", f"data.train.path={tree / 'train'}",
                 "data.test.kind=folder", f"data.test.path={tree / 'test'}"]) == 0
    out = capsys.readouterr().out
    assert "data.train.lt_n_max=200" in out and "subsamples data.train" in out


# ---------------------------------------------------------------- 3. which images are wrong


def test_predict_csv_has_a_column_per_class_and_sort_by_checks_the_name(tree, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "data.num_workers=0", "data.train.kind=folder", f"data.train.path={tree / 'train'}",
                 "data.test.kind=folder", f"data.test.path={tree / 'test'}", f"train.output_dir={run}"]) == 0
    out = tmp_path / "p.csv"
    assert main(["predict", str(tree / "test"), "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    import csv

    rows = list(csv.DictReader(open(out)))
    assert {"p_rusty", "p_sound"} <= set(rows[0])
    for r in rows:  # the ranked columns and the per-class columns agree
        assert float(r[f"p_{r['class_1']}"]) == pytest.approx(float(r["score_1"]), abs=1e-6)
    capsys.readouterr()
    assert main(["predict", str(tree / "test"), "--checkpoint", str(run / "best.pt"), "--sort-by", "rustyy"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--sort-by 'rustyy'" in line and "did you mean 'rusty'" in line


# ---------------------------------------------------------------- 4. the operating point


def test_recall_interval_is_wilson_and_precision_follows_prevalence():
    from scipy.stats import binomtest

    from tinlt.metrics import compute_metrics, precision_at_prevalence

    # rare class 1: 3 of 4 found, 2 false alarms among 16 negatives
    conf = np.array([[14, 2], [1, 3]])
    m = compute_metrics(conf, {"many": [0], "medium": [], "few": [1]}, train_counts=np.array([400, 10]),
                        classnames=["sound", "rusty"])
    b = m["binary"]
    ci = binomtest(3, 4).proportion_ci(confidence_level=0.95, method="wilson")
    assert b["recall_ci95"] == pytest.approx([ci.low, ci.high], abs=1e-6) and b["positives"] == 4
    # at the training prevalence 10/410, by Bayes' rule from recall 0.75 and fpr 2/16
    prior = 10 / 410
    assert b["precision_at_train_prevalence"] == pytest.approx(
        prior * 0.75 / (prior * 0.75 + (1 - prior) * 0.125))
    assert precision_at_prevalence(0.75, 0.125, 0.5) == pytest.approx(0.75 / 0.875)


# ---------------------------------------------------------------- 5. data inspect


def test_data_inspect_names_classes_and_counts_only_images(tree, capsys):
    (tree / "train" / "rusty" / "broken.png").write_bytes(b"not an image")
    assert main(["data", "inspect", "--train-folder", str(tree / "train"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["count"]) for c in s["classes"]] == [("rusty", 4), ("sound", 12)]
    assert s["num_images"] == 16 and [Path(u["file"]).name for u in s["unreadable"]] == ["broken.png"]
    assert main(["data", "inspect", "--train-folder", str(tree / "train")]) == 0
    text = capsys.readouterr().out
    assert re.search(r"0 rusty \| #+ +4", text) and re.search(r"1 sound \| #+ +12", text)
    assert "broken.png" in text


def test_data_inspect_names_empty_classes(tmp_path, capsys):
    _folders(tmp_path / "img", {"a": 3, "b": 2})
    (tmp_path / "train.txt").write_text("img/a/0.png 0\nimg/a/1.png 0\nimg/a/2.png 0\nimg/b/0.png 2\n")
    (tmp_path / "names.txt").write_text("a\nmissing one\nb\n")
    assert main(["data", "inspect", "--train-list", str(tmp_path / "train.txt"), "--classnames",
                 str(tmp_path / "names.txt")]) == 0
    assert "'missing one'" in capsys.readouterr().out


def test_an_empty_class_folder_is_an_error_unless_listed(tree, tmp_path, capsys):
    (tree / "train" / "cracked").mkdir()
    argv = ["train", *TINY, "data.num_workers=0", "data.train.kind=folder", f"data.train.path={tree / 'train'}",
            "data.test.kind=folder", f"data.test.path={tree / 'test'}", f"train.output_dir={tmp_path / 'r'}"]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cracked: class folder holds no images" in line and "classnames" in line
    from tinlt.data.sources import load_folder

    s = load_folder(tree / "train", classnames=["cracked", "rusty", "sound"])  # on purpose: kept, empty
    assert s.class_counts().tolist() == [0, 4, 12]


# ---------------------------------------------------------------- 6. messages


@pytest.mark.parametrize("args, needles", [
    (["train.device=gpu"], ["train.device", "'gpu'", "cuda"]),
    (["optim.learning_rate=1e-3"], ["optim.learning_rate", "did you mean 'optim.lr'"]),
    (["optim.learning_rate=1e-3", "train.epoch=3"], ["optim.learning_rate", "'train.epoch'", "'optim.epochs'"]),
])
def test_config_messages_name_the_key_and_the_fix(tree, tmp_path, capsys, args, needles):
    argv = ["train", "-c", "starter_offline", f"data.train.path={tree / 'train'}", f"data.test.path={tree / 'test'}",
            f"train.output_dir={tmp_path / 'r'}", *args]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert all(n in line for n in needles), line


def test_all_unknown_keys_of_a_file_at_once_with_lines(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("_base_: starter_offline\noptim:\n  learning_rate: 1e-3\ntrain:\n  epoch: 3\n")
    assert main(["train", "-c", str(cfg)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(cfg) in line and "'optim.learning_rate' (line 3)" in line and "'train.epoch' (line 5)" in line


def test_missing_config_lists_the_bundled_names(capsys):
    assert main(["train", "-c", "paper_imagenet_lt"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "paper_imagenet_lt_vitb32" in line and "starter_offline" in line


def test_missing_imagenet_train_list_names_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bundled config's relative list path does not exist here
    assert main(["train", "-c", "paper_imagenet_lt_vitb32"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "data.train.path" in line and "ImageNet_LT_train.txt" in line


def test_unreachable_hub_is_one_quick_message(tree, tmp_path, capsys, monkeypatch):
    from tinlt.models.towers import clip_weights as clip_towers

    calls = []
    monkeypatch.setattr(clip_towers, "_hub_reachable", lambda *a, **k: calls.append(1) or False)
    t0 = time.monotonic()
    argv = ["train", "-c", "starter_clip", "model.name=ViT-B-32", "model.pretrained=laion2b_s34b_b79k",
            "data.num_workers=0", f"data.train.path={tree / 'train'}", f"data.test.path={tree / 'test'}",
            f"train.output_dir={tmp_path / 'r'}"]
    assert main(argv) == 2
    assert time.monotonic() - t0 < 30 and calls  # no hub retries: asked once, then the message
    line = _one_error_line(capsys.readouterr().err)
    assert "not reachable" in line and "model.pretrained=/path/to/file" in line


def test_a_bad_loss_name_fails_before_touching_the_run_folder(tree, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "data_report.txt").write_text("yesterday's report\n")
    argv = ["train", *TINY, "loss.name=seesw", "data.train.kind=folder", f"data.train.path={tree / 'train'}",
            "data.test.kind=folder", f"data.test.path={tree / 'test'}", f"train.output_dir={run}"]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "loss.name" in line and "did you mean 'seesaw'" in line
    assert (run / "data_report.txt").read_text() == "yesterday's report\n" and sorted(os.listdir(run)) == [
        "data_report.txt"]


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_exits_cleanly(tree, tmp_path):
    """Slurm and Kubernetes signal every process of the job: the loader workers too."""
    _folders(tree / "train", {"sound": 200})  # enough steps to land the signal mid-run
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "tinlt", "train", *TINY, "optim.epochs=3", "optim.batch_size=2",
            "data.num_workers=2", "train.save_every_steps=1", "data.train.kind=folder",
            f"data.train.path={tree / 'train'}", "data.test.kind=folder", f"data.test.path={tree / 'test'}",
            f"train.output_dir={out}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 180
    while not (out / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)  # workers are up and prefetching
    assert proc.poll() is None, "the run ended before the signal"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert err.strip().splitlines()[-1].startswith("tinlt: stopped by signal 15")


# ---------------------------------------------------------------- 7. smaller


def test_logs_get_progress_lines_with_an_eta(tree, tmp_path):
    argv = [sys.executable, "-m", "tinlt", "train", *[a for a in TINY if a != "train.quiet=true"], "optim.epochs=2",
            "data.num_workers=0", "data.train.kind=folder", f"data.train.path={tree / 'train'}",
            "data.test.kind=folder", f"data.test.path={tree / 'test'}", f"train.output_dir={tmp_path / 'r'}"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TINLT_PROGRESS_EVERY="0.000001"))
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [l for l in res.stdout.splitlines() if "run ETA" in l]
    # 16 images, batch 4: 4 steps per epoch, 8 in all; the first step starts the clock, each later one prints
    assert len(lines) == 7, res.stdout
    assert lines[0].startswith("epoch 1/2: batch 2/4 | step 2/8") and lines[-1].startswith("epoch 2/2: batch 4/4")
    assert "\r" not in res.stdout  # no bar redraws in a log


def test_tinlt_models_lists_every_kind(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["effnet-lite0-minilm"]["kind"] == "offline" and rows["tiny-vit"]["kind"] == "tiny"
    assert rows["RN50"]["kind"] == "open_clip" and "openai" in rows["RN50"]["pretrained"]
    assert main(["models", "ViT-B-32*"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-32" in out and "RN50 " not in out


def test_unknown_model_points_to_tinlt_models():
    from tinlt.models.factory import resolve_model

    with pytest.raises(TinltError, match=r"did you mean.*ViT-B-32.*`tinlt models`"):
        resolve_model("ViT-B-23")
