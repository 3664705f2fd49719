"""One path from a checkpoint to scores: every command scores a fixture run the same way.

``tinlt eval``, ``tinlt predict`` (checkpoint and exported ONNX), ``tinlt export`` and
``tinlt calibrate`` on one trained run must agree with a computation written here from the
model's parts: image embedding . class text features x logit scale, minus tau * log prior
of the training counts (post-hoc adjustment), softmax. A run folder means its best.pt in
every command, and each says which file it used; a calibrated threshold lives in
``<run>/eval/calibrated.pt`` and is applied by every path that is given that file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import common_args, split_args
from tinlt.cli import main

TAU = 1.0


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("paths") / "run"
    argv = ["train", *common_args(out), *split_args("folder", dataset), f"train.posthoc_tau={TAU}"]
    assert main(argv) == 0
    return out


def _test_images(dataset: Path) -> list[Path]:
    return sorted((dataset / "test").rglob("*.png"))


def _expected_probs(run: Path, paths: list[Path], train_dir: Path) -> np.ndarray:
    """Softmax of the adjusted logits, from the checkpoint's tensors, the model's parts and
    the training images counted here."""
    from tinlt.config import from_dict
    from tinlt.data.transforms import build_transforms
    from tinlt.models.factory import create_model

    ckpt = torch.load(run / "best.pt", weights_only=False)
    cfg = from_dict(ckpt["config"])
    model = create_model(cfg.model, ckpt["classnames"], image_size=cfg.data.image_size)
    model.load_state_dict(ckpt["model"])
    model.eval()  # no adjustment is set on this model: the post-hoc offset is added by hand below
    tf = build_transforms(cfg.data.image_size, model.image_mean, model.image_std, train=False, augment="none")
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        image = model.encode_image(x)
        text = model.class_text_features()
        logits = model.logit_scale.exp().clamp(max=100) * image @ text.t()
    counts = np.array([len(list((train_dir / n.replace(" ", "_")).glob("*.png"))) for n in ckpt["classnames"]], float)
    prior = counts / counts.sum()
    adjusted = logits.double().numpy() - TAU * np.log(prior)
    e = np.exp(adjusted - adjusted.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_eval_predict_and_export_score_like_the_hand_computation(run, dataset, tmp_path, capsys):
    paths = _test_images(dataset)
    probs = _expected_probs(run, paths, dataset / "train")
    classnames = torch.load(run / "best.pt", weights_only=False)["classnames"]
    truth = [classnames.index(p.parent.name.replace("_", " ")) for p in paths]

    # tinlt eval on the run folder: best.pt, metrics in <run>/eval/
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert f"--checkpoint: using {run / 'best.pt'}" in capsys.readouterr().out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    order = np.argsort(m["predictions"]["index"])
    assert np.asarray(m["predictions"]["target"])[order].tolist() == truth
    assert np.asarray(m["predictions"]["pred"])[order].tolist() == probs.argmax(1).tolist()
    np.testing.assert_allclose(np.asarray(m["predictions"]["confidence"])[order], probs.max(1), atol=2e-5)
    per_class = np.array([np.mean(probs.argmax(1)[np.asarray(truth) == c] == c) for c in range(3)]) * 100
    assert m["overall"] == pytest.approx(per_class.mean())

    # tinlt predict with the checkpoint, and with the exported graph
    assert main(["predict", str(dataset / "test"), "--checkpoint", str(run), "--topk", "3",
                 "--out", str(tmp_path / "ckpt.json")]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx"), "-q"]) == 0
    assert main(["predict", str(dataset / "test"), "--model", str(tmp_path / "m.onnx"), "--topk", "3",
                 "--out", str(tmp_path / "onnx.json")]) == 0
    for name, atol in (("ckpt.json", 2e-6), ("onnx.json", 1e-4)):
        rows = {Path(r["path"]): r for r in json.loads((tmp_path / name).read_text())}
        for i, p in enumerate(paths):
            got = np.zeros(3)
            for t in rows[p]["topk"]:
                got[t["index"]] = t["score"]
            np.testing.assert_allclose(got, probs[i], atol=atol, err_msg=f"{name} {p.name}")


def test_calibrate_threshold_is_applied_by_eval_and_predict(dataset, tmp_path):
    """Two classes (red 9 : green 5 training images): calibrate's threshold decides in every path."""
    two = tmp_path / "two"
    for split in ("train", "test"):
        for c in ("red_thing", "green_thing"):
            (two / split / c).mkdir(parents=True)
            for f in (dataset / split / c).iterdir():
                (two / split / c / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "run"
    argv = ["train", *common_args(out), *split_args("folder", two), "model.head=linear", "loss.name=ce"]
    assert main(argv) == 0
    assert main(["calibrate", "--checkpoint", str(out), "--split", "test", "--target-recall", "1.0", "-q"]) == 0
    cal = json.loads((out / "eval" / "calibration.json").read_text())
    thr, pos = cal["threshold"], cal["positive_class"]
    calibrated = out / "eval" / "calibrated.pt"
    assert cal["positive_name"] == "green thing"  # 5 training images against 9: the rare class

    paths = sorted((two / "test").rglob("*.png"))
    assert "threshold" not in torch.load(out / "best.pt", weights_only=True)  # the run's files stay as trained
    assert torch.load(calibrated, weights_only=True)["threshold"] == thr
    from tinlt.engine.inference import load_model
    from tinlt.engine.loaders import make_transforms

    model, cfg, _ = load_model(out / "best.pt")
    _, tf = make_transforms(model, cfg)
    with torch.no_grad():
        p_pos = model(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])).softmax(1)[:, pos].numpy()
    decided = np.where(p_pos >= thr, pos, 1 - pos)
    is_pos = np.array([p.parent.name == cal["positive_name"].replace(" ", "_") for p in paths])
    assert decided[is_pos].tolist() == [pos] * int(is_pos.sum())  # target recall 1.0 reached

    assert main(["eval", "--checkpoint", str(calibrated), "-q"]) == 0
    m = json.loads((out / "eval" / "metrics.json").read_text())
    at = m["at_threshold"]
    assert at["threshold"] == thr
    truth = np.where(is_pos, pos, 1 - pos)
    expect_recall_pos = 100.0 * np.mean(decided[truth == pos] == pos)
    assert [r["accuracy"] for r in at["per_class"]][pos] == pytest.approx(expect_recall_pos)

    assert main(["export", "--checkpoint", str(calibrated), "--out", str(tmp_path / "b.onnx"), "-q"]) == 0
    for flag, target in (("--checkpoint", str(calibrated)), ("--model", str(tmp_path / "b.onnx"))):
        res = tmp_path / f"pred{flag}.json"
        assert main(["predict", str(two / "test"), flag, target, "--out", str(res)]) == 0
        rows = {Path(r["path"]): r for r in json.loads(res.read_text())}
        assert [rows[p]["prediction"]["index"] for p in paths] == decided.tolist(), flag
