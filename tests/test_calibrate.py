"""Decision-threshold calibration: the rule on hand-built scores, then end to end on a tiny
two-class model (calibrate -> eval/calibrated.pt, calibration.json, PNG, the training
checkpoint untouched -> predict, eval and export apply it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, write_class_folders
from tinlt.deploy.calibrate import choose_threshold, positive_class
from tinlt.cli import main
from tinlt.config import load_config, to_dict
from tinlt.data.transforms import build_transforms
from tinlt.engine.checkpoint import load_checkpoint, save_atomic
from tinlt.errors import TinltError
from tinlt.deploy.export import read_metadata
from tinlt.models.factory import create_model

# ----------------------------------------------------------------------------- the rule by hand

# positives at 0.9, 0.8, 0.6, 0.4, 0.1; negatives at 0.7, 0.55, 0.3, 0.2
SCORES = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2, 0.1]
LABELS = [1, 1, 0, 1, 0, 1, 0, 0, 1]


@pytest.mark.parametrize(
    "target, score, nxt, recall, precision",
    [
        # 4 of 5 positives first at score 0.4: predicted {0.9 .. 0.4} = 4 TP + 2 FP; next lower score 0.3
        (0.8, 0.4, 0.3, 0.8, 4 / 6),
        (0.75, 0.4, 0.3, 0.8, 4 / 6),  # 0.75 needs 3.75 positives -> still 4
        # 3 of 5 at 0.6: {0.9, 0.8, 0.7, 0.6} = 3 TP + 1 FP; next 0.55
        (0.6, 0.6, 0.55, 0.6, 3 / 4),
        (0.2, 0.9, 0.8, 0.2, 1.0),
        # all 5 only at the lowest score: everything positive, no lower score
        (1.0, 0.1, None, 1.0, 5 / 9),
    ],
)
def test_choose_threshold_by_hand(target, score, nxt, recall, precision):
    c = choose_threshold(SCORES, LABELS, target)
    assert c["score_at_point"] == pytest.approx(score)
    assert c["next_score"] == (None if nxt is None else pytest.approx(nxt))
    assert c["threshold"] == pytest.approx(score if nxt is None else (score + nxt) / 2)
    assert c["recall"] == pytest.approx(recall)
    assert c["precision"] == pytest.approx(precision)
    # the stored threshold gives exactly that operating point
    pred = np.asarray(SCORES) >= c["threshold"]
    y = np.asarray(LABELS, bool)
    assert (pred & y).sum() / y.sum() == pytest.approx(recall)
    assert (pred & y).sum() / pred.sum() == pytest.approx(precision)


def test_choose_threshold_ties_and_shuffled_input():
    # a tie of a positive and a negative at 0.5 moves together: recall 2/3 needs both
    scores = [0.5, 0.9, 0.5, 0.2]
    labels = [1, 1, 0, 1]
    c = choose_threshold(scores, labels, 0.6)
    assert c["score_at_point"] == 0.5 and c["threshold"] == pytest.approx(0.35)
    assert (c["tp"], c["fp"]) == (2, 1) and c["precision"] == pytest.approx(2 / 3)


def test_choose_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        s = np.round(rng.random(n), 2)  # rounding makes ties
        y = rng.random(n) < 0.3
        y[0] = True
        target = float(rng.choice([0.5, 0.8, 0.9, 0.95, 1.0]))
        # brute force: the highest distinct score whose ">=" recall reaches the target
        cands = sorted(set(s.tolist()), reverse=True)
        best = next(t for t in cands if (s[y] >= t).mean() >= target)
        c = choose_threshold(s, y, target)
        assert c["score_at_point"] == best
        lower = [t for t in cands if t < best]
        assert c["threshold"] == pytest.approx((best + lower[0]) / 2 if lower else best)
        assert c["recall"] == pytest.approx((s[y] >= best).mean())


def test_choose_threshold_errors():
    with pytest.raises(TinltError, match="no sample of the rare class"):
        choose_threshold([0.1, 0.2], [0, 0], 0.9)
    with pytest.raises(TinltError, match="target-recall"):
        choose_threshold([0.1, 0.2], [0, 1], 0.0)
    with pytest.raises(TinltError, match="NaN"):
        choose_threshold([float("nan"), 0.2], [0, 1], 0.5)


def test_positive_class_is_the_rare_one():
    assert positive_class([100, 3]) == 1
    assert positive_class([3, 100]) == 0
    assert positive_class([7, 7]) == 1  # a tie: class 1, as in tinlt.metrics


# ----------------------------------------------------------------------------- end to end

CLASSES = ["a defect", "b normal"]  # folder order; the defect is rare in training -> positive class 0


def _write(root: Path, per_class: int, seed: int) -> None:
    names = [c.replace(" ", "_") for c in CLASSES]
    write_class_folders(root, {n: per_class for n in names}, dict(zip(names, ([200, 60, 60], [60, 60, 200]))),
                        seed=seed, size=(28, 24), spread=90)


def _checkpoint(root: Path, classes: list[str], counts: list[int], val: bool = True) -> tuple[Path, torch.nn.Module]:
    overrides = [
        *TINY, "train.eval_batch_size=4",
        "data.test.kind=folder", f"data.test.path={root / 'test'}",
    ]
    if val:
        overrides += ["data.val.kind=folder", f"data.val.path={root / 'val'}"]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = create_model(cfg.model, classes, image_size=32).eval()
    ckpt = {"model": model.state_dict(), "config": to_dict(cfg), "classnames": classes, "train_counts": counts,
            "groups": {"many": [1], "medium": [], "few": [0]}, "epoch": 1, "global_step": 1}
    return save_atomic(ckpt, root / "run" / "best.pt"), model


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    _write(root / "val", 6, seed=0)
    _write(root / "test", 3, seed=1)
    path, model = _checkpoint(root, CLASSES, [3, 40])
    return root, path, model


def _probs(model, paths) -> np.ndarray:
    tf = build_transforms(32, model.image_mean, model.image_std, train=False, augment="none")
    with torch.no_grad():
        return model(torch.stack([tf(Image.open(p)) for p in paths])).softmax(-1).numpy()


def test_calibrate_end_to_end(binary, tmp_path, capsys):
    root, path, model = binary
    before = path.read_bytes()
    assert main(["calibrate", "--checkpoint", str(path.parent), "--target-recall", "0.8", "--quiet"]) == 0
    assert path.read_bytes() == before  # the training run's checkpoint is never written
    calibrated = path.parent / "eval" / "calibrated.pt"
    ckpt = load_checkpoint(calibrated)

    # independent scores: the model on the val images through torchvision's eval transform
    val = sorted((root / "val").rglob("*.png"))
    p_def = _probs(model, val)[:, 0]
    y = np.array([p.parent.name == "a_defect" for p in val])
    cands = sorted(set(p_def.tolist()), reverse=True)
    best = next(t for t in cands if (p_def[y] >= t - 1e-7).mean() >= 0.8)
    lower = [t for t in cands if t < best - 1e-7]
    expected = (best + lower[0]) / 2 if lower else best
    assert ckpt["threshold"] == pytest.approx(expected, abs=1e-6)
    info = ckpt["threshold_info"]
    assert info["positive_class"] == 0 and info["positive_name"] == "a defect"
    assert info["split"] == "val" and info["target_recall"] == 0.8
    pred = p_def >= ckpt["threshold"]
    assert info["recall"] == pytest.approx((pred & y).sum() / y.sum())
    assert info["recall"] >= 0.8
    assert info["precision"] == pytest.approx((pred & y).sum() / pred.sum())
    assert info["num_samples"] == 12 and info["num_positive"] == 6
    # the calibrated checkpoint is the source's weights and metadata, without training state
    assert ckpt["classnames"] == CLASSES and ckpt["epoch"] == 1 and "optimizer" not in ckpt
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    assert ckpt["source_checkpoint"]["sha256"] == hashlib.sha256(before).hexdigest()

    report = json.loads((path.parent / "eval" / "calibration.json").read_text())
    assert report["threshold"] == ckpt["threshold"]
    assert report["recall"] == info["recall"] and report["split"] == "val"
    with Image.open(path.parent / "eval" / "calibration_pr.png") as im:
        assert im.format == "PNG" and im.size[0] > 100

    # predict with the checkpoint applies the threshold, not argmax
    test_imgs = sorted((root / "test").rglob("*.png"))
    p_test = _probs(model, test_imgs)[:, 0]
    out_ckpt = tmp_path / "ckpt.json"
    assert main(["predict", str(root / "test"), "--checkpoint", str(calibrated), "--out", str(out_ckpt)]) == 0
    assert "decision threshold applied" in capsys.readouterr().out
    rows = json.loads(out_ckpt.read_text())
    want = ["a defect" if p >= ckpt["threshold"] else "b normal" for p in p_test]
    assert [r["prediction"]["class"] for r in rows] == want

    # tinlt eval reports the operating point next to argmax; on a copy whose threshold moves decisions
    y_test = np.array([p.parent.name == "a_defect" for p in test_imgs])
    argmax = _probs(model, test_imgs).argmax(1) == 0
    cuts = np.sort(np.concatenate([[0.0, 1.0], p_test]))
    moved = [t for t in (cuts[:-1] + cuts[1:]) / 2 if ((p_test >= t) != argmax).any()]
    assert moved
    ev_ckpt = dict(ckpt, threshold=float(moved[0]))
    ev_path = save_atomic(ev_ckpt, tmp_path / "ev" / "best.pt")
    assert main(["eval", "--checkpoint", str(ev_path), "--quiet"]) == 0
    ev = json.loads((ev_path.parent / "eval" / "metrics.json").read_text())
    at_t = p_test >= moved[0]
    at = ev["at_threshold"]
    assert at["threshold"] == moved[0]

    def balanced(decided):  # mean of defect recall and normal specificity, in %
        return 100 * ((decided & y_test).sum() / y_test.sum() + (~decided & ~y_test).sum() / (~y_test).sum()) / 2

    assert at["overall"] == pytest.approx(balanced(at_t))
    assert ev["overall"] == pytest.approx(balanced(argmax))

    # export carries it into the metadata, and the ONNX path applies it the same way
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(calibrated), "--out", str(onnx_path), "--quiet"]) == 0
    meta = read_metadata(onnx_path)
    assert meta["threshold"] == ckpt["threshold"]
    assert meta["threshold_info"]["positive_class"] == 0
    out_onnx = tmp_path / "onnx.csv"
    assert main(["predict", str(root / "test"), "--model", str(onnx_path), "--out", str(out_onnx)]) == 0
    assert "decision threshold applied" in capsys.readouterr().out
    lines = out_onnx.read_text().splitlines()
    header = lines[0].split(",")
    assert "prediction" in header
    assert [ln.split(",")[header.index("prediction")] for ln in lines[1:]] == want
    assert main(["predict", str(root / "test"), "--model", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# decision threshold applied: 'a defect' when P(a defect) >=")


def test_calibrate_errors(binary, tmp_path, capsys):
    root = binary[0]
    three, _ = _checkpoint(tmp_path, ["a", "b", "c"], [5, 3, 1], val=False)
    assert main(["calibrate", "--checkpoint", str(three)]) == 2
    assert "calibrate needs a two-class model; this one has 3 classes" in capsys.readouterr().err
    no_val, _ = _checkpoint(tmp_path / "nv", CLASSES, [3, 40], val=False)
    assert main(["calibrate", "--checkpoint", str(no_val), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "no data.val split" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):  # argparse rejects a recall outside (0, 1]
        main(["calibrate", "--checkpoint", str(no_val), "--target-recall", "1.5"])
    assert main(["calibrate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # data.* overrides give the split on the command line; other keys are refused
    assert main(["calibrate", "--checkpoint", str(no_val), "--split", "test", "--quiet",
                 f"data.test.path={root / 'val'}"]) == 0
    assert load_checkpoint(no_val.parent / "eval" / "calibrated.pt")["threshold_info"]["split"] == "test"
    assert main(["calibrate", "--checkpoint", str(no_val), "optim.lr=1"]) == 2
    assert "only data.*" in capsys.readouterr().err
