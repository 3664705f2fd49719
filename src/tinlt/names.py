"""Names from disk and from clients, made safe for where they are written.

A file name may hold any byte but "/" and NUL: newlines, terminal escape sequences, and bytes
that are not UTF-8 (Python carries those as lone surrogates, U+DC80-U+DCFF). Line-based files
and the terminal get :func:`printable`: control characters and undecodable bytes as backslash
escapes, so a name is one line and never moves the cursor. CSV cells get :func:`csv_cell`:
printable, and a text cell that a spreadsheet would run as a formula (first character one of
``= + - @``, tab or carriage return) is prefixed with a single quote, as OWASP's CSV-injection
guidance says; plain numbers such as ``-0.5`` are left alone.
"""

from __future__ import annotations

from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def printable(text: Any) -> str:
    """``text`` with every non-printable character and undecodable byte as a backslash escape."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for c in s:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # a byte os.fsdecode could not decode
            out.append(f"\\x{o - 0xDC00:02x}")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(c.encode("unicode_escape").decode("ascii") if o > 0x7F or c in "\n\r\t" else f"\\x{o:02x}")
    return "".join(out)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """A CSV cell: numbers as they are, text printable and never a formula."""
    if not isinstance(value, str):
        return value
    s = printable(value)
    return "'" + s if s.startswith(FORMULA_STARTS) and not _is_number(s) else s


def csv_row(cells: Iterable[Any]) -> list:
    return [csv_cell(c) for c in cells]


class SafeCsvWriter:
    """``csv.writer`` whose rows go through :func:`csv_row`."""

    def __init__(self, buf, **kwargs) -> None:
        import csv

        self._w = csv.writer(buf, **kwargs)

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow(csv_row(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(buf, **kwargs) -> SafeCsvWriter:
    return SafeCsvWriter(buf, **kwargs)
