"""Classifier heads with weights of their own, and the rows they can start from.

Owns ``CosineHead`` (LIFT's cosine classifier: logits = scale * cos(image embedding, w_c),
a learnable unit-normalised row per class, fixed scale) and :func:`prompt_rows`, the
template-ensembled class text features a linear or cosine head can be initialised with
(``model.classifier_init: text``). Rows from the training images (class means, a
class-balanced probe) need data and are the engine's (engine/classifier_init.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CosineHead(nn.Module):
    """logits = scale * normalize(x) @ normalize(weight).T; ``weight`` (C, D) trains, ``scale`` is fixed."""

    def __init__(self, in_features: int, out_features: int, scale: float = 25.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scale = int(in_features), int(out_features), float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.in_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t().to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


def ensemble_prompts(features: torch.Tensor, num_classes: int, num_templates: int) -> torch.Tensor:
    """(C * T, D) prompt features, class-major -> (C, D): each L2-normalised, averaged over
    templates, renormalised (CLIP's prompt ensembling)."""
    feats = F.normalize(features, dim=-1).reshape(num_classes, num_templates, -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


@torch.no_grad()
def prompt_rows(text_tower: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                batch_size: int = 256) -> torch.Tensor:
    """(C, D) unit rows: the text tower's template-ensembled features of the class prompts."""
    names = [c.replace("_", " ") for c in classnames]
    prompts = [t.replace("{}", n) for n in names for t in templates]
    was_training = text_tower.training
    text_tower.eval()
    try:
        parts = []
        for start in range(0, len(prompts), batch_size):
            tokens = text_tower.tokenize(prompts[start:start + batch_size], truncate=True)
            parts.append(text_tower(tokens).float())
    finally:
        text_tower.train(was_training)
    return ensemble_prompts(torch.cat(parts), len(names), len(templates))
