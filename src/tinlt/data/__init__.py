"""Data: split sources, long-tail subsets, shot groups, transforms, datasets and samplers.

Names are imported lazily, so ``tinlt data inspect`` (lists and counts only) does not pay
for importing torch/torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

from .samples import Samples

_EXPORTS = {
    "sources": (
        "LISTS_DIR",
        "IMAGE_EXTENSIONS",
        "load_list",
        "load_folder",
        "load_csv",
        "read_classnames",
        "read_classnames_entries",
        "display_name",
    ),
    "fashion_mnist": ("read_idx", "load_fashion_mnist", "find_idx_files"),
    "longtail": ("long_tail_counts", "first_per_class", "select_classes", "subsample"),
    "groups": ("shot_groups",),
    "images": ("open_image", "to_rgb", "MAX_PIXELS"),
    "transforms": ("build_transforms",),
    "dataset": ("ImageDataset",),
    "samplers": ("ClassBalancedSampler", "build_sampler"),
    "build": ("build_split", "check_same_classes"),
    "bundle": ("DataBundle", "build_data"),
    "inspect": ("summarize", "format_summary"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["Samples", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tinlt.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
