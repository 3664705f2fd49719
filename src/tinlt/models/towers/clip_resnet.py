"""open_clip's ModifiedResNet (CLIP RN50, ...) as a TIN image tower.

forward_features = stem + layer1..4 (the C5 map, where TIN's attention acts); forward_head
= CLIP's attention pool, whose position embedding fixes the C5 grid (hence the input size).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import TinltError
from ..base import TuningParts
from ..blocks import CONV
from .clip_image import OpenCLIPImageTower


class OpenCLIPResNetTower(OpenCLIPImageTower):
    def __init__(self, visual: nn.Module, *args, **kwargs) -> None:
        super().__init__(visual, *args, **kwargs)
        self.feature_channels = visual.attnpool.k_proj.in_features

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_prefix(images, len(self.prefix_blocks()))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        pool = self.visual.attnpool
        if fmap.shape[-2] * fmap.shape[-1] + 1 != pool.positional_embedding.shape[0]:
            raise TinltError(
                f"model '{self.name}': a {fmap.shape[-2]}x{fmap.shape[-1]} feature map does not fit the "
                f"attention pool, which expects {self.image_size}x{self.image_size} inputs"
            )
        return pool(fmap)

    # -- a frozen prefix (feature cache) ---------------------------------------------
    def prefix_blocks(self) -> list[nn.Module]:
        v = self.visual
        return [b for layer in (v.layer1, v.layer2, v.layer3, v.layer4) for b in layer]

    def stem_parameters(self) -> list[nn.Parameter]:
        v = self.visual
        return [p for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") for p in getattr(v, n).parameters()]

    def forward_prefix(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        x = self.visual.stem(images)
        for b in self.prefix_blocks()[:blocks]:
            x = b(x)
        return x

    def split_from_prefix(self, x, blocks):
        from ..base import SplitFeatures

        for b in self.prefix_blocks()[blocks:]:
            x = b(x)
        return SplitFeatures(x, None)

    # -- lightweight tuning ----------------------------------------------------------
    def tuning_parts(self) -> TuningParts:
        return TuningParts(CONV, self.prefix_blocks(), [self.visual.attnpool])
