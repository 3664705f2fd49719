"""Interrupted and failing runs: SIGKILL / SIGTERM mid-training, a diverging loss, a corrupt
checkpoint and config typos, each through the real ``tinlt`` command.

The kill tests run ``python -m tinlt train`` in a subprocess, stop it after a random number
of optimizer steps, resume, and require the final weights to equal an uninterrupted run's
bit for bit (CPU).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, write_class_folders
from tinlt.cli import main
from tinlt.engine.checkpoint import load_checkpoint

COUNTS = [4, 2, 2]  # 8 images, batch 2 -> 4 optimizer steps per epoch
EPOCHS = 2
TOTAL_STEPS = EPOCHS * sum(COUNTS) // 2
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigdata")
    rng = np.random.default_rng(0)
    colours = {f"class_{c}": col for c, col in enumerate(COLOURS)}
    for split, counts in (("train", COUNTS), ("test", [2, 2, 2])):
        write_class_folders(root / split, {f"class_{c}": n for c, n in enumerate(counts)}, colours, spread=30, rng=rng)
    return root


def _error_line(err: str) -> str:
    """The one error line; warnings and notes printed before it (e.g. "no validation split") are allowed."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("tinlt: warning:", "tinlt: note:"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _args(root: Path, out: Path, save_every_steps: int = 1) -> list[str]:
    return [
        *TINY,
        "optim.batch_size=2",
        "optim.lr=1e-3",
        "optim.name=adamw",
        f"optim.epochs={EPOCHS}",
        "train.seed=7",
        f"train.save_every_steps={save_every_steps}",
        "train.eval_batch_size=8",
        f"train.output_dir={out}",
        "train.quiet=true",
        "data.train.kind=folder",
        f"data.train.path={root / 'train'}",
        "data.test.kind=folder",
        f"data.test.path={root / 'test'}",
    ]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce (saving only per epoch: how often
    a run saves must not change what it computes)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *_args(dataset, out, save_every_steps=0)]) == 0
    return out


def _launch(dataset: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # same intra-op thread count as this process, so float reductions split the same way
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    cmd = [sys.executable, "-m", "tinlt", "train", *_args(dataset, out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=out.parent)


def _wait_for_step(proc: subprocess.Popen, ckpt: Path, step: int, timeout: float = 120.0) -> int:
    """Poll ``ckpt`` until it holds ``global_step >= step``; return the step seen."""
    deadline = time.monotonic() + timeout
    stamp = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before step {step}: {err.decode()[-2000:]}")
        try:
            st = ckpt.stat()
            now = (st.st_ino, st.st_mtime_ns)
            if now != stamp:  # written by atomic rename: a complete file, new or old
                stamp = now
                seen = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
                if seen >= step:
                    return seen
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint at step {step} within {timeout}s")


def _assert_same_run(a: Path, b: Path) -> None:
    wa = torch.load(a / "last.pt", weights_only=False)
    wb = torch.load(b / "last.pt", weights_only=False)
    assert wa["global_step"] == wb["global_step"] == TOTAL_STEPS
    assert wa["model"].keys() == wb["model"].keys()
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    # the epoch log holds exactly one record per epoch, with the same numbers
    la = [json.loads(ln) for ln in (a / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(ln) for ln in (b / "log.jsonl").read_text().splitlines()]
    for r in la + lb:
        r.pop("time_s"), r.pop("cpu_s")  # timings
    assert la == lb and [r["epoch"] for r in la] == list(range(1, EPOCHS + 1))
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert ma["predictions"] == mb["predictions"]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(dataset, reference, tmp_path):
    stop_at = random.SystemRandom().randint(1, TOTAL_STEPS // 2)  # leaves >= 4 steps: the kill lands mid-run
    out = tmp_path / "run"
    proc = _launch(dataset, out)
    seen = _wait_for_step(proc, out / "last.pt", stop_at)
    assert proc.poll() is None, f"run finished before the kill (stop_at={stop_at})"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed = load_checkpoint(out / "last.pt")  # never half-written, whatever moment the kill hit
    assert seen <= killed["global_step"] < TOTAL_STEPS, (stop_at, seen, killed["global_step"])

    assert main(["train", "--resume", str(out / "last.pt")]) == 0
    _assert_same_run(reference, out)


@pytest.mark.slow
def test_sigterm_exits_cleanly_and_resumes(dataset, reference, tmp_path):
    stop_at = random.SystemRandom().randint(1, TOTAL_STEPS // 2)
    out = tmp_path / "run"
    proc = _launch(dataset, out)
    _wait_for_step(proc, out / "last.pt", stop_at)
    assert proc.poll() is None, f"run finished before SIGTERM (stop_at={stop_at})"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM == 143, err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("tinlt: stopped by signal 15") and "--resume" in last_line
    assert str(out / "last.pt") in last_line
    ckpt = load_checkpoint(out / "last.pt")
    assert stop_at <= ckpt["global_step"] < TOTAL_STEPS

    # as if a killed run had logged an epoch its checkpoint does not hold: resume drops it
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 99, "step": 999, "loss": 0.0, "lr": 0.0, "time_s": 0.0}) + "\n")
    assert main(["train", "--resume", str(out / "last.pt")]) == 0
    _assert_same_run(reference, out)


# ---------------------------------------------------------------- diverging loss


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    # lr 1e30 with plain SGD: step 1 leaves huge but finite weights, step 2's loss is NaN
    argv = ["train", *_args(dataset, out), "optim.name=sgd", "optim.lr=1e30", "optim.momentum=0"]
    assert main(argv) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("tinlt: error: non-finite loss") and "optimizer step 2" in err
    assert f"last good checkpoint: {out / 'last.pt'}" in err
    good = load_checkpoint(out / "last.pt")  # intact and loadable
    assert good["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())


def test_a_nonfinite_loss_checked_later_still_names_its_own_step(dataset, tmp_path, capsys):
    """The loss's finiteness is noted on the device and read at checks, not at every step: with no
    save until the epoch ends, the error still names step 2, and nothing is saved."""
    out = tmp_path / "run"
    argv = ["train", *_args(dataset, out, save_every_steps=0), "optim.name=sgd", "optim.lr=1e30", "optim.momentum=0"]
    assert main(argv) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("tinlt: error: non-finite loss (nan) at epoch 1, optimizer step 2"), err
    assert "last good checkpoint: none yet" in err and not (out / "last.pt").exists()


def test_nonfinite_weights_are_never_saved(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    # lr 3e38 (near float32's max) turns some weights into inf in step 1, with a finite loss
    argv = ["train", *_args(dataset, out), "optim.name=sgd", "optim.lr=3e38", "optim.momentum=0"]
    assert main(argv) == 2
    err = _error_line(capsys.readouterr().err)
    assert "non-finite weights after optimizer step 1" in err and "last good checkpoint: none yet" in err
    assert not (out / "last.pt").exists()


# ---------------------------------------------------------------- corrupt checkpoints


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_corrupt_checkpoint_resume_is_one_line(reference, tmp_path, capsys, damage):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "config.yaml", run / "config.yaml")
    data = (reference / "last.pt").read_bytes()
    bad = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n"}[damage]
    (run / "last.pt").write_bytes(bad)
    assert main(["train", "--resume", str(run / "last.pt"), f"train.output_dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tinlt: error: checkpoint {run / 'last.pt'} is corrupt or truncated")
    assert "\n" not in err and "Traceback" not in err
    assert (run / "last.pt").read_bytes() == bad  # left as it was for inspection


# ---------------------------------------------------------------- config typos


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("optim:\n  lrr: 0.1\n", "unknown config key 'optim.lrr' (line 2), did you mean 'optim.lr'?"),
        ("data:\n  train:\n    pth: x.txt\n", "unknown config key 'data.train.pth' (line 3), did you mean 'data.train.path'?"),
        ("optim:\n  epochs: many\n", "bad value for 'optim.epochs'"),
    ],
)
def test_config_file_typo_names_file_and_nearest_key(tmp_path, capsys, yaml_text, needle):
    cfg = tmp_path / "my_run.yaml"
    cfg.write_text(yaml_text)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tinlt: error: {cfg.resolve()}: {needle}") and "\n" not in err


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.seeed=3", "unknown config key 'train.seeed'; did you mean 'train.seed'?"),
        ("data.stric=true", "unknown config key 'data.stric'; did you mean 'data.strict'?"),
        ("data.strict=maybe", "bad value for 'data.strict'"),
        ("optim.lr=fast", "bad value for 'optim.lr'"),
    ],
)
def test_override_typo_suggests_nearest_key(capsys, override, needle):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tinlt: error: command line: {needle}") and "\n" not in err
