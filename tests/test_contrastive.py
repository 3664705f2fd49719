"""The image-text contrastive loss against a direct computation with explicit loops."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from tinlt.config import load_config
from tinlt.errors import TinltError
from tinlt.losses import (
    ContrastiveLoss,
    CrossEntropyLoss,
    LDAMLoss,
    SeesawLoss,
    WithContrastive,
    build_loss,
)


def _loss(**keys) -> dict:
    """A loss section as a dict (keys not given take their registered defaults)."""
    return {"name": "seesaw", **keys}


def reference(logits: list[list[float]], targets: list[int]) -> float:
    """Loops over images and prompts, plain floats.

    image -> text: each image against the prompts of the classes present in the batch.
    text -> image: each present prompt against all images; its positives are the images
    of its class, and its loss is the mean of their -log-probabilities.
    """
    n_img = len(logits)
    present = sorted(set(targets))
    i2t = 0.0
    for b in range(n_img):
        denom = sum(math.exp(logits[b][c]) for c in present)
        i2t += -math.log(math.exp(logits[b][targets[b]]) / denom)
    i2t /= n_img
    t2i = 0.0
    for c in present:
        denom = sum(math.exp(logits[b][c]) for b in range(n_img))
        positives = [b for b in range(n_img) if targets[b] == c]
        t2i += sum(-math.log(math.exp(logits[b][c]) / denom) for b in positives) / len(positives)
    t2i /= len(present)
    return 0.5 * (i2t + t2i)


def _random_batch(seed: int, n_img: int = 7, n_cls: int = 6):
    rng = random.Random(seed)
    logits = [[rng.uniform(-3, 3) for _ in range(n_cls)] for _ in range(n_img)]
    # repeated classes (several positives per prompt) and classes absent from the batch
    targets = [rng.choice([c for c in (0, 1, 1, 3, 4) if c < n_cls - 1]) for _ in range(n_img)]
    return logits, targets


@pytest.mark.parametrize("seed", range(5))
def test_matches_direct_computation(seed):
    logits, targets = _random_batch(seed)
    got = ContrastiveLoss()(torch.tensor(logits), torch.tensor(targets))
    assert got.item() == pytest.approx(reference(logits, targets), rel=1e-5)


def test_one_image_per_class_is_clip_loss():
    """With distinct classes the loss is CLIP's symmetric cross-entropy on the B x B image-prompt matrix."""
    torch.manual_seed(0)
    logits = torch.randn(5, 8) * 3
    targets = torch.tensor([6, 0, 3, 7, 2])
    sim = logits[:, targets]  # sim[b, k] = score of image b with the prompt of image k
    labels = torch.arange(5)
    clip = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels))
    assert ContrastiveLoss()(logits, targets).item() == pytest.approx(clip.item(), rel=1e-6)


def test_absent_classes_take_no_part():
    logits, targets = _random_batch(3)
    z = torch.tensor(logits, requires_grad=True)
    loss = ContrastiveLoss()(z, torch.tensor(targets))
    loss.backward()
    absent = [c for c in range(6) if c not in targets]
    assert absent and torch.all(z.grad[:, absent] == 0)
    moved = torch.tensor(logits)
    moved[:, absent] += 50.0
    assert ContrastiveLoss()(moved, torch.tensor(targets)).item() == pytest.approx(loss.item(), rel=1e-6)


def test_gradient_matches_finite_differences():
    logits, targets = _random_batch(1, n_img=4, n_cls=4)
    z = torch.tensor(logits, requires_grad=True)
    ContrastiveLoss()(z, torch.tensor(targets)).backward()
    h = 1e-4
    for b in range(4):
        for c in range(4):
            up = [row[:] for row in logits]
            dn = [row[:] for row in logits]
            up[b][c] += h
            dn[b][c] -= h
            fd = (reference(up, targets) - reference(dn, targets)) / (2 * h)
            assert z.grad[b, c].item() == pytest.approx(fd, abs=2e-3)


def test_extreme_and_bf16_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [1e4, 1e4, -1e4]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = ContrastiveLoss()(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and loss.item() > 1e3
    logits, targets = _random_batch(0)
    assert torch.isfinite(ContrastiveLoss()(torch.tensor(logits, dtype=torch.bfloat16), torch.tensor(targets)))


def test_build_loss_alone_and_added_with_a_weight():
    logits, targets = _random_batch(2)
    z, y = torch.tensor(logits), torch.tensor(targets)
    counts = [50, 20, 10, 5, 2, 1]
    alone = build_loss(_loss(name="contrastive"), counts)
    assert type(alone) is ContrastiveLoss

    mixed = build_loss(_loss(name="ce", contrastive_weight=0.25), counts)
    assert isinstance(mixed, WithContrastive)
    ce = sum(-math.log(math.exp(r[t]) / sum(math.exp(v) for v in r)) for r, t in zip(logits, targets)) / len(logits)
    assert mixed(z, y).item() == pytest.approx(ce + 0.25 * reference(logits, targets), rel=1e-5)

    # zero weight: the base loss object itself, unchanged
    assert type(build_loss(_loss(name="ce"), counts)) is CrossEntropyLoss


def test_wrapped_loss_keeps_epoch_hook_and_state():
    counts = [50, 20, 10, 5, 2, 1]
    logits, targets = _random_batch(4)
    z, y = torch.tensor(logits), torch.tensor(targets)
    ldam = build_loss(_loss(name="ldam", drw_epoch=1, contrastive_weight=1.0), counts)
    before = ldam(z, y).item()
    ldam.set_epoch(1)  # deferred re-weighting switches on inside the wrapper
    assert isinstance(ldam.base, LDAMLoss) and ldam.base.reweight
    assert ldam(z, y).item() != pytest.approx(before)

    seesaw = build_loss(_loss(name="seesaw", online=True, contrastive_weight=0.5), counts)
    seesaw.train()
    seesaw(z, y)
    state = seesaw.state_dict()
    assert state["base.cum_samples"].tolist() == [targets.count(c) for c in range(6)]
    fresh = build_loss(_loss(name="seesaw", online=True, contrastive_weight=0.5), counts)
    fresh.load_state_dict(state)
    assert isinstance(fresh.base, SeesawLoss) and fresh.base.cum_samples.tolist() == state["base.cum_samples"].tolist()


def test_config_checks_are_one_line_errors():
    with pytest.raises(TinltError, match="needs model.head=text"):
        load_config(overrides=["model.head=linear", "loss.name=contrastive"])
    with pytest.raises(TinltError, match="needs model.head=text"):
        load_config(overrides=["model.head=linear", "loss.contrastive_weight=0.5"])
    with pytest.raises(TinltError, match="loss.contrastive_weight"):
        load_config(overrides=["loss.name=contrastive", "loss.contrastive_weight=0.5"])
    with pytest.raises(TinltError, match="loss.contrastive_weight"):
        load_config(overrides=["loss.contrastive_weight=-1"])
    cfg = load_config(overrides=["loss.name=ce", "loss.contrastive_weight=0.5"])
    assert cfg.loss.contrastive_weight == 0.5
