"""Lightweight tuning (models/tuning/), the cosine head and its initialisations, CoOp prompts,
test-time ensembling, the frozen-prefix cache and lean checkpoints.

Expected values come from outside the code under test: parameter counts from formulas
written here for ViT-B-32's shapes, LoRA outputs from Hugging Face peft, test-time views
from torchvision, class-mean rows computed by hand.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import common_args, split_args
from tinlt.cli import main
from tinlt.config import load_config
from tinlt.errors import TinltError
from tinlt.models.factory import create_model
from tinlt.models.tuning import merge, method_names, trainable_summary
from tinlt.models.tuning.adaptformer import adaptformer_width

CLASSES = ["dog", "cat", "red bird"]


def _build(name: str, **model) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"pretrained_image": False, "pretrained_text": False} if name.startswith("effnet") else {}
    return create_model({"name": name, **extra, **model}, CLASSES, image_size=32).eval()


def _logits(model, x):
    with torch.no_grad():
        return model(x)


# Every tuning method the config accepts, on every kind of tower: derived from the config's
# allowed values, so a new method is tested the day it is added. What each method needs and
# what it trains is written here from its documented scope (docs/tuning.md), not read from
# the tuning code.
METHODS = method_names()
NEEDS = {"adaptformer": "transformer", "ln": "transformer", "bn": "conv", "vpt": "vit_image"}
NOT_IDENTITY_AT_INIT = {"vpt"}  # extra keys change the attention whatever the prompts' values
TOWERS = {  # (model, tower): what the tower is
    ("tiny-vit", "image"): {"transformer", "vit_image"},
    ("tiny-vit", "text"): {"transformer"},
    ("tiny-rn", "image"): {"conv"},
    ("effnet-lite0-minilm", "image"): {"conv"},
    ("effnet-lite0-minilm", "text"): {"transformer"},
}


def _method_keys(method: str, kinds: set) -> dict:
    keys = {"method": method}
    if method == "lora":
        keys["targets"] = ["conv1x1"] if "conv" in kinds else ["q", "k", "v", "o", "mlp"]
    return {**keys, **{"last_k": {"blocks": 1}, "adaptformer": {"bottleneck": 4}, "vpt": {"prompts": 2}}.get(method, {})}


CASES = [(name, key, m) for (name, key) in TOWERS for m in METHODS]


@pytest.mark.parametrize("name,key,method", CASES, ids=[f"{n}-{k}-{m}" for n, k, m in CASES])
def test_every_method_on_every_tower_starts_where_the_model_was_or_refuses_in_one_line(name, key, method):
    kinds = TOWERS[(name, key)]
    tune = {f"tune_{key}": _method_keys(method, kinds)}
    if method in NEEDS and NEEDS[method] not in kinds:
        with pytest.raises(TinltError) as e:
            _build(name, **tune)
        assert "\n" not in str(e.value) and method in str(e.value)
        return
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = _logits(_build(name, templates=["a photo of a {}."]), x)
    got = _logits(_build(name, templates=["a photo of a {}."], **tune), x)
    if method in NOT_IDENTITY_AT_INIT:
        assert (got - ref).abs().max().item() > 1e-4
    else:
        assert (got - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["tiny-vit", "effnet-lite0-minilm"])
def test_coop_context_starts_at_the_templates_words(name):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = _logits(_build(name, templates=["a photo of a {}."]), x)
    got = _logits(_build(name, templates=["a photo of a {}."], coop={"n_ctx": 4}), x)
    assert (got - ref).abs().max().item() <= 1e-5


def test_vpt_is_not_identity_at_step_zero_and_trains_only_its_prompts():
    x = torch.randn(2, 3, 32, 32)
    base, vpt = _build("tiny-vit"), _build("tiny-vit", tune_image={"method": "vpt", "prompts": 3, "deep": True})
    assert (_logits(base, x) - _logits(vpt, x)).abs().max() > 1e-4  # extra keys change the attention
    image = {n for n, p in vpt.image_tower.named_parameters() if p.requires_grad}
    assert image == {"prompts.tokens"}
    blocks = len(vpt.image_tower.visual.transformer.resblocks)
    width = vpt.image_tower.visual.transformer.width
    assert vpt.image_tower.prompts.tokens.numel() == blocks * 3 * width


# --------------------------------------------------------------------------- parameter counts on ViT-B-32


@pytest.fixture(scope="module")
def vitb32():
    """ViT-B/32's image tower, random weights (no download), for parameter counts."""
    def build(**tune):
        m = create_model({"name": "ViT-B-32", "head": "linear", "visual_attention": False,
                          "tune_image": tune}, [f"c{i}" for i in range(10)])
        return sum(p.numel() for p in m.image_tower.parameters() if p.requires_grad)
    return build


def test_trainable_parameters_match_hand_formulas_on_vit_b32(vitb32):
    d, L, mlp, out, r = 768, 12, 3072, 512, 8
    assert vitb32(method="lora", rank=r) == L * 2 * 2 * d * r  # q and v of all 12 blocks
    per_block_all = (4 * 2 * d + (d + mlp) + (mlp + d)) * r  # q k v o, then c_fc (A r x d, B mlp x r), c_proj
    assert vitb32(method="lora", rank=r, targets=["q", "k", "v", "o", "mlp"]) == L * per_block_all
    b = 16
    assert vitb32(method="adaptformer", bottleneck=b) == L * (2 * d + (d * b + b) + (b * d + d) + 1)
    assert vitb32(method="vpt", prompts=10) == 10 * d
    assert vitb32(method="vpt", prompts=10, deep=True) == L * 10 * d
    biases_per_block = 3 * d + d + d + d + mlp + d  # in_proj, out_proj, ln_1, ln_2, c_fc, c_proj
    assert vitb32(method="bitfit") == L * biases_per_block + 2 * d  # + ln_pre, ln_post
    assert vitb32(method="ln") == L * 2 * 2 * d + 2 * 2 * d
    assert vitb32(method="ssf") == L * 2 * (3 * d + d + mlp + d + d + d)  # a scale and a shift per output
    last_block = 4 * d * d + 4 * d + 2 * 2 * d + 2 * d * mlp + mlp + d  # qkv+o, their biases, 2 LNs, MLP
    assert vitb32(method="last_k", blocks=1) == last_block + 2 * d + d * out  # + ln_post, proj
    assert vitb32(method="lora", rank=r, blocks=3) == 3 * 2 * 2 * d * r  # only the last 3 blocks


def test_adaptformer_width_follows_lifts_rule():
    assert adaptformer_width(1000, 12) == 2 ** math.floor(math.log2(1000 / 24))  # 32, ImageNet-LT
    assert adaptformer_width(365, 12) == 8 and adaptformer_width(10, 12) == 1


# --------------------------------------------------------------------------- what trains


def _last_block(n: str, name: str) -> bool:
    if name == "tiny-vit":
        return n.startswith("visual.transformer.resblocks.1.") or n.startswith(("visual.ln_post.", "visual.proj"))
    return n.startswith("visual.layer4.0.") or n.startswith("visual.attnpool.")


# which tower parameters a method trains, by name (independent of the tuning code)
EXPECTED = {
    "full": lambda n, name: True,
    "frozen": lambda n, name: False,
    "lora": lambda n, name: ".A." in n or ".B." in n,
    "adaptformer": lambda n, name: "adaptformer." in n,
    "ssf": lambda n, name: ".ssf." in n,
    "bitfit": lambda n, name: n.rsplit(".", 1)[-1].endswith("bias") and "parametrizations" not in n,
    "ln": lambda n, name: ".ln_" in n or n.startswith(("ln_", "visual.ln_")) or ".ln_pre" in n or ".ln_post" in n,
    "bn": lambda n, name: ".bn" in n or n.startswith("bn") or ".downsample.1." in n,
    "vpt": lambda n, name: n == "prompts.tokens",
    "last_k": _last_block,
}


def test_every_method_says_what_it_trains():
    assert set(EXPECTED) == set(METHODS), "add the new method's trained parameters to EXPECTED"


TRAINS = [(name, m) for name in ("tiny-vit", "tiny-rn") for m in METHODS
          if NEEDS.get(m) is None or NEEDS[m] in TOWERS[(name, "image")]]


@pytest.mark.parametrize("name,method", TRAINS, ids=[f"{n}-{m}" for n, m in TRAINS])
def test_only_the_methods_tensors_train_and_the_rest_stays_bit_identical(name, method):
    tune = _method_keys(method, TOWERS[(name, "image")])
    model = _build(name, tune_image=tune, freeze_text=True, visual_attention=False)
    tower = model.image_tower
    trains = {n for n, p in tower.named_parameters() if p.requires_grad}
    expected = {n for n, _ in tower.named_parameters() if EXPECTED[method](n, name)}
    assert trains == expected, (sorted(trains - expected)[:5], sorted(expected - trains)[:5])
    if method == "frozen":
        return
    before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    buffers = {n: b.clone() for n, b in tower.named_buffers()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in tower.named_parameters() if n not in trains)
        opt.step()
    changed = {n for n, p in tower.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trains, sorted(changed - trains)[:5]  # nothing frozen moved
    # random-init CLIP ResNets zero each bottleneck's bn3 weight, so no gradient reaches the
    # branch behind it while only biases / scales train; everything else that trains moves
    assert len(changed) >= len(trains) // 2
    for n, b in tower.named_buffers():  # a tuned tower keeps its statistics
        if method != "full":
            assert torch.equal(b, buffers[n]), n


def test_lora_equals_peft_on_minilm():
    peft = pytest.importorskip("peft")
    from tinlt.models.towers.offline import MiniLMTextTower

    torch.manual_seed(0)
    tower = MiniLMTextTower(embed_dim=16, pretrained=False).eval()
    ref_bert = copy.deepcopy(tower.bert)
    from tinlt.models.tuning import tune_tower

    tune_tower(tower, {"method": "lora", "rank": 4, "alpha": 8.0, "targets": ["q", "v"]}, num_classes=3, key="text")
    for name, module in tower.bert.named_modules():  # make B non-zero so the update matters
        if hasattr(module, "parametrizations"):
            for u in module.parametrizations.weight:
                for b in u.B:
                    b.data.normal_()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    ref = peft.inject_adapter_in_model(cfg, ref_bert)
    for name, module in tower.bert.named_modules():
        if hasattr(module, "parametrizations"):
            u = module.parametrizations.weight[0]
            target = ref.get_submodule(name)
            target.lora_A["default"].weight.data.copy_(u.A[0].data)
            target.lora_B["default"].weight.data.copy_(u.B[0].data)
    tokens = tower.tokenize(["a photo of a dog.", "two red birds on a wire"])
    with torch.no_grad():
        ours = tower.bert(**tokens).last_hidden_state
        theirs = ref(**tokens).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    merged = merge(tower)  # and the merge writes the same update into the weights
    with torch.no_grad():
        torch.testing.assert_close(tower.bert(**tokens).last_hidden_state, theirs, rtol=0, atol=1e-5)
    assert merged == 2 * len(tower.bert.encoder.layer)


def test_bad_tuning_keys_are_one_line_errors():
    with pytest.raises(TinltError, match="bn.*convolutional"):
        _build("tiny-vit", tune_image={"method": "bn"})
    with pytest.raises(TinltError, match="conv1x1"):
        _build("tiny-rn", tune_image={"method": "lora"})
    with pytest.raises(TinltError, match="freeze_image.*tune_image"):
        load_config(overrides=["model.freeze_image=true", "model.tune_image.method=lora"])
    with pytest.raises(TinltError, match="expected one of.*did you mean 'lora'"):
        load_config(overrides=["model.tune_image.method=lorra"])
    with pytest.raises(TinltError, match="coop.*model.head=text"):
        load_config(overrides=["model.coop.n_ctx=4", "model.head=linear"])


# --------------------------------------------------------------------------- heads


def test_cosine_head_text_init_equals_the_text_heads_features():
    text = _build("tiny-vit", templates=["a photo of a {}.", "art of a {}."])
    cos = _build("tiny-vit", templates=["a photo of a {}.", "art of a {}."], head="cosine")
    with torch.no_grad():
        rows = F.normalize(cos.head.weight, dim=-1)
        torch.testing.assert_close(rows, text.class_text_features(), rtol=0, atol=1e-6)
    lin = _build("tiny-vit", templates=["a photo of a {}."], head="linear", classifier_init="text")
    assert torch.all(lin.head.bias == 0)
    torch.testing.assert_close(lin.head.weight.norm(dim=1), torch.full((3,), 25.0), rtol=0, atol=1e-4)


def test_class_mean_and_probe_inits_from_the_training_images(dataset, tmp_path):
    from tinlt.data.sources import load_folder
    from tinlt.engine.classifier_init import init_classifier, training_embeddings
    from tinlt.engine.loaders import eval_transform

    train = load_folder(dataset / "train")
    cfg = load_config(None, [*common_args(tmp_path), "model.head=cosine", "model.classifier_init=class_mean"])
    model = create_model(cfg.model, train.classnames, image_size=32)
    tf = eval_transform(model, cfg)
    assert init_classifier(model, train, tf, cfg, torch.device("cpu"), log=lambda m: None) == "class_mean"
    # by hand: each class's mean normalised embedding, image by image
    with torch.no_grad():
        model.eval()
        embs = {c: [] for c in range(3)}
        for path, label in zip(train.items, train.labels):
            x = tf(Image.open(path).convert("RGB"))[None]
            embs[int(label)].append(F.normalize(model.encode_image(x), dim=-1)[0])
        expect = F.normalize(torch.stack([torch.stack(embs[c]).mean(0) for c in range(3)]), dim=-1)
    torch.testing.assert_close(F.normalize(model.head.weight, dim=-1), expect, rtol=0, atol=1e-5)

    cfg = load_config(None, [*common_args(tmp_path), "model.head=linear", "model.classifier_init=probe"])
    model = create_model(cfg.model, train.classnames, image_size=32)
    init_classifier(model, train, tf, cfg, torch.device("cpu"), log=lambda m: None)
    feats, labels = training_embeddings(model, train, tf, cfg, torch.device("cpu"))
    with torch.no_grad():
        pred = (feats @ model.head.weight.t()).argmax(1).numpy()
    assert (pred == labels).mean() == 1.0  # a balanced probe separates the three colours


# --------------------------------------------------------------------------- test-time ensembling


@pytest.mark.parametrize("tta", ["flip", "five_crop", "ten_crop"])
def test_tta_views_match_torchvision_and_the_numpy_preprocessing(tta):
    from torchvision.transforms import v2 as T

    from tinlt.data.transforms import build_transforms
    from tinlt.deploy.preprocess import Preprocess

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    views = build_transforms(32, mean, std, train=False, tta=tta, tta_expand=8)(img)
    # torchvision directly: resize, then its own crops, each normalised
    size = 32 + (8 if tta != "flip" else 0)
    resized = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(img)
    if tta == "flip":
        c = T.CenterCrop(32)(resized)
        crops = [c, T.functional.horizontal_flip(c)]
    else:
        crops = list((T.FiveCrop if tta == "five_crop" else T.TenCrop)(32)(resized))
    norm = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    torch.testing.assert_close(views, torch.stack([norm(c) for c in crops]), rtol=0, atol=0)
    ours = Preprocess(32, mean, std, tta=tta, tta_expand=8)(img)
    np.testing.assert_allclose(ours, views.numpy(), rtol=0, atol=1e-6)


def test_eval_with_tta_averages_logits_over_views(dataset, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *common_args(out, epochs=1), *split_args("folder", dataset)]) == 0
    assert main(["eval", "--checkpoint", str(out), "--out", str(tmp_path / "ev"), "data.tta=flip", "-q"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    from tinlt.engine.inference import load_model
    from tinlt.engine.loaders import eval_transform

    model, cfg, _ = load_model(out / "best.pt")
    tf = eval_transform(model, cfg, views=False)
    paths = sorted((dataset / "test").rglob("*.png"))
    with torch.no_grad():
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        logits = (model(x) + model(torch.flip(x, dims=[-1]))) / 2
    order = np.argsort(m["predictions"]["index"])
    got = np.asarray(m["predictions"]["confidence"])[order]
    np.testing.assert_allclose(got, logits.softmax(1).max(1).values.numpy(), atol=2e-5)
    # the exported model's predictor runs both views too
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "m.onnx"), "data.tta=flip", "-q"]) == 0
    assert main(["predict", str(dataset / "test"), "--model", str(tmp_path / "m.onnx"), "--topk", "1",
                 "--out", str(tmp_path / "p.json")]) == 0
    rows = {Path(r["path"]): r["topk"][0]["score"] for r in json.loads((tmp_path / "p.json").read_text())}
    np.testing.assert_allclose([rows[p] for p in paths], logits.softmax(1).max(1).values.numpy(), atol=1e-4)


# --------------------------------------------------------------------------- through the trainer


def _tune_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [*common_args(out, epochs=2), *split_args("folder", dataset), "data.augment=none", "model.freeze_text=true",
            *extra]


@pytest.mark.parametrize("name,tune", [("tiny-rn", ["model.tune_image.method=last_k", "model.tune_image.blocks=2"]),
                                       ("tiny-rn", ["model.tune_image.method=lora", "model.tune_image.targets=[conv1x1]",
                                                    "model.tune_image.blocks=1"])])
def test_the_prefix_cache_gives_the_same_losses(dataset, tmp_path, name, tune):
    logs = []
    for cache in ("", str(tmp_path / "cache")):
        out = tmp_path / f"run{bool(cache)}"
        extra = [f"model.name={name}", *tune] + ([f"train.feature_cache={cache}"] if cache else [])
        assert main(["train", *_tune_args(dataset, out, *extra)]) == 0
        logs.append([json.loads(r)["loss"] for r in (out / "log.jsonl").read_text().splitlines()])
    assert logs[0] == logs[1]
    assert any(p.name.split("-")[2] == "prefix" for p in (tmp_path / "cache").iterdir())


def test_train_prints_the_trainable_share_and_lean_checkpoints_score_the_same(dataset, tmp_path, capsys):
    out = tmp_path / "lean"
    assert main(["train", *_tune_args(dataset, out, "model.tune_image.method=lora", "train.save_trainable_only=true")]) == 2
    assert "starts from random weights" in capsys.readouterr().err  # nothing to point to: refused up front
    extra = ["model.name=effnet-lite0-minilm", "model.tune_image.method=lora", "model.tune_image.targets=[conv1x1]",
             "train.save_trainable_only=true", "train.quiet=false"]
    assert main(["train", *_tune_args(dataset, out, *extra)]) == 0
    printed = capsys.readouterr().out
    model = load_config(out / "config.yaml")
    built = create_model(model.model, ["blue thing", "green thing", "red thing"], image_size=32)
    trainable, total = trainable_summary(built)
    assert f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3g}%)" in printed
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["trainable_only"] and ckpt["base"]["name"] == "effnet-lite0-minilm"
    assert sum(v.numel() for v in ckpt["model"].values()) < total / 4  # a fraction of the model
    trains = {n for n, p in built.named_parameters() if p.requires_grad}
    assert {k for k in ckpt["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))} \
        <= trains | {n for n, _ in built.named_buffers()}
    assert main(["eval", "--checkpoint", str(out), "-q"]) == 0  # the base weights come from the config
    lean = json.loads((out / "eval" / "metrics.json").read_text())
    final = json.loads((out / "metrics.json").read_text())
    assert lean["predictions"] == final["predictions"]


def test_merged_lora_export_matches_pytorch_on_real_images(tmp_path):
    from tinlt.data.fashion_mnist import find_idx_files

    try:
        find_idx_files("/usr/share/datasets/fashion-mnist", "test")
    except TinltError:
        pytest.skip("Fashion-MNIST is not installed (bash scripts/setup.sh installs it)")
    out = tmp_path / "run"
    argv = ["train", "-c", "demo_fmnist_lt", f"train.output_dir={out}", "train.max_steps=3", "optim.epochs=1",
            "data.train.lt_n_max=20", "data.test.per_class_limit=4", "data.num_workers=0", "train.report=false",
            "train.quiet=true", "model.tune_image.method=lora", "model.tune_image.targets=[conv1x1]",
            "model.tune_text.method=lora", "model.visual_attention=false"]
    assert main(argv) == 0
    from tinlt.deploy.export import export_checkpoint, read_metadata

    res = export_checkpoint(out, tmp_path / "m.onnx", parity_images=16, quiet=True)
    assert res.parity_source.endswith("of the test split")  # Fashion-MNIST test images
    assert res.parity_max_abs <= 1e-4
    assert read_metadata(res.onnx)["merged_parametrizations"] > 0
