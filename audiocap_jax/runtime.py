"""What `train`, `predict` and `evaluate` set up before any work: the process group and the compilation cache.

One place for the multi-process flags (`--coordinator_address`, `--num_processes`, `--process_id` for local or
manual runs, `--distributed` for a pod's own discovery: TPU metadata, SLURM, ...) and the call to
`jax.distributed.initialize`, so the three commands take the same flags and mean the same by them; and one
place for JAX's persistent compilation cache, on by default: the second run of the same command loads its
programs from disk instead of compiling them (`--no_compile_cache` turns it off). `barrier` is the one way the
processes of a group wait for each other, with a timeout that names the process instead of hanging.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import jax
from absl import flags, logging
from jax._src import distributed

CACHE_ENV = "AUDIOCAP_CACHE"  # where compiled programs go instead of the default below
DEFAULT_CACHE_DIR = Path("~/.cache/audiocap_jax/xla")
# The cache's bound: past it JAX deletes the least recently used programs. Bounding it also makes JAX take a
# file lock around every read and write, so the processes of a multi-process run on one host (or several runs)
# never read a program another process is still writing. A large-v2 train step for a pod is a few hundred MB.
CACHE_MAX_BYTES = 8 * 2**30
# How long a process waits for the others at a barrier before it fails, naming itself: longer than any
# legitimate skew (a slow checkpoint write, a compile), shorter than a job scheduler's patience.
COLLECTIVE_TIMEOUT_SECONDS = 600


def define_flags() -> None:
    """The process-group and cache flags of every command that runs models (absl, defined once per program),
    listed by `--help` as the program's own flags."""
    own = dict(module_name=sys.argv[0])  # absl's --help lists the main module's flags only
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() (multi-host pods; auto-detects TPU/SLURM).",
        **own,
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (manual multi-process).", **own)
    flags.DEFINE_integer("num_processes", None, "Number of processes (manual multi-process).", **own)
    flags.DEFINE_integer("process_id", None, "This process's index (manual multi-process).", **own)
    flags.DEFINE_bool(
        "no_compile_cache",
        False,
        f"Do not use JAX's persistent compilation cache (${CACHE_ENV}, default {DEFAULT_CACHE_DIR}).",
        **own,
    )


def start(values: flags.FlagValues = flags.FLAGS) -> None:
    """After flag parsing, before any JAX computation: the compilation cache, then the process group."""
    if not values["no_compile_cache"].value:
        enable_compile_cache()
    if values["coordinator_address"].value is not None:
        # Cross-process collectives for CPU devices (local multi-process runs); GPUs/TPUs use their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            values["coordinator_address"].value, values["num_processes"].value, values["process_id"].value
        )
    elif values["distributed"].value:
        jax.distributed.initialize()


def compile_cache_dir() -> Path:
    """`$AUDIOCAP_CACHE`, else `~/.cache/audiocap_jax/xla`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def enable_compile_cache(directory: Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in `directory` (default `compile_cache_dir()`), bounded by
    `CACHE_MAX_BYTES`.

    Every program is cached, however fast it compiled: JAX's default threshold (1 s) would skip the small
    decode programs of CPU runs and tiny models, whose compile is still most of a short run's start-up.
    """
    directory = directory or compile_cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("Compilation cache: %s (--no_compile_cache turns it off).", directory)
    return directory


class SigtermFlag:
    """SIGTERM only sets `requested` (with one warning line); the command's loop reads it at a safe point
    (train: a step boundary, predict: between batches), so nothing is interrupted mid-write. `restore`
    puts the previous handler back."""

    def __init__(self, message: str) -> None:
        self.requested = False
        self._message = message
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("SIGTERM received: %s", self._message)
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def coordination_client() -> Any:
    """The process group's key-value store and barriers (`jax.distributed`'s coordination service client).
    JAX exposes it only privately; this is the one place that reaches for it."""
    return distributed.global_state.client


def barrier(name: str, step: int, timeout_seconds: float = COLLECTIVE_TIMEOUT_SECONDS) -> None:
    """Wait until every process reaches `name` at `step`; fail after the timeout instead of hanging."""
    if jax.process_count() == 1:
        return
    try:
        coordination_client().wait_at_barrier(f"audiocap/{name}/{step}", int(timeout_seconds * 1000))
    except Exception as error:  # the coordination service reports timeouts and dead peers alike
        raise TimeoutError(
            f"process {jax.process_index()} of {jax.process_count()} waited {timeout_seconds:.0f} s at "
            f"'{name}' (step {step}) for the other processes: {str(error).splitlines()[0][:300]}. Check the "
            "other processes' logs; a process that died or hangs there is the cause."
        ) from error
