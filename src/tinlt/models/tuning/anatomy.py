"""Where a tower's parts are: its blocks in forward order, what comes after them, and the
layers each tuning method targets inside a block.

One function per tower family, so a tuning method never needs to know which tower it
is in: open_clip ViTs and text transformers (``clip`` blocks: fused q/k/v
``nn.MultiheadAttention``, ``c_fc``/``c_proj`` MLP), MiniLM (``bert`` blocks: separate
query/key/value Linear layers, post-LN), open_clip ModifiedResNet and EfficientNet-Lite
(``conv`` blocks: bottlenecks / inverted residuals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from ...errors import TinltError


@dataclass
class Anatomy:
    family: str  # "clip" | "bert" | "conv"
    blocks: list[nn.Module]  # forward order
    tail: list[nn.Module] = field(default_factory=list)  # after the last block: norms, pooling
    tail_params: list[tuple[nn.Module, str]] = field(default_factory=list)  # bare parameters there (projections)

    @property
    def width(self) -> int:
        """The residual width of a transformer block (0 for conv towers)."""
        if self.family == "clip":
            return self.blocks[0].attn.embed_dim
        if self.family == "bert":
            return self.blocks[0].attention.self.query.in_features
        return 0


def _clip_transformer(owner: nn.Module, transformer: nn.Module, tail_names, param_names) -> Anatomy:
    tail = [getattr(owner, n) for n in tail_names if isinstance(getattr(owner, n, None), nn.Module)]
    params = [(owner, n) for n in param_names if isinstance(getattr(owner, n, None), nn.Parameter)]
    params += [(getattr(owner, n), "weight") for n in param_names if isinstance(getattr(owner, n, None), nn.Linear)]
    return Anatomy("clip", list(transformer.resblocks), tail, params)


def anatomy(tower: nn.Module) -> Anatomy:
    """The parts of an image or text tower that tuning methods address."""
    from ..clip_towers import OpenCLIPImageTower, OpenCLIPTextTower
    from ..offline import EfficientNetLiteTower, MiniLMTextTower

    if isinstance(tower, OpenCLIPImageTower):
        v = tower.visual
        if tower.kind == "vit":
            return _clip_transformer(v, v.transformer, ("ln_post", "attn_pool"), ("proj",))
        blocks = [b for layer in (v.layer1, v.layer2, v.layer3, v.layer4) for b in layer]
        return Anatomy("conv", blocks, [v.attnpool])
    if isinstance(tower, OpenCLIPTextTower):
        if tower.text is None:
            return _clip_transformer(tower, tower.transformer, ("ln_final",), ("text_projection",))
        text = tower.text
        if not hasattr(text, "transformer") or not hasattr(text.transformer, "resblocks"):
            raise TinltError(f"model '{tower.name}': this text tower ({type(text).__name__}) has no open_clip "
                             "transformer blocks to tune; use model.tune_text.method full or frozen")
        return _clip_transformer(text, text.transformer, ("ln_final",), ("text_projection",))
    if isinstance(tower, EfficientNetLiteTower):
        trunk = tower.trunk
        return Anatomy("conv", [b for stage in trunk.blocks for b in stage], [trunk.conv_head, trunk.bn2])
    if isinstance(tower, MiniLMTextTower):
        return Anatomy("bert", list(tower.bert.encoder.layer))
    raise TinltError(f"tuning methods do not know the tower {type(tower).__name__}; use full or frozen")


def attention_targets(block: nn.Module, family: str, names) -> list[tuple[nn.Module, str, Optional[slice]]]:
    """(module, parameter, rows) that LoRA target names q / k / v / o / mlp mean in one block."""
    out: list[tuple[nn.Module, str, Optional[slice]]] = []
    if family == "clip":
        d = block.attn.embed_dim
        for i, t in enumerate("qkv"):
            if t in names:
                out.append((block.attn, "in_proj_weight", slice(i * d, (i + 1) * d)))
        if "o" in names:
            out.append((block.attn.out_proj, "weight", None))
        if "mlp" in names:
            out += [(block.mlp.c_fc, "weight", None), (block.mlp.c_proj, "weight", None)]
    elif family == "bert":
        att = block.attention
        for t, layer in (("q", att.self.query), ("k", att.self.key), ("v", att.self.value), ("o", att.output.dense)):
            if t in names:
                out.append((layer, "weight", None))
        if "mlp" in names:
            out += [(block.intermediate.dense, "weight", None), (block.output.dense, "weight", None)]
    return out


def pointwise_convs(block: nn.Module) -> list[nn.Conv2d]:
    """The 1x1, ungrouped convolutions of a conv block (where LoRA is a low-rank matrix update)."""
    return [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]


def ssf_targets(block: nn.Module, family: str) -> list[tuple[nn.Module, str, str]]:
    """(module, weight name, bias name) that SSF scales and shifts in one block."""
    if family == "clip":
        lin = [block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj, block.ln_1, block.ln_2]
        return [(block.attn, "in_proj_weight", "in_proj_bias")] + [(m, "weight", "bias") for m in lin]
    if family == "bert":
        att = block.attention
        mods = [att.self.query, att.self.key, att.self.value, att.output.dense, att.output.LayerNorm,
                block.intermediate.dense, block.output.dense, block.output.LayerNorm]
        return [(m, "weight", "bias") for m in mods]
    return [(m, "weight", "bias") for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
