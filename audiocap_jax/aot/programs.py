"""The programs a run of a config executes, built from shapes alone, lowered for any mesh.

`lower_train` is the step `train.py` compiles (the same model with its LoRA adapters, the same updater,
state shardings, donation and accumulation); `lower_decode` the shared search that validation and `predict`
run (`inference.Decoder` from the config's `eval` section). Nothing is read but JSON configs: the weights,
optimizer state and batches are `jax.ShapeDtypeStruct`s carrying the shardings a run would give them, so a
program for 256 TPU chips is lowered on a laptop.

Legend: G global batch (per-device batch x the mesh's data-parallel size), M mel bins, S frames, T target
tokens (`data.max_length` - 1), P forced prompt tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax import text
from audiocap_jax.decoding import inference
from audiocap_jax.model import lora as lora_lib
from audiocap_jax.model import sharding
from audiocap_jax.model.backend import resolve_runtime
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.rundir import load, train_step
from audiocap_jax.rundir.plan import planned_model

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class LoweredProgram:
    """A lowered program and what its inputs hold per device (bytes), for the memory breakdown."""

    lowered: jax.stages.Lowered
    global_batch: int
    data_parallel: int  # devices the batch is split over (global batch = per-device batch x this)
    weights_bytes: int  # per device: every model variable
    optimizer_bytes: int  # per device: the optimizer state (0 for decoding)
    batch_bytes: int  # per device: the batch's leaves


def model_config(config: ml_collections.ConfigDict, devices: Sequence[jax.Device]) -> WhisperConfig:
    """The architecture a new run of `config` builds (`plan.planned_model`: JSON files only; the
    variant's for a hub id that is not in the local HF cache), with its runtime settings resolved for
    `devices` as the run would on them (bfloat16 and cuDNN/splash on GPU/TPU)."""
    plan = planned_model(config)
    if plan is None:
        architecture = WhisperConfig.from_variant(config.model.variant).architecture()
    else:
        architecture = plan.architecture
    runtime = {k: config.model[k] for k in load.RUNTIME_KEYS}
    return resolve_runtime(WhisperConfig(**architecture, **runtime), list(devices))


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a pytree of arrays or `ShapeDtypeStruct`s with shardings (the largest
    shard: uneven splits are padded)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def _abstract_batch(shapes: dict[str, tuple[tuple[int, ...], Any]], mesh: Mesh) -> dict[str, Any]:
    placed = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=placed) for k, (shape, dtype) in shapes.items()}


def _weights(config: ml_collections.ConfigDict, model: WhisperConfig, mesh: Mesh) -> tuple[Any, Any, Any]:
    """(graphdef, abstract weights, LoRA spec) of the model a new run of `config` trains."""
    adapters = lora_lib.LoRASpec.from_config(config.model.lora)
    graphdef, weights = nnx.split(load.abstract_model(model, mesh, adapters))
    return graphdef, weights, adapters


def lower_train(
    config: ml_collections.ConfigDict,
    model: WhisperConfig,
    mesh: Mesh,
    per_device_batch: int,
    accum_steps: int | None = None,
) -> LoweredProgram:
    """The train step of `config` for a global batch of `per_device_batch` x data-parallel devices
    (`accum_steps`: the config's unless given)."""
    graphdef, weights, adapters = _weights(config, model, mesh)
    updater = train_step.updater_from_config(config, weights, adapters)
    state = train_step.abstract_train_state(weights, updater.tx, updater.selects, mesh)
    accum = config.accum_steps if accum_steps is None else accum_steps
    step = train_step.jit_train_step(
        graphdef, updater.tx, updater.schedule, updater.selects, state, mesh, accum, config.seed
    )
    g, tokens = per_device_batch * sharding.data_parallel_size(mesh), config.data.max_length - 1
    batch = _abstract_batch(
        {
            "mel": ((g, model.num_mel_bins, model.num_frames), jnp.float16),
            "decoder_input_ids": ((g, tokens), jnp.int32),
            "targets": ((g, tokens), jnp.int32),
            "loss_mask": ((g, tokens), jnp.float32),
        },
        mesh,
    )
    with jax.set_mesh(mesh):
        lowered = step.trace(state, batch).lower()
    return LoweredProgram(
        lowered,
        g,
        sharding.data_parallel_size(mesh),
        bytes_per_device(state.weights),
        bytes_per_device(state.opt_state),
        bytes_per_device(batch),
    )


def lower_decode(
    config: ml_collections.ConfigDict, model: WhisperConfig, mesh: Mesh, per_device_batch: int
) -> LoweredProgram:
    """The decoding search of `config.eval` (strategy, beams, max_length...) over the training weights'
    shardings, for a global batch of `per_device_batch` x data-parallel devices, from the Clotho prompt."""
    graphdef, weights, _ = _weights(config, model, mesh)
    tokenizer = text.Tokenizer.from_assets(text.num_languages_for_vocab_size(model.vocab_size))
    decoder = inference.Decoder.from_config(config.eval, graphdef, tokenizer, None, mesh)
    g = per_device_batch * sharding.data_parallel_size(mesh)
    prompt = len(tokenizer.prompt_ids(text.CLOTHO_CAPTION))
    batch = _abstract_batch(
        {
            "mel": ((g, model.num_mel_bins, model.num_frames), jnp.float16),
            "prompt": ((g, prompt), jnp.int32),
            "lengths": ((g,), jnp.int32),
        },
        mesh,
    )
    rng = None  # beam search takes no keys; sampling one per clip, as `inference.caption_batches` passes
    if config.eval.strategy == "sample":
        key = jax.eval_shape(lambda: jax.random.key(0))
        rng = jax.ShapeDtypeStruct((g,), key.dtype, sharding=sharding.batch_sharding(mesh))
    lowered = decoder.decode_fn.lower(weights, batch["mel"], batch["prompt"], batch["lengths"], rng)
    return LoweredProgram(
        lowered, g, sharding.data_parallel_size(mesh), bytes_per_device(weights), 0, bytes_per_device(batch)
    )
