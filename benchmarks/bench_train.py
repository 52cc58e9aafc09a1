"""Training-step speed and peak memory: our jitted train step vs transformers' PyTorch Whisper + AdamW.

Run: `python -m benchmarks.bench_train [--variants tiny,base] [--batch 8] [--steps 3]` (~5 min on 2 CPU cores).
Same work on both sides: random weights, 30 s log-mels (3000 frames), 32-token captions, AdamW, float32.
Each measurement runs in its own process so peak RSS (resident memory) is that framework's alone, and both
processes get the same memory allocator (`--allocator`).
Prints examples/s, step time, peak memory, our compile time and the step's FLOPs from XLA's cost analysis.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from audiocap_jax import cli

TOKENS = 32
# Preloadable allocators that keep freed memory mapped: XLA:CPU allocates a step's working memory (2.4 GiB for
# whisper-tiny at batch 8) afresh at every step, and glibc maps blocks that large anew each time, so the kernel
# faults in and zeroes every page again (1.4 s of system time per tiny step).
ALLOCATORS = {"tcmalloc": ("tcmalloc_minimal", "apt-get install libtcmalloc-minimal4")}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def _page_faults() -> int:
    """Minor page faults so far: each is a fresh page the kernel mapped and zeroed for this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_steps(step: Callable[[], None], steps: int) -> dict[str, float]:
    """Best time and page faults per step of `steps` calls to `step`, after one warm-up call."""
    step()
    times, faults = [], _page_faults()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"step_seconds": min(times), "faults_per_step": (_page_faults() - faults) / steps}


def _step_and_batch(config: Any, batch: int, mesh: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(jitted train step, its initial state, a device batch) for `config` on `mesh`."""
    import jax
    import numpy as np
    from flax import nnx

    from audiocap_jax.model.sharding import batch_sharding
    from audiocap_jax.model.whisper import create_model
    from audiocap_jax.rundir import train_step

    graphdef, weights = nnx.split(create_model(config, mesh=mesh))
    selects = train_step.trainable()
    schedule = train_step.make_schedule(lr=1e-5, warmup_steps=1, total_steps=1000)
    tx = train_step.make_optimizer(schedule)
    state = train_step.init_train_state(weights, tx, selects, mesh)
    rng = np.random.default_rng(0)
    batch_data = {
        "mel": rng.standard_normal((batch, config.num_mel_bins, config.num_frames)).astype(np.float32),
        "decoder_input_ids": rng.integers(0, config.vocab_size, (batch, TOKENS)).astype(np.int32),
        "targets": rng.integers(0, config.vocab_size, (batch, TOKENS)).astype(np.int32),
        "loss_mask": np.ones((batch, TOKENS), np.float32),
    }
    batch_data = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in batch_data.items()}
    return train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh), state, batch_data


def _advancing_step(compiled: Any, state: Any, batch_data: dict[str, Any]) -> Callable[[], None]:
    """A call that runs one train step from the state the previous call left (each step donates its input)."""
    import jax

    def train_step() -> None:
        nonlocal state
        state, metrics = compiled(state, batch_data)
        jax.block_until_ready(metrics)

    return train_step


def run_ours(variant: str, batch: int, steps: int) -> dict[str, float]:
    import jax

    from audiocap_jax.model import sharding
    from audiocap_jax.model.config import WhisperConfig

    config = WhisperConfig.from_variant(variant)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    step, state, batch_data = _step_and_batch(config, batch, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch_data).compile()
    compile_seconds = time.perf_counter() - start
    timing = _time_steps(_advancing_step(compiled, state, batch_data), steps)
    peak_gib = _peak_gib()  # before the FLOP count below, which compiles a second step
    del step, compiled, state, batch_data

    # XLA's cost analysis counts a loop body once (the CPU attention tiles run in lax.map), so the step's
    # FLOPs are counted on the loop-free einsum attention: same model and math, compiled but never run.
    step, state, batch_data = _step_and_batch(config.replace(attention_impl="xla"), batch, mesh)
    analysis = step.lower(state, batch_data).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return {
        **timing,
        "compile_seconds": compile_seconds,
        "flops": float(analysis.get("flops", float("nan"))),
        "peak_gib": peak_gib,
    }


def run_torch(variant: str, batch: int, steps: int, attention: str = "sdpa") -> dict[str, float]:
    import numpy as np
    import torch
    import transformers

    from audiocap_jax.model.config import WhisperConfig

    config = WhisperConfig.from_variant(variant)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**config.architecture()))
    model.set_attn_implementation(attention)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    rng = np.random.default_rng(0)
    mel = torch.from_numpy(
        rng.standard_normal((batch, config.num_mel_bins, config.num_frames)).astype(np.float32)
    )
    ids = torch.from_numpy(rng.integers(0, config.vocab_size, (batch, TOKENS)))
    labels = torch.from_numpy(rng.integers(0, config.vocab_size, (batch, TOKENS)))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_features=mel, decoder_input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return {**_time_steps(step, steps), "peak_gib": _peak_gib()}


def _allocator_env(allocator: str) -> dict[str, str]:
    """The environment for a worker process that runs with `allocator` ("system": the C library's malloc)."""
    env = dict(os.environ)
    if allocator == "system":
        return env
    library, install = ALLOCATORS[allocator]
    path = ctypes.util.find_library(library)
    if path is None:
        raise SystemExit(f"--allocator {allocator}: lib{library} not found; install it ({install}).")
    env["LD_PRELOAD"] = " ".join(filter(None, [path, env.get("LD_PRELOAD")]))
    return env


def _measure(framework: str, variant: str, args: argparse.Namespace) -> dict[str, float]:
    """One framework in a fresh process (clean peak-memory reading)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--worker", framework, "--variants", variant,
         "--batch", str(args.batch), "--steps", str(args.steps), "--torch-attention", args.torch_attention],
        capture_output=True, text=True, check=True, env=_allocator_env(args.allocator),
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    cli.start_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="tiny,base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--torch-attention",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="PyTorch's attention: sdpa (transformers' default; a fused flash kernel on CPU) or eager "
        "(materialised [B, H, T, S] scores)",
    )
    parser.add_argument(
        "--allocator",
        choices=["system", *ALLOCATORS],
        default="system",
        help="memory allocator for both sides: system (glibc malloc) or tcmalloc (preloaded; keeps freed "
        "memory mapped, so a step's working memory is not faulted in again)",
    )
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ours":
        print(json.dumps(run_ours(args.variants, args.batch, args.steps)))
        return
    if args.worker == "torch":
        print(json.dumps(run_torch(args.variants, args.batch, args.steps, args.torch_attention)))
        return
    print(
        f"{platform.machine()}, {os.cpu_count()} cores; batch {args.batch}, 30 s log-mels + {TOKENS}-token captions, "
        f"AdamW, float32, best of {args.steps} steps; PyTorch attention: {args.torch_attention}; "
        f"allocator: {args.allocator}\n"
    )
    print(
        "| model | ours ex/s | PyTorch ex/s | ratio | GFLOP/s ours / PyTorch | peak GiB ours / PyTorch "
        "| page faults/step ours / PyTorch | compile s | TFLOP/step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        ours = _measure("ours", variant, args)
        torch_result = _measure("torch", variant, args)
        ours_rate, torch_rate = args.batch / ours["step_seconds"], args.batch / torch_result["step_seconds"]
        print(
            f"| whisper-{variant} | {ours_rate:.2f} | {torch_rate:.2f} | {ours_rate / torch_rate:.2f}x | "
            f"{ours['flops'] / ours['step_seconds'] / 1e9:.0f} / {ours['flops'] / torch_result['step_seconds'] / 1e9:.0f} | "
            f"{ours['peak_gib']:.2f} / {torch_result['peak_gib']:.2f} | "
            f"{ours['faults_per_step'] / 1e3:.0f}k / {torch_result['faults_per_step'] / 1e3:.0f}k | "
            f"{ours['compile_seconds']:.1f} | {ours['flops'] / 1e12:.2f} |"
        )


if __name__ == "__main__":
    main()
