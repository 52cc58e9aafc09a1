"""LoRA adapters for our NNX Whisper: wrap targeted Dense layers, train only the adapters, merge for export.

Legend: L layers of a stack, I input width, O output width, r LoRA rank.

A targeted layer y = x W + b becomes y = x W + b + (x A) B * alpha / r with A [(L,) I, r] and B [(L,) r, O].
B starts at zero, so a freshly wrapped model computes exactly what the base model did; A starts like torch's
Linear (uniform in +-1/sqrt(I)), as in peft. Only A and B train (and biases, per `LoRASpec.bias`); `merge_lora`
folds them back into W for a plain Whisper (what `model/hf.py:export` writes).

Why not flax's `nnx.LoRA` / `nnx.LoRALinear`: our layers are stacks (`Dense` holds [L, I, O] kernels that the
layer loop slices or `lax.scan`s over), so each adapter also needs the leading [L] axis and its logical axes
(`layers`, the base layer's in/out axis) to shard like the layer it wraps; `nnx.LoRA` makes plain 2-D
[I, r] / [r, O] parameters without axis metadata, keeps the base layer under `base_module` (renaming
`q_proj.kernel` to `q_proj.base_module.kernel`, which breaks the HF name rule and loading our own checkpoints)
and has no alpha/r scaling. `LoRADense` keeps the base layer's `kernel`/`bias` names and adds `lora_a`/`lora_b`
(typed `nnx.LoRAParam`, a `nnx.Param`, so the trainer's parameter split carries them and checkpoints store them).

Dropout on the adapter input (peft's `lora_dropout`): y = x W + b + B(A(dropout(x))) * alpha / r, in training
only. A layer draws its mask only while it holds a key, which the train step gives it for one forward pass
(`set_dropout_keys`, from `(config.seed, step, micro-step)`); a model without keys (validation, decoding,
export, a merged model) is deterministic and computes what it did with dropout 0. The key is a model
attribute, not a call argument, so no model signature carries it, and it is never part of the saved state:
nothing random is checkpointed and a resumed run draws the masks an uninterrupted one would have. The masks do
not depend on the mesh: the step derives each layer's key inside `jax.jit` from the replicated step counter,
and with `jax_threefry_partitionable` (jax's default) `jax.random.bernoulli` yields the same bits for any
sharding of the batch; they do depend on the micro-batch shape (`accum_steps`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from audiocap_jax.cli import UserError
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.sharding import logical_to_spec
from audiocap_jax.model.whisper import Axes, Dense, Whisper

BIAS_MODES = ("none", "all", "lora_only")  # peft's `bias`: which biases train besides the adapters.
ADAPTER_NAMES = ("lora_a", "lora_b")
CONFIG_KEY = "--config.model.lora"  # where the settings come from, as errors name them


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """`config.model.lora`: rank 0 means no LoRA."""

    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    targets: tuple[
        str, ...
    ] = ()  # regexes searched in dotted module paths, e.g. "q_proj", r"^encoder\..*fc1"
    bias: str = "none"

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, lora: Mapping[str, Any], key: str = CONFIG_KEY) -> LoRASpec:
        """Reads and checks `config.model.lora` (a ConfigDict or dict with this class's fields; `key` is its
        flag in messages). A value the run could not honour is a `UserError` naming the key and the fix, before
        any model exists; that includes settings that would be silently ignored: rank 0 (no LoRA, every weight
        trains) with any other key set."""
        if isinstance(lora["targets"], str):  # tuple("q_proj") would be seven one-letter regexes
            raise UserError(
                f"{key}.targets={lora['targets']!r} is a string, not a tuple of regexes.",
                f"""set {key}.targets='("{lora["targets"]}",)'""",
            )
        spec = cls(
            rank=int(lora["rank"]),
            alpha=float(lora["alpha"]),
            dropout=float(lora["dropout"]),
            targets=tuple(lora["targets"]),
            bias=str(lora["bias"]),
        )
        if spec.rank < 0:
            raise UserError(
                f"{key}.rank={spec.rank} is negative.",
                f"set {key}.rank=0 (no LoRA) or a positive rank, e.g. 8",
            )
        if not spec.enabled:
            ignored = [
                f"{field.name}={getattr(spec, field.name)!r}"
                for field in dataclasses.fields(cls)
                if getattr(spec, field.name) != field.default
            ]
            if ignored:
                raise UserError(
                    f"{key}.rank=0 means no LoRA (every weight trains), yet {key} sets {', '.join(ignored)}.",
                    f"set {key}.rank to a positive rank (e.g. 8) to train adapters, or leave {key} at its "
                    "defaults for a full fine-tune",
                )
            return spec
        if spec.bias not in BIAS_MODES:
            raise UserError(
                f"{key}.bias={spec.bias!r} is not one of {', '.join(map(repr, BIAS_MODES))}.",
                f"set {key}.bias to one of {', '.join(BIAS_MODES)}",
            )
        if not spec.targets:
            raise UserError(
                f"{key}.targets is empty: LoRA rank {spec.rank} adapts no layer.",
                f"""name the layers to adapt, e.g. {key}.targets='("q_proj","v_proj","fc1")'""",
            )
        for target in spec.targets:
            try:
                re.compile(target)
            except re.error as error:
                raise UserError(
                    f"{key}.targets: {target!r} is not a regex ({error}).",
                    "fix the pattern, e.g. 'q_proj' or '^encoder\\..*fc1'",
                ) from None
        if spec.alpha <= 0:
            raise UserError(
                f"{key}.alpha={spec.alpha:g} must be positive.", f"set {key}.alpha, e.g. 32 (the original's)"
            )
        if not 0.0 <= spec.dropout < 1.0:
            raise UserError(
                f"{key}.dropout={spec.dropout:g} is outside [0, 1).",
                f"set {key}.dropout in [0, 1), e.g. 0.05 (the original's) or 0",
            )
        return spec

    def describe(self) -> str:
        """One line for logs, e.g. "LoRA rank 64, alpha 32 (scale 0.5), dropout 0.05, bias all, targets [q_proj,
        fc1]"."""
        if not self.enabled:
            return "no LoRA"
        return (
            f"LoRA rank {self.rank}, alpha {self.alpha:g} (scale {self.scale:g}), dropout {self.dropout:g}, "
            f"bias {self.bias}, targets [{', '.join(self.targets)}]"
        )


NO_LORA = LoRASpec()


class LoRADense(Dense):
    """A `Dense` plus a low-rank update; the base layer's kernel and bias variables are reused, not copied.

    `dropout_key` is None except during a train step's forward pass (`set_dropout_keys`): then it holds a
    key per layer of the stack ([L] keys, sliced with the layer's parameters by the layer loop or scan).
    """

    def __init__(self, base: Dense, rank: int, alpha: float, dropout: float = 0.0, *, rngs: nnx.Rngs):
        # Not Dense.__init__: the base layer's variables (and their logical axes) are taken over as they are.
        self.kernel, self.bias, self.dtype = base.kernel, base.bias, base.dtype
        kernel_axes = base.kernel.get_metadata()["logical_axes"]  # ([layers,] in, out)
        stack_shape, (in_features, out_features) = base.kernel.shape[:-2], base.kernel.shape[-2:]
        stack_axes, (in_axis, out_axis) = kernel_axes[:-2], kernel_axes[-2:]
        bound = 1.0 / math.sqrt(in_features)  # torch Linear's (and peft's) init of A
        a = jax.random.uniform(rngs.params(), (*stack_shape, in_features, rank), jnp.float32, -bound, bound)
        b = jnp.zeros((*stack_shape, rank, out_features), jnp.float32)
        place = _placer(base.kernel[...])
        a_axes, b_axes = (*stack_axes, in_axis, None), (*stack_axes, None, out_axis)
        self.lora_a = nnx.LoRAParam(place(a.astype(base.kernel.dtype), a_axes), logical_axes=a_axes)
        self.lora_b = nnx.LoRAParam(place(b.astype(base.kernel.dtype), b_axes), logical_axes=b_axes)
        self.scale = alpha / rank
        self.dropout_rate = dropout
        self.dropout_key = nnx.data(None)  # data, not static: a train step puts a key (a jax array) here

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        adapter_input = x
        if self.dropout_key is not None:  # training: inverted dropout, as torch's nn.Dropout in peft
            keep = jax.random.bernoulli(self.dropout_key[...], 1.0 - self.dropout_rate, x.shape)
            adapter_input = jnp.where(
                keep, x / jnp.asarray(1.0 - self.dropout_rate, x.dtype), jnp.zeros_like(x)
            )
        a = self.lora_a[...].astype(self.dtype)
        low_rank = jnp.einsum("...i,ir->...r", adapter_input, a)  # --> [..., r]
        update = jnp.einsum("...r,ro->...o", low_rank, self.lora_b[...].astype(self.dtype))  # --> [..., O]
        return super().__call__(x) + update * self.scale

    def merged_kernel(self) -> jax.Array:
        """W + A B * alpha / r: [(L,) I, O] in the kernel's dtype, computed in float32."""
        delta = jnp.einsum("...ir,...ro->...io", self.lora_a[...], self.lora_b[...], precision="highest")
        return (self.kernel[...].astype(jnp.float32) + delta.astype(jnp.float32) * self.scale).astype(
            self.kernel.dtype
        )


def _placer(kernel: jax.Array) -> Callable[[jax.Array, Axes], jax.Array]:
    """Puts a new parameter on the mesh the base kernel lives on, sharded by its logical axes."""
    sharding = getattr(kernel, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return lambda array, axes: array
    mesh = sharding.mesh
    return lambda array, axes: jax.device_put(
        array, NamedSharding(mesh, logical_to_spec(axes, array.shape, mesh))
    )


def _dense_layers(model: nnx.Module) -> Iterator[tuple[str, nnx.Module, str, Dense]]:
    """(dotted path, parent module, attribute name, layer) for every Dense of the model, in graph order."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Dense) and path:
            parent = model
            for key in path[:-1]:
                parent = getattr(parent, key) if isinstance(key, str) else parent[key]
            yield ".".join(map(str, path)), parent, str(path[-1]), module


def layer_names() -> list[str]:
    """Dotted paths of every Dense layer of our Whisper, e.g. "encoder.layers.self_attn.q_proj": what
    `LoRASpec.targets` are searched in.

    The paths do not depend on the architecture's sizes (each stack of layers is one module with a leading [L]
    axis), so an abstract model (`nnx.eval_shape`: shapes only, nothing allocated) of the default size gives
    them before the run's model is loaded or built: a target that matches nothing fails in pre-flight.
    """
    model = nnx.eval_shape(lambda: Whisper(WhisperConfig(), rngs=nnx.Rngs(0)))
    return [name for name, *_ in _dense_layers(model)]


def check_targets(spec: LoRASpec, names: Sequence[str], key: str = CONFIG_KEY) -> None:
    """Every target regex of `spec` matches at least one of the layer `names` (a config written for another
    model, or a misspelling, adapts nothing); UserError naming the targets and the layer names there are."""
    unmatched = [target for target in spec.targets if not any(re.search(target, name) for name in names)]
    if unmatched:
        kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise UserError(
            f"{key}.targets {unmatched} match no layer of Whisper; its Dense layers are named {kinds} "
            f"(full paths such as {names[0]!r}).",
            f"set {key}.targets to regexes of those names, e.g. ('q_proj', 'v_proj', 'fc1')",
        )


def check_train_only(spec: LoRASpec, train_only: Sequence[str]) -> None:
    """With LoRA the adapters (and the biases of `spec.bias`) are what trains, so `optim.train_only`, which
    also chooses it, must stay empty; `optim.freeze` still applies. A config-only rule: pre-flight checks it."""
    if spec.enabled and train_only:
        raise UserError(
            f"--config.optim.train_only={list(train_only)} and {CONFIG_KEY} both choose the trained parameters.",
            "with LoRA leave --config.optim.train_only empty (--config.optim.freeze still applies)",
        )


def apply_lora(model: Whisper, spec: LoRASpec, *, seed: int = 0) -> list[str]:
    """Replaces (in place) every Dense whose dotted path matches a target regex by a `LoRADense`.

    Call after the model is built or loaded and before the parameters are split for training. Fails like
    `check_targets` (which pre-flight runs first) when a target matches no layer.

    Returns:
      the dotted paths wrapped, e.g. ["encoder.layers.self_attn.q_proj", ...].
    """
    if not spec.enabled:
        return []
    layers = list(_dense_layers(model))
    check_targets(spec, [name for name, *_ in layers])
    rngs = nnx.Rngs(seed)
    wrapped = []
    for name, parent, attribute, layer in layers:
        if isinstance(layer, LoRADense) or not any(re.search(target, name) for target in spec.targets):
            continue
        setattr(parent, attribute, LoRADense(layer, spec.rank, spec.alpha, spec.dropout, rngs=rngs))
        wrapped.append(name)
    return wrapped


def set_dropout_keys(model: nnx.Module, key: jax.Array) -> None:
    """Gives every `LoRADense` with dropout > 0 its own keys, drawn from `key`, for the next forward pass.

    Call on a model merged inside the train step (the keys are tracers of that step; the step's state never
    holds them). Layer i of the model's LoRA layers (graph order) gets `fold_in(key, i)`, split into one key
    per layer of its stack. A model with no dropout is left as it is.
    """
    layers = [module for _, module in nnx.iter_modules(model) if isinstance(module, LoRADense)]
    for index, layer in enumerate(layers):
        if layer.dropout_rate > 0:
            stack_shape = layer.kernel.shape[:-2]  # ([L],)
            layer_key = jax.random.fold_in(key, index)
            keys = jax.random.split(layer_key, stack_shape) if stack_shape else layer_key
            layer.dropout_key = nnx.RngKey(keys)


def merge_lora(model: Whisper) -> Whisper:
    """A copy of `model` with every `LoRADense` folded into a plain `Dense` (kernel W + A B alpha/r).

    A model without adapters is returned as it is. Used by the HF export: transformers loads plain Whisper.
    """
    layers = [entry for entry in _dense_layers(model) if isinstance(entry[3], LoRADense)]
    if not layers:
        return model
    merged = nnx.clone(model)
    for _, parent, attribute, layer in _dense_layers(merged):
        if not isinstance(layer, LoRADense):
            continue
        plain = _abstract_dense_like(layer, model.config)
        plain.kernel = nnx.Param(layer.merged_kernel(), **layer.kernel.get_metadata())
        plain.bias = layer.bias
        setattr(parent, attribute, plain)
    return merged


def _abstract_dense_like(layer: LoRADense, config: Any) -> Dense:
    """A `Dense` shaped like `layer`'s base, without initialising it (its variables are replaced next)."""
    axes = tuple(layer.kernel.get_metadata()["logical_axes"])
    in_features, out_features = layer.kernel.shape[-2:]
    stack = layer.kernel.shape[0] if axes[0] == "layers" else None
    use_bias = layer.bias is not None
    return nnx.eval_shape(
        lambda: Dense(
            in_features,
            out_features,
            axes[-2:],
            config=config,
            rngs=nnx.Rngs(0),
            stack=stack,
            use_bias=use_bias,
        )
    )


def train_patterns(names: Sequence[str], spec: LoRASpec) -> tuple[str, ...]:
    """Regexes over dotted parameter names that select what trains under `spec`: the adapters, plus every
    bias ("all") or the wrapped layers' biases ("lora_only").

    Args:
      names: the model's dotted parameter names (`train_step.param_names`), which show the wrapped layers.
    """
    wrapped = sorted({name.rsplit(".", 1)[0] for name in names if name.rsplit(".", 1)[-1] in ADAPTER_NAMES})
    patterns = [rf"\.({'|'.join(ADAPTER_NAMES)})$"]
    if spec.bias == "all":
        patterns.append(r"\.bias$")
    elif spec.bias == "lora_only":
        patterns += [rf"^{re.escape(layer)}\.bias$" for layer in wrapped]
    return tuple(patterns)
