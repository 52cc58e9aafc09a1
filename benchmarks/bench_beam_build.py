"""Dataset build on Apache Beam: clips/s of a DirectRunner build and per-core cost of one clip, for scale-out.

Run (needs the beam extra, `pip install -e '.[beam]'`): `python -m benchmarks.bench_beam_build` (about 10 min
on 2 busy CPU cores; `--num_clips=200` for a quick look). Writes an AudioSet-small-like AudioFolder of
`--num_clips` 10 s, 44.1 kHz mono mp3 clips (what scripts/download_audioset.sh leaves; 20 distinct
synthetic clips, copied: decoding costs the same for a copy), then

1. times decode (libsndfile mp3), resample to 16 kHz and the 80-bin log-mel of one clip on ONE core
   (BLAS limited to one thread), the figure that scales with workers;
2. builds `tfds_builders/audioset_small` (mel80) with the DirectRunner (in_memory by default; see
   `--direct_running_mode`), as `python -m tfds_builders build ... --beam_pipeline_options=...` does, and
   reports clips/s end to end (pipeline start-up, decoding, TFDS's shuffle by key and the ArrayRecord write);
3. reports the bytes per example on disk and prints the scale estimate of docs/pipeline.md.

Rates are per CPU second (this process plus the Beam worker processes, which have exited when the build
returns), not per wall second: on a machine shared with other jobs, CPU time still says what a dedicated
core does, while wall time says how busy the machine was. Wall time is printed too.
"""

import os

# One BLAS thread: the per-core figure must not borrow the second core (set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import pathlib
import resource
import shutil
import tempfile
import time

import librosa
import numpy as np
import soundfile
from absl import app, flags, logging

from audiocap_jax import audio, cli
from audiocap_jax.data import features
from audiocap_jax.testing import audio as test_audio

_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "clips in the synthetic train split")
_WORKERS = flags.DEFINE_integer("direct_num_workers", 1, "DirectRunner workers")
# The parallel modes are not reliable at 2,000 clips (apache-beam 2.77): multi_processing lost records (the
# builder fails such a build, features.beam_loss), multi_threading crashed on corrupt data. docs/pipeline.md,
# "DirectRunner modes".
_MODE = flags.DEFINE_enum(
    "direct_running_mode",
    "in_memory",
    ["in_memory", "multi_threading", "multi_processing"],
    "DirectRunner mode",
)

CLIP_SECONDS = 10.0  # AudioSet segments
SAMPLE_RATE = 44100  # YouTube audio as yt-dlp leaves it
DISTINCT_CLIPS = 20
PER_CORE_CLIPS = 20
LABELS = ["/m/09x0r", "/m/0jbk"]  # Speech, Animal: any ids of the packaged ontology
# Scale-out assumptions (Dataflow batch list prices, us-central1; check current pricing): an n2-standard-4
# worker has 4 vCPUs and 16 GB; Dataflow Shuffle bills the bytes TFDS's writer shuffles (every example once).
VCPU_HOUR_USD = 0.056
GB_HOUR_USD = 0.003557
SHUFFLE_GB_USD = 0.011
WORKER_VCPUS, WORKER_GB = 4, 16
WORKER_COUNTS = (10, 100)
DATASET_CLIPS = {"AudioSet-small (130k)": 130_000, "all of AudioSet (2M)": 2_000_000}


def write_audiofolder(root: pathlib.Path, num_clips: int) -> pathlib.Path:
    """`root/train/` with `num_clips` mp3 files and the metadata.jsonl `prepare audioset-small` writes."""
    split = root / "train"
    split.mkdir(parents=True)
    sources = []
    for seed in range(DISTINCT_CLIPS):
        clip = test_audio.speech_like(CLIP_SECONDS, sr=SAMPLE_RATE, seed=seed)
        clip += test_audio.noise(CLIP_SECONDS, amplitude=0.02, sr=SAMPLE_RATE, seed=seed)
        sources.append(test_audio.write_audio(root / f"source_{seed:02d}.mp3", clip, SAMPLE_RATE))
    rows = []
    for index in range(num_clips):
        file_name = f"clip_{index:05d}.mp3"
        shutil.copyfile(sources[index % DISTINCT_CLIPS], split / file_name)
        rows.append({"file_name": file_name, "labels": LABELS})
    (split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def per_core_seconds(paths: list[pathlib.Path]) -> dict[str, float]:
    """Median CPU seconds per clip of each stage in this process (one BLAS thread), after a warm-up clip."""
    stages = {"decode": [], "resample": [], "log-mel": []}
    for path in [paths[0], *paths]:
        start = time.process_time()
        samples, rate = soundfile.read(path, dtype="float32")
        decoded = time.process_time()
        samples = librosa.resample(
            samples, orig_sr=rate, target_sr=audio.SAMPLE_RATE, res_type=audio.RESAMPLE_TYPE
        )
        resampled = time.process_time()
        audio.log_mel(samples, n_mels=80)
        done = time.process_time()
        for stage, seconds in zip(
            stages, (decoded - start, resampled - decoded, done - resampled), strict=True
        ):
            stages[stage].append(seconds)
    return {stage: float(np.median(times[1:])) for stage, times in stages.items()}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its exited child processes (Beam's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str]) -> None:
    cli.start_process()
    del argv
    logging.set_verbosity(logging.WARNING)  # Beam logs every worker's start at INFO
    num_clips, workers, mode = _NUM_CLIPS.value, _WORKERS.value, _MODE.value
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        audiofolder = write_audiofolder(root / "audiofolder", num_clips)
        stage_seconds = per_core_seconds(sorted((audiofolder / "train").glob("*.mp3"))[:PER_CORE_CLIPS])
        options = f"runner=DirectRunner,direct_num_workers={workers},direct_running_mode={mode}"
        start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
        builder = features.build(
            "audioset_small", manual_dir=audiofolder, data_dir=root / "data", beam_pipeline_options=options
        )
        build_wall, build_cpu = time.perf_counter() - start_wall, _cpu_seconds() - start_cpu
        num_examples = builder.info.splits["train"].num_examples
        bytes_per_example = builder.info.splits["train"].num_bytes / num_examples
    assert num_examples == num_clips, (num_examples, num_clips)

    build_per_core = num_clips / build_cpu  # what the scale estimate uses: Beam's own work included
    print(f"{num_clips} clips x {CLIP_SECONDS:.0f} s, {SAMPLE_RATE} Hz mono mp3 -> audioset_small/mel80\n")
    print("| measure | value |")
    print("|---|---:|")
    for stage, seconds in stage_seconds.items():
        print(f"| {stage}, one core | {1000 * seconds:.1f} CPU ms/clip |")
    print(f"| decode + resample + log-mel, one core | {1 / sum(stage_seconds.values()):.1f} clips/s |")
    print(
        f"| DirectRunner build ({mode}, {workers} workers), all CPU time | {build_per_core:.1f} clips/s/core ({build_cpu:.0f} CPU s) |"
    )
    print(f"| same, wall clock on this machine | {num_clips / build_wall:.1f} clips/s ({build_wall:.0f} s) |")
    print(f"| bytes per example (ArrayRecord) | {bytes_per_example / 1e3:.0f} kB |")
    print(
        f"\nScale estimate at {build_per_core:.1f} clips/s/core, workers of {WORKER_VCPUS} vCPU / {WORKER_GB} GB:\n"
    )
    print("| dataset | workers | minutes of decoding | compute USD | shuffle USD | on disk |")
    print("|---|---:|---:|---:|---:|---:|")
    worker_hour_usd = WORKER_VCPUS * VCPU_HOUR_USD + WORKER_GB * GB_HOUR_USD
    for name, clips in DATASET_CLIPS.items():
        gigabytes = clips * bytes_per_example / 1e9
        for count in WORKER_COUNTS:
            hours = clips / (build_per_core * WORKER_VCPUS * count) / 3600
            print(
                f"| {name} | {count} | {60 * hours:.1f} | {hours * count * worker_hour_usd:.2f} | "
                f"{gigabytes * SHUFFLE_GB_USD:.2f} | {gigabytes:.0f} GB |"
            )


if __name__ == "__main__":
    app.run(main)
