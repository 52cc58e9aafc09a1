"""What a compiled program tells before it ever runs: memory per device, fused kernels, collectives, and a
roofline bound on its time.

Everything here reads XLA's own artefacts (`memory_analysis`, `cost_analysis`, the optimized HLO text);
nothing is measured on a device. Per-device memory is XLA's: arguments + outputs - donated (aliased)
buffers + temporaries + generated code. The input breakdown (weights, optimizer state, batch) is the largest
shard of each leaf as the program's input shardings place it.

The roofline is max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) per device: a bound, never a measurement.
FLOPs are the analytic count (`audiocap_jax.rundir.mfu`, within 1.5% of XLA's TPU count of an unscanned whisper-base
step) times the remat policy's recomputation: XLA's own counts miss work in loops (it counts a loop body
once) and in fused kernels (cuDNN's attention counts zero FLOPs), and the compile-only NVIDIA executable
reports none. Bytes per device are XLA's cost analysis of the compiled (fused, partitioned) step, from
unscanned, unaccumulated twins of the model with 1 and 2 layers per stack extrapolated linearly to the real
depth (`layer_extrapolation`). The decoding program's loop runs a data-dependent number of steps: no roofline.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from audiocap_jax.aot.programs import GIB, LoweredProgram
from audiocap_jax.aot.targets import Target
from audiocap_jax.model import sharding
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.rundir import mfu

HEADROOM = 0.05  # a program "fits" when it needs at most 95% of a device's memory
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLLECTIVE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
MOSAIC_CALL = "tpu_custom_call"
# Work a step does per model FLOP: `full` remat runs each layer's forward twice (forward + 2 backward
# matmuls per forward matmul = 3, plus 1); `dots` keeps the matmul outputs and recomputes only cheap ops.
REMAT_RECOMPUTE = {
    "none": 1.0,
    "dots": 1.0,
    "full": 4.0 / 3.0,
}  # every Pallas TPU (Mosaic) kernel, splash attention's among them


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One compiled program and its memory per device, in bytes."""

    executable: Any  # jax.stages.Compiled
    program: LoweredProgram
    compile_s: float
    temp_bytes: int
    total_bytes: int


def compile_program(program: LoweredProgram) -> Compiled:
    start = time.perf_counter()
    executable = program.lowered.compile()
    seconds = time.perf_counter() - start
    memory = executable.memory_analysis()
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    return Compiled(executable, program, seconds, memory.temp_size_in_bytes, total)


def fits(total_bytes: float, target: Target) -> bool:
    return total_bytes <= (1 - HEADROOM) * target.hbm_gib * GIB


def attention_kernels(hlo_text: str) -> dict[str, int]:
    """Fused attention calls in an optimized HLO module: cuDNN's by custom-call target (`__cudnn$fmha*`,
    forward and backward) on NVIDIA; Mosaic kernels (`tpu_custom_call`) on TPU by their instruction's name
    (`splash_mha_fwd...`, `splash_mha_dq...`, `splash_mha_dkv...`; `_segmented` where padded keys are
    masked: the encoder and cross-attention)."""
    names = []
    for line in hlo_text.splitlines():
        target = _CUSTOM_CALL.search(line)
        if target is None:
            continue
        if target.group(1) == MOSAIC_CALL:
            instruction = re.match(r"\s*(?:ROOT\s+)?%?([\w-]+?)(?:\.\d+)?\s=", line)
            names.append(instruction.group(1) if instruction else MOSAIC_CALL)
        elif "fmha" in target.group(1):
            names.append(target.group(1))
    return dict(sorted(collections.Counter(names).items()))


def collectives(hlo_text: str) -> dict[str, int]:
    """Collective instructions in an optimized HLO module, by kind (async pairs counted once)."""
    return dict(sorted(collections.Counter(_COLLECTIVE.findall(hlo_text)).items()))


def compiled_bytes(executable: Any, target: Target) -> float:
    """Bytes one device accesses in a compiled (optimized, partitioned) program by XLA's cost analysis: the
    TPU executable's own; for the compile-only NVIDIA executable, which reports none, XLA's HLO cost analysis
    of its optimized module, run with the CPU client (jaxlib exposes it only privately)."""
    if target.platform == "tpu":
        cost = executable.cost_analysis()
        return float((cost[0] if isinstance(cost, list) else cost)["bytes accessed"])
    from jax._src.lib import _jax

    module = executable.runtime_executable().hlo_modules()[0]
    return float(_jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)["bytes accessed"])


def layer_extrapolation(
    cost_at: Callable[[int, int], tuple[float, ...]], encoder_layers: int, decoder_layers: int
) -> tuple[float, ...]:
    """Cost of the full depth from twins with 1 or 2 layers per stack: cost(1, 1) plus each stack's
    per-layer increment times its extra layers. `cost_at(encoder_layers, decoder_layers)`."""
    base = cost_at(1, 1)
    if encoder_layers == decoder_layers:  # one twin fewer: both stacks grow together
        both = [b - a for a, b in zip(base, cost_at(2, 2), strict=True)]
        return tuple(c + (encoder_layers - 1) * d for c, d in zip(base, both, strict=True))  # type: ignore[return-value]
    per_encoder = [b - a for a, b in zip(base, cost_at(2, 1), strict=True)]
    per_decoder = [b - a for a, b in zip(base, cost_at(1, 2), strict=True)]
    return tuple(  # type: ignore[return-value]
        c + (encoder_layers - 1) * e + (decoder_layers - 1) * d
        for c, e, d in zip(base, per_encoder, per_decoder, strict=True)
    )


def roofline_seconds(flops: float, bytes_accessed: float, target: Target) -> float:
    """max(compute time at peak, memory time at full bandwidth) of one device."""
    return max(flops / (target.peak_tflops * 1e12), bytes_accessed / (target.memory_gbps * 1e9))


def memory_gib(compiled: Compiled) -> dict[str, float]:
    program = compiled.program
    parts = {
        "weights": program.weights_bytes,
        "optimizer": program.optimizer_bytes,
        "batch": program.batch_bytes,
        "temp": compiled.temp_bytes,
        "total": compiled.total_bytes,
    }
    return {k: round(v / GIB, 3) for k, v in parts.items()}


def largest_fitting(total_at: Callable[[int], float | None], limit: float, cap: int = 4096) -> int:
    """The largest power-of-two per-device batch whose program needs at most `limit` bytes (0: none fits).

    `total_at(batch)` compiles at that batch and returns its bytes per device (None: the compile failed
    for memory). Memory grows about linearly with the batch, so two compiles predict the answer and one or
    two more confirm it, instead of doubling from 1.
    """
    sizes: dict[int, float | None] = {}

    def ok(batch: int) -> bool:
        if batch not in sizes:
            sizes[batch] = total_at(batch)
        size = sizes[batch]
        return size is not None and size <= limit

    if not ok(1):
        return 0
    if not ok(2):
        return 1
    slope = max(sizes[2] - sizes[1], 1.0)  # type: ignore[operator]
    predicted = int((limit - sizes[1] + slope) // slope)  # type: ignore[operator]
    batch = 2
    while batch * 2 <= min(max(predicted, 2), cap):
        batch *= 2
    while batch > 2 and not ok(batch):
        batch //= 2
    while batch * 2 <= cap and ok(batch * 2):
        batch *= 2
    return batch


def program_summary(compiled: Compiled, target: Target) -> dict[str, Any]:
    """The keys of one program's JSON object that come from its compiled form alone."""
    text = compiled.executable.as_text()
    gib = memory_gib(compiled)
    return {
        "per_device_batch": compiled.program.global_batch // compiled.program.data_parallel,
        "global_batch": compiled.program.global_batch,
        "per_device_gib": gib,
        "hbm_gib": target.hbm_gib,
        "fits": fits(compiled.total_bytes, target),
        "compile_s": round(compiled.compile_s, 1),
        "attention_kernels": attention_kernels(text),
        "collectives": collectives(text),
    }


def is_memory_error(error: Exception) -> bool:
    """Whether a failed compile ran out of device memory (the answer for a too-large batch), not a bug."""
    text = str(error)
    return isinstance(error, jax.errors.JaxRuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    )


def compile_total(program: LoweredProgram) -> float | None:
    """Bytes per device of a program, or None when XLA refuses it for memory (TPU compiles fail there)."""
    try:
        return compile_program(program).total_bytes
    except jax.errors.JaxRuntimeError as error:
        if is_memory_error(error):
            return None
        raise


def out_of_memory_summary(error: Exception, program: LoweredProgram, target: Target) -> dict[str, Any]:
    """A program XLA refused for memory: what it said it needed ("Used 20.5G of 15.75G hbm") as the total,
    the inputs as placed, the rest unknown."""
    used = re.search(r"Used ([\d.]+)([KMGT]) of", str(error))
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    total = float(used.group(1)) * scale[used.group(2)] / GIB if used else float("nan")
    inputs = {
        "weights": program.weights_bytes,
        "optimizer": program.optimizer_bytes,
        "batch": program.batch_bytes,
    }
    gib = {k: round(v / GIB, 3) for k, v in inputs.items()}
    gib |= {"temp": round(total - sum(gib.values()), 3), "total": round(total, 3)}
    return {
        "per_device_batch": program.global_batch // program.data_parallel,
        "global_batch": program.global_batch,
        "per_device_gib": gib,
        "hbm_gib": target.hbm_gib,
        "fits": False,
        "compile_s": None,
        "attention_kernels": {},
        "collectives": {},
        "error": str(error).strip().splitlines()[0][:300],
    }


def train_roofline(
    config: Any, model: WhisperConfig, mesh: Mesh, per_device_batch: int, target: Target
) -> dict[str, float | None]:
    """`roofline_s` and `roofline_mfu` of the train step (module docstring): FLOPs per device from the
    analytic count with the remat policy's recomputation, bytes per device from the compiled step's twins
    with 1 and 2 layers per stack. XLA's TPU `optimal_seconds` is not used: it came out negative for every
    Whisper program tried."""
    from audiocap_jax.aot import programs

    tokens = config.data.max_length - 1

    def twin_bytes(encoder_layers: int, decoder_layers: int) -> tuple[float]:
        twin = model.replace(encoder_layers=encoder_layers, decoder_layers=decoder_layers, scan_layers=False)
        program = programs.lower_train(config, twin, mesh, per_device_batch, accum_steps=1)
        return (compiled_bytes(program.lowered.compile(), target),)

    (bytes_accessed,) = layer_extrapolation(twin_bytes, model.encoder_layers, model.decoder_layers)
    global_batch = per_device_batch * sharding.data_parallel_size(mesh)
    model_flops = mfu.model_flops_per_step(model, batch_size=global_batch, target_length=tokens)
    flops = model_flops * REMAT_RECOMPUTE[model.remat] / target.num_devices
    seconds = roofline_seconds(flops, bytes_accessed, target)
    return {
        "roofline_s": round(seconds, 4),
        "roofline_mfu": round(
            mfu.mfu(model_flops, seconds, target.num_devices, target.peak_tflops * 1e12), 3
        ),
        "roofline_flops_per_device": flops,
        "roofline_bytes_per_device": bytes_accessed,
    }
