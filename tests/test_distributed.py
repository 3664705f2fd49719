"""DDP on CPU: 2 gloo processes under torchrun vs 1 process with the same global batch.

Same samples per optimizer step (EpochOrder shards one global order by rank), gradients
averaged by DDP, so weights and metrics must agree up to float summation order; the
evaluation must count every test image exactly once (no DistributedSampler padding).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import common_args, split_args

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_processes_match_one(dataset, tmp_path):
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    # 16 train images, global batch 4 -> 4 steps per epoch; seesaw with online counts summed across ranks
    # SGD, not Adam: Adam turns float noise on exactly-zero gradients (e.g. attention key biases)
    # into full lr-sized steps, which would hide real differences behind summation order
    base = [*split_args("folder", dataset), "optim.epochs=2", "loss.name=seesaw", "loss.online=true",
            "data.augment=none", "optim.name=sgd", "optim.lr=0.05"]
    one, two = tmp_path / "one", tmp_path / "two"
    args_one = [a for a in common_args(one) if not a.startswith("optim.batch_size")] + ["optim.batch_size=4"]
    args_two = [a for a in common_args(two) if not a.startswith("optim.batch_size")] + ["optim.batch_size=2"]
    r1 = subprocess.run([sys.executable, "-m", "tinlt", "train", *args_one, *base],
                        env=_env(), capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "tinlt", "train",
                         *args_two, *base], env=_env(), capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]

    run2 = json.loads((two / "run.json").read_text())
    assert run2["world_size"] == 2 and run2["per_device_batch"] == 2 and run2["global_batch"] == 4

    a = torch.load(one / "last.pt", weights_only=False)
    b = torch.load(two / "last.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # seesaw's online counts: every rank saw its shard, the sum is the whole epoch twice
    cum_a, cum_b = a["loss"]["cum_samples"], b["loss"]["cum_samples"]
    assert torch.equal(cum_a, cum_b)
    assert cum_a.sum().item() == 2 * 16

    # log.jsonl: each epoch's loss and gradient ratios are the whole global batch's, summed over ranks,
    # so they equal one process's (rank 0's shard alone gave other numbers)
    log1 = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
    log2 = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert len(log1) == len(log2) == 2
    for r1, r2 in zip(log1, log2):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4)
        np.testing.assert_allclose(r2["grad_ratio"], r1["grad_ratio"], rtol=1e-4)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    # 9 test images, an odd number: a padded sampler would count one twice
    assert m2["num_samples"] == 9 and np.array(m2["confusion"]).sum() == 9
    assert sorted(m2["predictions"]["index"]) == list(range(9))
    assert m1["confusion"] == m2["confusion"]
    assert m1["overall"] == pytest.approx(m2["overall"])


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
@pytest.mark.parametrize("counts, sampler, loss, port", [
    ((5, 3, 1), "instance", "seesaw", 29537),       # 9 images: the last batch holds 1, rank 1 only a stand-in
    ((6, 4, 1), "class_balanced", "ce", 29538),     # 11 images: the last batch of 3 splits 2 : 1
])
def test_two_processes_match_one_when_the_data_does_not_divide(tmp_path, counts, sampler, loss, port):
    """One process trains on every image of each epoch; two must too (a remainder that sat out
    lost 1 of 9 images per epoch and a step). Each rank's share of the short last batch is
    weighed by its real samples, and a rank holding only a stand-in still joins the all-reduces
    (seesaw's online counts, DDP's gradients): weights and logged losses equal one process's."""
    from conftest import write_class_folders

    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    names = ["red", "green", "blue"]
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rng = np.random.default_rng(3)
    write_class_folders(tmp_path / "train", dict(zip(names, counts)), colours, rng=rng, size=(12, 12))
    write_class_folders(tmp_path / "test", dict(zip(names, (2, 2, 1))), colours, rng=rng, size=(12, 12))
    n = sum(counts)
    base = [*split_args("folder", tmp_path), "optim.epochs=2", f"loss.name={loss}", f"data.sampler={sampler}",
            "data.augment=none", "optim.name=sgd", "optim.lr=0.05", *(["loss.online=true"] if loss == "seesaw" else [])]
    one, two = tmp_path / "one", tmp_path / "two"
    args_one = [a for a in common_args(one) if not a.startswith("optim.batch_size")] + ["optim.batch_size=4"]
    args_two = [a for a in common_args(two) if not a.startswith("optim.batch_size")] + ["optim.batch_size=2"]
    r1 = subprocess.run([sys.executable, "-m", "tinlt", "train", *args_one, *base],
                        env=_env(), capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "tinlt", "train",
                         *args_two, *base], env=_env(), capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = torch.load(one / "last.pt", weights_only=False)
    b = torch.load(two / "last.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 2 * -(-n // 4)  # ceil(n / 4) steps per epoch
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    if loss == "seesaw":  # every image counted once per epoch, none twice (stand-ins), none lost
        assert torch.equal(a["loss"]["cum_samples"], b["loss"]["cum_samples"])
        assert b["loss"]["cum_samples"].sum().item() == 2 * n
    log1 = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
    log2 = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    for e1, e2 in zip(log1, log2, strict=True):
        assert e2["loss"] == pytest.approx(e1["loss"], rel=1e-4)
        np.testing.assert_allclose(e2["grad_ratio"], e1["grad_ratio"], rtol=1e-4)


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_processes_with_100_classes_reach_metrics_and_report(tmp_path):
    """Rank 0 keeps per-class probabilities for predictions.csv (up to 100 classes); every rank
    must join the same gathers, or the final test hangs up ("Connection closed by peer")."""
    from conftest import write_class_folders

    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    names = [f"c{i:03d}" for i in range(100)]
    rng = np.random.default_rng(0)
    colours = {n: tuple(int(v) for v in rng.integers(0, 256, 3)) for n in names}
    write_class_folders(tmp_path / "train", {n: 1 + (i < 10) for i, n in enumerate(names)}, colours, rng=rng, size=(12, 12))
    write_class_folders(tmp_path / "test", {n: 1 + (i == 0) for i, n in enumerate(names)}, colours, rng=rng, size=(12, 12))
    out = tmp_path / "run"
    args = [a for a in common_args(out, epochs=1) if a != "train.report=false"]
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29534", "-m", "tinlt", "train", *args,
                        *split_args("folder", tmp_path), "data.augment=none", "train.report=true"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_samples"] == 101 and sorted(m["predictions"]["index"]) == list(range(101))
    import csv as csv_mod

    rows = list(csv_mod.DictReader(open(out / "predictions.csv", newline="")))
    assert len(rows) == 101 and {f"p_{n}" for n in names} <= set(rows[0])
    # each row's probabilities are its own image's: a distribution whose argmax is the predicted class
    for row in rows:
        p = np.array([float(row[f"p_{n}"]) for n in names])
        assert p.sum() == pytest.approx(1.0, abs=1e-3) and names[int(p.argmax())] == row["predicted"]
    assert (out / "report.html").is_file() or any(out.glob("report*"))

    # resumed in one process, the shards, steps and schedule would change: refused in one line
    r1 = subprocess.run([sys.executable, "-m", "tinlt", "train", "--resume", str(out / "last.pt"), "optim.epochs=2"],
                        env=_env(), capture_output=True, text=True, timeout=600)
    assert r1.returncode == 2 and "Traceback" not in r1.stderr, r1.stderr[-2000:]
    assert "2 process(es) at global batch 8" in r1.stderr and "1 at global batch 4" in r1.stderr
    assert "torchrun --nproc_per_node 2 -m tinlt train --resume" in r1.stderr


def test_the_resume_hint_is_the_command_that_ran():
    from tinlt.engine.resume import resume_command

    assert resume_command("r/last.pt", {}) == "tinlt train --resume r/last.pt"
    two = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0"}
    assert resume_command("r/last.pt", two) == "torchrun --nproc_per_node 2 -m tinlt train --resume r/last.pt"
    assert resume_command("r/last.pt", {**two, "RANK": "1"}) is None  # said once, by rank 0
    nodes = {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "RANK": "0"}
    assert resume_command("p", nodes) == "torchrun --nnodes 2 --nproc_per_node 4 -m tinlt train --resume p"


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_accumulation_under_two_processes_matches_one_big_batch(dataset, tmp_path):
    """2 processes x 1 image x 2 accumulation micro-batches = 1 process x 4 images: the micro-batch
    that does not step keeps its gradients local (no_sync) and the stepping one all-reduces both.
    A wrong choice of which micro-batch syncs leaves the ranks' weights apart, and this fails."""
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    base = [*split_args("folder", dataset), "optim.epochs=1", "loss.name=ce", "data.augment=none",
            "optim.name=sgd", "optim.lr=0.05"]
    one, two = tmp_path / "one", tmp_path / "two"
    args_one = [a for a in common_args(one, epochs=1) if not a.startswith("optim.batch_size")] + ["optim.batch_size=4"]
    args_two = [a for a in common_args(two, epochs=1) if not a.startswith("optim.batch_size")] + [
        "optim.batch_size=1", "optim.accum_steps=2"]
    r1 = subprocess.run([sys.executable, "-m", "tinlt", "train", *args_one, *base],
                        env=_env(), capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29535", "-m", "tinlt", "train",
                         *args_two, *base], env=_env(), capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = torch.load(one / "last.pt", weights_only=False)
    b = torch.load(two / "last.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_no_sync_unless_keeps_a_non_stepping_micro_batch_local(tmp_path):
    """One all-reduce per optimizer step, counted with a DDP communication hook (1-process gloo)."""
    import torch.distributed as dist

    from tinlt.engine.device import no_sync_unless

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        calls = []

        def hook(state, bucket):
            calls.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, hook)
        for step_now in (False, True, False, True):
            with no_sync_unless(step_now, ddp):
                ddp(torch.ones(1, 3)).sum().backward()
        assert len(calls) == 2
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_class_prompts_split_across_ranks_are_exact(tmp_path):
    """Each rank encodes its block of the prompts; the gathered features equal one rank's, and the
    text tower's gradients summed over ranks (what DDP averages) equal the unsharded sum, for 37
    classes x 2 templates in several length groups (blocks of unequal size, padded)."""
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    out = tmp_path / "shard.json"
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_prompt_shard.py"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29536", str(bench), "--classes", "37",
                        "--check-only", "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["feature_max_abs_diff"] <= 1e-6 and rep["grad_sum_max_rel_diff"] <= 1e-5
    rows = rep["rows_encoded_by_rank0"]
    assert rows["unsharded"] == 74 and rows["sharded"] <= 74 // 2 + 4  # half, give or take a block's rounding
    # every length group rides in one gather and one gradient all-reduce (a pair per group cost 0.63x -> 0.54x)
    assert rep["length_groups"] >= 2 and rep["collectives_per_step"] == {"all_gather": 1, "all_reduce": 1}
