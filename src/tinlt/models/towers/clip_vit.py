"""open_clip's VisionTransformer (CLIP ViT-B/32, ...) as a TIN image tower.

forward_split = patch embedding, class + position embeddings, ln_pre and all blocks but
the last; it returns the patch tokens as a (B, C, h, w) map and the class token aside
(B, 1, C). forward_merge puts the tokens back in sequence, runs the last block, then
open_clip's own pooling (pool_type, attn_pool, final_ln_after_pool) and projection, so
with the map untouched the result is ``clip_model.encode_image``. Why the split sits before
the last block: CLIP pools the class token, and after the last block no patch token
reaches it any more, so attention applied there would be dead.

When the embedding is the class token (pool_type "tok", no attention pooler; CLIP's ViTs),
the last block computes only that token's output: every token still supplies keys and
values, but the query, the output projection and the MLP run on one token instead of 50
(ViT-B/32 at 224 px), about 5x less work in that block. Exact: the other tokens' outputs
are discarded by the pooling anyway (``pooled_token_only``).

The tower takes visual prompt tokens (VPT, models/tuning/vpt.py): they are inserted (or,
deep, replaced) before each block and travel aside from the patch grid.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import TinltError
from ..base import PromptSlots, SplitFeatures, TuningParts
from ..blocks import CLIP
from .clip_image import OpenCLIPImageTower


class OpenCLIPViTTower(OpenCLIPImageTower):
    def __init__(self, visual: nn.Module, *args, **kwargs) -> None:
        super().__init__(visual, *args, **kwargs)
        self._check_vit(visual, self.name)
        self.feature_channels = visual.conv1.out_channels
        self.prompts: Optional[nn.Module] = None  # VPT tokens (models/tuning/vpt.py)
        self.pooled_token_only = self._class_token_pooling(visual)

    @staticmethod
    def _check_vit(visual: nn.Module, name: str) -> None:
        from open_clip.transformer import PatchDropout

        for attr in ("_embeds", "_pool"):
            if not hasattr(visual, attr):
                raise TinltError(
                    f"model '{name}': this open_clip version's VisionTransformer lacks {attr}(); "
                    "install open_clip_torch>=3.0"
                )
        if len(visual.transformer.resblocks) < 1:
            raise TinltError(f"model '{name}': the ViT has no transformer blocks")
        if isinstance(visual.patch_dropout, PatchDropout) and visual.patch_dropout.prob > 0:
            # dropped patches leave no (h, w) grid to attend over
            raise TinltError(
                f"model '{name}': patch_dropout={visual.patch_dropout.prob} is incompatible with "
                "TIN's spatial attention; use a config with patch_dropout 0"
            )
        if visual.attn_pool is None and visual.pool_type == "none":
            raise TinltError(f"model '{name}': ViT pool_type 'none' yields tokens, not an embedding")

    @staticmethod
    def _class_token_pooling(visual: nn.Module) -> bool:
        from open_clip.transformer import ResidualAttentionBlock

        last = visual.transformer.resblocks[-1]
        return (
            visual.attn_pool is None and visual.pool_type == "tok"
            and type(last) is ResidualAttentionBlock and isinstance(last.attn, nn.MultiheadAttention)
            and not hasattr(last, "ln_1_kv")
        )

    # -- blocks ----------------------------------------------------------------------
    def _last_block_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D) class-token output of the last block (see the module doc)."""
        blk = self.visual.transformer.resblocks[-1]
        y = blk.ln_1(x)
        q = y[:, :1]
        if self.visual.transformer.batch_first:
            a = blk.attn(q, y, y, need_weights=False)[0]
        else:
            a = blk.attn(q.transpose(0, 1), y.transpose(0, 1), y.transpose(0, 1), need_weights=False)[0]
            a = a.transpose(0, 1)
        c = x[:, :1] + blk.ls_1(a)
        c = c + blk.ls_2(blk.mlp(blk.ln_2(c)))
        return c[:, 0]

    def _run_blocks(self, x: torch.Tensor, blocks: Sequence[nn.Module], first: int = 0) -> torch.Tensor:
        """(B, N, D) tokens through ``blocks`` (block ``first`` onwards of the tower); VPT
        prompts are inserted (or, deep, replaced) before each block."""
        transformer = self.visual.transformer
        for i, blk in enumerate(blocks, start=first):
            if self.prompts is not None:
                x = self.prompts.insert(x, i)
            if not transformer.batch_first:
                x = x.transpose(0, 1)  # NLD -> LND
            if transformer.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if not transformer.batch_first:
                x = x.transpose(0, 1)
        return x

    @property
    def _n_prompts(self) -> int:
        return self.prompts.n if self.prompts is not None else 0

    # -- contract ------------------------------------------------------------------
    def forward_split(self, images: torch.Tensor) -> SplitFeatures:
        return self.split_from_prefix(self.forward_prefix(images, 0), 0)

    def forward_merge(self, fmap: torch.Tensor, aside: Optional[torch.Tensor] = None) -> torch.Tensor:
        if aside is None:
            raise TinltError(f"model '{self.name}': the ViT head needs the class token from forward_split")
        v = self.visual
        tokens = fmap.flatten(2).transpose(1, 2)
        x = torch.cat([aside.to(tokens.dtype), tokens], dim=1)
        last = len(v.transformer.resblocks) - 1
        if self.pooled_token_only:
            if self.prompts is not None:
                x = self.prompts.insert(x, last)
            pooled = v.ln_post(self._last_block_class_token(x))  # ln_post is per token: before or after pooling alike
            return pooled @ v.proj if v.proj is not None else pooled
        x = self._run_blocks(x, v.transformer.resblocks[-1:], first=last)
        if self.prompts is not None:  # pooling sees the class and patch tokens only
            x = torch.cat([x[:, :1], x[:, 1 + self._n_prompts:]], dim=1)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_split(images).fmap

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        raise TinltError(f"model '{self.name}': a ViT head needs the class token; use forward_split/forward_merge")

    # -- a frozen prefix (feature cache) ---------------------------------------------
    def prefix_blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks[:-1])  # the last block belongs to forward_merge

    def stem_parameters(self) -> list[nn.Parameter]:
        v = self.visual
        return [v.conv1.weight, v.class_embedding, v.positional_embedding, *v.ln_pre.parameters()]

    def forward_prefix(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        v = self.visual
        height, width = images.shape[-2] // v.patch_size[0], images.shape[-1] // v.patch_size[1]
        if (height, width) != tuple(v.grid_size):
            raise TinltError(
                f"model '{self.name}': input {images.shape[-2]}x{images.shape[-1]} gives a "
                f"{height}x{width} patch grid, but the ViT was built for {self.image_size}x{self.image_size}"
            )
        x = v._embeds(images)  # conv1 -> tokens, + class token, + positions, patch dropout, ln_pre
        return self._run_blocks(x, v.transformer.resblocks[:blocks])

    def split_from_prefix(self, x: torch.Tensor, blocks: int) -> SplitFeatures:
        v = self.visual
        x = self._run_blocks(x, v.transformer.resblocks[blocks:-1], first=blocks)
        height, width = v.grid_size
        cls_token, patches = x[:, :1 + self._n_prompts], x[:, 1 + self._n_prompts:]  # prompts travel aside
        fmap = patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)
        return SplitFeatures(fmap, cls_token)

    # -- lightweight tuning ----------------------------------------------------------
    def _install_prompts(self, prompts: nn.Module) -> None:
        self.prompts = prompts

    def tuning_parts(self) -> TuningParts:
        v = self.visual
        tail = [m for m in (v.ln_post, v.attn_pool) if isinstance(m, nn.Module)]
        params = [(v, "proj")] if isinstance(getattr(v, "proj", None), nn.Parameter) else []
        params += [(v.proj, "weight")] if isinstance(getattr(v, "proj", None), nn.Linear) else []
        blocks = list(v.transformer.resblocks)
        slots = PromptSlots(self._install_prompts, len(blocks), int(blocks[0].attn.embed_dim),
                            int(v.patch_size[0] * v.patch_size[1]), next(v.parameters()).device)
        return TuningParts(CLIP, blocks, tail, params, int(blocks[0].attn.embed_dim), slots)
