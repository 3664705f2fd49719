"""What each lightweight tuning method computes once its parameters have moved.

Step 0 tells little: every zero-initialised method is the identity there. Here each
method's new parameters are set to non-zero values first, and the tuned layer or block is
compared with the same computation written out by hand from the untouched original
weights and torch's own modules (``nn.MultiheadAttention``, ``nn.LayerNorm``, open_clip's
blocks): which rows of a fused q/k/v projection LoRA moves, SSF's scale-and-shift of a
bias, where AdaptFormer adds its branch, how deep visual prompts are replaced, and where
CoOp's context words go.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinlt.models.factory import create_model
from tinlt.models.tuning import tune_tower

CLASSES = ["dog", "cat", "red bird"]


def _tower(**tune) -> nn.Module:
    torch.manual_seed(0)
    model = create_model({"name": "tiny-vit", "visual_attention": False, "tune_image": tune}, CLASSES, image_size=32)
    return model.image_tower.eval()


def _randomise(params, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _original(module: nn.Module, name: str) -> torch.Tensor:
    """A parametrized tensor's stored original (what the layer holds before the update)."""
    return module.parametrizations[name].original.detach().clone()


def _tokens(batch_first: bool, n: int = 5, d: int = 64) -> torch.Tensor:
    x = torch.randn(2, n, d, generator=torch.Generator().manual_seed(7))
    return x if batch_first else x.transpose(0, 1)


# --------------------------------------------------------------------------- LoRA on a fused q/k/v


@pytest.mark.parametrize("targets", [["k"], ["q", "v"], ["v"]])
def test_lora_on_a_fused_in_projection_moves_only_the_targeted_rows(targets):
    tower = _tower(method="lora", rank=2, alpha=6.0, targets=targets)
    attn = tower.visual.transformer.resblocks[0].attn
    d = attn.embed_dim
    w0 = _original(attn, "in_proj_weight")
    _randomise([p for n, p in attn.named_parameters() if ".B." in n or ".A." in n])
    with torch.no_grad():
        delta = attn.in_proj_weight - w0
    rows = {"q": slice(0, d), "k": slice(d, 2 * d), "v": slice(2 * d, 3 * d)}
    for t, r in rows.items():
        moved = delta[r].abs().max().item()
        if t in targets:
            assert moved > 1e-3, f"{t} rows did not move"
            assert torch.linalg.matrix_rank(delta[r]).item() == 2  # a rank-2 update of its own
        else:
            assert moved == 0.0, f"{t} rows moved though only {targets} are targeted"
    # the update scales with alpha / rank: halving alpha halves it
    update = attn.parametrizations.in_proj_weight[0]
    update.scale /= 2
    with torch.no_grad():
        torch.testing.assert_close(attn.in_proj_weight - w0, delta / 2, rtol=1e-5, atol=1e-6)
    update.scale *= 2
    # torch's own attention with the updated weight written in by hand gives the same block output
    block = tower.visual.transformer.resblocks[0]
    plain = _tower().visual.transformer.resblocks[0]  # the same seed, no LoRA: the same original weights
    assert torch.equal(plain.attn.in_proj_weight, w0)
    with torch.no_grad():
        plain.attn.in_proj_weight.copy_(w0 + delta)
        x = _tokens(tower.visual.transformer.batch_first, d=d)
        torch.testing.assert_close(block(x), plain(x), rtol=0, atol=1e-5)
        plain.attn.in_proj_weight.copy_(w0)
        assert (block(x) - plain(x)).abs().max() > 1e-4  # and the update matters


# --------------------------------------------------------------------------- SSF


def test_ssf_scales_and_shifts_each_layers_output():
    tower = _tower(method="ssf")
    block = tower.visual.transformer.resblocks[0]
    layers = {"linear": block.mlp.c_fc, "layernorm": block.ln_1}
    originals = {k: (_original(m, "weight"), _original(m, "bias")) for k, m in layers.items()}
    ssf = {k: m.parametrizations.weight[0].ssf for k, m in layers.items()}
    _randomise([p for s in ssf.values() for p in s.parameters()], seed=3)
    x = torch.randn(4, block.ln_1.normalized_shape[0], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for kind, m in layers.items():
            w, b = originals[kind]
            s, t = ssf[kind].scale, ssf[kind].shift
            plain = F.linear(x, w, b) if kind == "linear" else F.layer_norm(x, (x.shape[-1],), w, b, m.eps)
            torch.testing.assert_close(m(x), s * plain + t, rtol=0, atol=1e-5)  # s * (Wx + b) + t


def test_ssf_on_the_fused_in_projection_and_on_batchnorm():
    tower = _tower(method="ssf")
    attn = tower.visual.transformer.resblocks[0].attn
    w0, b0 = _original(attn, "in_proj_weight"), _original(attn, "in_proj_bias")
    ssf = attn.parametrizations.in_proj_weight[0].ssf
    _randomise(ssf.parameters(), seed=4)
    with torch.no_grad():
        s, t = ssf.scale, ssf.shift
        torch.testing.assert_close(attn.in_proj_weight, s[:, None] * w0, rtol=0, atol=1e-6)
        torch.testing.assert_close(attn.in_proj_bias, s * b0 + t, rtol=0, atol=1e-6)

    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0]))
    from tinlt.models.tuning.ssf import add_ssf

    w0, b0 = bn.weight.detach().clone(), bn.bias.detach().clone()
    made = add_ssf(bn, "weight", "bias")
    _randomise(made.parameters(), seed=5)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = F.batch_norm(x, bn.running_mean, bn.running_var, w0, b0, training=False, eps=bn.eps)
        torch.testing.assert_close(bn(x), made.scale.view(1, -1, 1, 1) * ref + made.shift.view(1, -1, 1, 1),
                                   rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- AdaptFormer


def _adapter_by_hand(adapter, x):
    return adapter.up(torch.relu(adapter.down(F.layer_norm(x, (x.shape[-1],), adapter.ln.weight, adapter.ln.bias,
                                                           adapter.ln.eps)))) * adapter.scale


def test_adaptformer_branch_sits_beside_the_mlp_of_a_pre_norm_block():
    """LIFT's placement: x' = x + attn(ln_1(x)); out = x' + mlp(ln_2(x')) + adapter(x')."""
    tower = _tower(method="adaptformer", bottleneck=4)
    block = tower.visual.transformer.resblocks[1]
    _randomise(block.adaptformer.parameters(), seed=8)
    batch_first = tower.visual.transformer.batch_first
    x = _tokens(batch_first, d=block.attn.embed_dim)
    with torch.no_grad():
        h = block.ln_1(x)
        a = block.attn(h, h, h, need_weights=False)[0]
        x1 = x + block.ls_1(a)
        # .forward: the hooks that attach the adapter must not run inside the hand computation
        mlp = block.ls_2(block.mlp.forward(block.ln_2.forward(x1)))
        expect = x1 + mlp + _adapter_by_hand(block.adaptformer, x1)
        torch.testing.assert_close(block(x), expect, rtol=0, atol=1e-5)
        # reading the block's input instead of x' (a plausible misplacement) gives another answer
        wrong = x1 + mlp + _adapter_by_hand(block.adaptformer, x)
        assert (block(x) - wrong).abs().max() > 1e-3


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # transformers' layers return a tuple or a tensor


def test_adaptformer_branch_in_a_post_norm_bert_block():
    """MiniLM: out = LN(dense(intermediate(a)) + a + adapter(a)), a = the attention's output."""
    from tinlt.models.towers.offline import MiniLMTextTower

    torch.manual_seed(0)
    tower = MiniLMTextTower(embed_dim=16, pretrained=False).eval()
    tune_tower(tower, {"method": "adaptformer", "bottleneck": 4}, num_classes=3, key="text")
    layer = tower.bert.encoder.layer[0]
    _randomise(layer.adaptformer.parameters(), seed=9)
    width = layer.attention.self.query.in_features
    h = torch.randn(2, 6, width, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        a = _first(layer.attention(h))
        out = layer.output
        expect = out.LayerNorm.forward(out.dense(layer.intermediate(a)) + a + _adapter_by_hand(layer.adaptformer, a))
        got = _first(layer(h))
        torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- VPT


def test_visual_prompts_insert_then_replace_by_hand():
    from tinlt.models.tuning.vpt import VisualPrompts

    n, d = 2, 4
    deep = VisualPrompts(n, d, blocks=3, deep=True, patch_area=4)
    shallow = VisualPrompts(n, d, blocks=3, deep=False, patch_area=4)
    with torch.no_grad():
        for vp in (deep, shallow):
            vp.tokens.copy_(torch.arange(vp.tokens.numel(), dtype=torch.float32).view_as(vp.tokens) + 100)
    cls, patches = torch.full((1, 1, d), -1.0), torch.arange(3 * d, dtype=torch.float32).view(1, 3, d)
    x0 = torch.cat([cls, patches], 1)
    y0 = deep.insert(x0, 0)  # before block 0: [class, prompts of block 0, patches]
    torch.testing.assert_close(y0, torch.cat([cls, deep.tokens[0][None], patches], 1), rtol=0, atol=0)
    out0 = y0 * 2  # what a block would have made of them
    y1 = deep.insert(out0, 1)  # before block 1: block 0's prompt outputs are dropped, block 1's prompts in
    torch.testing.assert_close(y1, torch.cat([out0[:, :1], deep.tokens[1][None], out0[:, 1 + n:]], 1), rtol=0, atol=0)
    assert shallow.insert(out0, 1) is out0  # shallow: the prompts travel through untouched


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_tower_output_equals_the_blocks_run_by_hand(deep):
    tower = _tower(method="vpt", prompts=3, deep=deep)
    v, vp = tower.visual, tower.prompts
    _randomise([vp.tokens], seed=11)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        x = v._embeds(images)
        for i, blk in enumerate(v.transformer.resblocks):
            if i == 0 or deep:
                rest = x[:, 1:] if i == 0 else x[:, 1 + vp.n:]
                x = torch.cat([x[:, :1], vp.tokens[i if deep else 0].expand(x.shape[0], -1, -1), rest], 1)
            x = blk(x) if v.transformer.batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        pooled, _ = v._pool(torch.cat([x[:, :1], x[:, 1 + vp.n:]], 1))  # pooling sees class + patches
        expect = pooled @ v.proj
        torch.testing.assert_close(tower(images), expect, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- CoOp


@pytest.mark.parametrize("position,expect", [
    ("end", "X X X X red bird."),
    ("front", "red bird X X X X."),
    ("middle", "X X red bird X X."),
])
def test_coop_places_the_context_around_the_class_name(position, expect):
    torch.manual_seed(0)
    model = create_model({"name": "tiny-vit", "coop": {"n_ctx": 4, "position": position}}, CLASSES, image_size=32)
    assert model.prompts()[2] == expect
    coop, text = model.coop, model.text_tower
    _randomise([coop.ctx], seed=13)
    tokens = text.tokenize([expect], truncate=False)
    ids = text.token_ids(tokens)[0]
    emb = text.token_embeddings(tokens)
    filled = coop.fill(text.token_ids(tokens), emb)[0]
    slots = torch.nonzero(ids == coop.placeholder_id).flatten().tolist()
    name_ids = [i for i in text.token_ids(text.tokenize(["red bird"], truncate=False))[0].tolist()
                if i not in set(text.token_ids(text.tokenize([""], truncate=False))[0].tolist())]
    name_at = next(k for k in range(len(ids)) if ids[k:k + len(name_ids)].tolist() == name_ids)
    before = [s for s in slots if s < name_at]
    assert len(slots) == 4 and len(before) == {"end": 4, "front": 0, "middle": 2}[position]
    for k, s in enumerate(slots):  # the k-th placeholder holds the k-th context vector
        torch.testing.assert_close(filled[s], coop.ctx[k].to(filled.dtype), rtol=0, atol=0)
    others = [i for i in range(len(ids)) if i not in slots]
    torch.testing.assert_close(filled[others], emb[0, others], rtol=0, atol=0)
    # and the class features are the text tower run on exactly those embeddings
    with torch.no_grad():
        by_hand = F.normalize(text(tokens, embeddings=filled[None]), dim=-1)[0]
        row = model.class_text_features()[2]
    torch.testing.assert_close(row, by_hand, rtol=0, atol=1e-5)
