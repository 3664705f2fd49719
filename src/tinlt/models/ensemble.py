"""A logit-averaging ensemble of models of one recipe: ``tinlt fit --ensemble`` keeps its K fold
models instead of refitting one on every image.

Owns :class:`LogitEnsemble`. It looks like one TIN to everything that scores (evaluation,
prediction, export, serving, mining): ``forward`` / ``scorer`` give the mean of the members'
logits, the members' evaluation-time adjustments are set together, and the image tower (its
mean, std and size: the transforms) is the first member's, which every member shares because
they come from one recipe. Averaging logits, not probabilities, keeps the post-hoc logit
adjustment exact: the mean of adjusted logits is the adjusted mean.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import TinltError


class LogitEnsemble(nn.Module):
    """``members``: TIN models of one recipe over the same classes."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise TinltError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if list(m.classnames) != list(first.classnames) or m.head_type != first.head_type:
                raise TinltError(f"ensemble member {i}: its classes or head differ from member 0's")
        self.members = nn.ModuleList(members)

    # what the transforms, export's metadata and the commands read: the first member's
    @property
    def image_tower(self) -> nn.Module:
        return self.members[0].image_tower

    @property
    def classnames(self) -> list[str]:
        return list(self.members[0].classnames)

    @property
    def num_classes(self) -> int:
        return len(self.members[0].classnames)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def head_type(self) -> str:
        return self.members[0].head_type

    @property
    def attention(self) -> Optional[nn.Module]:
        return self.members[0].attention

    @property
    def templates(self) -> list[str]:
        return list(self.members[0].templates)

    @property
    def uses_text_head(self) -> bool:
        return bool(self.members[0].uses_text_head)

    def scale(self) -> torch.Tensor:
        """The members' mean logit scale (export's metadata; informative only)."""
        return torch.stack([m.scale().detach().float() for m in self.members]).mean()

    def class_rows(self) -> Optional[torch.Tensor]:
        """(K, C, D): each member's class rows, or None when the members use their own weights.
        Export bakes this in as one constant and hands it back to :meth:`forward`."""
        rows = [m.class_rows() for m in self.members]
        return None if rows[0] is None else torch.stack(rows)

    def forward(self, images, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C): the mean of the members' logits; ``text_features`` (K, C, D) as class_rows gives."""
        outs = [m(images, text_features=None if text_features is None else text_features[i])
                for i, m in enumerate(self.members)]
        return torch.stack([o.float() for o in outs]).mean(dim=0)

    def scorer(self):
        """``images -> logits`` with every member's class rows computed once."""
        scorers = [m.scorer() for m in self.members]
        return lambda images: torch.stack([s(images).float() for s in scorers]).mean(dim=0)

    def set_eval_adjustments(self, **kwargs) -> None:
        for m in self.members:
            m.set_eval_adjustments(**kwargs)
