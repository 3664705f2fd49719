"""Learnable prompt context for the text head (CoOp, Zhou et al. 2022; ``model.coop``).

Owns the prompts CoOp feeds the text tower: ``n_ctx`` placeholder words around the class
name (class at the ``end``, ``middle`` or ``front``), whose input embeddings are replaced
by ``n_ctx`` learnable vectors shared by all classes. With the class at the end and
``n_ctx`` equal to the number of tokens before ``{}`` in the first template (4 for "a photo
of a {}."), the vectors start as those words' embeddings, so the text features, and the
model, are unchanged at step 0; otherwise they start random (std 0.02), as CoOp's.

Works with any text tower that offers ``token_ids`` / ``token_embeddings`` and takes
``embeddings`` in ``forward`` (open_clip's text transformer, MiniLM).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import TinltError

PLACEHOLDER = "X"


def _word_ids(tower: nn.Module, text: str) -> list[int]:
    """The ids of ``text``'s own tokens (without the tokenizer's start/end/padding ones)."""
    special = set(tower.token_ids(tower.tokenize([""], truncate=False))[0].tolist())
    return [i for i in tower.token_ids(tower.tokenize([text], truncate=False))[0].tolist() if i not in special]


class PromptContext(nn.Module):
    """``ctx`` (n_ctx, width) learnable vectors that replace the placeholder words' embeddings."""

    def __init__(self, tower: nn.Module, template: str, n_ctx: int, position: str = "end") -> None:
        super().__init__()
        if "{}" not in template:
            raise TinltError(f"model.coop: template {template!r} has no '{{}}'")
        self.n_ctx, self.position = int(n_ctx), position
        self.prefix, self.suffix = template.split("{}", 1)
        ids = _word_ids(tower, PLACEHOLDER)
        if len(ids) != 1:
            raise TinltError(f"model.coop: this text tower splits the placeholder {PLACEHOLDER!r} into {len(ids)} tokens")
        self.placeholder_id = ids[0]
        words = _word_ids(tower, self.prefix.strip())
        probe = tower.token_embeddings(tower.tokenize([PLACEHOLDER], truncate=False))
        width = probe.shape[-1]
        if position == "end" and len(words) == self.n_ctx:  # start at the template's own words: exact
            with torch.no_grad():
                init = tower.token_embeddings(_as_tokens(tower, words)).reshape(-1, width)[: self.n_ctx]
        else:
            init = torch.randn(self.n_ctx, width) * 0.02
        self.ctx = nn.Parameter(init.detach().clone().to(probe.dtype))

    def prompts(self, classnames: Sequence[str]) -> list[str]:
        ctx = " ".join([PLACEHOLDER] * self.n_ctx)
        half = " ".join([PLACEHOLDER] * (self.n_ctx // 2)), " ".join([PLACEHOLDER] * (self.n_ctx - self.n_ctx // 2))
        out = []
        for name in classnames:
            name = name.replace("_", " ")
            if self.position == "end":
                out.append(f"{ctx} {name}{self.suffix}")
            elif self.position == "front":
                out.append(f"{name} {ctx}{self.suffix}")
            else:
                out.append(f"{half[0]} {name} {half[1]}{self.suffix}".strip())
        return out

    def check(self, ids: torch.Tensor, classnames: Sequence[str]) -> None:
        """Every prompt must hold exactly n_ctx placeholders (a class name could add one)."""
        counts = (ids == self.placeholder_id).sum(dim=1)
        bad = torch.nonzero(counts != self.n_ctx).flatten().tolist()
        if bad:
            raise TinltError(f"model.coop: the class name {classnames[bad[0]]!r} contains the placeholder word "
                             f"{PLACEHOLDER!r}; use model.coop.position=end or rename the class")

    def fill(self, ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings`` (N, L, D) with the k-th placeholder of each row replaced by ``ctx[k]``."""
        mask = (ids == self.placeholder_id).to(embeddings.device)
        index = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return torch.where(mask[..., None], self.ctx.to(embeddings.dtype)[index], embeddings)


def _as_tokens(tower: nn.Module, word_ids: list[int]) -> Any:
    """Tokens of the given ids alone (for their embeddings): the tower's own token layout."""
    tokens = tower.tokenize([""], truncate=False)
    if isinstance(tokens, dict):
        return {**tokens, "input_ids": torch.tensor([word_ids])}
    return torch.tensor([word_ids])
