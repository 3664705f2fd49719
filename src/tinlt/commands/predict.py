"""``tinlt predict``: top-k classes for images or folders, from a checkpoint or an exported
ONNX model (which needs no torch). Both flags name a model; the model's own kind decides the
backend (deploy/backends.py), as in ``serve`` and ``mine``."""

from __future__ import annotations

from ..errors import TinltError
from .common import add_trust_arg


def register(sub) -> dict:
    p = sub.add_parser("predict", help="top-k classes for images or folders (checkpoint, or ONNX without torch)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a tinlt checkpoint (needs torch)")
    src.add_argument("--model", help="an ONNX file from 'tinlt export' (numpy + onnxruntime only)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="preds.csv or preds.json (default: table to the terminal)")
    p.add_argument("--sort-by", default=None, metavar="CLASS",
                   help="rank the images by this class's probability, highest first (e.g. --sort-by rusty)")
    add_trust_arg(p)
    return {"predict": _cmd_predict}


def _cmd_predict(a) -> int:
    from ..deploy.backends import open_model  # an .onnx file never imports torch
    from ..deploy.rows import format_predictions, predict_rows, sort_rows, write_predictions

    if a.topk < 1 or a.batch_size < 1:
        raise TinltError("--topk and --batch-size must be >= 1")
    if a.out and not a.out.lower().endswith((".csv", ".json")):
        raise TinltError(f"--out must end in .csv or .json, got {a.out}")
    backend = open_model(a.model or a.checkpoint, quiet=False)
    rows = predict_rows(backend, a.inputs, topk=a.topk, batch_size=a.batch_size)
    if a.sort_by:
        rows = sort_rows(rows, a.sort_by)
    decided = next((r["prediction"] for r in rows if "prediction" in r), None)
    note = ""
    if decided:
        pos = decided["positive"]
        note = f"decision threshold applied: '{pos}' when P({pos}) >= {decided['threshold']:.6g}, not argmax"
    if a.out:
        print(f"wrote {write_predictions(rows, a.out)} ({len(rows)} images)" + (f"; {note}" if note else ""))
    else:
        print((f"# {note}\n" if note else "") + format_predictions(rows))
    return 0
