"""``tinlt mine``: ranking an unlabeled pool, collapsing near-duplicates, listing unreadable files.

Every number is re-derived here from the ``p_<class>`` columns and from imagehash directly;
the contact sheet is loaded in a real headless browser.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from tinlt.cli import main

pytest.importorskip("imagehash")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
COLOURS = {"sound_clamp": (200, 60, 60), "rusty_clamp": (60, 60, 200)}


def _img(colour, seed: int, size: int = 64) -> Image.Image:
    """The class colour plus a smooth pattern of its own per seed (distinct perceptual hashes)."""
    rng = np.random.default_rng(seed)
    small = np.clip(np.array(colour) + rng.integers(-60, 60, (6, 6, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    for split, counts in (("train", {"sound_clamp": 14, "rusty_clamp": 4}), ("test", {"sound_clamp": 3, "rusty_clamp": 3})):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                _img(COLOURS[cls], 1000 * (split == "test") + 100 * (cls == "rusty_clamp") + i).save(
                    root / split / cls / f"{i}.png")
    run = root / "run"
    assert main(["train", *TINY, "optim.batch_size=4",
                 "optim.epochs=2", "optim.lr=1e-3", "optim.name=adamw", "train.quiet=true", "train.report=false",
                 "data.train.kind=folder", f"data.train.path={root / 'train'}", "data.test.kind=folder",
                 f"data.test.path={root / 'test'}", f"train.output_dir={run}"]) == 0
    onnx = root / "model.onnx"
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(onnx)]) == 0
    return run, onnx


@pytest.fixture()
def pool(tmp_path) -> Path:
    p = tmp_path / "pool"
    (p / "flight_1").mkdir(parents=True)
    (p / "flight_2").mkdir()
    for i in range(20):
        _img(COLOURS["sound_clamp"], 500 + i).save(p / "flight_1" / f"s{i:02d}.png")
    for i in range(3):
        _img(COLOURS["rusty_clamp"], 600 + i).save(p / "flight_2" / f"r{i}.png")
    # the same rusty photo again, recompressed and resized: a near-duplicate
    _img(COLOURS["rusty_clamp"], 600).resize((96, 96), Image.BICUBIC).save(p / "flight_2" / "r0_again.jpg", quality=90)
    (p / "flight_2" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return p


def _ranked(out: Path) -> list[dict]:
    with open(out / "ranked.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_mine_ranks_by_the_rare_class_and_collapses_duplicates(model, pool, tmp_path, capsys):
    import imagehash

    _, onnx = model
    out = tmp_path / "out"
    assert main(["mine", str(pool), "--model", str(onnx), "--top", "5", "--out", str(out), "-q"]) == 0
    rows = _ranked(out)
    assert len(rows) == 24  # 25 files, one unreadable
    # the rare class is the one with fewer training images; the score is its probability, best first
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(float(r["score"]) == pytest.approx(float(r["p_rusty clamp"]), abs=1e-6) for r in rows)
    # the recompressed copy is collapsed onto the original (whichever ranks first), by an independent pHash
    a, b = pool / "flight_2" / "r0.png", pool / "flight_2" / "r0_again.jpg"
    assert imagehash.phash(Image.open(a).convert("RGB")) - imagehash.phash(Image.open(b).convert("RGB")) <= 4
    by_path = {r["path"]: r for r in rows}
    collapsed = [r for r in rows if r["duplicate_of"]]
    assert {r["path"] for r in collapsed} & {str(a), str(b)} and all(r["rank"] == "" for r in collapsed)
    pair = {str(a), str(b)}
    loser = next(r for r in collapsed if r["path"] in pair)
    assert loser["duplicate_of"] in pair - {loser["path"]} and by_path[loser["duplicate_of"]]["rank"] != ""
    kept = [r for r in rows if r["rank"]]
    assert [int(r["rank"]) for r in kept] == list(range(1, len(kept) + 1))
    # to_label.txt: the first five kept, in order
    assert (out / "to_label.txt").read_text().splitlines() == [r["path"] for r in kept[:5]]
    bad = list(csv.DictReader(open(out / "unreadable.csv")))
    assert [Path(r["path"]).name for r in bad] == ["corrupt.jpg"] and bad[0]["reason"]
    rec = json.loads((out / "mine.json").read_text())
    assert rec["class"] == "rusty clamp" and rec["unreadable"] == 1 and rec["collapsed"] == len(collapsed)
    assert "label these first" in capsys.readouterr().out


def test_mine_by_uncertainty_and_checkpoint_agrees_with_onnx(model, pool, tmp_path):
    run, onnx = model
    a, b = tmp_path / "onnx", tmp_path / "ckpt"
    assert main(["mine", str(pool), "--model", str(onnx), "--by", "margin", "--no-dedupe", "--out", str(a), "-q"]) == 0
    assert main(["mine", str(pool), "--checkpoint", str(run / "best.pt"), "--by", "margin", "--no-dedupe",
                 "--out", str(b), "-q"]) == 0
    ra, rb = _ranked(a), _ranked(b)
    for r in ra:  # margin: 1 - (top probability - second), from the probability columns
        p = sorted([float(r["p_rusty clamp"]), float(r["p_sound clamp"])], reverse=True)
        assert float(r["score"]) == pytest.approx(1 - (p[0] - p[1]), abs=2e-6)
    pa = {r["path"]: float(r["p_rusty clamp"]) for r in ra}
    pb = {r["path"]: float(r["p_rusty clamp"]) for r in rb}
    assert pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) < 1e-4 for k in pa)
    assert not any(r["duplicate_of"] for r in ra)  # --no-dedupe


def test_mine_bad_class_and_empty_pool_are_one_line(model, tmp_path, capsys):
    _, onnx = model
    (tmp_path / "empty").mkdir()
    assert main(["mine", str(tmp_path / "empty"), "--model", str(onnx), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    _img((0, 0, 0), 1).save(tmp_path / "p" / "x.png")
    assert main(["mine", str(tmp_path / "p"), "--model", str(onnx), "--class", "rusty", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinlt: error: --class 'rusty'") and "did you mean 'rusty clamp'" in err and "\n" not in err


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install chromium")
def test_contact_sheet_renders_in_a_headless_browser(model, pool, tmp_path):
    import re

    _, onnx = model
    out = tmp_path / "out"
    assert main(["mine", str(pool), "--model", str(onnx), "--top", "6", "--out", str(out), "-q"]) == 0
    page = (out / "contact_sheet.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    probe = out / "_probe.html"
    probe.write_text(page.replace("</body>", (
        "<script>window.addEventListener('load',()=>{const im=[...document.images];"
        "const ok=im.filter(i=>i.complete&&i.naturalWidth>0).length;"
        "document.body.setAttribute('data-probe',ok+'/'+im.length+':'+document.documentElement.scrollWidth);});"
        "</script></body>")))
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'u'}", "--window-size=1200,900", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90)
    found = re.search(r'data-probe="(\d+)/(\d+):(\d+)"', res.stdout)
    assert found, res.stderr[-1000:]
    ok, n, width = map(int, found.groups())
    assert ok == n == 6 and width <= 1200
    # each card names its file and score, as ranked.csv does
    kept = [r for r in _ranked(out) if r["rank"]][:6]
    for r in kept:
        assert Path(r["path"]).name in page and f"{float(r['score']):.4f}" in page


# --------------------------------------------------------------------------- each path, its own numbers


class ColourModel:
    """A stand-in backend whose answer is a closed form of the image: probabilities are the
    softmax of 4 x the image's mean R, G, B (0..1), over three classes. Nothing is learnt, so
    the expected numbers for every file can be computed here from its pixels alone."""

    classnames = ["common thing", "middle thing", "rare thing"]

    def __init__(self, path: Path, rule=None) -> None:
        self.path, self.rule = path, rule
        self.ckpt = {"train_counts": [50, 10, 3]}  # "rare thing" has the fewest training images

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) / 255.0

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return 4.0 * batch

    def probs(self, batch: np.ndarray) -> np.ndarray:
        z = self.logits(batch)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def card(self) -> dict:
        return {"kind": "stand-in", "train_counts": self.ckpt["train_counts"]}


def _expected_probs(path: Path) -> list[float]:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255.0
    e = [math.exp(4.0 * v) for v in rgb]
    return [v / sum(e) for v in e]


@pytest.fixture()
def colour_pool(tmp_path) -> tuple[Path, ColourModel]:
    """12 images whose colours (and so their probabilities) all differ, plus two near-copies of one."""
    p = tmp_path / "pool"
    p.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        _img(tuple(int(v) for v in rng.integers(40, 220, 3)), 700 + i).save(p / f"img{i:02d}.png")
    src = Image.open(p / "img05.png")
    src.resize((80, 80), Image.BICUBIC).save(p / "img05_copy.jpg", quality=92)
    src.resize((48, 48), Image.BICUBIC).save(p / "img05_small.png")
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"stand-in")
    return p, ColourModel(weights)


def _rows_by_path(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in _ranked(out)}


def test_each_path_gets_its_own_probabilities_and_its_most_likely_class(colour_pool, tmp_path):
    from tinlt.deploy.mine import mine

    pool, model = colour_pool
    rec = mine(pool, model, tmp_path / "out", by="prob", dedupe=False, top=5, quiet=True)
    rows = _rows_by_path(tmp_path / "out")
    assert len(rows) == 14 and rec["class"] == "rare thing"  # no --class: the class with fewest training images
    for path, r in rows.items():
        want = _expected_probs(Path(path))
        got = [float(r[f"p_{n}"]) for n in model.classnames]
        assert got == pytest.approx(want, abs=2e-6), path
        assert r["predicted"] == model.classnames[int(np.argmax(want))], path
        assert float(r["score"]) == pytest.approx(want[2], abs=2e-6)
    ranked = [r["path"] for r in _ranked(tmp_path / "out")]
    assert ranked == sorted(rows, key=lambda q: -_expected_probs(Path(q))[2])
    assert len({r["predicted"] for r in rows.values()}) >= 2  # the data lets a wrong class show


def test_entropy_and_margin_rank_by_uncertainty_computed_from_the_pixels(colour_pool, tmp_path):
    from tinlt.deploy.mine import mine

    pool, model = colour_pool
    for by in ("entropy", "margin"):
        out = tmp_path / by
        mine(pool, model, out, by=by, dedupe=False, quiet=True)
        rows = _ranked(out)
        for r in rows:
            p = _expected_probs(Path(r["path"]))
            want = -sum(v * math.log(v) for v in p) if by == "entropy" else 1 - (sorted(p)[-1] - sorted(p)[-2])
            assert float(r["score"]) == pytest.approx(want, abs=2e-6), (by, r["path"])
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_the_class_mined_follows_class_then_threshold_then_counts(colour_pool, tmp_path):
    from types import SimpleNamespace

    from tinlt.deploy.mine import mine

    pool, model = colour_pool
    assert mine(pool, model, tmp_path / "a", cls="middle thing", dedupe=False, quiet=True)["class"] == "middle thing"
    assert float(_ranked(tmp_path / "a")[0]["score"]) == pytest.approx(
        max(_expected_probs(q)[1] for q in pool.iterdir()), abs=2e-6)
    model.rule = SimpleNamespace(positive=0, positive_name="common thing", value=0.4)  # a calibrated threshold
    assert mine(pool, model, tmp_path / "b", dedupe=False, quiet=True)["class"] == "common thing"


def test_near_duplicates_collapse_onto_the_best_ranked_and_are_counted(colour_pool, tmp_path):
    import imagehash

    from tinlt.deploy.mine import mine

    pool, model = colour_pool
    out = tmp_path / "out"
    rec = mine(pool, model, out, by="prob", top=20, quiet=True)
    copies = [pool / "img05.png", pool / "img05_copy.jpg", pool / "img05_small.png"]
    hashes = {str(q): imagehash.phash(Image.open(q).convert("RGB")) for q in pool.iterdir()}
    # independently: which files lie within 4 bits of another
    near = {a for a in hashes for b in hashes if a != b and hashes[a] - hashes[b] <= 4}
    assert near == {str(q) for q in copies}
    rows = _rows_by_path(out)
    keeper = max(copies, key=lambda q: _expected_probs(q)[2])  # the best-ranked of the three stays
    assert rows[str(keeper)]["rank"] != "" and rows[str(keeper)]["duplicate_of"] == ""
    for q in copies:
        if q != keeper:
            assert rows[str(q)]["rank"] == "" and rows[str(q)]["duplicate_of"] == str(keeper)
    assert rec["collapsed"] == 2 and rec["scored"] == 14
    kept = [r for r in _ranked(out) if r["rank"]]
    assert len(kept) == 12 and (out / "to_label.txt").read_text().splitlines() == [r["path"] for r in kept]
    # the contact sheet counts the keeper's near-duplicates, and nobody else's
    page = (out / "contact_sheet.html").read_text()
    assert page.count("near-duplicate(s)") == 1 and "+2 near-duplicate(s)" in page
    card = next(f for f in page.split("<figure>")[1:] if f"{keeper.name}<br>" in f.split("<figcaption>")[1])
    assert f"#{rows[str(keeper)]['rank']}</b>" in card and "+2 near-duplicate(s)" in card


def test_hostile_names_stay_one_line_and_links_out_of_the_pool_are_not_read(tmp_path):
    """A folder name with a newline, a file name with a terminal escape, a formula and bytes that
    are not UTF-8: to_label.txt keeps one line per chosen image, CSV cells are never formulas, and
    a file link that leads out of the pool is listed as not read, never scored or shown."""
    import csv as csv_mod
    import os

    from tinlt.deploy.mine import mine

    pool = tmp_path / "pool"
    (pool / "evil\nrm -rf").mkdir(parents=True)
    _img((200, 40, 40), 1).save(pool / "evil\nrm -rf" / "a.png")
    _img((40, 200, 40), 2).save(pool / "\x1b[2Jclear.png")
    _img((40, 40, 200), 3).save(pool / "=HYPERLINK(1).png")
    raw = os.fsencode(str(pool)) + b"/caf\xe9.png"  # latin-1, not UTF-8
    _img((120, 120, 120), 4).save(os.fsdecode(raw))
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    _img((10, 220, 220), 5).save(secret)
    (pool / "link.png").symlink_to(secret)
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"stand-in")

    rec = mine(pool, ColourModel(weights), tmp_path / "out", by="prob", dedupe=False, top=10, quiet=True)
    assert rec["images"] == 5 and rec["scored"] == 4 and rec["unreadable"] == 1
    lines = (tmp_path / "out" / "to_label.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and not any("\x1b" in line for line in lines)
    assert any(line.endswith("evil\\nrm -rf/a.png") for line in lines) and any(line.endswith("caf\\xe9.png") for line in lines)
    rows = list(csv_mod.DictReader(open(tmp_path / "out" / "ranked.csv", newline="", encoding="utf-8")))
    assert len(rows) == 4 and "secret" not in (tmp_path / "out" / "ranked.csv").read_text()
    for r in rows:  # a path never starts a formula, never carries a raw control character
        assert r["path"][0] not in "=+-@\t\r" and r["path"].isprintable()
    bad = list(csv_mod.DictReader(open(tmp_path / "out" / "unreadable.csv", newline="")))
    assert [b["path"] for b in bad] == [str(pool / "link.png")] and "outside the pool" in bad[0]["reason"]
    sheet = (tmp_path / "out" / "contact_sheet.html").read_text()
    assert "secret" not in sheet and sheet.count("<figure>") == 4
