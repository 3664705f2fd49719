"""Losses against direct formulas written here with explicit loops over plain floats."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch

from tinlt.errors import TinltError
from tinlt.losses import (
    BalancedSoftmaxLoss,
    ClassBalancedLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    SeesawLoss,
    build_loss,
    class_balanced_weights,
    logit_adjust,
    loss_names,
)


def _loss(**keys) -> dict:
    """A loss section as a dict (keys not given take their registered defaults)."""
    return {"name": "seesaw", **keys}


COUNTS = [100, 200, 5, 1]
LOGITS = [
    [2.0, 0.5, 1.0, -1.0],
    [0.3, 1.2, 2.5, 0.0],
    [-0.5, 0.1, 0.2, 1.5],
    [1.0, 1.0, 1.0, 1.0],
    [0.0, 3.0, -2.0, 0.7],
]
TARGETS = [0, 1, 2, 3, 0]


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _ce(row, y):
    m = max(row)
    return -(row[y] - m - math.log(sum(math.exp(v - m) for v in row)))


def seesaw_reference(logits, targets, counts, p, q, eps=1e-2):
    """Probability-space seesaw: -log(e^{z_i} / (e^{z_i} + sum_{j != i} M_ij C_ij e^{z_j}))."""
    total = 0.0
    for row, i in zip(logits, targets):
        sigma = _softmax(row)
        denom = math.exp(row[i])
        for j, zj in enumerate(row):
            if j == i:
                continue
            m = (counts[j] / counts[i]) ** p if counts[i] > counts[j] else 1.0
            c = 1.0
            if q > 0:
                s_i = max(sigma[i], eps)
                c = (sigma[j] / s_i) ** q if sigma[j] > s_i else 1.0
            denom += m * c * math.exp(zj)
        total += -math.log(math.exp(row[i]) / denom)
    return total / len(targets)


def _t(logits=LOGITS, targets=TARGETS):
    return torch.tensor(logits, dtype=torch.float32, requires_grad=True), torch.tensor(targets)


@pytest.mark.parametrize("p,q", [(0.7, 0.0), (0.8, 2.0), (0.0, 1.0), (1.5, 0.5)])
def test_seesaw_matches_probability_space_formula(p, q):
    z, y = _t()
    got = SeesawLoss(COUNTS, p=p, q=q)(z, y).item()
    assert got == pytest.approx(seesaw_reference(LOGITS, TARGETS, COUNTS, p, q), rel=1e-5)


def test_seesaw_compensation_is_active_in_the_test_inputs():
    # sample 1 (class 1) has sigma_2 > sigma_1, so q changes the loss: the q tests above are not vacuous
    z, y = _t()
    assert SeesawLoss(COUNTS, p=0.7, q=2.0)(z, y).item() > SeesawLoss(COUNTS, p=0.7, q=0.0)(z, y).item() + 1e-3


def test_seesaw_eps_floor_on_target_probability():
    # target prob ~ e^-10 < eps: ratio uses eps, as in mmdetection
    logits, targets = [[-10.0, 0.0, 0.0, 0.0]], [0]
    z, y = _t(logits, targets)
    got = SeesawLoss(COUNTS, p=0.0, q=1.0, eps=0.05)(z, y).item()
    sigma = _softmax(logits[0])
    denom = math.exp(-10.0) + sum((sigma[j] / 0.05) * math.exp(0.0) for j in (1, 2, 3))
    assert got == pytest.approx(-math.log(math.exp(-10.0) / denom), rel=1e-5)


def test_seesaw_gradient_on_negatives():
    counts = [100, 200, 5, 1]
    p = 0.7
    # head sample of class 0; negatives 1 (N=200, not rarer) and 2 (N=5, rarer) share the same logit
    row = [1.0, 0.4, 0.4, -0.3]
    z = torch.tensor([row], requires_grad=True)
    SeesawLoss(counts, p=p)(z, torch.tensor([0])).backward()
    g = z.grad[0].tolist()

    # exact statement: d loss / d z_j = M_ij e^{z_j} / Z~, Z~ = e^{z_i} + sum_j M_ij e^{z_j}
    m = [1.0, 1.0, (5 / 100) ** p, (1 / 100) ** p]
    z_tilde = sum(mj * math.exp(zj) for mj, zj in zip(m, row))
    for j in (1, 2, 3):
        assert g[j] == pytest.approx(m[j] * math.exp(row[j]) / z_tilde, rel=1e-5)
    assert g[0] == pytest.approx(math.exp(row[0]) / z_tilde - 1.0, rel=1e-5)
    # rare negative vs same-logit non-rare negative: ratio is exactly (N_j / N_i)^p
    assert g[2] / g[1] == pytest.approx((5 / 100) ** p, rel=1e-5)
    # relative to CE at the same point: M_ij times the CE gradient, up to the partition ratio Z / Z~
    z_plain = sum(math.exp(v) for v in row)
    ce_grad_2 = math.exp(row[2]) / z_plain
    assert g[2] == pytest.approx(m[2] * ce_grad_2 * z_plain / z_tilde, rel=1e-5)


def test_seesaw_tail_sample_equals_cross_entropy():
    row = [2.0, -1.0, 0.5, 0.3]
    z = torch.tensor([row], requires_grad=True)
    loss = SeesawLoss(COUNTS, p=0.9)(z, torch.tensor([3]))  # class 3 has the fewest samples: all M = 1
    loss.backward()
    assert loss.item() == pytest.approx(_ce(row, 3), rel=1e-6)
    sigma = _softmax(row)
    expected_grad = [s - (1.0 if j == 3 else 0.0) for j, s in enumerate(sigma)]
    assert z.grad[0].tolist() == pytest.approx(expected_grad, rel=1e-5, abs=1e-7)


def test_seesaw_zero_counts_read_as_one():
    counts = [10, 0, 3]
    z, y = _t([[0.5, 1.0, -0.2]], [0])
    got = SeesawLoss(counts, p=0.7)(z, y).item()
    assert got == pytest.approx(seesaw_reference([[0.5, 1.0, -0.2]], [0], [10, 1, 3], 0.7, 0.0), rel=1e-5)


def test_seesaw_online_counts_accumulate_and_persist():
    loss = SeesawLoss([0, 0, 0, 0], p=0.7, online=True)
    assert "cum_samples" in loss.state_dict()
    batch1 = [[0.2, 0.1, -0.3, 0.4], [1.0, 0.0, 0.5, -0.5], [0.1, 0.9, 0.0, 0.3]]
    targets1 = [0, 0, 1]
    got = loss(*_t(batch1, targets1)).item()
    assert loss.cum_samples.tolist() == [2, 1, 0, 0]
    # counts are updated before use; zero counts are read as 1
    assert got == pytest.approx(seesaw_reference(batch1, targets1, [2, 1, 1, 1], 0.7, 0.0), rel=1e-5)

    loss(*_t(batch1, [3, 0, 0]))
    assert loss.cum_samples.tolist() == [4, 1, 0, 1]

    loss.eval()  # evaluation never updates counts
    loss(*_t(batch1, [1, 1, 1]))
    assert loss.cum_samples.tolist() == [4, 1, 0, 1]

    fresh = SeesawLoss([0, 0, 0, 0], p=0.7, online=True)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.cum_samples.tolist() == [4, 1, 0, 1]


def test_seesaw_prior_mode_ignores_batches():
    loss = SeesawLoss(COUNTS, p=0.7, online=False)
    loss(*_t())
    assert loss.cum_samples.tolist() == [0, 0, 0, 0]


def test_seesaw_reduce_counts_hook_is_used():
    class ThreeRanks(SeesawLoss):  # pretend two other ranks saw the same batch
        def _reduce_counts(self, batch_counts):
            return batch_counts * 3

    loss = ThreeRanks([0, 0, 0, 0], online=True)
    loss(*_t([[0.0] * 4, [0.0] * 4], [2, 3]))
    assert loss.cum_samples.tolist() == [0, 0, 3, 3]
    plain = SeesawLoss([0, 0, 0, 0], online=True)
    assert plain._reduce_counts(torch.tensor([1, 2, 3, 4])).tolist() == [1, 2, 3, 4]


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss = SeesawLoss([0, 0, 0], online=True)
    targets = torch.tensor([0, 0] if rank == 0 else [2])
    loss(torch.zeros(len(targets), 3), targets)
    torch.save(loss.cum_samples, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_seesaw_online_counts_sum_across_ranks():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        for rank in (0, 1):
            assert torch.load(os.path.join(tmp, f"rank{rank}.pt")).tolist() == [2, 0, 1]


def _named(name: str, **keys):
    return lambda: build_loss(_loss(name=name, **keys), COUNTS)


# every loss the config accepts at its defaults (derived, so a new loss is tested the day it
# is added), plus settings that take other code paths
ALL_LOSSES = [_named(n) for n in loss_names()] + [
    _named("seesaw", p=0.8, q=2.0),
    _named("seesaw", p=0.8, q=0.5, online=True),
    _named("ce", label_smoothing=0.1),
    _named("focal", gamma=0.5),
    _named("cb_focal", beta=0.999, gamma=0.5),
    _named("ldam", drw_epoch=0),
    _named("seesaw", contrastive_weight=0.5),
]
LOSS_IDS = [*loss_names(), "seesaw-q", "seesaw-online", "ce-smoothing", "focal-0.5", "cb_focal", "ldam-drw", "with-contrastive"]


@pytest.mark.parametrize("make", ALL_LOSSES, ids=LOSS_IDS)
def test_stable_at_extreme_logits(make):
    loss_fn = make()
    loss_fn.set_epoch(1)
    z = torch.tensor(
        [[1e4, -1e4, -1e4, 1e4], [-1e4, 1e4, -1e4, -1e4], [-1e4, -1e4, 1e4, -1e4], [1e4, 1e4, 1e4, -1e4]],
        requires_grad=True,
    )
    y = torch.tensor([0, 0, 2, 3])  # mix of confidently right and confidently wrong
    loss = loss_fn(z, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    assert loss.item() > 1e3  # the confidently wrong samples cost ~2e4 before weighting


@pytest.mark.parametrize("make", ALL_LOSSES, ids=LOSS_IDS)
def test_bf16_logits_are_accepted(make):
    z = torch.tensor(LOGITS, dtype=torch.bfloat16)
    assert torch.isfinite(make()(z, torch.tensor(TARGETS)))


def test_cross_entropy_and_label_smoothing():
    z, y = _t()
    expected = sum(_ce(r, t) for r, t in zip(LOGITS, TARGETS)) / len(TARGETS)
    assert CrossEntropyLoss()(z, y).item() == pytest.approx(expected, rel=1e-6)
    eps = 0.2
    smoothed = 0.0
    for r, t in zip(LOGITS, TARGETS):
        smoothed += (1 - eps) * _ce(r, t) + eps * sum(_ce(r, k) for k in range(4)) / 4
    assert CrossEntropyLoss(label_smoothing=eps)(z, y).item() == pytest.approx(smoothed / 5, rel=1e-6)


def test_focal_loss():
    z, y = _t()
    ce = sum(_ce(r, t) for r, t in zip(LOGITS, TARGETS)) / len(TARGETS)
    assert FocalLoss(gamma=0.0)(z, y).item() == pytest.approx(ce, rel=1e-6)
    expected = 0.0
    for r, t in zip(LOGITS, TARGETS):
        pt = _softmax(r)[t]
        expected += -((1 - pt) ** 2) * math.log(pt)
    assert FocalLoss(gamma=2.0)(z, y).item() == pytest.approx(expected / 5, rel=1e-5)


def test_class_balanced_weights_by_hand():
    # beta = 0.5, n = [1, 2]: raw (0.5/0.5, 0.5/0.75) = (1, 2/3); sum 5/3; scaled to sum 2 -> (1.2, 0.8)
    assert class_balanced_weights([1, 2], 0.5).tolist() == pytest.approx([1.2, 0.8], rel=1e-6)
    assert class_balanced_weights([7, 3, 100], 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(TinltError, match="loss.beta"):
        class_balanced_weights([1, 2], 1.0)


def test_class_balanced_losses_by_hand():
    logits = [[1.0, -0.5], [0.2, 0.3], [2.0, 0.0]]
    targets = [0, 1, 1]
    w = [1.2, 0.8]
    z, y = _t(logits, targets)
    expected = sum(w[t] * _ce(r, t) for r, t in zip(logits, targets)) / 3
    assert ClassBalancedLoss([1, 2], beta=0.5, base="ce")(z, y).item() == pytest.approx(expected, rel=1e-6)
    gamma = 1.5
    expected = 0.0
    for r, t in zip(logits, targets):
        pt = _softmax(r)[t]
        expected += w[t] * -((1 - pt) ** gamma) * math.log(pt)
    got = ClassBalancedLoss([1, 2], beta=0.5, base="focal", gamma=gamma)(z, y).item()
    assert got == pytest.approx(expected / 3, rel=1e-5)


def test_balanced_softmax_and_logit_adjustment():
    counts = [6, 3, 1]
    logits = [[0.5, 0.1, -0.4], [0.0, 1.0, 0.2], [0.3, 0.3, 0.3]]
    targets = [0, 1, 2]
    log_prior = [math.log(6 / 10), math.log(3 / 10), math.log(1 / 10)]
    z, y = _t(logits, targets)

    def ce_shifted(tau):
        return sum(_ce([v + tau * lp for v, lp in zip(r, log_prior)], t) for r, t in zip(logits, targets)) / 3

    assert BalancedSoftmaxLoss(counts)(z, y).item() == pytest.approx(ce_shifted(1.0), rel=1e-6)
    assert LogitAdjustedLoss(counts, tau=0.5)(z, y).item() == pytest.approx(ce_shifted(0.5), rel=1e-6)
    adjusted = logit_adjust(torch.tensor(logits), counts, tau=2.0)
    expected = [[v - 2.0 * lp for v, lp in zip(r, log_prior)] for r in logits]
    assert adjusted.tolist() == [pytest.approx(r, rel=1e-6) for r in expected]


def test_ldam_margins_and_deferred_reweighting():
    counts = [16, 1, 81]  # n^-1/4 = 1/2, 1, 1/3 -> scaled so the largest is 0.5
    margins = [0.25, 0.5, 0.5 / 3]
    s = 4.0
    loss = LDAMLoss(counts, max_margin=0.5, s=s, drw_epoch=2, drw_beta=0.5)
    assert loss.margins.tolist() == pytest.approx(margins, rel=1e-6)

    logits = [[0.3, 0.1, -0.2], [0.0, 0.6, 0.1], [0.2, 0.2, 0.4], [0.9, -0.1, 0.0]]
    targets = [0, 1, 2, 0]
    per_sample = []
    for r, t in zip(logits, targets):
        shifted = [s * (v - (margins[t] if j == t else 0.0)) for j, v in enumerate(r)]
        per_sample.append(_ce(shifted, t))
    unweighted = sum(per_sample) / len(per_sample)
    # beta 0.5: raw 0.5 / (1 - 0.5^n) for n = 16, 1, 81, then scaled to sum to 3
    raw = [0.5 / (1 - 0.5**n) for n in counts]
    w = [3 * r / sum(raw) for r in raw]
    weighted = sum(w[t] * l for t, l in zip(targets, per_sample)) / sum(w[t] for t in targets)

    z, y = _t(logits, targets)
    for epoch, expected in [(0, unweighted), (1, unweighted), (2, weighted), (5, weighted)]:
        loss.set_epoch(epoch)
        assert loss(z, y).item() == pytest.approx(expected, rel=1e-5), epoch
    assert weighted != pytest.approx(unweighted, rel=1e-3)  # the switch is observable

    never = LDAMLoss(counts, s=s, drw_epoch=None)
    never.set_epoch(100)
    assert never(z, y).item() == pytest.approx(unweighted, rel=1e-5)


def test_other_losses_have_noop_set_epoch():
    z, y = _t()
    for loss in (SeesawLoss(COUNTS), CrossEntropyLoss(), FocalLoss(), BalancedSoftmaxLoss(COUNTS)):
        before = loss(z, y).item()
        loss.set_epoch(50)
        assert loss(z, y).item() == before


@pytest.mark.parametrize(
    "name,cls",
    [
        ("seesaw", SeesawLoss),
        ("ce", CrossEntropyLoss),
        ("focal", FocalLoss),
        ("cb_ce", ClassBalancedLoss),
        ("cb_focal", ClassBalancedLoss),
        ("balanced_softmax", BalancedSoftmaxLoss),
        ("logit_adjust", LogitAdjustedLoss),
        ("ldam", LDAMLoss),
    ],
)
def test_build_loss_names(name, cls):
    loss = build_loss(_loss(name=name), COUNTS)
    assert type(loss) is cls
    z, y = _t()
    assert torch.isfinite(loss(z, y))


def test_build_loss_passes_config_values():
    cfg = _loss(name="seesaw", p=0.8, q=2.0, online=True, eps=0.05)
    loss = build_loss(cfg, COUNTS)
    assert (loss.p, loss.q, loss.online, loss.eps) == (0.8, 2.0, True, 0.05)
    cb = build_loss(_loss(name="cb_focal", beta=0.5, gamma=1.5), [1, 2])
    assert (cb.base, cb.gamma) == ("focal", 1.5)
    assert cb.weight.tolist() == pytest.approx([1.2, 0.8])
    ldam = build_loss(_loss(name="ldam", max_margin=0.3, s=10.0, drw_epoch=4), [16, 1])
    assert ldam.margins.max().item() == pytest.approx(0.3) and ldam.s == 10.0 and ldam.drw_epoch == 4


def test_build_loss_from_omegaconf_node():
    from tinlt.config import load_config

    cfg = load_config(overrides=["loss.name=logit_adjust", "loss.tau=0.5"])
    loss = build_loss(cfg.loss, COUNTS)
    assert isinstance(loss, LogitAdjustedLoss) and loss.tau == 0.5


def test_build_loss_errors():
    with pytest.raises(TinltError, match=r"loss\.name.*seesaw, ce, focal, cb_ce, cb_focal, balanced_softmax"):
        build_loss(_loss(name="sesaw"), COUNTS)
    with pytest.raises(TinltError, match=r"loss\.label_smoothing"):
        build_loss(_loss(name="focal", label_smoothing=0.1), COUNTS)
    with pytest.raises(TinltError, match=r"loss\.beta"):
        build_loss(_loss(name="cb_ce", beta=1.5), COUNTS)
    with pytest.raises(TinltError, match=r"loss\.p"):
        build_loss(_loss(name="seesaw", p=-1.0), COUNTS)
    with pytest.raises(TinltError, match="class_counts"):
        build_loss(_loss(), [3, -1])


def test_class_count_mismatch_is_one_clear_error():
    with pytest.raises(TinltError, match="4 classes but the training-split class counts have 3"):
        SeesawLoss([5, 2, 1])(torch.zeros(2, 4), torch.tensor([0, 1]))
