"""Model name -> tower-pair builder. Tower modules register here when imported
(models/towers/; ``tinlt.models.builtin`` imports them): a single name
(:func:`register_towers`) or a family of names another library lists
(:func:`register_family`, e.g. every open_clip model config). Names come first, then
families, in the order they registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from .base import ImageTower, TextTower

# builder(model_cfg, image_size=None) -> (image_tower, text_tower)
TowerBuilder = Callable[..., Tuple[ImageTower, TextTower]]


@dataclass
class _Entry:
    build: TowerBuilder
    kind: str
    pretrained: list


@dataclass
class _Family:
    name: str
    names: Callable[[], list]
    build: TowerBuilder
    describe: Optional[Callable[[], list]] = None


_BUILDERS: Dict[str, _Entry] = {}
_FAMILIES: Dict[str, _Family] = {}


def register_towers(name: str, builder: TowerBuilder, *, kind: str = "offline", pretrained=("packaged",)) -> None:
    """``name`` builds its pair with ``builder(model_cfg, image_size=None)``."""
    _BUILDERS[name] = _Entry(builder, kind, list(pretrained))


def register_family(name: str, *, names: Callable[[], list], build: TowerBuilder,
                    describe: Optional[Callable[[], list]] = None) -> None:
    """Every name ``names()`` lists builds with ``build(model_cfg, image_size=None)``;
    ``describe()`` gives `tinlt models` rows ({name, kind, pretrained})."""
    _FAMILIES[name] = _Family(name, names, build, describe)


def get_builder(name: str) -> Optional[TowerBuilder]:
    """The builder for ``name``: a registered name, else the first family that lists it."""
    if name in _BUILDERS:
        return _BUILDERS[name].build
    for family in _FAMILIES.values():
        if name in family.names():
            return family.build
    return None


def registered_names() -> list[str]:
    return sorted(_BUILDERS)


def all_names() -> list[str]:
    out = registered_names()
    for family in _FAMILIES.values():
        out += [n for n in family.names() if n not in out]
    return out


def describe() -> list[dict[str, Any]]:
    rows = [{"name": n, "kind": e.kind, "pretrained": e.pretrained} for n, e in sorted(_BUILDERS.items())]
    for family in _FAMILIES.values():
        listed = family.describe() if family.describe else [{"name": n, "kind": family.name, "pretrained": []}
                                                             for n in family.names()]
        rows += [r for r in listed if r["name"] not in _BUILDERS]
    return rows
