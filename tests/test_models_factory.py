"""Model factory: config -> TIN, name resolution, transforms, errors."""

import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tinlt.config import Config, ModelConfig, load_config
from tinlt.errors import TinltError
from tinlt.models import registry
from tinlt.models.towers.clip_image import OpenCLIPImageTower, openclip_image_tower
from tinlt.models.towers.clip_text import OpenCLIPTextTower
from tinlt.models.factory import create_model, create_model_and_transforms, list_models
from tinlt.models.tin import TIN

CLASSES = ["strain_clamp", "cat"]


def test_create_model_from_run_config():
    cfg = load_config(None, ["model.name=tiny-vit", "model.freeze_text=true", "model.logit_scale=10",
                             "model.templates=['a {} photo','a {}']"])
    model = create_model(cfg.model, CLASSES)
    assert isinstance(model, TIN) and isinstance(model.image_tower, OpenCLIPImageTower)
    assert isinstance(model.text_tower, OpenCLIPTextTower)
    assert model.templates == ("a {} photo", "a {}") and model.num_classes == 2
    assert model.attention is not None
    assert model.logit_scale.item() == pytest.approx(np.log(10.0))
    assert not any(p.requires_grad for p in model.text_tower.parameters())
    assert all(p.requires_grad for p in model.image_tower.parameters())
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_create_model_from_dict_and_dataclass():
    model = create_model({"name": "tiny-rn", "head": "linear", "visual_attention": False,
                          "freeze_image": True}, CLASSES)
    assert model.head_type == "linear" and model.attention is None and model.text_tower is None
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    assert [n for n, _ in model.named_param_groups()["new"]] == ["head.weight", "head.bias"]
    model = create_model(ModelConfig(name="tiny-rn", truncate_text=False), CLASSES)
    assert model.text_tokens.shape[1] == 77


def test_grad_checkpointing_flag_reaches_the_towers():
    model = create_model({"name": "tiny-vit", "grad_checkpointing": True}, CLASSES)
    assert model.image_tower.visual.transformer.grad_checkpointing
    assert model.text_tower.transformer.grad_checkpointing
    model.train()
    x = torch.randn(2, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert model.image_tower.visual.conv1.weight.grad is not None


def test_pretrained_file_and_missing_file(tmp_path):
    torch.manual_seed(3)
    ref = open_clip.create_model("tiny-vit").eval()
    path = tmp_path / "tiny.bin"
    torch.save(ref.state_dict(), path)
    model = create_model({"name": "tiny-vit", "pretrained": str(path)}, CLASSES).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x, normalize=False), ref.encode_image(x), rtol=0, atol=1e-5)
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(TinltError) as err:
        create_model({"name": "tiny-vit", "pretrained": str(missing)}, CLASSES)
    assert str(missing) in str(err.value) and "model.pretrained" in str(err.value)


def test_unknown_model_suggests_close_names():
    with pytest.raises(TinltError) as err:
        create_model({"name": "tiny_vit"}, CLASSES)
    msg = str(err.value)
    assert "tiny_vit" in msg and "tiny-vit" in msg and "model.name" in msg and "\n" not in msg
    with pytest.raises(TinltError, match="ViT-B-32"):
        create_model({"name": "vit-b-32x"}, CLASSES)


def test_unknown_config_key_and_bad_value():
    with pytest.raises(TinltError, match="model.visual_attention"):
        create_model({"name": "tiny-vit", "visual_atention": False}, CLASSES)
    with pytest.raises(TinltError, match="model.head"):
        create_model({"name": "tiny-vit", "head": "mlp"}, CLASSES)


def test_list_models_has_tiny_configs_and_registered_pairs(monkeypatch):
    monkeypatch.setitem(registry._BUILDERS, "test-pair", lambda cfg: None)
    names = list_models()
    assert {"tiny-vit", "tiny-rn", "ViT-B-32", "RN50", "test-pair"} <= set(names)
    assert len(names) == len(set(names))


def test_registry_comes_before_open_clip(monkeypatch):
    seen = {}

    def builder(cfg, image_size=None):
        seen["cfg"] = cfg
        torch.manual_seed(0)
        clip = open_clip.create_model("tiny-rn")
        return openclip_image_tower(clip.visual), OpenCLIPTextTower(clip, open_clip.get_tokenizer("tiny-rn"))

    monkeypatch.setitem(registry._BUILDERS, "tiny-vit", registry._Entry(builder, "test", []))  # shadows open_clip
    model = create_model({"name": "tiny-vit", "embed_dim": 64}, CLASSES)
    assert model.image_size == 64  # tiny-rn's size: the registered builder was used
    assert seen["cfg"].embed_dim == 64 and seen["cfg"].pretrained_image is True


def test_missing_offline_module_does_not_break_open_clip(monkeypatch):
    from tinlt.models import builtin, towers

    for name in registry.registered_names():
        monkeypatch.delitem(registry._BUILDERS, name)  # as if the offline module had never registered
    monkeypatch.setattr(builtin, "UNAVAILABLE", {})
    monkeypatch.setitem(sys.modules, "tinlt.models.towers.offline", None)  # import now raises ImportError
    builtin._import_all(towers)
    assert "tinlt.models.towers.offline" in builtin.UNAVAILABLE
    model = create_model({"name": "tiny-vit"}, CLASSES)
    assert isinstance(model, TIN)
    with pytest.raises(TinltError, match="towers unavailable: tinlt.models.towers.offline"):
        create_model({"name": "no-such-model"}, CLASSES)


def test_create_model_and_transforms():
    model, train_tf, eval_tf = create_model_and_transforms(
        "tiny-rn", classnames=CLASSES, augment="paper", templates=["a photo of a {}."]
    )
    assert isinstance(model, TIN) and model.image_size == 64
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    x_eval, x_train = eval_tf(img), train_tf(img)
    assert x_eval.shape == x_train.shape == (3, 64, 64)
    # eval transform normalises with the tower's mean/std
    assert torch.isfinite(x_eval).all()
    model.eval()
    with torch.no_grad():
        assert model(torch.stack([x_eval, x_train])).shape == (2, 2)
    with pytest.raises(TinltError, match="model.visual_atention"):
        create_model_and_transforms("tiny-rn", classnames=CLASSES, visual_atention=False)


def test_image_size_override_rebuilds_vit_grid():
    model, _, eval_tf = create_model_and_transforms("tiny-vit", classnames=CLASSES, image_size=48)
    assert model.image_size == 48
    img = Image.fromarray(np.zeros((50, 50, 3), dtype=np.uint8))
    assert eval_tf(img).shape == (3, 48, 48)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 2)


def test_full_config_defaults_are_accepted():
    cfg = OmegaConf.structured(Config)
    cfg.model.name = "tiny-vit"
    assert isinstance(create_model(cfg.model, CLASSES), TIN)


def test_freeze_token_embeddings_fixes_only_the_vocabulary_table():
    import json

    from tinlt.models.factory import create_model

    spec = json.loads((Path(__file__).parents[1] / "src/tinlt/models/model_configs/tiny-vit.json").read_text())
    vocab, width = spec["text_cfg"]["vocab_size"], spec["text_cfg"]["width"]
    full = create_model({"name": "tiny-vit"}, ["cat", "dog"])
    lean = create_model({"name": "tiny-vit", "freeze_token_embeddings": True}, ["cat", "dog"])
    n = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert n(full) - n(lean) == vocab * width
    frozen = [name for name, p in lean.named_parameters() if not p.requires_grad]
    assert frozen == [name for name in frozen if "token_embedding" in name] and frozen
    assert lean.text_tower is not None and lean.logit_scale.requires_grad


def test_embed_dim_zero_needs_a_head_without_text_rows():
    """Without a projection the offline towers give 1280-d images and 384-d prompts: a text head or a
    text-initialised cosine head cannot compare them (one-line error naming the key); a linear head can."""
    towers = {"name": "effnet-lite0-minilm", "embed_dim": 0, "pretrained_image": False, "pretrained_text": False,
              "visual_attention": False}
    for head in ("text", "cosine"):
        with pytest.raises(TinltError, match=r"model.embed_dim = 0: the image tower gives 1280-d .* text tower 384-d"):
            create_model({**towers, "head": head}, CLASSES)
    model = create_model({**towers, "head": "linear"}, CLASSES).eval()
    weights = [p for n, p in model.named_parameters() if p.ndim == 2 and p.shape[0] == len(CLASSES)]
    assert [tuple(w.shape) for w in weights] == [(2, 1280)]
    with torch.no_grad():
        assert model(torch.randn(3, 3, 64, 64)).shape == (3, 2)
