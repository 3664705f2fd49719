"""ONNX export, int8 quantisation and torch-free prediction on a tiny random model.

The model is built without training (create_model + a hand-made checkpoint dict). Every
expected number comes from an independent path in the test: PyTorch logits of the model
itself, torchvision's eval transform, per-class accuracy recomputed with numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import write_class_folders
import tinlt
from tinlt.cli import main
from tinlt.config import load_config, to_dict
from tinlt.data.transforms import build_transforms
from tinlt.engine.checkpoint import save_atomic
from tinlt.deploy.export import ExportWrapper, balanced_indices, check_parity, export_checkpoint, int8_path, read_metadata
from tinlt.models.factory import create_model
from tinlt.deploy.preprocess import Preprocess
from tinlt.deploy.rows import rows_from_probs
from tinlt.metrics import threshold_rule

CLASSES = ["red thing", "green thing", "blue thing"]
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's published normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIZES = [(24, 24), (40, 27), (27, 61), (33, 32)]  # squares, landscape, portrait, off-by-one crop


def _write_images(root: Path, per_class: int, seed: int) -> None:
    names = [c.replace(" ", "_") for c in CLASSES]
    write_class_folders(root, {n: per_class for n in names}, dict(zip(names, COLOURS)), seed=seed, size=SIZES, spread=60)


def make_checkpoint(root: Path, name: str = "tiny-vit", seed: int = 0, head: str = "text") -> tuple[Path, torch.nn.Module, object]:
    """A checkpoint dict as the trainer writes it, for a random ``name`` model over folder splits."""
    cfg = load_config(None, [
        f"model.name={name}", f"model.head={head}", "data.image_size=32", "data.num_workers=0", "train.eval_batch_size=8",
        "data.train.kind=folder", f"data.train.path={root / 'train'}",
        "data.test.kind=folder", f"data.test.path={root / 'test'}",
        f"model.templates={json.dumps(TEMPLATES)}",
    ])
    classes = sorted(CLASSES)  # folder splits order classes by folder name; "_" reads as a space
    torch.manual_seed(seed)
    model = create_model(cfg.model, classes, image_size=32).eval()
    ckpt = {
        "model": model.state_dict(),
        "config": to_dict(cfg),
        "classnames": classes,
        "train_counts": [4, 4, 4],
        "groups": {"many": [], "medium": [], "few": [0, 1, 2]},
        "epoch": 1,
        "global_step": 3,
    }
    path = save_atomic(ckpt, root / f"{name}-{head}.pt")
    return path, model, cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    _write_images(root / "train", 4, seed=0)
    _write_images(root / "test", 4, seed=1)
    ckpt, model, cfg = make_checkpoint(root)
    out = root / "model.onnx"
    result = export_checkpoint(ckpt, out, quantize="int8", quiet=True)
    return root, ckpt, model, cfg, out, result


def _torch_inputs(paths, size=32, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    tf = build_transforms(size, mean, std, train=False, augment="none")
    return torch.stack([tf(Image.open(p)) for p in paths])


def _test_images(root: Path) -> list[Path]:
    return sorted((root / "test").rglob("*.png"))


def test_fp32_graph_matches_pytorch_on_any_batch_size(setup):
    root, _, model, _, out, result = setup
    assert result.parity_max_abs is not None and result.parity_max_abs <= 1e-4
    x = _torch_inputs(_test_images(root))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "images" and sess.get_outputs()[0].name == "logits"
    for batch in (1, 5, len(x)):  # dynamic batch axis
        got = sess.run(None, {"images": x[:batch].numpy()})[0]
        assert got.shape == (batch, 3)
        assert np.abs(got - ref[:batch]).max() <= 1e-4
    # the logits are not trivial: images of different colours get different classes' scores
    assert ref.std() > 0.1


def test_parity_check_float64_fallback_and_a_wrong_graph(setup):
    import copy

    root, _, model, _, out, _ = setup
    x = _torch_inputs(_test_images(root))
    # tolerance 0 forces the float64 comparison: ONNX's rounding is of PyTorch float32's order
    ok = check_parity(ExportWrapper(model), out, x, tolerance=0.0)
    assert ok["passed"] and ok["fp64"] is not None
    assert ok["fp64"]["onnx_error"] <= 10 * ok["fp64"]["torch_fp32_error"]
    # a graph that does not compute the model (logit scale off by 1%) fails either way
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.logit_scale += 0.01
    bad = check_parity(ExportWrapper(other), out, x, tolerance=1e-4)
    assert not bad["passed"] and bad["max_abs_logit_diff"] > 1e-3


def test_graph_has_no_text_tower_and_bakes_class_features(setup):
    root, ckpt, model, _, out, _ = setup
    proto = onnx.load(str(out))
    shapes = [tuple(t.dims) for t in proto.graph.initializer]
    # tiny-vit's text tower has a 49408-token embedding table; none of it may be in the graph
    assert not any(49408 in s for s in shapes)
    assert [i.name for i in proto.graph.input] == ["images"]  # no token input
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    # the baked constant equals the model's class text features (up to a transpose / folding)
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.class_text_features(), dim=-1).numpy()
    consts = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    consts += [onnx.numpy_helper.to_array(a.t) for n in proto.graph.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"]
    found = [c for c in consts if c.shape in (text.shape, text.T.shape)]
    assert any(np.allclose(c if c.shape == text.shape else c.T, text, atol=1e-6) or
               np.allclose(c if c.shape == text.shape else c.T, text * model.scale().item(), atol=1e-4)
               for c in found)


def test_metadata(setup):
    root, ckpt, model, cfg, out, _ = setup
    meta = read_metadata(out)
    assert meta["classnames"] == ["blue thing", "green thing", "red thing"]
    assert meta["templates"] == TEMPLATES
    pre = meta["preprocess"]
    assert pre["image_size"] == 32 and pre["resize"] == "shorter_side" and pre["interpolation"] == "bicubic"
    assert pre["crop"] == "center"
    np.testing.assert_allclose(pre["mean"], CLIP_MEAN, rtol=0, atol=1e-7)
    np.testing.assert_allclose(pre["std"], CLIP_STD, rtol=0, atol=1e-7)
    assert meta["threshold"] is None
    assert meta["tinlt_version"] == tinlt.__version__
    src = meta["source_checkpoint"]
    assert src["path"] == str(Path(ckpt).resolve())
    assert src["sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    assert src["epoch"] == 1 and src["global_step"] == 3
    assert meta["model"]["name"] == "tiny-vit" and meta["model"]["head"] == "text"
    assert meta["parity"]["max_abs_logit_diff"] <= 1e-4
    # the stored values really are JSON strings in metadata_props
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classnames"]) == meta["classnames"]


def _mean_per_class_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    return 100.0 * float(np.mean([np.mean(pred[target == c] == c) for c in np.unique(target)]))


def test_int8_graph_smaller_and_its_reported_accuracy(setup):
    root, _, _, _, out, result = setup
    q = int8_path(out)
    assert q == root / "model.int8.onnx" and q.is_file()
    fp32_size, int8_size = out.stat().st_size, q.stat().st_size
    assert int8_size < fp32_size
    meta = read_metadata(q)
    quant = meta["quantization"]
    assert quant["method"] == "dynamic" == result.int8_method  # a ViT: MatMul weights dominate
    assert quant["size_ratio"] == pytest.approx(fp32_size / int8_size, rel=0.02)
    # recompute both accuracies from the two graphs with numpy
    paths = _test_images(root)
    x = _torch_inputs(paths).numpy()
    names = sorted(CLASSES)
    target = np.array([names.index(p.parent.name.replace("_", " ")) for p in paths])
    for key, f in (("overall_fp32", out), ("overall_int8", q)):
        logits = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        assert quant[key] == pytest.approx(_mean_per_class_accuracy(logits.argmax(1), target))
    assert quant["overall_change"] == pytest.approx(quant["overall_int8"] - quant["overall_fp32"])
    assert quant["eval_split"] == "test" and quant["eval_images"] == len(paths)
    assert meta["classnames"] == read_metadata(out)["classnames"]  # the int8 graph is self-describing too


def test_int8_methods_on_a_conv_tower(setup, tmp_path):
    root = setup[0]
    ckpt, model, _ = make_checkpoint(root, name="tiny-rn")
    x = _torch_inputs(_test_images(root))
    with torch.no_grad():
        ref = model(x).numpy()

    # auto on a conv tower: int8 weights, float arithmetic, the stem conv left float
    out = tmp_path / "rn.onnx"
    res = export_checkpoint(ckpt, out, quantize="int8", quiet=True)
    assert res.parity_max_abs <= 1e-4 and res.int8_method == "weights"
    assert res.int8.stat().st_size * 3 < out.stat().st_size
    proto = onnx.load(str(res.int8))
    producer = {o: n for n in proto.graph.node for o in n.output}
    dtype = {t.name: t.data_type for t in proto.graph.initializer}
    size = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert dtype[convs[0].input[1]] == onnx.TensorProto.FLOAT  # stem weight kept as it was
    quantised = 0
    for conv in convs[1:]:
        if conv.input[1] in dtype:  # still a float initializer: only tiny kernels stay float
            assert size[conv.input[1]] < 256
            continue
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and dtype[dq.input[0]] == onnx.TensorProto.INT8
        quantised += 1
    assert quantised >= len(convs) // 2
    assert not any(n.op_type == "QuantizeLinear" for n in proto.graph.node)  # activations stay float
    # the torch-free loader runs it; per-channel int8 weights barely move the logits of this net
    from tinlt.deploy.onnx_predict import OnnxClassifier

    got = OnnxClassifier(res.int8).logits(x.numpy())
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()

    # static: QDQ on activations, calibrated on training images
    out = tmp_path / "rn_static.onnx"
    res = export_checkpoint(ckpt, out, quantize="int8", int8_method="static", calib_images=6, quiet=True)
    quant = read_metadata(res.int8)["quantization"]
    assert quant["method"] == "static" and quant["calibration_images"] == 6
    assert res.int8.stat().st_size * 2 < out.stat().st_size
    proto = onnx.load(str(res.int8))
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the head stays float: walking back from the classifier MatMul, the first quantised
    # tensor met is the output of the image tower's last weighted layer
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name for t in proto.graph.initializer}
    node = producer[proto.graph.output[0].name]
    while node.op_type != "MatMul":  # the graph ends classifier -> (nothing else) for a text head
        node = producer[node.input[0]]
    stack, seen, met = list(node.input), set(), []
    while stack:
        n = producer.get(stack.pop())
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type == "Shape":  # shape arithmetic carries no values
            continue
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            met.append(n.name)  # reached the image tower's last layer
            continue
        if n.op_type == "DequantizeLinear":  # only allowed: that layer's own output quantisation
            q = producer[n.input[0]]
            assert q.op_type == "QuantizeLinear" and producer[q.input[0]].op_type in ("Conv", "MatMul", "Gemm")
            met.append(producer[q.input[0]].name)
            continue
        stack.extend(n.input)
    assert len(set(met)) == 1


def test_linear_head_exports(setup, tmp_path):
    root = setup[0]
    ckpt, model, _ = make_checkpoint(root, head="linear", seed=1)
    out = tmp_path / "linear.onnx"
    res = export_checkpoint(ckpt, out, parity_images=0, quiet=True)  # random inputs for the built-in check
    assert res.parity_max_abs <= 1e-4 and "random" in res.parity_source
    x = _torch_inputs(_test_images(root))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    meta = read_metadata(out)
    assert meta["model"]["head"] == "linear" and meta["templates"] == [] and meta["model"]["logit_scale"] is None


def test_preprocess_matches_torchvision(tmp_path):
    rng = np.random.default_rng(3)
    pre = Preprocess(image_size=32, mean=CLIP_MEAN, std=CLIP_STD)
    tf = build_transforms(32, CLIP_MEAN, CLIP_STD, train=False, augment="none")
    cases = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
        [(32, 32), (64, 48), (47, 100), (31, 90), (500, 33), (17, 17)]
    ]
    cases.append(Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8), "L"))
    cases.append(Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA"))
    for img in cases:
        ours = pre(img.copy())
        ref = tf(img.copy()).numpy()
        assert ours.shape == ref.shape == (3, 32, 32) and ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1e-6, img.size


def test_threshold_rule_and_rows():
    rule = threshold_rule(0.3, {"positive_class": 0, "target_recall": 0.9, "split": "val"}, ["defect", "ok"])
    probs = np.array([[0.29, 0.71], [0.30, 0.70], [0.8, 0.2]], dtype=np.float32)
    # class 0 whenever P(defect) >= 0.3, even when it is not the argmax
    rows = rows_from_probs(["a", "b", "c"], probs, ["defect", "ok"], topk=1, rule=rule)
    assert [r["prediction"]["class"] for r in rows] == ["ok", "defect", "defect"]
    assert [r["topk"][0]["class"] for r in rows] == ["ok", "ok", "defect"]
    assert threshold_rule(None, None, ["a", "b", "c"]) is None
    with pytest.raises(tinlt.TinltError):
        threshold_rule(0.5, None, ["a", "b", "c"])


def test_balanced_indices_take_classes_in_turn():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    idx = balanced_indices(labels, 5)
    assert sorted(np.bincount(labels[idx], minlength=3).tolist()) == [1, 2, 2]
    assert len(set(idx.tolist())) == 5
    assert len(balanced_indices(labels, 100)) == len(labels)


BLOCK_TORCH = textwrap.dedent(
    """
    import sys, importlib.abc
    BLOCKED = ("torch", "torchvision", "open_clip", "timm", "transformers", "omegaconf", "onnx", "yaml", "matplotlib")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None
    sys.meta_path.insert(0, Block())
    from tinlt.cli import main
    rc = main(sys.argv[1:])
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "a heavy module was imported"
    sys.exit(rc)
    """
)


def _run_blocked(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(tinlt.__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_predict_onnx_without_torch(setup, tmp_path):
    root, _, model, _, out, _ = setup
    preds = tmp_path / "preds.json"
    proc = _run_blocked(["predict", str(root / "test"), "--model", str(out), "--topk", "3", "--out", str(preds)])
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(preds.read_text())
    paths = _test_images(root)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    with torch.no_grad():
        probs = model(_torch_inputs(paths)).softmax(-1).numpy()
    for row, p in zip(rows, probs):
        assert row["topk"][0]["index"] == int(p.argmax())
        got = np.zeros(3)
        for t in row["topk"]:
            got[t["index"]] = t["score"]
        np.testing.assert_allclose(got, p, atol=2e-5)

    # CSV output and the blocked import of torch for a bad request: still one clean error line
    proc = _run_blocked(["predict", str(root / "nope"), "--model", str(out)])
    assert proc.returncode == 2 and proc.stderr.strip().startswith("tinlt: error: no such image or folder")


def test_predict_cli_errors(setup, tmp_path, capsys):
    root, ckpt, _, _, out, _ = setup
    with pytest.raises(SystemExit) as e:  # exactly one of --checkpoint / --model
        main(["predict", str(root / "test"), "--model", str(out), "--checkpoint", str(ckpt)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["predict", str(root / "test")])
    assert main(["predict", str(root / "test"), "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "model not found" in capsys.readouterr().err
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a graph")
    assert main(["predict", str(root / "test"), "--model", str(bogus)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.pt")]) == 2
    assert "--out must end in .onnx" in capsys.readouterr().err
    # predict --out with a CSV, through the checkpoint path and the ONNX path: same top-1 column
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", str(root / "test"), "--model", str(out), "--topk", "1", "--out", str(a)]) == 0
    assert main(["predict", str(root / "test"), "--checkpoint", str(ckpt), "--topk", "1", "--out", str(b)]) == 0
    col = lambda f: [line.split(",")[1] for line in f.read_text().splitlines()]  # noqa: E731
    assert col(a) == col(b)


def test_the_model_decides_the_backend_whichever_flag_names_it(setup, tmp_path):
    """predict, serve and mine share one rule: an .onnx file is the torch-free backend, anything
    else a checkpoint; --model and --checkpoint only name the file."""
    root, ckpt, _, _, out, _ = setup
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["predict", str(root / "test"), "--checkpoint", str(out), "--out", str(a)]) == 0  # an ONNX file
    assert main(["predict", str(root / "test"), "--model", str(ckpt), "--out", str(b)]) == 0  # a checkpoint
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert [r["path"] for r in ra] == [r["path"] for r in rb]
    for x, y in zip(ra, rb):
        assert [t["class"] for t in x["topk"]] == [t["class"] for t in y["topk"]]
        assert x["probs"] == pytest.approx(y["probs"], abs=2e-4)


def _tampered(src: Path, dst: Path, **meta) -> Path:
    """A copy of an exported model with some metadata values replaced (JSON-encoded)."""
    m = onnx.load(str(src))
    for prop in m.metadata_props:
        if prop.key in meta:
            prop.value = json.dumps(meta[prop.key])
    onnx.save(m, str(dst))
    return dst


def test_metadata_that_disagrees_with_the_graph_is_one_line_at_load(setup, tmp_path):
    """Class names or an image size that the graph does not have: predict, mine and serve stop at
    load time with one line and exit 2 (serve used to report ready, then answer 500 to everything)."""
    import socket

    root, _, _, _, out, _ = setup
    pre = read_metadata(out)["preprocess"]
    four = _tampered(out, tmp_path / "four.onnx", classnames=["a", "b", "c", "d"])
    big = _tampered(out, tmp_path / "big.onnx", preprocess={**pre, "image_size": 48})
    for bad, said in ((four, "the metadata names 4 classes"), (big, "48")):
        for cmd in (["predict", str(root / "test"), "--model", str(bad)],
                    ["mine", str(root / "test"), "--model", str(bad), "--out", str(tmp_path / f"mine-{bad.stem}")]):
            proc = _run_blocked(cmd)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
            assert lines[0].startswith("tinlt: error:") and "metadata and graph disagree" in lines[0] and said in lines[0]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, "-m", "tinlt", "serve", str(bad), "--port", str(port)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2 and "metadata and graph disagree" in proc.stderr and "Traceback" not in proc.stderr
        assert "ready" not in proc.stdout
    # the untouched file loads (the check is not simply refusing everything)
    assert _run_blocked(["predict", str(root / "test"), "--model", str(out)]).returncode == 0


def test_eval_of_an_onnx_model_matches_the_checkpoints_without_torch(setup, tmp_path):
    """Labelled scoring of the exported file from a list of test files, torch and omegaconf blocked:
    the same confusion matrix and per-class accuracy as the checkpoint's own eval on those files
    (classes matched by name, in another order than the model's)."""
    from tinlt.engine.inference import evaluate_checkpoint

    root, ckpt, _, _, out, _ = setup
    names = sorted(CLASSES)
    listing = tmp_path / "test.txt"
    cn = tmp_path / "classnames.txt"
    order = list(reversed(names))  # the list's own label numbers differ from the model's
    cn.write_text("".join(f"{i} {n}\n" for i, n in enumerate(order)))
    rows = [f"{p} {order.index(p.parent.name.replace('_', ' '))}\n" for p in _test_images(root)]
    listing.write_text("".join(rows))
    args = ["data.test.kind=list", f"data.test.path={listing}", f"data.test.classnames={cn}", f"data.test.root={root}"]
    ev = tmp_path / "onnx_eval"
    proc = _run_blocked(["eval", "--checkpoint", str(out), "--out", str(ev), *args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((ev / "metrics.json").read_text())
    # the listing's paths are relative to data.test.root: give the checkpoint the same files as a folder split
    ref = evaluate_checkpoint(ckpt, ["data.test.kind=folder", f"data.test.path={root / 'test'}"],
                              out_dir=tmp_path / "torch_eval", quiet=True)
    assert got["confusion"] == ref["confusion"] and got["num_samples"] == len(rows) == 12
    assert got["overall"] == pytest.approx(ref["overall"]) and got["few"] == pytest.approx(ref["few"])
    assert [(c["name"], c["accuracy"], c["group"]) for c in got["per_class"]] == \
        [(c["name"], pytest.approx(c["accuracy"]), c["group"]) for c in ref["per_class"]]
    csv_rows = (ev / "predictions.csv").read_text().splitlines()
    assert len(csv_rows) == 13 and csv_rows[0].startswith("index,path,true,predicted,correct,p_")
    # a key scoring does not read, and a split it cannot have: one line each
    bad = _run_blocked(["eval", "--checkpoint", str(out), *args, "data.tets.path=x"])
    assert bad.returncode == 2 and "data.tets.path" in bad.stderr and "Traceback" not in bad.stderr
    none = _run_blocked(["eval", "--checkpoint", str(out)])
    assert none.returncode == 2 and "carries no data" in none.stderr
