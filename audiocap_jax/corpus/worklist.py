"""What `predict` captions and how it is fed: the work list (an audio folder, a list of paths or URLs, a TFDS
split) and the input stream that keeps the accelerator busy.

Work list (`read_work_list`, from `--data`):
  FOLDER            audio files under it (sorted; `--recursive` for subfolders), named by their relative path;
                    predict's own outputs there (its CSVs, N-best, log and `.shards/`, of this run or an earlier
                    one whose `_log.json` lies among them) are never taken for audio;
  @LIST.txt         one audio path or URL per line (`gs://`, `s3://`, ...: read through `etils.epath`, the file
                    layer the TFDS builders use), named as written; relative paths start at the list's folder;
  tfds:NAME/SPLIT   the records of a TFDS build in `--data_dir` (stored log-mels, no audio decoding), read with
                    `data/pipeline.py`'s `eval_dataset`, named by their `file_name`.

Input stream (`feed`): the items of this process's shards, in order, decoded and turned into log-mels by
`input_workers` worker processes (a bounded, ordered pool: results come back in submission order, at most
`4 x workers` files ahead), batched per shard (a batch never spans two shards, so a shard's captions do not
depend on which process decodes it) and prefetched by a thread while the device decodes. The stream counts
the seconds its producer worked and the seconds the consumer waited, for the decode-bound / input-bound line.

Legend: B batch, M mel bins, F the model's frames (`num_frames`), P prompt tokens.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import logging
from etils import epath

from audiocap_jax import audio, cli, preflight, text
from audiocap_jax.data import features, pipeline
from audiocap_jax.data.prepare import AUDIO_EXTENSIONS

TFDS_PREFIX = "tfds:"
LIST_PREFIX = "@"
SHARDS_SUFFIX = ".shards"  # <output>.shards/: the finished shards of a predict run


@dataclasses.dataclass(frozen=True)
class WorkList:
    """The items predict captions, in order: audio paths with their CSV names, or the records of a TFDS split."""

    data: str  # --data as given
    paths: tuple[str, ...] = ()  # audio: what to read (local path or URL)
    names: tuple[str, ...] = ()  # audio: the CSV's file_name of each path
    tfds: pipeline.DatasetSpec | None = None  # tfds: the split (named by its records)
    num_records: int = 0  # tfds: records in the split

    def __len__(self) -> int:
        return self.num_records if self.tfds is not None else len(self.paths)

    def take(self, count: int) -> WorkList:
        """The first `count` items (0 = all)."""
        if not count:
            return self
        return dataclasses.replace(
            self, paths=self.paths[:count], names=self.names[:count], num_records=min(self.num_records, count)
        )

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the list for resuming: its source, length and (audio) a digest of its names."""
        digest = hashlib.sha256("\n".join(self.names).encode("utf-8")).hexdigest()[:16]
        return {"data": self.data, "items": len(self), "names_sha256": digest if self.tfds is None else None}


# ---------------------------------------------------------------------------------------------------------------
# Work lists.
# ---------------------------------------------------------------------------------------------------------------
def read_work_list(
    data: str, *, recursive: bool = False, data_dir: str = "", n_mels: int = 80, outputs: Sequence[Path] = ()
) -> WorkList:
    """`--data` -> its WorkList; UserError for a missing or empty source. `outputs`: this run's output files
    and shard folder, never listed as audio; `n_mels` picks a TFDS build's mel config."""
    if data.startswith(TFDS_PREFIX):
        return _tfds_work_list(data, data_dir, n_mels)
    if data.startswith(LIST_PREFIX):
        return _listed(data)
    folder = Path(data).expanduser()
    files = list_audio(folder, recursive, outputs)
    return WorkList(data, tuple(map(str, files)), tuple(f.relative_to(folder).as_posix() for f in files))


def list_audio(folder: Path, recursive: bool = False, outputs: Sequence[Path] = ()) -> list[Path]:
    """Audio files in `folder` (sorted), without predict's outputs: `outputs` and those named by the
    `*_log.json` predict logs found there (an earlier run's CSVs, N-best, shard folder)."""
    if not folder.is_dir():
        raise cli.UserError(f"--data={folder} is not a folder.", "pass the folder that holds the audio files")
    pattern = "**/*" if recursive else "*"
    excluded = [Path(p).absolute() for p in outputs] + _earlier_outputs(folder, pattern)
    files = sorted(
        p
        for p in folder.glob(pattern)
        if p.name.lower().endswith(AUDIO_EXTENSIONS)
        and not p.is_dir()
        and not any(p.absolute() == e or e in p.absolute().parents for e in excluded)
    )
    if not files:
        raise cli.UserError(
            f"--data={folder} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"
            f"{'' if recursive else ' at its top level'}.",
            "pass the folder that holds them" + ("" if recursive else ", or add --recursive for subfolders"),
        )
    return files


def _earlier_outputs(folder: Path, pattern: str) -> list[Path]:
    """Files and shard folders that predict logs under `folder` name as their outputs."""
    found = []
    for log in folder.glob(f"{pattern}_log.json"):
        try:
            written = json.loads(log.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(written, dict) and "output_file" in written:
            output = Path(str(written["output_file"])).absolute()
            found += [output, Path(str(written.get("nbest_file", output))).absolute()]
            found.append(output.with_name(output.name + SHARDS_SUFFIX))
    return found


def _listed(data: str) -> WorkList:
    """`@list.txt`: one path or URL per line (blank lines skipped); relative paths start at the list's folder."""
    list_path = epath.Path(data[len(LIST_PREFIX) :]).expanduser()
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise cli.UserError(
            f"--data={data}: cannot read the list {list_path} ({error}).",
            "pass @ and a readable UTF-8 text file with one audio path or URL per line",
        ) from error
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise cli.UserError(
            f"--data={data}: {list_path} lists no audio files.", "write one path or URL per line"
        )
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in seen:
            raise cli.UserError(
                f"--data={data}: {name!r} is listed twice (entries {seen[name]} and {number}); each would "
                "get a row of the same name.",
                "list every file once",
            )
        seen[name] = number
    paths = [
        name if "://" in name or Path(name).is_absolute() else str(list_path.parent / name) for name in names
    ]
    return WorkList(data, tuple(paths), tuple(names))


def _tfds_work_list(data: str, data_dir: str, n_mels: int) -> WorkList:
    """`tfds:clotho/evaluation` (a dataset of `pipeline.TFDS_NAMES`, an unsliced split) built in `data_dir`."""
    name, _, split = data[len(TFDS_PREFIX) :].partition("/")
    if not split or "[" in split:
        raise cli.UserError(
            f"--data={data} does not name a dataset and a whole split.",
            "write --data=tfds:<dataset>/<split>, e.g. tfds:clotho/evaluation (--take-first-n=N for part of it)",
        )
    mel_config = f"mel{n_mels}"
    preflight.check_dataset(name, split, data_dir, mel_config, "--data", pipeline.EVAL_SPLITS, "--data_dir")
    spec = pipeline.DatasetSpec(name=name, data_dir=data_dir, split=split, config=mel_config)
    size = preflight.tfds_splits(data_dir, spec.builder_name, mel_config, "--data_dir")[split]
    return WorkList(data, tfds=spec, num_records=size)


# ---------------------------------------------------------------------------------------------------------------
# The input stream.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Part:
    """One element of the input stream: a batch of shard `shard`, or (batch None) the end of that shard."""

    shard: int
    batch: dict[str, np.ndarray] | None = (
        None  # mel [B, M, F], decoder_prompt [B, P], mask [B], file_name [B]
    )
    clips: int = 0  # valid rows of the batch (windows)
    seconds: float = 0.0  # audio seconds in its valid rows
    failures: tuple[dict[str, str], ...] = ()  # end of shard: the shard's files that could not be decoded


@dataclasses.dataclass(frozen=True)
class Batching:
    """How items become batches: the model's input and the forced prompt."""

    batch_size: int
    n_mels: int
    num_frames: int  # F: the model's window in mel frames (100 per second)
    prompt: tuple[int, ...]
    long_audio: str = "truncate"


def audio_parts(work: WorkList, shards: Sequence[range], batching: Batching, workers: int) -> Iterator[Part]:
    """The audio items of `shards` (ranges of work-list indices), decoded by `workers` processes (0: in this
    thread), as batches per shard, each shard closed by its end Part."""
    items = [i for shard in shards for i in shard]
    decoded = _ordered_map(
        lambda i: (work.paths[i], batching.n_mels, batching.num_frames, batching.long_audio), items, workers
    )
    for number, shard in enumerate(shards):
        failures: list[dict[str, str]] = []
        named = ((work.names[i], next(decoded)) for i in shard)
        yield from (Part(number, *b) for b in _audio_batches(named, batching, failures))
        yield Part(number, failures=tuple(failures))


def _audio_batches(
    named: Iterator[tuple[str, Any]], batching: Batching, failures: list[dict[str, str]]
) -> Iterator[tuple[dict[str, np.ndarray], int, float]]:
    """(batch, valid rows, audio seconds) of decoded files; windows are named `<file>#t=<start>`."""
    pending: list[tuple[str, float, np.ndarray]] = []
    for name, result in named:
        if isinstance(result, audio.AudioDecodeError):
            logging.warning("Skipping %s: %s", name, result.reason)
            failures.append({"file_name": name, "reason": result.reason})
            continue
        for start, seconds, mel in result:
            shown = name if batching.long_audio == "truncate" else f"{name}#t={start:g}"
            pending.append((shown, seconds, mel))
            if len(pending) == batching.batch_size:
                yield _pad(pending, batching)
                pending = []
    if pending:
        yield _pad(pending, batching)


def _pad(
    rows: list[tuple[str, float, np.ndarray]], batching: Batching
) -> tuple[dict[str, np.ndarray], int, float]:
    """Rows -> a batch of `batch_size` rows, the missing ones zero and masked."""
    size, valid = batching.batch_size, len(rows)
    mel = np.zeros((size, batching.n_mels, batching.num_frames), np.float32)
    mel[:valid] = np.stack([r[2] for r in rows])
    batch = {
        "mel": mel,
        "decoder_prompt": np.tile(np.asarray(batching.prompt, np.int32), (size, 1)),
        "mask": np.arange(size) < valid,
        "file_name": np.asarray([r[0] for r in rows] + [""] * (size - valid), dtype=object),
    }
    return batch, valid, sum(r[1] for r in rows)


def _ordered_map(args: Callable[[int], tuple], items: Sequence[int], workers: int) -> Iterator[Any]:
    """`audio.window_mels(*args(i))` of every item, in order; with workers, at most 4 x workers ahead."""
    if workers == 0:
        yield from (audio.window_mels(*args(i), fft_workers=-1) for i in items)
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=features.worker_context([audio.__name__])
    )
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    try:
        for i in items:
            pending.append(pool.submit(audio.window_mels, *args(i)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def tfds_parts(
    work: WorkList, shards: Sequence[range], batching: Batching, tokenizer: text.Tokenizer, style: str
) -> Iterator[Part]:
    """The records of `shards` through `pipeline.eval_dataset` (one slice of the split per shard), batched
    and padded as the audio parts are; `style` is the forced prefix's."""
    for number, shard in enumerate(shards):
        spec = dataclasses.replace(
            work.tfds, split=f"{work.tfds.split}[{shard.start}:{shard.stop}]", style=style
        )
        batches = pipeline.eval_dataset(
            spec,
            tokenizer,
            global_batch_size=batching.batch_size,
            max_frames=batching.num_frames,
            shard=grain.sharding.NoSharding(),
        )
        for batch in batches:
            mask = np.asarray(batch["mask"])
            seconds = float(np.asarray(batch["num_frames"])[mask].sum()) / 100
            yield Part(number, dict(batch), int(mask.sum()), seconds)
        yield Part(number)


class Prefetcher(Iterator[Part]):
    """Runs `parts` in a thread, `depth` Parts ahead; counts the producer's working seconds (not the time it
    waits for room) and the consumer's waiting seconds, so the log can say which side is the bottleneck."""

    _END = object()

    def __init__(self, parts: Iterator[Part], depth: int):
        self._parts = parts
        self._queue: queue.Queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self.produced_seconds = 0.0  # producer: decoding, log-mels, batching
        self.waited_seconds = 0.0  # consumer: waiting for the next Part
        self._thread = threading.Thread(target=self._run, name="predict-input", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                part = next(self._parts, self._END)
                self.produced_seconds += time.perf_counter() - started
                self._queue.put(part)
                if part is self._END:
                    return
        except BaseException as error:  # handed to the consumer, which raises it with its traceback
            self._queue.put(error)
        finally:
            self._parts.close()

    def __next__(self) -> Part:
        started = time.perf_counter()
        part = self._queue.get()
        self.waited_seconds += time.perf_counter() - started
        if isinstance(part, BaseException):
            raise part
        if part is self._END:
            raise StopIteration
        return part

    def close(self) -> None:
        """Stop the producer (its pool cancels what has not started) and let it finish."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        self._thread.join()
