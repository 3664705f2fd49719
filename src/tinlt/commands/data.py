"""``tinlt data inspect``: class names, counts, imbalance, shot groups and unreadable files
of a training split, before any training. ``tinlt data cache``: a split's images decoded and
resized once into a pre-resized cache (data/image_cache.py) that ``data.image_cache`` reads."""

from __future__ import annotations

import json


def register(sub) -> dict:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="SUBCOMMAND")
    q = dsub.add_parser("inspect", help="class counts, imbalance and shot groups of a training split")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-list", help="list file of 'relative/path label' lines")
    src.add_argument("--train-csv", help="CSV with path,label or path,class_name")
    src.add_argument("--train-folder", help="image-folder tree (class = sub-folder)")
    q.add_argument("--classnames", default=None)
    q.add_argument("--root", default=None,
                   help="folder the paths of --train-list / --train-csv are relative to (default: the list's folder)")
    q.add_argument("--many", type=int, default=100, help="many: count > MANY")
    q.add_argument("--few", type=int, default=20, help="few: count < FEW")
    q.add_argument("--groups", default="auto", choices=["auto", "absolute", "relative"])
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--full", action="store_true", help="decode every image (default: the fast header check)")
    q.add_argument("--no-check", action="store_true", help="count listed files without opening them")
    c = dsub.add_parser("cache", help="decode and resize a split's images once, for fast training epochs")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", "-c", help="a training config: its train, val and test splits, in one entry")
    src.add_argument("--train-list", help="list file of 'relative/path label' lines")
    src.add_argument("--train-csv", help="CSV with path,label or path,class_name")
    src.add_argument("--train-folder", help="image-folder tree (class = sub-folder)")
    c.add_argument("--classnames", default=None)
    c.add_argument("--root", default=None,
                   help="folder the paths of --train-list / --train-csv are relative to (default: the list's folder)")
    c.add_argument("--short-side", type=int, default=256, help="resize each image's shorter side to this (default 256)")
    c.add_argument("--cache-dir", default=None,
                   help="where entries live (default: the feature cache's folder; 'tinlt cache list' shows both)")
    c.add_argument("overrides", nargs="*", help="with --config: key=value overrides, e.g. data.train.path=x.txt")
    return {"data": _cmd_data}


def _load(a):
    from ..data.sources import load_csv, load_folder, load_list
    from ..errors import TinltError

    if a.train_list:
        return load_list(a.train_list, root=a.root, classnames_file=a.classnames)
    if a.train_csv:
        return load_csv(a.train_csv, root=a.root, classnames_file=a.classnames)
    if a.root:
        raise TinltError("--root applies to --train-list and --train-csv; a folder tree is its own root")
    return load_folder(a.train_folder, classnames=a.classnames)


def _cmd_cache(a) -> int:
    import time
    from pathlib import Path

    from ..data import image_cache
    from ..errors import TinltError
    from ..engine.cache_entries import default_cache_dir
    from ..engine.progress import progress
    from ..names import printable

    if a.config:
        from ..config import SPLIT_KINDS, load_config
        from ..data.build import build_split

        cfg = load_config(a.config, a.overrides)
        # a val split carved out of train (kind: holdout) holds no files of its own
        named = [k for k in ("train", "val", "test") if str(cfg.data[k].get("kind", "") or "") in SPLIT_KINDS]
        splits = [s for s in (build_split(cfg.data[k], f"data.{k}") for k in named) if s is not None]
        paths = [] if not splits or splits[0].in_memory else [p for s in splits for p in s.items]
        if not paths:
            raise TinltError(f"{a.config}: no split of image files to cache (in-memory data sets need no cache)")
        paths = list(dict.fromkeys(paths))  # a file in two splits is cached once
    else:
        if a.overrides:
            raise TinltError(f"overrides ({a.overrides[0]} ...) apply to --config only")
        paths = list(_load(a).items)
    root = Path(a.cache_dir).expanduser() if a.cache_dir else default_cache_dir()
    t0 = time.time()
    with progress(None, desc="caching images", total=len(paths), unit="img") as bar:
        entry, built = image_cache.build(paths, root, a.short_side, tick=bar.update)
    cache = image_cache.ImageCache(entry)
    size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
    what = f"built in {time.time() - t0:.1f} s" if built else "already built for these files (reused)"
    print(f"image cache: {len(paths)} images at short side {a.short_side}, {size / 2**20:.1f} MiB, {what}")
    if cache.unreadable:
        first = cache.unreadable[min(cache.unreadable)]
        print(f"  {len(cache.unreadable)} could not be decoded and will be skipped "
              f"(first: {printable(str(cache.paths[min(cache.unreadable)]))}: {first})")
    print(f"train with: data.image_cache={printable(str(entry))}")
    return 0


def _cmd_data(a) -> int:
    if a.data_cmd == "cache":
        return _cmd_cache(a)
    import numpy as np

    from ..data import inspect as data_inspect
    from ..errors import TinltError

    samples = _load(a)
    bad = [] if a.no_check else data_inspect.check_decodable(samples, full=a.full)
    if bad and len(bad) == len(samples):  # nothing to train on: an error, not a table of zeros
        f, why = bad[0]
        hint = "; are the paths relative to another folder? give it with --root" if why.startswith("missing") else ""
        raise TinltError(f"none of the {len(samples)} listed files is a usable image (first: {f}: {why}){hint}")
    if bad:  # unusable files are not images: count what training would use
        keep = np.ones(len(samples), dtype=bool)
        drop = {f for f, _ in bad}
        keep[[i for i, p in enumerate(samples.items) if str(p) in drop]] = False
        samples = samples.subset(np.flatnonzero(keep))
    summary = data_inspect.summarize(samples, many_threshold=a.many, few_threshold=a.few, mode=a.groups)
    summary["unreadable"] = [{"file": f, "reason": r} for f, r in bad]
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(data_inspect.format_summary(summary, samples.class_counts()))
    return 0
