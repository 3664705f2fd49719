"""``tinlt sweep`` end to end on a tiny random model and generated images.

A 3-cell sweep (linear+CE, text head+seesaw+contrastive, post-hoc adjustment of the
first) runs through the CLI; its tables must agree with each run's metrics.json, whose
numbers are re-derived here from the confusion matrix and the saved probabilities. A second
invocation must train nothing; a cell without metrics.json resumes from its last.pt.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import tinlt
import tinlt.engine.inference as inference
import tinlt.engine.trainer as trainer
from conftest import write_class_folders, write_list
from tinlt.cli import main
from tinlt.errors import TinltError
from tinlt.sweep import cell_state, load_sweep, load_sweeps

CLASSES = ["red thing", "green thing", "blue thing"]
TRAIN_COUNTS = [9, 5, 2]
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def _write_split(root: Path, counts, seed) -> Path:
    folders = [str(c) for c in range(len(counts))]
    write_class_folders(root, dict(zip(folders, counts)), dict(zip(folders, COLOURS)), seed=seed)
    return write_list(root / "list.txt", root, root, folders)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    train = _write_split(root / "train", TRAIN_COUNTS, seed=0)
    test = _write_split(root / "test", [3, 3, 3], seed=1)
    (root / "classnames.txt").write_text("".join(f"{n}\n" for n in CLASSES))
    cn = root / "classnames.txt"
    (root / "base.yaml").write_text(
        f"""
model: {{name: tiny-vit}}
data:
  train: {{kind: list, path: {train}, classnames: {cn}}}
  test: {{kind: list, path: {test}, classnames: {cn}}}
  image_size: 32
  num_workers: 0
optim: {{name: adamw, lr: 1.0e-3, batch_size: 4, epochs: 2}}
train: {{eval_batch_size: 8, quiet: true}}
"""
    )
    (root / "grid.yaml").write_text(
        """name: tiny ablation
base: base.yaml
overrides: [optim.epochs=1]
cells:
  - {name: linear_ce, overrides: [model.head=linear, model.visual_attention=false, loss.name=ce]}
  - {name: text_contrastive, overrides: [loss.name=seesaw, loss.contrastive_weight=0.5]}
  - {name: posthoc, eval_from: linear_ce, overrides: [train.posthoc_tau=1.0]}
"""
    )
    return root


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _mtimes(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.startswith("results.")}


def test_sweep_runs_tables_and_reruns_nothing(project, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    grid = project / "grid.yaml"
    assert main(["sweep", "--config", str(grid), "--out", str(out), "--quiet"]) == 0

    rows = _read_csv(out / "results.csv")
    assert [r["cell"] for r in rows] == ["linear_ce", "text_contrastive", "posthoc"]
    assert rows[0]["overrides"] == "model.head=linear model.visual_attention=false loss.name=ce"
    for r in rows:
        m = json.loads((out / r["cell"] / "metrics.json").read_text())
        conf = np.array(m["confusion"])
        balanced = 100 * np.mean(np.diag(conf) / conf.sum(1))
        assert float(r["overall"]) == pytest.approx(balanced)
        assert float(r["instance_acc"]) == pytest.approx(100 * np.trace(conf) / conf.sum())
        assert float(r["few"]) == pytest.approx(balanced)  # train counts 9/5/2: every class is "few"
        assert r["many"] == "" and r["medium"] == ""  # no class in those groups
        assert float(r["wall_s"]) > 0 and r["status"] == "done"
        assert Path(r["run"]) == out / r["cell"]
    cfg = yaml.safe_load((out / "text_contrastive" / "config.yaml").read_text())
    assert cfg["optim"]["epochs"] == 1 and cfg["loss"]["contrastive_weight"] == 0.5  # grid overrides won

    # post-hoc cell: argmax of (log p - log prior) of the linear cell's saved probabilities
    src = json.loads((out / "linear_ce" / "metrics.json").read_text())["predictions"]
    ph = json.loads((out / "posthoc" / "metrics.json").read_text())["predictions"]
    assert ph["index"] == src["index"]
    adjusted = np.log(np.maximum(np.array(src["scores"]), 1e-30)) - np.log(np.array(TRAIN_COUNTS) / sum(TRAIN_COUNTS))
    top2 = np.sort(adjusted, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # the saved scores are rounded to 6 decimals
    assert clear.sum() >= 6
    assert np.array_equal(np.array(ph["pred"])[clear], adjusted.argmax(1)[clear])

    md = (out / "results.md").read_text()
    assert "# Sweep: tiny ablation" in md and "`optim.epochs=1`" in md
    for r in rows:
        assert f"| {r['cell']} |" in md and f"{float(r['overall']):.1f}" in md

    # a second run of the finished sweep trains and evaluates nothing, and touches no run file
    before = _mtimes(out)

    def forbidden(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(trainer, "train", forbidden)
    monkeypatch.setattr(inference, "evaluate_checkpoint", forbidden)
    assert main(["sweep", "--config", str(grid), "--out", str(out), "--quiet"]) == 0
    assert _mtimes(out) == before
    again = _read_csv(out / "results.csv")
    assert [r["status"] for r in again] == ["reused"] * 3
    assert [r["overall"] for r in again] == [r["overall"] for r in rows]
    monkeypatch.undo()

    # a cell with a last.pt but no metrics.json resumes from it (here: only the final evaluation)
    first_confusion = json.loads((out / "linear_ce" / "metrics.json").read_text())["confusion"]
    (out / "linear_ce" / "metrics.json").unlink()
    calls = []
    real_train = trainer.train

    def spy(cfg, **kw):
        calls.append((Path(cfg.train.output_dir).name, kw.get("resume")))
        return real_train(cfg, **kw)

    monkeypatch.setattr(trainer, "train", spy)
    monkeypatch.setattr(inference, "evaluate_checkpoint", forbidden)  # best.pt unchanged: post-hoc stays valid
    assert main(["sweep", "--config", str(grid), "--out", str(out), "--quiet"]) == 0
    assert calls == [("linear_ce", "auto")]
    # same best.pt, same images: the resumed run reports the same predictions
    assert json.loads((out / "linear_ce" / "metrics.json").read_text())["confusion"] == first_confusion

    # a changed setting invalidates every cell it reaches
    changed = load_sweep(grid, out=out, overrides=["optim.lr=0.002"])
    assert [cell_state(changed, c) for c in changed.cells] == ["run", "run", "run"]
    same = load_sweep(grid, out=out)
    assert [cell_state(same, c) for c in same.cells] == ["done", "done", "done"]

    # a key the schema gained after a cell ran does not invalidate it while left at its default
    saved = out / "text_contrastive" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["train"]["posthoc_tau"]
    saved.write_text(yaml.safe_dump(old))
    assert cell_state(same, same.cells[1]) == "done"
    moved = load_sweep(grid, out=out, overrides=["train.posthoc_tau=0.5"])
    assert cell_state(moved, moved.cells[1]) == "run"

    # the reuse line names the release that made each run, so stale numbers after an upgrade show
    m = json.loads((out / "linear_ce" / "metrics.json").read_text())
    assert m["tinlt_version"] == tinlt.__version__
    m["tinlt_version"] = "0.0.1"
    (out / "linear_ce" / "metrics.json").write_text(json.dumps(m))
    m = json.loads((out / "text_contrastive" / "metrics.json").read_text())
    del m["tinlt_version"]
    (out / "text_contrastive" / "metrics.json").write_text(json.dumps(m))
    monkeypatch.setattr(trainer, "train", forbidden)
    capsys.readouterr()
    assert main(["sweep", "--config", str(grid), "--out", str(out), "--quiet"]) == 0
    log = capsys.readouterr().out
    assert f"linear_ce: finished earlier, reused (made by tinlt 0.0.1, this is {tinlt.__version__}; --fresh" in log
    assert "text_contrastive: finished earlier, reused (made before runs recorded their tinlt version" in log
    assert f"posthoc: finished earlier, reused (tinlt {tinlt.__version__})" in log

    # --fresh retrains the selected cell from scratch (no resume) and leaves the others alone
    calls.clear()
    monkeypatch.setattr(trainer, "train", spy)
    untouched = (out / "linear_ce" / "metrics.json").stat().st_mtime_ns
    assert main(["sweep", "--config", str(grid), "--out", str(out), "--quiet", "--fresh",
                 "--only", "text_contrastive"]) == 0
    assert calls == [("text_contrastive", None)]
    assert json.loads((out / "text_contrastive" / "metrics.json").read_text())["tinlt_version"] == tinlt.__version__
    assert (out / "linear_ce" / "metrics.json").stat().st_mtime_ns == untouched


def test_a_cell_is_reused_resumed_or_retrained_fresh(project, tmp_path, monkeypatch):
    """The one reuse rule (the demo runs its cells through it too)."""
    from tinlt.sweep import run_sweep

    g = _grid(tmp_path, project, "overrides: [optim.epochs=1]\ncells:\n  - {name: one}\n")
    run = load_sweep(g, out=tmp_path / "o").cells[0].out
    calls = []
    real_train = trainer.train

    def spy(cfg, **kw):
        calls.append((kw.get("resume"), (run / "last.pt").exists(), (run / "metrics.json").exists()))
        return real_train(cfg, **kw)

    monkeypatch.setattr(trainer, "train", spy)

    def once(*overrides, fresh=False):
        return run_sweep(load_sweep(g, out=tmp_path / "o", overrides=overrides), quiet=True, fresh=fresh,
                         log=lambda m: None)[0]

    assert once()["status"] == "done" and calls == [(None, False, False)]
    first = json.loads((run / "metrics.json").read_text())
    assert once()["status"] == "reused" and len(calls) == 1
    assert json.loads((run / "metrics.json").read_text())["confusion"] == first["confusion"]

    (run / "metrics.json").unlink()  # interrupted after the last checkpoint: resume, not retrain
    once()
    assert calls[-1] == ("auto", True, False)

    # fresh: old results are removed before training starts, and nothing is resumed
    once(fresh=True)
    assert calls[-1] == (None, False, False) and (run / "metrics.json").is_file()

    once("optim.lr=0.002")  # a changed config trains afresh
    assert calls[-1] == (None, False, False) and len(calls) == 4


def _grid(tmp_path: Path, project: Path, body: str) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(f"base: {project / 'base.yaml'}\n" + body)
    return p


def test_grid_expansion_and_dry_run(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("dry run trained"))
    g = _grid(tmp_path, project, "grid: {loss.p: [0.2, 0.9], optim.lr: [0.001, 0.01]}\n"
                                 "cells:\n  - {name: a}\n  - {name: b, overrides: [loss.q=2.0]}\n")
    sw = load_sweep(g, out=tmp_path / "o")
    assert [c.name for c in sw.cells] == [
        "a__p=0.2,lr=0.001", "a__p=0.2,lr=0.01", "a__p=0.9,lr=0.001", "a__p=0.9,lr=0.01",
        "b__p=0.2,lr=0.001", "b__p=0.2,lr=0.01", "b__p=0.9,lr=0.001", "b__p=0.9,lr=0.01",
    ]
    last = sw.cells[-1]
    assert (last.cfg.loss.p, last.cfg.optim.lr, last.cfg.loss.q) == (0.9, 0.01, 2.0)
    assert last.out == (tmp_path / "o" / last.name).resolve()
    assert main(["sweep", "--config", str(g), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" train ") == 8 and not (tmp_path / "o").exists()

    # {out} in an override is the sweep folder
    g2 = _grid(tmp_path, project, "cells:\n  - {name: crt, overrides: ['model.init_from={out}/ce/best.pt']}\n")
    assert load_sweep(g2, out=tmp_path / "o").cells[0].cfg.model.init_from == str((tmp_path / "o" / "ce" / "best.pt").resolve())


@pytest.mark.parametrize(
    "body, needle",
    [
        ("grid: {loss.pp: [0.2]}\n", r"g.yaml:2: cell 'pp=0.2': .*unknown config key 'loss.pp'; did you mean 'loss.p'\?"),
        ("cells:\n  - {name: a, overrides: [optim.lrr=1]}\n", r"g.yaml:3: cell 'a': .*did you mean 'optim.lr'\?"),
        ("overrides: [modle.head=linear]\ncells:\n  - {name: a}\n", r"g.yaml:2: .*unknown config key 'modle"),
        ("grids: {loss.p: [0.2]}\n", r"g.yaml:2: unknown grid key 'grids'; did you mean 'grid'\?"),
        ("cells:\n  - {name: a, overides: []}\n", r"unknown cell key 'overides'; did you mean 'overrides'\?"),
        ("cells:\n  - {name: a, overrides: [model.head=linear]}\n  - {name: b, eval_from: zz}\n", "eval_from 'zz'"),
        ("cells:\n  - {name: a}\n  - {name: b, eval_from: a, overrides: [model.head=linear]}\n", "only override train"),
        ("cells:\n  - {name: a}\n  - {name: a}\n", "two cells are named 'a'"),
        ("cells:\n  - {name: a, overrides: [train.tau_norm=1.0]}\n", "needs model.head=linear"),
    ],
)
def test_bad_grids_fail_before_any_run(project, tmp_path, monkeypatch, capsys, body, needle):
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("trained before validating every cell"))
    g = _grid(tmp_path, project, body)
    with pytest.raises(TinltError, match=needle):
        load_sweep(g, out=tmp_path / "o")
    assert main(["sweep", "--config", str(g), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinlt: error:") and "\n" not in err and "Traceback" not in err


def test_a_failed_cell_does_not_stop_the_others(project, tmp_path, monkeypatch, capsys):
    ran = []

    def fake_train(cfg, **kw):  # stands in for a run that fails at model.init_from
        ran.append(Path(cfg.train.output_dir).name)
        if cfg.model.init_from:
            raise TinltError(f"config key 'model.init_from': checkpoint not found: {cfg.model.init_from}")

    monkeypatch.setattr(trainer, "train", fake_train)
    g = _grid(tmp_path, project, "cells:\n  - {name: bad, overrides: ['model.init_from={out}/nope.pt']}\n"
                                 "  - {name: good}\n")
    assert main(["sweep", "--config", str(g), "--out", str(tmp_path / "o"), "-q"]) == 1
    rows = _read_csv(tmp_path / "o" / "results.csv")
    assert rows[0]["status"].startswith("failed: config key 'model.init_from': checkpoint not found")
    assert ran == ["bad", "good"]  # the second cell still ran
    assert rows[1]["status"] == "done"
    assert "1 cell(s) failed: bad" in capsys.readouterr().out


def test_a_bundled_grid_runs_on_your_own_data_with_one_flag(project, tmp_path, capsys):
    """--base replaces the grid's base (its data, towers and budget); the protocol and the cells stay."""
    mine = tmp_path / "my_run.yaml"
    mine.write_text(f"_base_: {project / 'base.yaml'}\nname: my_clamps\n")
    (sweep,) = load_sweeps("grids/modules", out=tmp_path / "o", base_override=str(mine))
    assert sweep.out == (tmp_path / "o").resolve() and len(sweep.cells) == 12  # 4 cells x 3 seeds
    for c in sweep.cells:
        assert c.cfg.name == "my_clamps" and c.cfg.data.train.kind == "list"  # the user's data, not Fashion-MNIST
        assert c.cfg.data.val.kind == "holdout" and c.cfg.train.best_checkpoint == "last"  # the grid's protocol
    assert {c.cfg.model.head for c in sweep.cells} == {"linear", "text"}
    # a multi-data-set grid collapses to the one base
    (bench,) = load_sweeps("grids/benchmark", out=tmp_path / "b", base_override=str(mine))
    assert bench.dataset == "my_run" and bench.out == (tmp_path / "b" / "my_run").resolve()
    assert main(["sweep", "-c", "grids/modules", "--base", str(mine), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "fashion" not in capsys.readouterr().out.lower()


def test_a_table_of_one_seed_says_so(project, tmp_path):
    from tinlt.sweep import format_markdown, results_rows

    g = _grid(tmp_path, project, "seeds: [0, 1, 2]\ncells:\n  - {name: a}\n  - {name: b}\n")
    sweep = load_sweep(g, out=tmp_path / "o")
    rows = results_rows(sweep)
    for r in rows:
        if r["seed"] == 0:
            r.update(overall=50.0 + (r["group"] == "b"), status="done")
    text = format_markdown(sweep, rows)
    assert "one seed (0) so far" in text and "mean ± std" not in text and "seeds [1, 2] not run yet" in text
    for r in rows:
        if r["seed"] == 1:
            r.update(overall=52.0, status="done")
    text = format_markdown(sweep, rows)
    assert "each cell over seeds [0, 1]: mean ± std" in text and "seeds [2] not run yet" in text
