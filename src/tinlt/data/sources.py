"""Split sources on disk: list files, folder trees, CSV files and class-name files.

Each loader returns a :class:`~tinlt.data.samples.Samples` of absolute path *strings* and
never opens an image, so a 100k-line list loads in well under a second. Every problem
with the input is a one-line :class:`~tinlt.errors.TinltError` naming the file (and line).

Path rules: a relative image path resolves against ``root``, which defaults to the folder
of the list/CSV file. Class names shown to the text tower have ``_`` turned into spaces.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import TinltError
from .samples import Samples

LISTS_DIR = Path(__file__).resolve().parent / "lists"  # bundled ImageNet_LT / Places_LT lists
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_CLASSNAMES_FILE = "classnames.txt"  # picked up next to a list/CSV file when none is given

PathLike = Union[str, os.PathLike]

_ID_TOKEN = re.compile(r"n\d{8}|\d+", re.ASCII)  # WordNet id or integer id
_PLACES_PREFIX = re.compile(r"^/[a-z]/")  # Places365 category paths look like /b/bakery/shop


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is_label(token: str) -> bool:
    # strict ASCII integer: int() would also take '1_0', '٣' or ' 3'
    body = token[1:] if token[:1] in "+-" else token
    return body.isascii() and body.isdigit()


def display_name(raw: str) -> str:
    """Human class name for prompts: ``_`` -> space; a Places365 ``/x/`` prefix is dropped."""
    name = raw.strip()
    if _PLACES_PREFIX.match(name):
        name = name[3:].replace("/", " ")
    return " ".join(name.replace("_", " ").split())


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise TinltError(f"{what} not found: {path}")
    if not path.is_file():
        raise TinltError(f"{what} is not a file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TinltError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TinltError(f"{path}:{line}: not valid UTF-8 text") from None
    # universal newlines, like an editor counts lines
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_classnames_entries(classnames_file: PathLike) -> list[tuple[str, str]]:
    """``(key, display_name)`` per class, in label order.

    Accepted line formats (one format per file):
      * ``id name with spaces`` where every id is a WordNet id (``n01440764``) or an integer;
      * ``name name`` (Places_LT: the id repeats the name);
      * ``name index`` (Places365 ``categories_places365.txt``: ``/a/airfield 0``);
      * otherwise the whole line is the name (one class name per line).
    ``key`` is the id (or raw name) used to match folder names and CSV class names.
    Blank lines and ``#`` comments are skipped.
    """
    path = Path(classnames_file)
    text = _read_text(path, "class-names file")
    rows = [(n, ln.strip()) for n, ln in enumerate(text.split("\n"), 1)]
    rows = [(n, ln) for n, ln in rows if ln and not ln.startswith("#")]
    if not rows:
        raise TinltError(f"{path}: no class names")
    tokens = [ln.split() for _, ln in rows]
    if all(len(t) >= 2 and _ID_TOKEN.fullmatch(t[0]) for t in tokens):
        entries = [(t[0], " ".join(t[1:])) for t in tokens]
    elif all(len(t) == 2 and t[0] == t[1] for t in tokens):
        entries = [(t[0], t[1]) for t in tokens]
    elif all(len(t) == 2 and t[1].isascii() and t[1].isdigit() for t in tokens):
        order = [int(t[1]) for t in tokens]
        if sorted(order) != list(range(len(order))):
            raise TinltError(f"{path}: 'name index' lines must number the classes 0..{len(order) - 1} once each")
        entries = [(t[0], t[0]) for _, t in sorted(zip(order, tokens))]
    else:
        entries = [(ln, ln) for _, ln in rows]
    out = []
    for (n, _), (key, raw) in zip(rows, entries):
        name = display_name(raw)
        if not name:
            raise TinltError(f"{path}:{n}: empty class name")
        out.append((key, name))
    return out


def read_classnames(classnames_file: PathLike) -> list[str]:
    """Display class names in label order (see :func:`read_classnames_entries`)."""
    return [name for _, name in read_classnames_entries(classnames_file)]


def _default_names(num_classes: int) -> list[str]:
    return [f"class {i}" for i in range(num_classes)]


def _resolve_root(root: Optional[PathLike], data_file: Path) -> str:
    if root is None or str(root) == "":
        return str(data_file.resolve().parent)
    r = Path(root).expanduser()
    if not r.exists():
        raise TinltError(f"image root not found: {r} (root for {data_file})")
    if not r.is_dir():
        raise TinltError(f"image root is not a folder: {r} (root for {data_file})")
    return str(r.resolve())


def _find_classnames(classnames_file: Optional[PathLike], data_file: Path) -> Optional[Path]:
    if classnames_file is not None and str(classnames_file) != "":
        return Path(classnames_file).expanduser()
    beside = data_file.parent / DEFAULT_CLASSNAMES_FILE
    return beside if beside.is_file() else None


def _finish(
    data_file: Path,
    items: list[str],
    labels: list[int],
    label_lines: list[int],
    classnames_path: Optional[Path],
    names: Optional[list[str]] = None,
) -> Samples:
    if not items:
        raise TinltError(f"{data_file}: no samples (empty split)")
    label_arr = np.asarray(labels, dtype=np.int64)
    if names is None:
        top = int(label_arr.max())
        if classnames_path is not None:
            names = read_classnames(classnames_path)
            if top >= len(names):
                line = label_lines[int(np.argmax(label_arr >= len(names)))]
                bad = int(label_arr[label_arr >= len(names)][0])
                raise TinltError(
                    f"{data_file}:{line}: label {bad} out of range: {classnames_path} has {len(names)} class names"
                )
            if top + 1 != len(names):
                raise TinltError(
                    f"{classnames_path} has {len(names)} class names but {data_file} uses labels 0..{top} "
                    f"({top + 1} classes)"
                )
        else:
            names = _default_names(top + 1)
    source = str(data_file) + (f" (class names: {classnames_path})" if classnames_path else "")
    return Samples(items, label_arr, names, source=source)


def load_list(
    list_file: PathLike, root: Optional[PathLike] = None, classnames_file: Optional[PathLike] = None
) -> Samples:
    """Read ``relative/path label`` lines (ImageNet-LT / Places-LT format).

    The label is the last whitespace-separated token, so paths may contain spaces.
    Blank lines and lines starting with ``#`` are skipped. Without ``classnames_file`` a
    ``classnames.txt`` beside the list is used if present, else names are ``class 0``, ...
    """
    path = Path(list_file).expanduser()
    text = _read_text(path, "list file")
    base = _resolve_root(root, path)
    join, isabs = os.path.join, os.path.isabs
    items: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for n, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.rsplit(None, 1)
        if len(parts) != 2 or not _is_label(parts[1]):
            raise TinltError(f"{path}:{n}: expected 'path label', got {_short(s)}")
        label = int(parts[1])
        if label < 0:
            raise TinltError(f"{path}:{n}: label {label} out of range (labels start at 0)")
        rel = parts[0].strip()
        items.append(rel if isabs(rel) else join(base, rel))
        labels.append(label)
        lines.append(n)
    return _finish(path, items, labels, lines, _find_classnames(classnames_file, path))


_PATH_COLUMNS = ("path", "file", "filename", "image")
_LABEL_COLUMNS = ("label",)
_NAME_COLUMNS = ("class_name", "classname", "class", "name")


def load_csv(
    csv_file: PathLike, root: Optional[PathLike] = None, classnames_file: Optional[PathLike] = None
) -> Samples:
    """Read a CSV with a header ``path,label`` (integer labels) or ``path,class_name``.

    Class names are matched against ``classnames_file`` (by id, raw or display name) when
    given; otherwise the classes are the sorted unique names. Relative paths resolve
    against ``root`` (default: the CSV's folder).
    """
    path = Path(csv_file).expanduser()
    text = _read_text(path, "CSV file")
    base = _resolve_root(root, path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):
            header = next(reader, None)
        if header is None:
            raise TinltError(f"{path}: no samples (empty split)")
        cols = [c.strip().lower() for c in header]
        where = f"{path}:{reader.line_num}"

        def col(options: tuple[str, ...]) -> Optional[int]:
            return next((cols.index(o) for o in options if o in cols), None)

        ipath, ilabel, iname = col(_PATH_COLUMNS), col(_LABEL_COLUMNS), col(_NAME_COLUMNS)
        if ipath is None or (ilabel is None and iname is None):
            raise TinltError(f"{where}: expected a header 'path,label' or 'path,class_name', got {_short(','.join(header))}")
        ikey = ilabel if ilabel is not None else iname
        width = max(ipath, ikey) + 1
        rows: list[tuple[int, str, str]] = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            n = reader.line_num
            if len(row) < width:
                raise TinltError(f"{path}:{n}: expected {width} columns ({','.join(header)}), got {_short(','.join(row))}")
            rel, key = row[ipath].strip(), row[ikey].strip()
            if not rel:
                raise TinltError(f"{path}:{n}: empty path")
            rows.append((n, rel, key))
    except csv.Error as e:
        raise TinltError(f"{path}:{reader.line_num}: bad CSV: {e}") from None
    if not rows:
        raise TinltError(f"{path}: no samples (empty split)")

    cn_path = _find_classnames(classnames_file, path)
    items = [rel if os.path.isabs(rel) else os.path.join(base, rel) for _, rel, _ in rows]
    lines = [n for n, _, _ in rows]
    if ilabel is not None:
        labels = []
        for n, _, key in rows:
            if not _is_label(key):
                raise TinltError(f"{path}:{n}: label must be an integer, got {_short(key)}")
            if int(key) < 0:
                raise TinltError(f"{path}:{n}: label {int(key)} out of range (labels start at 0)")
            labels.append(int(key))
        return _finish(path, items, labels, lines, cn_path)

    if cn_path is not None:
        entries = read_classnames_entries(cn_path)
        names = [name for _, name in entries]
        lookup: dict[str, set[int]] = {}
        for i, (key, name) in enumerate(entries):
            for k in {key, name, key.replace("_", " "), name.lower()}:
                lookup.setdefault(k, set()).add(i)
    else:
        names = sorted({display_name(key) for _, _, key in rows})
        lookup = {n: {i} for i, n in enumerate(names)}
    labels = []
    for n, _, key in rows:
        hits = lookup.get(key) or lookup.get(display_name(key)) or lookup.get(display_name(key).lower())
        if not hits:
            src = f" in {cn_path}" if cn_path else ""
            raise TinltError(f"{path}:{n}: unknown class name {_short(key)}{src}")
        if len(hits) > 1:
            raise TinltError(f"{path}:{n}: class name {_short(key)} is ambiguous in {cn_path} (use its id)")
        labels.append(next(iter(hits)))
    return _finish(path, items, labels, lines, cn_path, names=names)


def _class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _link_problem(path: str, walked: set, class_roots: dict, own: str, top: str) -> str:
    """Why a sub-folder (possibly a symlink) must not be walked, or "" when it may."""
    real = os.path.realpath(path)
    if real in walked or any(os.path.commonpath([real, w]) == real for w in walked):
        return f"symlink to {real}: a loop (it leads back to a folder already walked); not followed"
    if real == os.path.realpath(top) or os.path.commonpath([real, os.path.realpath(top)]) == real:
        return f"symlink to {real}: it contains the whole image folder; not followed"
    other = _other_class(real, class_roots, own)
    if other:
        return f"symlink into class folder '{other}' ({real}): its images would take this class's label; not followed"
    return ""


def _other_class(real: str, class_roots: dict, own: str) -> str:
    """The other class folder ``real`` lies in, or ""."""
    for root, name in class_roots.items():
        if name != own and os.path.commonpath([real, root]) == root:
            return name
    return ""


def load_folder(root: PathLike, classnames: Optional[Union[PathLike, Sequence[str]]] = None) -> Samples:
    """One sub-folder per class (sorted by folder name), images found recursively.

    ``classnames`` (a class-names file or a list of names) fixes the label order, e.g.
    so a val folder lines up with training; each sub-folder must then match one class by
    id or name, and classes without a folder are kept (empty). Without it the class name
    is the folder name with ``_`` turned into a space. Non-image files are listed in
    ``Samples.skipped``; hidden files and folders are ignored.

    Symbolic links are followed, with three exceptions, each listed in ``Samples.skipped``
    (the data report shows them): a link back to a folder already walked (a loop), a link to
    the image folder itself or above it, and a link into another class's folder (its images
    would silently take this class's label). A file reached twice (through a link) is listed
    once, by its real path.
    """
    top = Path(root).expanduser()
    if not top.exists():
        raise TinltError(f"image folder not found: {top}")
    if not top.is_dir():
        raise TinltError(f"image folder is not a folder: {top}")
    top = top.resolve()
    folders = _class_folders(top)
    if not folders:
        raise TinltError(f"{top}: no class sub-folders (expected ROOT/<class>/<image>)")

    if classnames is None:
        names = [display_name(f) for f in folders]
        folder_label = {f: i for i, f in enumerate(folders)}
        cn_where = ""
    else:
        if isinstance(classnames, (str, os.PathLike)):
            entries = read_classnames_entries(classnames)
            cn_where = str(classnames)
        else:
            entries = [(str(c), display_name(str(c))) for c in classnames]
            cn_where = "the given class names"
        names = [name for _, name in entries]
        lookup: dict[str, int] = {}
        for i, (key, name) in enumerate(entries):
            for k in (key, name, name.replace(" ", "_")):
                lookup.setdefault(k, i)
        folder_label = {}
        for f in folders:
            hit = lookup.get(f, lookup.get(display_name(f)))
            if hit is None:
                raise TinltError(f"{top / f}: folder matches no class in {cn_where}")
            folder_label[f] = hit

    items: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    class_roots = {os.path.realpath(top / f): f for f in folders}
    seen_files: dict[str, str] = {}  # real path -> the path it was first listed under
    for f in folders:
        label = folder_label[f]
        walked: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(top / f, followlinks=True):
            walked.add(os.path.realpath(dirpath))
            keep = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                why = _link_problem(os.path.join(dirpath, d), walked, class_roots, f, str(top))
                if why:
                    skipped.append((os.path.join(dirpath, d), why))
                else:
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    skipped.append((full, "not an image file extension"))
                    continue
                real = os.path.realpath(full)
                other = _other_class(real, class_roots, f)
                if other:
                    skipped.append((full, f"link to {real} in class folder '{other}'; not listed under '{f}'"))
                    continue
                if real in seen_files:  # a link to an image already listed: one file, one label
                    skipped.append((full, f"same file as {seen_files[real]} (a link); listed once"))
                    continue
                seen_files[real] = full
                items.append(full)
                labels.append(label)
    if not items:
        raise TinltError(f"{top}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)}) (empty split)")
    found = set(labels)
    empty = [f for f in folders if folder_label[f] not in found]
    if empty and classnames is None:  # an empty folder would silently add a class (and change the groups)
        raise TinltError(f"{top / empty[0]}: class folder holds no images; remove it, or list the classes "
                         "explicitly (data.*.classnames / --classnames) to keep an empty class on purpose")
    out = Samples(items, np.asarray(labels, dtype=np.int64), names, source=str(top))
    out.skipped = skipped
    return out
