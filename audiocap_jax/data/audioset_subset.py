"""Selects a label-balanced AudioSet subset without AudioCaps clips and splits it into train/valid/test.

AudioSet's 2M clips are mostly Music and Speech. The original system pretrained on ~130k clips picked so that
every label gets up to a desired number of clips, rarest labels first (`select_balanced`), then carved
valid and test sides with a few clips of every label each (`balanced_split`). AudioCaps is a subset of
AudioSet, so its clips are removed first: left in, they would leak into AudioCaps evaluation.

`select_audioset_subset` is the command `python -m audiocap_jax.data.prepare select-audioset-subset`: it
reads AudioSet segment CSVs, writes exactly the annotations layout `prepare audioset-small` reads
(`{train,valid,test}.jsonl` + `ontology.json`), a per-label report (`subset_report.csv`) and a plot of the
label distribution before and after (`subset_labels.png`).

Rows are held as arrays (the full 2M-row unbalanced list fits in well under 1 GiB):
  N segment rows, E (row, label) entries, L labels of the ontology.
  `Segments.label_offsets` int64 [N + 1] and `label_indices` int32 [E] are a CSR matrix: the labels of row
  i are `label_indices[label_offsets[i]:label_offsets[i + 1]]`, in CSV order (the keyword caption depends on
  that order), as indices into `Segments.label_ids`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os
import pathlib
import shutil
from collections.abc import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from audiocap_jax import cli, csv_cells  # noqa: E402
from audiocap_jax.data import prepare  # noqa: E402
from audiocap_jax.ontology import Ontology  # noqa: E402

# The segment list a CSV holds, by file stem: Google's names and the original repo's names. It becomes the
# rows' `orig_split`, the download folder `prepare audioset-small` takes the clip from.
SEGMENT_LISTS = {
    "eval_segments": "eval",
    "eval": "eval",
    "balanced_train_segments": "train_balanced",
    "train_balanced": "train_balanced",
    "unbalanced_train_segments": "train_unbalanced",
    "train_unbalanced": "train_unbalanced",
}
MUSIC_ID = "/m/04rlf"  # "Music" in the ontology.
SPEECH_ID = "/m/09x0r"  # "Speech".
REPORT_FILE = "subset_report.csv"
PLOT_FILE = "subset_labels.png"
# Per label: rows listed in the CSVs, available once AudioCaps clips are removed, selected (all selected clips
# carrying it), picked (selected on its own turns; at most --per-label), then per split.
REPORT_COLUMNS = ("label_id", "name", "listed", "available", "selected", "picked", "train", "valid", "test")
_SEGMENT_FIELDS = 4  # YTID, start_seconds, end_seconds, positive_labels
AUDIOSET_DOWNLOAD = "https://research.google.com/audioset/download.html"
_RESTORE = f"restore the file from {AUDIOSET_DOWNLOAD} (or remove the line)"
_IDS_SHOWN = 5  # YouTube ids named in a warning


@dataclasses.dataclass(frozen=True)
class Segments:
    """AudioSet segment rows (see the module docstring for the label matrix)."""

    youtube_ids: np.ndarray  # str: [N]
    start_seconds: np.ndarray  # float64: [N]
    end_seconds: np.ndarray  # float64: [N]
    orig_split: np.ndarray  # str: [N], a value of SEGMENT_LISTS
    label_offsets: np.ndarray  # int64: [N + 1]
    label_indices: np.ndarray  # int32: [E]
    label_ids: tuple[str, ...]  # [L] MIDs, in ontology order

    @property
    def num_rows(self) -> int:
        return len(self.youtube_ids)

    @property
    def entry_rows(self) -> np.ndarray:
        """int64 [E]: the row of each (row, label) entry of `label_indices`."""
        return np.repeat(np.arange(self.num_rows), np.diff(self.label_offsets))

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        """Label indices of `rows`, concatenated: int32 [sum of their label counts]."""
        starts = self.label_offsets[rows]
        lengths = self.label_offsets[rows + 1] - starts
        # Entry j of row r sits at starts[r] + (j - first output position of r).
        positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        return self.label_indices[positions]

    def label_counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """int64 [L]: how many of `rows` (all rows when None) carry each label."""
        indices = self.label_indices if rows is None else self.labels_of(rows)
        return np.bincount(indices, minlength=len(self.label_ids))

    def take(self, keep: np.ndarray) -> Segments:
        """The rows where the bool mask `keep` [N] is True, in their order."""
        rows = np.flatnonzero(keep)
        lengths = np.diff(self.label_offsets)[rows]
        return Segments(
            youtube_ids=self.youtube_ids[rows],
            start_seconds=self.start_seconds[rows],
            end_seconds=self.end_seconds[rows],
            orig_split=self.orig_split[rows],
            label_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            label_indices=self.labels_of(rows),
            label_ids=self.label_ids,
        )


@dataclasses.dataclass(frozen=True)
class SubsetSummary:
    """What `select_audioset_subset` read, dropped and wrote; `format()` is the printed summary."""

    rows_per_file: dict[str, int]  # Segment rows read per CSV.
    duplicates: int  # Rows whose YouTube id an earlier row already had (the first is kept).
    unlabelled: int  # Rows without any label.
    in_audiocaps: int  # Rows removed because AudioCaps uses the clip.
    per_label: int
    step: int
    test_per_label: int
    labels_present: int  # Labels with at least one available clip.
    labels_full: int  # Labels that reached `per_label`.
    split_sizes: dict[str, int]  # train/valid/test -> clips.
    output: pathlib.Path

    def format(self) -> str:
        read = ", ".join(f"{name} {count}" for name, count in self.rows_per_file.items())
        selected = sum(self.split_sizes.values())
        splits = ", ".join(f"{split} {count}" for split, count in self.split_sizes.items())
        return "\n".join(
            (
                f"read {sum(self.rows_per_file.values())} segments ({read}); skipped {self.duplicates} "
                f"duplicate YouTube ids and {self.unlabelled} rows without labels",
                f"removed {self.in_audiocaps} segments whose clip AudioCaps uses",
                f"selected {selected} clips: {self.labels_full} of {self.labels_present} labels reached "
                f"{self.per_label} clips (step {self.step}), the other {self.labels_present - self.labels_full} "
                "have all their clips",
                f"split: {splits} ({self.test_per_label} clips per label on each held-out side)",
                f"wrote {self.output}/{{train,valid,test}}.jsonl, {prepare.ONTOLOGY_FILE}, {REPORT_FILE}, "
                f"{PLOT_FILE}",
            )
        )


# ----------------------------------------------------------------------------------------------------------
# Reading AudioSet segment lists and AudioCaps ids.
# ----------------------------------------------------------------------------------------------------------


def segment_list_of(path: str | os.PathLike) -> str:
    """The segment list (`orig_split`) a CSV holds, from its file name, e.g. eval_segments.csv -> "eval"."""
    stem = pathlib.Path(path).stem
    if stem not in SEGMENT_LISTS:
        raise cli.UserError(
            f"Cannot tell which AudioSet segment list {path} is from its name (it decides the download folder "
            "`prepare audioset-small` looks in).",
            f"rename it to one of {', '.join(f'{name}.csv' for name in SEGMENT_LISTS)}",
        )
    return SEGMENT_LISTS[stem]


def read_segments(
    paths: Sequence[str | os.PathLike], ontology: Ontology
) -> tuple[Segments, dict[str, int], int, int]:
    """Reads AudioSet segment CSVs into one `Segments`, keeping the first row of each YouTube id.

    Handles the real files' quirks: `#` comment lines, a space after each comma, the quoted label list.
    A file named unlike a segment list, missing, not UTF-8 or not CSV, a row whose field count or times do not
    parse, or that names a label missing from the ontology, raises `cli.UserError` naming file and line. Later
    rows of a YouTube id already read (AudioSet lists each clip once) are counted and logged with a few ids.

    Returns:
      (segments, rows read per file name, duplicate rows skipped, rows without labels skipped).
    """
    rows = _SegmentRows(ontology)
    rows_per_file = {}
    paths = [pathlib.Path(path) for path in paths]
    segment_lists = [segment_list_of(path) for path in paths]  # every name checked before any reading
    for path, segment_list in zip(paths, segment_lists, strict=True):
        rows_per_file[path.name] = _read_segment_file(path, segment_list, rows)
    rows.warn_duplicates()
    return rows.segments(), rows_per_file, len(rows.duplicates), rows.unlabelled


@dataclasses.dataclass
class _SegmentRows:
    """The rows kept so far over all segment CSVs (the first of each YouTube id), and what was skipped."""

    ontology: Ontology
    youtube_ids: list[str] = dataclasses.field(default_factory=list)
    times: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    orig_split: list[str] = dataclasses.field(default_factory=list)
    offsets: list[int] = dataclasses.field(default_factory=lambda: [0])
    indices: list[int] = dataclasses.field(default_factory=list)
    first_seen: dict[str, str] = dataclasses.field(default_factory=dict)  # YouTube id -> file:line kept
    duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, file:line) later
    unlabelled: int = 0
    label_index: dict[str, int] = dataclasses.field(init=False)  # label id -> column

    def __post_init__(self) -> None:
        self.label_index = {mid: i for i, mid in enumerate(self.ontology.names)}

    def add(self, record: list[str], where: str, segment_list: str) -> None:
        """Keeps one CSV record of `segment_list`, unless its id was read before or it has no labels."""
        youtube_id, times_of_row, mids = _parse_segment(record, where)
        if youtube_id in self.first_seen:
            self.duplicates.append((youtube_id, where))
            return
        if not mids:
            self.unlabelled += 1
            return
        unknown = [mid for mid in mids if mid not in self.label_index]
        if unknown:
            raise cli.UserError(
                f"{where} has label {unknown[0]!r}, which is not in the ontology {self.ontology.source}.",
                "pass the ontology.json released with these segment lists to --ontology",
            )
        self.first_seen[youtube_id] = where
        self.times.append(times_of_row)
        self.youtube_ids.append(youtube_id)
        self.orig_split.append(segment_list)
        self.indices.extend(self.label_index[mid] for mid in mids)
        self.offsets.append(len(self.indices))

    def warn_duplicates(self) -> None:
        """Logs how many rows repeated an id, with a few of them, so a mixed-up file list shows."""
        if not self.duplicates:
            return
        shown = ", ".join(
            f"{ytid} ({where}, first at {self.first_seen[ytid]})"
            for ytid, where in self.duplicates[:_IDS_SHOWN]
        )
        logging.warning(
            "%d segment rows repeat a YouTube id read before (AudioSet lists each clip once); only the first row "
            "of each is used: %s%s",
            len(self.duplicates),
            shown,
            f" and {len(self.duplicates) - _IDS_SHOWN} more" if len(self.duplicates) > _IDS_SHOWN else "",
        )

    def segments(self) -> Segments:
        """The kept rows as arrays, in reading order."""
        start_end = np.asarray(self.times, dtype=np.float64).reshape(-1, 2)
        return Segments(
            youtube_ids=np.asarray(self.youtube_ids, dtype=str),
            start_seconds=start_end[:, 0],
            end_seconds=start_end[:, 1],
            orig_split=np.asarray(self.orig_split, dtype=str),
            label_offsets=np.asarray(self.offsets, dtype=np.int64),
            label_indices=np.asarray(self.indices, dtype=np.int32),
            label_ids=tuple(self.ontology.names),
        )


def _read_segment_file(path: pathlib.Path, segment_list: str, rows: _SegmentRows) -> int:
    """Adds the records of one segment CSV to `rows`; returns how many records it has."""
    if not path.is_file():
        raise cli.UserError(
            f"AudioSet segment list {path} does not exist.",
            f"download it from {AUDIOSET_DOWNLOAD}, or correct the path given to --segments",
        )
    count = 0
    line_number = [0]  # Of the line the reader last took, for error messages.
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for record in csv.reader(_data_lines(f, line_number), skipinitialspace=True):
                if record:
                    count += 1
                    rows.add(record, f"{path}:{line_number[0]}", segment_list)
    except (UnicodeDecodeError, csv.Error) as error:
        raise cli.UserError(
            f"{path}:{line_number[0] + 1} is not a UTF-8 CSV line ({error}).", _RESTORE
        ) from error
    return count


def _parse_segment(record: list[str], where: str) -> tuple[str, tuple[float, float], list[str]]:
    """(YouTube id, (start, end) seconds, label ids in order without repeats) of one segment CSV record."""
    if len(record) != _SEGMENT_FIELDS:
        raise cli.UserError(
            f"{where} has {len(record)} fields, expected {_SEGMENT_FIELDS} (YTID, start_seconds, end_seconds, "
            '"labels").',
            _RESTORE,
        )
    youtube_id, start, end, labels = record
    try:
        seconds = (float(start), float(end))
    except ValueError:
        seconds = (math.nan, math.nan)
    if not 0 <= seconds[0] < seconds[1] < math.inf:
        raise cli.UserError(
            f"{where} has start/end {start!r}, {end!r}; expected seconds with 0 <= start < end.", _RESTORE
        )
    if not youtube_id:
        raise cli.UserError(f"{where} has no YouTube id.", _RESTORE)
    mids = [mid for mid in dict.fromkeys(label.strip() for label in labels.split(",")) if mid]
    return youtube_id, seconds, mids


def _data_lines(lines: Iterable[str], line_number: list[int]) -> Iterable[str]:
    """The lines that are not `#` comments; keeps the current line's number in line_number[0]."""
    for number, line in enumerate(lines, 1):
        if not line.startswith("#"):
            line_number[0] = number
            yield line


def read_audiocaps_ids(audiocaps_path: str | os.PathLike) -> set[str]:
    """The YouTube ids of every AudioCaps clip in `<audiocaps_path>/{train,valid,test}.csv`."""
    folder = pathlib.Path(audiocaps_path)
    ids: set[str] = set()
    for split in prepare.AUDIOCAPS_SPLITS:
        path = folder / f"{split}.csv"
        fix = (
            "pass --exclude-audiocaps the folder holding AudioCaps' "
            f"{', '.join(f'{s}.csv' for s in prepare.AUDIOCAPS_SPLITS)} as released"
        )
        if not path.is_file():
            raise cli.UserError(f"{path} does not exist.", fix)
        try:
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if "youtube_id" not in (reader.fieldnames or ()):
                    raise cli.UserError(
                        f"{path} has columns {reader.fieldnames}, expected {list(prepare.AUDIOCAPS_COLUMNS)}.",
                        fix,
                    )
                ids.update(record["youtube_id"] for record in reader)
        except (UnicodeDecodeError, csv.Error) as error:
            raise cli.UserError(f"{path} is not a UTF-8 CSV ({error}).", fix) from error
    return ids


# ----------------------------------------------------------------------------------------------------------
# Selection and splitting (pure: arrays in, arrays out).
# ----------------------------------------------------------------------------------------------------------


def music_speech_preference(segments: Segments) -> np.ndarray:
    """int8 [N]: 0 for rows with neither Music nor Speech, 1 with exactly one of them, 2 with both."""
    music, speech = segments.label_ids.index(MUSIC_ID), segments.label_ids.index(SPEECH_ID)
    preference = np.zeros(segments.num_rows, dtype=np.int8)
    np.add.at(preference, segments.entry_rows[np.isin(segments.label_indices, (music, speech))], 1)
    return preference


def select_balanced(
    segments: Segments, per_label: int, step: int, seed: int, preference: np.ndarray
) -> np.ndarray:
    """The original's rarest-label-first greedy selection.

    Labels are served from a queue ordered by total count, rarest first (ties: ontology order). A label that
    already has `per_label` selected clips, or whose clips are all selected, is dropped. A label with at most
    `per_label` clips in total gets all its unselected clips at once. Any other label gets up to
    `min(step, per_label - selected)` more, at random among its unselected clips with the lowest
    `preference` first (0 before 1 before 2), and goes back to the end of the queue if it got any. A
    selected clip counts for every label it carries, so labels that co-occur with rarer ones (parents such as
    Vehicle, Music, Speech) pass `per_label` through clips picked for those; a label's own picks never do.

    `per_label` and `step` are at least 1. The random choice is made once: each label's clips are ordered by (preference, seeded random key), and a
    label takes the first unselected clips of that order. That is a uniform draw without replacement among
    the unselected clips of the best preference class, and it lets a per-label cursor skip clips already
    selected, so the whole run touches each (clip, label) entry about once: O(E log E) for the sort.

    Returns:
      int32 [N]: for each selected row the label on whose turn it was picked, -1 for rows not selected.
    """
    num_labels = len(segments.label_ids)
    row_of_entry = segments.entry_rows
    random_keys = np.random.default_rng(seed).random(len(row_of_entry))
    order = np.lexsort((random_keys, preference[row_of_entry], segments.label_indices))
    rows_by_label = row_of_entry[order]  # --> [E], grouped by label, best clips first within a label
    total = segments.label_counts()
    label_end = np.cumsum(total)
    cursor = label_end - total  # rows_by_label[label start:cursor[label]] are all selected.

    picked_for = np.full(segments.num_rows, -1, dtype=np.int32)
    counts = np.zeros(num_labels, dtype=np.int64)
    queue = collections.deque(int(label) for label in np.argsort(total, kind="stable") if total[label] > 0)
    while queue:
        label = queue.popleft()
        if counts[label] >= per_label:
            continue
        take_all = total[label] <= per_label
        limit = total[label] if take_all else min(step, per_label - counts[label])
        rows, cursor[label] = _first_unselected(
            rows_by_label, cursor[label], label_end[label], limit, picked_for
        )
        if rows.size == 0:
            continue
        picked_for[rows] = label
        counts += segments.label_counts(rows)
        if not take_all:
            queue.append(label)
    return picked_for


def _first_unselected(
    rows_by_label: np.ndarray, start: int, end: int, limit: int, picked_for: np.ndarray
) -> tuple[np.ndarray, int]:
    """Up to `limit` rows of rows_by_label[start:end] not yet picked (-1), in order, and the new cursor.

    Scans in growing windows so a label whose early clips were taken by other labels costs one pass.
    """
    found, position, window = [], start, max(64, 4 * limit)
    while position < end and limit > 0:
        candidates = rows_by_label[position : min(end, position + window)]
        free = np.flatnonzero(picked_for[candidates] < 0)[:limit]
        if free.size == limit:  # Stop right after the last one taken: the rest may serve the next turn.
            position += int(free[-1]) + 1
        else:
            position += candidates.size
        found.append(candidates[free])
        limit -= free.size
        window *= 2
    return (np.concatenate(found) if found else np.zeros(0, np.int64)), position


def balanced_split(
    segments: Segments,
    pool: np.ndarray,
    per_label: int,
    rng: np.random.Generator,
    keep_in_train: np.ndarray | None = None,
) -> np.ndarray:
    """The original's `balanced_split`: moves `per_label` clips of every label to the held-out side.

    For each label (ontology order) with at least `per_label` clips in `pool`, draws `per_label` of them
    (fewer when `keep_in_train` leaves fewer) without replacement; a clip may be drawn for several labels.

    Args:
      pool: bool [N], the rows to split.
      keep_in_train: bool [N], rows that must stay on the training side; None for none.

    Returns:
      bool [N]: the held-out rows (a subset of `pool`); the training side is `pool & ~held_out`.
    """
    held_out = np.zeros(segments.num_rows, dtype=bool)
    if per_label == 0:
        return held_out
    in_pool = pool[segments.entry_rows]
    row_of_entry, labels = segments.entry_rows[in_pool], segments.label_indices[in_pool]
    order = np.argsort(labels, kind="stable")
    rows_by_label = row_of_entry[order]  # --> [entries of pool], grouped by label, row order within
    ends = np.cumsum(np.bincount(labels, minlength=len(segments.label_ids)))
    starts = ends - np.diff(ends, prepend=0)
    eligible = ~keep_in_train if keep_in_train is not None else np.ones(segments.num_rows, dtype=bool)
    for start, end in zip(starts, ends, strict=True):
        if end - start < per_label:
            continue
        candidates = rows_by_label[start:end]
        candidates = candidates[eligible[candidates]]
        held_out[rng.choice(candidates, min(per_label, candidates.size), replace=False)] = True
    return held_out


def split_train_valid_test(
    segments: Segments, selected: np.ndarray, per_label: int, seed: int
) -> dict[str, np.ndarray]:
    """`balanced_split` twice with one seeded generator: test out of the selection, then valid out of the rest.

    Returns:
      split name (prepare.AUDIOSET_SMALL_SPLITS) -> bool [N] mask; the three are disjoint, their union is
      `selected`.
    """
    rng = np.random.default_rng(seed)
    test = balanced_split(segments, selected, per_label, rng)
    valid = balanced_split(segments, selected & ~test, per_label, rng)
    masks = {"train": selected & ~test & ~valid, "valid": valid, "test": test}
    return {split: masks[split] for split in prepare.AUDIOSET_SMALL_SPLITS}


# ----------------------------------------------------------------------------------------------------------
# The command: read, select, split, write.
# ----------------------------------------------------------------------------------------------------------


def select_audioset_subset(
    segment_paths: Sequence[str | os.PathLike],
    ontology_path: str | os.PathLike,
    audiocaps_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    per_label: int = 1000,
    step: int = 10,
    test_per_label: int = 10,
    seed: int = 42,
) -> SubsetSummary:
    """Selects and splits a balanced AudioSet subset and writes the `prepare audioset-small` annotations.

    Writes to `output`: `{train,valid,test}.jsonl` (rows sorted by YouTube id, keys
    `prepare.AUDIOSET_SMALL_KEYS`), a copy of the ontology, `subset_report.csv` (`REPORT_COLUMNS` per
    label) and `subset_labels.png`.
    """
    # Settings, output, ontology and AudioCaps ids are checked before the (minutes-long) read of the segment
    # lists, and nothing is written before all of it has been read.
    for flag, value, minimum, default in (
        ("--per-label", per_label, 1, 1000),
        ("--step", step, 1, 10),
        ("--test-per-label", test_per_label, 0, 10),
        ("--seed", seed, 0, 42),
    ):
        if value < minimum:
            raise cli.UserError(
                f"{flag} must be at least {minimum}, got {value}.", f"pass {flag}={default} (the default)"
            )
    output = pathlib.Path(output)
    if output.exists() and not output.is_dir():
        raise cli.UserError(
            f"--output {output} is a file.", "pass a folder for the annotations (made if absent)"
        )
    ontology = _load_ontology(ontology_path)
    audiocaps_ids = read_audiocaps_ids(audiocaps_path)
    listed, rows_per_file, duplicates, unlabelled = read_segments(segment_paths, ontology)
    if listed.num_rows == 0:
        raise cli.UserError(
            f"{', '.join(map(str, segment_paths))} hold no labelled segment rows.",
            f"pass AudioSet's segment lists from {AUDIOSET_DOWNLOAD} to --segments",
        )
    in_audiocaps = np.isin(listed.youtube_ids, np.asarray(sorted(audiocaps_ids), str))
    segments = listed.take(~in_audiocaps)
    logging.info("%d segments read, %d removed as AudioCaps clips", listed.num_rows, int(in_audiocaps.sum()))

    picked_for = select_balanced(segments, per_label, step, seed, music_speech_preference(segments))
    selected = picked_for >= 0
    splits = split_train_valid_test(segments, selected, test_per_label, seed)

    output.mkdir(parents=True, exist_ok=True)
    for split, mask in splits.items():
        _write_annotations(output / f"{split}.jsonl", segments, np.flatnonzero(mask))
    shutil.copyfile(ontology_path, output / prepare.ONTOLOGY_FILE)
    available = segments.label_counts()
    columns = {
        "listed": listed.label_counts(),
        "available": available,
        "selected": segments.label_counts(np.flatnonzero(selected)),
        "picked": np.bincount(picked_for[selected], minlength=len(segments.label_ids)),
        **{split: segments.label_counts(np.flatnonzero(mask)) for split, mask in splits.items()},
    }
    _write_report(output / REPORT_FILE, ontology, segments.label_ids, columns)
    _plot_distribution(output / PLOT_FILE, columns["available"], columns["selected"], per_label)
    present = available > 0
    return SubsetSummary(
        rows_per_file=rows_per_file,
        duplicates=duplicates,
        unlabelled=unlabelled,
        in_audiocaps=int(in_audiocaps.sum()),
        per_label=per_label,
        step=step,
        test_per_label=test_per_label,
        labels_present=int(present.sum()),
        labels_full=int((columns["selected"][present] >= per_label).sum()),
        split_sizes={split: int(mask.sum()) for split, mask in splits.items()},
        output=output,
    )


def _load_ontology(path: str | os.PathLike) -> Ontology:
    """The `--ontology`, which must be AudioSet's: the selection prefers clips without Music and Speech."""
    fix = "pass AudioSet's ontology.json (https://github.com/audioset/ontology) to --ontology"
    try:
        ontology = Ontology.load(path)
    except (ValueError, FileNotFoundError) as error:  # UnicodeDecodeError is a ValueError
        raise cli.UserError(f"--ontology: {error}", fix) from error
    absent = [mid for mid in (MUSIC_ID, SPEECH_ID) if mid not in ontology]
    if absent:
        raise cli.UserError(f"--ontology {path} lacks the labels {absent} (Music, Speech).", fix)
    return ontology


def _write_annotations(path: pathlib.Path, segments: Segments, rows: np.ndarray) -> None:
    rows = rows[np.argsort(segments.youtube_ids[rows], kind="stable")]
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            labels = segments.label_indices[segments.label_offsets[row] : segments.label_offsets[row + 1]]
            values = (
                str(segments.youtube_ids[row]),
                float(segments.start_seconds[row]),
                float(segments.end_seconds[row]),
                [segments.label_ids[label] for label in labels],
                str(segments.orig_split[row]),
            )
            f.write(json.dumps(dict(zip(prepare.AUDIOSET_SMALL_KEYS, values, strict=True))) + "\n")


def _write_report(
    path: pathlib.Path, ontology: Ontology, label_ids: Iterable[str], columns: dict[str, np.ndarray]
) -> None:
    assert tuple(columns) == REPORT_COLUMNS[2:], columns.keys()
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv_cells.Writer(f)
        writer.writerow(REPORT_COLUMNS)
        for label, mid in enumerate(label_ids):
            if columns["listed"][label]:
                writer.writerow(
                    (mid, ontology.name(mid), *(int(column[label]) for column in columns.values()))
                )


def _plot_distribution(
    path: pathlib.Path, available: np.ndarray, selected: np.ndarray, per_label: int
) -> None:
    """Clips per label before (available) and after selection, labels ordered by availability."""
    order = np.argsort(-available, kind="stable")
    order = order[available[order] > 0]
    figure, axis = plt.subplots(figsize=(10, 4))
    ranks = np.arange(1, order.size + 1)
    axis.step(ranks, available[order], where="mid", label="available (AudioCaps clips removed)")
    axis.step(ranks, selected[order], where="mid", label="selected")
    axis.axhline(per_label, color="grey", linestyle="--", linewidth=1, label=f"desired ({per_label})")
    axis.set(yscale="log", xlabel="label rank by available clips", ylabel="clips carrying the label")
    axis.set_title("AudioSet label distribution before and after the balanced selection")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
