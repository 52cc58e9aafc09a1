"""AudioFolder -> TFDS feature records: the parallel log-mel worker and the builder all three datasets share.

The TFDS builders in `tfds_builders/{clotho,audiocaps,audioset_small}` subclass `AudioFolderBuilder`; each one
only says how a `metadata.jsonl` row turns into captions and labels. Everything else lives here once: the
feature schema, the 80/128 mel-bin configs, parallel extraction with a progress bar, and the report of clips
that could not be decoded (skipped, counted, logged by name and stored in the dataset's `metadata.json`).

Builds run on a local process pool, or, given Beam pipeline options, as Apache Beam pipelines on any Beam
runner (DirectRunner, Dataflow, Flink, Spark). Both engines decode with `extract_clip`, lay out records
with `make_example` and report with `split_report`, so they write the same examples and the same report.
Beam is imported lazily, only by Beam builds.

Every file a build reads (metadata.jsonl, ontology.json, the audio) goes through `etils.epath`, so
--manual_dir may be a bucket URL (`gs://`, `s3://`, `az://`) that Dataflow workers read directly. epath and
not Beam's `FileSystems`: it is what TFDS itself opens --manual_dir and --data_dir with, and it is there in
local builds without Beam (the same code reads a bucket with or without Beam). It reads buckets through
fsspec (gcsfs, s3fs, adlfs), or through tf.io.gfile when TensorFlow is installed.

This module imports no TensorFlow: with `file_format="array_record"` and only `Tensor`/`Scalar`/`Text`
features, TFDS 4.9.10 both builds and reads (`tfds.data_source`) without it.

Shape legend: M mel bins (80 or 128), S frames (`audio.N_FRAMES` = 3000 for 30 s).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import inspect
import io
import itertools
import json
import math
import multiprocessing
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from etils import epath

from audiocap_jax import audio
from audiocap_jax.data import prepare

# Environment overrides, because `tfds build` passes no builder arguments.
NUM_WORKERS_ENV = "AUDIOCAP_TFDS_NUM_WORKERS"
# Where the builder directories live (a checkout of this repository).
BUILDERS_DIR = pathlib.Path(__file__).resolve().parents[2] / "tfds_builders"


@dataclasses.dataclass(frozen=True)
class ClipFeatures:
    """What the worker returns for one decodable clip."""

    mel: np.ndarray  # float16: [M, S]
    num_frames: int  # frames of S that start inside real audio


def extract_clip(path: epath.PathLike, n_mels: int) -> ClipFeatures:
    """Decodes one file and computes its Whisper log-mel, stored as float16 (half the disk of float32).

    Raises:
      audio.AudioDecodeError: the file is missing, empty, truncated, not audio or has NaN/inf samples.
    """
    samples = audio.load_audio(path)
    mel = audio.log_mel(samples, n_mels=n_mels)[0]
    return ClipFeatures(mel=mel.astype(np.float16), num_frames=audio.num_valid_frames(samples.shape[-1]))


def _extract_or_reason(path: str, n_mels: int) -> ClipFeatures | str:
    """Pool worker: the features, or the decode error's reason (exceptions pickle poorly across processes)."""
    try:
        return extract_clip(path, n_mels)
    except audio.AudioDecodeError as error:
        return error.reason


def extract_many(
    paths: Sequence[str], n_mels: int, num_workers: int, description: str = "log-mel"
) -> Iterator[ClipFeatures | str]:
    """Features for every path, in input order, computed on `num_workers` processes (0 = in this process).

    Results come back in order so builds are deterministic. Workers are not forked from the caller, which
    may run JAX or TFDS threads that do not survive a fork: they fork from a forkserver that has imported this
    module and librosa's resampler once, instead of every worker of every split re-importing them (~3 s).
    Like any spawn/forkserver pool, a script that calls this must guard its entry with
    `if __name__ == "__main__":` (the `tfds build` CLI and pytest do).

    Yields:
      For each path, `ClipFeatures` or the reason (str) it could not be decoded.
    """
    progress = dict(total=len(paths), desc=description, unit="clip", smoothing=0.1)
    if num_workers == 0:
        yield from tqdm.tqdm((_extract_or_reason(path, n_mels) for path in paths), **progress)
        return
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=worker_context()) as pool:
        chunksize = max(1, min(16, len(paths) // (4 * num_workers)))
        results = pool.map(_extract_or_reason, paths, [n_mels] * len(paths), chunksize=chunksize)
        yield from tqdm.tqdm(results, **progress)


def worker_context(preload: Sequence[str] = (__name__,)) -> multiprocessing.context.BaseContext:
    """Start method of worker pools (the build's, predict's input workers): a forkserver that imported
    `preload` and librosa's decoding stack once, so workers start fast and without the parent's threads
    (JAX's, Grain's). predict preloads only `audiocap_jax.audio`: this module also imports TFDS (seconds)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # librosa imports its resampler stack (numba, soxr; ~3 s) lazily on first use: pay that once, in the server.
    context.set_forkserver_preload([*preload, "librosa.core.audio"])
    return context


def default_num_workers() -> int:
    """Worker processes for a build: `$AUDIOCAP_TFDS_NUM_WORKERS`, else one per core."""
    value = os.environ.get(NUM_WORKERS_ENV)
    if value is None:
        return os.cpu_count() or 1
    if not value.isdigit():
        raise ValueError(f"${NUM_WORKERS_ENV}={value!r} must be a number of processes >= 0 (0 = no pool).")
    return int(value)


@dataclasses.dataclass
class MelConfig(tfds.core.BuilderConfig):
    """A builder config per Whisper filterbank: 80 bins (v1/v2 models) or 128 (large-v3)."""

    n_mels: int = 80


MEL_CONFIGS = tuple(
    MelConfig(
        name=f"mel{n}", n_mels=n, description=f"Whisper log-mel, {n} bins x {audio.N_FRAMES} frames, float16."
    )
    for n in audio.MEL_BINS
)


def row_captions(row: Mapping[str, Any]) -> list[str]:
    """Every non-empty caption of a row, in `caption_1, caption_2, ...` order (AudioCaps clips have 1-5)."""
    captions = (caption for caption in prepare.captions_of(row) if isinstance(caption, str))
    return [caption.strip() for caption in captions if caption.strip()]


def read_split_rows(split_dir: epath.PathLike) -> list[dict[str, Any]]:
    """Rows of one split's metadata.jsonl; each must name its `file_name`, and only once (it is the TFDS key)."""
    rows, seen = prepare.read_metadata(split_dir), set()
    for line_number, row in enumerate(rows, start=1):
        file_name = row.get("file_name") if isinstance(row, dict) else None
        where = f"{epath.Path(split_dir) / prepare.METADATA_FILE} row {line_number}"
        if not isinstance(file_name, str) or not file_name:
            raise ValueError(
                f"{where} has no 'file_name'; every row must name its audio file. Re-run prepare."
            )
        if file_name in seen:
            raise ValueError(
                f"{where} repeats file_name {file_name!r}; file names must be unique. Re-run prepare."
            )
        seen.add(file_name)
    return rows


# fsspec's client package for each bucket scheme epath knows.
BUCKET_CLIENTS = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def source_dir(manual_dir: epath.PathLike) -> epath.Path:
    """--manual_dir as an `epath.Path`, with one clear error when its bucket needs a client not installed.

    Raises:
      ImportError: naming the package to install (e.g. gcsfs for gs://), here and on the workers.
    """
    path = epath.Path(manual_dir)
    try:
        path.exists()
    except ImportError as error:
        scheme = os.fspath(path).partition("://")[0]
        package = BUCKET_CLIENTS.get(scheme, f"the fsspec filesystem for {scheme}://")
        raise ImportError(
            f"--manual_dir={path} is a {scheme}:// URL, and reading it needs {package}, which is not "
            f"installed. Install it where the build starts and on every worker: `pip install {package}` "
            "(README, 'Builds on Apache Beam')."
        ) from error
    return path


def find_split_folders(manual_dir: epath.PathLike, splits: Sequence[str]) -> dict[str, epath.Path]:
    """The split folders (holding metadata.jsonl) under `manual_dir` or `manual_dir/audiofolder`."""
    manual_dir = epath.Path(manual_dir)
    for root in (manual_dir, manual_dir / "audiofolder"):
        found = {split: root / split for split in splits if (root / split / prepare.METADATA_FILE).is_file()}
        if found:
            return found
    raise FileNotFoundError(
        f"No split folder with {prepare.METADATA_FILE} under {manual_dir} (looked for {', '.join(splits)} "
        f"there and in {manual_dir / 'audiofolder'}). Run `python -m audiocap_jax.data.prepare` first and pass "
        "its AudioFolder as --manual_dir."
    )


@dataclasses.dataclass(frozen=True)
class Clip:
    """One metadata row to build; a Beam build's workers read theirs from the work list (`write_work_list`)."""

    index: int  # row number in metadata.jsonl; orders the skip report
    file_name: str  # the AudioFolder file name, also the TFDS key
    captions: list[str]
    labels: list[str]


@dataclasses.dataclass(frozen=True)
class Skip:
    """A clip left out of the build, and why."""

    index: int  # row number in metadata.jsonl
    file_name: str
    reason: str


@dataclasses.dataclass
class SplitPlan:
    """The rows of one split, read and checked on the machine that starts the build."""

    num_rows: int
    clips: list[Clip]  # rows to decode
    skipped: list[Skip]  # rows skipped before decoding (no caption)


def make_example(clip: Clip, clip_features: ClipFeatures) -> tuple[str, dict[str, Any]]:
    """(key, example) of a decoded clip: the one record layout of the local and the Beam build."""
    return clip.file_name, {
        "mel": clip_features.mel,
        "num_frames": clip_features.num_frames,
        "file_name": clip.file_name,
        "captions": clip.captions,
        "labels": clip.labels,
    }


def split_report(plan: SplitPlan, skipped: Sequence[Skip]) -> dict[str, Any]:
    """The `metadata.json` entry of a split: rows, skipped clips in row order, captions per built clip."""
    skipped_names = {skip.file_name for skip in skipped}
    caption_counts = collections.Counter(
        len(clip.captions) for clip in plan.clips if clip.file_name not in skipped_names
    )
    return {
        "num_rows": plan.num_rows,
        "num_skipped": len(skipped),
        "skipped": [
            {"file_name": skip.file_name, "reason": skip.reason}
            for skip in sorted(skipped, key=lambda skip: skip.index)
        ],
        "captions_per_clip": {str(count): caption_counts[count] for count in sorted(caption_counts)},
    }


BEAM_MISSING = (
    "Beam pipeline options were given but apache-beam is not installed. Install it with "
    "`pip install -e '.[beam]'` (README, 'Builds on Apache Beam') or build without Beam options."
)
# Beam: the tag of the skipped-clip side output and the namespace of the build's counters.
SKIPPED_TAG = "skipped"
BEAM_COUNTERS = "audiocap_tfds"
# Side output files (JSON lines) in the dataset's directory while it is built; read and removed at the end.
SKIPPED_FILES = "skipped-{split}"
# The clips of a split as JSON lines, written there by the launching machine for the workers; removed at the end.
WORK_LIST = "work-list-{split}.jsonl"
# Byte ranges of the work list that `beam.Create` puts into the job graph: at most this many, whatever the
# number of clips, so the graph stays far below Dataflow's 10 MB (2M clips x ~220 bytes would be 440 MB).
MAX_WORK_RANGES = 256


def write_work_list(path: epath.Path, clips: Sequence[Clip]) -> list[tuple[int, int]]:
    """Writes `clips` to `path` as JSON lines; returns at most MAX_WORK_RANGES [start, stop) byte ranges.

    The ranges cover consecutive lines, in order; `read_work_range` reads one back on a worker.
    """
    lines = [json.dumps(vars(clip)).encode() + b"\n" for clip in clips]  # vars: ~5x faster than asdict
    path.write_bytes(b"".join(lines))
    offsets = [0, *itertools.accumulate(map(len, lines))]  # offsets[i]: where line i starts
    per_range = max(1, math.ceil(len(lines) / MAX_WORK_RANGES))
    return [
        (offsets[start], offsets[min(start + per_range, len(lines))])
        for start in range(0, len(lines), per_range)
    ]


def read_work_range(byte_range: tuple[int, int], work_list: str) -> Iterator[Clip]:
    """Beam worker: the clips of one byte range of the work list (a local path or a bucket URL)."""
    start, stop = byte_range
    with epath.Path(work_list).open("rb") as lines:
        lines.seek(start)
        data = lines.read(stop - start)
    for line in data.splitlines():
        yield Clip(**json.loads(line))


def beam_example_or_skip(clip: Clip, folder: str, n_mels: int, split: str) -> Iterator[Any]:
    """Beam worker: yields the (key, example) of a clip, or its `Skip` on the `SKIPPED_TAG` side output.

    Counts both in the `BEAM_COUNTERS` namespace (`<split>/examples`, `<split>/skipped`), which runners show
    while the job runs (Dataflow's job page, Flink's web UI).
    """
    beam = tfds.core.lazy_imports.apache_beam
    result = _extract_or_reason(os.fspath(epath.Path(folder) / clip.file_name), n_mels)
    if isinstance(result, str):
        beam.metrics.Metrics.counter(BEAM_COUNTERS, f"{split}/skipped").inc()
        logging.warning("%s: skipping %s: %s", split, clip.file_name, result)
        yield beam.pvalue.TaggedOutput(SKIPPED_TAG, Skip(clip.index, clip.file_name, result))
        return
    beam.metrics.Metrics.counter(BEAM_COUNTERS, f"{split}/examples").inc()
    yield make_example(clip, result)


def beam_loss(split: str, plan: SplitPlan, num_written: int, num_skipped: int) -> str | None:
    """Why a Beam build of a split lost clips, or None: every clip must be written or listed as skipped.

    Checked against the records TFDS wrote and the side output's list rather than Beam's counters, which count
    retried bundles twice on runners without committed metrics. It caught the DirectRunner in
    multi_processing mode finishing without error 44 of 2,000 records short (apache-beam 2.77;
    docs/pipeline.md, "DirectRunner modes").
    """
    if num_written + num_skipped == len(plan.clips):
        return None
    return (
        f"split {split} sent {len(plan.clips)} clips to the workers but {num_written} were written and "
        f"{num_skipped} listed as skipped"
    )


class AudioFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Turns prepared AudioFolders into log-mel records; subclasses map a metadata row to captions/labels.

    Every dataset gets the same features, so the input pipeline treats all three alike:
      mel `[M, S] float16`, num_frames `int32`, file_name `Text`, captions `Sequence(Text)` (all references;
      AudioSet: the one keyword caption), labels `Sequence(Text)` (AudioSet label ids, else empty).

    Two engines make the same records and the same skip report. When the build is given Beam options or a
    Beam runner (`--beam_pipeline_options=...`), each split is an Apache Beam pipeline (`_beam_examples`:
    work-list ranges, read on the workers, reshuffled, then `beam_example_or_skip`) that runs wherever the
    runner does (DirectRunner processes, Dataflow, Flink, Spark). Otherwise the clips are decoded here, on a
    local process pool, without Beam. --manual_dir may be a bucket URL in both (`source_dir`).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Whisper log-mel features from a prepared AudioFolder."}
    BUILDER_CONFIGS = list(MEL_CONFIGS)
    # Split folder names the prepare command writes; the builder builds those that exist.
    SPLITS: tuple[str, ...] = ()
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """`num_workers` (local builds only) defaults to $AUDIOCAP_TFDS_NUM_WORKERS, for the CLI."""
        kwargs.setdefault("file_format", "array_record")  # Readable without TensorFlow.
        super().__init__(**kwargs)
        self._num_workers = default_num_workers() if num_workers is None else num_workers
        self._use_beam = False
        self._beam_splits: dict[str, SplitPlan] = {}
        self._beam_skipped: dict[str, int] = {}  # split -> clips on its skipped side output
        # Totals of the last Beam build's counters ("<split>/examples", "<split>/skipped"); empty after a
        # local build. The metadata's report is made from the skipped-clip side output, not from these.
        self.beam_counters: dict[str, int] = {}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file.

        TFDS 4.9.10's default looks the file up through `importlib_resources`, a backport it imports on
        Python >= 3.9 without declaring it (tensorflow/datasets#11212), so builders in packages fail with
        ModuleNotFoundError. The file of the class is all it needs.
        """
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    # Raw bytes: 2 bytes per value on disk and a zero-copy np.frombuffer on read. The default
                    # encoding would store a float32 float_list (twice the size, slow to decode).
                    "mel": tfds.features.Tensor(
                        shape=(self.builder_config.n_mels, audio.N_FRAMES),
                        dtype=np.float16,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "num_frames": tfds.features.Scalar(dtype=np.int32),
                    "file_name": tfds.features.Text(),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                    "labels": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _download_and_prepare(
        self, dl_manager: tfds.download.DownloadManager, download_config: tfds.download.DownloadConfig
    ) -> None:
        """Picks the engine: Beam when the build was given a Beam runner or options, else the local pool."""
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        self._beam_splits, self._beam_skipped, self.beam_counters = {}, {}, {}
        super()._download_and_prepare(dl_manager, download_config)
        # Raising here leaves nothing behind: TFDS deletes the unfinished dataset directory.
        losses = []
        for split, plan in self._beam_splits.items():
            written = self.info.splits[split].num_examples
            if loss := beam_loss(split, plan, written, self._beam_skipped[split]):
                losses.append(loss)
        if losses:
            raise RuntimeError(
                f"{self.name}/{self.builder_config.name}: {'; '.join(losses)}. The runner lost records, so "
                f"the dataset was not written. Build again; on one machine, drop --beam_pipeline_options (local "
                f"build) or use direct_running_mode=in_memory. Beam counters: {self.beam_counters}."
            )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual_dir = source_dir(dl_manager.manual_dir)
        self._prepare_source(manual_dir)
        folders = find_split_folders(manual_dir, self.SPLITS)
        self.info.metadata.update({"source": os.fspath(manual_dir), "splits": {}})
        return {split: self._generate_examples(split, folder) for split, folder in folders.items()}

    def _prepare_source(self, manual_dir: epath.Path) -> None:
        """Hook: load what the rows need beside metadata.jsonl (e.g. the AudioSet ontology)."""

    def _row_texts(self, row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Hook: (captions, labels) of one metadata row."""
        return row_captions(row), []

    def _plan_split(self, folder: epath.Path) -> SplitPlan:
        """Reads a split's rows; a row without captions in a captioned split is skipped before decoding."""
        rows = read_split_rows(folder)
        texts = [self._row_texts(row) for row in rows]
        expects_captions = any(captions for captions, _ in texts)
        plan = SplitPlan(num_rows=len(rows), clips=[], skipped=[])
        for index, (row, (captions, labels)) in enumerate(zip(rows, texts, strict=True)):
            if expects_captions and not captions:
                plan.skipped.append(Skip(index, row["file_name"], prepare.NO_CAPTION))
            else:
                plan.clips.append(Clip(index, row["file_name"], captions, labels))
        return plan

    def _generate_examples(self, split: str, folder: epath.Path) -> Any:
        """The split's examples: a Beam PTransform when building on Beam, else a generator (local pool)."""
        plan = self._plan_split(folder)
        if not plan.num_rows:
            logging.warning("%s %s: the split is empty (%s lists no clip).", self.name, split, folder)
        if self._use_beam:
            return self._beam_examples(split, folder, plan)
        return self._local_examples(split, folder, plan)

    def _local_examples(
        self, split: str, folder: epath.Path, plan: SplitPlan
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        paths = [os.fspath(folder / clip.file_name) for clip in plan.clips]
        description = f"{self.name}/{self.builder_config.name} {split}"
        results = extract_many(paths, self.builder_config.n_mels, self._num_workers, description)
        skipped = list(plan.skipped)
        for clip, result in zip(plan.clips, results, strict=True):
            if isinstance(result, str):
                skipped.append(Skip(clip.index, clip.file_name, result))
                logging.warning("%s %s: skipping %s: %s", self.name, split, clip.file_name, result)
                continue
            yield make_example(clip, result)
        self._record_split(split, plan, skipped)

    def _beam_examples(self, split: str, folder: epath.Path, plan: SplitPlan) -> Any:
        """Work-list ranges `| FlatMap(read_work_range) | Reshuffle | FlatMap(beam_example_or_skip)`.

        The clips travel through a file, not the job graph: `beam.Create(clips)` would pickle every clip into
        the graph (about 440 MB for 2M clips; Dataflow refuses graphs over 10 MB). The graph holds at most
        MAX_WORK_RANGES byte ranges; each worker reads its ranges of the work list. Reshuffle spreads the
        clips of a range over the workers (without it, one worker would decode a whole range). Skipped clips
        go to a side output file.
        """
        beam = tfds.core.lazy_imports.apache_beam
        self._beam_splits[split] = plan
        # The dataset directory being written (TFDS points data_path at its temporary copy meanwhile).
        work_list = self.data_path / WORK_LIST.format(split=split)
        work_ranges = write_work_list(work_list, plan.clips)
        skipped_prefix = os.fspath(self.data_path / SKIPPED_FILES.format(split=split))
        extract = beam.FlatMap(
            beam_example_or_skip, folder=os.fspath(folder), n_mels=self.builder_config.n_mels, split=split
        )

        @beam.ptransform_fn
        def examples(pipeline):
            outputs = (
                pipeline
                | "WorkRanges" >> beam.Create(work_ranges)
                | "ReadWorkList" >> beam.FlatMap(read_work_range, work_list=os.fspath(work_list))
                | "Spread" >> beam.Reshuffle()
                | "LogMel" >> extract.with_outputs(SKIPPED_TAG, main="examples")
            )
            _ = (
                outputs[SKIPPED_TAG]
                | "SkipToJson" >> beam.Map(lambda skip: json.dumps(dataclasses.asdict(skip)))
                | "WriteSkipped" >> beam.io.WriteToText(skipped_prefix, file_name_suffix=".jsonl")
            )
            return outputs.examples

        return examples()

    def _process_pipeline_result(self, pipeline_result: Any) -> None:
        """After the Beam pipeline: the skip reports from the side output files, and the counters' totals."""
        beam = tfds.core.lazy_imports.apache_beam
        file_systems = beam.io.filesystems.FileSystems
        counters = pipeline_result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(BEAM_COUNTERS)
        )["counters"]
        # Committed values count each clip once even when a runner retried a bundle; not every runner has them.
        self.beam_counters = {
            counter.key.metric.name: counter.committed if counter.committed is not None else counter.attempted
            for counter in counters
        }
        for split, plan in self._beam_splits.items():
            pattern = os.fspath(self.data_path / SKIPPED_FILES.format(split=split)) + "*"
            files = [metadata.path for metadata in file_systems.match([pattern])[0].metadata_list]
            skipped = []
            for path in files:
                with file_systems.open(path) as lines:
                    skipped.extend(Skip(**json.loads(line)) for line in lines.read().decode().splitlines())
            file_systems.delete(files)
            (self.data_path / WORK_LIST.format(split=split)).unlink()
            self._beam_skipped[split] = len(skipped)
            logging.info(
                "%s %s: Beam counters: %s examples, %s skipped",
                self.name,
                split,
                self.beam_counters.get(f"{split}/examples", 0),
                self.beam_counters.get(f"{split}/skipped", 0),
            )
            self._record_split(split, plan, [*plan.skipped, *skipped])

    def _record_split(self, split: str, plan: SplitPlan, skipped: Sequence[Skip]) -> None:
        """Stores the split's report in the dataset's metadata and warns once about what was skipped."""
        report = split_report(plan, skipped)
        self.info.metadata["splits"][split] = report
        if skipped:
            logging.warning(
                "%s %s: skipped %d of %d clips (listed in the dataset's metadata.json): %s",
                self.name,
                split,
                report["num_skipped"],
                plan.num_rows,
                ", ".join(s["file_name"] for s in report["skipped"]),
            )


def load_builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
    """The builder class of `tfds_builders/<name>`, imported exactly as `tfds build tfds_builders/<name>` does.

    Importing under the CLI's module name (`<name>.<name>_dataset_builder`, with tfds_builders/ on sys.path)
    means a build from Python and one from the CLI are the same code and register nothing twice.
    """
    module_file = BUILDERS_DIR / name / f"{name}_dataset_builder.py"
    if not module_file.is_file():
        known = sorted(
            p.name for p in BUILDERS_DIR.iterdir() if (p / f"{p.name}_dataset_builder.py").is_file()
        )
        raise ValueError(f"No TFDS builder {name!r} in {BUILDERS_DIR}; known builders: {', '.join(known)}.")
    with tfds.core.utils.add_sys_path(BUILDERS_DIR):
        return tfds.core.community.builder_cls_from_module(f"{name}.{module_file.stem}")


def build(
    name: str,
    *,
    manual_dir: epath.PathLike,
    data_dir: str | os.PathLike,
    config: str = "mel80",
    num_workers: int | None = None,
    beam_pipeline_options: str | None = None,
) -> tfds.core.DatasetBuilder:
    """Python equivalent of `tfds build tfds_builders/<name> --config --manual_dir --data_dir`.

    `beam_pipeline_options` takes the CLI's `--beam_pipeline_options` string (comma-separated Beam flags
    without dashes, e.g. "runner=DirectRunner,direct_num_workers=2") and builds on Beam; without it the build
    runs locally on `num_workers` processes.
    """
    source_dir(manual_dir)  # a bucket without its client library: say which package, before TFDS fails on it
    download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    if beam_pipeline_options is not None:
        download_config.beam_options = beam_options(beam_pipeline_options)
    builder = load_builder_class(name)(
        config=config, data_dir=os.fspath(data_dir), file_format="array_record", num_workers=num_workers
    )
    builder.download_and_prepare(download_config=download_config)
    return builder


def beam_options(flags: str) -> Any:
    """`PipelineOptions` from the CLI's comma-separated form, "runner=DirectRunner,direct_num_workers=2",
    parsed now: an empty or malformed option, a value Beam refuses, an option Beam does not know (it would
    drop a misspelt one with a log line) or a runner it cannot create raises ValueError naming it. Beam parses
    lazily, so otherwise its own traceback came once the build had begun, leaving a dataset folder behind."""
    try:
        import apache_beam as beam
    except ImportError as error:
        raise ImportError(BEAM_MISSING) from error
    items = flags.split(",")
    if not all(items):
        raise ValueError(f"--beam_pipeline_options={flags!r} has an empty option (a comma too many).")
    options = beam.options.pipeline_options.PipelineOptions(flags=[f"--{item}" for item in items])  # as TFDS
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):  # Beam's argparse prints its usage and exits on a bad value
            known = options.get_all_options()
            every = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        reason = usage.getvalue().strip().splitlines()[-1].partition("error: ")[2]
        raise ValueError(f"--beam_pipeline_options={flags!r}: {reason}.") from None
    except ValueError as error:
        raise ValueError(f"--beam_pipeline_options={flags!r}: {error}.") from error
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise ValueError(f"--beam_pipeline_options={flags!r}: Beam has no option {', '.join(unknown)}.")
    if known.get("runner"):
        try:
            beam.runners.create_runner(known["runner"])
        except (ValueError, ImportError) as error:
            raise ValueError(f"--beam_pipeline_options={flags!r}: {error}") from error
    return options


def build_report(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The skipped-clip report a build stored in `<data_dir>/<name>/<config>/<version>/metadata.json`."""
    path = pathlib.Path(dataset_dir) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {dataset_dir} is not a dataset built by tfds_builders.")
    return json.loads(path.read_text())
