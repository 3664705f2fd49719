"""``tinlt mine``: rank an unlabeled pool so that a person labels the likely rare cases first.

Owns :func:`mine`: every image under a folder scored by a model (ONNX or checkpoint, as
``tinlt predict``), ranked by the rare class's probability (``by="prob"``) or by
uncertainty (``margin``: 1 minus the gap between the top two probabilities; ``entropy``),
near-duplicate photos collapsed onto the best-ranked of them by perceptual hash, and
written to ``OUT/``:

- ``ranked.csv``: rank, path, score, a ``p_<class>`` column per class, predicted class,
  ``duplicate_of`` (the kept image a collapsed one looks like);
- ``to_label.txt``: the top N kept images, one path per line, ready for a labelling tool;
- ``contact_sheet.html``: those N as thumbnails with rank, score and file name (stand-alone);
- ``unreadable.csv``: files that could not be decoded, with the reason (never fatal);
- ``mine.json``: what was done (model, class, rule, counts), for the record.

Perceptual hashes come from ``imagehash`` (pHash: DCT of a 32x32 grey image, 64 bits; a
maintained library, robust to resizing and recompression); two images are near-duplicates
when their hashes differ in at most ``hash_distance`` bits. No torch on the ONNX path.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import fileio
from ..errors import TinltError
from ..names import csv_writer, printable
from .backend import collect_images, score_files

RULES = ("prob", "margin", "entropy")


def scores_by(probs: np.ndarray, by: str, cls: int) -> np.ndarray:
    """Higher = label first: P(cls), or uncertainty (1 - top-2 margin, or entropy in nats)."""
    if by == "prob":
        return probs[:, cls]
    if by == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if by == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)
    raise TinltError(f"--by {by!r}; expected one of: {', '.join(RULES)}")


def phash_bits(img) -> int:
    """64-bit perceptual hash (imagehash.phash) as an integer."""
    import imagehash

    bits = imagehash.phash(img).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def collapse(order: Sequence[int], hashes: Sequence[int], max_distance: int) -> dict[int, int]:
    """{collapsed index: kept index}: walking ``order`` best first, an image within
    ``max_distance`` bits of an already kept one is collapsed onto the closest of them."""
    kept_idx: list[int] = []
    kept = np.zeros(0, dtype=np.uint64)
    out: dict[int, int] = {}
    for i in order:
        h = np.uint64(hashes[i])
        if len(kept):
            x = np.bitwise_xor(kept, h)
            dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            j = int(np.argmin(dist))
            if dist[j] <= max_distance:
                out[i] = kept_idx[j]
                continue
        kept_idx.append(i)
        kept = np.append(kept, h)
    return out


def _thumb(path: Path, size: int = 128) -> str:
    from ..data.images import open_image

    try:
        img = open_image(path, draft_size=size)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a file gone since scoring: no thumbnail, still listed
        return ""


SHEET_CSS = """body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}.meta{color:#555;font-size:.92em}.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:150px;border:1px solid #ddd;padding:4px;background:#fafafa}
figure img{width:142px;height:142px;object-fit:contain;background:#fff;display:block}
figcaption{font-size:.78em;overflow-wrap:anywhere}figcaption b{font-size:1.1em}.dup{color:#8a5a00}"""


def _sheet(out: Path, top: list[dict], title: str, summary: str) -> Path:
    e = html.escape
    cells = []
    for r in top:
        uri = _thumb(Path(r["path"]))
        img = f'<img src="{uri}" alt="{e(Path(r["path"]).name)}">' if uri else "<div>(unreadable now)</div>"
        dup = f'<br><span class="dup">+{r["duplicates"]} near-duplicate(s)</span>' if r["duplicates"] else ""
        cells.append(f"<figure>{img}<figcaption><b>#{r['rank']}</b> {r['score']:.4f}<br>{e(r['predicted'])}<br>"
                     f"{e(Path(r['path']).name)}{dup}</figcaption></figure>")
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{SHEET_CSS}</style></head><body><h1>{e(title)}</h1>"
            f"<p class=\"meta\">{e(summary)}</p><div class=\"grid\">{''.join(cells)}</div></body></html>")
    return fileio.write_text(out / "contact_sheet.html", page)


def mine(pool: str | Path, backend: Any, out: str | Path, *, cls: Optional[str] = None, by: str = "prob",
         top: int = 100, dedupe: bool = True, hash_distance: int = 4, batch_size: int = 64,
         quiet: bool = False) -> dict:
    """Score, rank, collapse and write (see the module doc); returns the mine.json summary."""
    from .card import model_card, rare_class

    if by not in RULES:
        raise TinltError(f"--by {by!r}; expected one of: {', '.join(RULES)}")
    if top < 1 or batch_size < 1:
        raise TinltError("--top and --batch-size must be >= 1")
    pool = Path(pool)
    if not pool.is_dir():
        raise TinltError(f"{pool}: not a folder (tinlt mine takes a folder tree of unlabeled images)")
    c = rare_class(backend, cls) if by == "prob" else (rare_class(backend, cls) if cls else None)
    paths, outside = _inside(pool, collect_images([pool]))
    if not paths:
        raise TinltError(f"{pool}: every image in it is a link to outside the folder; tinlt mine reads only the pool")
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    names = list(backend.classnames)
    scored = score_files(backend, paths, batch_size=batch_size, quiet=quiet, desc="mine",
                         per_image=phash_bits if dedupe else None)
    ok_paths, hashes, bad, P = scored.paths, [h or 0 for h in scored.extra], outside + scored.bad, scored.probs
    if not ok_paths:
        _write_bad(dest, bad)
        raise TinltError(f"{pool}: none of the {len(paths)} images could be read (reasons in "
                         f"{dest / 'unreadable.csv'})")
    score = scores_by(P, by, c if c is not None else 0)
    order = sorted(range(len(ok_paths)), key=lambda i: (-score[i], str(ok_paths[i])))
    dup_of = collapse(order, hashes, hash_distance) if dedupe else {}
    dup_count: dict[int, int] = {}
    for i, k in dup_of.items():
        dup_count[k] = dup_count.get(k, 0) + 1
    rows, rank = [], 0
    for i in order:
        if i not in dup_of:
            rank += 1
        rows.append({"rank": rank if i not in dup_of else "", "path": str(ok_paths[i]), "score": float(score[i]),
                     "predicted": names[int(P[i].argmax())],
                     "duplicate_of": str(ok_paths[dup_of[i]]) if i in dup_of else "", "duplicates": dup_count.get(i, 0),
                     **{f"p_{n}": float(P[i, j]) for j, n in enumerate(names)}})
    _write_csv(dest / "ranked.csv", rows, names)
    kept = [r for r in rows if r["rank"] != ""]
    chosen = kept[:top]
    fileio.write_text(dest / "to_label.txt", "".join(f"{printable(r['path'])}\n" for r in chosen))  # one line each
    _write_bad(dest, bad)
    what = f"P({names[c]})" if by == "prob" else by
    summary = (f"{len(paths) + len(outside)} images in {pool}: {len(ok_paths)} scored, {len(bad)} unreadable, {len(dup_of)} "
               f"near-duplicates collapsed; ranked by {what}; top {len(chosen)} shown")
    _sheet(dest, chosen, f"tinlt mine: top {len(chosen)} by {what}", summary)
    record = {"pool": str(pool.resolve()), "images": len(paths) + len(outside), "scored": len(ok_paths), "unreadable": len(bad),
              "collapsed": len(dup_of), "by": by, "class": names[c] if c is not None else None, "top": len(chosen),
              "hash_distance": hash_distance if dedupe else None, "model": model_card(backend),
              "files": {k: str(dest / k) for k in ("ranked.csv", "to_label.txt", "contact_sheet.html",
                                                     "unreadable.csv")}}
    fileio.write_text(dest / "mine.json", json.dumps(record, indent=2))
    record["summary"] = summary
    return record


def _inside(pool: Path, paths: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files that are really inside ``pool``, and (path, reason) for links that lead out of it:
    a link to another folder's image must not be scored, ranked or shown in the contact sheet."""
    root, inside, outside = pool.resolve(), [], []
    for p in paths:
        try:
            ok = p.resolve().is_relative_to(root)
        except (OSError, RuntimeError):  # a link loop
            ok = False
        if ok:
            inside.append(p)
        else:
            outside.append((str(p), "a link to outside the pool: not read"))
    return inside, outside


def _write_csv(path: Path, rows: list[dict], names: Sequence[str]) -> None:
    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    w.writerow(["rank", "path", "score", "predicted", "duplicate_of", *(f"p_{n}" for n in names)])
    for r in rows:
        w.writerow([r["rank"], r["path"], f"{r['score']:.6f}", r["predicted"], r["duplicate_of"],
                    *(f"{r[f'p_{n}']:.6f}" for n in names)])
    fileio.write_text(path, buf.getvalue())


def _write_bad(dest: Path, bad: list[tuple[str, str]]) -> None:
    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(bad)
    fileio.write_text(dest / "unreadable.csv", buf.getvalue())
