"""Caption a folder of audio with the shared jitted search: the original's predict.py, JAX-native.

    python -m audiocap_jax.predict --checkpoint=RUN_OR_HF_DIR --data=clips/ --output-file=out.csv \
        [--recursive] [--take-first-n=N] [--config-file=configs/predict.py --config-file.num_beams=10]

Writes `out.csv` (`file_name,caption_predicted`, UTF-8, CSV-quoted), `out_nbest.csv` (`file_name,rank,caption,
score`: each clip's `num_return_sequences` candidates, rank 1 = the caption in out.csv, score = what ranked it:
the search's score, or the reranker's with `rerank`) and `out_log.json` (settings, timings, files that could not
be decoded); raw outputs (special tokens and prefix included) go to stdout. `style="none"` forces only
Whisper's `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`: an unmodified Whisper checkpoint then
transcribes as transformers' `generate(language="en", task="transcribe")` does. Everything that can be
checked from the flags and the file system (checkpoint, settings, output path) is checked before the model
loads; both files are written complete or not at all. Files that fail to decode are listed and skipped: exit
code 3 (`cli.EXIT_PARTIAL`) when some were, 2 when none could be captioned (README, "Exit codes and errors").

The model's window is `num_frames / 100` seconds: 30 s for every released Whisper, shorter for models trained
with a smaller `max_source_positions` (the demo's: 10 s). Features are computed exactly as the TFDS builds store
them (log-mel of the clip padded to 30 s) and cropped to the model's frames, as the training pipeline does.
Clips longer than the window: `long_audio="truncate"` (default) captions the first window, as Whisper's
feature extractor and the original did; `"windows"` captions each consecutive window and names the rows
`<file>#t=<start seconds>` (Media Fragments syntax), one row per window.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from audiocap_jax import audio, cli, inference, load, metrics, preflight, text
from audiocap_jax.data.prepare import AUDIO_EXTENSIONS
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import resolve_checkpoint_dir


def list_audio(folder: str | Path, recursive: bool = False) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise cli.UserError(f"--data={folder} is not a folder.", "pass the folder that holds the audio files")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in folder.glob(pattern) if p.name.lower().endswith(AUDIO_EXTENSIONS) and not p.is_dir()
    )
    if not files:
        raise cli.UserError(
            f"--data={folder} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}){'' if recursive else ' at its top level'}.",
            "pass the folder that holds them" + ("" if recursive else ", or add --recursive for subfolders"),
        )
    return files


def _segments(clip: np.ndarray, long_audio: str, window: int) -> list[tuple[float, np.ndarray]]:
    """(start seconds, samples) pieces of one clip that each fit the model's window of `window` samples."""
    if long_audio == "truncate" or len(clip) <= window:
        return [(0.0, clip[:window])]
    return [
        (start / audio.SAMPLE_RATE, clip[start : start + window]) for start in range(0, len(clip), window)
    ]


def audio_batches(
    files: Sequence[Path],
    root: Path,
    *,
    batch_size: int,
    n_mels: int,
    prompt: Sequence[int],
    long_audio: str,
    workers: int,
    failures: list[dict[str, str]],
    num_frames: int = audio.N_FRAMES,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode files in parallel threads; yield padded, masked batches. Undecodable files go to `failures`.

    Batches hold mel `[B, M, num_frames]`: the model's window (`WhisperConfig.num_frames`, 3000 = 30 s for
    released checkpoints), cut from the 30 s log-mel as the TFDS builds + training pipeline do.
    """
    if long_audio not in ("truncate", "windows"):
        raise ValueError(f"long_audio {long_audio!r} unknown; choose 'truncate' or 'windows'.")
    if not 0 < num_frames <= audio.N_FRAMES:
        raise ValueError(f"num_frames {num_frames} must be in 1..{audio.N_FRAMES} (the 30 s log-mel).")
    window = num_frames * audio.HOP_LENGTH
    pending: list[tuple[str, np.ndarray]] = []

    def flush(rows: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
        valid = len(rows)
        rows = rows + [("", np.zeros(0, np.float32))] * (batch_size - valid)
        return {
            "mel": audio.log_mel(np.stack([audio.pad_or_trim(r[1]) for r in rows]), n_mels=n_mels)[
                ..., :num_frames
            ],
            "decoder_prompt": np.tile(np.asarray(prompt, np.int32), (batch_size, 1)),
            "mask": np.arange(batch_size) < valid,
            "file_name": np.asarray([r[0] for r in rows], dtype=object),
        }

    def load(path: Path) -> tuple[Path, np.ndarray | audio.AudioDecodeError]:
        try:
            return path, audio.load_audio(path)
        except audio.AudioDecodeError as error:
            return path, error

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, result in pool.map(load, files):
            name = path.relative_to(root).as_posix()
            if isinstance(result, audio.AudioDecodeError):
                logging.warning("Skipping %s: %s", name, result.reason)
                failures.append({"file_name": name, "reason": result.reason})
                continue
            for start, samples in _segments(result, long_audio, window):
                pending.append((name if long_audio == "truncate" else f"{name}#t={start:g}", samples))
                if len(pending) == batch_size:
                    yield flush(pending)
                    pending = []
    if pending:
        yield flush(pending)


def predict(
    checkpoint: str,
    data: str | Path,
    output_file: str | Path,
    config: ml_collections.ConfigDict,
    *,
    recursive: bool = False,
    take_first_n: int = 0,
) -> dict[str, Any]:
    """Caption every audio file under `data`; returns the run log (also written beside the CSV).

    Raises UserError before loading the model for bad settings or paths, and after captioning when no file
    could be decoded (then nothing is written).
    """
    started = time.perf_counter()
    if take_first_n < 0:
        raise cli.UserError(
            f"--take-first-n={take_first_n} is negative.", "pass the number of files to caption, or 0 for all"
        )
    output_file = preflight.check_writable_file(output_file, "--output-file")
    log_path = output_file.with_name(output_file.stem + "_log.json")
    preflight.check_writable_file(log_path, "the log beside --output-file")
    nbest_file = preflight.check_writable_file(
        inference.nbest_path(output_file), "the N-best CSV beside --output-file"
    )
    preflight.check_decoding(config, "--config-file", jax.device_count())
    preflight.check_checkpoint(checkpoint, config.step)
    files = list_audio(data, recursive)
    if take_first_n:
        files = files[:take_first_n]
    mesh = sharding.make_mesh(dict(config.mesh))
    built = load.build_model(
        load.ModelInit.from_path(checkpoint, config.step, dtype=config.dtype, attention_impl="auto"),
        mesh=mesh,
    )
    model, model_config, tokenizer = built.model, built.config, built.tokenizer
    checkpoint_dir = None if load.is_workdir(checkpoint) else resolve_checkpoint_dir(checkpoint)
    decoder = inference.Decoder.from_config(config, model, tokenizer, checkpoint_dir, mesh)
    prefix = text.parse_style(config.style)
    prompt = tokenizer.prompt_ids(prefix)
    loaded = time.perf_counter()

    failures: list[dict[str, str]] = []
    batches = audio_batches(
        files,
        Path(data),
        batch_size=config.batch_size,
        n_mels=model_config.num_mel_bins,
        prompt=prompt,
        long_audio=config.long_audio,
        workers=config.loader_workers,
        failures=failures,
        num_frames=model_config.num_frames,
    )
    predictions = decoder.caption(
        nnx.state(model),
        batches,
        tokenizer,
        mesh,
        desc="predict",
        total=math.ceil(len(files) / config.batch_size),
    )
    finished = time.perf_counter()
    if not predictions:
        reasons = "; ".join(f"{f['file_name']}: {f['reason']}" for f in failures[:3])
        raise cli.UserError(
            f"none of the {len(files)} files in {data} could be decoded ({reasons}{'; ...' if len(failures) > 3 else ''}); "
            f"nothing was written.",
            f"check the files with `python -m audiocap_jax.data.prepare find-corrupted {data}`",
        )
    for p in predictions:
        print(f"{p.file_name}\t{p.raw}")
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with cli.atomic_path(output_file) as partial:
        metrics.write_predictions_csv(partial, {p.file_name: p.caption for p in predictions})
    with cli.atomic_path(nbest_file) as partial:
        inference.write_nbest_csv(partial, predictions)
    log = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "output_file": str(output_file),
        "nbest_file": str(nbest_file),
        "settings": config.to_dict(),
        "prefix": prefix,
        "prompt_ids": list(prompt),
        "num_files": len(files),
        "num_captioned": len(predictions),
        "failed_files": failures,
        "seconds": {
            "load_model": loaded - started,
            "caption": finished - loaded,
            "total": finished - started,
        },
        "clips_per_second": len(predictions) / max(finished - loaded, 1e-9),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    with cli.atomic_path(log_path) as partial:
        partial.write_text(json.dumps(log, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logging.info(
        "Captioned %d of %d files (%d failed) in %.1f s -> %s, log %s",
        len(predictions),
        len(files),
        len(failures),
        finished - loaded,
        output_file,
        log_path,
    )
    return log


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program so the library functions import anywhere."""
    flags.DEFINE_string("checkpoint", None, "A training workdir of ours, or a HF Whisper directory/hub id.")
    flags.DEFINE_string("data", None, "Folder of audio files (wav, flac, mp3, ogg).")
    flags.DEFINE_bool("recursive", False, "Also caption files in subfolders.")
    flags.DEFINE_string("output-file", None, "CSV to write: file_name,caption_predicted.")
    flags.DEFINE_integer("take-first-n", 0, "Caption only the first N files (sorted by path); 0 = all.")
    config_flags.DEFINE_config_file("config-file", cli.PREDICT_CONFIG, "Decoding settings.", lock_config=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    for name in ("checkpoint", "data", "output-file"):
        if flags.FLAGS[name].value is None:
            raise app.UsageError(f"--{name} is required.")
    log = predict(
        flags.FLAGS["checkpoint"].value,
        flags.FLAGS["data"].value,
        flags.FLAGS["output-file"].value,
        flags.FLAGS["config-file"].value,
        recursive=flags.FLAGS["recursive"].value,
        take_first_n=flags.FLAGS["take-first-n"].value,
    )
    if log["failed_files"]:
        print(
            f"Captioned {log['num_captioned']} of {log['num_files']} files; {len(log['failed_files'])} failed to "
            f"decode (listed in {Path(log['output_file']).stem}_log.json).",
            file=sys.stderr,
        )
        return cli.EXIT_PARTIAL
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags, config_flag="config-file", default_config=cli.PREDICT_CONFIG)
