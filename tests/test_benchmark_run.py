"""``tinlt benchmark`` end to end on two tiny grids: the runs, the tables, the two figures and
the per-class accuracy averaged over seeds, each checked against the runs' own metrics.json
files read and averaged here.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

import tinlt.benchmark as bench
from conftest import split_args

PROTOCOL = """seeds: [0, 1]
overrides: [data.val.kind=holdout, data.val.fraction=0.4, train.best_checkpoint=last]
"""
GRID = """_base_: protocol.yaml
name: tiny benchmark
datasets:
  one: {base: base.yaml, title: first set}
  two: {base: base.yaml, title: second set, overrides: [data.image_size=32]}
cells:
  - {name: probe, kind: baseline, label: "linear probe",
     overrides: [model.head=linear, model.visual_attention=false, loss.name=ce]}
  - {name: small, kind: tin, label: "TIN small", overrides: [loss.name=seesaw]}
"""


@pytest.fixture(scope="module")
def grids(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    splits = dict(a.split("=", 1) for a in split_args("folder", dataset))
    (root / "base.yaml").write_text(
        "model: {name: tiny-vit}\n"
        f"data:\n  train: {{kind: folder, path: {splits['data.train.path']}}}\n"
        f"  test: {{kind: folder, path: {splits['data.test.path']}}}\n"
        "  image_size: 32\n  num_workers: 0\n  augment: none\n"
        "optim: {name: adamw, lr: 1.0e-3, batch_size: 4, epochs: 2}\n"
        "train: {eval_batch_size: 8, quiet: true, report: false}\n")
    (root / "protocol.yaml").write_text(PROTOCOL)
    (root / "grid.yaml").write_text(GRID)
    return root, str(root / "grid.yaml")


@pytest.fixture(scope="module")
def benchmark(grids, tmp_path_factory):
    root, grid = grids
    mp = pytest.MonkeyPatch()
    scatters: list[tuple[str, np.ndarray, np.ndarray]] = []
    from matplotlib.axes import Axes

    real = Axes.scatter

    def record(self, x, y, *a, **kw):
        scatters.append((kw.get("label", ""), np.asarray(x, dtype=float), np.asarray(y, dtype=float)))
        return real(self, x, y, *a, **kw)

    mp.setattr(Axes, "scatter", record)
    out = tmp_path_factory.mktemp("out")
    path = bench.run_benchmark(out, quiet=True, log=lambda m: None, grid=grid)
    mp.undo()
    return out, path, scatters


def _runs(out: Path, key: str, cell: str) -> list[dict]:
    return [json.loads((out / key / f"{cell}__seed{s}" / "metrics.json").read_text()) for s in (0, 1)]


def test_every_cell_runs_per_seed_and_the_page_names_the_choices(benchmark):
    out, path, _ = benchmark
    page = path.read_text()
    for key, title in (("one", "first set"), ("two", "second set")):
        assert f"## {title}" in page
        for cell in ("probe", "small"):
            for m in _runs(out, key, cell):
                assert m["overall"] is not None
    # the choices are made on the validation scores the runs logged, never on test
    assert page.count("- best tin row (by val): TIN small") == 2
    assert page.count("- best baseline row (by val): linear probe") == 2
    for name in ("one_per_class_best.png", "one_many_vs_few.png", "two_per_class_best.png", "two_many_vs_few.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in page


def test_each_row_is_the_mean_and_std_of_its_seeds(benchmark):
    out, path, _ = benchmark
    page = path.read_text()
    section = page.split("## first set", 1)[1].split("## second set", 1)[0]
    head = next(ln for ln in section.splitlines() if ln.startswith("| cell"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    row = next(ln for ln in section.splitlines() if ln.startswith("| linear probe"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    overall = [m["overall"] for m in _runs(out, "one", "probe")]
    assert cells[cols.index("overall")] == f"{statistics.mean(overall):.1f} ± {statistics.stdev(overall):.1f}"


def test_the_per_class_figure_averages_each_class_over_the_seeds(benchmark):
    out, _, scatters = benchmark
    assert len(scatters) == 4  # two rows on each data set's figure
    for label, cell, key in (("linear probe", "probe", "one"), ("TIN small", "small", "one")):
        runs = _runs(out, key, cell)
        per = [{c["name"]: c for c in m["per_class"]} for m in runs]
        names = [c["name"] for c in runs[0]["per_class"]]
        want_y = [statistics.mean(p[n]["accuracy"] for p in per) for n in names]
        want_x = [per[0][n]["train_count"] for n in names]
        got = next(s for s in scatters if s[0].startswith(label))
        assert "(2 seeds)" in got[0]
        np.testing.assert_allclose(got[1], want_x)
        np.testing.assert_allclose(got[2], want_y)
    # the seeds differ, so a figure of one seed alone would not match
    differ = [[c["accuracy"] for c in m["per_class"]] for cell in ("probe", "small") for m in _runs(out, "one", cell)]
    assert differ[0] != differ[1] or differ[2] != differ[3]


def test_a_second_call_reuses_every_run(benchmark, grids, monkeypatch):
    out, _, _ = benchmark
    _, grid = grids
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")}
    lines: list[str] = []
    bench.run_benchmark(out, quiet=True, log=lines.append, grid=grid)
    assert sum("reused" in ln for ln in lines) == 8
    assert {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")} == stamps


def test_the_grids_page_from_the_sweep_folder(benchmark, capsys):
    """`tinlt report SWEEP_DIR` draws the grid's page from its results.csv files alone."""
    from tinlt.cli import main

    out, _, _ = benchmark
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "report.md").read_text()
    assert "## one" in page and "## two" in page and "TIN small" in page
    overall = [m["overall"] for m in _runs(out, "one", "probe")]
    assert f"{statistics.mean(overall):.1f} ± {statistics.stdev(overall):.1f}" in page
    assert (out / "report" / "one_many_vs_few.png").is_file() and "index.html" in capsys.readouterr().out
