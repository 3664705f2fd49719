"""The contract every image and text tower meets, so TIN can combine any pair.

An image tower splits its forward in two around the last spatial feature map, which is
where TIN's visual attention acts; a text tower turns prompts into embeddings. A tower
that supports lightweight tuning also says where its parts are (``tuning_parts``): the
tuning methods then work on it without knowing its class.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import nn


class SplitFeatures(NamedTuple):
    """What ``ImageTower.forward_split`` returns.

    fmap: (B, C, h, w) spatial map that TIN's attention may transform.
    aside: tensors the head needs but that must bypass the attention (a ViT's class
      token, (B, 1, C)); None for CNN towers. A plain tuple, so tracing/compiling and
      DataParallel replicas see no hidden module state.
    """

    fmap: torch.Tensor
    aside: Optional[torch.Tensor] = None


class PrefixFeatures(NamedTuple):
    """What ``ImageTower.forward_prefix`` returns: the activations after the tower's first
    ``blocks`` blocks. TIN's forward takes it in place of images (the feature cache's
    ``prefix`` entries, when only later blocks train)."""

    x: torch.Tensor
    blocks: int


class ImageTower(nn.Module):
    """forward(images) = forward_merge(*forward_split(images)).

    Simple (CNN) towers implement forward_features / forward_head:
      forward_features: (B, 3, H, W) -> last spatial feature map (B, C, h, w)
      forward_head:     (B, C, h, w) -> embedding (B, output_dim), not normalised
    and inherit forward_split / forward_merge, which wrap them with ``aside=None``.
    Towers whose head also needs tokens that are not part of the map (a ViT's class
    token) override forward_split / forward_merge instead. TIN only calls the split pair.

    Attributes set by subclasses:
      feature_channels: channels of the map returned by forward_features
      output_dim: width of the embedding returned by forward_head (before L2 norm)
      image_mean, image_std: per-channel normalisation the weights expect (RGB, 0..1 scale)
      image_size: the native input size (int)
    """

    feature_channels: int
    output_dim: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_size: int

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last spatial feature map (B, C, h, w)."""
        raise NotImplementedError

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> embedding (B, output_dim), not normalised."""
        raise NotImplementedError

    def forward_split(self, images: torch.Tensor) -> SplitFeatures:
        """(B, 3, H, W) -> SplitFeatures(fmap (B, C, h, w), aside or None)."""
        return SplitFeatures(self.forward_features(images), None)

    def forward_merge(self, fmap: torch.Tensor, aside: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(fmap, aside) from forward_split (fmap possibly transformed) -> embedding (B, output_dim)."""
        return self.forward_head(fmap)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_merge(*self.forward_split(images))

    def set_grad_checkpointing(self, enable: bool = True) -> None:  # optional
        pass

    def new_parameter_names(self) -> set[str]:
        """Names (as in named_parameters()) of freshly initialised parameters, e.g. a new
        projection on top of a pretrained backbone. They train in TIN's "new" group and
        stay trainable when the tower is frozen."""
        return set()

    def tuning_parts(self) -> "TuningParts":  # optional: lightweight tuning (models/tuning/)
        """Blocks, their family and what follows them, for lightweight tuning methods."""
        return no_tuning_parts(self)

    # optional: a frozen prefix of blocks, cached once (engine/feature_cache.py)
    def prefix_blocks(self) -> list[nn.Module]:
        """The blocks ``forward_prefix`` can stop after, in order ([] = no prefix support)."""
        return []

    def stem_parameters(self) -> list[nn.Parameter]:
        """Parameters that act before the first of ``prefix_blocks``."""
        return []

    def forward_prefix(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        """(B, 3, H, W) -> activations after the first ``blocks`` blocks."""
        raise NotImplementedError

    def split_from_prefix(self, x: torch.Tensor, blocks: int) -> SplitFeatures:
        """``forward_prefix``'s output -> what ``forward_split`` returns."""
        raise NotImplementedError


class TextTower(nn.Module):
    """tokenize(texts) -> tokens; forward(tokens) -> (N, output_dim), not normalised.

    ``tokens`` is whatever the tower's tokenizer returns (a tensor or a dict of tensors,
    batch first); ``truncate`` drops trailing padding that cannot change the output (a
    tower applies it only where it is exact, and documents its rule).
    """

    output_dim: int

    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> Any:
        raise NotImplementedError

    def forward(self, tokens: Any) -> torch.Tensor:
        raise NotImplementedError

    def token_ids(self, tokens: Any) -> torch.Tensor:  # optional: learnable prompts (CoOp)
        """(N, L) token ids of ``tokens`` (positions line up with ``token_embeddings``)."""
        raise NotImplementedError

    def token_embeddings(self, tokens: Any) -> torch.Tensor:  # optional: learnable prompts (CoOp)
        """(N, L, width) input embeddings of ``tokens``; ``forward(tokens, embeddings=...)`` takes them
        (changed) in their place. Towers without it cannot learn prompts."""
        raise NotImplementedError

    def token_lengths(self, tokens: Any) -> Optional[torch.Tensor]:  # optional
        """(N,) columns each row needs: cutting a row after them does not change its
        output. None (the default) when no such cut is exact for this tower."""
        return None

    def set_grad_checkpointing(self, enable: bool = True) -> None:  # optional
        pass

    def new_parameter_names(self) -> set[str]:
        """As ImageTower.new_parameter_names."""
        return set()

    def tuning_parts(self) -> "TuningParts":  # optional: lightweight tuning (models/tuning/)
        """As ImageTower.tuning_parts."""
        return no_tuning_parts(self)


# ----------------------------------------------------------------------------- what tuning needs


class PromptSlots(NamedTuple):
    """Where prompt tokens go in a tower that takes them (a ViT image tower): ``install(module)``
    puts a prompts module in place (see models/tuning/vpt.py); ``blocks``, ``width`` and
    ``patch_area`` size it."""

    install: Any
    blocks: int
    width: int
    patch_area: int
    device: Any


class TuningParts(NamedTuple):
    """A tower's parts as lightweight tuning methods address them (``tower.tuning_parts()``).

    family: how to find targets inside one block (models/blocks.py: attention projections,
      norms, where a parallel branch reads and adds);
    blocks: the blocks in forward order; tail: modules after the last block (norms, pooling);
    tail_params: bare parameters there, as (module, name) (projections);
    width: the residual width of a transformer block (0 for conv towers);
    prompts: where prompt tokens go, or None when the tower takes none.
    """

    family: Any
    blocks: list
    tail: list = []
    tail_params: list = []
    width: int = 0
    prompts: Optional[PromptSlots] = None


def no_tuning_parts(tower: nn.Module) -> TuningParts:
    from ..errors import TinltError

    raise TinltError(f"lightweight tuning methods do not know the tower {type(tower).__name__}: it declares no "
                     "tuning_parts(); use model.tune_*.method full or frozen")
