"""A sweep's results: one row per cell read from its run folder, ``results.md`` (mean ± std
over a cell's seeds) and ``results.csv`` (each seed's numbers)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Optional

from .. import fileio
from ..engine.run_folder import RunFolder
from ..names import csv_cell
from ..tables import mean_std
from .grid import Sweep

METRIC_KEYS = ("overall", "many", "medium", "few", "instance_acc")
BINARY_KEYS = ("precision", "recall", "auc")  # of the rare class, two-class runs
CELL_FILE = "sweep.json"


def results_rows(sweep: Sweep, states: Optional[dict] = None) -> list[dict]:
    rows = []
    for cell in sweep.cells:
        folder = cell.out
        metrics = cell.run.read_metrics() if cell.run.same_config(cell.cfg) else None
        info = cell.run.read_json(CELL_FILE) or {}
        state = (states or {}).get(cell.name)
        if state is None:  # just reading the folder
            status = "done" if metrics is not None else "pending"
        else:  # done/resume/run: the state found before running; ran/failed/interrupted: what happened now
            status = {"done": "reused", "ran": "done", "resume": "pending", "run": "pending"}.get(state, state)
        if status == "pending":
            metrics = None
        row = {"cell": cell.name, "group": cell.group, "label": cell.label, "kind": cell.kind, "seed": cell.seed,
               "overrides": " ".join(cell.overrides)}
        for k in METRIC_KEYS:
            row[k] = metrics.get(k) if metrics else None
        binary = (metrics or {}).get("binary") or {}
        for k in BINARY_KEYS:
            row[f"rare_{k}"] = binary.get(k)
        row["val_overall"] = val_score(cell.run, metrics) if metrics else None
        row["wall_s"] = info.get("wall_s") if status != "pending" else None
        row["status"] = status
        row["run"] = str(folder)
        rows.append(row)
    return rows


def val_score(run: RunFolder, metrics: dict) -> Optional[float]:
    """The validation score a run was selected by (what recipe choices may look at): the chosen
    post-hoc tau's, else the best epoch's on data.val; None when the run had no validation split."""
    chosen = metrics.get("selection")
    if chosen:
        return chosen["val_overall_by_tau"][str(chosen["posthoc_tau"])]
    scores = [r["val"]["overall"] for r in run.read_log() if r.get("best") and isinstance(r.get("val"), dict)]
    return scores[-1] if scores else None


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _wall(v) -> str:
    if v is None:
        return "-"
    m, s = divmod(int(round(v)), 60)
    return f"{m}m{s:02d}s"


def grouped(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows by cell group (a cell over its seeds), in file order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("group") or r["cell"], []).append(r)
    return list(out.items())


def format_markdown(sweep: Sweep, rows: list[dict], compact: bool = False) -> str:
    """results.md; ``compact`` leaves out the overrides and run columns (the grid file holds them)
    and any metric no row has (e.g. "medium" with two classes), for tables in docs."""
    binary = any(r.get("rare_recall") is not None for r in rows)
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    keys = list(METRIC_KEYS) + ([f"rare_{k}" for k in BINARY_KEYS] if binary else [])
    if any(r.get("val_overall") is not None for r in rows):
        keys.append("val_overall")
    if compact:
        keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    names = {"instance_acc": "instance", "rare_precision": "rare P", "rare_recall": "rare R", "rare_auc": "AUC",
             "val_overall": "val (selection)"}
    head = ["cell", *([] if compact else ["overrides"]), *(names.get(k, k) for k in keys),
            "wall" + (" (per seed)" if seeds else ""), "status", *([] if compact else ["run"])]
    lines = [
        f"# Sweep: {sweep.name}",
        "",
        f"- grid: `{sweep.path}`",
        f"- base config: `{sweep.base}`",
        f"- overrides for every cell: `{' '.join(sweep.overrides) or '(none)'}`",
        f"- output: `{sweep.out}`",
        "- accuracies in %: overall = mean per-class accuracy (balanced), instance = plain accuracy"
        + ("; rare P / R / AUC: the rare class's precision, recall and ROC-AUC (fractions)" if binary else "")
        + "; val (selection): the held-out validation score choices were made on (test columns: scored once)",
    ]
    scored = sorted({r["seed"] for r in rows if r.get("seed") is not None and r.get("overall") is not None})
    pending = [k for k in seeds if k not in scored]
    if len(scored) > 1:
        lines.append(f"- each cell over seeds {scored}: mean ± std (sample std); each seed's numbers in results.csv"
                     + (f"; seeds {pending} not run yet" if pending else ""))
    elif scored:
        lines.append(f"- one seed ({scored[0]}) so far: single runs, no spread"
                     + (f"; seeds {pending} not run yet" if pending else ""))
    lines += ["", "| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] * (1 if compact else 2) + ["---:"] * (len(keys) + 1)
                             + ["---"] * (1 if compact else 2)) + "|"]
    for group, rs in grouped(rows):
        first = rs[0]
        own = " ".join(o for o in first["overrides"].split() if not o.startswith("train.seed="))
        run = Path(first["run"])
        rel = run.relative_to(sweep.out) if run.is_relative_to(sweep.out) else run
        walls = [r["wall_s"] for r in rs if r["wall_s"] is not None]
        cells = [
            (f"{first['label']} (`{group}`)" if compact and first.get("label") not in (None, group)
             else first.get("label") or group),
            *([] if compact else [f"`{own}`" if own else "(base)"]),
            *(mean_std([r[k] for r in rs], digits=2 if k.startswith("rare_") else 1) for k in keys),
            _wall(statistics.mean(walls)) if walls else "-",
            _status(rs).replace("|", "/"),
            *([] if compact else [f"{rel}/" if len(rs) == 1 else f"{group}__seed*/"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _status(rows: list[dict]) -> str:
    """A cell's status, or over a group's seeds ``3 done`` / ``2 done, 1 pending``."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return rows[0]["status"] if len(rows) == 1 else ", ".join(f"{n} {st}" for st, n in counts.items())


def write_results(sweep: Sweep, rows: list[dict]) -> tuple[Path, Path]:
    import io

    sweep.out.mkdir(parents=True, exist_ok=True)
    md = fileio.write_text(sweep.out / "results.md", format_markdown(sweep, rows))
    fields = ["cell", "group", "label", "kind", "seed", "overrides", *METRIC_KEYS, *(f"rare_{k}" for k in BINARY_KEYS),
              "val_overall", "wall_s", "status", "run"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_cell("" if r.get(k) is None else r[k]) for k in fields})
    return md, fileio.write_text(sweep.out / "results.csv", buf.getvalue())
