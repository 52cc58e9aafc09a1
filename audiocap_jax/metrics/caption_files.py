"""Predictions, N-best candidates and references on disk, and `align`: which clips can be scored.

Every reader names the file, line or clip at fault; nothing is dropped silently. File names are the keys that
pair a prediction with its references, so `align` refuses missing and extra names unless they are allowed, and
then reports each clip it leaves out.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import logging

from audiocap_jax import csv_cells

PREDICTION_COLUMNS = ("file_name", "caption_predicted")
FILE_NAME_COLUMN = "file_name"
_CAPTION_COLUMN = re.compile(r"caption(?:_(\d+))?")
_MAX_NAMES_SHOWN = 10


class AlignmentError(ValueError):
    """Predictions and references do not cover the same file names (see `.missing` / `.extra`)."""

    def __init__(self, message: str, missing: Sequence[str] = (), extra: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.extra = list(extra)


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Predictions and references restricted to the clips that can be scored, in sorted file-name order."""

    file_names: list[str]
    predictions: dict[str, str]
    references: dict[str, list[str]]
    warnings: list[str]


def format_names(names: Sequence[str]) -> str:
    """The first few names, quoted, then how many more: what every message about a list of clips shows."""
    shown = ", ".join(repr(n) for n in names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return shown + (f" ... and {more} more" if more > 0 else "")


def align(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    allow_missing: bool = False,
    allow_extra: bool = False,
) -> Alignment:
    """Pairs each prediction with its references by file name, refusing anything ambiguous.

    Missing predictions (a referenced clip without a prediction) and extra predictions (no references) raise
    AlignmentError naming them, unless allowed; allowed ones are left out and reported in `warnings`.
    Empty predictions are kept (they score ~0, as a model that said nothing should) and reported. Empty
    reference strings are not references and are dropped with a warning; a clip left without any raises.
    """
    for name, caption in predictions.items():
        if not isinstance(caption, str):
            raise TypeError(f"prediction for {name!r} is {type(caption).__name__}, expected str")
    for name, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"references for {name!r} is {type(refs).__name__}, expected a list of captions")

    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    file_names = sorted(set(predictions) & set(references))
    warnings = []
    if not file_names:
        raise AlignmentError(
            f"no file name is in both predictions ({len(predictions)}) and references ({len(references)}); "
            f"e.g. predictions {format_names(sorted(predictions)[:3])} "
            f"vs references {format_names(sorted(references)[:3])}. "
            "Write file names relative to the same folder in both.",
            missing,
            extra,
        )
    for names, allowed, what, flag in (
        (missing, allow_missing, "referenced clips have no prediction", "allow_missing"),
        (extra, allow_extra, "predicted clips have no references", "allow_extra"),
    ):
        if not names:
            continue
        message = f"{len(names)} {what}: {format_names(names)}"
        if not allowed:
            raise AlignmentError(
                f"{message}. Fix the file names, or pass {flag}=True to score the rest.", missing, extra
            )
        warnings.append(message + " (left out)")

    empty_predictions = [n for n in file_names if not predictions[n].strip()]
    if empty_predictions:
        warnings.append(
            f"{len(empty_predictions)} empty predictions (scored as empty): {format_names(empty_predictions)}"
        )
    kept_references = {n: [r for r in references[n] if r.strip()] for n in file_names}
    dropped = [n for n in file_names if len(kept_references[n]) < len(references[n])]
    if dropped:
        warnings.append(f"empty reference captions ignored for {len(dropped)} clips: {format_names(dropped)}")
    unreferenced = [n for n in file_names if not kept_references[n]]
    if unreferenced:
        raise AlignmentError(
            f"{len(unreferenced)} clips have only empty reference captions: {format_names(unreferenced)}"
        )
    for warning in warnings:
        logging.warning("metrics: %s", warning)
    return Alignment(file_names, {n: predictions[n] for n in file_names}, kept_references, warnings)


def align_candidates(candidates: Mapping[str, Sequence[str]], aligned: Alignment) -> dict[str, list[str]]:
    """The N-best list of every scored clip; a scored clip without one is an error naming it."""
    absent = [n for n in aligned.file_names if not candidates.get(n)]
    if absent:
        raise AlignmentError(
            f"{len(absent)} scored clips have no candidates for SPIDEr-max: {format_names(absent)}"
        )
    for name in aligned.file_names:
        if isinstance(candidates[name], str):
            raise TypeError(f"candidates for {name!r} is a str, expected a list of captions")
    return {n: list(candidates[n]) for n in aligned.file_names}


def _deduplicate(rows: list[tuple[str, object]], path: Path, what: str) -> dict:
    """Keeps identical duplicate rows once (with a warning) and refuses conflicting ones."""
    by_name: dict[str, object] = {}
    identical, conflicting = [], []
    for name, value in rows:
        if name in by_name:
            (identical if by_name[name] == value else conflicting).append(name)
        else:
            by_name[name] = value
    if conflicting:
        raise ValueError(
            f"{path}: {len(set(conflicting))} file names have several different {what} rows: "
            f"{format_names(sorted(set(conflicting)))}; keep one row per file name."
        )
    if identical:
        logging.warning(
            "%s: %d duplicate identical %s rows kept once: %s",
            path,
            len(identical),
            what,
            format_names(sorted(set(identical))),
        )
    return by_name


def _read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a UTF-8 CSV (BOM allowed), cells as `csv_cells.guard` found them."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        absent = [c for c in required if c not in header]
        if absent:
            raise ValueError(f"{path}: header {header} lacks columns {absent}")
        rows = []
        for row in reader:
            if row.get(None) or None in row.values():
                found = "more" if row.get(None) else "fewer"
                raise ValueError(
                    f"{path} line {reader.line_num}: {found} fields than the {len(header)} header "
                    "columns; captions that contain commas must be quoted"
                )
            rows.append({column: csv_cells.unguard(value) for column, value in row.items()})
    return header, rows


def read_predictions_csv(path: str | Path) -> dict[str, str]:
    """Reads `file_name,caption_predicted` (UTF-8, standard CSV quoting), as written by predict."""
    path = Path(path)
    _, rows = _read_csv_rows(path, PREDICTION_COLUMNS)
    name_column, caption_column = PREDICTION_COLUMNS
    return _deduplicate([(r[name_column], r[caption_column]) for r in rows], path, "prediction")


def read_candidates_csv(path: str | Path) -> dict[str, list[str]]:
    """Reads `file_name,caption_predicted` where a clip may have several rows: its N-best list, best first
    (file order). With one row per clip this is `read_predictions_csv` with lists of one."""
    path = Path(path)
    _, rows = _read_csv_rows(path, PREDICTION_COLUMNS)
    name_column, caption_column = PREDICTION_COLUMNS
    candidates: dict[str, list[str]] = {}
    for row in rows:
        candidates.setdefault(row[name_column], []).append(row[caption_column])
    return candidates


def write_predictions_csv(path: str | Path, predictions: Mapping[str, str]) -> None:
    """Writes `file_name,caption_predicted`, quoting captions with commas, quotes or newlines; a cell a
    spreadsheet would run as a formula (`=`, `+`, `-`, `@` first) gets a leading `'` (`csv_cells`), which
    `read_predictions_csv` removes."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv_cells.Writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        writer.writerows(predictions.items())


def _caption_columns(columns: Sequence[str], path: Path) -> list[str]:
    """`caption` then `caption_1`, `caption_2`, ... in numeric order (not `caption_predicted`)."""
    matched = [(m.group(1), c) for c in columns if (m := _CAPTION_COLUMN.fullmatch(c))]
    if not matched:
        raise ValueError(
            f"{path}: no reference caption columns (caption or caption_1..caption_N) in {list(columns)}"
        )
    return [c for _, c in sorted(matched, key=lambda item: int(item[0] or 0))]


def read_references(path: str | Path) -> dict[str, list[str]]:
    """Reads references from a Clotho captions CSV or an AudioFolder `metadata.jsonl` (or its folder).

    Both layouts: a `file_name` column plus `caption` and/or `caption_1..caption_N`. Empty or null cells are
    not references (AudioCaps clips have fewer than 5); their count is logged.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metadata.jsonl"
    if path.suffix == ".csv":
        header, rows = _read_csv_rows(path, [FILE_NAME_COLUMN])
        columns = _caption_columns(header, path)
        records = [(r[FILE_NAME_COLUMN], [r[c] for c in columns]) for r in rows]
    elif path.suffix == ".jsonl":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        records = []
        # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
        for line_number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {line_number}: not JSON ({e})") from e
            if not isinstance(row, dict) or FILE_NAME_COLUMN not in row:
                raise ValueError(
                    f"{path} line {line_number}: expected an object with a {FILE_NAME_COLUMN!r} key"
                )
            captions = [row[c] for c in _caption_columns(list(row), path)]
            bad = [c for c in captions if c is not None and not isinstance(c, str)]
            if bad:
                raise ValueError(
                    f"{path} line {line_number}: caption values must be strings or null, got {bad!r}"
                )
            records.append((row[FILE_NAME_COLUMN], ["" if c is None else c for c in captions]))
    else:
        raise ValueError(
            f"{path}: unknown reference format {path.suffix!r}; expected a Clotho .csv or a .jsonl"
        )
    empty_cells = sum(not c.strip() for _, caps in records for c in caps)
    if empty_cells:
        logging.info("%s: %d empty reference cells are not references", path, empty_cells)
    return _deduplicate([(n, [c for c in caps if c.strip()]) for n, caps in records], path, "reference")
