"""The benchmark scripts still run, with tiny random models, and their exactness checks hold.

Their timings are not asserted here (they belong to full-size runs on a quiet machine,
docs/speed.md); what is asserted is what must hold at any size: truncated text gives the
full context's logits, cached features give the uncached losses, TIN with its attention
gate at zero gives plain CLIP's logits. gpu_train.py otherwise only runs where a GPU is lent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, ok: bool = True) -> tuple[int, list[str], list[str]]:
    """Exit status, stdout lines and stderr lines (the random-weights warnings go to stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    if ok:
        assert proc.returncode == 0, proc.stderr[-2000:]
    def lines(text):
        return [line for line in text.splitlines() if line.strip()]

    return proc.returncode, lines(proc.stdout), lines(proc.stderr)


def _number(lines: list[str], pattern: str) -> float:
    found = [m for line in lines if (m := re.search(pattern, line))]
    assert found, f"no line matches {pattern!r}"
    return float(found[-1].group(1))


def test_bench_truncation_tiny():
    _, lines, _ = _run("bench_truncation.py", "--model", "tiny-vit", "--classes", "20", "--batch", "4",
                    "--steps", "1", "--warmup", "0", "--variants", "truncated,full")
    assert _number(lines, r"max \|logit difference\| vs full = (\S+)") <= 1e-5
    assert _number(lines, r"^full\s+(\d+)\s") == 20 * 77  # every prompt padded to CLIP's context
    assert _number(lines, r"^truncated\s+(\d+)\s") < 20 * 77
    assert lines[-1].startswith("truncated: ") and "less CPU time per step" in lines[-1]


def test_bench_cache_tiny():
    _, lines, _ = _run("bench_cache.py", "--model", "tiny-vit", "--images", "8", "--epochs", "1", "--batch", "4")
    for kind in ("split", "embedding"):
        assert _number(lines, rf"^{kind}\s+\S+\s+\S+\s+\S+x\s+\S+x\s+\S+\s+(\S+)$") <= 1e-6
    assert lines[-1].startswith("epoch speed-up from the feature cache")


def test_bench_pipeline_tiny(tmp_path):
    out = tmp_path / "pipeline.json"
    _, lines, _ = _run("bench_pipeline.py", "--images", "4", "--rounds", "1", "--size", "32", "--width", "90",
                       "--height", "70", "--json", str(out))
    import json

    got = json.loads(out.read_text())
    rates = got["rates"]
    assert set(rates) == {"decode", "eval", "paper_full", "paper", "light", "light_float", "cache_read", "paper_cached"}
    assert all(r["images_per_s_cpu"] > 0 for r in rates.values()) and rates["light"]["vs_light"] == 1.0
    assert got["cache_same"] is True and got["cache_equal"] is True  # what the cache must hold at any size
    assert lines[-2].startswith("paper vs light_float: ") and lines[-1].startswith("cache_read vs decode: ")


def test_gpu_train_trainer_mode_runs_on_cpu():
    """The real trainer with a timed loader: every timed step is counted and the shares are sane."""
    _, lines, _ = _run("gpu_train.py", "--trainer", "--device", "cpu", "--model", "tiny-vit", "--image-size", "32",
                       "--batch", "8", "--steps", "3", "--warmup", "1", "--workers", "1", "--amp", "off",
                       "--width", "120", "--height", "90")
    import json

    r = json.loads(lines[-1])
    assert r["timed_steps"] == 3 and 0.0 <= r["data_wait_share"] < 1.0 and r["images_per_s"] > 0


def test_bench_inference_tiny():
    _, lines, _ = _run("bench_inference.py", "--model", "tiny-vit", "--batch", "4", "--classes", "10",
                    "--rounds", "1", "--iters", "1")
    assert _number(lines, r"gate = 0: max \|TIN - CLIP logit\| = (\S+)") <= 1e-5
    assert lines[-1].startswith("visual attention overhead at inference")


def test_gpu_train_script_on_cpu_and_without_a_gpu():
    _, lines, _ = _run("gpu_train.py", "--device", "cpu", "--model", "tiny-vit", "--classes", "10", "--batch", "4",
                    "--image-size", "32", "--steps", "1", "--warmup", "1", "--amp", "off",
                    "--variants", "eager/truncated,eager/full")
    assert _number(lines, r"^eager/full\s+tokens\s+(\d+)") == 10 * 77
    assert _number(lines, r"^eager/truncated\s+tokens\s+(\d+)") < 10 * 77
    # same seed, same data: the two contexts train to the same loss
    assert _number(lines, r"^eager/truncated.*loss (\S+)$") == pytest.approx(
        _number(lines, r"^eager/full.*loss (\S+)$"), abs=1e-4)
    assert lines[-1].startswith("eager: truncation")
    if not torch.cuda.is_available():
        rc, out, err = _run("gpu_train.py", ok=False)
        assert rc == 1 and not out and err == [
            "gpu_train.py: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was measured"]


def test_bench_tuning_tiny():
    _, lines, _ = _run("bench_tuning.py", "--model", "tiny-rn", "--batch", "4", "--steps", "1", "--warmup", "0",
                       "--images", "12", "--blocks", "2", "--epochs", "2", "--methods", "full,lora,last_k,frozen")
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.split() and ln.split()[0] in ("full", "frozen", "last_k")}
    assert rows["frozen"][1] == "0" and rows["full"][2] == "100%"  # trainable count and share columns
    for name in ("last_k", "lora"):  # the cached prefix gives the uncached losses
        assert _number(lines, rf"^{name}\s+uncached.*max \|loss diff\| (\S+)") <= 1e-5
    assert lines[-1].startswith("epoch speed-up from the frozen-prefix cache")
