"""TIN's image-text contrastive objective (its eq. 2) from the same logits (``loss.name: contrastive``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import BaseLoss, check_inputs
from .registry import register_loss


class ContrastiveLoss(BaseLoss):
    """Symmetric image-text InfoNCE over the batch, class prompts as the texts (TIN eq. 2).

    CLIP's objective (Radford et al. 2021) with each image paired to its class prompt. It
    is computed from the TIN logits ``z (B, C) = scale * cos(image_b, prompt_c)``, restricted
    to the set P of classes present in the batch (the batch's "captions"):

    * image -> text: cross-entropy of each image over the present prompts,
      ``-log(e^{z_{b,y_b}} / sum_{c in P} e^{z_{b,c}})``, averaged over images;
    * text -> image: for each present class c a softmax over the batch's images,
      ``log p_c(b) = z_{b,c} - log sum_{b'} e^{z_{b',c}}``. All images of class c are
      positives; the class's loss is minus the *mean* of their log-probabilities (the
      "L_out" form of supervised contrastive learning, Khosla et al. 2020, which trained
      better there than minus the log of their summed probability); averaged over P.

    loss = (image->text + text->image) / 2. With one image per class in the batch this is
    exactly CLIP's loss. Under DDP the batch is each rank's own (no gather).
    """

    def __init__(self, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, self.num_classes or logits.shape[-1])
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[targets] = True
        image_to_text = F.cross_entropy(logits.masked_fill(~present[None, :], float("-inf")), targets)
        classes = present.nonzero().squeeze(1)
        log_p = logits[:, classes].log_softmax(dim=0)  # (B, P): softmax over images, per prompt
        positive = (targets[:, None] == classes[None, :]).to(log_p.dtype)
        text_to_image = (-(log_p * positive).sum(0) / positive.sum(0)).mean()
        return 0.5 * (image_to_text + text_to_image)


@register_loss("contrastive")
def _build(cfg, counts):
    return ContrastiveLoss(num_classes=len(counts))
