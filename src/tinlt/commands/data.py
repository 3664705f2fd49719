"""``tinlt data inspect``: class names, counts, imbalance, shot groups and unreadable files
of a training split, before any training."""

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
    return {"data": _cmd_data}


def _cmd_data(a) -> int:
    import numpy as np

    from ..data import inspect as data_inspect
    from ..errors import TinltError
    from ..data.sources import load_csv, load_folder, load_list

    if a.train_list:
        samples = load_list(a.train_list, root=a.root, classnames_file=a.classnames)
    elif a.train_csv:
        samples = load_csv(a.train_csv, root=a.root, classnames_file=a.classnames)
    else:
        if a.root:
            raise TinltError("--root applies to --train-list and --train-csv; a folder tree is its own root")
        samples = load_folder(a.train_folder, classnames=a.classnames)
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
