"""The newcomer's path on generated folder data, as the README tells it.

A two-class folder tree (many "sound clamp" images, a few "rusty clamp" ones), a config of
two lines on top of the bundled ``starter_offline``, then: train -> eval -> predictions.csv
-> report -> compare (two seeds) -> calibrate -> eval at the threshold -> predict --sort-by.
Each output is checked against what it claims, computed independently here: the
``correct`` column against the confusion matrix, the ranking against the probability
column, the operating point against the thresholded probabilities.

The towers are swapped for tinlt's tiny random config (``model.name=tiny-vit``) and the
images kept at 32 px so the path runs in seconds; the recipe is otherwise the starter's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from tinlt.cli import main

CLASSES = ("rusty_clamp", "sound_clamp")
NAMES = ("rusty clamp", "sound clamp")  # folder trees order classes by name
FAST = [*TINY, "optim.epochs=3", "optim.lr=1e-3",
        "optim.batch_size=16", "train.eval_batch_size=32", "train.quiet=true", "train.early_stopping=0"]


def _tree(root: Path, counts: dict, seed: int) -> None:
    """Grey images; rusty ones carry a brown patch of random size and place (some faint: mistakes happen)."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.full((32, 32, 3), 128, dtype=np.int16) + rng.integers(-30, 30, (32, 32, 3))
            if cls == "rusty_clamp":
                s, y, x = int(rng.integers(4, 16)), int(rng.integers(0, 16)), int(rng.integers(0, 16))
                arr[y:y + s, x:x + s] += (np.array([50, 0, -40]) * rng.uniform(0.3, 1.0)).astype(np.int16)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{cls}_{i:03d}.png")


@pytest.fixture(scope="module")
def clamps(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clamps")
    _tree(root / "train", {"sound_clamp": 120, "rusty_clamp": 15}, seed=0)
    _tree(root / "test", {"sound_clamp": 40, "rusty_clamp": 20}, seed=1)
    (root / "my_run.yaml").write_text(
        "_base_: starter_offline\n"
        f"data:\n  train: {{path: {root / 'train'}}}\n  test: {{path: {root / 'test'}}}\n")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_newcomers_path(clamps, tmp_path, capsys):
    run, run2 = tmp_path / "run", tmp_path / "run_seed1"
    cfg = str(clamps / "my_run.yaml")
    # ---- train: the starter recipe on the user's folders (nothing inherited from Fashion-MNIST)
    assert main(["train", "-c", cfg, *FAST, f"train.output_dir={run}"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["classnames"] == list(NAMES)
    # every training image is used: 20% of each class held out for selection, the rest trains
    assert info["train_counts"] == [15 - 3, 120 - 24] and len(info["held_out"]) == 3 + 24
    captured = capsys.readouterr()
    assert "keep" not in captured.err  # no subsampling of the user's data

    # ---- eval: metrics.json + predictions.csv, whose `correct` column is the confusion matrix's diagonal
    assert main(["eval", "--checkpoint", str(run / "best.pt")]) == 0
    ev = run / "eval"
    m = json.loads((ev / "metrics.json").read_text())
    rows = _rows(ev / "predictions.csv")
    assert len(rows) == 60 and {Path(r["path"]).parent.name for r in rows} == set(CLASSES)
    conf = np.zeros((2, 2), dtype=int)
    for r in rows:
        t, p = NAMES.index(r["true"]), NAMES.index(r["predicted"])
        conf[t, p] += 1
        probs = [float(r[f"p_{n}"]) for n in NAMES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert NAMES[int(np.argmax(probs))] == r["predicted"]
        assert r["correct"] == str(int(t == p))
    assert conf.tolist() == m["confusion"]
    assert Path(rows[0]["path"]).is_file()  # real paths, not indices
    recall = conf[0, 0] / conf[0].sum()  # of the rare class
    assert m["binary"]["recall"] == pytest.approx(recall)
    out = capsys.readouterr().out
    assert "operating point, argmax: rare class 'rusty clamp'" in out and "20 positives" in out

    # ---- report: the worst mistakes by file name
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    wrong = [r for r in rows if r["correct"] == "0"]
    if wrong:
        worst = max(wrong, key=lambda r: float(r[f"p_{r['predicted']}"]))
        assert "## Most confident mistakes" in md and worst["path"] in md
    assert "## Operating point" in md

    # ---- calibrate on the held-out images, then evaluate at the threshold
    assert main(["calibrate", "--checkpoint", str(run / "best.pt"), "--target-recall", "0.9"]) == 0
    cal = json.loads((ev / "calibration.json").read_text())
    assert (ev / "calibrated.pt").is_file() and not (run / "calibration.json").exists()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ev / "calibrated.pt"), "--prevalence", "0.025"]) == 0
    out = capsys.readouterr().out
    mt = json.loads((ev / "metrics.json").read_text())
    at = mt["at_threshold"]
    assert at["threshold"] == pytest.approx(cal["threshold"])
    p_rusty = np.array([float(r["p_rusty clamp"]) for r in rows])
    is_rusty = np.array([r["true"] == "rusty clamp" for r in rows])
    flagged = p_rusty >= cal["threshold"]
    assert at["binary"]["recall"] == pytest.approx(flagged[is_rusty].mean(), abs=1e-6)
    assert f"operating point, threshold {cal['threshold']:.4g}" in out and "at 2.5%:" in out
    # expected precision at 2.5% prevalence from recall and false-positive rate
    r_, f_ = at["binary"]["recall"], flagged[~is_rusty].mean()
    expected = 0.025 * r_ / (0.025 * r_ + 0.975 * f_) if (r_ + f_) > 0 else None
    got = at["binary"]["precision_at_prevalence"]["precision"]
    assert (got is None and expected is None) or got == pytest.approx(expected, abs=1e-6)
    # the report shows that threshold's row, read from the evaluation of the checkpoint it names
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert f"threshold {cal['threshold']:.4g} (calibrated)" in md

    # ---- compare two seeds: mean +- std, rare-class columns, the config diff names the seed
    assert main(["train", "-c", cfg, *FAST, "train.seed=1", f"train.output_dir={run2}"]) == 0
    assert main(["compare", str(run), str(run2), "--out", str(tmp_path / "cmp")]) == 0
    cmp_md = (tmp_path / "cmp" / "compare.md").read_text()
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "rare R" in cmp_md and "AUC" in cmp_md and "mean ± std" in cmp_md
    assert "| train.seed | 0 | 1 |" in cmp_md and "train.seed" in page
    crow = _rows(tmp_path / "cmp" / "compare.csv")
    assert float(crow[0]["rare_recall"]) == pytest.approx(m["binary"]["recall"], abs=1e-4)
    assert float(crow[0]["recall_at_threshold"]) == pytest.approx(at["binary"]["recall"], abs=1e-4)

    # ---- predict --sort-by: the folder ranked by P(rusty), a column per class
    preds = tmp_path / "ranked.csv"
    assert main(["predict", str(clamps / "test"), "--checkpoint", str(ev / "calibrated.pt"),
                 "--sort-by", "rusty clamp", "--out", str(preds)]) == 0
    ranked = _rows(preds)
    p = [float(r["p_rusty clamp"]) for r in ranked]
    assert len(ranked) == 60 and p == sorted(p, reverse=True)
    assert all(r["prediction"] == ("rusty clamp" if float(r["p_rusty clamp"]) >= cal["threshold"] else "sound clamp")
               for r in ranked)
    assert ranked[0]["class_1"] in NAMES and "p_sound clamp" in ranked[0]


README = Path(__file__).resolve().parents[1] / "README.md"
FAST_GRID = """cells:
  - {name: tin, kind: tin, overrides: [optim.epochs=2]}
  - {name: probe, kind: baseline, overrides: [model.head=linear, model.visual_attention=false,
     model.tune_image.method=frozen, model.classifier_init=logistic, optim.epochs=0]}
"""


def _readme_commands() -> list[str]:
    """The own-data section's shell block, as printed in the README."""
    text = README.read_text()
    section = text[text.index("## Using tinlt on your own data"):]
    block = section[section.index("Then five commands:"):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln.split("#")[0].strip() for ln in block.splitlines() if ln.startswith("tinlt ")]


def test_the_readmes_five_commands_on_generated_folders(clamps, tmp_path, monkeypatch, capsys):
    """Verbatim from the README, with /data/clamps pointing at generated folders and, for time,
    tiny towers and a two-recipe grid on 3 folds appended to the fit command."""
    import shlex

    commands = _readme_commands()
    assert [c.split()[1] for c in commands] == ["data", "fit", "eval", "predict", "report"]
    data = tmp_path / "data"
    (data / "new_photos").mkdir(parents=True)
    (data / "clamps").symlink_to(clamps)
    for p in sorted((clamps / "test" / "rusty_clamp").glob("*.png"))[:5]:
        (data / "new_photos" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "fast.yaml").write_text(FAST_GRID)
    monkeypatch.chdir(tmp_path)
    for cmd in commands:
        argv = shlex.split(cmd.replace("/data/", f"{data}/"))[1:]
        if argv[0] == "fit":
            argv += ["--grid", "fast.yaml", "--folds", "3", "-q", *[a for a in FAST if a.startswith(("model.",
                     "data.", "optim.batch", "optim.lr"))], "data.num_workers=0"]
        if argv[0] == "predict":
            argv = [a if a != "rusty" else "rusty clamp" for a in argv]  # the README's class is "rusty"
        assert main(argv) == 0, cmd
    out = capsys.readouterr().out
    fit = json.loads((tmp_path / "runs/clamps/fit.json").read_text())
    assert fit["threshold"]["recall"] >= 0.9 and fit["train_images"] == 135
    model = tmp_path / "runs/clamps/model"
    m = json.loads((model / "eval" / "metrics.json").read_text())
    assert m["at_threshold"]["threshold"] == pytest.approx(fit["threshold"]["threshold"])
    ranked = _rows(tmp_path / "ranked.csv")
    assert len(ranked) == 5 and [float(r["p_rusty clamp"]) for r in ranked] == sorted(
        (float(r["p_rusty clamp"]) for r in ranked), reverse=True)
    assert (model / "eval" / "report" / "index.html").is_file() and "fit:" in out
