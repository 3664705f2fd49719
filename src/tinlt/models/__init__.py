"""TIN models: tower contract, visual attention, the TIN module and its factory.

open_clip is imported only when an open_clip name is used (it takes seconds), so
``create_model``/``list_models`` and the open_clip towers are loaded lazily.
"""

from .attention import GatedAttention, LargeKernelAttention
from .base import ImageTower, SplitFeatures, TextTower
from .registry import get_builder, register_family, register_towers, registered_names
from .tin import TIN

_LAZY = {
    "create_model": "factory",
    "create_model_and_transforms": "factory",
    "list_models": "factory",
    "model_config": "factory",
    "OpenCLIPImageTower": "towers.clip_image",
    "openclip_image_tower": "towers.clip_image",
    "OpenCLIPTextTower": "towers.clip_text",
    "create_openclip_towers": "towers.openclip",
    "load_openclip_model": "towers.clip_weights",
}

__all__ = [
    "GatedAttention", "LargeKernelAttention", "ImageTower", "SplitFeatures", "TextTower", "TIN",
    "get_builder", "register_family", "register_towers", "registered_names", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
