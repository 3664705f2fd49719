"""The loss registry: ``loss.name`` -> a builder ``(loss config node, class counts) -> loss``.

A loss is one module in this package (or in an extension) that decorates its builder with
:func:`register_loss`, giving its own config keys as a dataclass; registering tells the
config the name (``loss.name``) and the keys (``loss.<key>``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..config import register_choice, register_keys

BUILDERS: dict[str, Callable[[Any, Any], Any]] = {}


def register_loss(name: str, *, keys: Optional[type] = None):
    def wrap(build):
        BUILDERS[name] = build
        register_choice("loss.name", name)
        if keys is not None:
            register_keys("loss", keys)
        return build
    return wrap
