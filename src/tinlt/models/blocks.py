"""What the blocks of each tower family look like to a lightweight tuning method.

A tower says which family its blocks belong to (``tower.tuning_parts().family``); the
family finds, inside one block, what the methods address: the attention projections LoRA
adapts (by q / k / v / o / mlp name), the 1x1 convolutions, the layers SSF scales and
shifts, the norm type LN / BN tuning trains, and where a branch parallel to the MLP reads
and adds (AdaptFormer). Three families cover tinlt's towers:

* :data:`CLIP` - open_clip's pre-norm transformer blocks (ViTs and the text transformer):
  fused q/k/v ``nn.MultiheadAttention``, ``c_fc`` / ``c_proj`` MLP;
* :data:`BERT` - Hugging Face BERT layers (MiniLM): separate query/key/value layers, post-norm;
* :data:`CONV` - convolutional blocks (CLIP ModifiedResNet bottlenecks, EfficientNet-Lite).

A new tower reuses one of them or brings its own object with the same methods.
"""

from __future__ import annotations

from typing import Optional

from torch import nn


class _Keep:
    """Pre-hook: keep the residual stream a parallel branch reads (an object, not a closure,
    so a deep copy of the model gets its own)."""

    def __init__(self, stash: dict, index: int) -> None:
        self.stash, self.index = stash, index

    def __call__(self, _module, args):
        self.stash["x"] = args[self.index]


class _AddToOutput:
    def __init__(self, branch: nn.Module, stash: dict) -> None:
        self.branch, self.stash = branch, stash

    def __call__(self, _module, _args, out):
        return out + self.branch(self.stash.pop("x"))


class _AddToInput(_AddToOutput):
    def __call__(self, _module, args):
        return (args[0] + self.branch(self.stash.pop("x")),)


class Family:
    """The questions a tuning method asks about one block (see the module doc)."""

    name = ""
    kind = ""  # "transformer" | "conv": what a method may need
    norm: type = nn.Module

    def width(self, block: nn.Module) -> int:
        return 0

    def attention_targets(self, block: nn.Module, names) -> list[tuple[nn.Module, str, Optional[slice]]]:
        """(module, parameter, rows) that the LoRA targets q / k / v / o / mlp mean in ``block``."""
        return []

    def pointwise_convs(self, block: nn.Module) -> list[nn.Conv2d]:
        """The 1x1, ungrouped convolutions of ``block`` (where LoRA is a low-rank matrix update)."""
        return [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]

    def ssf_targets(self, block: nn.Module) -> list[tuple[nn.Module, str, str]]:
        """(module, weight name, bias name) whose outputs SSF scales and shifts."""
        return []

    def attach_parallel(self, block: nn.Module, branch: nn.Module) -> None:
        """Add ``branch(x)`` beside the block's MLP, reading the stream the MLP reads."""
        raise NotImplementedError


class ClipFamily(Family):
    """open_clip ResidualAttentionBlock: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    name, kind, norm = "clip", "transformer", nn.LayerNorm

    def width(self, block):
        return block.attn.embed_dim

    def attention_targets(self, block, names):
        out: list[tuple[nn.Module, str, Optional[slice]]] = []
        d = block.attn.embed_dim
        for i, t in enumerate("qkv"):  # in_proj_weight stacks q, k, v row blocks, in that order
            if t in names:
                out.append((block.attn, "in_proj_weight", slice(i * d, (i + 1) * d)))
        if "o" in names:
            out.append((block.attn.out_proj, "weight", None))
        if "mlp" in names:
            out += [(block.mlp.c_fc, "weight", None), (block.mlp.c_proj, "weight", None)]
        return out

    def ssf_targets(self, block):
        lin = [block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj, block.ln_1, block.ln_2]
        return [(block.attn, "in_proj_weight", "in_proj_bias")] + [(m, "weight", "bias") for m in lin]

    def attach_parallel(self, block, branch):
        """A pre-hook on ln_2 keeps x (the stream after attention), a hook on mlp adds branch(x):
        out = x + mlp(ln_2(x)) + branch(x), as LIFT places AdaptFormer."""
        stash: dict = {}
        block.ln_2.register_forward_pre_hook(_Keep(stash, 0))
        block.mlp.register_forward_hook(_AddToOutput(branch, stash))


class BertFamily(Family):
    """Hugging Face BertLayer: post-norm, out = LN(dense(intermediate(a)) + a), a = attention output."""

    name, kind, norm = "bert", "transformer", nn.LayerNorm

    def width(self, block):
        return block.attention.self.query.in_features

    def attention_targets(self, block, names):
        att, out = block.attention, []
        for t, layer in (("q", att.self.query), ("k", att.self.key), ("v", att.self.value), ("o", att.output.dense)):
            if t in names:
                out.append((layer, "weight", None))
        if "mlp" in names:
            out += [(block.intermediate.dense, "weight", None), (block.output.dense, "weight", None)]
        return out

    def ssf_targets(self, block):
        att = block.attention
        mods = [att.self.query, att.self.key, att.self.value, att.output.dense, att.output.LayerNorm,
                block.intermediate.dense, block.output.dense, block.output.LayerNorm]
        return [(m, "weight", "bias") for m in mods]

    def attach_parallel(self, block, branch):
        """A pre-hook on the output block keeps a (its second input), a pre-hook on its LayerNorm
        adds branch(a) to the sum before normalising."""
        stash: dict = {}
        block.output.register_forward_pre_hook(_Keep(stash, 1))
        block.output.LayerNorm.register_forward_pre_hook(_AddToInput(branch, stash))


class ConvFamily(Family):
    """Convolutional blocks: BatchNorm layers are what SSF scales and BN tuning trains."""

    name, kind, norm = "conv", "conv", nn.modules.batchnorm._BatchNorm

    def ssf_targets(self, block):
        return [(m, "weight", "bias") for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


CLIP, BERT, CONV = ClipFamily(), BertFamily(), ConvFamily()
