"""Caption a corpus with the shared jitted search: the original's predict.py, JAX-native, at corpus scale.

    python -m audiocap_jax.predict --checkpoint=RUN_OR_HF_DIR --data=clips/ --output-file=out.csv \
        [--recursive] [--take-first-n=N] [--shard_size=1000] [--input_workers=2] [--overwrite] \
        [--config-file=configs/predict.py --config-file.num_beams=10]

`--data` is an audio folder, `@list.txt` (one path or URL per line) or `tfds:<dataset>/<split>` with
`--data_dir` (the build's stored log-mels, no audio decoding); see `worklist.py`. Writes `out.csv`
(`file_name,caption_predicted`, UTF-8, CSV-quoted), `out_nbest.csv` (`file_name,rank,caption,score`: each
clip's `num_return_sequences` candidates, rank 1 = the caption in out.csv, score = what ranked it: the search's
score, or the reranker's with `rerank`) and `out_log.json` (settings, counts, timings, files that could not be
decoded); raw outputs (special tokens and prefix included) go to stdout. `style="none"` forces only Whisper's
`<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`: an unmodified Whisper checkpoint then transcribes
as transformers' `generate(language="en", task="transcribe")` does.

At scale: the work list is cut into shards of `--shard_size` items, written as they finish into
`out.csv.shards/` and merged at the end in work-list order (`shards.py`); a rerun of the same command resumes,
a rerun with settings that change captions is refused unless `--overwrite`. With several processes
(`--coordinator_address/--num_processes/--process_id`, or `--distributed` on a pod), process p captions shards
p, p+P, ... on its own devices (`config.mesh` lays out each process's devices; no process waits for another
until the end), and process 0 merges. SIGTERM stops a process between batches: the shard in progress is
dropped, nothing is half-written, and the command exits 75 (`cli.EXIT_PREEMPTED`); rerun it to resume.

Everything that can be checked from the flags and the file system (checkpoint, settings, `max_length` against
the decoder's positions, the inputs, the output path, by creating a file there) is checked before the model
loads. Files that fail to decode are listed and skipped: exit code 3 (`cli.EXIT_PARTIAL`) when some were, 2
when none could be captioned (README, "Exit codes and errors").

The model's window is `num_frames / 100` seconds: 30 s for every released Whisper, shorter for models trained
with a smaller `max_source_positions` (the demo's: 10 s). Features are computed as the TFDS builds compute them
(log-mel of the clip padded to 30 s) and cropped to the model's frames, as the training pipeline does. Clips
longer than the window: `long_audio="truncate"` (default) captions the first window, as Whisper's feature
extractor and the original did; `"windows"` captions each consecutive window of the model's length and names
the rows `<file>#t=<start seconds>` (Media Fragments syntax), one row per window.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from audiocap_jax import cli, preflight, runtime, text
from audiocap_jax.corpus import worklist
from audiocap_jax.corpus.shards import ShardStore, plan
from audiocap_jax.decoding import inference, search_settings
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import resolve_checkpoint_dir
from audiocap_jax.rundir import load

# Keys of configs/predict.py that change captions besides the decoding keys: a resumed run must share them.
CAPTION_KEYS = (*search_settings.DECODING_KEYS, "style", "long_audio", "dtype", "step")


@dataclasses.dataclass(frozen=True)
class Options:
    """predict's flags besides the checkpoint, data, output and decoding config."""

    recursive: bool = False
    take_first_n: int = 0  # the first N items of the work list; 0 = all
    shard_size: int = 1000  # items per shard: the unit of resuming and of work between processes
    input_workers: int = 2  # processes decoding audio and computing log-mels; 0 = in a thread of this one
    overwrite: bool = False  # discard finished shards made with other settings
    data_dir: str = "~/tensorflow_datasets"  # TFDS data_dir of --data=tfds:...


class Preempted(Exception):
    """Raised out of the caption loop when SIGTERM asked to stop."""


@dataclasses.dataclass
class Clock:
    """Wall seconds of one process's phases, and what it captioned in this run."""

    started: float = dataclasses.field(default_factory=time.perf_counter)
    load: float = 0.0  # model and tokenizer
    compile: float = 0.0  # the first batch's decode: compiling (or loading from the cache) + one batch
    input: float = 0.0  # waiting for the input stream
    decode: float = 0.0  # every other batch: device decode + detokenising + reranking
    to_first_decode: float | None = None  # from the start to the first decoded batch
    clips: int = 0  # rows decoded in this run
    first_clips: int = 0  # rows of the first batch (timed as compile)
    audio_seconds: float = 0.0
    shards: list[int] = dataclasses.field(default_factory=list)  # finished in this run by this process

    def rates(self, produced_seconds: float) -> dict[str, Any]:
        """Decode rate vs the input side's rate: the slower one bounds the run."""
        after_first = self.clips - self.first_clips  # the first batch's time is mostly compiling
        decode_rate = after_first / self.decode if self.decode else self.clips / max(self.compile, 1e-9)
        input_rate = self.clips / max(produced_seconds, 1e-9)
        return {
            "decode_clips_per_second": decode_rate,
            "input_clips_per_second": input_rate,
            "bound": "input" if input_rate < decode_rate else "decode",
        }


@dataclasses.dataclass(frozen=True)
class Outputs:
    csv: Path
    nbest: Path
    log: Path
    store: ShardStore


def fingerprint(
    checkpoint: str, config: ml_collections.ConfigDict, work: worklist.WorkList, shard_size: int
) -> dict[str, Any]:
    """Everything that changes a shard's captions (as JSON reads it back): a resumed run must match it."""
    path = Path(checkpoint).expanduser()
    return json.loads(
        json.dumps(
            {
                "checkpoint": str(path.absolute()) if path.exists() else checkpoint,
                **{key: config[key] for key in CAPTION_KEYS},
                **work.fingerprint(),
                "shard_size": shard_size,
            }
        )
    )


def check(
    checkpoint: str, data: str, output_file: str | Path, config: ml_collections.ConfigDict, options: Options
) -> tuple[Outputs, worklist.WorkList]:
    """Every check that needs no model, in the order a user fixes them; the output folder is tried by
    creating a file there (and removing it). Raises UserError; writes nothing."""
    for flag, value, minimum, fix in (
        ("--take-first-n", options.take_first_n, 0, "the number of items to caption, or 0 for all"),
        ("--shard_size", options.shard_size, 1, "a number of items per shard, e.g. 1000"),
        ("--input_workers", options.input_workers, 0, "a number of processes, or 0 to decode in this one"),
    ):
        if value < minimum:
            raise cli.UserError(
                f"{flag}={value} is {'negative' if minimum == 0 else 'below 1'}.", f"pass {fix}"
            )
    output = preflight.check_output_file(output_file, "--output-file")
    outputs = Outputs(
        output,
        preflight.check_writable_file(inference.nbest_path(output), "the N-best CSV beside --output-file"),
        preflight.check_writable_file(
            output.with_name(output.stem + "_log.json"), "the log beside --output-file"
        ),
        ShardStore.beside(output),
    )
    preflight.check_decoding(config, "--config-file", jax.local_device_count())
    preflight.check_checkpoint(checkpoint, config.step)
    architecture = preflight.checkpoint_architecture(checkpoint) or {}
    work = worklist.read_work_list(
        str(data),
        recursive=options.recursive,
        data_dir=options.data_dir,
        n_mels=int(architecture.get("num_mel_bins", 80)),
        outputs=(outputs.csv, outputs.nbest, outputs.log, outputs.store.root),
    ).take(options.take_first_n)
    preflight.check_decoder_positions(checkpoint, config.max_length, "--config-file")
    outputs.store.probe("--output-file")
    return outputs, work


def predict(
    checkpoint: str,
    data: str | Path,
    output_file: str | Path,
    config: ml_collections.ConfigDict,
    options: Options = Options(),
) -> dict[str, Any]:
    """Caption every item of `data` (see `worklist.read_work_list`); returns the run log (also written beside
    the CSV by process 0), with "preempted": True when SIGTERM stopped this process first.

    Raises UserError before loading the model for bad settings, inputs or paths (`check`), or resumed shards
    made with other settings; after captioning when no file could be decoded (then nothing is left).
    """
    clock = Clock()
    outputs, work = check(checkpoint, str(data), output_file, config, options)
    print_ = fingerprint(checkpoint, config, work, options.shard_size)
    outputs.store.check_manifest(print_, options.overwrite, "--output-file")
    model = _load(checkpoint, config)
    prompt = model.batching.prompt
    clock.load = time.perf_counter() - clock.started
    if jax.process_index() == 0:
        outputs.store.start(print_, options.overwrite)
    runtime.barrier("predict shards ready", 0)
    all_shards = plan(len(work), options.shard_size)
    done_before = [n for n in range(len(all_shards)) if outputs.store.done(n)]
    mine = [
        n
        for n in range(jax.process_index(), len(all_shards), jax.process_count())
        if not outputs.store.done(n)
    ]
    shards = [all_shards[n] for n in mine]
    if work.tfds is not None:
        parts = worklist.tfds_parts(work, shards, model.batching, model.built.tokenizer, config.style)
    else:
        parts = worklist.audio_parts(work, shards, model.batching, options.input_workers)
    stop = runtime.SigtermFlag("stopping after this batch; finished shards are kept.")
    stream = worklist.Prefetcher(parts, depth=4)
    try:
        _caption_shards(model, stream, mine, all_shards, outputs.store, stop, clock)
        finished = outputs.store.wait(
            len(all_shards), lambda: stop.requested, runtime.COLLECTIVE_TIMEOUT_SECONDS
        )
    except Preempted:
        finished = False
    finally:
        stream.close()
        stop.restore()
    clock.input = stream.waited_seconds
    if not finished:
        logging.warning(
            "Pre-empted: %d shards finished in this run are kept; rerun the same command to resume.",
            len(clock.shards),
        )
        return {"preempted": True, "shards_finished": clock.shards}
    runtime.barrier("predict shards finished", 0)
    _log_rates(clock, stream, 0 if work.tfds is not None else options.input_workers)
    return _finish(checkpoint, work, outputs, config, prompt, clock, stream, len(all_shards), done_before)


@dataclasses.dataclass(frozen=True)
class Model:
    """The loaded model, ready to caption: on a mesh of this process's devices only."""

    built: load.BuiltModel
    decoder: inference.Decoder
    mesh: jax.sharding.Mesh
    batching: worklist.Batching


def _load(checkpoint: str, config: ml_collections.ConfigDict) -> Model:
    mesh = sharding.make_mesh(dict(config.mesh), jax.local_devices())
    built = load.build_model(
        load.ModelInit.from_path(checkpoint, config.step, dtype=config.dtype, attention_impl="auto"),
        mesh=mesh,
    )
    checkpoint_dir = None if load.is_workdir(checkpoint) else resolve_checkpoint_dir(checkpoint)
    decoder = inference.Decoder.from_config(config, built.model, built.tokenizer, checkpoint_dir, mesh)
    prompt = tuple(built.tokenizer.prompt_ids(text.parse_style(config.style)))
    batching = worklist.Batching(
        config.batch_size, built.config.num_mel_bins, built.config.num_frames, prompt, config.long_audio
    )
    return Model(built, decoder, mesh, batching)


def _log_rates(clock: Clock, stream: worklist.Prefetcher, workers: int) -> None:
    """Which side of this process waited: the input workers or the device."""
    if clock.clips:
        rates = clock.rates(stream.produced_seconds)
        logging.info(
            "%s-bound: the input side makes %.1f clips/s (%d worker processes), the device decodes %.1f clips/s; "
            "waited %.1f s for input.",
            rates["bound"].capitalize(),
            rates["input_clips_per_second"],
            workers,
            rates["decode_clips_per_second"],
            clock.input,
        )


def _by_shard(
    parts: Iterator[worklist.Part],
) -> Iterator[tuple[int, Iterator[worklist.Part], list[dict[str, str]]]]:
    """(shard number, its batch Parts, its failures: filled once the Parts are consumed) per shard."""
    parts = iter(parts)
    for first in parts:
        failures: list[dict[str, str]] = []

        def batches(
            part: worklist.Part = first, failures: list[dict[str, str]] = failures
        ) -> Iterator[worklist.Part]:
            while part.batch is not None:
                yield part
                part = next(parts)
            failures.extend(part.failures)

        yield first.shard, batches(), failures


def _timed(
    parts: Iterator[worklist.Part], clock: Clock, stop: runtime.SigtermFlag, bar: tqdm
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of `parts`, timing what the consumer does with each (the first: compile), stopping at
    SIGTERM before the next one, and moving the progress bar."""
    for part in parts:
        if stop.requested:
            raise Preempted
        started = time.perf_counter()
        yield part.batch
        seconds = time.perf_counter() - started
        if clock.to_first_decode is None:
            clock.compile, clock.to_first_decode = seconds, time.perf_counter() - clock.started
            clock.first_clips = part.clips
        else:
            clock.decode += seconds
        clock.clips += part.clips
        clock.audio_seconds += part.seconds
        bar.update(part.clips)
        bar.set_postfix_str(f"{clock.audio_seconds / max(bar.format_dict['elapsed'], 1e-9):.0f} audio-h/h")


def _caption_shards(
    model: Model,
    stream: worklist.Prefetcher,
    mine: Sequence[int],
    all_shards: Sequence[range],
    store: ShardStore,
    stop: runtime.SigtermFlag,
    clock: Clock,
) -> None:
    """Caption this process's unfinished shards `mine` from `stream`, writing each as it finishes."""
    show, state = jax.process_index() == 0, nnx.state(model.built.model)
    with tqdm(
        total=sum(len(all_shards[n]) for n in mine), desc="predict", unit="clip", disable=not show
    ) as bar:
        for number, parts, failures in _by_shard(stream):
            batches = _timed(parts, clock, stop, bar)
            predictions = model.decoder.caption(
                state, batches, model.built.tokenizer, model.mesh, show_progress=False
            )
            n = mine[number]
            store.write(n, predictions, len(all_shards[n]), failures)
            clock.shards.append(n)
            for p in predictions:
                print(f"{p.file_name}\t{p.raw}")


def _finish(
    checkpoint: str,
    work: worklist.WorkList,
    outputs: Outputs,
    config: ml_collections.ConfigDict,
    prompt: Sequence[int],
    clock: Clock,
    stream: worklist.Prefetcher,
    num_shards: int,
    done_before: Sequence[int],
) -> dict[str, Any]:
    """Every shard is finished: the totals, then (process 0) the merged CSVs and the log."""
    store = outputs.store
    totals = store.totals(range(num_shards))
    if not totals.clips:
        if jax.process_index() == 0:
            shutil.rmtree(store.root, ignore_errors=True)  # nothing captioned: nothing left behind
        reasons = "; ".join(f"{f['file_name']}: {f['reason']}" for f in totals.failures[:3])
        raise cli.UserError(
            f"none of the {totals.files} files in {work.data} could be decoded ({reasons}"
            f"{'; ...' if len(totals.failures) > 3 else ''}); nothing was written.",
            f"check the files with `python -m audiocap_jax.data.prepare find-corrupted {work.data}`",
        )
    new = store.totals([n for n in range(num_shards) if n not in set(done_before)])
    seconds = time.perf_counter() - clock.started
    rates = clock.rates(stream.produced_seconds)
    log = {
        "checkpoint": str(checkpoint),
        "data": work.data,
        "output_file": str(outputs.csv),
        "nbest_file": str(outputs.nbest),
        "settings": config.to_dict(),
        "prefix": text.parse_style(config.style),
        "prompt_ids": list(prompt),
        "num_files": totals.files,
        "num_captioned": totals.captioned_files,
        "num_clips": totals.clips,
        "failed_files": totals.failures,
        "shards": {
            "total": num_shards,
            "finished_before": len(done_before),
            "finished_now": num_shards - len(done_before),
        },
        "decoded_now": {"clips": new.clips, "files": new.files, "by_process_0": clock.clips},
        "seconds": {
            "load": clock.load,
            "compile": clock.compile,
            "input": clock.input,
            "decode": clock.decode,
            "total": seconds,
            "to_first_decode": clock.to_first_decode,
        },
        "clips_per_second": clock.clips / max(clock.compile + clock.decode + clock.input, 1e-9),
        "audio_hours": clock.audio_seconds / 3600,
        **rates,
        "processes": jax.process_count(),
        "devices": f"{jax.local_device_count()} x {jax.devices()[0].device_kind} per process",
    }
    if jax.process_index() == 0:
        store.merge(outputs.csv, outputs.nbest, num_shards)
        with cli.atomic_path(outputs.log) as partial:
            partial.write_text(json.dumps(log, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logging.info(
        "Captioned %d of %d files (%d clips, %d failed; %d new in this run) -> %s, log %s",
        totals.captioned_files,
        totals.files,
        totals.clips,
        len(totals.failures),
        new.clips,
        outputs.csv,
        outputs.log,
    )
    return log


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program so the library functions import anywhere."""
    flags.DEFINE_string("checkpoint", None, "A training workdir of ours, or a HF Whisper directory/hub id.")
    flags.DEFINE_string(
        "data",
        None,
        "Folder of audio files, @list.txt (one path or URL per line), or tfds:<dataset>/<split>.",
    )
    flags.DEFINE_string("data_dir", Options.data_dir, "TFDS data_dir of --data=tfds:...")
    flags.DEFINE_bool("recursive", False, "Also caption files in subfolders.")
    flags.DEFINE_string("output-file", None, "CSV to write: file_name,caption_predicted.")
    flags.DEFINE_integer("take-first-n", 0, "Caption only the first N items of the work list; 0 = all.")
    flags.DEFINE_integer(
        "shard_size", Options.shard_size, "Items per shard (the unit of resuming and of work)."
    )
    flags.DEFINE_integer(
        "input_workers", Options.input_workers, "Processes decoding audio and computing log-mels (0: none)."
    )
    flags.DEFINE_bool("overwrite", False, "Discard finished shards that other settings made.")
    runtime.define_flags()
    config_flags.DEFINE_config_file("config-file", cli.PREDICT_CONFIG, "Decoding settings.", lock_config=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    f = flags.FLAGS
    for name in ("checkpoint", "data", "output-file"):
        if f[name].value is None:
            raise app.UsageError(f"--{name} is required.")
    runtime.start()
    options = Options(
        recursive=f["recursive"].value,
        take_first_n=f["take-first-n"].value,
        shard_size=f["shard_size"].value,
        input_workers=f["input_workers"].value,
        overwrite=f["overwrite"].value,
        data_dir=f["data_dir"].value,
    )
    log = predict(
        f["checkpoint"].value, f["data"].value, f["output-file"].value, f["config-file"].value, options
    )
    if log.get("preempted"):
        return cli.EXIT_PREEMPTED
    return cli.finished(
        f"Captioned {log['num_captioned']} of {log['num_files']} files; {len(log['failed_files'])} failed to "
        f"decode (listed in {Path(log['output_file']).stem}_log.json)."
        if log["failed_files"]
        else None
    )


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags, config_flag="config-file", default_config=cli.PREDICT_CONFIG)
