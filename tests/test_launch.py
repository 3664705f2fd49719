"""The launcher under sweep (tinlt.launch): worker processes, failures, Ctrl-C, and submitit.

Every cell is a ``tinlt train`` process that writes its ordinary run folder; the checks read
the run folders only. Trainings on CPU are bit-identical at an equal number of threads per
run (the thread count changes float rounding), so the comparisons fix one thread per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import split_args
from tinlt.launch import LaunchOptions
from tinlt.sweep import load_sweep, run_sweep

GRID = """base: base.yaml
seeds: [0, 1]
overrides: [train.save_every_steps=1]
cells:
  - {{name: text, kind: tin}}
  - {{name: linear, overrides: [model.head=linear, model.visual_attention=false]}}
{extra}"""


@pytest.fixture()
def grid(dataset, tmp_path) -> Path:
    splits = dict(a.split("=", 1) for a in split_args("folder", dataset))
    (tmp_path / "base.yaml").write_text(
        "model: {name: tiny-vit}\n"
        f"data:\n  train: {{kind: folder, path: {splits['data.train.path']}}}\n"
        f"  test: {{kind: folder, path: {splits['data.test.path']}}}\n"
        "  image_size: 32\n  num_workers: 0\n"
        "optim: {name: adamw, lr: 1.0e-3, batch_size: 4, epochs: 2}\n"
        "train: {eval_batch_size: 8, quiet: true, report: false}\n")
    return tmp_path


def _write(grid: Path, extra: str = "") -> Path:
    g = grid / "grid.yaml"
    g.write_text(GRID.format(extra=extra))
    return g


def _results(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/metrics.json")}


def _logs(out: Path) -> dict:
    return {p.parent.name: [json.loads(ln)["loss"] for ln in p.read_text().splitlines()] for p in out.glob("*/log.jsonl")}


def test_two_workers_give_each_cell_what_one_gives(grid):
    g = _write(grid)
    lines: list[str] = []
    one = run_sweep(load_sweep(g, out=grid / "one"), quiet=True, log=lines.append,
                    launch=LaunchOptions(workers=1, threads=1))
    two = run_sweep(load_sweep(g, out=grid / "two"), quiet=True, log=lines.append,
                    launch=LaunchOptions(workers=2, threads=1))
    assert [r["status"] for r in one] == [r["status"] for r in two] == ["done"] * 4
    a, b = _results(grid / "one"), _results(grid / "two")
    assert sorted(a) == sorted(b) == ["linear__seed0", "linear__seed1", "text__seed0", "text__seed1"]
    for cell in a:  # bit-identical: the same predictions and scores, the same loss at every epoch
        assert a[cell]["predictions"] == b[cell]["predictions"] and a[cell]["overall"] == b[cell]["overall"]
    assert _logs(grid / "one") == _logs(grid / "two")
    # one line per finished cell with its score and an ETA; each run wrote its log where it lives
    done = [ln for ln in lines if ln.startswith("[") and "overall" in ln]
    assert len(done) == 8 and any("ETA" in ln for ln in done)
    assert all((grid / "two" / c / "launch.log").is_file() for c in b)
    # a second call launches nothing: every cell is reused from its run folder
    lines.clear()
    again = run_sweep(load_sweep(g, out=grid / "two"), quiet=True, log=lines.append,
                      launch=LaunchOptions(workers=2, threads=1))
    assert [r["status"] for r in again] == ["reused"] * 4 and not any("launcher" in ln for ln in lines)


def test_a_failed_cell_is_reported_with_its_log_and_the_others_go_on(grid):
    g = _write(grid, "  - {name: broken, overrides: ['model.init_from={out}/nowhere.pt']}\n")
    lines: list[str] = []
    rows = run_sweep(load_sweep(g, out=grid / "o"), quiet=True, log=lines.append,
                     launch=LaunchOptions(workers=2, threads=1, retry=1))
    by = {r["cell"]: r for r in rows}
    assert all(by[c]["status"] == "done" for c in by if not c.startswith("broken"))
    status = by["broken__seed0"]["status"]
    assert status.startswith("failed: ") and "nowhere.pt" in status and "launch.log" in status
    assert sum("retry 1 of 1" in ln for ln in lines) == 2  # each broken seed tried twice
    info = json.loads((grid / "o" / "broken__seed0" / "sweep.json").read_text())
    assert info["attempts"] == 2 and info["status"] == status
    table = (grid / "o" / "results.md").read_text()
    assert "failed" in table and (grid / "o" / "results.csv").is_file()


def test_ctrl_c_stops_the_workers_and_every_cell_resumes(grid):
    g = _write(grid)
    g.write_text(g.read_text().replace("seeds: [0, 1]", "seeds: [0]"))
    base = (grid / "base.yaml").read_text()
    (grid / "base.yaml").write_text(base.replace("epochs: 2", "epochs: 40"))  # long enough to be stopped
    out = grid / "o"
    cmd = [sys.executable, "-m", "tinlt", "sweep", "-c", str(g), "--out", str(out), "--workers", "2",
           "--threads", "1", "-q"]
    # SIGINT back to its default in the launcher: a suite started in the background of a non-interactive
    # shell (`pytest &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt for it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/last.pt"))) < 2:
        time.sleep(0.2)
    assert len(list(out.glob("*/last.pt"))) == 2, "the workers never checkpointed"
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "each saves its last.pt" in stdout
    stopped = {p.parent.name: json.loads(p.read_text())["status"] for p in out.glob("*/sweep.json")}
    assert set(stopped.values()) == {"interrupted"} and len(stopped) == 2
    assert not list(out.glob("*/metrics.json"))
    # no worker trains on after the launcher stopped
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    time.sleep(2.0)
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    # the same command resumes both and finishes
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    for cell in ("text__seed0", "linear__seed0"):
        attempts = [ln for ln in (out / cell / "launch.log").read_text().splitlines() if ln.startswith("== ")]
        assert len(attempts) == 2 and "--resume" in attempts[-1] and "--resume" not in attempts[0]
        assert (out / cell / "metrics.json").is_file()


def test_submitit_local_executor_resumes_a_killed_cell_to_the_sequential_result(grid):
    pytest.importorskip("submitit")
    g = _write(grid)
    g.write_text(g.read_text().replace("seeds: [0, 1]", "seeds: [0]") +
                 "  - {name: third, overrides: [loss.name=ce]}\n")
    (grid / "base.yaml").write_text((grid / "base.yaml").read_text().replace("epochs: 2", "epochs: 6"))
    # the reference: the same three cells one after another, one thread each
    ref = run_sweep(load_sweep(g, out=grid / "seq"), quiet=True, log=lambda m: None,
                    launch=LaunchOptions(workers=1, threads=1))
    assert [r["status"] for r in ref] == ["done"] * 3
    out = grid / "o"
    cmd = [sys.executable, "-m", "tinlt", "sweep", "-c", str(g), "--out", str(out), "--launcher", "slurm",
           "--slurm-executor", "local", "--slurm", "cpus=1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = out / "third__seed0"
    deadline = time.time() + 180
    while time.time() < deadline and not (victim / "last.pt").is_file():
        time.sleep(0.1)
    assert (victim / "last.pt").is_file()
    holder = json.loads((victim / ".lock").read_text())  # the trainer's PID, from the run-folder lock
    os.kill(int(holder["pid"]), signal.SIGKILL)  # killed mid-training
    _, err = proc.communicate(timeout=600)
    rows = {p.parent.name: json.loads(p.read_text())["status"] for p in out.glob("*/sweep.json")}
    assert rows["third__seed0"].startswith("failed") and rows["text__seed0"] == rows["linear__seed0"] == "done"
    assert not (victim / "metrics.json").is_file()
    # rerun: the finished cells are reused, the killed one resumes from its last.pt
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "launcher slurm (local): submitted 1 job(s)" in res.stdout
    attempts = [ln for ln in (victim / "launch.log").read_text().splitlines() if ln.startswith("== ")]
    assert len(attempts) == 2 and "--resume" in attempts[-1] and "--resume" not in attempts[0]
    a, b = _results(grid / "seq"), _results(out)
    for cell in a:
        assert a[cell]["predictions"] == b[cell]["predictions"], cell
    assert _logs(grid / "seq") == _logs(out)


def test_bad_launch_options_are_one_line(grid, capsys):
    from tinlt.cli import main

    g = _write(grid)
    assert main(["sweep", "-c", str(g), "--out", str(grid / "o"), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main(["sweep", "-c", str(g), "--out", str(grid / "o"), "--gpus", "a,b"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["sweep", "-c", str(g), "--out", str(grid / "o"), "--slurm", "nonsense"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
