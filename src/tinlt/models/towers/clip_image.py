"""What the open_clip image towers share: the wrapped ``visual`` module, its name, the
normalisation and input size its weights expect, and :func:`openclip_image_tower`, which
wraps a ``clip_model.visual`` in the tower class for its architecture (ViT or ResNet,
each in its own module)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ...errors import TinltError
from ..base import ImageTower

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.OPENAI_DATASET_MEAN / _STD
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def square_size(size: Any, name: str) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise TinltError(f"model '{name}': non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


class OpenCLIPImageTower(ImageTower):
    """Base of the open_clip image towers: ``visual`` plus what its weights expect."""

    def __init__(self, visual: nn.Module, image_mean: Sequence[float] = OPENAI_MEAN,
                 image_std: Sequence[float] = OPENAI_STD, name: str = "open_clip") -> None:
        super().__init__()
        self.visual = visual
        self.name = name
        self.output_dim = int(visual.output_dim)
        self.image_size = square_size(visual.image_size, name)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)  # a no-op for ModifiedResNet


def openclip_image_tower(visual: nn.Module, image_mean: Sequence[float] = OPENAI_MEAN,
                         image_std: Sequence[float] = OPENAI_STD, name: str = "open_clip") -> OpenCLIPImageTower:
    """The tower class for ``visual``'s architecture (ModifiedResNet or VisionTransformer)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    from .clip_resnet import OpenCLIPResNetTower
    from .clip_vit import OpenCLIPViTTower

    if isinstance(visual, ModifiedResNet):
        return OpenCLIPResNetTower(visual, image_mean, image_std, name)
    if isinstance(visual, VisionTransformer):
        return OpenCLIPViTTower(visual, image_mean, image_std, name)
    raise TinltError(f"model '{name}': image tower {type(visual).__name__} is not supported by TIN "
                     "(supported: open_clip ModifiedResNet and VisionTransformer)")
