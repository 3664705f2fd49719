"""Length buckets for class prompts: an exact shortcut on top of text truncation.

Truncation (``TextTower.tokenize(truncate=True)``) cuts every prompt to the longest one's
end. With ImageNet-LT's names that is 18 CLIP tokens while the mean prompt needs 9.4, so
half of the text tower's work is still padding. Prompts are therefore sorted by the length
each one needs (``TextTower.token_lengths``) and split into at most ``max_buckets`` groups,
each cut to its own longest prompt. The split minimises the padded token count
(``sum(group size * group length)``) by dynamic programming over the distinct lengths.

Exactness is the tower's guarantee that columns past a prompt's own length do not change
its output (causal mask + end-of-text pooling for CLIP; the attention mask for BERT), so a
prompt's features are the same in any bucket up to float rounding of differently shaped
matrix products. A few buckets keep kernel launches few on a GPU; ``max_buckets=1`` is
plain truncation.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch


class Bucket(NamedTuple):
    rows: torch.Tensor  # prompt indices, ascending length
    length: int  # columns kept for these prompts


def plan_buckets(lengths: Sequence[int] | np.ndarray | torch.Tensor, max_buckets: int) -> list[Bucket]:
    """Split prompts of the given lengths into <= ``max_buckets`` groups of contiguous
    lengths that minimise the total padded token count; ties keep fewer groups."""
    lengths = np.asarray(torch.as_tensor(lengths).cpu().numpy() if isinstance(lengths, torch.Tensor) else lengths)
    lengths = lengths.astype(np.int64).reshape(-1)
    if lengths.size == 0:
        return []
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    values, counts = np.unique(lengths, return_counts=True)
    m, k_max = len(values), min(int(max_buckets), len(values))
    prefix = np.concatenate([[0], np.cumsum(counts)])
    # cost[k][j]: least padded tokens for the j shortest distinct lengths in k groups
    inf = np.iinfo(np.int64).max
    cost = np.full((k_max + 1, m + 1), inf, dtype=np.int64)
    cut = np.zeros((k_max + 1, m + 1), dtype=np.int64)
    cost[0, 0] = 0
    for k in range(1, k_max + 1):
        for j in range(1, m + 1):
            for i in range(k - 1, j):
                if cost[k - 1, i] == inf:
                    continue
                c = cost[k - 1, i] + (prefix[j] - prefix[i]) * values[j - 1]
                if c < cost[k, j]:
                    cost[k, j], cut[k, j] = c, i
    k = int(min(range(1, k_max + 1), key=lambda kk: (cost[kk, m], kk)))
    bounds = []
    j = m
    while k > 0:
        i = int(cut[k, j])
        bounds.append((i, j))
        j, k = i, k - 1
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    buckets = []
    for i, j in reversed(bounds):
        lo, hi = values[i], values[j - 1]
        sel = order[(sorted_lengths >= lo) & (sorted_lengths <= hi)]
        buckets.append(Bucket(torch.as_tensor(sel, dtype=torch.long), int(hi)))
    return buckets


def padded_tokens(buckets: Sequence[Bucket]) -> int:
    """Token columns the text tower processes for these buckets."""
    return int(sum(len(b.rows) * b.length for b in buckets))


def take(tokens: Any, rows: torch.Tensor | slice, length: Optional[int] = None) -> Any:
    """Rows ``rows`` and the first ``length`` columns (all when None) of a token tensor or a
    dict of them."""
    if isinstance(tokens, torch.Tensor):
        return tokens[rows, :length]
    return {k: v[rows, :length] for k, v in tokens.items()}
