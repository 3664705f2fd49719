"""Export a checkpoint to one ONNX graph (images -> logits), optionally int8-quantised.

Owns ``tinlt export``: the export wrapper that bakes the class text features in as a
constant (no text tower at inference), the graph's metadata (class names, templates,
preprocessing, decision threshold, version, source checkpoint — all JSON strings read
back by :mod:`tinlt.deploy.onnx_predict`), the PyTorch-vs-onnxruntime parity check on real
evaluation images, and int8 quantisation with its size and accuracy report.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo
exporter (torch's default since 2.9) needs ``onnxscript``, which tinlt does not depend
on; the TorchScript path exports open_clip's attention, timm's TF-"same" padding and the
dilated large-kernel convolutions as plain ONNX ops, with a dynamic batch axis.

Int8 quantisation (``--quantize int8``) is :mod:`tinlt.deploy.int8`'s.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.loaders import eval_transform
from ..errors import TinltError
from ..fileio import atomic_target, sha256
from .int8 import INPUT_NAME, QUANT_METHODS, int8_path, quantize_int8
from .onnx_session import open_session, run as run_session
from .preprocess import Preprocess

DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QuantizeLinear needs 13; open_clip's ops need >= 11 anyway
OUTPUT_NAME = "logits"


class ExportWrapper(nn.Module):
    """``images -> model(images, text_features=baked)``: the class text features are a
    buffer, so the exported graph holds them as a constant and no text tower."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            rows = model.class_rows()  # the scorer's rows, baked in as a constant
        self.register_buffer("text_features", None if rows is None else rows.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, text_features=self.text_features)


# ----------------------------------------------------------------------------- metadata


def build_metadata(model: nn.Module, cfg: Any, ckpt: dict, checkpoint: str | Path) -> dict[str, Any]:
    """What a deployment needs besides the weights (values are JSON-serialisable)."""
    from .. import __version__

    path = Path(checkpoint).resolve()
    tower = model.image_tower
    pre = Preprocess(
        image_size=int(cfg.data.image_size),
        mean=tuple(float(m) for m in tower.image_mean),
        std=tuple(float(s) for s in tower.image_std),
        tta=str(cfg.data.get("tta", "none")),
        tta_expand=int(cfg.data.get("tta_expand", 24)),
    )
    info = ckpt.get("threshold_info")
    return {
        "classnames": list(ckpt["classnames"]),
        "train_counts": [int(c) for c in ckpt.get("train_counts", [])],  # tinlt mine: the rare class
        "templates": list(model.templates) if model.uses_text_head else [],
        "preprocess": pre.to_dict(),
        "threshold": None if ckpt.get("threshold") is None else float(ckpt["threshold"]),
        "threshold_info": dict(info) if info else None,
        "tinlt_version": __version__,
        "source_checkpoint": {
            "path": str(path),
            "sha256": sha256(path),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "run_name": str(cfg.name),
        },
        "model": {
            "name": str(cfg.model.name),
            "head": model.head_type,
            "visual_attention": model.attention is not None,
            "num_classes": model.num_classes,
            "members": int(getattr(model, "num_members", 1)),  # tinlt fit --ensemble: logits averaged
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "logit_scale": float(model.scale().detach()) if model.uses_text_head else None,
        },
    }


def _write_model(proto, out: Path, metadata: dict[str, Any]) -> Path:
    """Set metadata_props (each value a JSON string) and write atomically."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
    proto.doc_string = "tinlt: images (N,3,H,W) float32, normalised -> logits (N,C); see metadata_props"
    with atomic_target(out, shared=True) as tmp:  # a model file is meant to be shared
        onnx.save(proto, str(tmp))
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """metadata_props of a tinlt ONNX file, JSON-decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


# ----------------------------------------------------------------------------- export


def export_graph(wrapper: nn.Module, out: str | Path, image_size: int, opset: int = DEFAULT_OPSET) -> Path:
    """Trace ``wrapper`` to ONNX at ``out`` (float32, dynamic batch axis), no metadata."""
    if not MIN_OPSET <= opset <= 20:
        raise TinltError(f"--opset {opset}: the TorchScript exporter supports opsets {MIN_OPSET}..20")
    dummy = torch.zeros(2, 3, image_size, image_size)
    out = Path(out)
    with warnings.catch_warnings():
        # the legacy-exporter deprecation notice, and tracer notes on shape assertions
        # (the image size is fixed in the graph; only the batch axis is dynamic)
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper.eval(),
                (dummy,),
                str(out),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as e:  # exporter errors are long; keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TinltError(f"ONNX export failed ({type(e).__name__}: {first})") from None
    return out


FP64_FACTOR = 10.0  # an export may err up to this many times PyTorch's own float32 error


def check_parity(wrapper: nn.Module, onnx_path: str | Path, probe: torch.Tensor, tolerance: float) -> dict:
    """Compare ONNX with PyTorch logits on ``probe``.

    Passes when max |ONNX - PyTorch| <= ``tolerance``. A deep network can amplify float32
    rounding beyond any fixed tolerance (PyTorch's own float32 result then differs from
    float64 by as much), so above it we run a float64 copy of the model and still pass
    when ONNX's error against float64 is within FP64_FACTOR times PyTorch float32's.
    An export bug (wrong padding, op, constant) errs by orders of magnitude more.
    """
    import copy

    with torch.no_grad():
        ref = wrapper(probe).float().numpy()
    got = run_session(open_session(onnx_path), probe.numpy())
    diff = float(np.abs(got - ref).max())
    out: dict[str, Any] = {"max_abs_logit_diff": diff, "tolerance": tolerance, "fp64": None, "passed": diff <= tolerance}
    if out["passed"] or not np.isfinite(diff):
        return out
    with torch.no_grad():
        ref64 = copy.deepcopy(wrapper).double()(probe.double()).numpy()
    torch_err = float(np.abs(ref - ref64).max())
    onnx_err = float(np.abs(got - ref64).max())
    out["fp64"] = {"torch_fp32_error": torch_err, "onnx_error": onnx_err, "factor": FP64_FACTOR}
    out["passed"] = onnx_err <= FP64_FACTOR * max(torch_err, np.finfo(np.float32).eps)
    return out


# ----------------------------------------------------------------------------- data


def balanced_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` indices taking classes in turn (a random order within each class)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(p) for p in per_class):
        for p in per_class:
            if depth < len(p) and len(picked) < n:
                picked.append(int(p[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)


def _images(samples, indices: np.ndarray, transform) -> torch.Tensor:
    from ..data.dataset import ImageDataset

    ds = ImageDataset(samples, transform)
    return torch.stack([ds[int(i)][0] for i in indices])


class OnnxScorer:
    """An ONNX graph as a scoring backend of ``engine.inference.evaluate``: ``logits(images)``."""

    def __init__(self, path: str | Path, weights_only: bool = False) -> None:
        self.session = open_session(path, weights_only=weights_only)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_session(self.session, images.cpu().numpy()))


# ----------------------------------------------------------------------------- the command


@dataclass
class ExportResult:
    onnx: Path
    parity_max_abs: Optional[float]
    parity_images: int
    parity_source: str
    int8: Optional[Path] = None
    int8_method: Optional[str] = None
    size_ratio: Optional[float] = None
    overall_fp32: Optional[float] = None
    overall_int8: Optional[float] = None
    eval_split: Optional[str] = None
    eval_images: int = 0


def _parity_probe(eval_samples, eval_name: str, eval_tf, parity_images: int, size: int, quiet: bool):
    """(images, description) for the parity check: real evaluation images, else random inputs."""
    from ..engine.progress import echo

    if eval_samples is not None and parity_images > 0:
        idx = balanced_indices(np.asarray(eval_samples.labels), parity_images)
        return _images(eval_samples, idx, eval_tf), f"{len(idx)} images of the {eval_name} split"
    probe = torch.randn(max(parity_images, 2), 3, size, size, generator=torch.Generator().manual_seed(0))
    echo(f"export: no evaluation images for the parity check, using random inputs ({eval_name})", quiet=quiet)
    return probe, f"{len(probe)} random inputs ({eval_name})"


def _write_fp32(wrapper, graph, out: Path, metadata: dict, probe: torch.Tensor, source: str, *, size: int,
                opset: int, tolerance: float) -> dict:
    """Export ``graph`` (the model with LoRA / SSF merged into plain weights), check parity on
    ``probe`` against ``wrapper`` (the unmerged model), and write ``out``; the parity record."""
    import onnx

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = export_graph(graph, Path(tmp) / "raw.onnx", size, opset)
        parity = check_parity(wrapper, raw, probe, tolerance)
        parity["inputs"] = source
        if not parity["passed"]:
            floor = parity["fp64"]
            why = "" if floor is None else (
                f"; against a float64 reference ONNX errs by {floor['onnx_error']:.3g}, "
                f"PyTorch float32 by {floor['torch_fp32_error']:.3g}"
            )
            raise TinltError(
                f"ONNX logits differ from PyTorch by up to {parity['max_abs_logit_diff']:.3g} on {source} "
                f"(--tolerance {tolerance:g}{why}); nothing written"
            )
        metadata["parity"] = parity
        _write_model(onnx.load(str(raw)), out, metadata)
    return parity


def _merged_copy(wrapper: nn.Module, checkpoint: Path, overrides: Sequence[str], metadata: dict):
    """The export graph's model: a second load of the checkpoint with every parametrization
    (LoRA, SSF) merged into its weight (exact). A second load, not a deep copy: parametrized
    modules share a generated class with their copies, and unparametrizing one would strip
    the other."""
    from torch.nn.utils import parametrize

    from ..engine.inference import load_model
    from ..models.tuning import merge

    if not any(parametrize.is_parametrized(m) for m in wrapper.modules()):
        return None
    model, _, _ = load_model(checkpoint, overrides=overrides)
    metadata["merged_parametrizations"] = merge(model)
    return ExportWrapper(model).eval()


def _calibration_images(cfg, eval_tf, calib_images: int, quiet: bool) -> Optional[np.ndarray]:
    """Training images for static int8 calibration, or None when the split is not here."""
    from ..data.build import build_split
    from ..engine.progress import echo

    try:
        train = build_split(cfg.data.train) if str(cfg.data.train.kind or "") else None
    except TinltError as e:
        echo(f"export: training split unavailable for calibration ({e})", quiet=quiet)
        return None
    if train is None or calib_images <= 0:
        return None
    return _images(train, balanced_indices(np.asarray(train.labels), calib_images, seed=1), eval_tf).numpy()


def _write_int8(out: Path, metadata: dict, *, method: str, calib, eval_tf, cfg, ckpt, eval_samples, eval_name,
                quiet: bool) -> dict:
    """Quantise ``out`` into ``<out>.int8.onnx`` and measure both on the evaluation split; the record."""
    import onnx

    from ..data.bundle import DataBundle
    from ..engine.inference import evaluate
    from ..engine.progress import echo

    q_out = int8_path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw_q = Path(tmp) / "int8.onnx"
        method = quantize_int8(out, raw_q, method=method, calibration=calib)
        ratio = out.stat().st_size / raw_q.stat().st_size
        quant: dict[str, Any] = {
            "method": method, "calibration_images": int(len(calib)) if (method == "static" and calib is not None) else 0,
            "fp32_bytes": out.stat().st_size, "int8_bytes": raw_q.stat().st_size, "size_ratio": ratio,
            "eval_split": None, "eval_images": 0, "overall_fp32": None, "overall_int8": None, "overall_change": None,
        }
        if eval_samples is not None:
            data = DataBundle.from_counts(eval_samples, ckpt["classnames"], ckpt["train_counts"], ckpt.get("groups", {}))
            m = {name: evaluate(OnnxScorer(path, weights_only=name == "int8" and method == "weights"), eval_samples,
                                cfg, data, desc=f"{name} check", transform=eval_tf,
                                per_image=False, quiet=quiet)
                 for name, path in (("fp32", out), ("int8", raw_q))}
            quant.update(
                eval_split=eval_name, eval_images=int(m["fp32"]["num_samples"]),
                overall_fp32=m["fp32"]["overall"], overall_int8=m["int8"]["overall"],
                overall_change=m["int8"]["overall"] - m["fp32"]["overall"],
                instance_acc_fp32=m["fp32"]["instance_acc"], instance_acc_int8=m["int8"]["instance_acc"],
            )
        else:
            echo(f"export: int8 accuracy not measured ({eval_name})", quiet=quiet)
        _write_model(onnx.load(str(raw_q)), q_out, {**metadata, "quantization": quant})
    return quant


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: Optional[str] = None,
    int8_method: str = "auto",
    calib_images: int = 256,
    parity_images: int = 16,
    tolerance: float = 1e-4,
    overrides: Sequence[str] = (),
    quiet: bool = False,
) -> ExportResult:
    """Checkpoint (or run folder) -> ``out`` (float32 ONNX); with ``quantize="int8"`` also ``<out>.int8.onnx``."""
    from ..engine.inference import load_model, resolve_split
    from ..engine.progress import echo
    from ..engine.run_folder import resolve_checkpoint

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise TinltError(f"--out must end in .onnx, got {out}")
    if quantize not in (None, "int8"):
        raise TinltError(f"--quantize {quantize!r}; only 'int8' is supported")
    if int8_method not in QUANT_METHODS:
        raise TinltError(f"--int8-method {int8_method!r}; expected one of: {', '.join(QUANT_METHODS)}")
    checkpoint = resolve_checkpoint(checkpoint, log=lambda msg: echo(msg, quiet=quiet))
    model, cfg, ckpt = load_model(checkpoint, overrides=overrides)
    eval_tf, probe_tf = eval_transform(model, cfg), eval_transform(model, cfg, views=False)
    wrapper = ExportWrapper(model).eval()
    metadata = build_metadata(model, cfg, ckpt, checkpoint)
    size = int(cfg.data.image_size)
    try:  # real evaluation images for the parity check and the int8 accuracy
        eval_samples, eval_name = resolve_split(cfg, classnames=ckpt["classnames"] if quantize else None)
    except TinltError as e:
        if quantize and "differ from the model's" in str(e):
            raise TinltError(f"{e}; int8 accuracy cannot be measured") from None
        eval_samples, eval_name = None, f"evaluation data unavailable: {e}"
    probe, source = _parity_probe(eval_samples, eval_name, probe_tf, parity_images, size, quiet)
    if metadata["preprocess"]["tta"] != "none":
        echo(f"export: test-time ensembling ({metadata['preprocess']['tta']}) is in the metadata: the ONNX predictor "
             "runs each view through the graph and averages the logits; the graph itself takes one view", quiet=quiet)

    out.parent.mkdir(parents=True, exist_ok=True)
    graph = _merged_copy(wrapper, checkpoint, overrides, metadata) or wrapper
    parity = _write_fp32(wrapper, graph, out, metadata, probe, source, size=size, opset=opset, tolerance=tolerance)
    diff = parity["max_abs_logit_diff"]
    extra = ""
    if parity["fp64"] is not None:
        extra = (f" (over --tolerance {tolerance:g}, accepted: PyTorch float32 itself errs by "
                 f"{parity['fp64']['torch_fp32_error']:.2e} against float64, ONNX by {parity['fp64']['onnx_error']:.2e})")
    echo(f"export: wrote {out} ({out.stat().st_size / 1e6:.1f} MB); max |logit diff| vs PyTorch "
         f"{diff:.2e} on {source}{extra}", quiet=quiet)
    result = ExportResult(onnx=out, parity_max_abs=diff, parity_images=len(probe), parity_source=source)
    if quantize is None:
        return result

    calib = _calibration_images(cfg, probe_tf, calib_images, quiet) if int8_method == "static" else None
    quant = _write_int8(out, metadata, method=int8_method, calib=calib, eval_tf=eval_tf, cfg=cfg, ckpt=ckpt,
                        eval_samples=eval_samples, eval_name=eval_name, quiet=quiet)
    q_out = int8_path(out)
    result.int8, result.int8_method, result.size_ratio = q_out, quant["method"], quant["size_ratio"]
    result.overall_fp32, result.overall_int8 = quant["overall_fp32"], quant["overall_int8"]
    result.eval_split, result.eval_images = quant["eval_split"], quant["eval_images"]
    acc = ""
    if quant["overall_fp32"] is not None:
        acc = (f"; mean per-class accuracy on {quant['eval_images']} {eval_name} images: fp32 "
               f"{quant['overall_fp32']:.2f}%, int8 {quant['overall_int8']:.2f}% ({quant['overall_change']:+.2f})")
    echo(f"export: wrote {q_out} ({quant['method']} int8, {q_out.stat().st_size / 1e6:.1f} MB, "
         f"{quant['size_ratio']:.2f}x smaller){acc}", quiet=quiet)
    return result
