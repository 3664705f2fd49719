"""Name -> tower-pair builder. open_clip names are the fallback; other pairs register here."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

from .base import ImageTower, TextTower

# builder(model_cfg) -> (image_tower, text_tower)
TowerBuilder = Callable[..., Tuple[ImageTower, TextTower]]
_BUILDERS: Dict[str, TowerBuilder] = {}


def register_towers(name: str, builder: TowerBuilder) -> None:
    _BUILDERS[name] = builder


def get_builder(name: str) -> TowerBuilder | None:
    return _BUILDERS.get(name)


def registered_names() -> list[str]:
    return sorted(_BUILDERS)
