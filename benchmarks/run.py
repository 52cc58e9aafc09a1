"""Every comparison against transformers' PyTorch Whisper, one after another, in one markdown report.

Run: `python -m benchmarks.run [--only features,model,decode,train,pipeline]` (`make bench`; ~20 min on 2 CPU
cores). Each benchmark runs in its own process (clean timings and peak memory) and prints its table; this
header adds the machine. Run it on a quiet machine: PyTorch's eager loop slows far more than XLA under load.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

BENCHMARKS = {
    "features": "log-mel feature extraction (ours vs WhisperFeatureExtractor)",
    "model": "forward pass: encoder 30 s + decoder 32 tokens",
    "decode": "beam search captions/s vs GenerationMixin.generate",
    "train": "training step: examples/s, peak memory, FLOPs",
    "pipeline": "TFDS build and Grain input pipeline",
    "predict": "predict clips/s with 1 and 2 input worker processes vs the decode-only rate",
}


def machine() -> str:
    import jax
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, load {load:.1f}; "
        f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args()
    print(f"# audiocap-jax benchmarks\n\n{machine()}\n")
    for name in args.only.split(","):
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        print(f"## {name}: {BENCHMARKS[name]}\n", flush=True)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", f"benchmarks.bench_{name}"], capture_output=True, text=True
        )
        tables = [line for line in result.stdout.splitlines() if line.strip()]
        print("\n".join(tables) if result.returncode == 0 else f"FAILED:\n{result.stderr[-2000:]}")
        print(f"\n({time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
