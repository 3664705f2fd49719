"""``ImageDataset``: a :class:`Samples` split as a torch dataset of ``(image, label, index)``.

Path items are decoded with :func:`tinlt.data.images.open_image` (upright RGB, big JPEGs
decoded at reduced scale); in-memory uint8 arrays become PIL images. A file that fails to
decode does not stop a long run: the next decodable sample stands in, the file is logged
once and listed in ``bad_items``. (With DataLoader workers each worker keeps its own list;
the log warning is what reaches the user.) With an ``image_cache`` (data/image_cache.py),
path items found in it unchanged are read pre-resized from its shards instead.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from PIL import Image

from ..errors import TinltError
from .images import DEFAULT_DRAFT_SIZE, open_image
from .samples import Samples

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DRAFT_SIZE", "ImageDataset"]  # the draft size lives in images.py (torch-free)


class ImageDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        samples: Samples,
        transform: Optional[Callable] = None,
        draft_size: Optional[int] = DEFAULT_DRAFT_SIZE,
        image_cache=None,
    ) -> None:
        if len(samples) == 0:
            raise TinltError(f"{samples.source or 'split'}: no samples (empty split)")
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size
        self.bad_items: list[tuple[str, str]] = []  # (path, reason), once per file
        self._bad: set[int] = set()
        self.image_cache = None if samples.in_memory else image_cache
        self._rows = self.image_cache.rows(samples.items) if self.image_cache is not None else None
        self.uncached = 0 if self._rows is None else int((self._rows < 0).sum())

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, index: int) -> Image.Image:
        item = self.samples.items[index]
        if self.samples.in_memory:
            return Image.fromarray(item)
        if self._rows is not None and self._rows[index] >= 0:
            return self.image_cache.read(int(self._rows[index]))
        return open_image(item, draft_size=self.draft_size)

    def __getitem__(self, index: int):
        n = len(self.samples)
        index = int(index)
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                image = self._decode(i)
            except Exception as e:  # any decoder failure (OSError, SyntaxError, ValueError, ...)
                self._mark_bad(i, e)
                continue
            # transform errors are bugs, not bad files: let them surface
            if self.transform is not None:
                image = self.transform(image)
            return image, int(self.samples.labels[i]), i
        raise TinltError(f"{self.samples.source or 'split'}: none of the {n} images could be decoded")

    def _mark_bad(self, index: int, error: Exception) -> None:
        self._bad.add(index)
        item = self.samples.items[index]
        name = f"in-memory image {index}" if self.samples.in_memory else str(item)
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        self.bad_items.append((name, reason))
        logger.warning("skipping unreadable image %s (%s); using the next one instead", name, reason)
