"""open_clip's text encoder as a TIN text tower: tokenizer + CLIP's text transformer (or a
CustomTextCLIP TextTransformer, or a Hugging Face text encoder), with padding cut off where
that is exact under CLIP's causal mask (see the class doc).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ...errors import TinltError
from ..base import TextTower, TuningParts
from ..blocks import CLIP

_logger = logging.getLogger(__name__)

# Pooling rules under which dropping the padding after the pooled token changes nothing
# (given a causal mask): the pooled position and everything before it stay identical.
_TRUNCATION_SAFE_POOLS = ("argmax", "eos", "first")


class OpenCLIPTextTower(TextTower):
    """open_clip tokenizer + text encoder (CLIP's built-in text transformer, a
    CustomTextCLIP TextTransformer, or a Hugging Face text encoder).

    forward = token_embedding + positional_embedding[:L] + transformer (causal mask
    [:L, :L]) + ln_final + open_clip's text_global_pool + text_projection.

    Truncation rule: ``tokenize(..., truncate=True)`` drops the columns after the last
    pooled token of the batch (CLIP: the longest prompt's EOT) only when that is exact,
    i.e. ``truncation_exact``: a causal mask, no appended class token or padding mask, and
    pooling at argmax/eos/first. Otherwise tokens keep the full context and forward is
    open_clip's own text forward (a one-time log line says so).
    """

    def __init__(self, clip_model: nn.Module, tokenizer: Any, name: str = "open_clip"):
        super().__init__()
        self.tokenizer = tokenizer
        self.name = name
        text = getattr(clip_model, "text", None)
        self.text: Optional[nn.Module] = None
        if text is None:  # plain CLIP: the text parts live on the model itself
            self.token_embedding = clip_model.token_embedding
            self.positional_embedding = clip_model.positional_embedding
            self.transformer = clip_model.transformer
            self.ln_final = clip_model.ln_final
            self.text_projection = clip_model.text_projection
            self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
            self.pool_type = clip_model.text_pool_type
            self.eos_id = getattr(clip_model, "text_eos_id", None)
            self._delegate = False
            self.output_dim = int(self._projection_width(self.text_projection, self.ln_final))
        else:
            self.text = text
            from open_clip.transformer import TextTransformer

            if isinstance(text, TextTransformer):
                self.pool_type = text.pool_type
                self.eos_id = text.eos_id
                self._delegate = text.cls_emb is not None or text.use_pad_mask
            else:  # e.g. HFTextEncoder: open_clip's forward, no truncation
                self.pool_type = ""
                self.eos_id = None
                self._delegate = True
            self.output_dim = int(getattr(text, "output_dim", 0) or clip_model.visual.output_dim)
        if self.pool_type == "none":
            raise TinltError(f"model '{name}': text pool_type 'none' yields tokens, not an embedding")
        mask = self._parts().attn_mask if not self._delegate else None
        self.truncation_exact = (
            not self._delegate and mask is not None and self.pool_type in _TRUNCATION_SAFE_POOLS
        )
        self._warned_no_truncation = False

    @staticmethod
    def _projection_width(projection: Any, ln_final: nn.Module) -> int:
        if projection is None:
            return ln_final.normalized_shape[0]
        if isinstance(projection, nn.Linear):
            return projection.out_features
        return projection.shape[1]

    def _parts(self) -> nn.Module:
        return self if self.text is None else self.text

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return torch.zeros(tokens.shape[0], dtype=torch.long)

    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> Any:
        tokens = self.tokenizer(list(texts))
        if not truncate:
            return tokens
        if not self.truncation_exact:
            if not self._warned_no_truncation:
                _logger.info("model '%s': text truncation would not be exact; using the full context", self.name)
                self._warned_no_truncation = True
            return tokens
        end = int(self._pool_index(tokens).max()) + 1
        return tokens[:, :end]

    def token_lengths(self, tokens: Any) -> Optional[torch.Tensor]:
        # the causal mask keeps every column after the pooled token out of its output
        return self._pool_index(tokens) + 1 if self.truncation_exact else None

    def token_ids(self, tokens: Any) -> torch.Tensor:
        return tokens

    def token_embeddings(self, tokens: Any) -> torch.Tensor:
        if self._delegate:
            raise TinltError(f"model '{self.name}': this text tower cannot take learned prompts (model.coop)")
        return self._parts().token_embedding(tokens)

    def forward(self, tokens: Any, embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self._delegate:
            if embeddings is not None:
                raise TinltError(f"model '{self.name}': this text tower cannot take learned prompts (model.coop)")
            out = self.text(tokens)
            return out[0] if isinstance(out, tuple) else out
        m = self._parts()
        length = tokens.shape[1]
        if length > m.positional_embedding.shape[0]:
            raise TinltError(
                f"model '{self.name}': {length} text tokens exceed the context length "
                f"{m.positional_embedding.shape[0]}"
            )
        cast_dtype = m.transformer.get_cast_dtype()
        x = (m.token_embedding(tokens) if embeddings is None else embeddings).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        x = m.ln_final(x)
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        projection = m.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.text is not None and hasattr(self.text, "set_grad_checkpointing"):
            self.text.set_grad_checkpointing(enable)
        elif self.text is None:
            self.transformer.grad_checkpointing = enable

    # -- lightweight tuning ----------------------------------------------------------
    def tuning_parts(self) -> TuningParts:
        owner = self._parts()
        if self.text is not None and not (hasattr(owner, "transformer") and hasattr(owner.transformer, "resblocks")):
            raise TinltError(f"model '{self.name}': this text tower ({type(owner).__name__}) has no open_clip "
                             "transformer blocks to tune; use model.tune_text.method full or frozen")
        tail = [owner.ln_final] if isinstance(getattr(owner, "ln_final", None), nn.Module) else []
        proj = getattr(owner, "text_projection", None)
        params = [(owner, "text_projection")] if isinstance(proj, nn.Parameter) else []
        params += [(proj, "weight")] if isinstance(proj, nn.Linear) else []
        blocks = list(owner.transformer.resblocks)
        return TuningParts(CLIP, blocks, tail, params, int(blocks[0].attn.embed_dim))
