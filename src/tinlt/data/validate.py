"""Up-front dataset checks: find bad samples before the first training step, not at hour three.

Owns :func:`validate_samples` (one split), :func:`validate_data` (all splits of a run, the
cross-split checks, the report files and the skip-or-fail policy) and the report format.

What is checked, per split:

* **errors** (the sample is skipped; ``data.strict=true`` fails the run instead):
  missing file, not a regular file, zero-byte file, a file Pillow cannot identify (e.g. a
  text file named ``.jpg``), corrupt or truncated image data, an image over the size
  bound, a label outside ``0..C-1``, the same path listed again with a *different* label;
* **warnings** (reported, never fatal): the same path listed twice with the same label
  (the repeat is dropped), classes without images, files a folder loader ignored, and
  images that appear in both the training split and an evaluation split.

Class names that differ between splits are always fatal.

Checks are cheap by design, so a 100k-image set takes seconds on a thread pool: a JPEG is
checked by its header plus the end-of-image marker and is decoded (at reduced scale) only
when that marker is missing; a PNG by ``verify()``, which checks every chunk's CRC without
inflating pixels; rarer formats are decoded the way training would decode them.
In-memory images (Fashion-MNIST) get the label and class checks only.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import TinltError
from ..fileio import write_text
from .images import DEFAULT_DRAFT_SIZE, MAX_PIXELS, open_image
from .samples import Samples

REPORT_JSON = "data_report.json"
REPORT_TXT = "data_report.txt"
DRAFT_SIZE = DEFAULT_DRAFT_SIZE  # big JPEGs are decoded reduced, as evaluation decodes them
_CHUNK = 64  # paths per thread-pool task: few futures even for 100k images
_JPEG_EOI = b"\xff\xd9"


@dataclass
class Problem:
    split: str  # config key of the split, e.g. "data.train"
    item: str  # the file (or "label N"/"class X" for non-file problems)
    reason: str
    severity: str  # "error" (sample skipped / run fails) | "warning"
    action: str  # "skipped" | "dropped duplicate" | "ignored" | "kept" | "fatal"


class _BySeverity:
    """``errors`` / ``warnings``: the ``problems`` of each severity."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass
class ValidationReport(_BySeverity):
    """The outcome for one split: its problems and the cleaned samples training should use."""

    split: str
    listed: int  # samples in the split as loaded
    samples: Samples  # the cleaned split (bad samples and duplicates removed)
    problems: list[Problem] = field(default_factory=list)
    checked_images: bool = True

    @property
    def kept(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(item, reason) of every sample removed from the split."""
        return [(p.item, p.reason) for p in self.problems if p.action in ("skipped", "dropped duplicate")]


# --------------------------------------------------------------------------- one file


def check_image_file(path: str, *, check_images: bool = True, draft_size: int = DRAFT_SIZE) -> Optional[str]:
    """Why ``path`` cannot be used as a training image, or None if it looks fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing file"
    except NotADirectoryError:
        return "missing file (a parent in its path is not a folder)"
    except PermissionError:
        return "permission denied"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file" + (" (a folder)" if stat.S_ISDIR(st.st_mode) else "")
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if not check_images:
        return None
    fmt = "image"
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f)
            fmt = img.format or "image"
            if fmt == "JPEG":
                img.draft(None, (draft_size, draft_size))  # header-only: the size training will decode
                if img.size[0] * img.size[1] > MAX_PIXELS:
                    return _too_large(img.size)
                f.seek(-2, os.SEEK_END)
                if f.read(2) == _JPEG_EOI:
                    return None
                # no end marker: truncated, or trailing bytes after it; decoding tells which
            elif img.size[0] * img.size[1] > MAX_PIXELS:
                return _too_large(img.size)
            elif fmt == "PNG":
                img.verify()  # every chunk's CRC, through IEND
                return None
            elif img.mode.startswith("F"):  # float pixels: NaN or infinity would become black silently
                bad = int(np.size(a := np.asarray(img)) - np.count_nonzero(np.isfinite(a)))
                if bad:
                    return f"{bad} non-finite pixel value(s) (NaN or infinity) in a {img.mode} {fmt} image"
        open_image(path, draft_size=draft_size)  # decode exactly as training will
    except UnidentifiedImageError:
        return "not an image (Pillow cannot identify the file)"
    except Image.DecompressionBombError as e:
        return f"image too large ({str(e).split('(')[0].strip()})"
    except PermissionError:
        return "permission denied"
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"corrupt or truncated {fmt} data ({msg})"
    return None


def _too_large(size: tuple[int, int]) -> str:
    w, h = size
    return f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP, limit {MAX_PIXELS / 1e6:.0f} MP)"


def _check_chunk(paths: Sequence[str], check_images: bool) -> list[Optional[str]]:
    return [check_image_file(p, check_images=check_images) for p in paths]


def _default_workers() -> int:
    return min(32, 4 * (os.cpu_count() or 1))  # I/O bound: more threads than cores pays off


def check_files(paths: Sequence[str], *, check_images: bool = True, workers: Optional[int] = None) -> list[Optional[str]]:
    """:func:`check_image_file` for many paths on a thread pool; reasons in input order."""
    paths = list(paths)
    workers = _default_workers() if workers is None else max(1, int(workers))
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    if workers == 1 or len(chunks) <= 1:
        return [r for c in chunks for r in _check_chunk(c, check_images)]
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="tinlt-check") as pool:
        return [r for rs in pool.map(_check_chunk, chunks, [check_images] * len(chunks)) for r in rs]


# --------------------------------------------------------------------------- one split


def validate_samples(
    samples: Samples, *, split_name: str, check_images: bool = True, workers: Optional[int] = None
) -> ValidationReport:
    """Check one split; the report's ``samples`` keep the good samples in their original order.

    ``check_images=False`` still checks existence and size (a ``stat`` per file) but opens
    nothing. In-memory samples skip the file checks.
    """
    n = len(samples)
    labels = np.asarray(samples.labels, dtype=np.int64)
    C = samples.num_classes
    problems: list[Problem] = []
    keep = np.ones(n, dtype=bool)

    def name(i: int) -> str:
        return f"in-memory image {i}" if samples.in_memory else str(samples.items[i])

    for i in np.flatnonzero((labels < 0) | (labels >= C)):
        keep[i] = False
        problems.append(
            Problem(split_name, name(i), f"label {int(labels[i])} out of range 0..{C - 1}", "error", "skipped")
        )

    if not samples.in_memory:
        first_label: dict[str, int] = {}  # real path -> label of its first listing
        for i, item in enumerate(samples.items):
            if not keep[i]:
                continue
            key = os.path.realpath(str(item))  # two names (a link) for one file are one sample
            if key not in first_label:
                first_label[key] = int(labels[i])
                continue
            keep[i] = False
            if first_label[key] == int(labels[i]):
                problems.append(Problem(split_name, name(i), "listed more than once", "warning", "dropped duplicate"))
            else:
                a, b = samples.classnames[first_label[key]], samples.classnames[int(labels[i])]
                problems.append(
                    Problem(
                        split_name,
                        name(i),
                        f"listed again with a different label: {int(labels[i])} ({b!r}) after "
                        f"{first_label[key]} ({a!r}); the first is kept",
                        "error",
                        "skipped",
                    )
                )
        todo = np.flatnonzero(keep)
        reasons = check_files([str(samples.items[i]) for i in todo], check_images=check_images, workers=workers)
        for i, reason in zip(todo, reasons):
            if reason is not None:
                keep[i] = False
                problems.append(Problem(split_name, name(i), reason, "error", "skipped"))
        for item, reason in samples.skipped:  # files the loader already left out (e.g. README.txt)
            problems.append(Problem(split_name, str(item), reason, "warning", "ignored"))

    index = np.flatnonzero(keep)
    if keep.all():  # the common case: no copy (60k in-memory images are 47 MB)
        items = samples.items
    else:
        items = samples.items[index] if samples.in_memory else [samples.items[i] for i in index]
    clean = Samples(items, labels[index], list(samples.classnames), samples.source, origin=samples.origin[index])
    clean.skipped = list(samples.skipped)
    for c in np.flatnonzero(clean.class_counts() == 0):
        had = int((labels == c).sum())
        why = "has no images" if had == 0 else f"has no usable images (all {had} skipped)"
        problems.append(Problem(split_name, f"class {int(c)} {samples.classnames[c]!r}", why, "warning", "kept"))
    return ValidationReport(split_name, n, clean, problems, checked_images=check_images and not samples.in_memory)


# --------------------------------------------------------------------------- all splits


@dataclass
class DataCheck(_BySeverity):
    """All splits of a run after validation, plus where the report was written."""

    reports: dict[str, ValidationReport]
    problems: list[Problem]  # every split's problems plus the cross-split ones
    report_json: Optional[Path] = None
    report_txt: Optional[Path] = None

    def samples(self, split: str) -> Optional[Samples]:
        r = self.reports.get(split)
        return r.samples if r is not None else None

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [s for r in self.reports.values() for s in r.skipped]


def _class_mismatch(train: Samples, other: Samples, where: str) -> Optional[str]:
    from .build import check_same_classes

    try:
        check_same_classes(train, other, where)
    except TinltError as e:
        return str(e)
    return None


def validate_data(
    splits: Mapping[str, Optional[Samples]],
    *,
    out_dir: Optional[str | os.PathLike] = None,
    strict: bool = False,
    check_images: bool = True,
    workers: Optional[int] = None,
    train_split: str = "data.train",
) -> DataCheck:
    """Validate every split, write the report to ``out_dir`` and apply the policy.

    ``splits`` maps config keys (``data.train``, ``data.val``, ...) to loaded splits (None =
    unused). The default policy skips bad samples; ``strict`` raises a :class:`TinltError`
    naming the report instead. Class names that differ from ``train_split``'s, or a split
    left without any usable sample, always raise. The report is written before raising.
    """
    reports = {
        k: validate_samples(s, split_name=k, check_images=check_images, workers=workers)
        for k, s in splits.items()
        if s is not None
    }
    problems = [p for r in reports.values() for p in r.problems]
    fatal: list[str] = []

    train = reports.get(train_split)
    for key, r in reports.items():
        if train is None or key == train_split:
            continue
        msg = _class_mismatch(train.samples, r.samples, key)
        if msg:
            problems.append(Problem(key, key, msg, "error", "fatal"))
            fatal.append(msg)
        elif not train.samples.in_memory and not r.samples.in_memory:
            seen = {os.path.realpath(str(p)) for p in train.samples.items}
            for item in r.samples.items:
                if os.path.realpath(str(item)) in seen:
                    problems.append(
                        Problem(key, str(item), f"also in {train_split} (train/eval overlap)", "warning", "kept")
                    )
    for key, r in reports.items():
        if r.listed and r.kept == 0:
            msg = f"{key}: none of its {r.listed} samples is usable"
            problems.append(Problem(key, key, msg, "error", "fatal"))
            fatal.append(msg)

    check = DataCheck(reports, problems)
    if out_dir is not None:
        check.report_json, check.report_txt = write_report(check, out_dir, strict=strict)
    where = f"; report: {check.report_txt}" if check.report_txt else ""
    if fatal:
        raise TinltError(f"{fatal[0]}{where}")
    errors = check.errors
    if strict and errors:
        first = errors[0]
        raise TinltError(
            f"data.strict: {len(errors)} bad sample(s) ({_count_by_split(errors)}), first: {first.item}: "
            f"{first.reason}{where}"
        )
    return check


def _count_by_split(problems: Sequence[Problem]) -> str:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.split] = counts.get(p.split, 0) + 1
    return ", ".join(f"{n} in {k}" for k, n in counts.items())


# --------------------------------------------------------------------------- the report


def write_report(check: DataCheck, out_dir: str | os.PathLike, *, strict: bool = False) -> tuple[Path, Path]:
    """``data_report.json`` (machine-readable) and ``data_report.txt`` (one line per problem)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        k: {
            "source": r.samples.source,
            "listed": r.listed,
            "kept": r.kept,
            "skipped": len(r.skipped),
            "warnings": len(r.warnings),
            "checked_images": r.checked_images,
            "class_counts": dict(zip(r.samples.classnames, r.samples.class_counts().tolist())),
        }
        for k, r in check.reports.items()
    }
    doc = {
        "policy": "strict (any error fails the run)" if strict else "skip bad samples",
        "errors": len(check.errors),
        "warnings": len(check.warnings),
        "splits": splits,
        "problems": [asdict(p) for p in check.problems],
    }
    json_path, txt_path = out / REPORT_JSON, out / REPORT_TXT
    write_text(json_path, json.dumps(doc, indent=2) + "\n")

    lines = [f"tinlt data report ({doc['policy']}): {doc['errors']} error(s), {doc['warnings']} warning(s)", ""]
    for k, s in splits.items():
        lines.append(f"{k}: {s['kept']} of {s['listed']} samples kept ({s['source']})")
    if check.problems:
        lines += ["", "split\tseverity\taction\tfile\treason"]
        order = {"error": 0, "warning": 1}
        rank = {k: i for i, k in enumerate(check.reports)}
        for p in sorted(check.problems, key=lambda p: (rank.get(p.split, len(rank)), order.get(p.severity, 2))):
            lines.append(f"{p.split}\t{p.severity}\t{p.action}\t{p.item}\t{p.reason}")
    write_text(txt_path, "\n".join(lines) + "\n")
    return json_path, txt_path


def summary_line(check: DataCheck) -> str:
    """One console line: how many samples were skipped where, and where the report is."""
    bad = {k: sum(p.action == "skipped" for p in r.errors) for k, r in check.reports.items()}
    parts = [f"{bad[k]} of {r.listed} in {k}" for k, r in check.reports.items() if bad[k]]
    skipped = "skipped bad samples: " + ", ".join(parts) if parts else "no bad samples"
    warn = f", {len(check.warnings)} warning(s)" if check.warnings else ""
    where = f"; see {check.report_txt}" if check.report_txt else ""
    return f"data check: {skipped}{warn}{where}"


def print_summary(check: DataCheck, *, quiet: bool = False, file=None) -> None:
    """Problems go to stderr even when quiet (they change what the model trains on)."""
    if check.problems:
        print(f"tinlt: warning: {summary_line(check)}", file=file or sys.stderr, flush=True)
    elif not quiet:
        print(summary_line(check), file=file or sys.stdout, flush=True)
