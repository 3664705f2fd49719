"""The tuning-method registry: name -> what the method needs, its own config keys, and the
function that sets a tower up and says which parameters train.

A method is one module that calls :func:`register_method` (tinlt's own live beside this
file and are imported by ``tinlt.models.builtin``; others come through the
``tinlt.extensions`` entry points or ``$TINLT_PLUGINS``). Registering also tells the config
the method's name (``model.tune_*.method``) and keys (``model.tune_*.<key>``), so nothing
else is edited to add one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from torch import nn

from ...config import register_choice, register_keys
from ...errors import TinltError


@dataclass
class TuneContext:
    """What a method's ``apply`` gets: the tower, its parts, the blocks the method covers
    (``blocks: k`` = the last k, else all), the config node and where it came from."""

    tower: nn.Module
    parts: Any  # models.base.TuningParts
    blocks: list
    keys: Any  # the model.tune_* node (or a dict)
    num_classes: int
    where: str  # "model.tune_image" / "model.tune_text", for messages

    def get(self, key: str, default: Any = None) -> Any:
        k = self.keys
        return k.get(key, default) if hasattr(k, "get") else getattr(k, key, default)


@dataclass
class Method:
    name: str
    apply: Callable[[TuneContext], Iterable[nn.Parameter]]  # the parameters that train
    needs: Optional[str] = None  # "transformer" | "conv" | "prompts": what the tower must offer
    keys: Optional[type] = None  # a dataclass of the method's own config keys
    blocks_apply: bool = True  # whether blocks: k restricts it (else blocks must stay 0)
    parts: bool = True  # whether the method needs the tower's tuning_parts()


METHODS: dict[str, Method] = {}


def register_method(name: str, *, needs: Optional[str] = None, keys: Optional[type] = None,
                    blocks_apply: bool = True, parts: bool = True):
    """Decorator: ``@register_method("lora", keys=LoraKeys)`` over ``apply(ctx) -> parameters``."""
    def wrap(apply):
        METHODS[name] = Method(name, apply, needs, keys, blocks_apply, parts)
        register_choice("model.tune.method", name)
        if keys is not None:
            register_keys("model.tune", keys)
        return apply
    return wrap


def method_names() -> list[str]:
    """Every registered method (the extensions loaded first)."""
    from ...config import load_extensions

    load_extensions()
    return list(METHODS)


def _offers(parts: Any, need: str) -> bool:
    if need == "prompts":
        return parts.prompts is not None
    return parts.family.kind == need


def suited(parts: Any) -> list[str]:
    """The methods this tower's parts allow (for messages)."""
    return [m.name for m in METHODS.values() if m.parts and (m.needs is None or _offers(parts, m.needs))]


def get_method(name: str, where: str) -> Method:
    if name not in METHODS:
        from ...errors import did_you_mean

        raise TinltError(f"config key '{where}.method' = {name!r}; expected one of: "
                         f"{', '.join(METHODS)}{did_you_mean(name, list(METHODS))}")
    return METHODS[name]


def check_needs(method: Method, parts: Any, where: str) -> None:
    if method.needs is None or _offers(parts, method.needs):
        return
    what = {"transformer": "a transformer tower", "conv": "a convolutional tower",
            "prompts": "a tower that takes prompt tokens (an open_clip ViT image tower)"}[method.needs]
    has = "convolutional" if parts.family.kind == "conv" else "a transformer"
    if method.needs == "prompts":
        has = "without prompt slots"
    raise TinltError(f"config key '{where}.method' = {method.name!r} needs {what}; this one is {has} "
                     f"(methods for it: {', '.join(n for n in suited(parts) if n not in ('full', 'frozen'))})")
