"""TIN module: attention gate, prompt ensemble, logits, heads, freezing, groups, caches."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from tinlt.errors import TinltError
from tinlt.models.towers.clip_image import openclip_image_tower
from tinlt.models.towers.clip_text import OpenCLIPTextTower
from tinlt.models.towers.clip_vit import OpenCLIPViTTower
from tinlt.models.tin import TIN

CLASSES = ["strain_clamp", "suspension clamp", "cat"]
TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "art of {}")


def _clip(name="tiny-vit", seed=0, **kwargs):
    torch.manual_seed(seed)
    return open_clip.create_model(name, **kwargs).eval()


def _towers(model, name="tiny-vit"):
    return (openclip_image_tower(model.visual, name=name),
            OpenCLIPTextTower(model, open_clip.get_tokenizer(name), name=name))


def _tin(name="tiny-vit", seed=0, classes=CLASSES, **kwargs):
    model = _clip(name, seed)
    image, text = _towers(model, name)
    return TIN(image, text, classes, **kwargs), model


def _images(size, n=2, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, 3, size, size)


def _manual_class_features(model, classes, templates, name="tiny-vit"):
    """Independent path: open_clip's encode_text on full-length tokens, one prompt at a time."""
    tok = open_clip.get_tokenizer(name)
    rows = []
    with torch.no_grad():
        for c in classes:
            per_template = [F.normalize(model.encode_text(tok([t.format(c.replace("_", " "))])), dim=-1)[0]
                            for t in templates]
            rows.append(F.normalize(torch.stack(per_template).mean(0), dim=0))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_zero_gate_leaves_features_unchanged_and_gate_gets_gradient(name):
    tin, model = _tin(name)
    x = _images(tin.image_size)
    tin.eval()
    with torch.no_grad():
        with_attention = tin.encode_image(x, normalize=False)
        without = tin.image_tower(x)
        torch.testing.assert_close(with_attention, model.encode_image(x), rtol=0, atol=1e-5)
    assert torch.equal(with_attention, without)

    tin.train()
    loss = F.cross_entropy(tin(x), torch.tensor([0, 2]))
    loss.backward()
    assert tin.attention.gate.grad is not None and tin.attention.gate.grad.abs().item() > 0
    assert tin.logit_scale.grad is not None and tin.logit_scale.grad.abs().item() > 0


def test_template_ensemble_matches_manual_average():
    tin, model = _tin(templates=TEMPLATES)
    assert tin.prompts()[:3] == ["a photo of a strain clamp.", "a blurry photo of the strain clamp.",
                                 "art of strain clamp"]
    tin.eval()
    with torch.no_grad():
        got = tin.class_text_features()
    expected = _manual_class_features(model, CLASSES, TEMPLATES)
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-6)


def test_truncated_and_full_prompts_give_same_class_features():
    short, _ = _tin(templates=TEMPLATES, truncate_text=True)
    full, _ = _tin(templates=TEMPLATES, truncate_text=False)
    assert short.text_tokens.shape[1] < full.text_tokens.shape[1] == 77
    with torch.no_grad():
        torch.testing.assert_close(short.class_text_features(), full.class_text_features(), rtol=0, atol=1e-5)


def test_logits_are_scaled_cosine_and_scale_is_clamped():
    tin, model = _tin(templates=TEMPLATES)
    tin.eval()
    x = _images(32)
    with torch.no_grad():
        image = F.normalize(model.encode_image(x), dim=-1)
        text = _manual_class_features(model, CLASSES, TEMPLATES)
        torch.testing.assert_close(tin(x), (1 / 0.07) * image @ text.T, rtol=0, atol=1e-4)
        assert tin.logit_scale.item() == pytest.approx(math.log(1 / 0.07))

        big, _ = _tin(templates=TEMPLATES, logit_scale=1000.0)
        big.eval()
        torch.testing.assert_close(big(x), 100.0 * image @ text.T, rtol=0, atol=1e-4)

        custom = torch.randn(3, 32)
        torch.testing.assert_close(tin(x, text_features=custom),
                                   (1 / 0.07) * image @ F.normalize(custom, dim=-1).T, rtol=0, atol=1e-4)


def test_fixed_logit_scale_is_a_buffer():
    tin, _ = _tin(logit_scale=20.0, learn_logit_scale=False)
    assert "head.logit_scale" not in dict(tin.named_parameters())
    assert tin.state_dict()["head.logit_scale"].item() == pytest.approx(math.log(20.0))


def test_a_checkpoint_from_before_head_objects_loads():
    """Weights saved when the text head's scale was TIN's own ``logit_scale`` still load (strictly)."""
    tin, _ = _tin(logit_scale=20.0)
    old = dict(tin.state_dict())
    old["logit_scale"] = torch.tensor(math.log(30.0))
    del old["head.logit_scale"]
    fresh, _ = _tin(seed=3)
    fresh.load_state_dict(old)
    assert fresh.scale().item() == pytest.approx(30.0)


def test_linear_head_uses_normalised_image_embedding_only():
    model = _clip("tiny-rn")
    image, text = _towers(model, "tiny-rn")
    tin = TIN(image, text, CLASSES, head="linear")
    assert tin.text_tower is None and tin.logit_scale is None
    assert not any(k.startswith("text_tower.") for k in tin.state_dict())
    tin.eval()
    x = _images(64)
    with torch.no_grad():
        expected = F.linear(F.normalize(model.encode_image(x), dim=-1), tin.head.weight, tin.head.bias)
        torch.testing.assert_close(tin(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(TinltError):
        tin.class_text_features()
    head = tin.head
    tin.set_classnames(["a", "b", "c"])
    assert tin.head is head  # same count: trained head kept
    tin.set_classnames(["a", "b"])
    assert tin.head.out_features == 2 and tin(x).shape == (2, 2)


def _batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_freeze_stops_gradients_and_keeps_batchnorm_in_eval():
    tin, _ = _tin("tiny-rn")
    tin.freeze(image=True, text=True)
    tin.train()
    assert tin.training and not tin.image_tower.training and not tin.text_tower.training
    bns = _batchnorms(tin.image_tower)
    assert bns and all(not bn.training for bn in bns)
    stats = [bn.running_mean.clone() for bn in bns]
    x = _images(64, n=4)
    F.cross_entropy(tin(x), torch.tensor([0, 1, 2, 0])).backward()
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(bns, stats))
    for name, p in tin.named_parameters():
        if name.startswith(("image_tower.", "text_tower.")):
            assert not p.requires_grad and p.grad is None, name
    assert tin.attention.gate.grad is not None

    tin.freeze(image=False, text=False)
    tin.train()
    assert all(p.requires_grad for p in tin.parameters())
    assert all(bn.training for bn in bns)
    tin(x)
    assert any(not torch.equal(bn.running_mean, s) for bn, s in zip(bns, stats))


def test_unfreeze_keeps_parameters_that_open_clip_fixed():
    cfg = dict(open_clip.get_model_config("tiny-vit")["vision_cfg"], pos_embed_type="sin_cos_2d")
    model = _clip(vision_cfg=cfg)
    image, text = _towers(model)
    tin = TIN(image, text, CLASSES)
    assert not tin.image_tower.visual.positional_embedding.requires_grad
    tin.freeze(image=True)
    tin.freeze(image=False)
    assert not tin.image_tower.visual.positional_embedding.requires_grad
    assert tin.image_tower.visual.conv1.weight.requires_grad


def test_text_feature_cache():
    tin, _ = _tin()
    # trainable text tower in training: fresh features that carry gradients
    tin.train()
    a, b = tin.class_text_features(), tin.class_text_features()
    assert a.requires_grad and a is not b

    # eval without grad: cached until the weights change in place
    tin.eval()
    with torch.no_grad():
        first = tin.class_text_features()
        assert tin.class_text_features() is first
        original = {k: v.clone() for k, v in tin.state_dict().items()}
        tin.text_tower.ln_final.bias.add_(0.5)  # what an optimizer step does
        changed = tin.class_text_features()
        assert changed is not first and (changed - first).abs().max() > 1e-4
        tin.load_state_dict(original)
        torch.testing.assert_close(tin.class_text_features(), first, rtol=0, atol=0)

    # frozen text tower: cached even with grad enabled, no graph
    tin.freeze(text=True)
    tin.train()
    c = tin.class_text_features()
    assert not c.requires_grad and tin.class_text_features() is c
    tin.set_classnames(["x", "y"])
    assert tin.class_text_features().shape == (2, 32)


class _ViTWithNewProjection(OpenCLIPViTTower):
    def new_parameter_names(self):
        return {"visual.proj"}


def _check_partition(tin):
    groups = tin.param_groups()
    assert set(groups) == {"image", "text", "new"}
    listed = [id(p) for ps in groups.values() for p in ps]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in tin.parameters() if p.requires_grad}
    return tin.named_param_groups()


def test_param_groups_partition_trainable_parameters():
    model = _clip()
    image = _ViTWithNewProjection(model.visual, name="tiny-vit")
    text = OpenCLIPTextTower(model, open_clip.get_tokenizer("tiny-vit"), name="tiny-vit")
    tin = TIN(image, text, CLASSES)
    named = {g: {n for n, _ in items} for g, items in _check_partition(tin).items()}
    assert "image_tower.visual.proj" in named["new"]
    assert {"attention.gate", "head.logit_scale", "attention.lka.conv0.weight"} <= named["new"]
    assert "image_tower.visual.conv1.weight" in named["image"]
    assert "text_tower.token_embedding.weight" in named["text"]
    assert all(n.startswith("image_tower.") for n in named["image"])
    assert all(n.startswith("text_tower.") for n in named["text"])

    tin.freeze(image=True, text=True)
    named = {g: {n for n, _ in items} for g, items in _check_partition(tin).items()}
    assert named["image"] == set() and named["text"] == set()
    assert "image_tower.visual.proj" in named["new"] and image.visual.proj.requires_grad


def test_state_dict_has_no_tokens_or_caches():
    tin, _ = _tin(templates=TEMPLATES)
    keys = set(tin.state_dict())
    with torch.no_grad():
        tin.eval()
        tin.class_text_features()
    assert set(tin.state_dict()) == keys
    assert not any("text_tokens" in k for k in keys)
    other, _ = _tin(seed=9, classes=["a", "b"])
    other.load_state_dict(tin.state_dict())  # strict: same keys despite other classes
    other.set_classnames(CLASSES, TEMPLATES)
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other.class_text_features(), tin.class_text_features(), rtol=0, atol=0)


def test_set_classnames_changes_logits_width():
    tin, _ = _tin()
    x = _images(32)
    tin.set_classnames(["one_class", "two"], templates=["{} photo"])
    assert tin.prompts() == ["one class photo", "two photo"]
    assert tin.templates == ("{} photo",)
    with torch.no_grad():
        assert tin(x).shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(head="mlp"), "model.head"),
        (dict(templates=("no placeholder",)), "model.templates"),
        (dict(templates=()), "model.templates"),
        (dict(logit_scale=0.0), "model.logit_scale"),
        (dict(classes=[]), "class list"),
    ],
)
def test_bad_arguments_are_tinlt_errors(kwargs, match):
    with pytest.raises(TinltError, match=match):
        _tin(**kwargs)


def test_freeze_bn_stats_keeps_running_statistics_while_affine_weights_train():
    from tinlt.models.factory import create_model

    torch.manual_seed(0)
    model = create_model({"name": "tiny-rn", "freeze_bn_stats": True}, CLASSES, image_size=32)
    model.train()
    bns = [m for m in model.image_tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns) and model.attention.training
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    weights = bns[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = _images(32, n=4)
    x0 = x[:1]
    with torch.no_grad():  # eval-mode BN: an image's embedding does not depend on its batch
        alone = model.encode_image(x0)
        in_batch = model.encode_image(x)[:1]
    torch.testing.assert_close(alone, in_batch, rtol=0, atol=1e-5)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(bns[0].weight.detach(), weights)

    plain = create_model({"name": "tiny-rn"}, CLASSES, image_size=32).train()
    assert all(m.training for m in plain.image_tower.modules() if isinstance(m, torch.nn.BatchNorm2d))
