"""Reports: figures are real PNGs, the HTML page stands alone and shows the right numbers.

Two tiny runs are trained once for the module (tiny-vit on generated images, 2 epochs,
evaluated every epoch): four classes spanning many / medium / few, and a two-class run
for the precision-recall and ROC curves. Also covers eval-only folders, missing pieces,
``tinlt compare``, the TensorBoard logger and a real headless browser loading the page.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, write_class_folders, write_list
from tinlt import report
from tinlt.cli import main
from tinlt.errors import TinltError

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 40)]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


def _dataset(root: Path, classes: list[str], train_counts: list[int], test_per_class: int) -> list[str]:
    rng = np.random.default_rng(0)
    folders = [f"c{c}" for c in range(len(classes))]
    for split, counts in (("train", train_counts), ("test", [test_per_class] * len(classes))):
        write_class_folders(root / split, dict(zip(folders, counts)), dict(zip(folders, COLOURS)), size=(20, 20),
                            spread=40, rng=rng)
        write_list(root / f"{split}.txt", root, root / split, folders)
    (root / "classnames.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(classes)))
    cn = root / "classnames.txt"
    return [
        *TINY, "optim.batch_size=8", "optim.lr=1e-3",
        "optim.name=adamw", "optim.epochs=2", "train.eval_every=1", "train.eval_batch_size=16", "train.quiet=true",
        "data.train.kind=list", f"data.train.path={root / 'train.txt'}", f"data.train.classnames={cn}",
        "data.test.kind=list", f"data.test.path={root / 'test.txt'}", f"data.test.classnames={cn}",
    ]


MULTI_CLASSES = ["red apple", "green leaf", "blue sky", "yellow sun"]
MULTI_COUNTS = [12, 6, 3, 2]  # with many > 10, few < 3: many {0}, medium {1, 2}, few {3}


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi")
    args = _dataset(root, MULTI_CLASSES, MULTI_COUNTS, test_per_class=3)
    out = root / "run"
    assert main(["train", *args, "data.many_threshold=10", "data.few_threshold=3", f"train.output_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory) -> Path:
    from tinlt.engine.loggers import tensorboard_available

    root = tmp_path_factory.mktemp("binary")
    args = _dataset(root, ["common clamp", "rare clamp"], [12, 3], test_per_class=4)
    out = root / "run"
    tb = f"train.tensorboard={'true' if tensorboard_available() else 'false'}"
    assert main(["train", *args, f"train.output_dir={out}", tb]) == 0
    return out


# --------------------------------------------------------------------------- helpers


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a["src"])
        for key in ("src", "href"):
            if key in a and tag != "img":
                self.external.append(f"{tag} {key}={a[key]}")


def _check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()  # structure and CRCs
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 300 <= w <= 3000 and 200 <= h <= 3000, (path.name, im.size)
        rgb = np.asarray(im.convert("RGB"))
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 10, f"{path.name}: only {len(colours)} colours"
    ink = (rgb.min(axis=2) < 200).mean()  # share of pixels that are not (near) white
    assert ink > 0.01, f"{path.name}: {ink:.4f} of the image is drawn"


def _expected_groups(counts, many_t, few_t) -> dict:
    counts = np.asarray(counts)
    return {"many": np.flatnonzero(counts > many_t), "few": np.flatnonzero(counts < few_t),
            "medium": np.flatnonzero((counts <= many_t) & (counts >= few_t))}


# --------------------------------------------------------------------------- one run


def test_training_writes_the_report(multi_run):
    # the trainer builds the report at the end of train()
    assert (multi_run / "report" / "index.html").is_file()
    assert (multi_run / "report" / "per_class_accuracy.png").is_file()


def test_every_figure_is_a_real_png(multi_run, tmp_path):
    dest = report.build_report(multi_run, out=tmp_path / "rep")
    assert dest == tmp_path / "rep"
    pngs = sorted(p.name for p in dest.glob("*.png"))
    assert pngs == sorted(["per_class_accuracy.png", "groups.png", "confusion.png", "training_curves.png",
                           "eval_curves.png", "grad_ratio.png", "samples.png"])  # no PR/ROC for 4 classes
    for name in pngs:
        _check_png(dest / name)


def test_html_stands_alone_and_shows_every_figure(multi_run):
    dest = multi_run / "report"  # written by train()
    page = (dest / "index.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert "script" not in refs.tags and refs.external == []  # no external CSS/JS/fonts, no links out
    assert "http://" not in page and "https://" not in page
    pngs = {p.name for p in dest.glob("*.png")}
    files = [i for i in refs.imgs if not i.startswith("data:image/png;base64,")]  # mistakes' inline thumbnails
    assert set(files) == pngs  # every figure shown, nothing else referenced
    for src in files:
        assert not Path(src).is_absolute() and (dest / src).is_file()
    md = (dest / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in md
    # bottom of the page: resolved config, versions, command
    assert "Configuration" in page and "tiny-vit" in page and "Versions" in page and "torch" in page
    assert page.index("overall") < page.index("per_class_accuracy.png") < page.index("Configuration")


def test_headline_numbers_match_an_independent_computation(multi_run):
    m = json.loads((multi_run / "metrics.json").read_text())
    cm = np.array(m["confusion"], dtype=float)
    acc = 100 * np.diag(cm) / cm.sum(1)
    g = _expected_groups(MULTI_COUNTS, 10, 3)
    expected = {
        "overall": acc.mean(), "many": acc[g["many"]].mean(), "medium": acc[g["medium"]].mean(),
        "few": acc[g["few"]].mean(), "instance": 100 * np.trace(cm) / cm.sum(),
    }
    page = (multi_run / "report" / "index.html").read_text()
    head = page.split('class="headline"', 1)[1].split("</table>", 1)[0]
    cells = [c.split("</td>")[0] for c in head.split("<td>")[1:]]
    assert cells == [f"{expected[k]:.2f}" for k in ("overall", "many", "medium", "few", "instance")]
    assert "many (1)" in head and "medium (2)" in head and "few (1)" in head


def test_shaded_regions_follow_the_config_thresholds(multi_run):
    rf = report.load_run(multi_run)
    bounds, how = report.group_bounds(rf)
    # integer counts: few < 3 ends half-way to 3, many > 10 starts half-way past 10
    assert bounds == [("few", 0.0, 2.5), ("medium", 2.5, 10.5), ("many", 10.5, float("inf"))]
    assert "< 3" in how and "> 10" in how
    # and every class falls inside the band of the group run.json stores for it
    for c, g in enumerate(rf.group_of()):
        lo, hi = next((a, b) for name, a, b in bounds if name == g)
        assert lo < MULTI_COUNTS[c] < hi


def test_sample_grid_uses_the_rebuilt_test_split(multi_run):
    rf = report.load_run(multi_run)
    notes: list = []
    samples = report.samples.rebuild_test_split(rf, notes)
    assert notes == [] and samples is not None
    pred = rf.metrics["predictions"]
    # the image behind each prediction is the test image of that class (colour-coded by class)
    for i, t in zip(pred["index"], pred["target"]):
        assert Path(samples.items[i]).parent.name == f"c{t}"


def test_select_grid_puts_rare_classes_and_mistakes_first():
    train_counts = np.array([50, 10, 2])
    targets = np.array([0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 0, 2, 0, 2])
    # round-robin from the rarest class, each class's mistakes first: 5 (c2 wrong), 3 (c1 wrong), 1 (c0 wrong),
    # then 4, 2, 0; ordered mistakes first by rarity, then correct ones by rarity
    assert report.select_grid(targets, preds, train_counts, k=6) == [5, 3, 1, 4, 2, 0]
    assert report.select_grid(targets, preds, train_counts, k=2) == [5, 3]


def test_eval_folder_borrows_from_its_training_run(multi_run, tmp_path, capsys):
    ev = multi_run / "eval"
    assert main(["eval", "--checkpoint", str(multi_run / "best.pt"), "--out", str(ev), "--quiet"]) == 0
    dest = report.build_report(ev)
    names = {p.name for p in dest.glob("*.png")}
    assert {"per_class_accuracy.png", "confusion.png", "groups.png", "samples.png"} <= names
    assert "training run in" in (dest / "index.html").read_text()

    # metrics.json alone (eval --out somewhere else): fewer figures, notes, no traceback
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ev / "metrics.json", lone / "metrics.json")
    assert main(["report", str(lone)]) == 0
    names = {p.name for p in (lone / "report").glob("*.png")}
    assert names == {"per_class_accuracy.png", "groups.png", "confusion.png"}
    page = (lone / "report" / "index.html").read_text()
    assert "no config.yaml" in page and "Not shown" in page


def test_missing_pieces_degrade_gracefully(multi_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in ("metrics.json", "run.json", "config.yaml"):
        shutil.copy(multi_run / f, run / f)
    lines = (multi_run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # crash mid-write
    # the test images have moved away
    cfg = (run / "config.yaml").read_text().replace(str(multi_run.parent / "test.txt"), str(tmp_path / "gone.txt"))
    (run / "config.yaml").write_text(cfg)
    dest = report.build_report(run)
    page = (dest / "index.html").read_text()
    assert "not reachable" in page and "gone.txt" in page
    assert "skipped 1 unreadable line" in page
    assert not (dest / "samples.png").exists() and not (dest / "eval_curves.png").exists()
    assert (dest / "per_class_accuracy.png").is_file() and (dest / "grad_ratio.png").is_file()


def test_no_metrics_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(TinltError, match=str(tmp_path)):
        report.build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinlt: error:") and "\n" not in err and "metrics.json" in err and str(tmp_path) in err
    (tmp_path / "metrics.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.json" in err and "\n" not in err


# --------------------------------------------------------------------------- two classes


def test_two_class_report_has_pr_and_roc(binary_run):
    dest = binary_run / "report"
    _check_png(dest / "pr_roc.png")
    page = (dest / "index.html").read_text()
    assert "ROC-AUC" in page and "rare clamp" in page


def test_threshold_operating_point(binary_run, tmp_path):
    from tinlt import fileio

    run = tmp_path / "run"
    shutil.copytree(binary_run, run, ignore=shutil.ignore_patterns("*.pt", "tensorboard", "report"))
    ckpt = run / "calibrated.pt"
    ckpt.write_bytes(b"weights with a threshold")
    m = json.loads((run / "metrics.json").read_text())
    m["at_threshold"] = {"threshold": 0.4, "rule": "p(rare clamp) >= 0.4", "binary": m["binary"]}
    m["checkpoint"] = {"path": str(ckpt), "sha256": fileio.sha256(ckpt)}
    (run / "metrics.json").write_text(json.dumps(m))
    rf = report.load_run(run)
    fig = report.fig_pr_roc(rf, [])
    pr_ax, roc_ax = fig.axes[:2]
    line = next(l for l in pr_ax.get_lines() if l.get_label() == "threshold 0.4")
    # independent: rare class (1, fewer training images) predicted iff its probability >= 0.4
    s = np.array(m["predictions"]["scores"])[:, 1]
    y = np.array(m["predictions"]["target"]) == 1
    hit = s >= 0.4
    tp, fp = (hit & y).sum(), (hit & ~y).sum()
    assert line.get_xdata()[0] == pytest.approx(tp / y.sum())
    assert line.get_ydata()[0] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
    roc_line = next(l for l in roc_ax.get_lines() if l.get_label() == "threshold 0.4")
    assert roc_line.get_xdata()[0] == pytest.approx(fp / (~y).sum())
    assert report.page.operating_rows(rf)[0][0] == "threshold 0.4 (calibrated)"
    # the checkpoint was re-calibrated since (other bytes): that evaluation is stale, nothing is marked
    ckpt.write_bytes(b"weights with another threshold")
    rf = report.load_run(run)
    assert report.operating_point(rf) is None
    assert not any(l.get_label().startswith("threshold") for l in report.fig_pr_roc(rf, []).axes[0].get_lines())
    assert [r[0] for r in report.page.operating_rows(rf)] == ["argmax"]
    # a side file is never read: an old calibration.json marks nothing
    (run / "calibration.json").write_text(json.dumps({"threshold": 0.4, "target_recall": 0.95}))
    fig = report.fig_pr_roc(report.load_run(run), [])
    assert not any(l.get_label().startswith("threshold") for l in fig.axes[0].get_lines())


# --------------------------------------------------------------------------- compare


def test_compare_table_and_plot(multi_run, binary_run, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(multi_run), str(binary_run), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["run"] for r in rows] == ["multi0/run", "binary0/run"]  # shortest distinct names
    for row, run in zip(rows, (multi_run, binary_run)):
        m = json.loads((run / "metrics.json").read_text())
        assert float(row["overall"]) == pytest.approx(m["overall"], abs=1e-4)
        assert float(row["instance"]) == pytest.approx(m["instance_acc"], abs=1e-4)
        assert float(row["train_time_min"]) == pytest.approx(m["train_time_s"] / 60, abs=0.01)
    assert rows[1]["medium"] == ""  # two classes: no medium group
    md = (out / "compare.md").read_text()
    assert "| multi0/run |" in md and "per_class_accuracy.png" in md
    _check_png(out / "per_class_accuracy.png")
    assert "compare.csv" in capsys.readouterr().out
    # the HTML page: the same table, the rare-class columns of the two-class run, the configs' differences
    page = (out / "index.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert refs.imgs == ["per_class_accuracy.png"] and "script" not in refs.tags
    b = json.loads((binary_run / "metrics.json").read_text())["binary"]
    assert float(rows[1]["rare_auc"]) == pytest.approx(b["auc"], abs=1e-4) and rows[0]["rare_auc"] == ""
    assert "<th>AUC</th>" in page and "Config differences" in page
    # the two runs' configs differ in their data paths and thresholds; both rows name them
    assert "data.many_threshold" in md and "data.train.path" in md


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_logger_writes_events(binary_run):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install tinlt[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(binary_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    log = [json.loads(l) for l in (binary_run / "log.jsonl").read_text().splitlines()]
    # 15 training images, batch 8: 2 optimizer steps per epoch, one loss value per step
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in ea.Scalars("test/overall")] == pytest.approx([r["test"]["overall"] for r in log])
    assert [e.value for e in ea.Scalars("epoch/loss")] == pytest.approx([r["loss"] for r in log])
    assert {"figures/grad_ratio", "figures/per_class_accuracy", "figures/pr_roc"} <= set(tags["images"])


def test_tensorboard_missing_is_a_one_line_error(multi_run, monkeypatch, capsys, tmp_path):
    from tinlt.config import load_config
    from tinlt.engine import loggers

    monkeypatch.setattr(loggers, "tensorboard_available", lambda: False)
    cfg = load_config(multi_run / "config.yaml", ["train.tensorboard=true"])
    with pytest.raises(TinltError, match=r"pip install tinlt\[tensorboard\]"):
        loggers.make_logger(cfg, tmp_path)
    assert isinstance(loggers.make_logger(load_config(multi_run / "config.yaml"), tmp_path), loggers.NullLogger)
    assert isinstance(loggers.NullLogger(), loggers.RunLogger)
    argv = ["train", "--config", str(multi_run / "config.yaml"), f"train.output_dir={tmp_path / 'r'}",
            "train.tensorboard=true"]
    assert main(argv) == 2
    err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("tinlt: warning:")]
    assert len(err) == 1 and err[0].startswith("tinlt: error:") and "pip install tinlt[tensorboard]" in err[0]


def test_a_failing_report_only_warns(multi_run, monkeypatch, capsys, tmp_path):
    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report.hooks, "build_report", broken)
    out = tmp_path / "r"
    argv = ["train", "--config", str(multi_run / "config.yaml"), f"train.output_dir={out}", "train.max_steps=1",
            "optim.epochs=1"]
    assert main(argv) == 0
    assert (out / "metrics.json").is_file() and (out / "best.pt").is_file()
    assert "report not written (RuntimeError: disk full)" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real browser


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={user_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _render(page: Path, tmp_path: Path, name: str) -> str:
    """Load ``page`` in a 1,200 px wide headless browser; returns 'ok:<images>:<scrollWidth>' or 'broken:...'."""
    probe = page.parent / f"_probe_{name}.html"
    script = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
              "const bad=im.filter(i=>!(i.complete&&i.naturalWidth>0)).map(i=>i.getAttribute('src').slice(0,40));"
              "const w=document.documentElement.scrollWidth;"
              "document.body.setAttribute('data-probe',bad.length?'broken:'+bad.join(','):'ok:'+im.length+':'+w);});"
              "</script></body>")
    probe.write_text(page.read_text().replace("</body>", script))
    try:
        res = _chromium("--window-size=1200,900", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
                        user_dir=tmp_path / f"u_{name}")
        assert res.returncode == 0, res.stderr[-2000:]
        found = re.search(r'data-probe="([^"]*)"', res.stdout)
        assert found, res.stdout[-500:]
        return found.group(1)
    finally:
        probe.unlink()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install chromium")
def test_page_renders_in_a_headless_browser(multi_run, binary_run, tmp_path):
    # every image decodes, and the page fits a 1,200 px window (no horizontal scrolling)
    for run in (multi_run, binary_run):
        page = run / "report" / "index.html"
        refs = _Refs()
        refs.feed(page.read_text())
        state, n, width = _render(page, tmp_path, run.parent.name).split(":")
        assert (state, int(n)) == ("ok", len(refs.imgs))
        assert int(width) <= 1200, f"{page}: scroll width {width} px in a 1,200 px window"


# --------------------------------------------------------------------------- many classes, no model needed


def test_many_classes_list_top_confusions(tmp_path):
    from tinlt.config import load_config, to_yaml
    from tinlt.data.groups import shot_groups
    from tinlt.metrics import compute_metrics, confusion_matrix

    C, per_test = 40, 5
    assert C > report.figures.MANY_CLASSES  # the small-heatmap + list branch
    counts = np.round(500 * (1 / 100) ** (np.arange(C) / (C - 1))).astype(int)  # 500 .. 5
    groups = shot_groups(counts, many_threshold=100, few_threshold=20)
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(C), per_test)
    p_right = 0.2 + 0.7 * np.log(counts) / np.log(counts.max())  # head classes are easier
    preds = np.where(rng.random(len(targets)) < p_right[targets], targets, rng.integers(0, 10, len(targets)))
    preds[targets == C - 1] = 3  # the rarest class is always taken for class 3: the top confusion
    names = [f"class {c:03d}" for c in range(C)]
    m = compute_metrics(confusion_matrix(targets, preds, C), groups, classnames=names, train_counts=counts)
    m["predictions"] = {"index": list(range(len(targets))), "target": targets.tolist(), "pred": preds.tolist(),
                        "confidence": [0.5] * len(targets)}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(m))
    (run / "run.json").write_text(json.dumps({"classnames": names, "train_counts": counts.tolist(), "eval_split": "val",
                                              "groups": {k: v.tolist() for k, v in groups.items()}}))
    (run / "config.yaml").write_text(to_yaml(load_config(None, ["data.many_threshold=100", "data.few_threshold=20"])))
    log = [{"epoch": e, "step": 10 * e, "loss": 3.0 / e, "lr": 0.1 / e,
            "val": {"overall": 20.0 + 10 * e, "instance_acc": 30.0 + 10 * e, "many": 40.0 + 10 * e,
                    "medium": 20.0 + 10 * e, "few": 5.0 * e},
            "grad_ratio": (0.2 + 0.8 * np.log(counts) / np.log(counts.max())).tolist()} for e in (1, 2, 3)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))

    dest = report.build_report(run)
    names_png = {p.name for p in dest.glob("*.png")}
    assert names_png == {"per_class_accuracy.png", "groups.png", "confusion.png", "training_curves.png",
                         "eval_curves.png", "grad_ratio.png"}  # no test images: the config names no test split
    for n in names_png:
        _check_png(dest / n)
    page = (dest / "index.html").read_text()
    table = page.split("Most frequent confusions", 1)[1].split("</table>", 1)[0]
    first = table.split("<tbody><tr>", 1)[1].split("</tr>", 1)[0]
    assert first == f"<td>class {C - 1:03d}</td><td>class 003</td><td>{per_test}</td><td>100%</td>"
    assert "no test split" in page
