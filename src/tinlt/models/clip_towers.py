"""open_clip models as TIN towers, and loading their weights without a network.

Owns:
  - OpenCLIPImageTower: a CLIP image encoder split around its last spatial map
    (ModifiedResNet: C5 map | attention pool; VisionTransformer: patch-token grid after
    all blocks but the last | last block + pooling + projection, class token carried aside);
  - OpenCLIPTextTower: open_clip tokenizer + text encoder, with exact padding truncation;
  - load_openclip_model / create_openclip_towers: local checkpoint files or open_clip tags,
    every failure a one-line TinltError;
  - registering tinlt's tiny model configs (models/model_configs/*.json) with open_clip.

Why the ViT split sits before the last block: CLIP pools the class token, and after the
last block no patch token reaches it any more, so attention applied there would be dead.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import open_clip
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import (
    PatchDropout,
    ResidualAttentionBlock,
    TextTransformer,
    VisionTransformer,
    text_global_pool,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import TinltError
from .base import ImageTower, SplitFeatures, TextTower

_logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
# Pooling rules under which dropping the padding after the pooled token changes nothing
# (given a causal mask): the pooled position and everything before it stay identical.
_TRUNCATION_SAFE_POOLS = ("argmax", "eos", "first")


def register_model_configs() -> None:
    """Make tinlt's tiny configs (tiny-vit, tiny-rn) known to open_clip; idempotent."""
    known = set(open_clip.list_models())
    if not all(p.stem in known for p in MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


register_model_configs()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _square_size(size: Any, name: str) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise TinltError(f"model '{name}': non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


class OpenCLIPImageTower(ImageTower):
    """Wraps ``clip_model.visual`` (ModifiedResNet or VisionTransformer).

    ResNet: forward_features = stem + layer1..4 (C5 map), forward_head = attention pool.
    ViT: forward_split = patch embedding, class + position embeddings, ln_pre and all
    blocks but the last; it returns the patch tokens as a (B, C, h, w) map and the class
    token aside (B, 1, C). forward_merge puts the tokens back in sequence, runs the last
    block, then open_clip's own pooling (pool_type, attn_pool, final_ln_after_pool) and
    projection, so with the map untouched the result is ``clip_model.encode_image``.

    When the embedding is the class token (pool_type "tok", no attention pooler; CLIP's
    ViTs), the last block computes only that token's output: every token still supplies
    keys and values, but the query, the output projection and the MLP run on one token
    instead of 50 (ViT-B/32 at 224 px), about 5x less work in that block. Exact: the other
    tokens' outputs are discarded by the pooling anyway (``pooled_token_only``).
    """

    def __init__(
            self,
            visual: nn.Module,
            image_mean: Sequence[float] = open_clip.OPENAI_DATASET_MEAN,
            image_std: Sequence[float] = open_clip.OPENAI_DATASET_STD,
            name: str = "open_clip",
    ):
        super().__init__()
        self.visual = visual
        self.name = name
        if isinstance(visual, ModifiedResNet):
            self.kind = "resnet"
            self.feature_channels = visual.attnpool.k_proj.in_features
        elif isinstance(visual, VisionTransformer):
            self.kind = "vit"
            self._check_vit(visual, name)
            self.feature_channels = visual.conv1.out_channels
        else:
            raise TinltError(
                f"model '{name}': image tower {type(visual).__name__} is not supported by TIN "
                "(supported: open_clip ModifiedResNet and VisionTransformer)"
            )
        self.output_dim = int(visual.output_dim)
        self.prompts: Optional[nn.Module] = None  # VPT tokens (models/tuning/modules.py), ViT only
        self.pooled_token_only = self.kind == "vit" and self._class_token_pooling(visual)
        self.image_size = _square_size(visual.image_size, name)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

    @staticmethod
    def _check_vit(visual: VisionTransformer, name: str) -> None:
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
    def _class_token_pooling(visual: VisionTransformer) -> bool:
        last = visual.transformer.resblocks[-1]
        return (
            visual.attn_pool is None and visual.pool_type == "tok"
            and type(last) is ResidualAttentionBlock and isinstance(last.attn, nn.MultiheadAttention)
            and not hasattr(last, "ln_1_kv")
        )

    # -- ViT helpers ---------------------------------------------------------------
    def _last_block_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D) class-token output of the last block (see class doc)."""
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

    # -- a frozen prefix (feature cache) ---------------------------------------------
    def prefix_blocks(self) -> list[nn.Module]:
        v = self.visual
        if self.kind == "resnet":
            return [b for layer in (v.layer1, v.layer2, v.layer3, v.layer4) for b in layer]
        return list(v.transformer.resblocks[:-1])  # the last block belongs to forward_merge

    def stem_parameters(self) -> list[nn.Parameter]:
        v = self.visual
        if self.kind == "resnet":
            return [p for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") for p in getattr(v, n).parameters()]
        return [v.conv1.weight, v.class_embedding, v.positional_embedding, *v.ln_pre.parameters()]

    def forward_prefix(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        v = self.visual
        if self.kind == "resnet":
            x = v.stem(images)
            for b in self.prefix_blocks()[:blocks]:
                x = b(x)
            return x
        height, width = images.shape[-2] // v.patch_size[0], images.shape[-1] // v.patch_size[1]
        if (height, width) != tuple(v.grid_size):
            raise TinltError(
                f"model '{self.name}': input {images.shape[-2]}x{images.shape[-1]} gives a "
                f"{height}x{width} patch grid, but the ViT was built for {self.image_size}x{self.image_size}"
            )
        x = v._embeds(images)  # conv1 -> tokens, + class token, + positions, patch dropout, ln_pre
        return self._run_blocks(x, v.transformer.resblocks[:blocks])

    def split_from_prefix(self, x: torch.Tensor, blocks: int) -> SplitFeatures:
        if self.kind == "resnet":
            for b in self.prefix_blocks()[blocks:]:
                x = b(x)
            return SplitFeatures(x, None)
        v = self.visual
        x = self._run_blocks(x, v.transformer.resblocks[blocks:-1], first=blocks)
        height, width = v.grid_size
        cls_token, patches = x[:, :1 + self._n_prompts], x[:, 1 + self._n_prompts:]  # prompts travel aside
        fmap = patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)
        return SplitFeatures(fmap, cls_token)

    def _attnpool(self, fmap: torch.Tensor) -> torch.Tensor:
        pool = self.visual.attnpool
        if fmap.shape[-2] * fmap.shape[-1] + 1 != pool.positional_embedding.shape[0]:
            # the attention pool's position embedding fixes the C5 grid, hence the input size
            raise TinltError(
                f"model '{self.name}': a {fmap.shape[-2]}x{fmap.shape[-1]} feature map does not fit the "
                f"attention pool, which expects {self.image_size}x{self.image_size} inputs"
            )
        return pool(fmap)

    def forward_merge(self, fmap: torch.Tensor, aside: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.kind == "resnet":
            return self._attnpool(fmap)
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
        if self.kind == "vit":
            raise TinltError(
                f"model '{self.name}': a ViT head needs the class token; use forward_split/forward_merge"
            )
        return self._attnpool(fmap)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)  # a no-op for ModifiedResNet


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


# -- weights -------------------------------------------------------------------------

def _looks_like_path(value: str) -> bool:
    return (
        "/" in value or os.sep in value or value.startswith("~")
        or Path(value).suffix.lower() in CHECKPOINT_SUFFIXES or Path(value).exists()
    )


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """OpenAI's released CLIP .pt files are TorchScript archives (a zip with constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())


# entries of OpenAI's TorchScript state dicts that are not weights
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def _load_torchscript_weights(model: nn.Module, path: Path) -> None:
    """Load a TorchScript CLIP archive (OpenAI's release format) into an open_clip model:
    what open_clip.load_checkpoint does for such files, minus the entries a traced
    module adds that are not weights (OpenAI metadata, non-persistent buffers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_METADATA and k not in non_persistent}
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    model.load_state_dict(state_dict, strict=True)


def _create(name: str, **kwargs: Any) -> nn.Module:
    return open_clip.create_model(name, precision="fp32", device="cpu", **kwargs)


def load_openclip_model(name: str, pretrained: str = "", image_size: Optional[int] = None) -> nn.Module:
    """Build open_clip model ``name`` (fp32, CPU) and load ``pretrained``:

      - "" -> random init;
      - a local file: an OpenAI TorchScript archive (built with QuickGELU, as OpenAI
        trained it; ``_load_torchscript_weights``), or an open_clip state
        dict (.bin/.pt/.pth/.safetensors, also {"state_dict": ...}) via
        open_clip.create_model(name, pretrained=path);
      - an open_clip pretrained tag (e.g. "openai", "laion2b_s34b_b79k"): fetched by
        open_clip from the hub, i.e. it fails offline (TinltError says what to do).
    ``image_size`` rebuilds the model for another input size (ViT position embeddings are
    interpolated on load by open_clip).
    """
    register_model_configs()
    if name not in open_clip.list_models():
        raise TinltError(f"model.name = '{name}': not an open_clip model config")
    kwargs: dict[str, Any] = {}
    if image_size:
        kwargs["force_image_size"] = int(image_size)
    pretrained = (pretrained or "").strip()
    if not pretrained:
        return _create(name, **kwargs)

    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            problem = "is not a file" if path.exists() else "not found"
            raise TinltError(f"model.pretrained: checkpoint file {problem}: {path}")
        try:
            if is_torchscript_archive(path):
                model = _create(name, force_quick_gelu=True, **kwargs)
                _load_torchscript_weights(model, path)
                return model
            return _create(name, pretrained=str(path), **kwargs)
        except TinltError:
            raise
        except Exception as e:  # corrupt file, wrong architecture, missing/unexpected keys
            raise TinltError(f"{path}: cannot load into model '{name}': {_one_line(e)}") from None

    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg and not _hub_reachable():  # fail in a second instead of ~30 s of hub retries
        raise TinltError(
            f"model.pretrained = '{pretrained}': the open_clip weights for '{name}' come from the Hugging Face "
            "hub, which is not reachable from here; download the checkpoint on a connected machine and set "
            "model.pretrained=/path/to/file"
        )
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = ", ".join(tags) if tags else "none"
        raise TinltError(
            f"model.pretrained = '{pretrained}': not a file and not an open_clip tag for '{name}' "
            f"(tags: {known})"
        )
    try:
        return _create(name, pretrained=pretrained, force_quick_gelu=bool(tag_cfg.get("quick_gelu")), **kwargs)
    except Exception as e:
        raise TinltError(
            f"model.pretrained = '{pretrained}': could not fetch open_clip weights for '{name}' "
            f"({_one_line(e, 120)}); download the checkpoint on a connected machine and set "
            "model.pretrained=/path/to/file"
        ) from None


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (HF_HUB_OFFLINE=1 means no), checked once per process."""
    global _HUB
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    if _HUB is None:
        import socket

        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            _HUB = True
        except OSError:
            _HUB = False
    return _HUB


_HUB: Optional[bool] = None


def create_openclip_towers(
        name: str, pretrained: str = "", image_size: Optional[int] = None,
) -> tuple[OpenCLIPImageTower, OpenCLIPTextTower]:
    """(image tower, text tower) of open_clip model ``name`` with ``pretrained`` weights."""
    model = load_openclip_model(name, pretrained, image_size=image_size)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    image = OpenCLIPImageTower(
        model.visual,
        image_mean=preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
        image_std=preprocess.get("std", open_clip.OPENAI_DATASET_STD),
        name=name,
    )
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # HF tokenizers are fetched from the hub
        raise TinltError(f"model.name = '{name}': could not load its tokenizer ({_one_line(e, 160)})") from None
    text = OpenCLIPTextTower(model, tokenizer, name=name)
    return image, text
