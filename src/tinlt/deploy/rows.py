"""Prediction rows: one per image, with its top-k classes, every class's probability and
the calibrated decision; written as CSV or JSON or printed. :func:`predict_rows` is what
``tinlt predict`` computes, through the backend's scoring loop. Imports only numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import TinltError
from ..metrics import ThresholdRule
from ..names import csv_writer, printable
from .backend import Backend, collect_images, score_files

ALL_PROBS_MAX = 100  # prediction rows carry every class's probability up to this many classes


def rows_from_probs(
    paths: Sequence[str | Path],
    probs: np.ndarray,
    classnames: Sequence[str],
    topk: int,
    rule: Optional[ThresholdRule] = None,
) -> list[dict]:
    """One row per image: top-k classes by probability, every class's probability (``probs``,
    up to ALL_PROBS_MAX classes), plus ``prediction`` when a threshold applies."""
    k = max(1, min(int(topk), len(classnames)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    decided = rule.decide(probs) if rule is not None else None
    rows = []
    for n, p in enumerate(paths):
        row: dict[str, Any] = {
            "path": str(p),
            "topk": [{"class": classnames[i], "index": int(i), "score": round(float(probs[n, i]), 6)} for i in order[n]],
        }
        if len(classnames) <= ALL_PROBS_MAX:
            row["probs"] = {str(c): round(float(probs[n, i]), 6) for i, c in enumerate(classnames)}
        if decided is not None:
            c = int(decided[n])
            row["prediction"] = {"class": classnames[c], "index": c, "threshold": rule.value,
                                 "positive": rule.positive_name}
        rows.append(row)
    return rows


def predict_rows(backend: Backend, inputs: Sequence[str | Path], *, topk: int = 5, batch_size: int = 64,
                 quiet: bool = False) -> list[dict]:
    """Rows as :func:`rows_from_probs` for every image in ``inputs``, in order; an unreadable
    image gives a row with ``error`` instead and does not stop the others."""
    paths = collect_images(inputs)
    scored = score_files(backend, paths, batch_size=batch_size, quiet=quiet)
    by_path = dict(zip(map(str, scored.paths), rows_from_probs(scored.paths, scored.probs, backend.classnames, topk,
                                                               backend.rule)))
    by_path.update({p: {"path": p, "error": why} for p, why in scored.bad})
    return [by_path[str(p)] for p in paths]  # in the order the files were named


# ----------------------------------------------------------------------------- output


def sort_rows(rows: list[dict], by: str) -> list[dict]:
    """Rows by one class's probability, highest first (e.g. rank a folder by P(rusty)); unreadable last."""
    known = next((list(r["probs"]) for r in rows if "probs" in r), None)
    if known is None:
        raise TinltError("--sort-by needs every class's probability (models with up to "
                         f"{ALL_PROBS_MAX} classes)")
    if by not in known:
        from ..errors import did_you_mean

        raise TinltError(f"--sort-by {by!r}: not a class of this model{did_you_mean(by, known)} "
                         f"(classes: {', '.join(known[:10])})")
    return sorted(rows, key=lambda r: -r["probs"][by] if "probs" in r else float("inf"))


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """``.json``: the rows as they are; ``.csv``: path, class_i/score_i, a ``p_<class>`` column
    per class, [prediction], error."""
    from ..fileio import write_text

    out = Path(out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise TinltError(f"--out must end in .csv or .json, got {out}")
    if out.suffix.lower() == ".json":
        return write_text(out, json.dumps(rows, indent=2))
    import io

    k = max((len(r.get("topk", [])) for r in rows), default=0)
    decided = any("prediction" in r for r in rows)
    names = next((list(r["probs"]) for r in rows if "probs" in r), [])
    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    head = ["path"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"score_{i}")] + [f"p_{n}" for n in names]
    w.writerow(head + (["prediction", "threshold"] if decided else []) + ["error"])
    for r in rows:
        cells = [c for t in r.get("topk", []) for c in (t["class"], t["score"])]
        cells += [""] * (2 * k - len(cells))
        cells += [r["probs"][n] for n in names] if "probs" in r else [""] * len(names)
        if decided:
            pred = r.get("prediction")
            cells += [pred["class"], pred["threshold"]] if pred else ["", ""]
        w.writerow([r["path"]] + cells + [r.get("error", "")])
    return write_text(out, buf.getvalue())


def format_predictions(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{printable(r['path'])}: skipped ({printable(r['error'])})")
            continue
        tops = ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["topk"])
        pred = f" -> {r['prediction']['class']}" if "prediction" in r else ""
        lines.append(f"{printable(r['path'])}: {printable(tops + pred)}")
    return "\n".join(lines)
