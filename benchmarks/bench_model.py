"""Forward-pass speed of our Flax Whisper vs transformers' PyTorch Whisper (random weights, same config).

Run: `python -m benchmarks.bench_model [--variants tiny,base] [--batch 8]` (about 2 minutes on 2 CPU cores).
Work per example: the encoder on 30 s of log-mel (3000 frames) and the decoder teacher-forced on 32 tokens.
Prints a markdown table of examples/s (best of N timed calls after warm-up) and our compile time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from audiocap_jax import cli
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.whisper import create_model

DECODER_TOKENS = 32


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_variant(variant: str, batch: int, repeats: int) -> dict[str, float]:
    config = WhisperConfig.from_variant(variant)
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((batch, config.num_mel_bins, config.num_frames)).astype(np.float32)
    ids = rng.integers(0, config.vocab_size, (batch, DECODER_TOKENS)).astype(np.int32)

    model = create_model(config)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, m, i: nnx.merge(graphdef, s)(m, i))
    start = time.perf_counter()
    compiled = forward.lower(state, mel, ids).compile()
    compile_seconds = time.perf_counter() - start
    ours = best_time(lambda: compiled(state, mel, ids).block_until_ready(), repeats)

    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(
        transformers.WhisperConfig(**config.architecture())
    ).eval()
    mel_t, ids_t = torch.from_numpy(mel), torch.from_numpy(ids.astype(np.int64))

    def torch_forward() -> None:
        with torch.no_grad():
            hf(input_features=mel_t, decoder_input_ids=ids_t)

    theirs = best_time(torch_forward, repeats)
    return {"ours": batch / ours, "torch": batch / theirs, "compile": compile_seconds}


def main() -> None:
    cli.start_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="tiny,base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.devices()[0].device_kind}), torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"batch {args.batch}, encoder 3000 frames + decoder {DECODER_TOKENS} tokens, best of {args.repeats}\n"
    )
    print("| model | ours ex/s | PyTorch ex/s | ratio | our compile s |")
    print("|---|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        r = bench_variant(variant, args.batch, args.repeats)
        print(
            f"| whisper-{variant} | {r['ours']:.2f} | {r['torch']:.2f} | {r['ours'] / r['torch']:.2f}x | {r['compile']:.1f} |"
        )


if __name__ == "__main__":
    main()
