"""What a fit folder holds besides the runs: the leaderboard (``leaderboard.md`` / ``.csv``),
every training image's out-of-fold prediction (``oof_predictions.csv``), the training images
whose label looks wrong (``label_issues.csv``) and a page (``index.html``).

Doubtful labels come from cleanlab on the chosen recipe's out-of-fold probabilities
(confident learning, Northcutt et al. 2021), a well-kept library built for exactly this:
every training image ranked by its label quality (self-confidence: the out-of-fold
probability of the given label, lowest first), and ``flagged`` where ``find_label_issues``
judges the label wrong. In inspection data a mislabelled rare image is expensive: the rows
name the file, its label, the label the models prefer and both probabilities.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import numpy as np

from .. import fileio
from ..names import csv_cell, csv_writer
from ..tables import mean_std
from . import oof

LEADERBOARD, OOF_CSV, LABEL_ISSUES, PAGE = "leaderboard", "oof_predictions.csv", "label_issues.csv", "index.html"


def _group_scores(logits: np.ndarray, target: np.ndarray, counts: np.ndarray) -> dict:
    """Mean per-class accuracy of the many / medium / few classes (the training counts' groups)."""
    from ..data.groups import shot_groups

    groups = shot_groups(counts, many_threshold=100, few_threshold=20, mode="auto")
    pred = logits.argmax(-1)
    out = {}
    for g in ("many", "medium", "few"):
        cls = [int(c) for c in groups.get(g, []) if (target == c).any()]
        out[g] = float(100 * np.mean([(pred[target == c] == c).mean() for c in cls])) if cls else None
    return out


def label_issues(probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(every row, most doubtful label first; whether cleanlab flags each row's label)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(target, probs, method="self_confidence")
    order = np.argsort(quality, kind="stable")
    flagged = np.zeros(len(target), dtype=bool)
    if len(np.unique(target)) >= 2:
        flagged = np.asarray(find_label_issues(target, probs), dtype=bool)
    return order, flagged


def write_outputs(root: Path, record: dict, pooled: dict, choices: dict, counts: np.ndarray, train, adjusted,
                  log=print) -> None:
    names = list(train.classnames)
    chosen = record["chosen"]
    p = pooled[chosen]
    probs = oof.softmax(adjusted)
    items = [str(train.items[i]) if not train.in_memory else f"#{i}" for i in p.origin]

    # the leaderboard
    rows = []
    lead = next(x["score"] for x in record["recipes"] if x["name"] == record["leader"])
    for r in record["recipes"]:
        groups = (_group_scores(oof.adjust(pooled[r["name"]].logits[choices[r["name"]].epoch_index], counts,
                                           choices[r["name"]].tau), p.target, counts)
                  if r["name"] in pooled else {})
        iv, se = r["interval_vs_leader"], r.get("se_vs_leader")
        rows.append({"recipe": r["name"], "kind": r["kind"], "score": r["score"],
                     "vs_leader": "leader" if r["name"] == record["leader"] else
                     (f"{r['score'] - lead:+.1f} ± {se:.1f} ({iv[0]:+.1f} .. {iv[1]:+.1f})" if iv and se is not None
                      else f"{iv[0]:+.1f} .. {iv[1]:+.1f}" if iv else "-"),
                     **{g: groups.get(g) for g in ("many", "medium", "few")}, "tau": r["tau"], "epochs": r["epoch"],
                     "fold0": r["fold0"], "fold_wall_s": r["cost_s"], "status": r["status"],
                     "chosen": r["name"] == chosen})
    head = ["recipe", "kind", f"OOF {record['metric']}", "vs leader ± SE (95%)", "many", "medium", "few", "tau", "epochs",
            "fold 0", "fold training", "status"]
    md = [f"# tinlt fit: {record['folds']}-fold cross-validation on {record['train_images']} training images", "",
          f"- chosen: **{chosen}** ({record['why']})",
          f"- the model: `{record['model']}` (" + (
              f"the {record['ensemble']} fold models of {chosen}, logits averaged" if record.get("ensemble")
              else "trained on every training image") + "; `tinlt eval --checkpoint` it to score the test split, once)",
          "- every number here is out of fold: each image scored by the one fold model that never trained on it",
          *([f"- **warning**: {record['refit_warning']}"] if record.get("refit_warning") else []),
          "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 3) + "---|"]
    for r in rows:
        cells = [f"**{r['recipe']}**" if r["chosen"] else r["recipe"], r["kind"] or "-", mean_std([r["score"]]),
                 r["vs_leader"], *(mean_std([r[g]]) for g in ("many", "medium", "few")),
                 "-" if r["tau"] is None else f"{r['tau']:g}", "-" if r["epochs"] is None else str(r["epochs"]),
                 mean_std([r["fold0"]]), "-" if r["fold_wall_s"] is None else f"{r['fold_wall_s']:.0f}s", r["status"]]
        md.append("| " + " | ".join(cells) + " |")
    thr = record.get("threshold")
    if thr:
        pos = names[thr["positive_class"]]
        md += ["", f"- threshold: P({pos}) >= {thr['threshold']:.4g}, recall {thr['recall']:.3f}, precision "
                   f"{thr['precision']:.3f} on all {thr['num_positive']} {pos} training images out of fold"]
    fileio.write_text(root / f"{LEADERBOARD}.md", "\n".join(md) + "\n")
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows({k: csv_cell("" if v is None else v) for k, v in r.items()} for r in rows)
    fileio.write_text(root / f"{LEADERBOARD}.csv", buf.getvalue())

    # every training image's out-of-fold prediction, the chosen recipe's and each other's class
    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    others = [n for n in pooled if n != chosen]
    w.writerow(["index", "path", "label", "predicted", *(f"p_{n}" for n in names), *(f"predicted_{n}" for n in others)])
    other_pred = {n: oof.adjust(pooled[n].logits[choices[n].epoch_index], counts, choices[n].tau).argmax(-1)
                  for n in others}
    for k, i in enumerate(p.origin):
        w.writerow([int(i), _cell(items[k]), names[p.target[k]], names[int(probs[k].argmax())],
                    *(f"{x:.6f}" for x in probs[k]), *(names[int(other_pred[n][k])] for n in others)])
    fileio.write_text(root / OOF_CSV, buf.getvalue())

    # doubtful labels, from the chosen recipe's OOF probabilities *before* post-hoc adjustment:
    # cleanlab estimates p(given label | image) under the training labels' own distribution, and
    # the balance-adjusted ones made every rare image look doubtful. With 5% of the clamp-like
    # labels flipped (benchmarks/label_noise.py, probe): 9 of the 63 flipped in the top 63 when
    # adjusted, 51 unadjusted
    raw = oof.softmax(p.logits[choices[chosen].epoch_index])
    ranked, flagged = label_issues(raw, p.target)
    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    w.writerow(["rank", "index", "path", "label", "suggested", "p_label", "p_suggested", "flagged"])
    for rank, k in enumerate(ranked, 1):
        sug = int(raw[k].argmax())
        w.writerow([rank, int(p.origin[k]), _cell(items[k]), names[p.target[k]], names[sug],
                    f"{raw[k, p.target[k]]:.6f}", f"{raw[k, sug]:.6f}", int(flagged[k])])
    fileio.write_text(root / LABEL_ISSUES, buf.getvalue())
    record["label_issues"] = int(flagged.sum())
    _page(root, md, [k for k in ranked if flagged[k]][:12], items, p, raw, names)
    log(f"fit: {root / (LEADERBOARD + '.md')}, {root / OOF_CSV}, {root / LABEL_ISSUES} ({int(flagged.sum())} labels "
        f"flagged), {root / PAGE}")


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP's advice: a leading quote)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _page(root: Path, md: list, top, items, p, probs, names) -> None:
    e = html.escape
    table = [ln for ln in md if ln.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    body = ["".join(f"<td>{e(c.strip().strip('*'))}</td>" for c in ln.strip("|").split("|")) for ln in table[2:]]
    notes = "".join(f"<li>{e(ln[2:])}</li>" for ln in md if ln.startswith("- "))
    issues = "".join(f"<tr><td>{e(Path(items[k]).name)}</td><td>{e(names[p.target[k]])}</td>"
                     f"<td>{e(names[int(probs[k].argmax())])}</td><td>{probs[k, p.target[k]]:.3f}</td></tr>" for k in top)
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tinlt fit</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            f"padding:3px 8px}}</style></head><body><h1>{e(md[0][2:])}</h1><ul>{notes}</ul><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(f"<tr>{r}</tr>" for r in body)
            + "</table><h2>Most doubtful labels (out of fold)</h2><table><tr><th>file</th><th>label</th>"
            f"<th>models say</th><th>P(label)</th></tr>{issues}</table>"
            f"<p>All in {e(LABEL_ISSUES)}; every image's prediction in {e(OOF_CSV)}.</p></body></html>")
    fileio.write_text(root / PAGE, page)
