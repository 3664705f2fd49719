"""The report page of one run: ``report/index.html`` (stand-alone, figures inline) and
``report.md``, with the headline numbers, the operating points, the most confident
mistakes and what could not be shown; :func:`build_report` is ``tinlt report RUN_DIR``."""

from __future__ import annotations

import csv
import datetime as _dt
import html
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import TinltError
from .. import fileio
from ..engine.run_folder import PREDICTIONS, REPORT_DIR
from ..plots import save_figure
from ..engine.run_folder import METRICS
from .binary import operating_point
from .figures import CAPTIONS, FIGURE_FILES, FIGURES, pct, run_figures
from .samples import rebuild_test_split, thumbnail
from .view import RunView, load_run


def _headline_rows(m: dict) -> list[tuple[str, str]]:
    sizes = m.get("group_sizes") or {}
    rows = [("overall", pct(m.get("overall"), 2)), ("many", pct(m.get("many"), 2)),
            ("medium", pct(m.get("medium"), 2)), ("few", pct(m.get("few"), 2)),
            ("instance", pct(m.get("instance_acc"), 2))]
    labels = []
    for name, v in rows:
        n = sizes.get(name)
        labels.append((f"{name} ({n})" if n is not None else name, v))
    return labels


def _binary_rows(m: dict) -> list[tuple[str, str]]:
    b = m.get("binary")
    if not isinstance(b, dict):
        return []

    def f(v):
        return "\u2013" if v is None else f"{v:.3f}"

    return [("rare class", str(b.get("positive_name"))), ("precision", f(b.get("precision"))),
            ("recall", f(b.get("recall"))), ("F1", f(b.get("f1"))), ("ROC-AUC", f(b.get("auc")))]


def operating_rows(rf: RunView) -> list[list[str]]:
    """Rows (decision rule, precision, recall with its 95% interval, false-positive rate,
    expected precision at the training prevalence) for argmax and the calibrated threshold."""
    def f(v):
        return "\u2013" if v is None else f"{v:.3f}"

    def row(label, b):
        ci = b.get("recall_ci95")
        rec = f(b.get("recall")) + (f" ({ci[0]:.2f}\u2013{ci[1]:.2f})" if ci else "")
        return [label, f(b.get("precision")), rec, f(b.get("fpr")), f(b.get("precision_at_train_prevalence"))]

    op = operating_point(rf)
    source = op if op else rf.metrics
    rows = [row("argmax", source["binary"])] if isinstance(source.get("binary"), dict) else []
    if op:
        rows.insert(0, row(f"threshold {op['at_threshold']['threshold']:.4g} (calibrated)", op["at_threshold"]["binary"]))
    return rows


OPERATING_HEAD = ["decision", "precision", "recall (95% CI)", "false-positive rate", "precision at training prevalence"]


def mistakes(rf: RunView, k: int = 12) -> list[dict]:
    """The ``k`` test images the model was surest about and wrong on (predictions.csv)."""

    path = rf.path / PREDICTIONS
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    wrong = []
    for r in rows:
        if r.get("correct") == "1":
            continue
        p_pred = float(r.get(f"p_{r['predicted']}", r.get("confidence", "nan")) or "nan")
        p_true = r.get(f"p_{r['true']}")
        wrong.append({**r, "p_pred": p_pred, "p_true": float(p_true) if p_true not in (None, "") else None})
    return sorted(wrong, key=lambda r: -r["p_pred"])[:k]


def _thumb_uri(rf: RunView, item: dict, samples) -> str:
    """A small inline PNG of a mistake's image ("" when it cannot be read)."""
    import base64
    import io

    from PIL import Image

    try:
        if "#" in item["path"] and samples is not None:
            arr = thumbnail(samples, int(item["index"]), size=96)
        else:
            from ..data.images import open_image

            img = open_image(item["path"], draft_size=96).convert("RGB")
            img.thumbnail((96, 96))
            arr = np.asarray(img)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a moved file leaves the thumbnail out, not the report
        return ""


def _summary_line(rf: RunView) -> list[tuple[str, str]]:
    cfg = rf.config
    items = [("folder", str(rf.path.resolve()))]
    if cfg is not None:
        items += [("model", str(cfg.model.name)), ("head", str(cfg.model.head)), ("loss", str(cfg.loss.name)),
                  ("epochs", str(cfg.optim.epochs))]
    items.append(("classes", str(len(rf.per_class))))
    items.append(("test images", str(rf.metrics.get("num_samples", "?"))))
    if rf.run.get("train_images") is not None:
        items.append(("training images", str(rf.run["train_images"])))
    if rf.metrics.get("train_time_s") is not None:
        items.append(("training time", f"{rf.metrics['train_time_s'] / 60:.1f} min"))
    if rf.run.get("device"):
        items.append(("device", f"{rf.run['device']} x{rf.run.get('world_size', 1)}"))
    return items


def _confusion_rows(rf: RunView, k: int = 10) -> list[tuple[str, str, int, str]]:
    from ..metrics import top_confusions

    test_counts = {str(r["name"]): int(r["test_count"]) for r in rf.per_class}
    rows = []
    for true, predicted, n in top_confusions(rf.metrics["confusion"], rf.classnames, k=k):
        share = f"{100 * n / test_counts[true]:.0f}%" if test_counts.get(true) else "\u2013"
        rows.append((true, predicted, n, share))
    return rows


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.2em;color:#222;line-height:1.45;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;
padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.3em .8em;border-bottom:1px solid #e4e4e4;
text-align:left}
th{background:#f5f5f5}table.headline td,table.headline th{text-align:center;font-size:1.1em}
table.headline td:first-child{font-weight:bold}.meta{color:#555;font-size:.92em}
.meta span{margin-right:1.2em;white-space:nowrap}figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em;
max-width:900px}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em;border:1px solid #e4e4e4}
.notes li{color:#8a5a00}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta span{display:inline-block;max-width:100%;overflow-wrap:anywhere}
table{display:block;max-width:100%;overflow-x:auto}td.file{overflow-wrap:anywhere;max-width:420px}
"""


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _versions(rf: RunView) -> list[tuple[str, str]]:
    v = rf.run.get("versions")
    return [(str(k), str(x)) for k, x in v.items()] if isinstance(v, dict) else []


def _command(rf: RunView) -> str:
    cmd = rf.run.get("command")
    if isinstance(cmd, list):
        import shlex

        return " ".join(shlex.quote(str(c)) for c in cmd)
    return str(cmd) if cmd else ""


def _write_html(rf: RunView, out: Path, figures: list[tuple[str, str]], notes: list) -> Path:
    e = html.escape
    m = rf.metrics
    head = _headline_rows(m)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>tinlt report: {e(rf.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>tinlt report: {e(rf.name)}</h1>",
        '<p class="meta">' + "".join(f"<span><b>{e(k)}</b> {e(v)}</span>" for k, v in _summary_line(rf)) + "</p>",
        "<p>Mean per-class accuracy (%) on the test split; group sizes (classes) in brackets.</p>",
        table_html([h for h, _ in head], [[v for _, v in head]], "headline"),
    ]
    binary = _binary_rows(m)
    if binary:
        parts.append(table_html([h for h, _ in binary], [[v for _, v in binary]], "headline"))
        parts.append("<h2>Operating point</h2>")
        parts.append(table_html(OPERATING_HEAD, operating_rows(rf)))
        if operating_point(rf) is None:
            parts.append("<p class=\"meta\">No calibrated threshold evaluated for this run: tinlt calibrate, then "
                         "tinlt eval --checkpoint RUN/eval/calibrated.pt. Precision depends on how common the rare "
                         "class is: the last column is what the same recall and false-positive rate give at the "
                         "training split's share.</p>")
    wrong = mistakes(rf)
    if wrong:
        samples = rebuild_test_split(rf, []) if any("#" in w["path"] for w in wrong) else None
        parts.append("<h2>Most confident mistakes</h2><table class=\"mistakes\"><tr><th></th><th>file</th>"
                     "<th>true</th><th>predicted</th><th>P(predicted)</th><th>P(true)</th></tr>")
        for w in wrong:
            uri = _thumb_uri(rf, w, samples)
            img = f'<img src="{uri}" alt="" width="64">' if uri else ""
            pt = "\u2013" if w["p_true"] is None else f"{w['p_true']:.3f}"
            parts.append(f"<tr><td>{img}</td><td class=\"file\">{e(w['path'])}</td><td>{e(w['true'])}</td>"
                         f"<td>{e(w['predicted'])}</td><td>{w['p_pred']:.3f}</td><td>{pt}</td></tr>")
        parts.append("</table>")
    for fname, title in figures:
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(f'<figure><img src="{e(fname)}" alt="{e(title)}"><figcaption>{e(CAPTIONS.get(fname, ""))}'
                     f"</figcaption></figure>")
        if fname == "confusion.png":
            rows = _confusion_rows(rf)
            if rows:
                parts.append("<h3>Most frequent confusions</h3>")
                parts.append(table_html(["true class", "predicted as", "images", "share of true class"], rows))
    if notes:
        parts.append("<h2>Not shown</h2><ul class=\"notes\">" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{e(rf.config_text)}</pre>" if rf.config_text else "<p>No config.yaml in this folder.</p>")
    vers = _versions(rf)
    if vers:
        parts.append("<h2>Versions</h2>" + table_html(["package", "version"], vers))
    cmd = _command(rf)
    if cmd:
        parts.append(f"<h2>Command</h2><pre>{e(cmd)}</pre>")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f'<p class="meta">Written by tinlt report on {stamp}.</p></body></html>')
    return fileio.write_text(out / "index.html", "\n".join(parts))


def _write_markdown(rf: RunView, out: Path, figures: list[tuple[str, str]], notes: list) -> Path:
    m = rf.metrics
    head = _headline_rows(m)
    lines = [f"# tinlt report: {rf.name}", "", " | ".join(f"**{k}** {v}" for k, v in _summary_line(rf)), "",
             "Mean per-class accuracy (%) on the test split; group sizes (classes) in brackets.", "",
             table_md([h for h, _ in head], [[v for _, v in head]]), ""]
    binary = _binary_rows(m)
    if binary:
        lines += [table_md([h for h, _ in binary], [[v for _, v in binary]]), "", "## Operating point", "",
                  table_md(OPERATING_HEAD, operating_rows(rf)), ""]
    wrong = mistakes(rf)
    if wrong:
        lines += ["## Most confident mistakes", "",
                  table_md(["file", "true", "predicted", "P(predicted)"],
                            [[w["path"], w["true"], w["predicted"], f"{w['p_pred']:.3f}"] for w in wrong]), ""]
    for fname, title in figures:
        lines += [f"## {title}", "", f"![{title}]({fname})", "", CAPTIONS.get(fname, ""), ""]
        if fname == "confusion.png":
            rows = _confusion_rows(rf)
            if rows:
                lines += ["### Most frequent confusions", "",
                          table_md(["true class", "predicted as", "images", "share of true class"], rows), ""]
    if notes:
        lines += ["## Not shown", ""] + [f"- {n}" for n in notes] + [""]
    if rf.config_text:
        lines += ["## Configuration", "", "```yaml", rf.config_text.rstrip(), "```", ""]
    vers = _versions(rf)
    if vers:
        lines += ["## Versions", "", table_md(["package", "version"], vers), ""]
    cmd = _command(rf)
    if cmd:
        lines += ["## Command", "", "```", cmd, "```", ""]
    return fileio.write_text(out / "report.md", "\n".join(lines))


def build_report(run_dir: str | os.PathLike, out: Optional[str | os.PathLike] = None) -> Path:
    """Write figures, ``index.html`` and ``report.md`` for a run folder; returns the report folder.

    ``out`` defaults to ``RUN_DIR/report``. Raises TinltError only when the folder has no
    usable ``metrics.json``; anything else missing leaves out a figure, with a note on the page.
    """
    rf = load_run(run_dir)
    dest = Path(out) if out is not None else rf.path / REPORT_DIR
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinltError(f"{dest}: cannot create the report folder ({e.strerror})") from None
    for stale in FIGURE_FILES:
        (dest / stale).unlink(missing_ok=True)
    notes = list(rf.notes)
    figs = run_figures(rf, notes)
    written: list[tuple[str, str]] = []
    titles = {f: t for f, t, _ in FIGURES}
    for fname, fig in figs.items():
        try:
            save_figure(fig, dest / fname)
            written.append((fname, titles[fname]))
        except Exception as e:
            notes.append(f"{titles[fname]}: could not be saved ({type(e).__name__}: {e})")
    _write_html(rf, dest, written, notes)
    _write_markdown(rf, dest, written, notes)
    return dest


def refresh_report(run_dir: str | os.PathLike, *, quiet: bool = False) -> Optional[Path]:
    """Rebuild a run's existing report (e.g. after ``tinlt calibrate``); None when it has none."""
    from ..engine.progress import echo

    run_dir = Path(run_dir)
    if not ((run_dir / REPORT_DIR).is_dir() and (run_dir / METRICS).is_file()):
        return None
    try:
        return build_report(run_dir)
    except TinltError as e:
        echo(f"report not refreshed ({e})", quiet=quiet)
        return None
