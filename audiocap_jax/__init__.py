"""audiocap-jax: automated audio captioning with Whisper in JAX/Flax."""

import os

__version__ = "0.1.0"

# XLA:CPU's default scheduler runs independent ops concurrently at the price of keeping more buffers alive:
# whisper-tiny's train step at batch 8 needs 3.3 GiB of temporaries with it and 2.6 GiB without, at the same
# speed (benchmarks/bench_train.py). The CPU compiler reads it only from XLA_FLAGS (not from jit's
# compiler_options), so it is set here, before JAX starts a backend; a value the user set is kept. Other
# backends ignore xla_cpu_* flags.
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_SCHEDULER_FLAG}=false".strip()
