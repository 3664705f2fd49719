"""Config -> data: build one split from its ``SplitConfig`` and check splits agree on classes.

``kind`` picks the source (list | folder | csv | fashion_mnist; empty = split unused).
``classes``, ``counts``, ``lt_n_max``/``lt_ratio`` and ``per_class_limit`` apply to every
kind the same way (see :mod:`tinlt.data.longtail`), so any dataset can be made long-tailed.
Errors are prefixed with the config key of the split, e.g. ``data.train: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..config import SPLIT_KINDS, check_choice
from ..errors import TinltError
from .fashion_mnist import DEFAULT_FOLDER, load_fashion_mnist
from .longtail import select_classes, subsample
from .samples import Samples
from .sources import load_csv, load_folder, load_list



def _key_of(split_cfg: Any) -> str:
    try:  # an OmegaConf node knows its own dotted key, e.g. "data.train"
        return split_cfg._get_full_key(None) or "data split"
    except Exception:
        return "data split"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def build_split(split_cfg: Any, where: Optional[str] = None) -> Optional[Samples]:
    """The split described by ``split_cfg`` (a ``SplitConfig`` node), or None if ``kind`` is empty."""
    where = where or _key_of(split_cfg)
    kind = str(_get(split_cfg, "kind", "") or "").strip()
    if not kind:
        return None
    check_choice(f"{where}.kind", kind, SPLIT_KINDS)
    path = str(_get(split_cfg, "path", "") or "")
    root = str(_get(split_cfg, "root", "") or "") or None
    classnames = str(_get(split_cfg, "classnames", "") or "") or None
    classes = [int(c) for c in (_get(split_cfg, "classes", None) or [])]
    counts = [int(c) for c in (_get(split_cfg, "counts", None) or [])]
    lt_n_max = int(_get(split_cfg, "lt_n_max", 0) or 0)
    lt_ratio = float(_get(split_cfg, "lt_ratio", 100.0) or 100.0)
    per_class_limit = int(_get(split_cfg, "per_class_limit", 0) or 0)
    if kind != "fashion_mnist" and not path:
        raise TinltError(f"config key '{where}.path' is empty (needed for kind '{kind}')")
    if kind in ("list", "csv", "folder") and not Path(path).expanduser().exists():
        what = "image folder" if kind == "folder" else f"{kind} file"
        raise TinltError(f"config key '{where}.path' = '{path}': {what} not found "
                         f"(give it on the command line: {where}.path=/path/to/{'folder' if kind == 'folder' else 'file'})")

    try:
        if kind == "fashion_mnist":
            split = str(_get(split_cfg, "split", "train") or "train")
            if split not in ("train", "test"):
                raise TinltError(f"config key '{where}.split' = {split!r}; expected 'train' or 'test'")
            return load_fashion_mnist(
                path or DEFAULT_FOLDER,
                split=split,
                classes=classes,
                lt_n_max=lt_n_max,
                lt_ratio=lt_ratio,
                counts=counts,
                per_class_limit=per_class_limit,
            )
        if kind == "list":
            samples = load_list(path, root=root, classnames_file=classnames)
        elif kind == "csv":
            samples = load_csv(path, root=root, classnames_file=classnames)
        else:
            samples = load_folder(path, classnames=classnames)
        if classes:
            samples = select_classes(samples, classes, where="classes")
        kept = subsample(samples, lt_n_max=lt_n_max, lt_ratio=lt_ratio, counts=counts, per_class_limit=per_class_limit)
        if len(kept) < len(samples):  # your own data shrinks only on purpose, and says so on every run
            import sys

            keys = [k for k, v in (("lt_n_max", lt_n_max), ("counts", counts), ("per_class_limit", per_class_limit)) if v]
            print(f"tinlt: note: {where}: {', '.join(f'{where}.{k}' for k in keys)} keep {len(kept):,} of "
                  f"{len(samples):,} images (per class {samples.class_counts().tolist()} -> "
                  f"{kept.class_counts().tolist()})", file=sys.stderr)
        return kept
    except TinltError as e:
        raise TinltError(f"{where}: {e}") from None


def check_same_classes(train: Samples, other: Samples, where: str) -> None:
    """Raise unless ``other`` (named ``where``, e.g. ``data.val``) has train's class names in order."""
    a, b = list(train.classnames), list(other.classnames)
    if a == b:
        return
    if len(a) != len(b):
        detail = f"{len(b)} classes vs {len(a)} in data.train"
    else:
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        detail = f"label {i} is {b[i]!r} there but {a[i]!r} in data.train"
    raise TinltError(f"{where} ({other.source}) and data.train ({train.source}) have different classes: {detail}")
