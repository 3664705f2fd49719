"""The benchmark protocol as shipped: every row the protocol names is in both grids, every
cell selects on a held-out split over three seeds, and the benchmark's choices (best TIN
row, strongest baseline) follow the validation score, never the test score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinlt.benchmark import GRID
from tinlt.report.sweep_page import pick
from tinlt.sweep import load_sweep, load_sweeps

DATASETS = ("fmnist_lt", "fmnist_clamp")

# (what the protocol asks for, how the cell says it)
ROWS = {
    "zero-shot prompts": lambda c: c.zeroshot,
    "linear probe, CE": lambda c: _probe(c) and c.cfg.loss.name == "ce" and not c.cfg.train.posthoc_tau_grid,
    "linear probe, logit-adjusted loss": lambda c: _probe(c) and c.cfg.loss.name == "logit_adjust",
    "linear probe, post-hoc LA (tau on val)": lambda c: _probe(c) and len(c.cfg.train.posthoc_tau_grid) > 1,
    "linear probe, class-balanced": lambda c: _probe(c) and c.cfg.loss.name == "cb_ce",
    "text-initialised cosine head, frozen, LA": lambda c: (c.cfg.model.head == "cosine" and c.cfg.model.classifier_init
                                                          == "text" and c.cfg.model.tune_image.method == "frozen"
                                                          and c.cfg.loss.name == "logit_adjust"),
    "full fine-tuning, CE": lambda c: _ft(c) and c.cfg.loss.name == "ce",
    "full fine-tuning, balanced softmax / LA": lambda c: _ft(c) and c.cfg.loss.name in ("balanced_softmax",
                                                                                         "logit_adjust"),
    "LIFT-style": lambda c: (c.cfg.model.head == "cosine" and c.cfg.model.tune_image.method not in ("", "full",
                                                                                                     "frozen")
                             and c.cfg.loss.name == "logit_adjust"),
    "TIN as specified": lambda c: (c.kind == "tin" and c.group == "tin_paper" and c.cfg.model.head == "text"
                                   and c.cfg.model.visual_attention and c.cfg.loss.name == "seesaw"
                                   and c.cfg.loss.p == pytest.approx(0.7)
                                   and c.cfg.model.tune_image.method in ("", "full")
                                   and c.cfg.model.tune_text.method in ("", "full") and not c.cfg.model.freeze_text),
    "TIN, best recipe": lambda c: (c.kind == "tin" and c.group == "tin_best" and c.cfg.model.head == "text"
                                   and c.cfg.loss.name == "seesaw"),
}


def _probe(c) -> bool:
    m = c.cfg.model
    return m.head == "linear" and m.tune_image.method == "frozen" and not m.visual_attention


def _ft(c) -> bool:
    m = c.cfg.model
    return m.head == "linear" and m.tune_image.method in ("", "full") and not m.freeze_image


@pytest.mark.parametrize("key", DATASETS)
def test_every_protocol_row_is_in_the_grid_with_three_seeds_and_a_held_out_split(key, tmp_path):
    sweep = load_sweep(GRID, out=tmp_path, dataset=key)
    assert sweep.out == (tmp_path / key).resolve()
    for row, matches in ROWS.items():
        cells = [c for c in sweep.cells if matches(c)]
        assert sorted({c.seed for c in cells}) == [0, 1, 2], f"{key}: row '{row}' missing or not over 3 seeds"
    for c in sweep.cells:
        assert c.cfg.data.val.kind == "holdout", c.name
        assert c.cfg.data.test.per_class_limit == 0 and c.cfg.data.test.lt_n_max == 0  # the full test set
    # every row says what it is, and only the TIN rows say tin
    assert {c.kind for c in sweep.cells} == {"tin", "baseline"}
    assert {c.group for c in sweep.cells if c.kind == "tin"} == {"tin_paper", "tin_best"}
    # same towers and data in every row
    assert {c.cfg.model.name for c in sweep.cells} == {"effnet-lite0-minilm"}
    assert len({json.dumps(list(c.cfg.data.train.counts)) + str(c.cfg.data.train.lt_n_max) for c in sweep.cells}) == 1


def test_choices_follow_the_validation_score_not_the_test_score():
    rows = []
    # tin_a is better on test, tin_b on val; base_a better on test, base_b on val
    # the kind says what a row is, not its name: "tin_b" is a baseline here
    for group, kind, val, test in (("tin_a", "tin", 70.0, 90.0), ("x_b", "tin", 80.0, 60.0),
                                   ("base_a", "baseline", 50.0, 95.0), ("base_b", "baseline", 60.0, 40.0),
                                   ("tin_b", "baseline", 55.0, 99.0)):
        for seed in range(3):
            rows.append({"cell": f"{group}__seed{seed}", "group": group, "kind": kind, "seed": seed,
                         "val_overall": val + seed, "overall": test, "label": group, "status": "done",
                         "run": str(Path("x"))})
    assert pick(rows, "tin")[0] == "x_b"
    assert pick(rows, "baseline")[0] == "base_b"
    # a row without a validation score is never chosen
    for r in rows:
        if r["group"] == "base_b":
            r["val_overall"] = None
    assert pick(rows, "baseline")[0] == "tin_b"


def test_compact_table_for_the_docs(tmp_path):
    import statistics

    from tinlt.sweep import format_markdown, results_rows

    sweep = load_sweep(GRID, out=tmp_path, dataset="fmnist_clamp")
    rows = results_rows(sweep)
    for i, r in enumerate(rows):
        r.update(overall=50.0 + i, many=90.0, few=10.0 + 2 * i, instance_acc=50.0, rare_precision=0.5,
                 rare_recall=0.25, rare_auc=0.75, val_overall=40.0 + i, wall_s=60.0, status="done")
    lines = format_markdown(sweep, rows, compact=True).splitlines()
    head = next(ln for ln in lines if ln.startswith("| cell"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert "overrides" not in cols and "run" not in cols and "medium" not in cols  # two classes: no medium
    assert {"overall", "many", "few", "rare P", "rare R", "AUC", "val (selection)"} <= set(cols)
    best = [r["overall"] for r in rows if r["group"] == "tin_best"]
    row = next(ln for ln in lines if ln.startswith("| TIN, best recipe"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[cols.index("overall")] == f"{statistics.mean(best):.1f} ± {statistics.stdev(best):.1f}"
    assert len(cells) == len(cols)
    assert cells[0].endswith(") (`tin_best`)") and cells[0].count("tin_best") == 1  # label, then its cell
    unlabelled = load_sweep("grids/modules", out=tmp_path / "m")
    assert "| +seesaw |" in format_markdown(unlabelled, results_rows(unlabelled), compact=True)


@pytest.mark.parametrize("variant", ["fmnist_lt", "fmnist_clamp"])
def test_the_demo_trains_two_benchmark_rows_at_seed_0(variant, tmp_path):
    from tinlt.config import to_dict
    from tinlt.demo import demo_cells

    tin, base = demo_cells(variant, out=str(tmp_path))
    assert tin.group == "tin_best" and tin.kind == "tin" and base.kind == "baseline" and tin.seed == base.seed == 0
    grid = {c.name: c for c in load_sweep(GRID, out=tmp_path / "b", dataset=variant).cells}
    for cell in (tin, base):
        assert cell.out == tmp_path / variant / cell.name
        ours, bench = to_dict(cell.cfg), to_dict(grid[cell.name].cfg)
        ours["train"].pop("output_dir"), bench["train"].pop("output_dir")
        assert ours == bench  # the same run as the benchmark's, only elsewhere
    assert [c.name for c in demo_cells(variant, baseline=False, out=str(tmp_path))] == ["tin_best__seed0"]


# the paper's ablation tables (6-9) and the benchmark row each one's reference cell must equal
ABLATIONS = {"modules": {"baseline_linear_ce": "ft_ce", "+visual_attention": "tin_paper"},
             "frozen_vs_finetuned": {"finetune_both": "tin_paper"},
             "pretrained_vs_random": {"both_pretrained": "tin_paper"},
             "seesaw_p": {"p=0.7": "tin_paper"}}


@pytest.mark.parametrize("grid", sorted(ABLATIONS))
def test_the_ablations_run_at_the_benchmark_budget(grid, tmp_path):
    """Every ablation cell uses the benchmark's protocol over 3 seeds, and the cells that are a
    benchmark row resolve to that row's config exactly (so a sweep folder seeded with the
    benchmark's runs reuses them, and the tables can be read side by side)."""
    bench = load_sweep(GRID, out=tmp_path / "bench", dataset="fmnist_lt")
    sweep = load_sweep(f"grids/{grid}", out=tmp_path / grid)
    ref = bench.cells[0].cfg
    for c in sweep.cells:
        d = c.cfg.data
        assert (d.val.kind, d.val.fraction, d.image_size) == ("holdout", ref.data.val.fraction, ref.data.image_size)
        assert (d.train.lt_n_max, d.test.per_class_limit) == (ref.data.train.lt_n_max, 0), c.name
        assert (c.cfg.optim.epochs, c.cfg.train.best_checkpoint) == (ref.optim.epochs, ref.train.best_checkpoint)
    assert sorted({c.seed for c in sweep.cells}) == [0, 1, 2]
    by_name = {c.name: c for c in bench.cells}
    for cell, row in ABLATIONS[grid].items():
        for seed in (0, 1, 2):
            mine = next(c for c in sweep.cells if c.name == f"{cell}__seed{seed}")
            theirs = by_name[f"{row}__seed{seed}"]
            theirs.run.write_config(theirs.cfg)
            assert theirs.run.same_config(mine.cfg), f"{grid}: {cell} seed {seed} differs from {row}"
            assert not theirs.run.same_config(by_name[f"tin_best__seed{seed}"].cfg)  # the check can fail


def test_the_protocol_is_written_once_and_the_grids_inherit_it(tmp_path):
    """Changing protocol.yaml changes every grid built on it: no grid repeats its overrides."""
    from tinlt.config import CONFIG_DIR

    grids = CONFIG_DIR / "grids"
    protocol = (grids / "protocol.yaml").read_text()
    for name in ("benchmark", "modules", "seesaw_p", "frozen_vs_finetuned", "pretrained_vs_random", "tin_search"):
        text = (grids / f"{name}.yaml").read_text()
        assert "_base_: protocol.yaml" in text and "data.val.kind=holdout" not in text, name
    # a copy of the grids with the protocol's fraction changed: every cell follows it
    copy = tmp_path / "grids"
    copy.mkdir()
    for p in grids.glob("*.yaml"):
        (copy / p.name).write_text(p.read_text())
    (copy / "protocol.yaml").write_text(protocol.replace("data.val.fraction=0.1", "data.val.fraction=0.3"))
    for sweep in load_sweeps(copy / "benchmark.yaml", out=tmp_path / "o") + \
            load_sweeps(copy / "modules.yaml", out=tmp_path / "m"):
        assert {c.cfg.data.val.fraction for c in sweep.cells} == {0.3}
