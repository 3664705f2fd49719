"""A grid's page (``tinlt report SWEEP_DIR``; the benchmark's figures): read from the sweep
folder's ``results.csv`` (one per data set) and the run folders it names, nothing else.

Per data set: the table (each row's mean ± std over its seeds, or the single run's number
when only one seed ran), the trade-off between many- and few-shot accuracy across rows,
and per-class test accuracy against training images for the best row of each ``kind`` (e.g.
TIN and the strongest baseline), picked by their mean **validation** score: the test
columns play no part in any choice.
"""

from __future__ import annotations

import csv
import html
import json
import statistics
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import fileio
from ..engine.run_folder import METRICS
from ..errors import TinltError
from ..plots import figure, save_figure, style
from ..tables import mean_std

RESULTS = "results.csv"
NUMBERS = ("overall", "many", "medium", "few", "instance_acc", "rare_precision", "rare_recall", "rare_auc",
           "val_overall", "wall_s")
KIND_COLOURS = {"tin": "#1f77b4", "baseline": "#7f7f7f"}
DONE = ("done", "reused")


def read_rows(path: Path) -> list[dict]:
    """``results.csv``'s rows with numbers as floats (None where empty)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise TinltError(f"{path}: cannot read ({e.strerror})") from None
    for r in rows:
        for k in NUMBERS:
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        r["seed"] = int(r["seed"]) if r.get("seed") not in (None, "") else None
    return rows


def grouped(rows: Sequence[dict]) -> list[tuple[str, list[dict]]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("group") or r["cell"], []).append(r)
    return list(out.items())


def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def pick(rows: Sequence[dict], kind: str) -> Optional[tuple[str, list[dict]]]:
    """The group of ``kind`` with the best mean validation score; None if none has one."""
    scored = [(g, rs) for g, rs in grouped(rows) if rs[0].get("kind") == kind
              and _mean(r["val_overall"] for r in rs) is not None]
    return max(scored, key=lambda gr: _mean(r["val_overall"] for r in gr[1])) if scored else None


def per_class(runs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train counts, mean test accuracy per class over the runs, class names)."""
    per = [json.loads((Path(r["run"]) / METRICS).read_text())["per_class"] for r in runs]
    counts = np.array([c["train_count"] for c in per[0]], dtype=float)
    acc = np.array([[c["accuracy"] if c["accuracy"] is not None else np.nan for c in p] for p in per]).mean(0)
    return counts, acc, [c["name"] for c in per[0]]


def sweep_figures(rows: Sequence[dict], out: Path, title: str, prefix: str, two_classes: bool = False) -> list[str]:
    """The data set's figures (see the module doc) into ``out``; their file names."""
    written = []
    best = [(kind, pick(rows, kind)) for kind in sorted({r.get("kind") for r in rows if r.get("kind")})]
    best = [(k, b) for k, b in best if b is not None]
    if best:
        with style():
            fig = figure(6.4, 4.0)
        ax = fig.subplots()
        for kind, (group, rs) in best:
            done = [r for r in rs if r["status"] in DONE]
            if not done:
                continue
            colour = KIND_COLOURS.get(kind, "#2ca02c")
            counts, acc, names = per_class(done)
            ax.scatter(counts, acc, color=colour, label=f"{rs[0]['label']} ({len(done)} seeds)", zorder=3)
            for x, y, n in zip(counts, acc, names):
                ax.annotate(n, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points", color=colour)
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log)")
        ax.set_ylabel("test accuracy of the class (%), mean over seeds")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{title}: best row of each kind (chosen on val)", fontsize=9)
        name = f"{prefix}per_class_best.png"
        save_figure(fig, out / name)
        written.append(name)
    with style():
        fig = figure(6.4, 4.4)
    ax = fig.subplots()
    for group, rs in grouped(rows):
        many = [r["many"] for r in rs if r["many"] is not None]
        few = [r["few"] for r in rs if r["few"] is not None]
        if not many or not few:
            continue
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.errorbar(statistics.mean(many), statistics.mean(few), xerr=sd(many), yerr=sd(few), fmt="o",
                    color=KIND_COLOURS.get(rs[0].get("kind"), "#2ca02c"), capsize=2)
        # the cell's short name: the long labels overlap where rows cluster (the table maps names to rows)
        ax.annotate(group, (statistics.mean(many), statistics.mean(few)), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("common-class accuracy (%)" if two_classes else "many-shot accuracy (%)")
    ax.set_ylabel("rare-class accuracy (%)" if two_classes else "few-shot accuracy (%)")
    ax.set_title(f"{title}: many vs few per row\n(TIN in blue; mean ± std over seeds; names as in the grid)",
                 fontsize=9)
    name = f"{prefix}many_vs_few.png"
    save_figure(fig, out / name)
    return written + [name]


def table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the data set's table: one row per cell over its seeds."""
    two = any(r.get("rare_recall") is not None for r in rows)
    keys = ["overall", "many", "medium", "few", *(["rare_recall", "rare_auc"] if two else []), "val_overall"]
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    names = {"rare_recall": "rare R", "rare_auc": "AUC", "val_overall": "val (selection)"}
    head = ["row", "kind", *(names.get(k, k) for k in keys), "runs"]
    body = []
    for group, rs in grouped(rows):
        done = [r for r in rs if r["status"] in DONE]
        body.append([rs[0].get("label") or group, rs[0].get("kind") or "-",
                     *(mean_std([r[k] for r in done], 2 if k.startswith("rare_") else 1) for k in keys),
                     f"{len(done)} of {len(rs)}"])
    return head, body


def _sweep_folders(folder: Path) -> list[Path]:
    if (folder / RESULTS).is_file():
        return [folder]
    found = sorted(p.parent for p in folder.glob(f"*/{RESULTS}"))
    if not found:
        raise TinltError(f"{folder}: no {RESULTS} here or one level down (not a tinlt sweep folder)")
    return found


def build_sweep_report(folder: str | Path, out: Optional[str | Path] = None, title: Optional[str] = None) -> Path:
    """``report/`` for a sweep folder (one data set, or one sub-folder per data set):
    ``index.html`` and ``report.md`` with each data set's table and figures."""
    folder = Path(folder)
    dest = Path(out) if out else folder / "report"
    dest.mkdir(parents=True, exist_ok=True)
    md, body = [f"# {title or folder.name}", ""], []
    for sub in _sweep_folders(folder):
        rows = read_rows(sub / RESULTS)
        name = sub.name
        two = any(r.get("rare_recall") is not None for r in rows)
        figs = sweep_figures(rows, dest, name, f"{name}_" if sub != folder else "", two_classes=two)
        head, tab = table(rows)
        seeds = sorted({r["seed"] for r in rows if r["seed"] is not None and r["status"] in DONE})
        note = ("single runs (one seed)" if len(seeds) == 1 else f"mean ± std over seeds {seeds}" if seeds
                else "no finished runs yet")
        md += [f"## {name}", "", f"Mean per-class accuracy (%), {note}; choices by the validation column only.", "",
               "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
               *("| " + " | ".join(row) + " |" for row in tab), "", *(f"![{f}]({f})" for f in figs), ""]
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in tab)
        body.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(note)}</p><table><tr>"
                    + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"
                    + "".join(f'<img src="{html.escape(f)}" alt="{html.escape(f)}">' for f in figs))
    fileio.write_text(dest / "report.md", "\n".join(md) + "\n")
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title or folder.name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:48%}</style>"
            f"</head><body><h1>{html.escape(title or folder.name)}</h1>{''.join(body)}</body></html>")
    return fileio.write_text(dest / "index.html", page).parent
