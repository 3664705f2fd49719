"""Decoupling baselines and post-hoc adjustment on toy problems whose answer is known.

* tau-norm on a hand-built weight matrix, and applied by TIN in eval mode only;
* post-hoc logit adjustment on two 1-D Gaussians, where the Bayes boundary under the
  training prior and under a balanced prior are known in closed form;
* cRT on a toy image tower whose 2-D embedding is the red-minus-blue colour of the image:
  a stage-1 linear head whose bias sends everything to the head class is re-trained with
  class-balanced sampling on frozen features: the boundary must move to the midpoint between
  the classes, while instance sampling leaves it near the rare class.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tinlt.config import load_config, to_dict
from tinlt.engine.evaluate import predict_loader
from tinlt.errors import TinltError
from tinlt.models.base import ImageTower
from tinlt.models.registry import register_towers
from tinlt.engine.prepare import load_weights, prepare_model
from tinlt.models.adjust import posthoc_offset, tau_normalize_weight

# ----------------------------------------------------------------------------- tau-norm


def test_tau_norm_on_a_hand_built_matrix():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])  # row norms 5, 2, 1, 0
    np.testing.assert_allclose(tau_normalize_weight(w, 1.0), [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]],
                               rtol=1e-6)
    half = tau_normalize_weight(w, 0.5)
    expect = [[3 / math.sqrt(5), 4 / math.sqrt(5)], [0.0, 2 / math.sqrt(2)], [1.0, 0.0], [0.0, 0.0]]
    for row, ref in zip(half.tolist(), expect):
        assert row == pytest.approx(ref)
    assert torch.equal(tau_normalize_weight(w, 0.0), w)


def test_tin_applies_tau_norm_in_eval_mode_only(toy, tmp_path):
    from tinlt.models.factory import create_model

    model = create_model(load_config(overrides=_overrides(toy, tmp_path)).model, CLASSES)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))  # row norms 5, 2
        model.head.bias.copy_(torch.tensor([1.0, -1.0]))
    w0, b0 = model.head.weight.clone(), model.head.bias.clone()
    model.set_eval_adjustments(tau_norm=1.0)
    x = torch.tensor([[1.0, 1.0], [-2.0, 0.5]])
    with torch.no_grad():
        # eval: rows (0.6, 0.8), (0, 1), bias dropped
        np.testing.assert_allclose(model.eval().classify(x), [[1.4, 1.0], [-0.8, 0.5]], rtol=1e-6)
        # train: the raw head, x @ W^T + b
        np.testing.assert_allclose(model.train().classify(x), [[8.0, 1.0], [-3.0, 0.0]], rtol=1e-6)
    assert torch.equal(model.head.weight, w0) and torch.equal(model.head.bias, b0)  # weights never rewritten
    model.set_eval_adjustments(tau_norm=None)
    with torch.no_grad():
        np.testing.assert_allclose(model.eval().classify(x), [[8.0, 1.0], [-3.0, 0.0]], rtol=1e-6)


def test_tau_norm_refuses_the_text_head():
    from tinlt.models.factory import create_model

    text_model = create_model({"name": "tiny-vit"}, ["a", "b"])
    with pytest.raises(TinltError, match="model.head=linear"):
        text_model.set_eval_adjustments(tau_norm=1.0)
    with pytest.raises(TinltError, match="train.tau_norm.*model.head=linear"):
        load_config(overrides=["train.tau_norm=1.0"])  # the default head is the text head
    assert load_config(overrides=["train.tau_norm=1.0", "model.head=linear"]).train.tau_norm == 1.0


# ----------------------------------------------------------------------------- post-hoc adjustment


class _GaussianBayes(nn.Module):
    """Logits = log N(x; mu_c, 1) + log prior_c: the Bayes posterior under the training prior,
    plus the post-hoc offset (as TIN adds it in eval mode)."""

    uses_text_head = False

    def __init__(self, prior, offset=None):
        super().__init__()
        self.mu = torch.tensor([-1.0, 1.0])
        self.log_prior = torch.tensor(prior).log()
        self.offset = torch.zeros(2) if offset is None else offset

    def forward(self, x, text_features=None):
        return -0.5 * (x - self.mu[None, :]) ** 2 + self.log_prior[None, :] + self.offset


def _predict(prior, x, counts=None, tau=0.0):
    model = _GaussianBayes(prior, posthoc_offset(counts, tau) if counts is not None else None)
    ds = TensorDataset(x[:, None], torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)))
    loader = DataLoader(ds, batch_size=1024)
    return predict_loader(model, loader, num_classes=2, device=torch.device("cpu"), quiet=True)


def test_posthoc_offset_is_minus_tau_log_prior():
    np.testing.assert_allclose(posthoc_offset([900, 100], 1.0), [-math.log(0.9), -math.log(0.1)], rtol=1e-6)
    np.testing.assert_allclose(posthoc_offset([3, 1], 0.5), [-0.5 * math.log(0.75), -0.5 * math.log(0.25)], rtol=1e-6)
    assert posthoc_offset([900, 100], 0.0) is None


def test_posthoc_adjustment_moves_the_boundary_to_the_balanced_bayes_boundary():
    counts = [900, 100]  # class 0 (mean -1) is the head class
    prior = [0.9, 0.1]
    x = torch.linspace(-3, 3, 61) + 0.013  # no grid point sits exactly on a boundary
    # under the training prior, class 1 wins iff 2x > log 9
    plain = _predict(prior, x).preds
    assert plain.tolist() == (x > math.log(9) / 2).long().tolist()
    # subtracting log prior leaves the likelihoods: boundary at the midpoint 0
    full = _predict(prior, x, counts, 1.0)
    assert full.preds.tolist() == (x > 0).long().tolist()
    # tau = 0.5 removes half the prior: boundary at log(9) / 4
    half = _predict(prior, x, counts, 0.5).preds
    assert half.tolist() == (x > math.log(9) / 4).long().tolist()
    # confidences are the softmax of the adjusted logits (= likelihood ratio form)
    lik = torch.stack([-0.5 * (x + 1) ** 2, -0.5 * (x - 1) ** 2], 1).softmax(1).max(1).values
    assert full.confidence == pytest.approx(lik.numpy(), rel=1e-5)


def test_posthoc_adjustment_raises_balanced_accuracy():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(-1, 1, 4000), rng.normal(1, 1, 4000)  # balanced test set
    x = torch.tensor(np.concatenate([x0, x1]), dtype=torch.float32)
    y = np.concatenate([np.zeros(4000), np.ones(4000)])
    def balanced(preds):
        return 0.5 * ((preds[y == 0] == 0).mean() + (preds[y == 1] == 1).mean())

    plain = balanced(_predict([0.9, 0.1], x).preds)
    adjusted = balanced(_predict([0.9, 0.1], x, [900, 100], 1.0).preds)
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    t = math.log(9) / 2
    assert plain == pytest.approx(0.5 * (phi(t + 1) + 1 - phi(t - 1)), abs=0.015)  # ~0.72
    assert adjusted == pytest.approx(phi(1.0), abs=0.015)  # ~0.84
    assert adjusted > plain + 0.08


# ----------------------------------------------------------------------------- cRT


class ColourTower(ImageTower):
    """Embedding = proj([mean red - mean blue, 0.25]); ``proj`` plays a fresh projection layer."""

    feature_channels = 3
    output_dim = 2
    image_mean = (0.0, 0.0, 0.0)
    image_std = (1.0, 1.0, 1.0)
    image_size = 8

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)

    def forward_features(self, images):
        return images

    def forward_head(self, fmap):
        m = fmap.mean(dim=(2, 3))
        d = m[:, 0] - m[:, 2]
        return self.proj(torch.stack([d, torch.full_like(d, 0.25)], dim=1))

    def new_parameter_names(self):
        return {"proj.weight", "proj.bias"}


register_towers("toy-colour", lambda cfg: (ColourTower(), None))
CLASSES = ["reddish", "bluish"]


def _write_split(root: Path, counts, seed) -> Path:
    """Class 0: red - blue ~ +0.5, class 1: ~ -0.5 (+- 0.1): separable, midpoint 0."""
    rng = np.random.default_rng(seed)
    lines = []
    for c, n in enumerate(counts):
        for i in range(n):
            d = (0.5 if c == 0 else -0.5) + rng.uniform(-0.1, 0.1)
            rgb = np.array([0.5 + d / 2, 0.5, 0.5 - d / 2]) * 255
            arr = np.clip(rgb + rng.integers(-3, 4, (8, 8, 3)), 0, 255).astype(np.uint8)
            p = root / f"c{c}_{i}.png"
            Image.fromarray(arr).save(p)
            lines.append(f"{p.name} {c}\n")
    listing = root / "list.txt"
    listing.write_text("".join(lines))
    return listing


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    (root / "train").mkdir()
    (root / "test").mkdir()
    (root / "classnames.txt").write_text("".join(f"{n}\n" for n in CLASSES))
    return {
        "root": root,
        "train": _write_split(root / "train", [24, 3], seed=0),
        "test": _write_split(root / "test", [8, 8], seed=1),
    }


def _overrides(toy, out: Path, extra=()):
    cn = toy["root"] / "classnames.txt"
    return [
        "model.name=toy-colour", "model.head=linear", "model.visual_attention=false",
        "data.train.kind=list", f"data.train.path={toy['train']}", f"data.train.classnames={cn}",
        "data.test.kind=list", f"data.test.path={toy['test']}", f"data.test.classnames={cn}",
        "data.image_size=8", "data.augment=none", "data.num_workers=0",
        "loss.name=ce", "optim.name=adamw", "optim.lr=0.05", "optim.batch_size=9", "optim.epochs=12",
        "optim.schedule=constant", "train.eval_every=0", f"train.output_dir={out}", "train.quiet=true",
        *extra,
    ]


def _stage1_checkpoint(toy, path: Path) -> Path:
    """A hand-built stage-1 model: projection diag(2, 1), head with a bias for the head class."""
    from tinlt.models.factory import create_model

    cfg = load_config(overrides=_overrides(toy, path.parent))
    model = create_model(cfg.model, CLASSES)
    with torch.no_grad():
        model.image_tower.proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        model.image_tower.proj.bias.zero_()
        model.head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.head.bias.copy_(torch.tensor([3.0, -3.0]))  # |w . e| <= 1 < 6: always class 0
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "classnames": CLASSES}, path)
    return path


def _embed(d: float) -> torch.Tensor:
    e = torch.tensor([2 * d, 0.25])  # the stage-1 projection diag(2, 1)
    return e / e.norm()


def _boundary(head_w: torch.Tensor, head_b: torch.Tensor) -> float:
    """The d in (-1, 1) where the two logits are equal (bisection; the margin is monotone in d)."""

    def margin(d):
        z = head_w @ _embed(d) + head_b
        return float(z[0] - z[1])

    lo, hi = -1.0, 1.0
    assert margin(lo) < 0 < margin(hi), "class 0 must win at red, class 1 at blue"
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if margin(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def test_prepare_model_freezes_all_but_the_classifier(toy, tmp_path):
    from tinlt.models.factory import create_model

    ckpt = _stage1_checkpoint(toy, tmp_path / "stage1.pt")
    cfg = load_config(overrides=_overrides(toy, tmp_path, [f"model.init_from={ckpt}", "model.reinit_head=true",
                                                           "model.freeze_features=true"]))
    model = create_model(cfg.model, CLASSES)
    torch.manual_seed(0)
    messages = []
    prepare_model(model, cfg.model, classnames=CLASSES, log=messages.append)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert model.image_tower.proj.weight.tolist() == [[2.0, 0.0], [0.0, 1.0]]  # loaded, not fresh
    assert model.head.bias.tolist() != [3.0, -3.0]  # re-initialised
    assert "init_from" in messages[0]
    # freeze_image alone would leave the projection trainable: that is why cRT needs freeze_features
    other = create_model(load_config(overrides=_overrides(toy, tmp_path, ["model.freeze_image=true"])).model, CLASSES)
    assert other.image_tower.proj.weight.requires_grad

    # resuming: the run's own checkpoint supplies the weights, init_from is not read
    fresh = create_model(cfg.model, CLASSES)
    before = fresh.image_tower.proj.weight.clone()
    prepare_model(fresh, cfg.model, classnames=CLASSES, resuming=True, log=messages.append)
    assert torch.equal(fresh.image_tower.proj.weight, before)


def test_load_weights_errors(toy, tmp_path):
    from tinlt.models.factory import create_model

    ckpt = _stage1_checkpoint(toy, tmp_path / "stage1.pt")
    model = create_model(load_config(overrides=_overrides(toy, tmp_path)).model, CLASSES)
    with pytest.raises(TinltError, match="model.init_from.*not found"):
        load_weights(model, tmp_path / "missing.pt")
    with pytest.raises(TinltError, match="other classes.*reinit_head"):
        load_weights(model, ckpt, classnames=["a", "b"])
    info = load_weights(model, ckpt, skip_head=True, classnames=["a", "b"])  # new head: fine
    assert info["loaded"] == 2 and "head.weight" in info["not_in_checkpoint"]
    # a run folder means its best.pt
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(ckpt.read_bytes())
    assert load_weights(model, tmp_path / "run")["path"].endswith("best.pt")


def test_crt_rebalances_a_biased_head(toy, tmp_path):
    from tinlt.engine.inference import evaluate_checkpoint, load_model
    from tinlt.engine.trainer import train

    ckpt = _stage1_checkpoint(toy, tmp_path / "stage1.pt")
    stage1 = torch.load(ckpt, weights_only=False)["model"]
    # stage 1 puts every image in the head class: balanced accuracy 50 %
    z = stage1["head.weight"] @ torch.stack([_embed(d) for d in (-0.6, -0.4, 0.4, 0.6)]).t() + stage1["head.bias"][:, None]
    assert z.argmax(0).tolist() == [0, 0, 0, 0]

    out = tmp_path / "crt"
    cfg = load_config(overrides=_overrides(toy, out, [
        f"model.init_from={ckpt}", "model.reinit_head=true", "model.freeze_features=true",
        "data.sampler=class_balanced",
    ]))
    metrics = train(cfg)
    assert metrics["overall"] == 100.0  # balanced accuracy on the separable test set

    after = torch.load(out / "best.pt", weights_only=False)["model"]
    for name in ("image_tower.proj.weight", "image_tower.proj.bias"):
        assert torch.equal(after[name], stage1[name]), name  # features stayed fixed
    # the classes sit at d = -0.5 +- 0.1 and +0.5 +- 0.1: the boundary moved to the midpoint 0
    crt_boundary = _boundary(after["head.weight"], after["head.bias"])
    assert abs(crt_boundary) < 0.15
    # the same stage 2 with instance sampling leaves the boundary near the rare class (d = -0.5)
    plain = tmp_path / "instance"
    train(load_config(overrides=_overrides(toy, plain, [
        f"model.init_from={ckpt}", "model.reinit_head=true", "model.freeze_features=true",
    ])))
    inst = torch.load(plain / "best.pt", weights_only=False)["model"]
    assert _boundary(inst["head.weight"], inst["head.bias"]) < crt_boundary - 0.15

    # tau-norm from the config, via `tinlt eval`: predictions follow the normalised rows
    ev = evaluate_checkpoint(out / "best.pt", ["train.tau_norm=1.0"], out_dir=tmp_path / "ev", quiet=True)
    w = after["head.weight"]
    wn = w / w.norm(dim=1, keepdim=True)
    model, _, _ = load_model(out / "best.pt")
    from tinlt.engine.loaders import make_transforms
    from tinlt.data.sources import load_list

    _, eval_tf = make_transforms(model, cfg)
    test = load_list(str(toy["test"]), classnames_file=str(toy["root"] / "classnames.txt"))
    order = np.argsort(ev["predictions"]["index"])
    preds = np.asarray(ev["predictions"]["pred"])[order]
    with torch.no_grad():
        imgs = torch.stack([eval_tf(Image.open(p).convert("RGB")) for p in test.items])
        expect = (model.encode_image(imgs) @ wn.t()).argmax(1)
    assert preds.tolist() == expect.tolist()
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["predictions"]["pred"] == ev["predictions"]["pred"]


def test_deployment_paths_apply_tau_norm_and_posthoc_adjustment_like_eval(toy, tmp_path):
    # predict and export must score as the run's own evaluation did: tau-normalised rows,
    # zero bias, minus tau * log prior (here computed by hand from the training counts 24 : 3)
    import onnxruntime as ort

    from tinlt.deploy.export import export_checkpoint
    from tinlt.deploy.predict import predict_paths
    from tinlt.engine.inference import load_model
    from tinlt.engine.loaders import make_transforms
    from tinlt.engine.trainer import train

    out = tmp_path / "run"
    cfg = load_config(overrides=_overrides(toy, out, ["train.posthoc_tau=1.0", "train.tau_norm=1.0"]))
    metrics = train(cfg)
    saved = torch.load(out / "best.pt", weights_only=False)["model"]
    w = saved["head.weight"]
    log_prior = torch.log(torch.tensor([24.0, 3.0]) / 27.0)
    model, _, _ = load_model(out / "best.pt")
    _, eval_tf = make_transforms(model, cfg)
    paths = [ln.split()[0] for ln in toy["test"].read_text().splitlines()]
    imgs = torch.stack([eval_tf(Image.open(toy["root"] / "test" / p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = model.encode_image(imgs) @ (w / w.norm(dim=1, keepdim=True)).t() - 1.0 * log_prior
        torch.testing.assert_close(model(imgs), expected, rtol=0, atol=1e-5)
        # training mode scores with the raw head (bias kept, no offset): the adjustments are evaluation-only
        torch.testing.assert_close(model.train()(imgs), model.encode_image(imgs) @ w.t() + saved["head.bias"],
                                   rtol=0, atol=1e-5)
    assert torch.equal(model.head.weight, w)  # the trained head is never rewritten

    order = np.argsort(metrics["predictions"]["index"])
    assert np.asarray(metrics["predictions"]["pred"])[order].tolist() == expected.argmax(1).tolist()

    rows = predict_paths(out / "best.pt", [toy["root"] / "test" / p for p in paths], topk=2)
    by_name = {Path(r["path"]).name: r for r in rows}
    probs = expected.softmax(1)
    for i, p in enumerate(paths):
        top = by_name[p]["topk"]
        assert top[0]["index"] == int(probs[i].argmax())
        assert top[0]["score"] == pytest.approx(float(probs[i].max()), abs=1e-5)

    res = export_checkpoint(out / "best.pt", tmp_path / "m.onnx", quiet=True)
    sess = ort.InferenceSession(str(res.onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": imgs.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)
