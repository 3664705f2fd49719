"""Int8 quantisation of an exported tinlt graph.

Quantisation (``--quantize int8``), ``--int8-method``:
* ``weights`` (auto for conv-dominated graphs: EfficientNet-Lite, ResNets): int8 weights,
  one scale per output channel, float32 arithmetic (the DequantizeLinear nodes fold at
  load). ~4x smaller, float32 speed, accuracy within noise. The first layer stays float.
* ``dynamic`` (auto for MatMul-dominated graphs: ViTs): onnxruntime's dynamic
  quantisation of MatMul/Gemm (int8 weights, activations quantised on the fly).
* ``static``: full int8 QDQ (per-channel weights, activations calibrated on training
  images at the 99.99th percentile) for int8 arithmetic. Opt-in: on EfficientNet-Lite0
  fine-tuned on Fashion-MNIST it cost ~2 points and ran no faster on a VNNI CPU, because
  the network amplifies small errors (grey inputs make colour-opponent stem filters cancel,
  and BatchNorm rescales the low-variance channels that result).
In every method the classifier (the cosine-similarity MatMul or the linear head) and the
operations between the image tower's last layer and it stay float: they are tiny, and
8-bit steps there cost the most accuracy. So does the shape arithmetic of timm's
TF-"same" padding, which the quantiser would otherwise round (see :func:`shape_nodes`).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ..errors import TinltError

INPUT_NAME = "images"  # the exported graph's input (tinlt.deploy.export)
QUANT_METHODS = ("auto", "weights", "dynamic", "static")


def _weights_by_op(proto) -> dict[str, int]:
    """Initializer elements feeding each op type."""
    inits = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    out: dict[str, int] = {}
    for node in proto.graph.node:
        size = sum(inits.get(i, 0) for i in node.input)
        out[node.op_type] = out.get(node.op_type, 0) + size
    return out


def choose_quant_method(proto) -> str:
    """"weights" when Conv weights outnumber MatMul/Gemm weights (conv towers), else "dynamic" (ViTs)."""
    by_op = _weights_by_op(proto)
    conv = by_op.get("Conv", 0)
    mm = by_op.get("MatMul", 0) + by_op.get("Gemm", 0)
    return "weights" if conv >= mm else "dynamic"


def classifier_node(proto) -> Optional[str]:
    """Name of the last MatMul/Gemm the output depends on: the classifier (cosine or linear head)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    ancestors: set[str] = set()
    stack = [o.name for o in proto.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in ancestors:
            continue
        ancestors.add(node.name)
        stack.extend(node.input)
    last = None
    for node in proto.graph.node:  # topologically sorted
        if node.op_type in ("MatMul", "Gemm") and node.name in ancestors:
            last = node.name
    return last


def shape_nodes(proto) -> list[str]:
    """Nodes that compute shapes, not pixels: every non-constant input derives from a Shape op.

    timm's TF-"same" padding computes its pad widths at run time (Shape -> Cast -> Div ->
    Ceil -> ... -> Pad), in float. The quantiser would put Q/DQ pairs on that float
    arithmetic and round the pad widths - wrong padding, and accuracy collapses (measured:
    EfficientNet-Lite0 lost 12 points). They must stay exact.
    """
    consts = {t.name for t in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    derived: set[str] = set()
    names = []
    for n in proto.graph.node:  # topological order
        inputs = [i for i in n.input if i and i not in consts]
        if n.op_type == "Shape" or (inputs and all(i in derived for i in inputs)):
            derived.update(n.output)
            names.append(n.name)
    return names


def head_nodes(proto) -> list[str]:
    """The classifier plus every node between the image tower's last weighted layer and it
    (normalisation, logit scale): kept in float, since 8-bit steps on a unit-norm embedding
    times a logit scale of up to 100 cost more accuracy than they save bytes."""
    cls = classifier_node(proto)
    if cls is None:
        return []
    inits = {t.name for t in proto.graph.initializer}
    nodes = list(proto.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == cls)
    last = None
    for n in nodes[:idx]:
        if n.op_type in ("Conv", "MatMul", "Gemm") and any(i in inits for i in n.input):
            last = n
    if last is None:
        return [cls]
    live = set(last.output)
    head = []
    for n in nodes[nodes.index(last) + 1 :]:  # topological order: one forward sweep finds the descendants
        if any(i in live for i in n.input):
            live.update(n.output)
            head.append(n.name)
    return head if cls in head else head + [cls]


def quantize_weights_only(proto, exclude: Sequence[str] = (), min_elements: int = 256):
    """Int8 weights, float activations: each Conv/MatMul/Gemm weight becomes an int8
    initializer (symmetric, one scale per output channel) plus a DequantizeLinear node.

    The file shrinks ~4x and the arithmetic stays float32, so accuracy barely moves; no
    calibration data is needed. Modifies and returns ``proto``.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    skip = set(exclude)
    new_nodes, done = [], set()
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or node.name in skip or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in done or name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(inits[name])
        if w.size < min_elements or w.ndim < 2:
            continue
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        else:
            if w.ndim != 2:
                continue
            axis = 1
        reduce = tuple(d for d in range(w.ndim) if d != axis)
        scale = np.abs(w).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        proto.graph.initializer.remove(inits[name])
        proto.graph.initializer.extend([
            numpy_helper.from_array(q, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point"),
        ])
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"], [name],
            name=f"{name}_DequantizeLinear", axis=axis,
        ))
        done.add(name)
    for n in reversed(new_nodes):  # before every use: keep the node list topologically sorted
        proto.graph.node.insert(0, n)
    return proto


class _Batches:
    """onnxruntime CalibrationDataReader over pre-made image batches."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self._name = input_name

    def get_next(self) -> Optional[dict]:
        batch = next(self._it, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all we use
        pass


def first_weighted_node(proto) -> Optional[str]:
    """The first Conv/MatMul/Gemm with a weight initializer: the stem, which sees raw pixels."""
    inits = {t.name for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            return n.name
    return None


def _pre_process(src: Path, dst: Path) -> Path:
    """Shape inference + graph optimisation, as onnxruntime recommends before quantising.

    Its symbolic shape inference cannot follow some ViT reshapes; ONNX's own can. A graph
    neither handles is quantised as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return dst
        except Exception:
            continue
    return src


def quantize_int8(
    fp32_path: str | Path,
    out: str | Path,
    method: str = "auto",
    calibration: Optional[np.ndarray] = None,
    calib_batch_size: int = 16,
) -> str:
    """Write an int8 graph of ``fp32_path`` to ``out`` (no metadata); returns the method used.

    Methods (see the module docstring): "weights", "dynamic", "static"; "auto" picks
    "weights" for conv-dominated graphs and "dynamic" for MatMul-dominated ones.
    ``calibration``: (N, 3, S, S) normalised images, needed by "static".
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method not in QUANT_METHODS:
        raise TinltError(f"--int8-method {method!r}; expected one of: {', '.join(QUANT_METHODS)}")
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = _pre_process(Path(fp32_path), Path(tmp) / "pre.onnx")
        proto = onnx.load(str(pre))
        if method == "auto":
            method = choose_quant_method(proto)
        exclude = list(dict.fromkeys(head_nodes(proto) + shape_nodes(proto)))
        if method == "weights":
            stem = first_weighted_node(proto)
            onnx.save(quantize_weights_only(proto, exclude=exclude + ([stem] if stem else [])), str(out))
            return method
        del proto
        if method == "static":
            if calibration is None or len(calibration) == 0:
                raise TinltError(
                    "static int8 quantisation needs calibration images: the checkpoint's data.train split "
                    "(give data.train.* overrides), or use --int8-method weights"
                )

            class Reader(_Batches, CalibrationDataReader):
                pass

            batches = [calibration[i : i + calib_batch_size] for i in range(0, len(calibration), calib_batch_size)]
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # calibration chatter
                warnings.simplefilter("ignore")
                quantize_static(
                    str(pre),
                    str(out),
                    Reader(batches, INPUT_NAME),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    # min/max let rare outliers stretch each activation range; 99.99th percentile
                    # measured 2.4 points better on EfficientNet-Lite0
                    calibrate_method=CalibrationMethod.Percentile,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibPercentile": 99.99},
                )
        else:
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=False,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
            )
    return method




def int8_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name[: -len(".onnx")] + ".int8.onnx" if out.name.endswith(".onnx") else out.name + ".int8.onnx")
