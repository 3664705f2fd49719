"""The per-class gradient ratio (engine/grad_ratio.py) that the report draws and seesaw balances.

Expected values come from first principles: for cross-entropy with mean reduction the
gradient on the logits is (softmax - one-hot) / N, so class c's accumulated positive
gradient is the sum of (1 - p_c) over its own images and its negative gradient the sum of
p_c over everyone else's; N cancels in the ratio. Checked on the class, through one
training step of the real trainer (the ratio in log.jsonl), and on the report's figure.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import common_args, split_args
from tinlt.cli import main
from tinlt.engine.grad_ratio import GradientRatio


def _by_hand(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    C = probs.shape[1]
    pos, neg = np.zeros(C), np.zeros(C)
    for p, y in zip(probs, targets):
        for c in range(C):
            if c == y:
                pos[c] += abs(p[c] - 1.0)
            else:
                neg[c] += abs(p[c])
    return pos, neg


def test_update_splits_each_logits_gradient_by_whose_image_it_is():
    grad = torch.tensor([[0.5, -2.0, 1.0], [-0.25, 0.75, 3.0], [4.0, 0.0, -1.5]])
    targets = torch.tensor([1, 2, 1])
    g = GradientRatio(3)
    g.update(grad, targets)
    g.update(grad[:1], targets[:1])  # accumulates across calls
    # by hand: |grad| on the true class goes to pos, on every other class to neg
    pos = np.array([0.0, 2.0 + 0.0 + 2.0, 3.0])
    neg = np.array([0.5 + 0.25 + 4.0 + 0.5, 0.75, 1.0 + 1.5 + 1.0])
    np.testing.assert_allclose(g.pos, pos)
    np.testing.assert_allclose(g.neg, neg)
    np.testing.assert_allclose(g.ratio(), pos / neg)
    restored = GradientRatio(3)
    restored.load_state_dict(g.state_dict())
    np.testing.assert_allclose(restored.ratio(), g.ratio())


def test_cross_entropy_ratio_equals_the_softmax_formula():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(12, 4)), requires_grad=True)
    targets = torch.tensor([0] * 8 + [1] * 2 + [2, 3])
    torch.nn.functional.cross_entropy(logits, targets).backward()
    g = GradientRatio(4)
    g.update(logits.grad, targets)
    pos, neg = _by_hand(torch.softmax(logits, 1).detach().numpy(), targets.numpy())
    np.testing.assert_allclose(g.ratio(), pos / neg, rtol=1e-6)  # accumulated from float32 gradients


def test_the_trainer_logs_the_ratio_of_its_own_step(dataset, tmp_path):
    """One optimizer step over the whole training split (batch = all images, lr so small the
    weights do not move): log.jsonl's ratio equals the formula on the final model's logits."""
    from tinlt.engine.inference import load_model
    from tinlt.engine.loaders import eval_transform

    out = tmp_path / "run"
    argv = ["train", *common_args(out, epochs=1), *split_args("folder", dataset), "loss.name=ce", "data.augment=none",
            "optim.batch_size=64", "optim.lr=1e-30", "train.max_steps=1", "model.learn_logit_scale=false"]
    assert main(argv) == 0
    logged = np.asarray(json.loads((out / "log.jsonl").read_text().splitlines()[-1])["grad_ratio"])
    model, cfg, ckpt = load_model(out / "last.pt")
    tf = eval_transform(model, cfg, views=False)
    classes = list(ckpt["classnames"])
    paths = sorted((dataset / "train").rglob("*.png"))
    targets = np.array([classes.index(p.parent.name.replace("_", " ")) for p in paths])
    with torch.no_grad():
        logits = model(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]))
    pos, neg = _by_hand(torch.softmax(logits.double(), 1).numpy(), targets)
    np.testing.assert_allclose(logged, pos / neg, rtol=1e-4)
    assert len(set(np.round(logged, 3))) == len(logged)  # distinct per class: a mix-up of classes would show


def test_the_report_draws_the_ratio_head_classes_first(dataset, tmp_path):
    from tinlt.report import fig_grad_ratio, load_run

    out = tmp_path / "run"
    assert main(["train", *common_args(out, epochs=1), *split_args("folder", dataset)]) == 0
    ratio = np.asarray(json.loads((out / "log.jsonl").read_text().splitlines()[-1])["grad_ratio"])
    run = load_run(out)
    fig = fig_grad_ratio(run, [])
    bars = [p.get_height() for p in fig.axes[0].patches]
    order = np.argsort(-np.asarray(run.train_counts), kind="stable")
    assert bars == pytest.approx(ratio[order].tolist(), rel=1e-9)  # pos / neg, not its inverse
    assert (ratio > 0).all() and np.abs(np.log(ratio)).max() > 0.1  # far enough from 1 that an inversion shows
