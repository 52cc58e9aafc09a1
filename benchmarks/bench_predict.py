"""`predict` throughput on a corpus: clips/s with 1 and 2 input worker processes, and the decode-only rate.

    python -m benchmarks.bench_predict                  # 1000 synthetic 10 s clips (a few minutes on 2 cores)
    python -m benchmarks.bench_predict --clips=200 --workers=1,2

Writes `--clips` synthetic 10 s wav clips (speech-like tones over noise, 16 kHz) and a demo-size random HF
Whisper (configs/demo.py's architecture: 2+2 layers, width 128, a 10 s window, the full vocabulary) to a
temporary folder, then runs `predict.predict` on the folder once per worker count (greedy, max_length 48 as
the demo's validation, batch 8, one shard), and finally decodes the same batches, already in memory, to get the
rate the device alone sustains. The predict rows count from the first decoded batch (compile excluded, reported
apart); "bound" is the side that limits them: input when decoding audio is slower than the device, else decode.
Prints a markdown table.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import tempfile
import time

import jax
import ml_collections
from absl import app, flags
from flax import nnx

from audiocap_jax import cli, predict, text
from audiocap_jax.corpus import worklist
from audiocap_jax.decoding import inference
from audiocap_jax.model import sharding
from audiocap_jax.rundir import load
from audiocap_jax.testing import audio as test_audio
from audiocap_jax.testing.models import save_tiny_hf_whisper
from configs import demo

_CLIPS = flags.DEFINE_integer("clips", 1000, "Synthetic 10 s clips to caption.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Input worker processes to time, one predict run each.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per batch.")

CLIP_SECONDS = 10.0
DEMO_ARCH = demo.get_config().model.arch_overrides.to_dict()  # configs/demo.py's model


def write_clips(folder: pathlib.Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        clip = test_audio.speech_like(CLIP_SECONDS, seed=i) + test_audio.noise(
            CLIP_SECONDS, amplitude=0.02, seed=i
        )
        test_audio.write_audio(folder / f"clip{i:05d}.wav", clip)


def decoding_config() -> ml_collections.ConfigDict:
    config = cli.load_config(cli.PREDICT_CONFIG, "config-file")
    config.update(dict(num_beams=1, max_length=48, batch_size=_BATCH.value))
    return config


def predict_row(checkpoint: pathlib.Path, clips: pathlib.Path, root: pathlib.Path, workers: int) -> dict:
    options = predict.Options(shard_size=_CLIPS.value, input_workers=workers)
    with contextlib.redirect_stdout(io.StringIO()):  # predict prints every raw caption; keep the table alone
        log = predict.predict(str(checkpoint), clips, root / f"out{workers}.csv", decoding_config(), options)
    seconds = log["seconds"]
    steady = log["num_clips"] / max(seconds["decode"] + seconds["input"], 1e-9)
    return dict(
        run=f"predict, {workers} input worker{'s' * (workers > 1)}",
        clips_per_second=steady,
        input=log["input_clips_per_second"],
        decode=log["decode_clips_per_second"],
        bound=log["bound"],
        compile=seconds["compile"],
    )


def decode_only_row(checkpoint: pathlib.Path, clips: pathlib.Path) -> dict:
    """The same batches, decoded from memory: what the device sustains when input costs nothing."""
    config = decoding_config()
    mesh = sharding.make_mesh(dict(config.mesh))
    built = load.build_model(load.ModelInit.from_path(str(checkpoint), dtype=config.dtype), mesh=mesh)
    prompt = tuple(built.tokenizer.prompt_ids(text.parse_style(config.style)))
    work = worklist.read_work_list(str(clips))
    batching = worklist.Batching(
        config.batch_size, built.config.num_mel_bins, built.config.num_frames, prompt
    )
    batches = [
        p.batch for p in worklist.audio_parts(work, [range(len(work))], batching, 2) if p.batch is not None
    ]
    decoder = inference.Decoder.from_config(config, built.model, built.tokenizer, checkpoint, mesh)
    state = nnx.state(built.model)
    started = time.perf_counter()
    decoder.caption(state, batches[:1], built.tokenizer, mesh, show_progress=False)  # compile
    compiled = time.perf_counter()
    decoder.caption(state, batches, built.tokenizer, mesh, show_progress=False)
    seconds = time.perf_counter() - compiled
    return dict(
        run="decode only (batches in memory)",
        clips_per_second=len(work) / seconds,
        input=float("nan"),
        decode=len(work) / seconds,
        bound="decode",
        compile=compiled - started,
    )


def main(argv: list[str]) -> None:
    cli.start_process()
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        save_tiny_hf_whisper(root / "demo_size", seed=0, **DEMO_ARCH)
        write_clips(root / "clips", _CLIPS.value)
        rows = [predict_row(root / "demo_size", root / "clips", root, int(w)) for w in _WORKERS.value]
        rows.append(decode_only_row(root / "demo_size", root / "clips"))
    print(
        f"{_CLIPS.value} clips of {CLIP_SECONDS:.0f} s, demo-size model (random weights), greedy, max_length 48, "
        f"batch {_BATCH.value}, {jax.device_count()} x {jax.devices()[0].device_kind}\n"
    )
    print("| run | clips/s | input clips/s | decode clips/s | bound | compile s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['clips_per_second']:.1f} | {r['input']:.1f} | {r['decode']:.1f} | {r['bound']} "
            f"| {r['compile']:.1f} |"
        )


if __name__ == "__main__":
    app.run(main)
