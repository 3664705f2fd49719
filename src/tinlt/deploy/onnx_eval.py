"""``tinlt eval`` on an exported ONNX model: labelled scoring without PyTorch.

Owns :func:`evaluate_onnx`. An ONNX file carries its class names, preprocessing, training
counts and threshold but no data, so the split comes from ``data.test.*`` overrides (a list,
CSV or folder of files, as training takes them; parsed here, without the config machinery); classes are matched by name, in any order.
Shot groups come from the training counts at ``data.many_threshold`` / ``few_threshold`` /
``groups`` (the file does not keep the run's own groups; the defaults are the same). Writes
``metrics.json`` and ``predictions.csv`` as ``tinlt eval`` does for a checkpoint. Imports no
torch (an import contract checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import fileio
from ..errors import TinltError
from ..run_files import METRICS, PREDICTIONS


LOADERS = ("list", "csv", "folder")
KEYS = ("data.test.kind", "data.test.path", "data.test.root", "data.test.classnames", "data.many_threshold",
        "data.few_threshold", "data.groups")  # what scoring a file reads; the config's defaults otherwise


def _options(overrides: Sequence[str]) -> dict[str, str]:
    """``key=value`` overrides of :data:`KEYS`; anything else is one line naming it (no config
    machinery here: it would import omegaconf, which the torch-free path leaves out)."""
    from ..errors import did_you_mean

    out = {}
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or key not in KEYS:
            raise TinltError(f"eval of an ONNX model takes {', '.join(KEYS)}; got '{o}'{did_you_mean(key, KEYS)}")
        if key in ("data.many_threshold", "data.few_threshold") and not value.strip().lstrip("-").isdigit():
            raise TinltError(f"{key} = {value!r}: expected an integer")
        out[key] = value.strip()
    return out


def evaluate_onnx(path: str | Path, overrides: Sequence[str] = (), out_dir: Optional[str | Path] = None,
                  quiet: bool = False, prevalence: Optional[float] = None) -> dict:
    """Score ``path`` (an .onnx from ``tinlt export``) on the split ``overrides`` give; the metrics."""
    import json

    from ..data.groups import shot_groups
    from ..data.sources import load_csv, load_folder, load_list
    from ..metrics import add_precision_at_prevalence, compute_metrics, confusion_matrix
    from ..names import csv_writer
    from .backend import score_files
    from .onnx_predict import OnnxClassifier

    if prevalence is not None and not 0 < prevalence < 1:
        raise TinltError(f"--prevalence must be a share in (0, 1), got {prevalence}")
    opts = _options(overrides)
    kind, where = opts.get("data.test.kind", ""), opts.get("data.test.path", "")
    if kind not in LOADERS or not where:
        raise TinltError("an ONNX model carries no data: give the test files, e.g. data.test.kind=list "
                         "data.test.path=test.txt data.test.classnames=classnames.txt (or kind=csv / folder)")
    backend = OnnxClassifier(path)
    names = list(backend.classnames)
    root, cn = opts.get("data.test.root") or None, opts.get("data.test.classnames") or None
    samples = (load_folder(where, classnames=cn) if kind == "folder" else
               (load_list if kind == "list" else load_csv)(where, root=root, classnames_file=cn))
    missing = sorted(set(samples.classnames) - set(names))
    if missing:
        raise TinltError(f"data.test: classes {missing[:5]} are not the model's ({names[:5]}...)")
    to_model = np.array([names.index(c) for c in samples.classnames], dtype=np.int64)
    paths = [Path(p) for p in samples.items]
    scored = score_files(backend, paths, quiet=quiet, desc="eval")
    row_of = {str(p): i for i, p in enumerate(paths)}
    kept = np.array([row_of[str(p)] for p in scored.paths], dtype=np.int64)
    if not len(kept):
        raise TinltError(f"data.test: none of the {len(paths)} files could be read (first: {scored.bad[0][0]}: "
                         f"{scored.bad[0][1]})")
    targets = to_model[np.asarray(samples.labels, dtype=np.int64)[kept]]
    probs = scored.probs
    preds = probs.argmax(1)
    counts = backend.meta("train_counts", None)
    if counts is None:
        raise TinltError(f"{path}: metadata 'train_counts' missing; export the model with a current 'tinlt export'")
    groups = shot_groups(counts, many_threshold=int(opts.get("data.many_threshold", 100)),
                         few_threshold=int(opts.get("data.few_threshold", 20)), mode=opts.get("data.groups", "auto"))
    keep_scores = len(names) <= 100

    def scored_metrics(decided: np.ndarray) -> dict:
        return compute_metrics(confusion_matrix(targets, decided, len(names)), groups, classnames=names,
                               train_counts=np.asarray(counts), scores=probs if keep_scores else None,
                               targets=targets if keep_scores else None)

    metrics = scored_metrics(preds)
    decided = None
    if backend.rule is not None:
        decided = backend.rule.decide(probs)
        metrics["at_threshold"] = {"threshold": backend.rule.value, "rule": backend.rule.describe(),
                                   **scored_metrics(decided)}
    add_precision_at_prevalence(metrics, prevalence)
    metrics["unreadable"] = [{"file": f, "reason": r} for f, r in scored.bad]
    metrics["model"] = {"path": str(Path(path).resolve()), "sha256": fileio.sha256(path)}
    out = Path(out_dir) if out_dir else Path(path).with_suffix("").with_name(Path(path).stem + "_eval")
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / METRICS, json.dumps(metrics, indent=2) + "\n")
    import io

    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    w.writerow(["index", "path", "true", "predicted", *(["decided"] if decided is not None else []), "correct",
                *(f"p_{n}" for n in names)])
    final = decided if decided is not None else preds
    for k, i in enumerate(kept):
        w.writerow([int(i), str(paths[i]), names[targets[k]], names[preds[k]],
                    *([names[decided[k]]] if decided is not None else []), int(final[k] == targets[k]),
                    *(f"{v:.6f}" for v in probs[k])])
    fileio.write_text(out / PREDICTIONS, buf.getvalue())
    metrics["out"] = str(out)
    metrics["files"] = [str(out / METRICS), str(out / PREDICTIONS)]
    return metrics
