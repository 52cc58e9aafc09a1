"""Input pipeline speed: TFDS build clips/s, Grain examples/s to host memory and onto an 8-device mesh.

Run: `python -m benchmarks.bench_pipeline` (about a minute on 2 busy CPU cores). Writes a Clotho-like
AudioFolder (48 clips of 20 s, 44.1 kHz 16-bit wav, 5 captions each) to a temporary directory, builds
`tfds_builders/clotho` (mel80) in one process and with 2 worker processes, then times the training pipeline
(global batch 32, float32 mel, every (clip, caption) pair) and the evaluation pipeline. Prints a markdown table.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before jax is imported

import json
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator

import grain
import jax
import numpy as np

from audiocap_jax import cli, text
from audiocap_jax.data import features, pipeline
from audiocap_jax.testing import audio as test_audio

NUM_CLIPS = 48
CLIP_SECONDS = 20.0  # Clotho clips are 15-30 s
SAMPLE_RATE = 44100  # Clotho's rate: every clip is resampled to 16 kHz
GLOBAL_BATCH = 32
WARMUP_BATCHES = 2
TIMED_BATCHES = 20


def write_audiofolder(root: pathlib.Path) -> pathlib.Path:
    """A development split of NUM_CLIPS speech/noise clips with 5 captions each, as prepare writes it."""
    split = root / "audiofolder" / "development"
    split.mkdir(parents=True)
    rows = []
    for index in range(NUM_CLIPS):
        file_name = f"clip_{index:03d}.wav"
        clip = test_audio.speech_like(CLIP_SECONDS, sr=SAMPLE_RATE, seed=index)
        clip += test_audio.noise(CLIP_SECONDS, amplitude=0.02, sr=SAMPLE_RATE, seed=index)
        test_audio.write_audio(split / file_name, clip, SAMPLE_RATE)
        rows.append(
            {"file_name": file_name, **{f"caption_{i}": f"caption {i} of clip {index}" for i in range(1, 6)}}
        )
    (split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "audiofolder"


def build_rate(audiofolder: pathlib.Path, data_dir: pathlib.Path, num_workers: int) -> float:
    start = time.perf_counter()
    features.build("clotho", manual_dir=audiofolder, data_dir=data_dir, num_workers=num_workers)
    return NUM_CLIPS / (time.perf_counter() - start)


def examples_per_second(batches: Iterator, consume: Callable = lambda batch: batch) -> float:
    for _ in range(WARMUP_BATCHES):
        consume(next(batches))
    start = time.perf_counter()
    for _ in range(TIMED_BATCHES):
        consume(next(batches))
    return TIMED_BATCHES * GLOBAL_BATCH / (time.perf_counter() - start)


def main() -> None:
    cli.start_process()
    tokenizer = text.Tokenizer.from_assets()
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    read = pipeline.ReadConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        audiofolder = write_audiofolder(root)
        serial_build = build_rate(audiofolder, root / "serial", num_workers=0)
        parallel_build = build_rate(audiofolder, root / "parallel", num_workers=2)

        spec = pipeline.DatasetSpec("clotho", data_dir=root / "parallel")

        def train(augment: pipeline.AugmentConfig | None = None) -> grain.IterDataset:
            return pipeline.train_dataset(
                [spec], tokenizer, global_batch_size=GLOBAL_BATCH, augment_config=augment, read=read
            )

        to_host = examples_per_second(iter(train()))
        augment = pipeline.AugmentConfig(shift_probability=1.0, gain_probability=1.0, mask_probability=1.0)
        augmented = examples_per_second(iter(train(augment)))
        to_mesh = examples_per_second(
            pipeline.GlobalBatchIterator(train(), mesh), lambda batch: jax.block_until_ready(batch)
        )
        eval_spec = pipeline.DatasetSpec("clotho", data_dir=root / "parallel", split="development")
        evaluation = pipeline.eval_dataset(eval_spec, tokenizer, global_batch_size=GLOBAL_BATCH, read=read)
        start = time.perf_counter()
        num_rows = sum(len(batch["mask"]) for batch in evaluation)
        eval_rate = num_rows / (time.perf_counter() - start)

    print(
        f"{NUM_CLIPS} clips x {CLIP_SECONDS:.0f} s, {SAMPLE_RATE} Hz wav -> clotho/mel80; global batch "
        f"{GLOBAL_BATCH}, {TIMED_BATCHES} timed batches after {WARMUP_BATCHES} warm-up; {os.cpu_count()} CPU cores\n"
    )
    print("| stage | setting | rate |")
    print("|---|---|---:|")
    print(f"| TFDS build (decode, resample, log-mel, write) | 1 process | {serial_build:.1f} clips/s |")
    print(
        f"| TFDS build (decode, resample, log-mel, write) | 2 worker processes | {parallel_build:.1f} clips/s |"
    )
    print(
        f"| train pipeline -> host numpy | float32 mel, {read.num_threads} threads | {to_host:.0f} examples/s |"
    )
    print(f"| train pipeline + shift, gain, SpecAugment -> host | same | {augmented:.0f} examples/s |")
    print(f"| train pipeline -> 8-device CPU mesh (data 4 x fsdp 2) | same | {to_mesh:.0f} examples/s |")
    print(f"| eval pipeline (one pass, padded) -> host numpy | same | {eval_rate:.0f} examples/s |")


if __name__ == "__main__":
    main()
