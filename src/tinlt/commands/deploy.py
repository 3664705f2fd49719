"""CLI plug-in: ``tinlt export`` (checkpoint -> ONNX, optional int8) and ``tinlt calibrate``
(decision threshold of a two-class checkpoint for a target recall).

Only argparse at import time; the handlers import torch/onnx when they run.
"""

from __future__ import annotations

import argparse

from .common import add_trust_arg


def _target(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {v}")
    return v


def register(subparsers) -> dict:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (class text features baked in), optionally int8",
        description="Writes one ONNX graph: normalised images (N,3,H,W) -> class logits, with class names, "
        "preprocessing and any decision threshold in its metadata. Checks it against PyTorch on "
        "evaluation images. --quantize int8 also writes <out>.int8.onnx and reports its size and accuracy.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="model.onnx")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write an int8 graph <out>.int8.onnx")
    p.add_argument("--int8-method", default="auto", choices=["auto", "weights", "dynamic", "static"],
                   help="weights: int8 weights, float math; dynamic: int8 MatMul; static: full int8 QDQ with "
                   "calibration. auto: weights for conv-dominated graphs, dynamic for MatMul-dominated ones")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--calib-images", type=int, default=256, help="training images to calibrate --int8-method static")
    p.add_argument("--parity-images", type=int, default=16, help="evaluation images for the PyTorch parity check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| ONNX vs PyTorch (fp32)")
    p.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.test.per_class_limit=200")
    p.add_argument("--quiet", "-q", action="store_true")
    add_trust_arg(p)

    p = subparsers.add_parser(
        "calibrate",
        help="two-class checkpoints: pick the decision threshold that reaches a target recall",
        description="Picks the threshold on the rare class's probability that reaches --target-recall on the "
        "chosen split with the best precision, and writes <run>/eval/calibrated.pt (the weights with the "
        "threshold: predict, export and eval apply it), calibration.json and calibration_pr.png.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--target-recall", type=_target, default=0.95)
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval)")
    p.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.val.kind=list data.val.path=val.txt")
    p.add_argument("--quiet", "-q", action="store_true")
    add_trust_arg(p)
    return {"export": _cmd_export, "calibrate": _cmd_calibrate}


def _cmd_export(a) -> int:
    from ..deploy.export import export_checkpoint

    export_checkpoint(
        a.checkpoint,
        a.out,
        opset=a.opset,
        quantize=a.quantize,
        int8_method=a.int8_method,
        calib_images=a.calib_images,
        parity_images=a.parity_images,
        tolerance=a.tolerance,
        overrides=a.overrides,
        quiet=a.quiet,
    )
    return 0


def _cmd_calibrate(a) -> int:

    from ..deploy.calibrate import calibrate_checkpoint
    from ..report import refresh_report

    from ..engine.run_folder import RunFolder

    info = calibrate_checkpoint(a.checkpoint, target_recall=a.target_recall, split=a.split, overrides=a.overrides,
                                quiet=a.quiet, out_dir=a.out)
    refresh_report(RunFolder.of_checkpoint(info["checkpoint"]).path, quiet=a.quiet)  # its PR figure marks the point
    return 0
