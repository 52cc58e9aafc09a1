"""The pure parts of training: schedule, optimizer with freezing masks, loss, and the sharded train step.

Legend: B global batch, A gradient-accumulation steps, T target tokens, V vocab.
The train loop (train.py) owns I/O; everything here is a function of arrays, safe under `jax.jit`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax.data.pipeline import batch_sharding
from audiocap_jax.model import lora as lora_lib
from audiocap_jax.model.whisper import FrozenParam, Whisper

SCHEDULES = ("linear", "cosine", "constant")
# Leaves of a training batch that go to the device; the rest (file names, references) stays on the host.
TRAIN_KEYS = ("mel", "decoder_input_ids", "targets", "loss_mask")


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator state (saved beside it)."""

    step: jax.Array  # int32: []
    params: Any  # nnx.State of the nnx.Param leaves (master weights, param_dtype); some may be masked frozen
    opt_state: Any  # optax state, same sharding as params where it mirrors them
    frozen: Any  # nnx.State of FrozenParam leaves (encoder positions): saved, never updated
    rng: jax.Array  # uint32: [2], jax.random key data (reserved for stochastic layers; Whisper has none)


def make_schedule(
    *, lr: float, warmup_steps: int, total_steps: int, decay: str = "linear", end_lr_fraction: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then linear/cosine decay to `end_lr_fraction * lr` at `total_steps`.

    The original used HF's linear schedule: warmup, then linear decay to 0 at max_steps.
    """
    if decay not in SCHEDULES:
        raise ValueError(f"config.optim.schedule {decay!r} unknown; choose one of {SCHEDULES}.")
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


def param_names(params: Any) -> Any:
    """Tree of dotted parameter names, e.g. 'decoder.layers.fc1.kernel'."""

    def name(path: tuple[Any, ...], _: Any) -> str:
        keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        return ".".join(k for k in keys if k != "value")

    return jax.tree_util.tree_map_with_path(name, params)


def trainable_labels(
    params: Any,
    train_only: Sequence[str] = (),
    freeze: Sequence[str] = (),
    lora: lora_lib.LoRASpec | None = None,
) -> Any:
    """'train' or 'freeze' per parameter, from regexes over dotted names.

    `train_only` non-empty: only matching parameters train (the original's fc1-only "slice" = ["fc1"]).
    `freeze`: matching parameters never train (e.g. ["^encoder\\."]).
    `lora` (enabled): only the adapters and the biases its bias mode names train (`lora.train_patterns`),
    so `train_only` must be empty; `freeze` still applies.
    """
    if lora is not None and lora.enabled:
        if train_only:
            raise ValueError(
                f"config.optim.train_only={list(train_only)} and config.model.lora both choose the trained "
                "parameters; with LoRA leave config.optim.train_only empty (config.optim.freeze still applies)."
            )
        train_only = lora_lib.train_patterns(jax.tree.leaves(param_names(params)), lora)

    def label(name: str) -> str:
        if train_only and not any(re.search(p, name) for p in train_only):
            return "freeze"
        return "freeze" if any(re.search(p, name) for p in freeze) else "train"

    labels = jax.tree.map(label, param_names(params))
    if "train" not in jax.tree.leaves(labels):
        raise ValueError(
            f"config.optim.train_only={list(train_only)} / freeze={list(freeze)} leave no parameter to train."
        )
    return labels


def describe_trainable(
    params: Any,
    train_only: Sequence[str] = (),
    freeze: Sequence[str] = (),
    lora: lora_lib.LoRASpec | None = None,
) -> str:
    """The start-of-training line: how many parameters train and which settings chose them, e.g.
    "trainable parameters 33,280 of 3,516,480 (0.95%); train_only [fc1], freeze [], no LoRA".

    Logged so a setting the trainer ignores (the original's misplaced `lora_config`) shows at once.
    """
    labels = jax.tree.leaves(trainable_labels(params, train_only, freeze, lora))
    sizes = [math.prod(leaf.shape) for leaf in jax.tree.leaves(params)]
    trained = sum(size for size, label in zip(sizes, labels, strict=True) if label == "train")
    total = sum(sizes)
    return (
        f"trainable parameters {trained:,} of {total:,} ({100 * trained / total:.2f}%); "
        f"train_only [{', '.join(train_only)}], freeze [{', '.join(freeze)}], "
        f"{(lora or lora_lib.LoRASpec()).describe()}"
    )


def make_optimizer(
    params: Any,
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    train_only: Sequence[str] = (),
    freeze: Sequence[str] = (),
    lora: lora_lib.LoRASpec | None = None,
) -> optax.GradientTransformation:
    """AdamW (HF/torch defaults, as the original) with global-norm clipping; frozen parameters get no update
    and no optimizer state."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    train = optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw) if max_grad_norm else adamw
    labels = trainable_labels(params, train_only, freeze, lora)
    return optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)


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


def split_model(model: Whisper) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, params, frozen): trainable-kind parameters and never-trained ones (encoder positions)."""
    return nnx.split(model, nnx.Param, FrozenParam)


def full_state(graphdef: nnx.GraphDef, params: Any, frozen: Any) -> Any:
    """`nnx.state(model)` for the model made of these pieces (what decode.make_decode_fn takes)."""
    return nnx.state(nnx.merge(graphdef, params, frozen))


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule, accum_steps: int = 1
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)`: one optimizer update over A micro-batches."""

    def micro_sums(params: Any, frozen: Any, micro: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        model = nnx.merge(graphdef, params, frozen)
        logits = model(micro["mel"], micro["decoder_input_ids"])
        sums = token_loss(logits, micro["targets"], micro["loss_mask"])
        return sums["loss_sum"], sums

    grad_fn = jax.grad(micro_sums, has_aux=True)

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        frozen = state.frozen
        batch = {k: batch[k] for k in TRAIN_KEYS}
        if accum_steps == 1:
            grads, sums = grad_fn(state.params, frozen, batch)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch
            )  # --> [A, B/A, ...]

            def accumulate(carry: Any, mb: Any) -> tuple[Any, None]:
                grads, sums = grad_fn(state.params, frozen, mb)
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zeros = (
                jax.tree.map(jnp.zeros_like, state.params),
                {"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0},
            )
            (grads, sums), _ = jax.lax.scan(accumulate, zeros, micro)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)  # mean over all tokens of the global batch
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["loss_sum"] / tokens,
            "token_accuracy": sums["correct"] / tokens,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "tokens": sums["tokens"],
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def jit_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state: TrainState,
    mesh: Mesh,
    accum_steps: int = 1,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The train step under `jax.jit`: state keeps its shardings (and is donated), the batch is split over
    the mesh's data-parallel axes."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        make_train_step(graphdef, tx, schedule, accum_steps),
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def init_train_state(
    params: Any, frozen: Any, tx: optax.GradientTransformation, seed: int, mesh: Mesh
) -> TrainState:
    """Optimizer state created on the mesh with the parameters' shardings (adam moments mirror them)."""

    def init(params: Any, frozen: Any) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            frozen=frozen,
            rng=jax.random.key_data(jax.random.key(seed)),
        )

    with jax.set_mesh(mesh):
        return jax.jit(init)(params, frozen)


def state_shardings(state: TrainState) -> TrainState:
    return jax.tree.map(lambda x: x.sharding, state)
