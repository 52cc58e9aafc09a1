"""Spreadsheet-safe text cells for every CSV the project writes, and their exact undoing for our readers.

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is run as a formula when the CSV is
opened in Excel, LibreOffice or Google Sheets ("CSV injection"; OWASP's advice is a leading single quote). A
caption or file name can start that way (AudioSet's YouTube ids often start with `-`), so such a text cell is
written with a single quote in front (`'=1+1`), which a spreadsheet takes as text. A text that already starts
with a quote followed by one of those characters or by another quote gets one more quote, so `unguard` gives
back every string exactly: `unguard(guard(s)) == s`. Numbers are written as they are (a negative score stays
a number). Other CSV readers (pandas, a submission checker) see the quote; `unguard` removes it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def _starts_guarded(text: str) -> bool:
    """Text that `unguard` would shorten: a quote, then a formula start or another quote."""
    return text[:1] == QUOTE and text[1:2] in (*FORMULA_STARTS, QUOTE)


def guard(value: Any) -> Any:
    """A text cell a spreadsheet would run (or one `unguard` would change) with a quote in front; any other
    value as it is."""
    if isinstance(value, str) and (value[:1] in FORMULA_STARTS or _starts_guarded(value)):
        return QUOTE + value
    return value


def guarded(row: Iterable[Any]) -> list[Any]:
    """A CSV row with every text cell passed through `guard`."""
    return [guard(value) for value in row]


def unguard(cell: str) -> str:
    """The text `guard` was given: one leading quote removed where `guard` adds one."""
    return cell[1:] if _starts_guarded(cell) else cell


class Writer:
    """`csv.writer(f, lineterminator="\\n")` (pandas' `to_csv` layout) with every text cell through `guard`,
    and a row that holds a carriage return written fully quoted: minimal quoting quotes only the line
    terminator's own characters, and csv readers end a record at a bare CR, so a caption or file name with one
    would split its row."""

    def __init__(self, f: Any) -> None:
        self._minimal = csv.writer(f, lineterminator="\n")
        self._quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Iterable[Any]) -> None:
        cells = guarded(row)
        has_cr = any(isinstance(cell, str) and "\r" in cell for cell in cells)
        (self._quoted if has_cr else self._minimal).writerow(cells)

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)
