"""``Samples``: one split as paths (or in-memory arrays), integer labels and class names.

Every data source (list file, folder tree, CSV, Fashion-MNIST) produces one of these;
everything downstream (counts, shot groups, datasets, evaluation) reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np


@dataclass
class Samples:
    items: Union[list[str], np.ndarray]  # absolute image paths, or uint8 images (N,H,W) / (N,H,W,3)
    labels: np.ndarray  # int64, shape (N,), values in [0, num_classes)
    classnames: list[str]
    source: str = ""  # where it came from, for messages
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason) dropped while loading
    origin: Optional[np.ndarray] = None  # each sample's position in the split it was loaded as (subsets keep it)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.origin is None:
            self.origin = np.arange(len(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.items, np.ndarray)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, index: np.ndarray) -> "Samples":
        index = np.asarray(index, dtype=np.int64)
        items = self.items[index] if self.in_memory else [self.items[i] for i in index]
        return Samples(items, self.labels[index], list(self.classnames), self.source, origin=self.origin[index])
