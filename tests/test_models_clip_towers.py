"""open_clip towers: parity with open_clip's own encoders, truncation, weight loading."""

import warnings

import open_clip
import pytest
import torch

from tinlt.errors import TinltError
from tinlt.models.towers.clip_image import openclip_image_tower
from tinlt.models.towers.clip_text import OpenCLIPTextTower
from tinlt.models.towers.clip_weights import is_torchscript_archive, load_openclip_model, register_model_configs
from tinlt.models.towers.openclip import create_openclip_towers

register_model_configs()  # tiny-vit / tiny-rn, as the towers do on first use
EOT = 49407  # CLIP tokenizer's end-of-text id (the largest id)
PROMPTS = ["a photo of a cat.", "dog", "a photo of a strain clamp on a transmission line, seen from below"]


def _towers(model, name):
    return openclip_image_tower(model.visual, name=name), OpenCLIPTextTower(model, open_clip.get_tokenizer(name), name=name)


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def clip(request):
    torch.manual_seed(0)
    model = open_clip.create_model(request.param).eval()
    return request.param, model


def test_tiny_configs_registered_with_open_clip():
    names = open_clip.list_models()
    assert "tiny-vit" in names and "tiny-rn" in names
    cfg = open_clip.get_model_config("tiny-vit")
    assert cfg["vision_cfg"]["patch_size"] == 8 and cfg["text_cfg"]["vocab_size"] == 49408


def test_image_tower_matches_encode_image(clip):
    name, model = clip
    image, _ = _towers(model, name)
    x = torch.randn(3, 3, image.image_size, image.image_size)
    with torch.no_grad():
        expected = model.encode_image(x)
        fmap, aside = image.forward_split(x)
        got = image.forward_merge(fmap, aside)
    assert fmap.shape[:2] == (3, image.feature_channels)
    assert got.shape == (3, image.output_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(image(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, shortcut", [
    ({}, True),  # CLIP's class-token pooling
    ({"pool_type": "avg"}, False),  # mean of the patch tokens: every token's output counts
    ({"ls_init_value": 0.5}, True),  # LayerScale inside the block
    ({"final_ln_after_pool": True}, True),
])
def test_class_token_only_last_block_is_exact(overrides, shortcut):
    cfg = open_clip.get_model_config("tiny-vit")
    torch.manual_seed(3)
    model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg={**cfg["vision_cfg"], **overrides},
                           text_cfg=cfg["text_cfg"]).eval()
    image, _ = _towers(model, "tiny-vit")
    assert image.pooled_token_only is shortcut
    x = torch.randn(3, 3, 32, 32)
    fmap, aside = image.forward_split(x)
    fmap = fmap.detach().requires_grad_(True)
    got = image.forward_merge(fmap, aside)
    (grad,) = torch.autograd.grad(got.square().sum(), fmap)
    image.pooled_token_only = False  # all tokens through the whole block, open_clip's pooling
    full = image.forward_merge(fmap, aside)
    (grad_full,) = torch.autograd.grad(full.square().sum(), fmap)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, grad_full, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(full, model.encode_image(x), rtol=0, atol=1e-5)


def test_vit_map_is_patch_grid_before_last_block():
    torch.manual_seed(1)
    model = open_clip.create_model("tiny-vit").eval()
    image, _ = _towers(model, "tiny-vit")
    x = torch.randn(2, 3, 32, 32)
    n_blocks = len(model.visual.transformer.resblocks)
    with torch.no_grad():
        fmap, cls_token = image.forward_split(x)
        # open_clip's own path to the same tokens: intermediates after block n-2, NCHW
        ref = model.visual.forward_intermediates(
            x, indices=[n_blocks - 2], intermediates_only=True, output_extra_tokens=True
        )
    assert fmap.shape == (2, 64, 4, 4) and cls_token.shape == (2, 1, 64)
    torch.testing.assert_close(fmap, ref["image_intermediates"][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(cls_token, ref["image_intermediates_prefix"][0], rtol=0, atol=1e-6)


def test_changing_the_map_changes_the_embedding(clip):
    # the point of splitting a ViT before its last block: the map still reaches the pooled token
    name, model = clip
    image, _ = _towers(model, name)
    x = torch.randn(2, 3, image.image_size, image.image_size)
    with torch.no_grad():
        fmap, aside = image.forward_split(x)
        base = image.forward_merge(fmap, aside)
        bumped = fmap.clone()
        # a random direction (a constant shift of one token would vanish in the block's LayerNorm)
        bumped[:, :, 0, 0] += torch.randn(2, fmap.shape[1])
        moved = image.forward_merge(bumped, aside)
    assert (moved - base).abs().max() > 1e-4


def test_vit_head_needs_class_token_and_native_size():
    model = open_clip.create_model("tiny-vit").eval()
    image, _ = _towers(model, "tiny-vit")
    with pytest.raises(TinltError, match="class token"):
        image.forward_head(torch.randn(1, 64, 4, 4))
    with pytest.raises(TinltError, match="32x32"):
        image.forward_split(torch.randn(1, 3, 48, 48))


def test_resnet_rejects_inputs_its_attention_pool_cannot_take():
    model = open_clip.create_model("tiny-rn").eval()
    image, _ = _towers(model, "tiny-rn")
    with pytest.raises(TinltError, match="64x64"):
        image(torch.randn(1, 3, 96, 96))


def test_text_truncation_is_exact_and_matches_encode_text(clip):
    name, model = clip
    _, text = _towers(model, name)
    assert text.truncation_exact
    full = text.tokenize(PROMPTS, truncate=False)
    short = text.tokenize(PROMPTS, truncate=True)
    assert full.shape == (3, 77)
    # the longest prompt's EOT is the last kept column
    eot_positions = [row.tolist().index(EOT) for row in full]
    assert short.shape == (3, max(eot_positions) + 1)
    assert torch.equal(short, full[:, : short.shape[1]])
    with torch.no_grad():
        expected = model.encode_text(full)
        torch.testing.assert_close(text(short), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(text(full), expected, rtol=0, atol=1e-5)


def test_custom_text_clip_truncation_exact():
    torch.manual_seed(2)
    model = open_clip.create_model("tiny-vit", force_custom_text=True).eval()
    _, text = _towers(model, "tiny-vit")
    assert text.text is model.text and text.truncation_exact
    full = text.tokenize(PROMPTS, truncate=False)
    short = text.tokenize(PROMPTS, truncate=True)
    assert short.shape[1] < 77
    with torch.no_grad():
        torch.testing.assert_close(text(short), model.encode_text(full), rtol=0, atol=1e-5)


def _text_cfg(**extra):
    cfg = dict(open_clip.get_model_config("tiny-vit")["text_cfg"])
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(text_cfg=_text_cfg(no_causal_mask=True)),  # bidirectional: padding changes the output
        dict(text_cfg=_text_cfg(pool_type="last")),  # pooled position moves with the length
        dict(text_cfg=_text_cfg(embed_cls=True), force_custom_text=True),  # appended class token
    ],
)
def test_inexact_truncation_falls_back_to_full_context(kwargs):
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-vit", **kwargs).eval()
    _, text = _towers(model, "tiny-vit")
    assert not text.truncation_exact
    tokens = text.tokenize(PROMPTS, truncate=True)
    assert tokens.shape == (3, 77)
    with torch.no_grad():
        torch.testing.assert_close(text(tokens), model.encode_text(tokens), rtol=0, atol=1e-5)
        # the fallback matters: cutting the padding really would change these towers
        cut = tokens[:, : max(r.tolist().index(EOT) for r in tokens) + 1]
        assert (text(cut) - text(tokens)).abs().max() > 1e-4


# -- weight loading ---------------------------------------------------------------------

def _reference(name="tiny-vit", seed=5, **kwargs):
    torch.manual_seed(seed)
    return open_clip.create_model(name, **kwargs).eval()


def _outputs(model, size):
    torch.manual_seed(6)
    x = torch.randn(2, 3, size, size)
    tokens = open_clip.get_tokenizer("tiny-vit")(PROMPTS[:2])
    with torch.no_grad():
        return model.encode_image(x), model.encode_text(tokens)


def _assert_same_outputs(a, b, size):
    for got, want in zip(_outputs(a, size), _outputs(b, size)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
def test_state_dict_round_trip(tmp_path, suffix):
    ref = _reference("tiny-rn")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    elif suffix == ".pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    else:
        torch.save(ref.state_dict(), path)
    loaded = load_openclip_model("tiny-rn", str(path)).eval()
    _assert_same_outputs(loaded, ref, 64)
    fresh = load_openclip_model("tiny-rn", "").eval()
    assert (_outputs(fresh, 64)[0] - _outputs(ref, 64)[0]).abs().max() > 1e-4


def test_openai_torchscript_archive_round_trip(tmp_path):
    # OpenAI ships TorchScript archives of QuickGELU models; build one the same way
    ref = _reference("tiny-vit", force_quick_gelu=True)
    images, tokens = torch.ones(2, 3, 32, 32), torch.zeros(2, 77, dtype=torch.int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            ref, dict(encode_image=(images,), encode_text=(tokens,)), check_trace=False
        )
        path = tmp_path / "ViT-tiny.pt"
        torch.jit.save(traced, str(path))
    assert is_torchscript_archive(path)
    loaded = load_openclip_model("tiny-vit", str(path)).eval()
    _assert_same_outputs(loaded, ref, 32)


def test_towers_from_file_match_saved_model(tmp_path):
    ref = _reference("tiny-vit")
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    image, text = create_openclip_towers("tiny-vit", str(path))
    image.eval(), text.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(image(x), ref.encode_image(x), rtol=0, atol=1e-5)
        tokens = text.tokenize(PROMPTS)
        torch.testing.assert_close(text(tokens), ref.encode_text(text.tokenize(PROMPTS, truncate=False)),
                                   rtol=0, atol=1e-5)
    assert image.image_mean == tuple(open_clip.OPENAI_DATASET_MEAN)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "weights.pt"
    with pytest.raises(TinltError) as err:
        load_openclip_model("tiny-vit", str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_wrong_architecture_or_corrupt_file_is_one_line_error(tmp_path):
    path = tmp_path / "rn.bin"
    torch.save(_reference("tiny-rn").state_dict(), path)
    with pytest.raises(TinltError) as err:
        load_openclip_model("tiny-vit", str(path))
    assert str(path) in str(err.value) and "tiny-vit" in str(err.value) and "\n" not in str(err.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TinltError, match="junk.safetensors"):
        load_openclip_model("tiny-vit", str(junk))


def test_unknown_tag_lists_tags():
    with pytest.raises(TinltError) as err:
        load_openclip_model("RN50", "not_a_tag")
    msg = str(err.value)
    assert "not_a_tag" in msg and "openai" in msg and "\n" not in msg


def test_tag_that_cannot_be_fetched(monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable\nsecond line")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(TinltError) as err:
        load_openclip_model("RN50", "openai")
    msg = str(err.value)
    assert "'openai'" in msg and "RN50" in msg and "model.pretrained=/path/to/file" in msg and "\n" not in msg


def test_unknown_model_name():
    with pytest.raises(TinltError, match="tiny-vitt"):
        load_openclip_model("tiny-vitt")
