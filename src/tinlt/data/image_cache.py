"""Pre-resized image cache for big lists (``tinlt data cache``; ``data.image_cache``).

Every image of a split is decoded once (``open_image``: upright RGB, JPEG draft decoding),
its shorter side resized to ``short_side`` with Pillow's bicubic filter (never enlarged),
and its raw RGB bytes appended to a few large shard files (``pixels-000.bin``, ... up to
1 GiB each) that a training run then reads with ``mmap``: no decoding, no resizing, one
sequential file per gigabyte. A 500x375 JPEG at short side 256 is 262 KB raw (30 GB for
ImageNet-LT's 116k training images), read back 14x faster than decoded
(benchmarks/bench_pipeline.py).

The rules are the feature cache's (engine/feature_cache.py): an entry is a folder named by
a hash of its key (format version, short side, and every file's path, size and mtime), it is
written under ``<name>.tmp-<pid>`` and renamed into place, and ``tinlt cache list`` /
``tinlt cache prune`` see it (kind ``images``). Reading is per file: a sample whose path is
in the entry with the same size and mtime reads the cached pixels; any other sample (a new
file, a changed one, an in-memory array) is decoded from its file as before, and the
dataset says how many were not cached. Files that could not be decoded at build time are
recorded with their reason and skipped at read time the way undecodable files always are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import TinltError
from .images import open_image

FORMAT_VERSION = 1
SHARD_BYTES = 1 << 30
KIND = "images"


def file_stamp(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of ``path``, (-1, -1) if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return int(st.st_size), int(st.st_mtime_ns)


def cache_key(paths: Sequence[str], short_side: int) -> dict:
    h = hashlib.sha256()
    for p in paths:
        size, mtime = file_stamp(p)
        h.update(os.fsencode(p) + f"\0{size}\0{mtime}\n".encode())
    return {"format": FORMAT_VERSION, "kind": KIND, "model": f"short-side {int(short_side)}",
            "short_side": int(short_side), "num_files": len(paths), "files": h.hexdigest()}


def resize_short_side(img: Image.Image, short_side: int) -> Image.Image:
    """Shorter side to ``short_side`` (bicubic, rounded long side), never enlarged."""
    w, h = img.size
    if min(w, h) <= short_side:
        return img
    if w <= h:
        size = (short_side, max(1, round(h * short_side / w)))
    else:
        size = (max(1, round(w * short_side / h)), short_side)
    return img.resize(size, Image.BICUBIC)


def entry_for(root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root) / f"images-{key['short_side']}-{digest}"


def build(paths: Sequence[str], root: Path, short_side: int = 256,
          tick: Optional[Callable[[int], None]] = None) -> tuple[Path, bool]:
    """Build (or find) the entry for ``paths``; returns (entry folder, whether it was built now)."""
    if short_side < 1:
        raise TinltError(f"--short-side must be >= 1, got {short_side}")
    paths = [str(p) for p in paths]
    key = cache_key(paths, short_side)
    entry = entry_for(root, key)
    if (entry / "meta.json").is_file():
        try:
            ImageCache(entry)
            return entry, False
        except TinltError:
            shutil.rmtree(entry, ignore_errors=True)  # damaged: rebuild
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    index = np.zeros((len(paths), 4), dtype=np.int64)  # shard, byte offset, height, width (0 = unreadable)
    unreadable: dict[str, str] = {}
    shard, offset, out = 0, 0, None
    try:
        out = open(tmp / f"pixels-{shard:03d}.bin", "wb")
        for i, p in enumerate(paths):
            try:
                img = resize_short_side(open_image(p, draft_size=short_side), short_side)
            except Exception as e:  # any decoder failure: recorded, skipped at read time
                unreadable[str(i)] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
                index[i] = (shard, offset, 0, 0)
            else:
                data = img.tobytes()
                if offset and offset + len(data) > SHARD_BYTES:
                    out.close()
                    shard, offset = shard + 1, 0
                    out = open(tmp / f"pixels-{shard:03d}.bin", "wb")
                out.write(data)
                index[i] = (shard, offset, img.height, img.width)
                offset += len(data)
            if tick is not None:
                tick(1)
        out.close()
        np.save(tmp / "index.npy", index)
        (tmp / "paths.json").write_text(json.dumps(paths))
        stamps = np.array([file_stamp(p) for p in paths], dtype=np.int64).reshape(-1, 2)
        np.save(tmp / "stamps.npy", stamps)
        meta = {"key": key, "shards": shard + 1, "unreadable": unreadable, "created": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():  # another process finished the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return entry, False
        os.replace(tmp, entry)
    except OSError as e:
        if out is not None:
            out.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise TinltError(f"image cache {entry}: could not write ({e.strerror or e}); nothing was kept") from None
    except BaseException:
        if out is not None:
            out.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry, True


class ImageCache:
    """One entry, read-only. Memory maps open lazily in each process (DataLoader workers)."""

    def __init__(self, entry) -> None:
        self.entry = Path(entry).expanduser()
        where = f"data.image_cache {self.entry}"
        try:
            meta = json.loads((self.entry / "meta.json").read_text())
            self.index = np.load(self.entry / "index.npy")
            self.paths = json.loads((self.entry / "paths.json").read_text())
            self.stamps = np.load(self.entry / "stamps.npy")
            self.short_side = int(meta["key"]["short_side"])
            self.shards = int(meta["shards"])
            self.unreadable = {int(k): str(v) for k, v in meta.get("unreadable", {}).items()}
        except FileNotFoundError as e:
            raise TinltError(f"{where}: not an image cache entry (missing {Path(e.filename).name}); "
                             "build one with 'tinlt data cache'") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TinltError(f"{where}: damaged ({type(e).__name__}); rebuild it with 'tinlt data cache'") from None
        n = len(self.paths)
        if self.index.shape != (n, 4) or self.stamps.shape != (n, 2):
            raise TinltError(f"{where}: damaged (index and path list disagree); rebuild it with 'tinlt data cache'")
        for s in range(self.shards):
            f = self.entry / f"pixels-{s:03d}.bin"
            used = self.index[self.index[:, 0] == s]
            end = int((used[:, 1] + used[:, 2] * used[:, 3] * 3).max()) if len(used) else 0
            if not f.is_file() or f.stat().st_size < end:
                raise TinltError(f"{where}: damaged ({f.name} is missing or short); rebuild it with 'tinlt data cache'")
        self._row = {p: i for i, p in enumerate(self.paths)}
        self._maps: dict[int, np.memmap] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """Each path's row in the entry, or -1 where it is absent or its file changed since."""
        out = np.full(len(paths), -1, dtype=np.int64)
        for i, p in enumerate(paths):
            r = self._row.get(str(p))
            if r is not None and file_stamp(str(p)) == tuple(int(v) for v in self.stamps[r]):
                out[i] = r
        return out

    def read(self, row: int) -> Image.Image:
        """The cached RGB image at ``row``; ``ValueError`` for a file that did not decode at build time."""
        shard, offset, h, w = (int(v) for v in self.index[row])
        if h == 0:
            raise ValueError(self.unreadable.get(row, "unreadable when the cache was built"))
        m = self._maps.get(shard)
        if m is None:
            m = self._maps[shard] = np.memmap(self.entry / f"pixels-{shard:03d}.bin", dtype=np.uint8, mode="r")
        return Image.fromarray(np.array(m[offset:offset + h * w * 3]).reshape(h, w, 3), "RGB")
