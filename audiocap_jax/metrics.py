"""Captioning metrics on strings: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr, the DCASE ranking metrics
(SPIDEr-FL, FENSE, SBERT-sim, FER, Vocab, SPIDEr-max), bootstrap intervals and keyword P/R/F1.

Metrics know only strings (file name -> caption); no arrays, no model, no tokenizer of ours.

Pipeline of `score`:
  align (names checked, nothing dropped silently)
  -> Stanford PTB tokenisation, one JVM for predictions and references (pycocoevalcap's jar, flags and
     punctuation list; temp files in a directory we own, not in site-packages)
  -> pycocoevalcap Bleu(4), Meteor, Rouge, Cider on the tokenised text, so numbers are identical to
     pycocoevalcap's own scorers (and hence comparable with DCASE results)
  -> SPICE through our own `java` call when the Stanford CoreNLP 3.6.0 jars are installed
     (scripts/get_stanford_models.sh); otherwise SPICE and SPIDEr are None with a one-line fix, never 0.
  -> the preset's DCASE metrics on the same tokenised text (`PRESETS`; model-based ones in dcase_metrics),
     SPIDEr-max over N-best candidates, and optional bootstrap 95% intervals (clips resampled, seeded).

A preset only adds metrics: the classic numbers are the same under every preset, and a missing model or jar
turns only the metrics that need it into None with the fix.

Clips are always scored in sorted file-name order, so results do not depend on dict order.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import json
import math
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from absl import logging
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as pycoco_meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from audiocap_jax import csv_cells, dcase_metrics

# Metric key -> printed name: the one table of metric names for tables and logs.
METRIC_NAMES = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "spider_fl": "SPIDEr-FL",
    "fense": "FENSE",
    "sbert_sim": "SBERT-sim",
    "fer": "FER",
    "vocab": "Vocab",
    "spider_max": "SPIDEr-max",
    "keyword_precision_micro": "keyword precision (micro)",
    "keyword_recall_micro": "keyword recall (micro)",
    "keyword_f1_micro": "keyword F1 (micro)",
    "keyword_precision_macro": "keyword precision (macro)",
    "keyword_recall_macro": "keyword recall (macro)",
    "keyword_f1_macro": "keyword F1 (macro)",
    "keyword_jaccard": "keyword Jaccard (macro)",
}

CLASSIC_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider")
# Metrics whose corpus value is the mean of the per-clip values, so a bootstrap resamples per-clip values.
# BLEU (corpus n-gram counts) and METEOR (the jar's corpus statistics) are recomputed per resample.
_MEAN_OF_CLIPS = frozenset(
    {"rouge_l", "cider_d", "spice", "spider", "spider_fl", "fense", "sbert_sim", "fer", "spider_max"}
)
_NEEDS_MODELS = frozenset({"fense", "sbert_sim", "fer", "spider_fl"})
# No bootstrap interval: a resample holds only ~63% distinct clips, so its vocabulary is always smaller than
# the corpus's (975 AudioCaps clips: 970 words, resamples 782-832), and the interval would not contain it.
_NO_INTERVAL = frozenset({"vocab"})
_SPICE_OFF = "SPICE is off; fix: --spice=auto"


@dataclasses.dataclass(frozen=True)
class MetricPreset:
    """A named metric set: `ranking` is the challenge's ranking metric, `metrics` the table order."""

    ranking: str
    metrics: tuple[str, ...]


# The one table of presets (`evaluate --metrics`, config `eval.metrics`), after aac-metrics' METRICS_SETS.
PRESETS = {
    "coco": MetricPreset("spider", CLASSIC_METRICS),
    "dcase2023": MetricPreset("spider_fl", ("spider_fl", "fer", *CLASSIC_METRICS)),
    "dcase2024": MetricPreset("fense", ("fense", "sbert_sim", "fer", "spider_fl", "vocab", *CLASSIC_METRICS)),
}
PRESET_HELP = (
    "coco: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr (ranked by SPIDEr); "
    "dcase2023: + SPIDEr-FL (DCASE 2023 task 6a ranking) and FER; "
    "dcase2024: FENSE (DCASE 2024 task 6 ranking) first, + SBERT-sim, FER, SPIDEr-FL, Vocab. "
    f"FENSE-family metrics need `{dcase_metrics.DOWNLOAD_COMMAND}` once."
)
# Always computed (no jar, no model), so it is what `select_best_metric` falls back to.
FALLBACK_METRIC = "cider_d"

PREDICTION_COLUMNS = ("file_name", "caption_predicted")
FILE_NAME_COLUMN = "file_name"
_CAPTION_COLUMN = re.compile(r"caption(?:_(\d+))?")

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_JAR = "spice-1.0.jar"
SPICE_FIX = "scripts/get_stanford_models.sh"
JAVA_FIX = "apt-get install -y openjdk-17-jdk-headless"
MIN_JAVA = 8
# pycocoevalcap's Meteor always starts `java` from PATH, so every JVM tool here uses that same Java.
JAVA = "java"
_PTB_JAR = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
# pycocoevalcap's Meteor() command and working directory, unchanged (its jar finds its data from there).
_METEOR_COMMAND = (JAVA, "-jar", "-Xmx2G", pycoco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm")
_METEOR_DIR = Path(pycoco_meteor.__file__).parent
# When a batch JVM tool (PTB tokenizer, SPICE) fails, its batch is halved until the texts at fault are found
# (one bad text among 4096 takes 2 x 12 runs); past this many runs the failure is reported as the whole batch's.
_MAX_ISOLATION_RUNS = 24
_MAX_NAMES_SHOWN = 10

# SPICE's `-out` pretty-prints through the Nashorn JavaScript engine, which Java 15 removed: on Java >= 15
# `java -jar spice-1.0.jar ... -out f` scores everything and then dies with a NullPointerException. This shim
# runs the same SpiceScorer.scoreBatch without `-out` and writes the same JSON (`SpiceStats.toJSONString`,
# which `-out` only re-indents). It runs through java's source-file launcher, which needs a JDK.
_SPICE_JSON_SHIM = """\
import edu.anu.spice.SpiceArguments;
import edu.anu.spice.SpiceScorer;
import java.lang.reflect.Constructor;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;

public class SpiceJson {
  // args: <out.json> <in.json> [SPICE options without -out]
  public static void main(String[] args) throws Exception {
    Constructor<SpiceScorer> newScorer = SpiceScorer.class.getDeclaredConstructor();
    Constructor<SpiceArguments> newArguments = SpiceArguments.class.getDeclaredConstructor(String[].class);
    newScorer.setAccessible(true);
    newArguments.setAccessible(true);
    SpiceScorer scorer = newScorer.newInstance();
    scorer.scoreBatch(newArguments.newInstance((Object) Arrays.copyOfRange(args, 1, args.length)));
    Files.write(Paths.get(args[0]), scorer.stats.toJSONString().getBytes(StandardCharsets.UTF_8));
  }
}
"""
_FIRST_JAVA_WITHOUT_NASHORN = 15
# Reflection-heavy libraries in SPICE's class path (fst) need these on Java >= 9; harmless otherwise.
_ADD_OPENS = ("java.base/java.lang", "java.base/java.util", "java.base/java.io", "java.base/java.math")


class AlignmentError(ValueError):
    """Predictions and references do not cover the same file names (see `.missing` / `.extra`)."""

    def __init__(self, message: str, missing: Sequence[str] = (), extra: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.extra = list(extra)


class SpiceUnavailableError(FileNotFoundError):
    """SPICE was required (`spice=True`) but cannot run here; the message says why and how to fix it."""


class JavaError(RuntimeError):
    """A JVM tool (PTB tokenizer, METEOR, SPICE) failed; the message holds the command and the end of its
    stderr, `cause` the tool's own one-line reason (e.g. "java.lang.OutOfMemoryError: Java heap space")."""

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(message)
        self.cause = cause or message.splitlines()[0]

    @classmethod
    def from_stderr(cls, what: str, returncode: int | None, stderr: str, command: Sequence[str]) -> JavaError:
        """The error of a JVM that exited with `returncode`: the first exception line of its stderr is the cause."""
        stderr = stderr.strip()
        lines = stderr.splitlines() or ["(no stderr)"]
        cause = next((line for line in lines if "Exception" in line or "Error" in line), lines[-1]).strip()
        cause = re.sub(r'^Exception in thread "[^"]*" ', "", cause)
        return cls(
            f"{what} failed (exit {returncode}): {cause}\ncommand: {' '.join(command)}\n{stderr[-3000:]}",
            cause,
        )


@dataclasses.dataclass(frozen=True)
class CaptionScores:
    """Corpus and per-clip scores of one evaluation.

    `corpus[metric]` is None for a metric that could not be computed (reason in `unavailable[metric]`).
    `per_clip[file_name][metric]` holds the sentence-level scores pycocoevalcap returns. CIDEr-D per clip
    uses the document frequencies of this whole corpus, so it changes when the set of clips changes.
    """

    corpus: dict[str, float | None]
    per_clip: dict[str, dict[str, float]]
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    # metric -> (low, high): bootstrap 95% percentile interval over resampled clips (empty unless asked).
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # file name -> "TOOL: its message" for each JVM tool that failed on this clip's text: a partial result
    # (`evaluate` exits 3). A PTB failure leaves the clip out of every metric; METEOR or SPICE, that metric.
    failed_clips: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        return len(self.per_clip)

    def to_json_dict(self) -> dict:
        return {
            "num_clips": self.num_clips,
            "corpus": self.corpus,
            "intervals_95": {k: list(v) for k, v in self.intervals.items()},
            "unavailable": self.unavailable,
            "warnings": self.warnings,
            "failed_clips": self.failed_clips,
            "per_clip": self.per_clip,
        }


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Predictions and references restricted to the clips that can be scored, in sorted file-name order."""

    file_names: list[str]
    predictions: dict[str, str]
    references: dict[str, list[str]]
    warnings: list[str]


@dataclasses.dataclass(frozen=True)
class SpiceStatus:
    available: bool
    reason: str | None  # one line with the fix when not available
    spice_dir: Path
    java_major: int | None = None


# ----------------------------------------------------------------------------------------------------------
# Alignment and loading.
# ----------------------------------------------------------------------------------------------------------


def _names(names: Sequence[str]) -> str:
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
            f"e.g. predictions {_names(sorted(predictions)[:3])} "
            f"vs references {_names(sorted(references)[:3])}. "
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
        message = f"{len(names)} {what}: {_names(names)}"
        if not allowed:
            raise AlignmentError(
                f"{message}. Fix the file names, or pass {flag}=True to score the rest.", missing, extra
            )
        warnings.append(message + " (left out)")

    empty_predictions = [n for n in file_names if not predictions[n].strip()]
    if empty_predictions:
        warnings.append(
            f"{len(empty_predictions)} empty predictions (scored as empty): {_names(empty_predictions)}"
        )
    kept_references = {n: [r for r in references[n] if r.strip()] for n in file_names}
    dropped = [n for n in file_names if len(kept_references[n]) < len(references[n])]
    if dropped:
        warnings.append(f"empty reference captions ignored for {len(dropped)} clips: {_names(dropped)}")
    unreferenced = [n for n in file_names if not kept_references[n]]
    if unreferenced:
        raise AlignmentError(
            f"{len(unreferenced)} clips have only empty reference captions: {_names(unreferenced)}"
        )
    for warning in warnings:
        logging.warning("metrics: %s", warning)
    return Alignment(file_names, {n: predictions[n] for n in file_names}, kept_references, warnings)


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
            f"{_names(sorted(set(conflicting)))}; keep one row per file name."
        )
    if identical:
        logging.warning(
            "%s: %d duplicate identical %s rows kept once: %s",
            path,
            len(identical),
            what,
            _names(sorted(set(identical))),
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


# ----------------------------------------------------------------------------------------------------------
# Java: PTB tokenizer and SPICE.
# ----------------------------------------------------------------------------------------------------------


def java_problem(what: str) -> str | None:
    """None when `java` runs and is new enough; otherwise why not, ending with the command that installs one.

    Checked before every JVM tool (PTB tokenizer, METEOR, SPICE) so a missing Java is one clear line, not a
    traceback from inside pycocoevalcap.
    """
    major = _java_major()
    if major is None:
        return f"{what} needs Java >= {MIN_JAVA}, but no working {JAVA!r} is on PATH; fix: {JAVA_FIX}"
    if major < MIN_JAVA:
        return f"{what} needs Java >= {MIN_JAVA}, but {JAVA!r} is Java {major}; fix: {JAVA_FIX}"
    return None


def _run_java(args: Sequence[str], *, what: str) -> str:
    """Runs one JVM command and returns its stdout (UTF-8), raising JavaError with stderr on failure."""
    problem = java_problem(what)
    if problem is not None:
        raise FileNotFoundError(problem)
    command = [JAVA, *args]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", errors="replace")
        raise JavaError.from_stderr(what, result.returncode, stderr, command)
    return result.stdout.decode("utf-8")


T = TypeVar("T")


def isolate_failures(
    run: Callable[[list[int]], Sequence[T]], count: int, what: str
) -> tuple[dict[int, T], dict[int, str]]:
    """`run` (a batch JVM tool over items 0..count-1, one result per item) on everything, and when it fails,
    on halves, down to the single items at fault: (results of the items that ran, item -> the tool's cause).

    A failure is one item's fault only if some other part of the batch ran; when nothing runs, or the batch
    is not narrowed down within `_MAX_ISOLATION_RUNS` runs, the tool's JavaError is raised as it is.
    """
    results: dict[int, T] = {}
    failures: dict[int, str] = {}
    runs = 0

    def attempt(items: list[int]) -> None:
        nonlocal runs
        runs += 1
        try:
            results.update(zip(items, run(items), strict=True))
        except JavaError as error:
            if len(items) == 1:
                failures[items[0]] = error.cause
                return
            if runs >= _MAX_ISOLATION_RUNS:
                raise
            if runs == 1:
                logging.warning("metrics: %s failed (%s); looking for the texts at fault", what, error.cause)
            middle = len(items) // 2
            attempt(items[:middle])
            attempt(items[middle:])

    attempt(list(range(count)))
    if failures and not results:
        raise JavaError(f"{what} failed on every text: {next(iter(failures.values()))}")
    return results, failures


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenises like pycocoevalcap's PTBTokenizer: its jar, flags and punctuation list, so identical output.

    Differences that cannot change a score: all captions go through one JVM, the temp file lives in our own
    temp dir, and every run of whitespace (including line/paragraph separators, which would shift the
    one-caption-per-line output against its clips) becomes one space before tokenising.
    """
    if not captions:
        return []
    lines = [" ".join(caption.split()) for caption in captions]
    with tempfile.TemporaryDirectory(prefix="audiocap_ptb_") as tmp:
        text_file = Path(tmp) / "captions.txt"
        text_file.write_bytes("\n".join(lines).encode("utf-8"))
        out = _run_java(
            [
                "-cp",
                str(_PTB_JAR),
                "edu.stanford.nlp.process.PTBTokenizer",
                "-preserveLines",
                "-lowerCase",
                str(text_file),
            ],
            what="PTB tokenizer",
        )
    tokenized = out.split("\n")
    if len(tokenized) != len(lines):
        raise JavaError(f"PTB tokenizer returned {len(tokenized)} lines for {len(lines)} captions")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS)
        for line in tokenized
    ]


@functools.cache
def _java_major() -> int | None:
    """Major version of `java` (8 for "1.8.0_312", 17 for "17.0.15"), or None when there is no java."""
    if shutil.which(JAVA) is None:
        return None
    result = subprocess.run([JAVA, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    first, second = int(match.group(1)), int(match.group(2) or 0)
    return second if first == 1 else first


@functools.cache
def _has_source_launcher() -> bool:
    """The source-file launcher (`java Foo.java`) lives in the jdk.compiler module, absent from a bare JRE."""
    result = subprocess.run([JAVA, "--list-modules"], capture_output=True, text=True, check=False)
    return "jdk.compiler@" in result.stdout


def default_spice_dir() -> Path:
    """pycocoevalcap's `spice/` folder (spice-1.0.jar + lib/), found without importing its Spice class."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pycocoevalcap is not installed; `pip install pycocoevalcap`")
    return Path(next(iter(spec.submodule_search_locations))) / "spice"


def spice_status(spice_dir: str | Path | None = None) -> SpiceStatus:
    """Says whether SPICE can run, without touching the network (pycocoevalcap's Spice() would download).

    Checks spice-1.0.jar and the two CoreNLP 3.6.0 jars in `<spice_dir>/lib` (present and readable as zip
    files, which catches truncated downloads), and a usable `java`.
    """
    spice_dir = Path(spice_dir) if spice_dir is not None else default_spice_dir()

    def unavailable(reason: str, major: int | None = None) -> SpiceStatus:
        return SpiceStatus(False, f"SPICE unavailable: {reason}", spice_dir, major)

    jars = [spice_dir / SPICE_JAR] + [spice_dir / "lib" / name for name in CORENLP_JARS]
    absent = [str(p) for p in jars if not p.is_file()]
    if absent:
        return unavailable(f"missing {', '.join(absent)}; fix: {SPICE_FIX}")
    corrupt = [str(p) for p in jars if not zipfile.is_zipfile(p)]
    if corrupt:
        return unavailable(
            f"not a valid jar (truncated download?): {', '.join(corrupt)}; fix: {SPICE_FIX} --force"
        )
    problem = java_problem("SPICE")
    if problem is not None:
        return unavailable(problem, _java_major())
    major = _java_major()
    if major >= _FIRST_JAVA_WITHOUT_NASHORN and not _has_source_launcher():
        return unavailable(
            f"Java {major} without a JDK compiler (SPICE's JSON output needs it from Java 15 on); fix: {JAVA_FIX}",
            major,
        )
    return SpiceStatus(True, None, spice_dir, major)


def _spice_float(value: object) -> float:
    """pycocoevalcap's float_convert: SPICE writes NaN (e.g. no tuples on either side) as null."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def run_spice(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    spice_dir: str | Path | None = None,
    max_heap: str = "8G",
) -> tuple[float, list[float]]:
    """SPICE F-scores (corpus mean, per clip) for already PTB-tokenised text, as pycocoevalcap's Spice.

    Same jar, input JSON and options as pycocoevalcap except: no `-cache` (its fst serializer needs
    --add-opens on Java >= 17 and its LMDB dir would be shared state), temp files in our own temp dir, and on
    Java >= 15 the JSON is written by `_SPICE_JSON_SHIM` because `-out` needs the removed Nashorn engine.
    """
    spice_dir = Path(spice_dir) if spice_dir is not None else default_spice_dir()
    problem = java_problem("SPICE")
    if problem is not None:
        raise FileNotFoundError(problem)
    major = _java_major()
    input_data = [
        {"image_id": i, "test": c, "refs": list(r)}
        for i, (c, r) in enumerate(zip(candidates, references, strict=True))
    ]
    spice_options = ["-subset", "-silent"]
    with tempfile.TemporaryDirectory(prefix="audiocap_spice_") as tmp:
        in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
        in_file.write_text(json.dumps(input_data, indent=2), encoding="utf-8")
        jvm_options = [f"-Xmx{max_heap}"]
        if major >= 9:
            jvm_options += [f"--add-opens={package}=ALL-UNNAMED" for package in _ADD_OPENS]
        if major >= _FIRST_JAVA_WITHOUT_NASHORN:
            shim = Path(tmp) / "SpiceJson.java"
            shim.write_text(_SPICE_JSON_SHIM, encoding="utf-8")
            args = [
                *jvm_options,
                "-cp",
                str(spice_dir / SPICE_JAR),
                str(shim),
                str(out_file),
                str(in_file),
                *spice_options,
            ]
        else:
            args = [
                *jvm_options,
                "-jar",
                str(spice_dir / SPICE_JAR),
                str(in_file),
                "-out",
                str(out_file),
                *spice_options,
            ]
        logging.info("metrics: running SPICE on %d clips (minutes for a few thousand)", len(candidates))
        _run_java(args, what="SPICE")
        results = json.loads(out_file.read_text(encoding="utf-8"))
    by_id = {item["image_id"]: _spice_float(item["scores"]["All"]["f"]) for item in results}
    per_clip = [by_id[i] for i in range(len(candidates))]
    return float(np.mean(np.array(per_clip))), per_clip


# ----------------------------------------------------------------------------------------------------------
# Scores.
# ----------------------------------------------------------------------------------------------------------


def _resolve_spice(spice: Literal["auto"] | bool, spice_dir: str | Path | None) -> SpiceStatus | None:
    """None when SPICE is off; raises for spice=True when it cannot run (before minutes of other work)."""
    if spice is False:
        return None
    if spice not in ("auto", True):
        raise ValueError(f"spice={spice!r}; expected 'auto', True or False")
    status = spice_status(spice_dir)
    if not status.available and spice is True:
        raise SpiceUnavailableError(status.reason)
    return status


def get_preset(name: str) -> MetricPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown metric preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def bleu_statistics(gts: Mapping[str, list[str]], res: Mapping[str, list[str]]) -> np.ndarray:
    """Per clip [testlen, closest reflen, guess_1..4, correct_1..4] exactly as pycocoevalcap's BleuScorer
    counts them, so corpus BLEU can be recomputed for any multiset of clips. [B, 10] float64"""
    scorer = BleuScorer(n=4)
    for name in gts:
        scorer += (res[name][0], gts[name])
    rows = []
    for comps in scorer.ctest:
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])
        rows.append([comps["testlen"], reflen, *comps["guess"], *comps["correct"]])
    return np.array(rows, dtype=np.float64)


def corpus_bleu(statistics: np.ndarray) -> np.ndarray:
    """BLEU-1..4 from summed clip statistics [..., B, 10] -> [..., 4], pycocoevalcap's formula (tiny/small)."""
    tiny, small = 1e-15, 1e-9
    totals = statistics.sum(axis=-2)
    testlen, reflen, guess, correct = totals[..., 0], totals[..., 1], totals[..., 2:6], totals[..., 6:10]
    precisions = np.cumprod((correct + tiny) / (guess + small), axis=-1)
    bleus = precisions ** (1.0 / np.arange(1, 5))
    ratio = (testlen + tiny) / (reflen + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * brevity[..., None]


class _MeteorJvm:
    """pycocoevalcap's METEOR process: its command, working directory and line protocol (SCORE lines through
    its own `Meteor._stat`, then EVAL lines), with stderr in a file instead of a pipe nobody reads, so a JVM
    that dies (its aligner runs out of the 2 GB heap on a 100,000-character caption) is reported with its own
    message, and a chatty one cannot block on a full pipe."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the JVM; closed in close()
        self.meteor_p = subprocess.Popen(
            _METEOR_COMMAND,
            cwd=_METEOR_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def _died(self) -> JavaError:
        """The error of a JVM that stopped answering, with the end of its stderr."""
        self.meteor_p.kill()
        self.meteor_p.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", errors="replace")
        return JavaError.from_stderr("METEOR", self.meteor_p.returncode, stderr, _METEOR_COMMAND)

    def stat(self, hypothesis: str, references: Sequence[str]) -> str:
        """pycocoevalcap's SCORE line for one clip: its statistics line for EVAL."""
        try:
            line = pycoco_meteor.Meteor._stat(self, hypothesis, references)
        except BrokenPipeError:
            line = ""
        if not line:
            raise self._died()
        return line

    def eval(self, statistics: Sequence[str]) -> tuple[float, list[float]]:
        """pycocoevalcap Meteor.compute_score's EVAL step on per-clip statistics lines: (corpus, per clip)."""
        try:
            self.meteor_p.stdin.write(("EVAL" + "".join(f" ||| {s}" for s in statistics) + "\n").encode())
            self.meteor_p.stdin.flush()
            answers = [self.meteor_p.stdout.readline().strip() for _ in range(len(statistics) + 1)]
        except BrokenPipeError:
            answers = [b""]
        if not all(answers):
            raise self._died()
        *per_clip, corpus = (float(line) for line in answers)
        return corpus, per_clip

    def close(self) -> None:
        """Stops the JVM now rather than at interpreter exit."""
        if self.meteor_p.poll() is None:
            self.meteor_p.stdin.close()
            self.meteor_p.kill()
        self.meteor_p.wait()
        self._stderr.close()


@dataclasses.dataclass(frozen=True)
class _MeteorScores:
    corpus: float | None  # None when some clips failed
    per_clip: list[float]
    resampled: np.ndarray  # [N] corpus METEOR of each bootstrap resample
    failures: dict[str, str]  # file name -> the jar's error on that clip's SCORE line


def _meteor(
    gts: Mapping[str, list[str]], res: Mapping[str, list[str]], resamples: np.ndarray
) -> _MeteorScores:
    """METEOR as pycocoevalcap computes it (same SCORE then EVAL lines to one JVM), plus the corpus METEOR of
    each bootstrap resample [N, B] of clip indices, re-aggregated by the jar from the per-clip statistics.

    A clip whose SCORE line kills the JVM is named with the jar's error and the JVM restarted for the rest
    (5 s each), so every clip at fault is found in one pass; then there is no corpus METEOR.
    """
    problem = java_problem("METEOR")
    if problem is not None:
        raise FileNotFoundError(problem)
    jvm = _MeteorJvm()
    statistics, failures = [], {}
    try:
        for name in gts:
            try:
                statistics.append(jvm.stat(res[name][0], gts[name]))
            except JavaError as error:
                logging.error("metrics: METEOR failed on %r: %s", name, error)
                failures[name] = error.cause
                jvm.close()
                jvm = _MeteorJvm()
        if failures:
            return _MeteorScores(None, [], np.zeros(0), failures)
        value, per_clip = jvm.eval(statistics)
        resampled = np.array([jvm.eval([statistics[i] for i in row])[0] for row in resamples])
    finally:
        jvm.close()
    return _MeteorScores(value, per_clip, resampled, {})


def _spice_by_item(
    items: Sequence[tuple[str, str]], gts: Mapping[str, list[str]], spice_dir: Path
) -> tuple[list[float], dict[str, str]]:
    """SPICE of each (file name, tokenised caption) against the clip's references, in one run, or halved runs
    until the captions at fault are found: (values in item order, {} ) or ([], file name -> SPICE's error)."""
    found, failures = isolate_failures(
        lambda chosen: run_spice(
            [items[i][1] for i in chosen], [gts[items[i][0]] for i in chosen], spice_dir=spice_dir
        )[1],
        len(items),
        "SPICE",
    )
    if failures:
        return [], {items[i][0]: cause for i, cause in failures.items()}
    return [found[i] for i in range(len(items))], {}


def _tool_failure(what: str, failures: Mapping[str, str], fix: str) -> str:
    """The `unavailable` reason of a metric whose tool failed on some clips: which ones, and its own words."""
    causes = sorted(set(failures.values()))
    return (
        f"{what} failed on {len(failures)} clip{'s' if len(failures) > 1 else ''}: {_names(sorted(failures))} "
        f"({'; '.join(causes[:3])}); "
        f"fix: {fix}"
    )


_CLIP_FIX = "check those predictions (a degenerate or very long caption?); the other metrics are scored"


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def score(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    preset: str = "coco",
    candidates: Mapping[str, Sequence[str]] | None = None,
    spice: Literal["auto"] | bool = "auto",
    spice_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    allow_missing: bool = False,
    allow_extra: bool = False,
) -> CaptionScores:
    """The preset's metrics (`PRESETS`), classic ones pycocoevalcap-identical, DCASE ones aac-metrics-identical.

    preset: "coco" (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr = (CIDEr-D + SPICE) / 2), "dcase2023"
    (+ SPIDEr-FL, FER) or "dcase2024" (FENSE, SBERT-sim, FER, SPIDEr-FL, Vocab + classic). Like aac-metrics'
    `evaluate`, every metric sees the PTB-tokenised, lowercased text without punctuation.
    candidates: N-best lists per clip (file name -> captions, best first); adds SPIDEr-max = mean over clips of
    the best candidate's SPIDEr. `predictions` stay the captions every other metric scores.
    spice: "auto" computes SPICE when `spice_status` says it can and otherwise reports SPICE and the metrics
    built on it as None with the fix (a crash too; the other metrics survive); True requires it; False skips it.
    model_dir: the FENSE/FER models (dcase_metrics.default_model_dir()); without them those metrics are None
    with the download command, and nothing else changes.
    bootstrap: number of resamples of the clips (with replacement, numpy seed `seed`) for 95% percentile
    intervals of every corpus metric; 0 = none.
    Costs: two JVM starts (~1 s PTB, ~5 s METEOR), SPICE when on, the two small BERTs for FENSE-family metrics.
    """
    metric_preset = get_preset(preset)
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap}; give a number of resamples >= 0 (1000 is usual), 0 = none")
    spice_state = _resolve_spice(spice, spice_dir)
    aligned = align(predictions, references, allow_missing=allow_missing, allow_extra=allow_extra)
    candidate_lists = _candidate_lists(candidates, aligned) if candidates is not None else None
    warnings = list(aligned.warnings)
    failed_clips: dict[str, list[str]] = {}

    def warn(message: str) -> None:
        logging.warning("metrics: %s", message)
        warnings.append(message)

    def fail(what: str, failures: Mapping[str, str]) -> None:
        for name, cause in failures.items():
            failed_clips.setdefault(name, []).append(f"{what}: {cause}")

    # Each clip's texts, tokenised in one JVM: prediction, references, then its N-best candidates.
    texts = [
        (n, t)
        for n in aligned.file_names
        for t in [aligned.predictions[n], *aligned.references[n], *(candidate_lists or {}).get(n, [])]
    ]
    tokenized, failures = isolate_failures(
        lambda items: ptb_tokenize([texts[i][1] for i in items]), len(texts), "PTB tokenizer"
    )
    ptb_failures = {texts[i][0]: cause for i, cause in failures.items()}
    if ptb_failures:
        fail("PTB tokenizer", ptb_failures)
        warn(_tool_failure("PTB tokenizer", ptb_failures, "left out of every metric; " + _CLIP_FIX))
    names = [n for n in aligned.file_names if n not in ptb_failures]
    by_clip: dict[str, list[str]] = {n: [] for n in names}
    for i, (name, _) in enumerate(texts):
        if name in by_clip:
            by_clip[name].append(tokenized[i])
    references_end = {n: 1 + len(aligned.references[n]) for n in names}
    res = {n: by_clip[n][:1] for n in names}
    gts = {n: by_clip[n][1 : references_end[n]] for n in names}
    candidate_tokens = {n: by_clip[n][references_end[n] :] for n in names} if candidate_lists else None

    punctuation_only = [n for n in names if not res[n][0] and aligned.predictions[n].strip()]
    if punctuation_only:
        warn(
            f"{len(punctuation_only)} predictions are only punctuation (scored as empty): {_names(punctuation_only)}"
        )
    resamples = np.random.default_rng(seed).integers(0, len(names), size=(bootstrap, len(names)))

    corpus: dict[str, float | None] = {}
    candidate_spice: Iterator[float] = iter(())
    per_clip_by_metric: dict[str, np.ndarray] = {}
    resampled: dict[str, np.ndarray] = {}  # metric -> [N] corpus values of the resamples
    unavailable: dict[str, str] = {}

    bleu, bleu_per_clip = Bleu(4).compute_score(gts, res, verbose=0)
    bleu_resampled = corpus_bleu(bleu_statistics(gts, res)[resamples])  # --> [N, 4]
    for k, (value, values) in enumerate(zip(bleu, bleu_per_clip, strict=True)):
        key = f"bleu_{k + 1}"
        corpus[key], per_clip_by_metric[key], resampled[key] = value, np.array(values), bleu_resampled[:, k]
    meteor = _meteor(gts, res, resamples)
    corpus["meteor"] = meteor.corpus
    if meteor.failures:
        fail("METEOR", meteor.failures)
        unavailable["meteor"] = _tool_failure("METEOR", meteor.failures, _CLIP_FIX)
    else:
        per_clip_by_metric["meteor"], resampled["meteor"] = np.array(meteor.per_clip), meteor.resampled
    corpus["rouge_l"], per_clip_by_metric["rouge_l"] = Rouge().compute_score(gts, res)
    corpus["cider_d"], per_clip_by_metric["cider_d"] = Cider().compute_score(gts, res)

    if spice_state is not None:
        if spice_state.available:
            try:
                # One SPICE run for the predictions and every N-best candidate: per-clip SPICE is independent.
                extra = [(n, c) for n in names for c in candidate_tokens[n]] if candidate_tokens else []
                items = [(n, res[n][0]) for n in names] + extra
                spice_values, spice_failures = _spice_by_item(items, gts, spice_state.spice_dir)
                if spice_failures:
                    fail("SPICE", spice_failures)
                    unavailable["spice"] = _tool_failure("SPICE", spice_failures, _CLIP_FIX)
                else:
                    per_clip_by_metric["spice"] = np.array(spice_values[: len(names)])
                    corpus["spice"] = float(np.mean(per_clip_by_metric["spice"]))
                    candidate_spice = iter(spice_values[len(names) :])
                    undefined = [
                        n for n, v in zip(names, per_clip_by_metric["spice"], strict=True) if math.isnan(v)
                    ]
                    if undefined:
                        warn(f"SPICE is NaN (as in pycocoevalcap, so is its mean) for {_names(undefined)}")
            except (JavaError, OSError, ValueError, KeyError) as e:
                if spice is True:
                    raise
                logging.error("metrics: SPICE failed, reporting it as unavailable: %s", e)
                unavailable["spice"] = (
                    f"SPICE failed: {str(e).splitlines()[0]} (full error in the log); fix: {SPICE_FIX} --force"
                )
        else:
            unavailable["spice"] = spice_state.reason
        if "spice" in unavailable:
            corpus["spice"] = corpus["spider"] = None
            unavailable["spider"] = "SPIDEr needs SPICE; " + unavailable["spice"]
        else:
            per_clip_by_metric["spider"] = (per_clip_by_metric["cider_d"] + per_clip_by_metric["spice"]) / 2
            corpus["spider"] = (corpus["cider_d"] + corpus["spice"]) / 2

    if candidate_tokens is not None:
        corpus["spider_max"] = None
        if "spider" in per_clip_by_metric:
            per_clip_by_metric["spider_max"] = _spider_max(gts, candidate_tokens, candidate_spice)
            corpus["spider_max"] = float(np.mean(per_clip_by_metric["spider_max"]))
        else:
            unavailable["spider_max"] = "SPIDEr-max needs SPICE; " + unavailable.get("spice", _SPICE_OFF)

    wanted = [m for m in metric_preset.metrics if m in _NEEDS_MODELS]
    if wanted:
        fluency, reason = _fluency_per_clip(
            model_dir, [res[n][0] for n in names], [gts[n] for n in names], per_clip_by_metric.get("spider")
        )
        per_clip_by_metric.update(fluency)
        for metric in wanted:
            if metric in per_clip_by_metric:
                corpus[metric] = float(np.mean(per_clip_by_metric[metric]))
            else:
                corpus[metric] = None
                if metric == "spider_fl" and reason is None:
                    unavailable[metric] = "SPIDEr-FL needs SPICE; " + unavailable.get("spice", _SPICE_OFF)
                else:
                    unavailable[metric] = f"{METRIC_NAMES[metric]} unavailable: {reason}"
    if "vocab" in metric_preset.metrics:
        token_sets = [frozenset(res[n][0].split()) for n in names]
        per_clip_by_metric["vocab"] = np.array([len(t) for t in token_sets], dtype=np.float64)
        corpus["vocab"] = float(len(frozenset().union(*token_sets)))

    order = [m for m in metric_preset.metrics if m in corpus] + [
        m for m in corpus if m not in metric_preset.metrics
    ]
    corpus = {k: None if corpus[k] is None else float(corpus[k]) for k in order}
    intervals = {}
    if bootstrap:
        for metric, value in corpus.items():
            if value is None or metric in _NO_INTERVAL:
                continue
            values = (
                per_clip_by_metric[metric][resamples].mean(axis=1)
                if metric in _MEAN_OF_CLIPS
                else resampled[metric]
            )
            intervals[metric] = _percentile_interval(values)
    per_clip = {n: {m: float(v[i]) for m, v in per_clip_by_metric.items()} for i, n in enumerate(names)}
    return CaptionScores(corpus, per_clip, unavailable, warnings, intervals, failed_clips)


def _fluency_per_clip(
    model_dir: str | Path | None,
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    spider: np.ndarray | None,
) -> tuple[dict[str, np.ndarray], str | None]:
    """Per-clip FER, SBERT-sim, FENSE and (with SPIDEr) SPIDEr-FL, or ({}, why not) when the models are
    missing or fail to load; the reason ends with the command that fixes it."""
    reason = dcase_metrics.unavailable_reason(model_dir)
    if reason is not None:
        return {}, reason
    try:
        models = dcase_metrics.load_models(model_dir)
        errors = dcase_metrics.fluency_errors(dcase_metrics.error_probabilities(models, candidates))
        similarity = dcase_metrics.sbert_similarity(models, candidates, references)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        logging.error("metrics: the FENSE models failed, reporting them as unavailable: %s", e)
        return {}, f"{str(e).splitlines()[0]} (full error in the log); fix: {dcase_metrics.DOWNLOAD_COMMAND}"
    per_clip = {
        "fer": errors,
        "sbert_sim": similarity,
        "fense": dcase_metrics.fluency_penalized(similarity, errors),
    }
    if spider is not None:
        per_clip["spider_fl"] = dcase_metrics.fluency_penalized(spider, errors)
    return per_clip, None


def _candidate_lists(candidates: Mapping[str, Sequence[str]], aligned: Alignment) -> dict[str, list[str]]:
    """The N-best list of every scored clip; a scored clip without one is an error naming it."""
    absent = [n for n in aligned.file_names if not candidates.get(n)]
    if absent:
        raise AlignmentError(
            f"{len(absent)} scored clips have no candidates for SPIDEr-max: {_names(absent)}"
        )
    for name in aligned.file_names:
        if isinstance(candidates[name], str):
            raise TypeError(f"candidates for {name!r} is a str, expected a list of captions")
    return {n: list(candidates[n]) for n in aligned.file_names}


def _spider_max(
    gts: Mapping[str, list[str]], candidate_tokens: Mapping[str, list[str]], candidate_spice: Iterator[float]
) -> np.ndarray:
    """Per clip: the highest SPIDEr among its candidates (as aac-metrics' spider_max). [B] float64

    CIDEr-D of candidate k is scored with the clip's references as corpus (document frequencies come from the
    references only, so other clips' candidates never change it); shorter lists repeat their last candidate.
    """
    names = list(gts)
    depth = max(len(c) for c in candidate_tokens.values())
    cider = np.stack(
        [
            Cider().compute_score(
                gts, {n: [candidate_tokens[n][min(k, len(candidate_tokens[n]) - 1)]] for n in names}
            )[1]
            for k in range(depth)
        ],
        axis=1,
    )  # --> [B, depth]
    spice = np.full((len(names), depth), -np.inf)
    for i, name in enumerate(names):
        for k in range(len(candidate_tokens[name])):
            spice[i, k] = next(candidate_spice)
        cider[i, len(candidate_tokens[name]) :] = -np.inf
    return np.max((cider + spice) / 2, axis=1)


def split_keywords(text: str) -> frozenset[str]:
    """Keyword caption -> set: split on commas, strip, lowercase, drop empties ("dog, Bark," -> {dog, bark}).

    Exact for the ontology rule's outputs, whose names never contain commas (they become " -").
    """
    return frozenset(k for k in (part.strip().lower() for part in text.split(",")) if k)


def score_keywords(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    allow_missing: bool = False,
    allow_extra: bool = False,
) -> CaptionScores:
    """Keyword precision/recall/F1 and Jaccard for AudioSet keyword outputs, compared as comma-split sets.

    A clip's reference set is the union of its references' keywords (AudioSet clips have one). Micro: true
    positives, predicted and reference keyword counts summed over clips, then P/R/F1. Macro: per-clip P/R/F1
    and Jaccard averaged over clips (macro F1 is the mean of per-clip F1, not F1 of the mean P and R). An
    empty side gives 0 for that clip's ratio.
    """
    aligned = align(predictions, references, allow_missing=allow_missing, allow_extra=allow_extra)
    per_clip: dict[str, dict[str, float]] = {}
    true_positives = predicted_total = reference_total = 0
    for name in aligned.file_names:
        predicted = split_keywords(aligned.predictions[name])
        reference = frozenset().union(*(split_keywords(r) for r in aligned.references[name]))
        hits = len(predicted & reference)
        true_positives += hits
        predicted_total += len(predicted)
        reference_total += len(reference)
        per_clip[name] = {
            "keyword_precision": hits / len(predicted) if predicted else 0.0,
            "keyword_recall": hits / len(reference) if reference else 0.0,
            "keyword_f1": 2 * hits / (len(predicted) + len(reference)) if predicted or reference else 0.0,
            "keyword_jaccard": hits / len(predicted | reference) if predicted or reference else 0.0,
        }

    def mean_of(metric: str) -> float:
        return float(np.mean([clip[metric] for clip in per_clip.values()]))

    corpus: dict[str, float | None] = {
        "keyword_precision_micro": true_positives / predicted_total if predicted_total else 0.0,
        "keyword_recall_micro": true_positives / reference_total if reference_total else 0.0,
        "keyword_f1_micro": (
            2 * true_positives / (predicted_total + reference_total)
            if predicted_total + reference_total
            else 0.0
        ),
        "keyword_precision_macro": mean_of("keyword_precision"),
        "keyword_recall_macro": mean_of("keyword_recall"),
        "keyword_f1_macro": mean_of("keyword_f1"),
        "keyword_jaccard": mean_of("keyword_jaccard"),
    }
    return CaptionScores(corpus, per_clip, {}, list(aligned.warnings))


# ----------------------------------------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------------------------------------


def format_table(scores: CaptionScores, *, digits: int = 4) -> str:
    """Markdown table of the corpus scores, with a 95% interval column when bootstrapped (as DCASE's result
    pages print them); unavailable metrics show n/a with the reason below the table."""
    with_intervals = bool(scores.intervals)
    lines = [
        f"| metric ({scores.num_clips} clips) | score |" + (" 95% interval |" if with_intervals else ""),
        "|---|---|" + ("---|" if with_intervals else ""),
    ]
    for key, value in scores.corpus.items():
        shown = "n/a" if value is None else f"{value:.{digits}f}"
        if with_intervals:
            low, high = scores.intervals.get(key, (None, None))
            shown += " | " + ("" if low is None else f"[{low:.{digits}f}, {high:.{digits}f}]")
        lines.append(f"| {METRIC_NAMES[key]} | {shown} |")
    notes = [f"- {METRIC_NAMES[k]}: {reason}" for k, reason in scores.unavailable.items()]
    notes += [f"- warning: {w}" for w in scores.warnings]
    return "\n".join(lines + ([""] + notes if notes else []))


def select_best_metric(results: Mapping[str, float], metric: str) -> tuple[str, float]:
    """The checkpoint-selection score: `metric` (e.g. "clotho/fense") if it was computed, else the same
    dataset's CIDEr-D, which every preset computes without jars or models (one log line per metric)."""
    if metric in results:
        return metric, results[metric]
    dataset = metric.rpartition("/")[0]
    fallback = f"{dataset}/{FALLBACK_METRIC}" if dataset else FALLBACK_METRIC
    if fallback not in results:
        raise ValueError(
            f"best_metric {metric!r} and its fallback {fallback!r} are not among the validation results "
            f"{sorted(results)}; set --config.eval.best_metric to one of them"
        )
    if metric not in _fallbacks_logged:
        _fallbacks_logged.add(metric)
        logging.warning(
            "best_metric %s was not computed (see the unavailable metrics above); selecting checkpoints by %s.",
            metric,
            fallback,
        )
    return fallback, results[fallback]


_fallbacks_logged: set[str] = set()


def write_json(path: str | Path, scores: CaptionScores, **extra: object) -> None:
    """JSON with corpus scores, unavailable metrics with reasons, warnings, per-clip scores and `extra`."""
    payload = {**extra, **scores.to_json_dict()}
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
