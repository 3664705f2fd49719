"""Reliability, round two: untrusted checkpoints, run-folder ownership, resume that checks
what changed, folder walks that cannot relabel images, commands that write only where they
own, and faults as one-line errors. Each case reproduces a reported failure.

The fault-injection runs reuse test_reliability_signals' data and reference run: a run
killed at a chosen moment (mid-write of last.pt, between best.pt and last.pt) and resumed
must end bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_reliability_signals import TOTAL_STEPS, _args, _assert_same_run, dataset, reference  # noqa: F401
from tinlt.cli import main


def _one_line_error(capsys) -> str:
    """The one error line (notes that say what a resume changes may precede it)."""
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith(("tinlt: note:", "tinlt: warning:"))]
    assert len(lines) == 1 and lines[0].startswith("tinlt: error:") and "Traceback" not in lines[0], lines
    return lines[0]


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))


# --------------------------------------------------------------------------- 1. untrusted checkpoints


class _Payload:
    """Unpickling this object creates a file: what a hostile checkpoint would do, harmlessly."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(reference, dataset, tmp_path, capsys):
    good = torch.load(reference / "last.pt", weights_only=True)
    marker = tmp_path / "pwned"
    evil = dict(good, history=[*good["history"], {"note": _Payload(str(marker))}])
    bad = tmp_path / "evil" / "last.pt"
    bad.parent.mkdir()
    torch.save(evil, bad)
    shutil.copy(reference / "config.yaml", bad.parent / "config.yaml")

    commands = [
        ["eval", "--checkpoint", str(bad)],
        ["predict", str(dataset / "test"), "--checkpoint", str(bad)],
        ["export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")],
        ["train", *_args(dataset, tmp_path / "init"), f"model.init_from={bad}"],
        ["train", "--resume", str(bad)],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = _one_line_error(capsys)
        assert "refused" in err and "could run code" in err and "(io.open)" in err, err
        assert not marker.exists(), argv  # the payload never ran


def test_old_checkpoints_load_only_when_trusted(reference, tmp_path, capsys):
    # what tinlt 0.1 wrote: numpy RNG state and numpy arrays pickled as they are
    old = torch.load(reference / "last.pt", weights_only=True)
    old["rng"] = dict(old["rng"], numpy=np.random.get_state())
    old["grad_ratio"] = {k: np.asarray(v) for k, v in old["grad_ratio"].items()}
    path = tmp_path / "old" / "last.pt"
    path.parent.mkdir()
    torch.save(old, path)
    assert main(["eval", "--checkpoint", str(path), "--out", str(tmp_path / "ev")]) == 2
    assert "--trust-checkpoint" in _one_line_error(capsys)
    assert main(["eval", "--checkpoint", str(path), "--out", str(tmp_path / "ev"), "--trust-checkpoint", "-q"]) == 0
    assert "only do this for files you trust" in capsys.readouterr().err
    # and a new checkpoint is tensors and plain values only
    assert torch.load(reference / "best.pt", weights_only=True)["global_step"] == TOTAL_STEPS


# --------------------------------------------------------------------------- 2. the run folder


def _train(dataset: Path, out: Path, *extra: str) -> int:
    return main(["train", *_args(dataset, out, save_every_steps=0), *extra])


def test_train_refuses_a_folder_that_holds_a_run_unless_told(reference, dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    def files():  # the run's files; the hidden .lock is bookkeeping every trainer takes first
        return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")}

    before = files()
    assert _train(dataset, run) == 2
    err = _one_line_error(capsys)
    assert "holds a run" in err and "--resume" in err and "--fresh" in err
    assert files() == before  # not a byte changed
    # --fresh replaces it: one log record per epoch, not the old ones plus the new
    assert _train(dataset, run, "--fresh") == 0
    log = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in log] == [1, 2]


HOLD = textwrap.dedent("""
    import sys, time
    from tinlt.engine.run_folder import RunFolder, RunLock
    with RunLock(RunFolder(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_second_trainer_on_a_locked_folder_fails_at_once(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, env=_env())
    try:
        assert holder.stdout.readline().strip() == b"held"
        assert _train(dataset, run) == 2
        assert holder.poll() is None  # refused while the holder still runs: it did not wait for the lock
        err = _one_line_error(capsys)
        assert f"PID {holder.pid}" in err and "in use by another tinlt run" in err
        assert not (run / "config.yaml").exists()  # nothing written by the refused trainer
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the folder is usable, and the next run says so
    assert _train(dataset, run) == 0
    assert f"taking over from a run that ended without finishing (PID {holder.pid}" in capsys.readouterr().err


KILL_AT = textwrap.dedent("""
    import contextlib, os, sys, time
    import tinlt.engine.checkpoint as ck
    import tinlt.fileio as fio
    flag, moment, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}

    def pause():
        open(flag, "w").close()
        time.sleep(120)

    if moment == "mid-write":  # last.pt's bytes are in the temporary file, not yet renamed
        orig = fio.atomic_target

        @contextlib.contextmanager
        def slow(dst, **kw):
            with orig(dst, **kw) as tmp:
                yield tmp
                if str(dst).endswith("last.pt"):
                    calls["n"] += 1
                    if calls["n"] == nth:
                        pause()
        fio.atomic_target = slow
    else:  # best.pt written, last.pt not yet
        orig_copy = ck.copy_atomic

        def slow_copy(src, dst):
            pause()
            return orig_copy(src, dst)
        ck.copy_atomic = slow_copy
    from tinlt.cli import main
    sys.exit(main(sys.argv[4:]))
""")


def _kill_at(dataset: Path, out: Path, moment: str, nth: int = 1) -> None:
    flag = out.parent / f"paused-{moment}"
    proc = subprocess.Popen([sys.executable, "-c", KILL_AT, str(flag), moment, str(nth), "train",
                             *_args(dataset, out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 120
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before the pause: {proc.communicate()[1].decode()[-1500:]}")
        assert time.monotonic() < deadline, "never reached the pause"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("moment", ["mid-write", "between-best-and-last"])
def test_kill_at_a_write_then_resume_is_bit_identical(reference, dataset, tmp_path, moment):
    out = tmp_path / "run"
    _kill_at(dataset, out, moment, nth=int(np.random.default_rng(len(moment)).integers(2, TOTAL_STEPS - 1)))
    if moment == "mid-write":
        assert list(out.glob(".last.pt.*.tmp")), "the kill should have left the unfinished temporary file"
    else:  # best.pt is at the end of an epoch, last.pt still before it
        best, last = (torch.load(out / n, weights_only=True) for n in ("best.pt", "last.pt"))
        assert (best["epoch"], best["batch_in_epoch"]) == (last["epoch"] + 1, 0)
    assert main(["train", "--resume", str(out / "last.pt")]) == 0
    _assert_same_run(reference, out)
    assert not list(out.glob(".*.tmp"))  # the next holder of the folder cleared the half-written file


def test_a_moved_run_resumes_in_its_new_place(reference, dataset, tmp_path):
    old = tmp_path / "old" / "run"
    old.parent.mkdir()
    _kill_at(dataset, old, "mid-write", nth=3)
    new = tmp_path / "new" / "run"
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    assert main(["train", "--resume", str(new / "last.pt")]) == 0
    _assert_same_run(reference, new)
    assert not old.exists()  # nothing was written where the run used to be
    assert Path(json.loads(json.dumps(__import__("yaml").safe_load((new / "config.yaml").read_text())))
                ["train"]["output_dir"]) == new


# --------------------------------------------------------------------------- 3. resume checks what changed


def test_resume_refuses_what_cannot_change_and_applies_the_rest(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(dataset, run, "optim.epochs=1", "optim.schedule=constant") == 0
    last = str(run / "last.pt")
    for bad, key in (("optim.batch_size=4", "optim.batch_size"), ("model.head=linear", "model.head"),
                     ("train.seed=8", "train.seed")):
        assert main(["train", "--resume", last, bad]) == 2
        err = _one_line_error(capsys)
        assert "cannot change" in err and key in err, err
    # other classes (a moved dataset path that now points elsewhere): refused before any size mismatch
    two = tmp_path / "two"
    for split in ("train", "test"):
        for c in ("class_0", "class_1"):
            shutil.copytree(dataset / split / c, two / split / c)
    assert main(["train", "--resume", last, f"data.train.path={two / 'train'}", f"data.test.path={two / 'test'}"]) == 2
    assert "cannot change its classes" in _one_line_error(capsys)

    # a longer run with a new learning rate: both take effect and are recorded
    assert main(["train", "--resume", last, "optim.epochs=2", "optim.lr=2e-4"]) == 0
    assert "taking effect: optim.epochs 1 -> 2, optim.lr 0.001 -> 0.0002" in capsys.readouterr().err
    log = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[0]["lr"] == pytest.approx(1e-3) and log[1]["lr"] == pytest.approx(2e-4)
    saved = torch.load(run / "last.pt", weights_only=True)
    assert saved["config"]["optim"]["lr"] == 2e-4 and saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert "lr: 0.0002" in (run / "config.yaml").read_text()


# --------------------------------------------------------------------------- 4. folder walks


def test_a_symlink_loop_does_not_relabel_other_classes(tmp_path):
    from tinlt.data.sources import load_folder
    from tinlt.data.validate import validate_samples

    root = tmp_path / "train"
    for c, n in (("a", 2), ("b", 3), ("c", 1)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    os.symlink("..", root / "a" / "loop")  # a/loop -> train/: every class under 'a'
    os.symlink(root / "b", root / "c" / "more_b")  # a folder link into another class
    os.symlink(root / "b" / "0.png", root / "a" / "stolen.png")  # a file link into another class
    os.symlink(root / "a" / "0.png", root / "a" / "again.png")  # the same file twice in its own class
    s = load_folder(root)
    assert s.class_counts().tolist() == [2, 3, 1]
    assert sorted(os.path.realpath(p) for p in s.items) == sorted(str(p) for p in root.glob("*/*.png")
                                                                  if not p.is_symlink())
    reasons = {Path(item).name: why for item, why in s.skipped}
    assert "loop" in reasons["loop"] and "class folder 'b'" in reasons["more_b"]
    assert "class folder 'b'" in reasons["stolen.png"] and "same file" in reasons["again.png"]
    report = validate_samples(s, split_name="data.train")
    assert {Path(p.item).name for p in report.problems if p.action == "ignored"} >= {"loop", "more_b", "stolen.png"}


def test_duplicates_are_found_by_real_path(tmp_path):
    from tinlt.data.samples import Samples
    from tinlt.data.validate import validate_samples

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    os.symlink(img, tmp_path / "alias.png")
    s = Samples([str(img), str(tmp_path / "alias.png")], np.array([0, 1]), ["a", "b"])
    report = validate_samples(s, split_name="data.train")
    assert len(report.samples) == 1 and "different label" in report.errors[0].reason


# --------------------------------------------------------------------------- 5. commands write where they own


def test_zeroshot_and_eval_never_write_over_a_trained_run(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert main(["zeroshot", "-c", str(run / "config.yaml"), f"train.output_dir={run}", "-q"]) == 0
    assert (run / "zeroshot" / "metrics.json").is_file()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert f"--checkpoint: using {run / 'best.pt'}" in capsys.readouterr().out
    assert (run / "eval" / "metrics.json").is_file()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")} == before
    assert main(["eval", "--checkpoint", str(run), "--out", str(run)]) == 2
    assert "holds a training run" in _one_line_error(capsys)


# --------------------------------------------------------------------------- 6. faults as one line


def test_a_zeroed_checkpoint_is_one_line(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "last.pt").write_bytes(bytes((run / "last.pt").stat().st_size))  # what a power loss leaves
    assert main(["train", "--resume", str(run / "last.pt")]) == 2
    assert "is corrupt or truncated" in _one_line_error(capsys)


def test_a_full_disk_during_a_checkpoint_write_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    import tinlt.fileio as fio

    run = tmp_path / "run"
    real = tempfile.mkstemp
    state = {"saves": 0}

    def full_after_first_checkpoint(prefix="", suffix="", dir=None):
        fd, path = real(prefix=prefix, suffix=suffix, dir=dir)
        if prefix.startswith(".last.pt."):
            state["saves"] += 1
            if state["saves"] > 1:  # the second save finds the disk full
                os.close(fd)
                os.unlink(path)
                os.symlink("/dev/full", path)
                fd = os.open(path, os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(fio.tempfile, "mkstemp", full_after_first_checkpoint)
    assert main(["train", *_args(dataset, run, save_every_steps=1)]) == 2
    err = _one_line_error(capsys)
    assert "no space left on device" in err.lower() and f"last good checkpoint: {run / 'last.pt'}" in err
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 1  # the previous one survived


def test_a_read_only_folder_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    import tinlt.fileio as fio

    def read_only(*a, dir=None, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(fio.tempfile, "mkstemp", read_only)
    assert main(["train", *_args(dataset, tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert "Read-only file system" in err and str(tmp_path / "run") in err


def test_an_internal_bug_keeps_its_traceback(monkeypatch, dataset, tmp_path):
    import tinlt.engine.trainer as trainer

    def bug(*a, **k):
        raise ZeroDivisionError("a bug, not the user's fault")

    monkeypatch.setattr(trainer._Run, "build_optimization", bug)
    with pytest.raises(ZeroDivisionError):
        main(["train", *_args(dataset, tmp_path / "run")])


def test_checkpoints_are_written_off_the_training_thread_with_the_weights_of_their_step(dataset, tmp_path,
                                                                                         monkeypatch):
    """Rank 0 copies its state to host memory and writes it on a thread (other ranks no longer wait
    at a barrier for its disk). While a slow write is in flight training goes on changing the live
    weights in place: the file must still hold the weights of the step it was saved at, every
    write must land before the run ends, and a failed write must not be lost."""
    import threading

    import tinlt.engine.checkpoint as ckpt_io

    real = ckpt_io.save_atomic
    seen = []

    def slow(obj, path, **kw):
        first = next(v for k, v in obj["model"].items() if v.is_floating_point() and v.numel() > 1)
        before = first.clone()
        time.sleep(0.2)  # the trainer runs its next step meanwhile
        seen.append((threading.current_thread().name, obj["global_step"], torch.equal(before, first)))
        return real(obj, path, **kw)

    monkeypatch.setattr(ckpt_io, "save_atomic", slow)
    run = tmp_path / "run"
    assert main(["train", *_args(dataset, run, save_every_steps=1)]) == 0
    assert seen and all(name == "tinlt-checkpoint" for name, _, _ in seen)
    assert all(unchanged for _, _, unchanged in seen)  # a snapshot, not the live tensors
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == TOTAL_STEPS  # the last write landed


def test_a_failed_background_write_is_raised_not_lost():
    from tinlt.engine.checkpoint import BackgroundWriter, snapshot
    from tinlt.errors import TinltError

    w = BackgroundWriter()
    w.submit(lambda: (_ for _ in ()).throw(TinltError("cannot write checkpoint x: disk full")))
    with pytest.raises(TinltError, match="disk full"):
        w.wait()
    w.wait()  # said once
    live = {"w": torch.ones(3), "nested": [torch.zeros(2)]}
    copy = snapshot(live)
    live["w"].add_(1)
    live["nested"][0].add_(5)
    assert copy["w"].tolist() == [1.0, 1.0, 1.0] and copy["nested"][0].tolist() == [0.0, 0.0]
