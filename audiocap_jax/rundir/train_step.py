"""The pure parts of training: schedule, optimizer, which parameters train, loss, and the sharded train step.

Legend: B global batch, A gradient-accumulation steps, T target tokens, V vocab.
The train loop (train.py) owns I/O; everything here is a function of arrays, safe under `jax.jit`.

Freezing is a split, not a mask: `trainable(train_only, freeze, lora)` is an NNX filter, the step
differentiates only the parameters it selects, and the optimizer sees only those. Frozen parameters (and the
never-trained encoder positions) get no gradient and no optimizer state, and `grad_norm` is over what trains.
With LoRA (model/lora.py) the filter selects the adapters and the biases its bias mode names.

Randomness (LoRA dropout) is a pure function of `(seed, step, micro-step)`: `step_key` folds the state's step
counter into the run's seed inside the jitted step, so the train state holds no RNG state, a resumed run
draws the keys an uninterrupted one would have, and the keys are replicated like the step counter.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from audiocap_jax.model import lora as lora_lib
from audiocap_jax.model.sharding import batch_sharding

# Leaves of a training batch that go to the device; the rest (file names, references) stays on the host.
TRAIN_KEYS = ("mel", "decoder_input_ids", "targets", "loss_mask")
SCHEDULES = (
    "linear",
    "cosine",
    "constant",
)  # config.optim.schedule: the decay after warmup (`make_schedule`)


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator state (saved beside it)."""

    step: jax.Array  # int32: []
    weights: Any  # nnx.State of every model variable (param_dtype master weights), trained or not
    opt_state: Any  # optax state of the trained weights only, sharded like them


def check_schedule(name: str) -> None:
    """Raises ValueError unless `name` is one of `SCHEDULES`."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is not one of {', '.join(map(repr, SCHEDULES))}.")


def make_schedule(
    *, lr: float, warmup_steps: int, total_steps: int, decay: str = "linear", end_lr_fraction: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then linear/cosine decay to `end_lr_fraction * lr` at `total_steps`.

    The original used HF's linear schedule: warmup, then linear decay to 0 at max_steps.
    """
    check_schedule(decay)
    if warmup_steps >= total_steps and decay != "constant":
        raise ValueError(
            f"warmup_steps {warmup_steps} >= total_steps {total_steps}; lower config.optim.warmup_steps."
        )
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    if decay == "linear":
        after = optax.linear_schedule(lr, lr * end_lr_fraction, decay_steps)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_fraction)
    else:
        after = optax.constant_schedule(lr)
    return optax.join_schedules([warmup, after], [warmup_steps])


def dotted_name(path: tuple[Any, ...]) -> str:
    """A state path as a dotted parameter name, e.g. 'decoder.layers.fc1.kernel'."""
    keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    return ".".join(k for k in keys if k != "value")


def param_names(weights: Any) -> list[str]:
    """The dotted names of a model state's leaves, in leaf order."""
    return [dotted_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(weights)]


def trainable(
    train_only: Sequence[str] = (),
    freeze: Sequence[str] = (),
    lora: lora_lib.LoRASpec = lora_lib.NO_LORA,
    weights: Any = None,
) -> Callable[[Any, Any], bool]:
    """NNX filter of the parameters that train, from regexes over dotted names.

    Only `nnx.Param` can train (the encoder's sinusoidal positions are `FrozenParam`). `train_only` non-empty:
    only matching parameters train (the original's fc1-only "slice" = ["fc1"]). `freeze`: matching
    parameters never train (e.g. ["^encoder\\."]). `lora` (enabled): only the adapters and the biases its bias
    mode names train (`lora.train_patterns` over the names of `weights`, the wrapped model's state), so
    `train_only` must be empty; `freeze` still applies.
    """
    lora_lib.check_train_only(lora, train_only)
    if lora.enabled:
        train_only = lora_lib.train_patterns(param_names(weights), lora)

    def selects(path: tuple[Any, ...], value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        name = dotted_name(path)
        if train_only and not any(re.search(p, name) for p in train_only):
            return False
        return not any(re.search(p, name) for p in freeze)

    return selects


def split_trained(weights: Any, selects: Callable[[Any, Any], bool]) -> tuple[Any, Any]:
    """(trained, fixed) parts of a model state; `nnx.merge_state(trained, fixed)` puts them back."""
    return nnx.split_state(weights, selects, ...)


def check_trainable(weights: Any, selects: Callable[[Any, Any], bool], settings: str) -> None:
    """Fail at start, naming the settings, when the filter leaves nothing to train."""
    trained, _ = split_trained(weights, selects)
    if not jax.tree.leaves(trained):
        raise ValueError(f"{settings} leave no parameter to train; loosen the patterns.")


def trainable_settings(
    train_only: Sequence[str], freeze: Sequence[str], lora: lora_lib.LoRASpec = lora_lib.NO_LORA
) -> str:
    """The settings that choose the trained parameters, for the start line and errors, e.g.
    "train_only [fc1], freeze [], no LoRA"."""
    return f"train_only [{', '.join(train_only)}], freeze [{', '.join(freeze)}], {lora.describe()}"


def describe_trainable(weights: Any, selects: Callable[[Any, Any], bool], settings: str) -> str:
    """The start-of-training line, e.g. "trainable parameters 33,280 of 3,516,480 (0.95%) selected by
    train_only [fc1], freeze [], no LoRA" (`settings` from `trainable_settings`): logged so a setting the trainer ignores (the original's misplaced
    `lora_config`) shows at once. M counts every `nnx.Param` (adapters included), N those `selects` picks.
    """
    trained, _ = split_trained(weights, selects)
    params, _ = nnx.split_state(weights, nnx.Param, ...)
    num_trained, total = _num_values(trained), _num_values(params)
    return (
        f"trainable parameters {num_trained:,} of {total:,} ({100 * num_trained / total:.2f}%) "
        f"selected by {settings}"
    )


def _num_values(state: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state))


def make_optimizer(
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW (HF/torch defaults, as the original) with global-norm clipping, over the trained weights."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw) if max_grad_norm else adamw


@dataclasses.dataclass(frozen=True)
class Updater:
    """What updates the weights of a run: the optimizer, its schedule and the filter of the trained weights."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    selects: Callable[[Any, Any], bool]  # NNX filter of the trained weights (`trainable`)
    settings: str  # the settings that chose them, for the log and errors (`trainable_settings`)


def updater_from_config(config: Any, weights: Any, lora: lora_lib.LoRASpec) -> Updater:
    """The updater a training config (`config.optim`, `total_steps`) asks for, over a model state `weights`
    (concrete or abstract) that already holds `lora`'s adapters: what `train` runs and `aot` compiles."""
    o = config.optim
    selects = trainable(tuple(o.train_only), tuple(o.freeze), lora, weights)
    settings = trainable_settings(o.train_only, o.freeze, lora)
    check_trainable(weights, selects, settings)
    schedule = make_schedule(
        lr=o.lr,
        warmup_steps=o.warmup_steps,
        total_steps=config.total_steps,
        decay=o.schedule,
        end_lr_fraction=o.end_lr_fraction,
    )
    tx = make_optimizer(
        schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, max_grad_norm=o.max_grad_norm
    )
    return Updater(tx, schedule, selects, settings)


def token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums for a masked token cross-entropy: logits float32 [B, T, V], targets int32 [B, T], mask [B, T].

    nll = logsumexp - target logit, and "correct" = the target logit is the maximum: both avoid a full
    [B, T, V] log-softmax or argmax pass over the 51865-token vocabulary (18% of a small model's step on CPU).
    An exact tie for the maximum counts as correct.
    """
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # --> [B, T]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    correct = (target_logit >= logits.max(axis=-1)).astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    return {"loss_sum": (nll * mask).sum(), "tokens": mask.sum(), "correct": (correct * mask).sum()}


def step_key(seed: int, step: jax.Array, micro_step: jax.Array | int = 0) -> jax.Array:
    """The random key of one micro-batch of one train step: `seed` with the step, then the micro-step folded
    in (`jax.random.fold_in`), so it needs no saved state and each micro-batch gets its own."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), micro_step)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    selects: Callable[[Any, Any], bool],
    accum_steps: int = 1,
    seed: int = 0,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)`: one optimizer update of the `selects` weights over A
    micro-batches; the other weights are constants of the step (no gradient is computed for them).

    Micro-batch a of step s runs the model with `step_key(seed, s, a)` (`lora.set_dropout_keys`: LoRA
    dropout; a model without dropout ignores it)."""

    def micro_sums(
        trained: Any, fixed: Any, micro: Mapping[str, jax.Array], key: jax.Array
    ) -> tuple[jax.Array, dict]:
        model = nnx.merge(graphdef, nnx.merge_state(trained, fixed))
        lora_lib.set_dropout_keys(model, key)
        logits = model(micro["mel"], micro["decoder_input_ids"])  # mel arrives float16; the model casts it
        sums = token_loss(logits, micro["targets"], micro["loss_mask"])
        return sums["loss_sum"], sums

    grad_fn = jax.grad(micro_sums, has_aux=True)

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        trained, fixed = split_trained(state.weights, selects)
        batch = {k: batch[k] for k in TRAIN_KEYS}
        if accum_steps == 1:
            grads, sums = grad_fn(trained, fixed, batch, step_key(seed, state.step))
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch
            )  # --> [A, B/A, ...]

            def accumulate(carry: Any, inputs: Any) -> tuple[Any, None]:
                mb, micro_step = inputs
                grads, sums = grad_fn(trained, fixed, mb, step_key(seed, state.step, micro_step))
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zeros = (
                jax.tree.map(jnp.zeros_like, trained),
                {"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0},
            )
            (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum_steps)))
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)  # mean over all tokens of the global batch
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        trained = optax.apply_updates(trained, updates)
        metrics = {
            "loss": sums["loss_sum"] / tokens,
            "token_accuracy": sums["correct"] / tokens,
            "grad_norm": optax.tree.norm(grads),  # of the trained weights only
            "lr": schedule(state.step),
            "tokens": sums["tokens"],
        }
        weights = nnx.merge_state(trained, fixed)
        return state.replace(step=state.step + 1, weights=weights, opt_state=opt_state), metrics

    return step


def jit_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    selects: Callable[[Any, Any], bool],
    state: TrainState,
    mesh: Mesh,
    accum_steps: int = 1,
    seed: int = 0,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The train step under `jax.jit`: state keeps its shardings (and is donated), the batch is split over
    the mesh's data-parallel axes, the step's random keys are made inside from the replicated step counter."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        make_train_step(graphdef, tx, schedule, selects, accum_steps, seed),
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def train_state_shardings(
    weights: Any, tx: optax.GradientTransformation, selects: Callable[[Any, Any], bool], mesh: Mesh
) -> TrainState:
    """Where every leaf of the train state lives: the weights where they are, each optimizer-state tree that
    mirrors the trained weights (AdamW's moments) exactly like them, and the rest (step, counters) replicated.

    Left to the compiler, the optimizer state of `tx.init` comes out replicated: under FSDP that is two full
    float32 copies of the model on every device (11.5 GiB per chip for large-v2 on a 256-chip pod).
    `weights` may be concrete or abstract (`jax.ShapeDtypeStruct` with shardings).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    trained, _ = split_trained(weights, selects)
    weight_shardings = jax.tree.map(lambda x: x.sharding, weights)
    opt_state = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        jax.eval_shape(tx.init, trained),
        jax.tree.map(lambda x: x.sharding, trained),
        transform_non_params=lambda _: replicated,
    )
    return TrainState(step=replicated, weights=weight_shardings, opt_state=opt_state)


def _jit_init(
    tx: optax.GradientTransformation, selects: Callable[[Any, Any], bool], shardings: TrainState
) -> Callable[[Any], TrainState]:
    def init(weights: Any) -> TrainState:
        trained, _ = split_trained(weights, selects)
        return TrainState(step=jnp.zeros((), jnp.int32), weights=weights, opt_state=tx.init(trained))

    return jax.jit(init, out_shardings=shardings)


def init_train_state(
    weights: Any, tx: optax.GradientTransformation, selects: Callable[[Any, Any], bool], mesh: Mesh
) -> TrainState:
    """Step 0 and a fresh optimizer state on the mesh, sharded like the weights it mirrors."""
    shardings = train_state_shardings(weights, tx, selects, mesh)
    with jax.set_mesh(mesh):
        return _jit_init(tx, selects, shardings)(weights)


def abstract_train_state(
    abstract_weights: Any, tx: optax.GradientTransformation, selects: Callable[[Any, Any], bool], mesh: Mesh
) -> TrainState:
    """Shapes, dtypes and shardings of `init_train_state`'s result, computed without allocating anything:
    the target a checkpoint is restored into, and the train step's input when compiling ahead of time."""
    shardings = train_state_shardings(abstract_weights, tx, selects, mesh)
    shapes = jax.eval_shape(_jit_init(tx, selects, shardings), abstract_weights)
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes, shardings
    )
