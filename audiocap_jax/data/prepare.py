"""Turns downloaded datasets into AudioFolders: per split, a folder of audio files plus `metadata.jsonl`.

Run `python -m audiocap_jax.data.prepare COMMAND --help` for the options of each command:

  clotho ROOT            Clotho v2.1: writes ROOT/audiofolder/<split>/metadata.jsonl (audio stays in place).
  limit-clotho-split FOLDER SPLIT --limit N --seed S
                         keeps a seeded sample of N clips of a Clotho split, moves the rest into development.
  audiocaps ...          AudioCaps CSVs + an AudioSet download -> OUTPUT/{train,valid,test}/.
  audioset-small ...     AudioSet subset annotations + an AudioSet download -> OUTPUT/{train,valid,test}/.
  select-audioset-subset ...
                         AudioSet segment CSVs -> label-balanced subset annotations without AudioCaps clips
                         (what audioset-small reads; see data/audioset_subset.py).
  find-corrupted FOLDER  decodes every audio file under FOLDER and lists those that fail.

An AudioFolder split is `<folder>/<split>/` holding audio files and `metadata.jsonl`: one JSON object per
clip with `file_name` (relative to the split folder) and the reference captions `caption_1`, `caption_2`,
... in order (AudioSet: its `labels` and the keyword caption as `caption_1`). Nothing is dropped silently:
each command writes `<folder>/report_<split>.csv` (`file_name,problem`; only the header when all is well)
and logs the count. The layouts and the row schemas are documented in docs/data.md.

Exit status of the CLI (audiocap_jax/cli.py): 0 done; 3 `find-corrupted` found files that do not decode; 2 bad
arguments or input (missing files, a refused limit), with `Error:` (the reason) and `fix:` on stderr.
"""

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import errno
import functools
import io
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm
from absl import logging
from etils import epath

from audiocap_jax import audio, cli, csv_cells
from audiocap_jax.ontology import Ontology

METADATA_FILE = "metadata.jsonl"
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")

CLOTHO_CAPTIONED_SPLITS = ("development", "validation", "evaluation")
CLOTHO_SPLITS = (*CLOTHO_CAPTIONED_SPLITS, "test")
# Columns of Clotho v2.1's clotho_metadata_<split>.csv (only checked to exist; written by test and demo data).
CLOTHO_METADATA_COLUMNS = (
    "file_name",
    "keywords",
    "sound_id",
    "sound_link",
    "start_end_samples",
    "manufacturer",
    "license",
)  # test: audio only, no captions released.
CLOTHO_NUM_CAPTIONS = 5
CLOTHO_CAPTION_COLUMNS = ("file_name", *(f"caption_{i}" for i in range(1, CLOTHO_NUM_CAPTIONS + 1)))
CLOTHO_LIMITABLE_SPLITS = ("validation", "evaluation")  # development receives the clips limit moves out.

AUDIOCAPS_SPLITS = ("train", "valid", "test")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIOSET_SMALL_SPLITS = ("train", "valid", "test")
AUDIOSET_SMALL_KEYS = ("youtube_id", "start_seconds", "end_seconds", "labels", "orig_split")
ONTOLOGY_FILE = "ontology.json"

# The AudioSet scraper (scripts/download_audioset.sh) fills <audioset>/audios/<list>/<youtube_id>.<fmt>, one
# folder per official segment list. A clip present in several folders is taken from the first in this order
# (other folders follow alphabetically); AudioSet-small rows prefer their own `orig_split` folder.
AUDIOSET_DOWNLOAD_FOLDERS = ("train_unbalanced", "train_balanced", "eval")

LINK_MODES = ("copy", "hardlink", "symlink")

MISSING_AUDIO = "missing audio"
EMPTY_AUDIO = "empty audio file (0 bytes)"
UNLISTED_AUDIO = "audio file without a caption row"
DUPLICATE_ROW = "duplicate row (the first one is kept)"
NO_CAPTION = "the metadata row has no caption (every caption is empty)"
UNREADABLE_ENTRY = (
    "unreadable directory entry"  # + the OS reason: a symlink loop, a dangling link, permissions
)
_BOM = b"\xef\xbb\xbf"

_CAPTION_KEY = re.compile(r"caption_(\d+)")
_MAX_NAMES_LOGGED = 10
_COPY_THREADS = 8  # Copying is I/O bound: threads overlap the waits without a process pool.


@dataclasses.dataclass(frozen=True)
class Problem:
    """A clip that could not be used, as written to a report: its file name and what is wrong."""

    file_name: str
    problem: str


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """What a prepare command wrote for one split."""

    split: str
    num_clips: int  # Rows written to metadata.jsonl.
    problems: tuple[Problem, ...]  # Also written to `report`.
    report: pathlib.Path


@dataclasses.dataclass(frozen=True)
class LimitResult:
    """Outcome of `limit_clotho_split`; `moved` is empty when the split already had `limit` clips."""

    kept: tuple[str, ...]
    moved: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------------
# AudioFolder files: metadata.jsonl and the problem reports.
# ----------------------------------------------------------------------------------------------------------


def read_metadata(split_dir: epath.PathLike) -> list[dict[str, Any]]:
    """Reads `<split_dir>/metadata.jsonl`, one dict per clip, in file order.

    `split_dir` may be a bucket URL (`gs://...`): a TFDS build reads its --manual_dir through etils.epath.
    """
    path = epath.Path(split_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Create it with `python -m audiocap_jax.data.prepare` (see docs/data.md)."
        )
    return list(_read_jsonl(path))


def write_metadata(split_dir: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
    """Writes `<split_dir>/metadata.jsonl` (UTF-8, unescaped) atomically: a crash leaves the old file."""
    path = pathlib.Path(split_dir) / METADATA_FILE
    _write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def captions_of(row: Mapping[str, Any]) -> list[str]:
    """The reference captions of a metadata row: `caption_1`, `caption_2`, ... in numeric order."""
    numbered = sorted((int(match.group(1)), key) for key in row if (match := _CAPTION_KEY.fullmatch(key)))
    return [row[key] for _, key in numbered]


def report_path(folder: str | os.PathLike, split: str) -> pathlib.Path:
    """Where a prepare command lists the unusable clips of `split`."""
    return pathlib.Path(folder) / f"report_{split}.csv"


@contextlib.contextmanager
def _open_text(path: pathlib.Path | epath.Path) -> Iterator[Any]:
    """Opens a UTF-8 source file (CSV or jsonl) the same way for every layout: a byte-order mark is skipped
    and reported, undecodable bytes raise a ValueError naming the file and the conversion to run.

    Decodes a binary stream itself: epath's text mode (bucket files) takes no encoding or newline argument.
    """
    with path.open("rb") as f:
        if f.read(len(_BOM)) == _BOM:
            logging.warning("%s starts with a UTF-8 byte-order mark (BOM); it is ignored.", path)
    try:
        with io.TextIOWrapper(path.open("rb"), encoding="utf-8-sig", newline="") as f:
            yield f
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 ({error}). Convert it, e.g. `iconv -f latin1 -t utf-8`, or restore it from "
            "the dataset release."
        ) from error


def _read_csv(path: pathlib.Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row by header) of a CSV whose header must be `columns` (quoted commas, UTF-8)."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header != tuple(columns):
            raise ValueError(f"{path} has columns {list(header)}, expected {list(columns)}.")
        for record in reader:
            if len(record) != len(header):
                raise ValueError(
                    f"{path}:{reader.line_num} has {len(record)} fields, expected {len(header)}; a "
                    "caption holding a comma must be quoted. Restore the file from the dataset release."
                )
            yield reader.line_num, dict(zip(header, record, strict=True))


def _read_jsonl(path: pathlib.Path | epath.Path) -> Iterator[dict[str, Any]]:
    with _open_text(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{line_number} is not a JSON object ({error}). Restore the file from the dataset "
                    "release or re-run the prepare command that wrote it."
                ) from error


def _write_atomically(path: pathlib.Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_problems(path: str | os.PathLike, problems: Iterable[Problem]) -> None:
    """`file_name,problem`, one row per file left out; file names a spreadsheet would run as a formula get a
    leading `'` (`csv_cells`)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv_cells.Writer(f)
        writer.writerow([field.name for field in dataclasses.fields(Problem)])
        writer.writerows((problem.file_name, problem.problem) for problem in problems)


def _finish_split(
    folder: pathlib.Path, split: str, rows: list[dict[str, Any]], problems: list[Problem]
) -> SplitSummary:
    """Writes a split's metadata.jsonl and report, and logs what was left out.

    An empty split is written, and warned about the same way for every layout.
    """
    split_dir = folder / split
    write_metadata(split_dir, rows)
    report = report_path(folder, split)
    write_problems(report, problems)
    logging.info("%s: %d clips written to %s", split, len(rows), split_dir / METADATA_FILE)
    if not rows:
        logging.warning(
            "%s: the split is empty (%d clips left out, listed in %s).", split, len(problems), report
        )
    if problems:
        names = ", ".join(f"{p.file_name!r} ({p.problem})" for p in problems[:_MAX_NAMES_LOGGED])
        more = len(problems) - _MAX_NAMES_LOGGED
        logging.warning(
            "%s: %d clips left out, listed in %s: %s%s",
            split,
            len(problems),
            report,
            names,
            f" and {more} more" if more > 0 else "",
        )
    return SplitSummary(split=split, num_clips=len(rows), problems=tuple(problems), report=report)


def _require(paths: Sequence[pathlib.Path], what: str) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"{what} is incomplete; missing: {', '.join(missing)}. See docs/data.md for the expected layout."
        )


def _has_no_caption(row: Mapping[str, Any]) -> bool:
    """A row with caption keys that are all empty; every layout leaves it out as `NO_CAPTION` (rows without
    caption keys, e.g. Clotho's test split, are audio-only and kept)."""
    captions = captions_of(row)
    return bool(captions) and not any(isinstance(c, str) and c.strip() for c in captions)


def _scan_audio_files(directory: pathlib.Path) -> tuple[set[str], dict[str, str]]:
    """Names of the audio files in `directory`, and {name: reason} of audio entries that cannot be read.

    A symlink loop, a dangling link or a file without read permission is reported like any unusable clip
    (`UNREADABLE_ENTRY`) instead of stopping the scan.
    """
    usable, unreadable = set(), {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            try:
                if entry.is_dir():
                    continue
                os.stat(entry.path)  # follows links: ELOOP for a loop, ENOENT for a dangling link
                if not os.access(entry.path, os.R_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            except OSError as error:
                unreadable[entry.name] = f"{UNREADABLE_ENTRY} ({error.strerror})"
                continue
            usable.add(entry.name)
    return usable, unreadable


# ----------------------------------------------------------------------------------------------------------
# Clotho.
# ----------------------------------------------------------------------------------------------------------


def prepare_clotho(root: str | os.PathLike) -> dict[str, SplitSummary]:
    """Writes `metadata.jsonl` for each split of Clotho v2.1 under `root` (see docs/data.md for the layout).

    Caption rows are written unchanged (`file_name`, `caption_1`..`caption_5`); the test split lists its audio
    files. Rows without an audio file, audio files without a row and duplicate rows are left out and reported.
    """
    root = pathlib.Path(root)
    audiofolder = root / "audiofolder"
    _require(
        [root / f"clotho_captions_{split}.csv" for split in CLOTHO_CAPTIONED_SPLITS]
        + [root / f"clotho_metadata_{split}.csv" for split in CLOTHO_SPLITS]
        + [audiofolder / split for split in CLOTHO_SPLITS],
        f"The Clotho v2.1 folder {root}",
    )
    summaries = {}
    for split in CLOTHO_SPLITS:
        split_dir = audiofolder / split
        audio_names, unreadable = _scan_audio_files(split_dir)
        if split in CLOTHO_CAPTIONED_SPLITS:
            rows, problems = _match_clotho_rows(
                _read_clotho_captions(root / f"clotho_captions_{split}.csv"),
                split_dir,
                audio_names,
                unreadable,
            )
        else:
            rows = [{"file_name": name} for name in sorted(audio_names)]
            problems = [Problem(name, reason) for name, reason in sorted(unreadable.items())]
        summaries[split] = _finish_split(audiofolder, split, rows, problems)
    return summaries


def _read_clotho_captions(path: pathlib.Path) -> list[dict[str, str]]:
    """Reads a `clotho_captions_<split>.csv` (quoted commas, UTF-8) into rows keyed by its header."""
    return [row for _, row in _read_csv(path, CLOTHO_CAPTION_COLUMNS)]


def _match_clotho_rows(
    rows: list[dict[str, str]], split_dir: pathlib.Path, audio_names: set[str], unreadable: Mapping[str, str]
) -> tuple[list[dict[str, str]], list[Problem]]:
    """Keeps the caption rows that have an audio file; reports the others and audio files without a row.

    Every row and every unreadable or unlisted audio file gets exactly one outcome, so kept + reported =
    rows + audio files without a row.
    """
    kept, problems, listed = [], [], set()
    for row in rows:
        name = row["file_name"]
        if name in listed:
            problems.append(Problem(name, DUPLICATE_ROW))
        elif name in unreadable:
            problems.append(Problem(name, unreadable[name]))
        elif _has_no_caption(row):
            problems.append(Problem(name, NO_CAPTION))
        elif not (split_dir / name).is_file():
            problems.append(Problem(name, MISSING_AUDIO))
        else:
            kept.append(row)
        listed.add(name)
    problems += [Problem(name, UNLISTED_AUDIO) for name in sorted(audio_names - listed)]
    problems += [Problem(name, reason) for name, reason in sorted(unreadable.items()) if name not in listed]
    return kept, problems


def limit_history_path(audiofolder: str | os.PathLike, split: str) -> pathlib.Path:
    """The JSON-lines record of every `limit_clotho_split` run that moved clips out of `split`."""
    return pathlib.Path(audiofolder) / f"limit_{split}.jsonl"


def limit_clotho_split(audiofolder: str | os.PathLike, split: str, limit: int, seed: int) -> LimitResult:
    """Keeps a seeded sample of `limit` clips of a Clotho split; moves the rest (files, rows) to development.

    The sample depends only on the split's file names and `seed` (sorted by name, then drawn with
    `np.random.default_rng(seed)`), not on the row order. Re-running is safe: a split that already has `limit`
    clips is left alone, and a run interrupted half-way finishes the same moves (files already in development
    are not moved twice, rows are not duplicated). Each run that moves clips appends to `limit_<split>.jsonl`.
    """
    if split not in CLOTHO_LIMITABLE_SPLITS:
        raise ValueError(f"Cannot limit split {split!r}; choose one of {list(CLOTHO_LIMITABLE_SPLITS)}.")
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    audiofolder = pathlib.Path(audiofolder)
    split_dir, development_dir = audiofolder / split, audiofolder / "development"
    rows = read_metadata(split_dir)
    names = [row["file_name"] for row in rows]
    if len(rows) == limit:
        logging.info("%s already has %d clips; nothing to move.", split_dir, limit)
        return LimitResult(kept=tuple(names), moved=())
    if limit > len(rows):
        history = limit_history_path(audiofolder, split)
        hint = (
            f" Earlier runs moved clips out (see {history}); to start over, re-extract Clotho and run "
            "`prepare clotho`."
            if history.exists()
            else ""
        )
        raise ValueError(
            f"--limit {limit} is larger than the {len(rows)} clips of {split_dir}; nothing was moved. "
            f"Use a limit of at most {len(rows)}.{hint}"
        )
    by_name = sorted(range(len(rows)), key=names.__getitem__)
    keep = {by_name[i] for i in np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)}
    kept = [row for i, row in enumerate(rows) if i in keep]
    moving = [row for i, row in enumerate(rows) if i not in keep]

    development_rows = read_metadata(development_dir)
    development_names = {row["file_name"] for row in development_rows}
    # Check every move before making any, so a conflict leaves both folders untouched.
    conflicts = []
    for row in moving:
        name = row["file_name"]
        source, target = split_dir / name, development_dir / name
        if source.exists() and (target.exists() or name in development_names):
            conflicts.append(f"{name!r} is in both {split_dir} and {development_dir}")
        elif not source.exists() and not target.exists():
            conflicts.append(f"{name!r} is listed in {split_dir / METADATA_FILE} but is in neither folder")
    if conflicts:
        raise ValueError(
            f"Cannot move clips out of {split_dir}: {'; '.join(conflicts)}. Nothing was moved. Re-extract "
            "Clotho and run `prepare clotho` to start from a consistent state."
        )
    for row in moving:
        source = split_dir / row["file_name"]
        if source.exists():  # Otherwise an interrupted run already moved it.
            shutil.move(source, development_dir / row["file_name"])
    write_metadata(
        development_dir, development_rows + [r for r in moving if r["file_name"] not in development_names]
    )
    write_metadata(split_dir, kept)

    moved = tuple(row["file_name"] for row in moving)
    with limit_history_path(audiofolder, split).open("a", encoding="utf-8") as f:
        record = {"split": split, "limit": limit, "seed": seed, "moved_to_development": list(moved)}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    logging.info("%s: kept %d clips, moved %d into %s.", split_dir, len(kept), len(moved), development_dir)
    return LimitResult(kept=tuple(row["file_name"] for row in kept), moved=moved)


# ----------------------------------------------------------------------------------------------------------
# AudioSet downloads: AudioCaps and the AudioSet subset both take their clips from one.
# ----------------------------------------------------------------------------------------------------------


def index_audioset_download(
    audioset_path: str | os.PathLike, audio_format: str
) -> dict[str, list[pathlib.Path]]:
    """Maps each YouTube id found under `<audioset_path>/audios/*/` to its files, in folder preference order.

    Looks in every download folder (the original looked only in train_unbalanced and lost the clips that the
    other segment lists hold). Hidden files (the scraper's partial downloads) are ignored.
    """
    audios = pathlib.Path(audioset_path) / "audios"
    if not audios.is_dir():
        raise FileNotFoundError(
            f"{audios} does not exist. --audioset-path must hold audios/<segment list>/<youtube_id>.<fmt> as "
            "written by scripts/download_audioset.sh (see docs/data.md)."
        )
    folders = sorted(
        (entry.name for entry in os.scandir(audios) if entry.is_dir()),
        key=lambda name: (
            AUDIOSET_DOWNLOAD_FOLDERS.index(name)
            if name in AUDIOSET_DOWNLOAD_FOLDERS
            else len(AUDIOSET_DOWNLOAD_FOLDERS),
            name,
        ),
    )
    suffix = f".{audio_format}"
    index: dict[str, list[pathlib.Path]] = {}
    for folder in folders:
        count = 0
        with os.scandir(audios / folder) as entries:
            for entry in entries:
                if entry.name.endswith(suffix) and not entry.name.startswith("."):
                    index.setdefault(entry.name[: -len(suffix)], []).append(pathlib.Path(entry.path))
                    count += 1
        logging.info("AudioSet download: %d %s files in %s", count, suffix, audios / folder)
    return index


def _locate_clip(
    index: Mapping[str, list[pathlib.Path]], youtube_id: str, preferred_folder: str | None = None
) -> tuple[pathlib.Path | None, str | None]:
    """(file, None) for the first non-empty download of a clip (preferred folder first) or (None, problem)."""
    candidates = sorted(index.get(youtube_id, []), key=lambda path: path.parent.name != preferred_folder)
    if not candidates:
        return None, MISSING_AUDIO
    sizes, unreadable = {}, ""
    for path in candidates:
        try:  # a symlink loop or dangling link in the download is an unusable clip, not a crash
            sizes[path] = path.stat().st_size
        except OSError as error:
            unreadable = f"{UNREADABLE_ENTRY} ({error.strerror})"
    non_empty = [path for path in candidates if sizes.get(path, 0) > 0]
    if non_empty:
        return non_empty[0], None
    return None, EMPTY_AUDIO if sizes else unreadable


def _place_one(source: pathlib.Path, target: pathlib.Path, link: str) -> None:
    """Copies or links one clip into an AudioFolder; a target already in place (an earlier run) is kept."""
    if os.path.lexists(target):
        if link == "symlink" and target.is_symlink() and os.readlink(target) == str(source.resolve()):
            return
        if link == "hardlink" and target.exists() and os.path.samefile(source, target):
            return
        if link == "copy" and not target.is_symlink() and target.stat().st_size == source.stat().st_size:
            return
        target.unlink()
    if link == "copy":
        shutil.copyfile(source, target)
    elif link == "hardlink":
        try:
            os.link(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            raise ValueError(
                f"Cannot hard-link {source} to {target}: they are on different filesystems. Use --link "
                "copy or --link symlink, or put --output on the download's filesystem."
            ) from error
    else:
        os.symlink(source.resolve(), target)


def _place_audio(pairs: Sequence[tuple[pathlib.Path, pathlib.Path]], link: str, split: str) -> None:
    if link not in LINK_MODES:
        raise ValueError(f"Unknown link mode {link!r}; choose one of {list(LINK_MODES)}.")
    with concurrent.futures.ThreadPoolExecutor(_COPY_THREADS) as pool:
        placed = pool.map(lambda pair: _place_one(*pair, link), pairs)
        for _ in tqdm.tqdm(placed, total=len(pairs), desc=f"{link} {split}", unit="clip"):
            pass


# (file_name, metadata row, source file or None, problem or None) of one clip of an annotation file.
_Clip = tuple[str, dict[str, Any], pathlib.Path | None, str | None]


def _build_splits(
    output: pathlib.Path,
    annotation_paths: Mapping[str, pathlib.Path],
    link: str,
    clips_of: Callable[[pathlib.Path], Iterable[_Clip]],
) -> dict[str, SplitSummary]:
    """Builds each split from its annotation file; the layouts differ only in how a file's rows become clips."""
    return {
        split: _build_split(output, split, clips_of(path), str(path), link)
        for split, path in annotation_paths.items()
    }


def _build_split(
    output: pathlib.Path, split: str, clips: Iterable[_Clip], source_description: str, link: str
) -> SplitSummary:
    """Places the found clips of one split, writes its metadata and report."""
    rows, pairs, problems = [], [], []
    for file_name, row, source, problem in clips:
        problem = problem or (NO_CAPTION if _has_no_caption(row) else None)
        if problem is not None:
            problems.append(Problem(file_name, problem))
        else:
            rows.append(row)
            pairs.append((source, output / split / file_name))
    if problems and not rows:
        raise FileNotFoundError(
            f"None of the {len(problems)} clips of {source_description} were found in the AudioSet download. "
            "Check --audioset-path (it must hold audios/<segment list>/<youtube_id>.<fmt>) and "
            "--audio-format."
        )
    (output / split).mkdir(parents=True, exist_ok=True)
    _place_audio(pairs, link, split)
    return _finish_split(output, split, rows, problems)


def prepare_audiocaps(
    audiocaps_path: str | os.PathLike,
    audioset_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    audio_format: str = "mp3",
    link: str = "copy",
    splits: Sequence[str] = AUDIOCAPS_SPLITS,
) -> dict[str, SplitSummary]:
    """Builds the AudioCaps AudioFolder from its CSVs and an AudioSet download.

    Rows are grouped per YouTube id (clips sorted by id, captions in CSV order); every caption is kept, also
    for train (the original kept only the first there). Clips not in the download are left out and reported.
    """
    audiocaps_path, output = pathlib.Path(audiocaps_path), pathlib.Path(output)
    csv_paths = {split: audiocaps_path / f"{split}.csv" for split in _check_splits(splits, AUDIOCAPS_SPLITS)}
    _require(list(csv_paths.values()), f"The AudioCaps folder {audiocaps_path}")
    index = index_audioset_download(audioset_path, audio_format)
    return _build_splits(output, csv_paths, link, lambda path: _audiocaps_clips(path, index, audio_format))


def _audiocaps_clips(
    csv_path: pathlib.Path, index: Mapping[str, list[pathlib.Path]], audio_format: str
) -> Iterator[_Clip]:
    for youtube_id, (start_time, captions) in sorted(_read_audiocaps_csv(csv_path).items()):
        file_name = f"{youtube_id}.{audio_format}"
        row = {"file_name": file_name, "youtube_id": youtube_id, "start_time": start_time}
        row.update({f"caption_{i}": caption for i, caption in enumerate(captions, 1)})
        yield (file_name, row, *_locate_clip(index, youtube_id))


def _read_audiocaps_csv(path: pathlib.Path) -> dict[str, tuple[int, list[str]]]:
    """youtube_id -> (start_time in seconds, captions in file order)."""
    clips: dict[str, tuple[int, list[str]]] = {}
    for line_number, record in _read_csv(path, AUDIOCAPS_COLUMNS):
        try:
            start_time = int(record["start_time"])
        except ValueError as error:
            raise ValueError(
                f"{path}:{line_number} has start_time {record['start_time']!r}, expected seconds."
            ) from error
        youtube_id = record["youtube_id"]
        known_start, captions = clips.setdefault(youtube_id, (start_time, []))
        if known_start != start_time:
            raise ValueError(
                f"{path}:{line_number}: clip {youtube_id} starts at {start_time} s here and at "
                f"{known_start} s in an earlier row; one AudioFolder file cannot hold both segments."
            )
        captions.append(record["caption"])
    return clips


def prepare_audioset_small(
    audioset_small_path: str | os.PathLike,
    audioset_full_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    audio_format: str = "mp3",
    link: str = "copy",
    splits: Sequence[str] = AUDIOSET_SMALL_SPLITS,
) -> dict[str, SplitSummary]:
    """Builds the AudioSet-small AudioFolder from the subset annotations and an AudioSet download.

    Rows keep the annotation order and carry `labels` (AudioSet MIDs in annotation order) and the keyword
    caption `caption_1` (`Ontology.keywords`). The subset's ontology.json is copied to `output`. Clips not in
    the download are left out and reported.
    """
    audioset_small_path, output = pathlib.Path(audioset_small_path), pathlib.Path(output)
    annotation_paths = {
        split: audioset_small_path / f"{split}.jsonl"
        for split in _check_splits(splits, AUDIOSET_SMALL_SPLITS)
    }
    ontology_path = audioset_small_path / ONTOLOGY_FILE
    _require(
        [*annotation_paths.values(), ontology_path],
        f"The AudioSet-small annotations folder {audioset_small_path}",
    )
    ontology = Ontology.load(ontology_path)
    index = index_audioset_download(audioset_full_path, audio_format)
    output.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ontology_path, output / ONTOLOGY_FILE)
    return _build_splits(
        output,
        annotation_paths,
        link,
        lambda path: _audioset_small_clips(path, index, audio_format, ontology),
    )


def _audioset_small_clips(
    annotation_path: pathlib.Path,
    index: Mapping[str, list[pathlib.Path]],
    audio_format: str,
    ontology: Ontology,
) -> Iterator[_Clip]:
    for record in _read_jsonl(annotation_path):
        missing_keys = [key for key in AUDIOSET_SMALL_KEYS if key not in record]
        if missing_keys:
            raise ValueError(f"{annotation_path}: row {record} lacks keys {missing_keys}.")
        file_name = f"{record['youtube_id']}.{audio_format}"
        row = {
            "file_name": file_name,
            "youtube_id": record["youtube_id"],
            "start_seconds": record["start_seconds"],
            "end_seconds": record["end_seconds"],
            "labels": record["labels"],
            "caption_1": ontology.keywords(record["labels"]),
        }
        yield (file_name, row, *_locate_clip(index, record["youtube_id"], record["orig_split"]))


def _check_splits(splits: Sequence[str], known: Sequence[str]) -> Sequence[str]:
    unknown = [split for split in splits if split not in known]
    if unknown or not splits:
        raise ValueError(f"Unknown splits {unknown} in {list(splits)}; choose from {list(known)}.")
    return splits


# ----------------------------------------------------------------------------------------------------------
# Corrupted audio.
# ----------------------------------------------------------------------------------------------------------


def find_corrupted(folder: str | os.PathLike, workers: int | None = None) -> list[Problem]:
    """Decodes every audio file under `folder` (recursively) with `audio.load_audio`; returns those that fail.

    Runs on `workers` processes (default: all cores) with a progress bar. Problems name the file relative to
    `folder` and carry the `AudioDecodeError` reason.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory; pass the folder that holds the audio files.")
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.name.lower().endswith(AUDIO_EXTENSIONS) and not path.is_dir()
    )
    if not paths:
        raise FileNotFoundError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}.")
    workers = workers or os.cpu_count() or 1
    with _process_map(workers) as map_fn:
        reasons = map_fn(_decode_problem, [str(path) for path in paths])
        progress = tqdm.tqdm(reasons, total=len(paths), desc="decoding", unit="file")
        problems = [
            Problem(path.relative_to(folder).as_posix(), reason)
            for path, reason in zip(paths, progress, strict=True)
            if reason is not None
        ]
    logging.info("%d of %d audio files under %s do not decode.", len(problems), len(paths), folder)
    return problems


@contextlib.contextmanager
def _process_map(workers: int) -> Iterator[Callable[[Callable[[str], Any], Sequence[str]], Iterable[Any]]]:
    """Yields an ordered, lazy `map` over `workers` spawned processes (the builtin `map` when workers is 1).

    Spawn, not fork: the caller may have started threads (JAX, tqdm) that a forked child would inherit locked.
    """
    if workers == 1:
        yield map
        return
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        yield lambda fn, items: executor.map(
            fn, items, chunksize=max(1, min(64, len(items) // (8 * workers)))
        )
    finally:
        executor.shutdown(cancel_futures=True)


def _decode_problem(path: str) -> str | None:
    """The reason `path` does not decode, or None (runs in worker processes)."""
    try:
        audio.load_audio(path)
    except audio.AudioDecodeError as error:
        return error.reason
    return None


# ----------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------


def _print_summaries(summaries: Mapping[str, SplitSummary]) -> int:
    for summary in summaries.values():
        print(
            f"{summary.split}: {summary.num_clips} clips, {len(summary.problems)} left out "
            f"(listed in {summary.report})"
        )
    return 0


def _run_clotho(args: argparse.Namespace) -> int:
    return _print_summaries(prepare_clotho(args.root))


def _run_limit(args: argparse.Namespace) -> int:
    result = limit_clotho_split(args.audiofolder, args.split, args.limit, args.seed)
    print(f"{args.split}: kept {len(result.kept)} clips, moved {len(result.moved)} into development")
    return 0


def _run_download(prepare: Callable[..., Mapping[str, SplitSummary]], args: argparse.Namespace) -> int:
    """`prepare_audiocaps` / `prepare_audioset_small` on a download command's arguments."""
    return _print_summaries(
        prepare(
            args.annotations,
            args.audioset,
            args.output,
            audio_format=args.audio_format,
            link=args.link,
            splits=args.splits,
        )
    )


def _run_select_audioset_subset(args: argparse.Namespace) -> int:
    # Imported here: audioset_subset reuses this module's layout constants.
    from audiocap_jax.data import audioset_subset

    summary = audioset_subset.select_audioset_subset(
        args.segments,
        args.ontology,
        args.exclude_audiocaps,
        args.output,
        per_label=args.per_label,
        step=args.step,
        test_per_label=args.test_per_label,
        seed=args.seed,
    )
    print(summary.format())
    return 0


def _run_find_corrupted(args: argparse.Namespace) -> int:
    problems = find_corrupted(args.folder, args.workers)
    if args.report:
        write_problems(args.report, problems)
    for problem in problems:
        print(f"{problem.file_name}\t{problem.problem}")
    print(f"{len(problems)} files under {args.folder} do not decode", file=sys.stderr)
    return cli.EXIT_PARTIAL if problems else cli.EXIT_OK


def _comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m audiocap_jax.data.prepare",
        description="Turn downloaded datasets into AudioFolders (audio + metadata.jsonl per split). "
        "See docs/data.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_clotho_commands(commands)
    _add_download_command(
        commands,
        "audiocaps",
        "AudioCaps CSVs + AudioSet download -> AudioFolder",
        ("--audiocaps-path", "folder with train.csv, valid.csv, test.csv"),
        "--audioset-path",
        AUDIOCAPS_SPLITS,
        prepare_audiocaps,
    )
    _add_download_command(
        commands,
        "audioset-small",
        "AudioSet subset annotations -> AudioFolder",
        ("--audioset-small-path", "folder with train.jsonl, valid.jsonl, test.jsonl, ontology.json"),
        "--audioset-full-path",
        AUDIOSET_SMALL_SPLITS,
        prepare_audioset_small,
    )
    _add_select_subset_command(commands)
    _add_find_corrupted_command(commands)
    return parser


def _add_clotho_commands(commands: argparse._SubParsersAction) -> None:
    """`clotho` writes the metadata in place; `limit-clotho-split` then shrinks a split as the original did."""
    clotho = commands.add_parser("clotho", help="write metadata.jsonl for Clotho v2.1")
    clotho.add_argument(
        "root",
        type=pathlib.Path,
        help="holds clotho_captions_*.csv, clotho_metadata_*.csv and audiofolder/<split>/",
    )
    clotho.set_defaults(run=_run_clotho)

    limit = commands.add_parser("limit-clotho-split", help="keep N clips of a Clotho split, move the rest")
    limit.add_argument("audiofolder", type=pathlib.Path, help="the Clotho audiofolder (ROOT/audiofolder)")
    limit.add_argument("split", choices=CLOTHO_LIMITABLE_SPLITS)
    limit.add_argument("--limit", type=int, required=True, help="number of clips to keep")
    limit.add_argument(
        "--seed", type=int, default=42, help="seed of the sample (default 42, as the original)"
    )
    limit.set_defaults(run=_run_limit)


def _add_download_command(
    commands: argparse._SubParsersAction,
    name: str,
    help_: str,
    annotations: tuple[str, str],
    audio_flag: str,
    splits: Sequence[str],
    prepare: Callable[..., Mapping[str, SplitSummary]],
) -> None:
    """A command that joins annotations (`annotations`: flag and help) with the clips of an AudioSet
    download into an AudioFolder; the AudioCaps and AudioSet-small layouts differ only in these."""
    command = commands.add_parser(name, help=help_)
    annotations_flag, annotations_help = annotations
    audio_help = "AudioSet download: audios/<segment list>/<youtube_id>.<fmt>"
    for flag, dest, text in (
        (annotations_flag, "annotations", annotations_help),
        (audio_flag, "audioset", audio_help),
    ):
        # The metavar argparse would derive from the flag, so --help reads as with dest=<flag's name>.
        metavar = flag.lstrip("-").replace("-", "_").upper()
        command.add_argument(flag, dest=dest, metavar=metavar, type=pathlib.Path, required=True, help=text)
    command.add_argument("--output", type=pathlib.Path, required=True, help="AudioFolder to write")
    command.add_argument("--audio-format", default="mp3", help="extension of the downloaded clips")
    command.add_argument(
        "--link",
        choices=LINK_MODES,
        default="copy",
        help="copy the clips (default), hard-link them (same filesystem) or symlink them",
    )
    command.add_argument(
        "--splits",
        type=_comma_list,
        default=list(splits),
        help=f"comma-separated subset of {','.join(splits)}",
    )
    command.set_defaults(run=functools.partial(_run_download, prepare))


def _add_select_subset_command(commands: argparse._SubParsersAction) -> None:
    """`select-audioset-subset` writes the annotations that `audioset-small` then reads."""
    subset = commands.add_parser(
        "select-audioset-subset",
        help="AudioSet segment CSVs -> label-balanced subset annotations for audioset-small",
    )
    subset.add_argument(
        "--segments",
        type=pathlib.Path,
        nargs="+",
        required=True,
        help="AudioSet segment CSVs (eval_segments.csv, balanced_train_segments.csv, "
        "unbalanced_train_segments.csv or the names eval.csv, train_balanced.csv, train_unbalanced.csv)",
    )
    subset.add_argument("--ontology", type=pathlib.Path, required=True, help="AudioSet ontology.json")
    subset.add_argument(
        "--exclude-audiocaps",
        type=pathlib.Path,
        required=True,
        help="folder with AudioCaps' train.csv, valid.csv, test.csv: their clips are left out",
    )
    subset.add_argument("--per-label", type=int, default=1000, help="desired clips per label (default 1000)")
    subset.add_argument(
        "--step", type=int, default=10, help="clips a frequent label gets per turn (default 10)"
    )
    subset.add_argument(
        "--test-per-label",
        type=int,
        default=10,
        help="clips of each label moved to test, then to valid (default 10)",
    )
    subset.add_argument("--seed", type=int, default=42, help="seed of selection and split (default 42)")
    subset.add_argument(
        "--output",
        type=pathlib.Path,
        required=True,
        help="annotations folder to write ({train,valid,test}.jsonl, ontology.json, report, plot)",
    )
    subset.set_defaults(run=_run_select_audioset_subset)


def _add_find_corrupted_command(commands: argparse._SubParsersAction) -> None:
    """`find-corrupted` lists the files to re-download before any of them breaks a training run."""
    corrupted = commands.add_parser(
        "find-corrupted", help="list audio files that do not decode (exit 1 if any)"
    )
    corrupted.add_argument("folder", type=pathlib.Path)
    corrupted.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    corrupted.add_argument("--report", type=pathlib.Path, help="also write the list to this CSV")
    corrupted.set_defaults(run=_run_find_corrupted)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (0 done, 3 corrupted files found, 2 bad input).

    Every ValueError / FileNotFoundError these commands raise is about their input and names the file.
    """
    args = _build_parser().parse_args(argv)
    logging.set_verbosity(logging.INFO)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        cli.print_user_error(error, sys.argv if argv is None else argv)
        return cli.EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
