"""Speed paths of the trainer that must not change results: the class-text cache, exact
text truncation, torch.compile, persistent DataLoader workers and channels-last."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from tinlt.config import load_config
from tinlt.engine.device import is_convolutional
from tinlt.engine.trainer import train
from tinlt.models.towers.clip_text import OpenCLIPTextTower
from tinlt.models.factory import create_model

CLASSES = ["red", "green", "blue"]
EPOCHS, STEPS_PER_EPOCH = 2, 3  # 12 training images, batch 4


@pytest.fixture(scope="module")
def folder(rgb_folder):
    return rgb_folder  # conftest: 4 train / 2 test images per class


def _cfg(folder, out, *extra):
    return load_config(None, [
        *TINY, "model.freeze_image=true", "data.augment=paper", "optim.batch_size=4", "optim.lr=1e-2", "optim.name=adamw",
        f"optim.epochs={EPOCHS}", "train.eval_batch_size=8", "train.quiet=true", f"train.output_dir={out}",
        "data.train.kind=folder", f"data.train.path={folder / 'train'}",
        "data.test.kind=folder", f"data.test.path={folder / 'test'}", *extra,
    ])


def _count_text(mp: pytest.MonkeyPatch) -> list:
    calls: list = []
    original = OpenCLIPTextTower.forward

    def counted(self, tokens):
        calls.append(tuple(tokens.shape))
        return original(self, tokens)

    mp.setattr(OpenCLIPTextTower, "forward", counted)
    return calls


def _compile_aot_eager(mp: pytest.MonkeyPatch) -> list:
    """torch.compile as the trainer calls it, but with the aot_eager backend (dynamo traces
    the forward and AOTAutograd the backward, no C++ compiler needed)."""
    compiled: list = []
    real = torch.compile

    def compile_(model, **kwargs):
        compiled.append(type(model).__name__)
        return real(model, backend="aot_eager", **kwargs)

    mp.setattr(torch, "compile", compile_)
    return compiled


RUNS = {
    "frozen": ("model.freeze_text=true",),
    "trains": ("model.freeze_text=false",),
    "full_context": ("model.freeze_text=false", "model.truncate_text=false"),
    "workers": ("model.freeze_text=true", "data.num_workers=2"),
    "compiled": ("model.freeze_text=true", "train.compile=true"),
}


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tinlt.report.build_report", lambda out: Path(out))  # not under test; seconds per run
        for name, extra in RUNS.items():
            with pytest.MonkeyPatch.context() as run_mp:
                calls = _count_text(run_mp)
                compiled = _compile_aot_eager(run_mp)
                metrics = train(_cfg(folder, base / name, *extra))
            log = [json.loads(line) for line in (base / name / "log.jsonl").read_text().splitlines()]
            weights = torch.load(base / name / "last.pt", weights_only=False)["model"]
            results[name] = {"metrics": metrics, "calls": calls, "log": log, "weights": weights, "compiled": compiled}
    return results


def test_frozen_text_tower_runs_once_per_run(runs):
    # once for all training steps and per-epoch evaluations, once more after best.pt is loaded
    assert len(runs["frozen"]["calls"]) == 2
    # a training text tower runs every step, plus once per evaluation (2 epochs + final test)
    assert len(runs["trains"]["calls"]) == EPOCHS * STEPS_PER_EPOCH + EPOCHS + 1


def test_truncated_and_full_context_train_alike(runs):
    short, full = runs["trains"], runs["full_context"]
    assert max(c[1] for c in short["calls"]) < 77  # prompt tokens cut after the longest prompt's EOT
    assert {c[1] for c in full["calls"]} == {77}
    for a, b in zip(short["log"], full["log"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert short["metrics"]["predictions"]["pred"] == full["metrics"]["predictions"]["pred"]
    np.testing.assert_allclose(short["metrics"]["predictions"]["confidence"],
                               full["metrics"]["predictions"]["confidence"], atol=1e-5)


def test_persistent_workers_keep_the_exact_sample_order_and_augmentation(runs):
    # random crops/flips per sample seed: 2 persistent workers reproduce the in-process run bit for bit
    a, b = runs["frozen"]["weights"], runs["workers"]["weights"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_compiled_training_matches_eager(runs):
    eager, compiled = runs["frozen"], runs["compiled"]
    assert compiled["compiled"] == ["TIN"] and eager["compiled"] == []
    assert len(compiled["calls"]) == 2  # the text cache stays outside the graph and still hits
    for a, b in zip(eager["log"], compiled["log"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    np.testing.assert_allclose(compiled["metrics"]["predictions"]["confidence"],
                               eager["metrics"]["predictions"]["confidence"], atol=1e-5)


def test_compiled_forward_with_training_text_tower_matches_eager():
    torch.manual_seed(0)
    model = create_model({"name": "tiny-vit"}, CLASSES, image_size=32).train()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager")
    grads = []
    for fn in (model, compiled):
        model.zero_grad(set_to_none=True)
        logits = fn(x)
        logits.logsumexp(-1).sum().backward()
        grads.append((logits.detach(), model.text_tower.transformer.resblocks[0].mlp.c_fc.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor builds C++ kernels: needs a C++ compiler (apt-get install g++)")
def test_inductor_compiles_the_model():
    """About a minute on a 2-core CPU (gcc builds the kernels). A compiler that is present but
    fails is a failure here, never a skip."""
    torch.manual_seed(0)
    model = create_model({"name": "tiny-vit", "freeze_text": True}, CLASSES, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)


def test_channels_last_only_for_convolutional_towers():
    rn = create_model({"name": "tiny-rn", "freeze_text": True}, CLASSES).eval()
    vit = create_model({"name": "tiny-vit", "freeze_text": True}, CLASSES, image_size=32)
    assert is_convolutional(rn.image_tower) and not is_convolutional(vit.image_tower)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = rn(x)
        rn.to(memory_format=torch.channels_last)  # what the trainer does on CUDA
        after = rn(x.contiguous(memory_format=torch.channels_last))
    params_4d = [p for p in rn.parameters() if p.ndim == 4]
    assert params_4d and all(p.is_contiguous(memory_format=torch.channels_last) for p in params_4d)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_fp16_overflow_lowers_the_loss_scale():
    from tinlt.engine.optim import back_off

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, backoff_factor=0.5)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    (w * float("inf")).sum().backward()
    back_off(scaler, torch.tensor(float("inf")), opt)  # a first-batch overflow: the scale exists already
    assert scaler.get_scale() == 512.0 and w.grad is None  # the overflowed step's gradients are dropped
    back_off(scaler, torch.tensor(float("nan")), opt)
    assert scaler.get_scale() == 256.0


def test_compiler_failure_is_one_line(folder, tmp_path, monkeypatch):
    from tinlt.errors import TinltError

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler found\n(long details)")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=broken_backend, **kw))
    with pytest.raises(TinltError) as err:
        train(_cfg(folder, tmp_path / "run", "train.compile=true"))
    msg = str(err.value)
    assert msg.startswith("train.compile: torch.compile failed") and "train.compile=false" in msg
    assert "\n" not in msg


def test_cuda_speed_settings_apply_on_cuda_only():
    from tinlt.engine.device import cuda_speed_settings

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        cuda_speed_settings(torch.device("cpu"), not before[0], not before[2])
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                torch.backends.cudnn.benchmark) == before
        cuda_speed_settings(torch.device("cuda"), True, True)  # the flags need no GPU to be set
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
        cuda_speed_settings(torch.device("cuda"), False, False)
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.benchmark)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


def test_the_trainers_eval_loader_keeps_its_workers_between_epochs(rgb_folder):
    from tinlt.config import load_config
    from tinlt.data.sources import load_folder
    from tinlt.engine.loaders import eval_loader

    cfg = load_config(None, ["data.num_workers=1", "train.eval_batch_size=2"])
    samples = load_folder(rgb_folder / "test")
    assert eval_loader(samples, None, cfg, persistent=True).persistent_workers
    assert not eval_loader(samples, None, cfg).persistent_workers  # a one-off pass: no workers left behind
    cfg0 = load_config(None, ["data.num_workers=0"])
    assert not eval_loader(samples, None, cfg0, persistent=True).persistent_workers  # nothing to keep


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        index, _seed = key
        return torch.tensor(index)


@pytest.mark.parametrize("compiled,n,sizes", [
    (False, 10, [4, 4, 2]),  # eager: every sample every epoch
    (True, 10, [4, 4]),      # compiled: the short batch would recompile the model each epoch
    (True, 3, [3]),          # fewer samples than a batch: nothing to drop
])
def test_compiled_runs_drop_the_short_batch_and_count_steps_the_same(compiled, n, sizes):
    from tinlt.config import load_config
    from tinlt.engine.loaders import train_loader
    from tinlt.engine.optim import step_counts
    from tinlt.engine.sampling import EpochOrder

    cfg = load_config(overrides=["optim.batch_size=4", f"train.compile={str(compiled).lower()}", "data.num_workers=0"])
    order = EpochOrder(n, seed=0)
    got = [len(b) for b in train_loader(_Indices(n), order, cfg, torch.device("cpu"))]
    assert got == sizes
    assert step_counts(cfg, n)[0] == len(sizes)


def test_fused_optimizers_only_where_every_tensor_is_on_cuda():
    from tinlt.engine.optim import fused_available

    cpu, meta = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="meta"))
    assert not fused_available([{"params": [cpu]}])
    assert not fused_available([{"params": [meta]}])
    if torch.cuda.is_available():  # where a GPU is lent: the optimizer the trainer builds is fused
        gpu = torch.nn.Parameter(torch.zeros(2, device="cuda"))
        assert fused_available([{"params": [gpu]}]) and not fused_available([{"params": [gpu, cpu]}])
