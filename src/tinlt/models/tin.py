"""TIN: an image tower with gated large-kernel attention, classified by text prompts.

Owns the model that training and evaluation see: image embedding (tower split around
its last spatial map, ``GatedAttention`` in between), the class prompts and their text
features (for the text head), the head (an object of models/heads.py that owns its logits
and rows), tower freezing and the optimizer parameter groups ("image", "text", "new").
:meth:`TIN.scorer` is the one way to score many batches: the class text features are
computed once and shared.

Class text features are cached when they cannot carry gradients (text tower frozen, or
grad disabled); the cache is keyed on the text tower's parameter versions, device and
mode, so training steps, ``load_state_dict`` and ``.to()`` invalidate it. Caches and
tokens are never part of the state dict.

``forward`` also takes the image tower's outputs in place of images: ``SplitFeatures``
(``forward_split``) or ``ImageEmbedding`` (``forward_merge``), which is how training reads
a frozen tower's features from disk (engine/feature_cache.py).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TinltError
from .attention import GatedAttention
from .heads import TextHead, ensemble_prompts, head_class
from .base import ImageTower, PrefixFeatures, SplitFeatures, TextTower
from .prompt_shard import can_shard, encode_sharded, shard_world
from .text_buckets import plan_buckets, take

class ImageEmbedding(NamedTuple):
    """(B, D) image embeddings as ``forward_merge`` returns them (not normalised); TIN's
    forward takes them in place of images when the whole image path is fixed."""

    embedding: torch.Tensor


def _check_templates(templates: Iterable[str]) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates:
        raise TinltError("model.templates: at least one template is needed")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise TinltError(f"model.templates: template {t!r} has no '{{}}' for the class name")
    return templates


class TIN(nn.Module):
    """logits = head(image embedding): exp(logit_scale) * cos(image embedding, class text feature) with
    the text head, or a linear / cosine head (models/heads.py).

    Args:
      image_tower, text_tower: towers meeting models/base.py (text_tower is not kept
        with ``head="linear"``; it may be None then).
      classnames: one name per label, in label order; "_" reads as a space in prompts.
      templates: prompt templates with "{}" for the class name; features are averaged
        over templates (each prompt L2-normalised, the mean renormalised).
      visual_attention: insert GatedAttention on the image tower's last feature map.
      head: a registered head name (models/heads.py): "text" (prompt cosine classifier),
        "linear" (a linear layer on the normalised embedding) or "cosine" (learnable unit rows).
      cosine_scale: the cosine head's fixed logit scale.
      logit_scale: initial exp(logit_scale), stored as its log like CLIP, clamped at 100.
      learn_logit_scale: train it (else a fixed buffer).
      truncate_text: let the text tower drop padding that cannot change its output.
      text_buckets: with truncation, encode the prompts in up to this many groups of similar
        length, each cut to its own longest prompt (tinlt/models/text_buckets.py); 1 = one
        group cut to the longest prompt overall.
    """

    def __init__(
            self,
            image_tower: ImageTower,
            text_tower: Optional[TextTower],
            classnames: Sequence[str],
            templates: Sequence[str] = ("a photo of a {}.",),
            visual_attention: bool = True,
            head: str = "text",
            logit_scale: float = 1 / 0.07,
            learn_logit_scale: bool = True,
            truncate_text: bool = True,
            text_buckets: int = 4,
            cosine_scale: float = 25.0,
            coop_ctx: int = 0,
            coop_position: str = "end",
    ):
        super().__init__()
        self._head_cls = head_class(head)
        if self._head_cls.needs_text and text_tower is None:
            raise TinltError(f"model.head = '{head}' needs a text tower")
        self.head_type = head
        self.cosine_scale = float(cosine_scale)
        self.truncate_text = bool(truncate_text)
        if int(text_buckets) < 1:
            raise TinltError(f"model.text_buckets = {text_buckets}; must be >= 1")
        self.text_buckets = int(text_buckets)
        self._bucket_lengths: list[int] = []  # empty: one call over all prompts
        self.image_tower = image_tower
        self.text_tower = text_tower if self._head_cls.needs_text else None
        self.attention = GatedAttention(image_tower.feature_channels) if visual_attention else None
        # the text head is built here; heads with class weights when the classes are set
        self.head: Optional[nn.Module] = TextHead(logit_scale, learn_logit_scale) if head == "text" else None
        self._register_load_state_dict_pre_hook(_legacy_keys, with_module=True)

        # tower parameters that never train (open_clip fixes some, e.g. sin-cos positions)
        self._fixed_by_design = {n for n, p in self.named_parameters() if not p.requires_grad}
        self._frozen = {"image": False, "text": False}
        self._tuned: dict[str, Optional[set[str]]] = {"image": None, "text": None}  # models/tuning
        self._bn_stats_frozen = False
        self._token_names: list[str] = []
        self._token_keys: Optional[list[str]] = None  # None: tokens are one tensor
        self._tokens_version = 0
        self._text_cache: Optional[tuple[Any, torch.Tensor]] = None
        self.text_batch_size = 1024  # prompts per text-tower call
        self.shard_prompts = True  # model.shard_prompts: split the prompts across ranks when the text tower trains
        self.coop: Optional[nn.Module] = None  # learnable prompt context (models/coop.py)
        if self._head_cls.needs_text and coop_ctx:
            from .coop import PromptContext

            self.coop = PromptContext(text_tower, _check_templates(templates)[0], coop_ctx, coop_position)
        self.templates: tuple[str, ...] = ()
        self.classnames: list[str] = []
        self.set_classnames(classnames, templates)

    # -- classes -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self) -> list[str]:
        """Class-major: prompt c * len(templates) + t is template t filled with class c; with
        learnable prompts (CoOp) one prompt per class around the context placeholders."""
        if self.coop is not None:
            return self.coop.prompts(self.classnames)
        names = [c.replace("_", " ") for c in self.classnames]
        return [t.replace("{}", n) for n in names for t in self.templates]

    @property
    def prompts_per_class(self) -> int:
        return 1 if self.coop is not None else len(self.templates)

    def set_classnames(self, classnames: Sequence[str], templates: Optional[Sequence[str]] = None) -> None:
        """Set the label set (and optionally the templates); re-tokenises the prompts.

        With the linear head the layer is rebuilt (fresh init) only if the class count changes.
        """
        names = [str(c) for c in classnames]
        if not names:
            raise TinltError("model: the class list is empty")
        if templates is not None or not self.templates:
            self.templates = _check_templates(templates if templates is not None else ("a photo of a {}.",))
        self.classnames = names
        device = self._device()
        if not self._head_cls.needs_text:
            if self.head is None or self.head.num_classes != len(names):
                dtype = next(self.image_tower.parameters(), torch.empty(0)).dtype
                head = self._head_cls(self.image_tower.output_dim, len(names), scale=self.cosine_scale)
                self.head = head.to(device=device, dtype=dtype)
        else:
            tokens = self.text_tower.tokenize(self.prompts(), truncate=self.truncate_text)
            if self.coop is not None:
                self.coop.check(self.text_tower.token_ids(tokens), names)
            self._set_tokens(tokens, device)
            self._set_buckets(device)
        self._text_cache = None

    def _device(self) -> torch.device:
        for p in self.image_tower.parameters():
            return p.device
        return torch.device("cpu")

    def _set_tokens(self, tokens: Any, device: torch.device) -> None:
        for name in self._token_names:
            del self._buffers[name]
        if isinstance(tokens, torch.Tensor):
            items, self._token_keys = {"": tokens}, None
        elif isinstance(tokens, Mapping):
            items = dict(tokens)
            self._token_keys = list(items)
        else:
            raise TypeError(f"text tower tokens must be a tensor or a dict of tensors, got {type(tokens).__name__}")
        self._token_names = []
        for key, value in items.items():
            name = f"text_tokens_{key}" if key else "text_tokens"
            self.register_buffer(name, torch.as_tensor(value).to(device), persistent=False)
            self._token_names.append(name)
        self._tokens_version += 1

    def _set_buckets(self, device: torch.device) -> None:
        for i in range(len(self._bucket_lengths)):
            del self._buffers[f"text_bucket_rows_{i}"]
        self._bucket_lengths = []
        if "text_bucket_inverse" in self._buffers:
            del self._buffers["text_bucket_inverse"]
        if not self.truncate_text or self.text_buckets < 2:
            return
        lengths = self.text_tower.token_lengths(self._tokens())
        if lengths is None:  # the tower cannot cut rows exactly
            return
        buckets = plan_buckets(lengths, self.text_buckets)
        if len(buckets) < 2:
            return
        for i, b in enumerate(buckets):
            self.register_buffer(f"text_bucket_rows_{i}", b.rows.to(device), persistent=False)
        order = torch.cat([b.rows for b in buckets])
        self.register_buffer("text_bucket_inverse", torch.argsort(order).to(device), persistent=False)
        self._bucket_lengths = [b.length for b in buckets]

    def text_token_count(self) -> int:
        """Token columns one pass over all prompts runs through the text tower."""
        tokens = self._tokens()
        first = tokens if self._token_keys is None else next(iter(tokens.values()))
        if not self._bucket_lengths:
            return int(first.shape[0] * first.shape[1])
        return sum(len(self._buffers[f"text_bucket_rows_{i}"]) * n for i, n in enumerate(self._bucket_lengths))

    def _tokens(self) -> Any:
        if self._token_keys is None:
            return self._buffers[self._token_names[0]]
        return {k: self._buffers[n] for k, n in zip(self._token_keys, self._token_names)}

    # -- text ------------------------------------------------------------------------
    def _text_parameters(self) -> list[nn.Parameter]:
        return list(self.text_tower.parameters()) + (list(self.coop.parameters()) if self.coop is not None else [])

    def _text_frozen(self) -> bool:
        return not any(p.requires_grad for p in self._text_parameters())

    def _cache_key(self) -> tuple:
        params = tuple((p._version, p.data_ptr(), p.dtype) for p in self._text_parameters())
        return (self._tokens_version, self.text_tower.training, params)

    def _encode_prompts(self) -> torch.Tensor:
        tokens = self._tokens()
        if self._bucket_lengths:
            parts = [take(tokens, self._buffers[f"text_bucket_rows_{i}"], n) for i, n in enumerate(self._bucket_lengths)]
        else:
            parts = [tokens]
        # under torchrun, with gradients: each rank encodes its block of every group (models/prompt_shard.py)
        world = shard_world() if self.shard_prompts and torch.is_grad_enabled() and self.training else None
        sizes = [(part if isinstance(part, torch.Tensor) else next(iter(part.values()))).shape[0] for part in parts]
        shard = [world is not None and can_shard(n, world[1]) for n in sizes]
        sharded = iter(encode_sharded(self._encode_chunked, [(p, n) for p, n, s in zip(parts, sizes, shard) if s],
                                      take, *world) if any(shard) else [])
        chunks = [next(sharded) if s else self._encode_chunked(p) for p, s in zip(parts, shard)]
        out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        return out[self._buffers["text_bucket_inverse"]] if self._bucket_lengths else out

    def _encode_chunked(self, tokens: Any) -> torch.Tensor:
        """Prompt rows through the text tower, ``text_batch_size`` at a time."""
        n = (tokens if isinstance(tokens, torch.Tensor) else next(iter(tokens.values()))).shape[0]
        chunks = [self._encode(take(tokens, slice(start, start + self.text_batch_size)))
                  for start in range(0, n, self.text_batch_size)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _encode(self, tokens: Any) -> torch.Tensor:
        if self.coop is None:
            return self.text_tower(tokens)
        embeddings = self.coop.fill(self.text_tower.token_ids(tokens), self.text_tower.token_embeddings(tokens))
        return self.text_tower(tokens, embeddings=embeddings)

    def _compute_text_features(self) -> torch.Tensor:
        return ensemble_prompts(self._encode_prompts(), len(self.classnames), self.prompts_per_class)

    def class_text_features(self) -> torch.Tensor:
        """(num_classes, D) L2-normalised template-ensembled class features."""
        if self.text_tower is None:
            raise TinltError("model.head = 'linear' has no class text features")
        if not (self._text_frozen() or not torch.is_grad_enabled()):
            return self._compute_text_features()  # traced into a compiled forward: the text tower trains
        return self._cached_text_features()

    @torch.compiler.disable  # a Python-side cache keyed on parameter versions: keep it out of graphs
    def _cached_text_features(self) -> torch.Tensor:
        key = self._cache_key()
        if self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        with torch.no_grad():
            feats = self._compute_text_features()
        self._text_cache = (key, feats)
        return feats

    # -- image -----------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.encode_split(self.image_tower.forward_split(images), normalize=normalize)

    def encode_split(self, split: SplitFeatures, normalize: bool = True) -> torch.Tensor:
        """Image embedding from ``image_tower.forward_split``'s output (e.g. read from a cache)."""
        fmap, aside = split
        if self.attention is not None:
            fmap = self.attention(fmap)
        emb = self.image_tower.forward_merge(fmap, aside)
        return F.normalize(emb, dim=-1) if normalize else emb

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 (text head only)."""
        return self.head.scale()

    @property
    def logit_scale(self) -> Optional[torch.Tensor]:
        """The text head's log logit scale (None for other heads)."""
        return self.head.logit_scale if isinstance(self.head, TextHead) else None

    @property
    def uses_text_head(self) -> bool:
        return self.head.needs_text

    def forward(
            self,
            images: Union[torch.Tensor, SplitFeatures, ImageEmbedding, PrefixFeatures],
            text_features: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits. ``text_features`` (C, D) overrides the
        cached class features (text head), e.g. to share them across a whole evaluation
        (:meth:`scorer` does that).

        In place of images: ``SplitFeatures`` (the tower's forward_split output; attention
        and forward_merge still run) or ``ImageEmbedding`` (forward_merge output)."""
        if isinstance(images, ImageEmbedding):
            image = F.normalize(images.embedding, dim=-1)
        elif isinstance(images, PrefixFeatures):
            image = self.encode_split(self.image_tower.split_from_prefix(images.x, images.blocks), normalize=True)
        elif isinstance(images, SplitFeatures):
            image = self.encode_split(images, normalize=True)
        else:
            image = self.encode_image(images, normalize=True)
        return self.classify(image, text_features)

    def classify(self, image: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, D) L2-normalised image embeddings -> (B, num_classes) logits.

        In eval mode the evaluation-time adjustments apply (``set_eval_adjustments``)."""
        rows = None
        if self.head.needs_text:
            rows = text_features if text_features is not None else self.class_text_features()
        logits = self.head(image, rows)
        offset = self._buffers.get("logit_offset")
        return logits.float() + offset if (not self.training and offset is not None) else logits

    def class_rows(self) -> Optional[torch.Tensor]:
        """The rows the head compares images with when they come from outside it: the class
        prompts' text features for the text head (computed now), else None (its own weights)."""
        return self.class_text_features() if self.head.needs_text else None

    def scorer(self):
        """``images -> logits`` with the class rows computed once: what evaluation, prediction,
        selection and export score many batches with."""
        rows = self.class_rows()
        return lambda images: self(images, text_features=rows)

    @torch.no_grad()
    def set_classifier_rows(self, rows: torch.Tensor) -> None:
        """Start the head from (C, D) unit rows (model.classifier_init): a cosine head takes them
        as they are; a linear head takes them times ``cosine_scale`` with zero bias, so its first
        logits equal the cosine head's; the text head refuses (its rows are its prompts')."""
        self.head.set_rows(rows, scale=self.cosine_scale) if self.head.has_weights else self.head.set_rows(rows)

    def eval_adjustments(self) -> tuple[Optional[float], Optional[torch.Tensor]]:
        """(tau_norm, logit offset) as ``set_eval_adjustments`` set them."""
        return self.head.tau_norm, self._buffers.get("logit_offset")

    def set_eval_adjustments(self, *, tau_norm: Optional[float] = None,
                             logit_offset: Optional[torch.Tensor] = None) -> None:
        """Evaluation-time adjustments (models/adjust.py), applied in eval mode only:
        ``tau_norm`` tau-normalises the head's rows (a linear head; bias dropped);
        ``logit_offset`` (num_classes,) is added to every logit (post-hoc logit adjustment).
        None removes either. Not in the state dict: they come from the run's config."""
        if logit_offset is not None and tuple(logit_offset.shape) != (self.num_classes,):
            raise TinltError(f"logit offset: expected shape ({self.num_classes},), got {tuple(logit_offset.shape)}")
        self.head.set_tau_norm(tau_norm)
        self._buffers.pop("logit_offset", None)
        if logit_offset is not None:
            self.register_buffer("logit_offset", logit_offset.detach().float().to(self._device()), persistent=False)

    # -- training setup ----------------------------------------------------------------
    def _towers(self) -> list[tuple[str, Optional[nn.Module]]]:
        return [("image", self.image_tower), ("text", self.text_tower)]

    def freeze(self, image: bool = False, text: bool = False) -> None:
        """Freeze (or unfreeze) the pretrained part of each tower.

        A frozen tower is a fixed feature extractor: requires_grad False and eval mode
        (BatchNorm statistics and dropout fixed) whatever ``train()`` says. Parameters a
        tower reports in ``new_parameter_names()`` stay trainable.
        """
        self._frozen = {"image": bool(image), "text": bool(text)}
        self._refresh_trainable()

    def tune(self, key: str, trainable: set[str]) -> None:
        """Train only these parameters of the ``key`` tower ("image" or "text"; names as in the
        tower's named_parameters()), plus its new_parameter_names(); models/tuning decides
        them. Like a frozen tower, a tuned one keeps its statistics and dropout in eval mode."""
        self._tuned[key] = set(trainable)
        self._refresh_trainable()

    def is_tuned(self, key: str) -> bool:
        """Whether the ``key`` tower trains by a lightweight method (``tune``), not fully or frozen."""
        return self._tuned[key] is not None

    def fix(self, names, suffix: str = "") -> None:
        """Never train these parameters (full names, each + ``suffix``), whatever freeze/tune say."""
        self._fixed_by_design |= {f"{n}{suffix}" for n in names}
        self._refresh_trainable()

    def _refresh_trainable(self) -> None:
        for key, tower in self._towers():
            if tower is None:
                continue
            new, tuned = tower.new_parameter_names(), self._tuned[key]
            for name, p in tower.named_parameters():
                if self._frozen[key]:
                    train = name in new
                else:
                    train = tuned is None or name in tuned or name in new
                p.requires_grad = train and f"{key}_tower.{name}" not in self._fixed_by_design
        self.train(self.training)
        self._text_cache = None

    def freeze_bn_stats(self, enable: bool = True) -> None:
        """Keep the image tower's BatchNorm layers in eval mode (running statistics fixed)
        whatever ``train()`` says; their affine weights still train."""
        self._bn_stats_frozen = bool(enable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TIN":
        super().train(mode)
        for key, tower in self._towers():
            if tower is not None and (self._frozen[key] or self._tuned[key] is not None):
                tower.eval()
        if self._bn_stats_frozen:
            for m in self.image_tower.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if mode and self.text_tower is not None and not self._text_frozen():
            self._text_cache = None  # weights are about to change
        return self

    def named_param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by group, each exactly once:
        "image" / "text": the towers' pretrained parameters; "new": attention, linear
        head, logit scale and the towers' new_parameter_names()."""
        new_names = set()
        for key, tower in self._towers():
            if tower is not None:
                new_names |= {f"{key}_tower.{n}" for n in tower.new_parameter_names()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"image": [], "text": [], "new": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name in new_names:
                group = "new"
            elif name.startswith("image_tower."):
                group = "image"
            elif name.startswith("text_tower."):
                group = "text"
            else:
                group = "new"
            groups[group].append((name, p))
        return groups

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """As named_param_groups, parameters only."""
        return {g: [p for _, p in items] for g, items in self.named_param_groups().items()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image_tower.set_grad_checkpointing(enable)
        if self.text_tower is not None:
            self.text_tower.set_grad_checkpointing(enable)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self._text_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- preprocessing the weights expect ------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.image_tower.image_size

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return tuple(self.image_tower.image_mean)

    @property
    def image_std(self) -> tuple[float, float, float]:
        return tuple(self.image_tower.image_std)


def _legacy_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints from before heads were objects hold the text head's scale as ``logit_scale``."""
    old, new = prefix + "logit_scale", prefix + "head.logit_scale"
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)
