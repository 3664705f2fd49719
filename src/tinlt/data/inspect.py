"""Split statistics for ``tinlt data inspect``: class names and counts, imbalance, shot groups,
unreadable files.

:func:`summarize` returns a JSON-ready dict; :func:`format_summary` renders it: with few
classes (up to ``PER_CLASS_MAX``) a bar per class with its name, count and group; with many,
a histogram of class sizes over log-spaced bins (long-tailed counts span orders of
magnitude). :func:`check_decodable` counts the files that are not usable images (the data
check's header test, or a full decode), so they are not counted as images.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .groups import resolve_mode, shot_groups
from .samples import Samples

HIST_BINS = 10
BAR_WIDTH = 40
PER_CLASS_MAX = 30  # up to this many classes: a bar per class instead of the histogram


def summarize(
    samples_or_counts: Union[Samples, Sequence[int], np.ndarray],
    many_threshold: int = 100,
    few_threshold: int = 20,
    mode: str = "auto",
) -> dict:
    """Counts summary of a split (or of per-class counts)."""
    if isinstance(samples_or_counts, Samples):
        counts = samples_or_counts.class_counts()
        source = samples_or_counts.source
        names = list(samples_or_counts.classnames)
    else:
        counts = np.asarray(samples_or_counts, dtype=np.int64)
        source = ""
        names = [str(i) for i in range(len(counts))]
    present = counts[counts > 0]
    empty = np.flatnonzero(counts == 0)
    resolved = resolve_mode(len(counts), mode)
    groups = shot_groups(counts, many_threshold=many_threshold, few_threshold=few_threshold, mode=resolved)
    out = {
        "source": source,
        "num_classes": int(len(counts)),
        "num_images": int(counts.sum()),
        "min_count": int(counts.min()) if len(counts) else 0,
        "max_count": int(counts.max()) if len(counts) else 0,
        "median_count": float(np.median(counts)) if len(counts) else 0.0,
        # over non-empty classes: one empty class would make the ratio infinite
        "imbalance_ratio": float(present.max() / present.min()) if len(present) else None,
        "empty_classes": [int(i) for i in empty],
        "classes": [{"index": i, "name": names[i], "count": int(counts[i]),
                     "group": next((g for g, idx in groups.items() if i in set(np.asarray(idx).tolist())), None)}
                    for i in range(len(counts))],
        "groups": {k: int(len(v)) for k, v in groups.items()},
        "group_mode": resolved,
        "many_threshold": int(many_threshold),
        "few_threshold": int(few_threshold),
        "counts": [int(c) for c in counts],
    }
    if len(empty):
        listed = ", ".join(repr(names[i]) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        out["note"] = f"{len(empty)} class(es) have no images ({listed}); imbalance_ratio ignores them"
    return out


def check_decodable(samples: Samples, full: bool = False) -> list[tuple[str, str]]:
    """(file, reason) of every listed file that is not a usable image: the data check's fast
    test (headers, end markers, PNG checksums), or with ``full`` a complete decode of each."""
    from .validate import check_files

    if samples.in_memory:
        return []
    if not full:
        reasons = check_files([str(p) for p in samples.items])
        return [(str(p), r) for p, r in zip(samples.items, reasons) if r]
    from .images import open_image

    bad = []
    for p in samples.items:
        try:
            open_image(p).load()
        except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
            bad.append((str(p), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")))
    return bad


def _log_bins(lo: int, hi: int, bins: int) -> list[tuple[int, int]]:
    """Integer ranges [a, b] covering lo..hi with log-spaced edges."""
    edges = np.unique(np.floor(np.geomspace(lo, hi + 1, bins + 1)).astype(np.int64))
    edges[-1] = hi + 1
    return [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def format_summary(summary: dict, counts: Union[Sequence[int], np.ndarray]) -> str:
    counts = np.asarray(counts, dtype=np.int64)
    s = summary
    lines = []
    if s.get("source"):
        lines.append(f"source:      {s['source']}")
    lines.append(
        f"classes:     {s['num_classes']}    images: {s['num_images']}    "
        f"per class: min {s['min_count']}, median {s['median_count']:g}, max {s['max_count']}"
    )
    ratio = s["imbalance_ratio"]
    lines.append(f"imbalance:   {ratio:.1f} (max/min over non-empty classes)" if ratio is not None else "imbalance:   n/a")
    g = s["groups"]
    if s.get("group_mode") == "relative":
        rule = "relative: larger class = many, smaller = few"
    else:
        rule = f"absolute: many > {s['many_threshold']}, few < {s['few_threshold']}"
    lines.append(f"shot groups: many {g['many']} | medium {g['medium']} | few {g['few']}  ({rule})")
    if s.get("note"):
        lines.append(f"note:        {s['note']}")

    if s.get("unreadable"):
        lines.append(f"unreadable:  {len(s['unreadable'])} file(s) are not usable images and are not counted "
                     f"(first: {s['unreadable'][0]['file']}: {s['unreadable'][0]['reason']})")
    if len(counts) <= PER_CLASS_MAX and s.get("classes"):
        top = max(int(counts.max()), 1)
        wn = max(len(c["name"]) for c in s["classes"])
        lines.append("per class (images, shot group):")
        for c in s["classes"]:
            bar = "#" * int(round(BAR_WIDTH * c["count"] / top)) or ("." if c["count"] else "")
            lines.append(f"  {c['index']:>3} {c['name']:<{wn}} | {bar:<{BAR_WIDTH}} {c['count']:>6}  {c['group'] or '-'}")
        return "\n".join(lines)
    present = counts[counts > 0]
    rows: list[tuple[str, int]] = []
    if (counts == 0).any():
        rows.append(("0", int((counts == 0).sum())))
    if len(present):
        for a, b in _log_bins(int(present.min()), int(present.max()), HIST_BINS):
            label = f"{a}" if a == b else f"{a}-{b}"
            rows.append((label, int(((counts >= a) & (counts <= b)).sum())))
    if rows:
        lines.append("class sizes (images per class -> number of classes, log-spaced bins):")
        top = max(n for _, n in rows) or 1
        wl = max(len(lbl) for lbl, _ in rows)
        for lbl, n in rows:
            bar = "#" * (int(round(BAR_WIDTH * n / top)) if n else 0)
            if n and not bar:
                bar = "."  # a non-empty bin never looks empty
            lines.append(f"  {lbl:>{wl}} | {bar:<{BAR_WIDTH}} {n}")
    return "\n".join(lines)
