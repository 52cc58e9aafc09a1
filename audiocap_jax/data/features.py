"""AudioFolder -> TFDS feature records: the parallel log-mel worker and the builder all three datasets share.

The TFDS builders in `tfds_builders/{clotho,audiocaps,audioset_small}` subclass `AudioFolderBuilder`; each one
only says how a `metadata.jsonl` row turns into captions and labels. Everything else lives here once: the
feature schema, the 80/128 mel-bin configs, parallel extraction with a progress bar, and the report of clips
that could not be decoded (skipped, counted, logged by name and stored in the dataset's `metadata.json`).

This module imports no TensorFlow: with `file_format="array_record"` and only `Tensor`/`Scalar`/`Text`
features, TFDS 4.9.10 both builds and reads (`tfds.data_source`) without it.

Shape legend: M mel bins (80 or 128), S frames (`audio.N_FRAMES` = 3000 for 30 s).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import json
import multiprocessing
import os
import pathlib
import re
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
SHARD_ENV = "AUDIOCAP_TFDS_SHARD"
# Where the builder directories live (a checkout of this repository).
BUILDERS_DIR = pathlib.Path(__file__).resolve().parents[2] / "tfds_builders"


@dataclasses.dataclass(frozen=True)
class ClipFeatures:
    """What the worker returns for one decodable clip."""

    mel: np.ndarray  # float16: [M, S]
    num_frames: int  # frames of S that start inside real audio


def extract_clip(path: str | os.PathLike, n_mels: int) -> ClipFeatures:
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
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=_worker_context()) as pool:
        chunksize = max(1, min(16, len(paths) // (4 * num_workers)))
        results = pool.map(_extract_or_reason, paths, [n_mels] * len(paths), chunksize=chunksize)
        yield from tqdm.tqdm(results, **progress)


def _worker_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # librosa imports its resampler stack (numba, soxr; ~3 s) lazily on first use: pay that once, in the server.
    context.set_forkserver_preload([__name__, "librosa.core.audio"])
    return context


def default_num_workers() -> int:
    """Worker processes for a build: `$AUDIOCAP_TFDS_NUM_WORKERS`, else one per core."""
    value = os.environ.get(NUM_WORKERS_ENV)
    if value is None:
        return os.cpu_count() or 1
    if not value.isdigit():
        raise ValueError(f"${NUM_WORKERS_ENV}={value!r} must be a number of processes >= 0 (0 = no pool).")
    return int(value)


def parse_shard(value: str | Sequence[int] | None) -> tuple[int, int] | None:
    """Shard spec "3/16" or (3, 16) -> (3, 16): build only the rows i with i % 16 == 3 (docs/pipeline.md)."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise ValueError(f"shard {value!r} must look like 'INDEX/COUNT', e.g. '3/16'.")
        value = (int(match.group(1)), int(match.group(2)))
    index, count = (int(v) for v in value)
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} must be in [0, {count}) for {count} shards.")
    return index, count


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


def read_split_rows(split_dir: pathlib.Path) -> list[dict[str, Any]]:
    """Rows of one split's metadata.jsonl; each must name its `file_name`, and only once (it is the TFDS key)."""
    rows, seen = prepare.read_metadata(split_dir), set()
    for line_number, row in enumerate(rows, start=1):
        file_name = row.get("file_name") if isinstance(row, dict) else None
        where = f"{split_dir / prepare.METADATA_FILE} row {line_number}"
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


def find_split_folders(manual_dir: pathlib.Path, splits: Sequence[str]) -> dict[str, pathlib.Path]:
    """The split folders (holding metadata.jsonl) under `manual_dir` or `manual_dir/audiofolder`."""
    for root in (manual_dir, manual_dir / "audiofolder"):
        found = {split: root / split for split in splits if (root / split / prepare.METADATA_FILE).is_file()}
        if found:
            return found
    raise FileNotFoundError(
        f"No split folder with {prepare.METADATA_FILE} under {manual_dir} (looked for {', '.join(splits)} "
        f"there and in {manual_dir / 'audiofolder'}). Run `python -m audiocap_jax.data.prepare` first and pass "
        "its AudioFolder as --manual_dir."
    )


class AudioFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Turns prepared AudioFolders into log-mel records; subclasses map a metadata row to captions/labels.

    Every dataset gets the same features, so the input pipeline treats all three alike:
      mel `[M, S] float16`, num_frames `int32`, file_name `Text`, captions `Sequence(Text)` (all references;
      AudioSet: the one keyword caption), labels `Sequence(Text)` (AudioSet label ids, else empty).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Whisper log-mel features from a prepared AudioFolder."}
    BUILDER_CONFIGS = list(MEL_CONFIGS)
    # Split folder names the prepare command writes; the builder builds those that exist.
    SPLITS: tuple[str, ...] = ()
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def __init__(self, *, num_workers: int | None = None, shard: str | Sequence[int] | None = None, **kwargs):
        """`num_workers` and `shard` default to $AUDIOCAP_TFDS_NUM_WORKERS / $AUDIOCAP_TFDS_SHARD (for the CLI)."""
        kwargs.setdefault("file_format", "array_record")  # Readable without TensorFlow.
        super().__init__(**kwargs)
        self._num_workers = default_num_workers() if num_workers is None else num_workers
        self._shard = parse_shard(os.environ.get(SHARD_ENV) if shard is None else shard)

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

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        self._prepare_source(manual_dir)
        folders = find_split_folders(manual_dir, self.SPLITS)
        self.info.metadata.update(
            {
                "source": os.fspath(manual_dir),
                "shard": list(self._shard) if self._shard else None,
                "splits": {},
            }
        )
        return {split: self._generate_examples(split, folder) for split, folder in folders.items()}

    def _prepare_source(self, manual_dir: pathlib.Path) -> None:
        """Hook: load what the rows need beside metadata.jsonl (e.g. the AudioSet ontology)."""

    def _row_texts(self, row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Hook: (captions, labels) of one metadata row."""
        return row_captions(row), []

    def _generate_examples(self, split: str, folder: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
        rows = read_split_rows(folder)
        if not rows:
            logging.warning("%s %s: the split is empty (%s lists no clip).", self.name, split, folder)
        if self._shard:
            index, count = self._shard
            rows = rows[index::count]
        texts = [self._row_texts(row) for row in rows]
        expects_captions = any(captions for captions, _ in texts)
        skipped: list[dict[str, str]] = []
        caption_counts: dict[str, int] = {}
        keep = []
        for row, (captions, labels) in zip(rows, texts, strict=True):
            if expects_captions and not captions:
                skipped.append({"file_name": row["file_name"], "reason": prepare.NO_CAPTION})
            else:
                keep.append((row["file_name"], captions, labels))
        paths = [os.fspath(folder / file_name) for file_name, _, _ in keep]
        description = f"{self.name}/{self.builder_config.name} {split}"
        results = extract_many(paths, self.builder_config.n_mels, self._num_workers, description)
        for (file_name, captions, labels), result in zip(keep, results, strict=True):
            if isinstance(result, str):
                skipped.append({"file_name": file_name, "reason": result})
                logging.warning("%s %s: skipping %s: %s", self.name, split, file_name, result)
                continue
            caption_counts[str(len(captions))] = caption_counts.get(str(len(captions)), 0) + 1
            yield (
                file_name,
                {
                    "mel": result.mel,
                    "num_frames": result.num_frames,
                    "file_name": file_name,
                    "captions": captions,
                    "labels": labels,
                },
            )
        self.info.metadata["splits"][split] = {
            "num_rows": len(rows),
            "num_skipped": len(skipped),
            "skipped": skipped,
            "captions_per_clip": dict(sorted(caption_counts.items(), key=lambda item: int(item[0]))),
        }
        if skipped:
            logging.warning(
                "%s %s: skipped %d of %d clips (listed in the dataset's metadata.json): %s",
                self.name,
                split,
                len(skipped),
                len(rows),
                ", ".join(s["file_name"] for s in skipped),
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
    manual_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    config: str = "mel80",
    num_workers: int | None = None,
    shard: str | Sequence[int] | None = None,
) -> tfds.core.DatasetBuilder:
    """Python equivalent of `tfds build tfds_builders/<name> --config=<config> --manual_dir --data_dir`."""
    builder = load_builder_class(name)(
        config=config,
        data_dir=os.fspath(data_dir),
        file_format="array_record",
        num_workers=num_workers,
        shard=shard,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def build_report(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The skipped-clip report a build stored in `<data_dir>/<name>/<config>/<version>/metadata.json`."""
    path = pathlib.Path(dataset_dir) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {dataset_dir} is not a dataset built by tfds_builders.")
    return json.loads(path.read_text())
