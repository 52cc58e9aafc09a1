"""Feature extraction speed: our numpy log-mel vs `transformers.WhisperFeatureExtractor`.

Run: `python -m benchmarks.bench_features` (about 20 s on 2 CPU cores). Prints a markdown table of clips/s
for 8 speech-like clips of 30 s, batch 8, 80 mel bins, and how far each result is from ours.
The extractor uses torch when it is installed (torch is a test-only dependency here) and a per-clip
float64 numpy path otherwise; both are timed.
"""

import time
from collections.abc import Callable

import numpy as np
import transformers

from audiocap_jax import audio, cli
from audiocap_jax.testing import audio as test_audio

NUM_CLIPS = 8
N_MELS = 80
REPEATS = 5


def _clips_per_second(extract: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    """Best of REPEATS timed calls after one warm-up, as clips per second."""
    extract(batch)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        extract(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


def main() -> None:
    cli.start_process()
    batch = np.stack([test_audio.speech_like(audio.CHUNK_SECONDS, seed=seed) for seed in range(NUM_CLIPS)])
    extractor = transformers.WhisperFeatureExtractor(feature_size=N_MELS)

    def hf_default(clips: np.ndarray) -> np.ndarray:
        return extractor(list(clips), sampling_rate=audio.SAMPLE_RATE, return_tensors="np").input_features

    def hf_numpy(clips: np.ndarray) -> np.ndarray:
        # The path `__call__` takes when torch is not installed.
        return extractor._np_extract_fbank_features(clips, "cpu")

    def ours(clips: np.ndarray) -> np.ndarray:
        return audio.log_mel(clips, n_mels=N_MELS)

    expected = ours(batch)
    extractors = [
        ("audiocap_jax.audio.log_mel (numpy, scipy.fft)", ours),
        ("WhisperFeatureExtractor, torch backend", hf_default),
        ("WhisperFeatureExtractor, numpy backend (no torch)", hf_numpy),
    ]
    rates = [_clips_per_second(extract, batch) for _, extract in extractors]
    print(
        f"{NUM_CLIPS} x {audio.CHUNK_SECONDS} s clips, batch {NUM_CLIPS}, {N_MELS} mels, best of {REPEATS}\n"
    )
    print("| extractor | clips/s | ours is faster by | max abs diff to ours |")
    print("|---|---:|---:|---:|")
    for (name, extract), rate in zip(extractors, rates, strict=True):
        max_diff = np.abs(extract(batch) - expected).max()
        print(f"| {name} | {rate:.1f} | {rates[0] / rate:.2f}x | {max_diff:.1e} |")


if __name__ == "__main__":
    main()
