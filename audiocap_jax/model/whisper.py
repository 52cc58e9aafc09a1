"""Whisper encoder-decoder in Flax NNX, with logical axis names on every parameter and an explicit KV cache.

Legend: B batch, K beams, N = B*K decoder rows, M mel bins, S mel frames, S' = S/2 encoder positions,
T tokens, L layers, D width, H heads, Dh head width, F MLP width, V vocab.

Faithful to the released checkpoints: conv1/conv2 (k=3, GELU, conv2 stride 2), sinusoidal encoder positions
(stored, never trained), pre-LN blocks (eps 1e-5), k_proj without bias, learned decoder positions, output
projection tied to the token embedding. Dropout is omitted: every released Whisper config sets it to 0.

Layers of a stack share one module whose parameters carry a leading `layers` axis ([L, ...]); they run in a
Python loop or, with `scan_layers`, in `lax.scan` (compile time flat in depth), optionally rematerialised
(`remat`: "full", or "dots" to keep matmul outputs). Parameter names follow HuggingFace's so checkpoint
conversion is a rule, not a table (model/hf.py).

How the model runs on a backend (attention kernel, compute dtype, CPU-only layouts) is decided once, when it
is built (model/backend.py, written into its config); no call signature carries a backend flag. The token
embedding has `config.padded_vocab_size` rows (a multiple of 128, so its vocab axis shards over `tensor`);
logits of the padding columns are -inf, so softmax, loss and search never see them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiocap_jax.model.attention import attention, heads_major, heads_major_attention
from audiocap_jax.model.backend import cpu_layouts, resolve_runtime
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.sharding import constrain, state_shardings

_INIT_STD = 0.02  # HF WhisperConfig.init_std
_LAYER_NORM_EPS = 1e-5

Axes = tuple[str | None, ...]


class FrozenParam(nnx.Variable):
    """Stored and exported with the parameters but never trained (Whisper's sinusoidal encoder positions)."""


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _stacked(stack: int | None, shape: tuple[int, ...], axes: Axes) -> tuple[tuple[int, ...], Axes]:
    """Prefix a `layers` axis when the module holds a whole stack of layers."""
    if stack is None:
        return shape, axes
    return (stack, *shape), ("layers", *axes)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    return (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's encoder position table, [length, channels] float32."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class Dense(nnx.Module):
    """y = x W + b with W [(L,) in, out]; `axes` are the logical names of (in, out)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: Axes,
        *,
        config: WhisperConfig,
        rngs: nnx.Rngs,
        stack: int | None = None,
        use_bias: bool = True,
    ):
        pdt = _dtype(config.param_dtype)
        shape, names = _stacked(stack, (in_features, out_features), axes)
        self.kernel = nnx.Param(_normal(rngs, shape, pdt), logical_axes=names)
        if use_bias:
            bshape, bnames = _stacked(stack, (out_features,), axes[1:])
            self.bias = nnx.Param(jnp.zeros(bshape, pdt), logical_axes=bnames)
        else:
            self.bias = None
        self.dtype = _dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Conv1d(nnx.Module):
    """Width-3 convolution over time on [B, S, C] (channels last); kernel [3, C_in, C_out]."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, in_axis: str, *, config: WhisperConfig, rngs: nnx.Rngs
    ):
        pdt = _dtype(config.param_dtype)
        self.kernel = nnx.Param(
            _normal(rngs, (3, in_ch, out_ch), pdt), logical_axes=("conv_width", in_axis, "embed")
        )
        self.bias = nnx.Param(jnp.zeros((out_ch,), pdt), logical_axes=("embed",))
        self.stride = stride
        self.dtype = _dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride,),
            padding=((1, 1),),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the compute dtype (bf16 statistics lose too much)."""

    def __init__(self, dim: int, *, config: WhisperConfig, stack: int | None = None):
        pdt = _dtype(config.param_dtype)
        shape, names = _stacked(stack, (dim,), ("norm",))
        self.scale = nnx.Param(jnp.ones(shape, pdt), logical_axes=names)
        self.bias = nnx.Param(jnp.zeros(shape, pdt), logical_axes=names)
        self.dtype = _dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + _LAYER_NORM_EPS)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(
            self.dtype
        )


class Embed(nnx.Module):
    """A [num, D] table; `variable_type` is Param (trained) or FrozenParam (encoder positions)."""

    def __init__(self, table: jax.Array, axes: Axes, variable_type: type[nnx.Variable] = nnx.Param):
        self.embedding = variable_type(table, logical_axes=axes)


class Attention(nnx.Module):
    """Multi-head attention projections; k_proj has no bias, as in Whisper."""

    def __init__(self, config: WhisperConfig, heads: int, *, rngs: nnx.Rngs, stack: int | None = None):
        d = config.d_model
        kw: dict[str, Any] = dict(config=config, rngs=rngs, stack=stack)
        self.q_proj = Dense(d, d, ("embed", "heads"), **kw)
        self.k_proj = Dense(d, d, ("embed", "heads"), use_bias=False, **kw)
        self.v_proj = Dense(d, d, ("embed", "heads"), **kw)
        self.out_proj = Dense(d, d, ("heads", "embed"), **kw)
        self.num_heads = heads
        self.attention_impl = config.attention_impl

    def split_heads(self, x: jax.Array) -> jax.Array:  # [B, T, D] --> [B, T, H, Dh]
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B, S, H, Dh] of `x` [B, S, D]."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def project_encoder_kv(self, encoder_states: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys [B, H, Dh, S'] and values [B, H, S', Dh] (see `heads_major_attention`)."""
        return heads_major(*self.project_kv(encoder_states))

    def __call__(self, x: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False) -> jax.Array:
        """Whole sequences: queries from x [N, T, D] attend to k, v [N, S, H, Dh], through the backend's kernel."""
        q = self.split_heads(self.q_proj(x))  # [N, T, H, Dh]
        out = attention(q, k, v, impl=self.attention_impl, causal=causal)
        return self.out_proj(out.reshape(*x.shape))

    def attend_heads_major(
        self, x: jax.Array, kv: tuple[jax.Array, jax.Array], mask: jax.Array | None = None
    ) -> jax.Array:
        """Queries from x [N, T, D] attend to heads-major keys [B, H, Dh, S] / values [B, H, S, Dh]: the
        encoder's (`project_encoder_kv`) or the decoding cache's.

        When N = B*K (K beams share one example's encoder states), the beams are folded into the query axis
        instead of copying the keys K times.
        """
        q = self.split_heads(self.q_proj(x))  # [N, T, H, Dh]
        n, t, h, dh = q.shape
        b = kv[0].shape[0]
        out = heads_major_attention(q.reshape(b, (n // b) * t, h, dh), *kv, mask)  # --> [B, K*T, H, Dh]
        return self.out_proj(out.reshape(*x.shape))


class _PreNormMLP:
    """The feed-forward block both layer kinds share (their fc1, fc2 and final_layer_norm)."""

    fc1: Dense
    fc2: Dense
    final_layer_norm: LayerNorm

    def mlp(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(self.final_layer_norm(x)), approximate=False))


class EncoderLayer(nnx.Module, _PreNormMLP):
    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, f = config.d_model, config.encoder_ffn_dim
        self.self_attn = Attention(config, config.encoder_attention_heads, rngs=rngs, stack=stack)
        self.self_attn_layer_norm = LayerNorm(d, config=config, stack=stack)
        self.fc1 = Dense(d, f, ("embed", "mlp"), config=config, rngs=rngs, stack=stack)
        self.fc2 = Dense(f, d, ("mlp", "embed"), config=config, rngs=rngs, stack=stack)
        self.final_layer_norm = LayerNorm(d, config=config, stack=stack)

    def __call__(self, x: jax.Array, row_chunks: int = 1) -> jax.Array:
        """[B, S', D] --> [B, S', D]; `row_chunks` > 1 runs the row-wise parts in sequence chunks (see
        `_encoder_row_chunks`: forward-only, CPU policy)."""
        q, k, v = _map_sequence_chunks(self.project_qkv, (x,), row_chunks)
        attended = attention(q, k, v, impl=self.self_attn.attention_impl)
        x = _map_sequence_chunks(self.finish, (x, attended), row_chunks)
        return constrain(x, ("batch", "length", "embed"))

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Layer norm, then queries, keys and values: [B, S, D] --> 3 x [B, S, H, Dh]."""
        h = self.self_attn_layer_norm(x)
        return (self.self_attn.split_heads(self.self_attn.q_proj(h)), *self.self_attn.project_kv(h))

    def finish(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        """Output projection and residual, then the MLP block: [B, S, D], [B, S, H, Dh] --> [B, S, D]."""
        x = x + self.self_attn.out_proj(attended.reshape(x.shape))
        return x + self.mlp(x)


_CHUNK_ROWS = 2048


def _encoder_row_chunks(config: WhisperConfig, shape: tuple[int, ...]) -> int:
    """How many sequence chunks an encoder layer's row-wise parts (layer norms, projections, MLP: all but the
    attention itself) run in when only its forward pass is needed (decoding).

    On CPU the [B*S', F] MLP activations (74 MB for tiny at B=8) fall out of cache between fc1, GELU and fc2;
    chunks of at most 2048 rows stay in it, which made the MLP forward 25% faster (and the projections a
    further 2% of the encoder). Chunked, the backward pass was 20% slower, so training never chunks; neither
    do GPUs and TPUs (`backend.cpu_layouts`).
    """
    if not cpu_layouts(config):
        return 1
    batch, length = shape[0], shape[1]
    return next(n for n in range(1, length + 1) if length % n == 0 and batch * length // n <= _CHUNK_ROWS)


def _map_sequence_chunks(fn: Callable[..., Any], inputs: tuple[jax.Array, ...], chunks: int) -> Any:
    """fn applied to `chunks` consecutive pieces of the sequence axis of its [B, S, ...] inputs, one piece at
    a time; its [B, S/C, ...] outputs are joined again.

    The batch axis stays whole, so a batch sharded over the mesh stays local. One chunk is a plain call.
    """
    if chunks == 1:
        return fn(*inputs)

    def split(a: jax.Array) -> jax.Array:  # [B, S, ...] --> [C, B, S/C, ...]
        return a.reshape(a.shape[0], chunks, a.shape[1] // chunks, *a.shape[2:]).swapaxes(0, 1)

    def join(a: jax.Array) -> jax.Array:  # [C, B, S/C, ...] --> [B, S, ...]
        return a.swapaxes(0, 1).reshape(a.shape[1], -1, *a.shape[3:])

    return jax.tree.map(join, jax.lax.map(lambda pieces: fn(*pieces), tuple(map(split, inputs))))


class DecoderLayer(nnx.Module, _PreNormMLP):
    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, f, heads = config.d_model, config.decoder_ffn_dim, config.decoder_attention_heads
        self.self_attn = Attention(config, heads, rngs=rngs, stack=stack)
        self.self_attn_layer_norm = LayerNorm(d, config=config, stack=stack)
        self.encoder_attn = Attention(config, heads, rngs=rngs, stack=stack)
        self.encoder_attn_layer_norm = LayerNorm(d, config=config, stack=stack)
        self.fc1 = Dense(d, f, ("embed", "mlp"), config=config, rngs=rngs, stack=stack)
        self.fc2 = Dense(f, d, ("mlp", "embed"), config=config, rngs=rngs, stack=stack)
        self.final_layer_norm = LayerNorm(d, config=config, stack=stack)

    def __call__(self, x: jax.Array, encoder_states: jax.Array) -> jax.Array:
        """Teacher forcing over whole sequences: x [N, T, D], encoder states [N, S', D] --> [N, T, D]; all
        three attentions go through the backend's kernel."""
        h = self.self_attn_layer_norm(x)
        x = x + self.self_attn(h, *self.self_attn.project_kv(h), causal=True)
        h = self.encoder_attn_layer_norm(x)
        x = x + self.encoder_attn(h, *self.encoder_attn.project_kv(encoder_states))
        return constrain(x + self.mlp(x), ("batch", "length", "embed"))

    def new_self_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Decoding: the new tokens' self-attention keys [N, H, Dh, T] and values [N, H, T, Dh] (heads-major,
        the cache's layout), for the caller to write into this layer's cache before `attend_cached`."""
        return heads_major(*self.self_attn.project_kv(self.self_attn_layer_norm(x)))

    def attend_cached(
        self,
        x: jax.Array,
        self_kv: tuple[jax.Array, jax.Array],
        cross_kv: tuple[jax.Array, jax.Array],
        self_mask: jax.Array,
    ) -> jax.Array:
        """Decoding: new tokens x [N, T, D] attend to this layer's self cache (keys [N, H, Dh, T_max], values
        [N, H, T_max, Dh], the new tokens already written) under `self_mask` [N, 1, T, T_max], and to the
        clip's cross K/V [B, H, Dh, S'] / [B, H, S', Dh] (N = B*K: beams fold into the query axis)."""
        x = x + self.self_attn.attend_heads_major(self.self_attn_layer_norm(x), self_kv, self_mask)
        x = x + self.encoder_attn.attend_heads_major(self.encoder_attn_layer_norm(x), cross_kv)
        return constrain(x + self.mlp(x), ("batch", "length", "embed"))


def unstack_layers(layers: nnx.Module, num_layers: int) -> list[nnx.Module]:
    """One module per layer, sliced out of a stacked module's [L, ...] parameters."""
    graphdef, state = nnx.split(layers)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(num_layers)]


# What a rematerialised layer keeps for the backward pass: nothing ("full") or its matmul outputs ("dots").
_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _run_layers(
    layers: nnx.Module | list[nnx.Module],
    num_layers: int,
    body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any = None,
    *,
    scan: bool,
    remat: str,
) -> tuple[Any, Any]:
    """Apply `body(layer, carry, x_l) -> (carry, y_l)` to each layer of a stacked module, or of a list of
    per-layer modules (`unstack_layers`) when not scanning.

    Under `scan` (`lax.scan`), per-layer inputs `xs` and outputs `ys` are pytrees with a leading [L] axis;
    otherwise they are lists of L pytrees (None: no per-layer inputs). `remat` is a `WhisperConfig.remat`
    policy, applied to each layer. Returns (final carry, ys).
    """
    if scan:
        graphdef, state = nnx.split(layers)
    else:
        modules = layers if isinstance(layers, list) else unstack_layers(layers, num_layers)
        graphdef, states = nnx.graphdef(modules[0]), [nnx.state(m) for m in modules]

    def step(carry: Any, inputs: Any) -> tuple[Any, Any]:
        layer_state, x_l = inputs
        return body(nnx.merge(graphdef, layer_state), carry, x_l)

    if remat != "none":
        step = jax.checkpoint(step, policy=_REMAT_POLICIES[remat])
    if scan:
        return jax.lax.scan(step, carry, (state, xs))
    ys = []
    for layer_state, x_l in zip(states, [None] * num_layers if xs is None else xs, strict=True):
        carry, y = step(carry, (layer_state, x_l))
        ys.append(y)
    return carry, ys


def _write_rows(cache: jax.Array, new: jax.Array, positions: jax.Array, axis: int) -> jax.Array:
    """Write new [N, ...] into cache [N, ...] at each row's own position (int32 [N]) along `axis` of a row."""
    return jax.vmap(lambda c, u, p: jax.lax.dynamic_update_slice_in_dim(c, u, p, axis=axis))(
        cache, new, positions
    )


def _write_layer_rows(
    stack: jax.Array, layer: jax.Array, new: jax.Array, positions: jax.Array, axis: int
) -> jax.Array:
    """`_write_rows` into layer `layer` (int32 []) of a stacked cache [L, N, ...], in place: new [N, ...]."""

    def write(
        rows: jax.Array, update: jax.Array, position: jax.Array
    ) -> jax.Array:  # rows: [L, ...] of one row
        start = [layer] + [0] * update.ndim
        start[1 + axis] = position
        return jax.lax.dynamic_update_slice(rows, update[None], start)

    return jax.vmap(write, in_axes=(1, 0, 0), out_axes=1)(stack, new, positions)


@flax.struct.dataclass
class DecodeCache:
    """Decoder state for incremental decoding.

    Self-attention keys/values are per decoder row (beam) and written in place; cross-attention keys/values
    are computed once per clip from the encoder output and shared by its K beams (never gathered or copied
    per step). Heads-major, as they are read at every step (attention.heads_major_attention). Two layouts of
    the layers, matching how they run: per-layer tuples for a Python loop over layers (no whole-cache
    slice/stack copies per step), or `stacked` [L, ...] arrays that the layer scan (`scan_layers`) reads
    layer by layer and updates in place in its carry.
    """

    self_k: Any  # compute dtype: L x [N, H, Dh, T_max] | stacked [L, N, H, Dh, T_max]
    self_v: Any  # compute dtype: L x [N, H, T_max, Dh] | stacked [L, N, H, T_max, Dh]
    cross_k: Any  # compute dtype: L x [B, H, Dh, S'] | stacked [L, B, H, Dh, S']
    cross_v: Any  # compute dtype: L x [B, H, S', Dh] | stacked [L, B, H, S', Dh]
    stacked: bool = flax.struct.field(pytree_node=False, default=False)

    def _map_self(self, fn: Callable[[jax.Array], jax.Array]) -> DecodeCache:
        return self.replace(self_k=jax.tree.map(fn, self.self_k), self_v=jax.tree.map(fn, self.self_v))

    def repeat_rows(self, repeats: int) -> DecodeCache:
        """Copy each row's self-attention state to `repeats` consecutive rows (an example's beams).
        [B, ...] --> [B*K, ...] in every layer; a batch sharded over examples stays local."""
        axis = 1 if self.stacked else 0
        return self._map_self(lambda x: jnp.repeat(x, repeats, axis=axis))

    def gather_rows(self, idx: jax.Array) -> DecodeCache:
        """Reorder decoder rows within each example (beam reordering): int32 [N] global row indices, row n
        taking from a row of the same example. [N, ...] --> [N, ...] in every layer.

        Done as a per-example gather ([B, K, ...] along K) so a batch sharded over examples stays local:
        a flat `take` over N makes XLA all-gather the whole cache onto every device at every step.
        """
        axis = 1 if self.stacked else 0
        b = jax.tree.leaves(self.cross_k)[0].shape[axis]
        k = idx.shape[0] // b
        local = idx.reshape(b, k) - (jnp.arange(b) * k)[:, None]  # --> [B, K] beam index within the example

        def take(x: jax.Array) -> jax.Array:
            y = x.reshape(*x.shape[:axis], b, k, *x.shape[axis + 1 :])  # [.., N, ...] --> [.., B, K, ...]
            index = local.reshape(*([1] * axis), b, k, *([1] * (x.ndim - axis - 1)))
            return jnp.take_along_axis(y, index, axis=axis + 1).reshape(x.shape)

        return self._map_self(take)


# ids int32 [N, T], cache, positions int32 [N] (where row n's first token goes) -> (float32 [N, T, V'], cache)
TokensToLogits = Callable[[jax.Array, DecodeCache, jax.Array], tuple[jax.Array, DecodeCache]]


class Encoder(nnx.Module):
    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.conv1 = Conv1d(config.num_mel_bins, d, 1, "mel", config=config, rngs=rngs)
        self.conv2 = Conv1d(d, d, 2, "conv_in", config=config, rngs=rngs)
        positions = jnp.asarray(sinusoids(config.max_source_positions, d), _dtype(config.param_dtype))
        self.embed_positions = Embed(positions, ("positions", "embed"), FrozenParam)
        self.layers = EncoderLayer(config, rngs=rngs, stack=config.encoder_layers)
        self.layer_norm = LayerNorm(d, config=config)
        self.config = config

    def __call__(self, mel: jax.Array) -> jax.Array:
        """[B, M, S] log-mel --> [B, S', D] encoder states (compute dtype)."""
        return self._run(mel, forward_only=False)

    def forward_only(self, mel: jax.Array) -> jax.Array:
        """The same states, for callers that take no gradient (decoding): the backend policy may then run
        each layer's row-wise parts in sequence chunks (`_encoder_row_chunks`)."""
        return self._run(mel, forward_only=True)

    def _run(self, mel: jax.Array, forward_only: bool) -> jax.Array:
        cfg = self.config
        expected = (cfg.num_mel_bins, cfg.num_frames)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != expected:
            raise ValueError(
                f"Encoder input has shape {tuple(mel.shape)}; expected [batch, {expected[0]}, {expected[1]}] "
                f"log-mel (num_mel_bins={expected[0]}, {expected[1]} frames = 30 s). Pad or trim audio to 30 s "
                "and use the mel bins of the checkpoint (80, or 128 for large-v3)."
            )
        x = jnp.transpose(mel, (0, 2, 1))  # [B, M, S] --> [B, S, M]
        x = jax.nn.gelu(self.conv1(x), approximate=False)
        x = jax.nn.gelu(self.conv2(x), approximate=False)  # --> [B, S', D]
        x = x + self.embed_positions.embedding[...].astype(x.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        chunks = _encoder_row_chunks(cfg, x.shape) if forward_only else 1

        def body(layer: EncoderLayer, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
            return layer(x, chunks), None

        x, _ = _run_layers(self.layers, cfg.encoder_layers, body, x, scan=cfg.scan_layers, remat=cfg.remat)
        return self.layer_norm(x)


class Decoder(nnx.Module):
    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        pdt = _dtype(config.param_dtype)
        d = config.d_model
        table = _normal(rngs, (config.padded_vocab_size, d), pdt)
        self.embed_tokens = Embed(table.at[config.vocab_size :].set(0), ("vocab", "embed"))
        self.embed_positions = Embed(
            _normal(rngs, (config.max_target_positions, d), pdt), ("positions", "embed")
        )
        self.layers = DecoderLayer(config, rngs=rngs, stack=config.decoder_layers)
        self.layer_norm = LayerNorm(d, config=config)
        self.config = config

    def embed(self, ids: jax.Array, positions: jax.Array) -> jax.Array:
        """ids, positions: int32 [N, T] --> [N, T, D]."""
        dtype = _dtype(self.config.dtype)
        scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
        tokens = jnp.take(self.embed_tokens.embedding[...], ids, axis=0).astype(dtype) * scale
        x = tokens + jnp.take(self.embed_positions.embedding[...], positions, axis=0).astype(dtype)
        return constrain(x, ("batch", "length", "embed"))

    def logits(self, x: jax.Array) -> jax.Array:
        """Tied output projection: [N, T, D] --> float32 [N, T, V'] over the padded vocabulary V'; the padding
        columns are -inf (they sit past `vocab_size` and are never a token)."""
        x = self.layer_norm(x)
        table = self.embed_tokens.embedding[...].astype(x.dtype)
        if cpu_layouts(self.config) and x.shape[0] * x.shape[1] <= _VOCAB_MAJOR_MAX_ROWS:
            logits = jnp.einsum("vd,ntd->vnt", table, x, preferred_element_type=jnp.float32)
            logits = logits.transpose(1, 2, 0)
        else:
            logits = jnp.einsum("ntd,vd->ntv", x, table, preferred_element_type=jnp.float32)
        real = jnp.arange(table.shape[0]) < self.config.vocab_size
        return constrain(jnp.where(real, logits, -jnp.inf), ("batch", "length", "vocab"))


# On CPU, for a decoding step's few rows, XLA's dot library runs the output projection as [V, D] x [D, rows]
# (then a transpose of the result) 10-20% faster than [rows, D] x [D, V] (whisper-tiny's 51865 x 384 table:
# 8.1 vs 9.9 ms at 32 rows, 4.5 vs 5.4 ms at 8); from 40 rows on it is slower. GPUs and TPUs keep the plain
# form (`backend.cpu_layouts`).
_VOCAB_MAJOR_MAX_ROWS = 32


class Whisper(nnx.Module):
    """The encoder-decoder. Pure methods of (parameters, inputs): safe to call under jax.jit via nnx.split.

    `config` may say dtype/attention_impl "auto": they are resolved here for JAX's devices (model/backend.py).
    """

    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        config = resolve_runtime(config)
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.config = config

    def __call__(self, mel: jax.Array, decoder_input_ids: jax.Array) -> jax.Array:
        """Teacher-forced forward: [B, M, S], int32 [B, T] --> float32 logits [B, T, V'] (padded vocab)."""
        return self.teacher_forced_logits(decoder_input_ids, self.encoder(mel))

    def encode(self, mel: jax.Array) -> jax.Array:
        """[B, M, S] log-mel --> [B, S', D] encoder states, for decoding (no gradient taken; see
        `Encoder.forward_only`)."""
        return self.encoder.forward_only(mel)

    def teacher_forced_logits(self, decoder_input_ids: jax.Array, encoder_states: jax.Array) -> jax.Array:
        """The causal decoder over whole sequences: int32 [B, T], [B, S', D] --> float32 [B, T, V']."""
        cfg = self.config
        t = decoder_input_ids.shape[1]
        positions = jnp.broadcast_to(jnp.arange(t), decoder_input_ids.shape)
        x = self.decoder.embed(decoder_input_ids, positions)

        def body(layer: DecoderLayer, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
            return layer(x, encoder_states), None

        x, _ = _run_layers(
            self.decoder.layers, cfg.decoder_layers, body, x, scan=cfg.scan_layers, remat=cfg.remat
        )
        return self.decoder.logits(x)

    def start_decoding(
        self, encoder_states: jax.Array, max_length: int
    ) -> tuple[TokensToLogits, DecodeCache]:
        """What a decoding loop needs: `(tokens_to_logits, cache)`.

        The cache holds each clip's cross-attention K/V from encoder states [B, S', D] (computed once here)
        and an empty self-attention cache of `max_length` positions for B rows (`DecodeCache.repeat_rows`
        gives each example's beams their rows). `tokens_to_logits(ids int32 [N, T], cache, positions int32
        [N])` runs T new tokens per row, row n's first at `positions[n]`; each row attends to its cache up to
        its own position, so rows may be at different lengths (per-example prompts). It returns float32
        logits [N, T, V'] and the cache with the new keys/values written.

        Unscanned, the layers' parameters are sliced out of the stacked arrays once, here: left to each step,
        XLA copies the slices at every step (it does not hoist them out of the while loop: 1.5 ms of a 30 ms
        whisper-tiny step). Scanned, the loop's carry holds the stacked cache.
        """
        cfg = self.config
        if max_length > cfg.max_target_positions:
            raise ValueError(
                f"max_length {max_length} exceeds the decoder's {cfg.max_target_positions} positions; lower it."
            )
        scan, num_layers = cfg.scan_layers, cfg.decoder_layers
        layers = self.decoder.layers if scan else unstack_layers(self.decoder.layers, num_layers)

        def project(layer: DecoderLayer, carry: None, _: Any) -> tuple[None, tuple[jax.Array, jax.Array]]:
            return None, layer.encoder_attn.project_encoder_kv(encoder_states)

        _, cross_kv = _run_layers(layers, num_layers, project, None, scan=scan, remat="none")
        heads = cfg.decoder_attention_heads
        rows = (encoder_states.shape[0], heads)
        head_width, dtype = cfg.d_model // heads, _dtype(cfg.dtype)
        k_shape, v_shape = (*rows, head_width, max_length), (*rows, max_length, head_width)
        if scan:
            cache = DecodeCache(
                self_k=jnp.zeros((num_layers, *k_shape), dtype),
                self_v=jnp.zeros((num_layers, *v_shape), dtype),
                cross_k=cross_kv[0],
                cross_v=cross_kv[1],
                stacked=True,
            )
        else:
            cache = DecodeCache(
                self_k=tuple(jnp.zeros(k_shape, dtype) for _ in range(num_layers)),
                self_v=tuple(jnp.zeros(v_shape, dtype) for _ in range(num_layers)),
                cross_k=tuple(k for k, _ in cross_kv),
                cross_v=tuple(v for _, v in cross_kv),
            )
        return functools.partial(self._decode_tokens, layers), cache

    def _decode_tokens(
        self,
        layers: nnx.Module | list[nnx.Module],
        ids: jax.Array,
        cache: DecodeCache,
        positions: jax.Array,
    ) -> tuple[jax.Array, DecodeCache]:
        """`tokens_to_logits` of `start_decoding`, for its `layers` (stacked or per-layer)."""
        num_layers = self.config.decoder_layers
        t = ids.shape[1]
        token_positions = positions[:, None] + jnp.arange(t)[None, :]  # [N, T]
        x = self.decoder.embed(ids, token_positions)
        max_len = jax.tree.leaves(cache.self_k)[0].shape[-1]
        mask = jnp.arange(max_len)[None, None, :] <= token_positions[:, :, None]  # [N, T, T_max]
        mask = mask[:, None]  # --> [N, 1, T, T_max]

        if cache.stacked:

            def scanned(layer: DecoderLayer, carry: Any, xs: Any) -> tuple[Any, None]:
                x, self_k, self_v = carry  # self cache [L, N, ...], updated in place
                cross_k, cross_v, index = xs
                new_k, new_v = layer.new_self_kv(x)
                self_k = _write_layer_rows(self_k, index, new_k, positions, axis=2)
                self_v = _write_layer_rows(self_v, index, new_v, positions, axis=1)
                layer_kv = (self_k[index], self_v[index])
                return (layer.attend_cached(x, layer_kv, (cross_k, cross_v), mask), self_k, self_v), None

            xs = (cache.cross_k, cache.cross_v, jnp.arange(num_layers))
            (x, self_k, self_v), _ = _run_layers(
                layers, num_layers, scanned, (x, cache.self_k, cache.self_v), xs, scan=True, remat="none"
            )
        else:

            def looped(layer: DecoderLayer, x: jax.Array, kv: Any) -> tuple[jax.Array, Any]:
                self_k, self_v, cross_k, cross_v = kv
                new_k, new_v = layer.new_self_kv(x)
                self_k = _write_rows(self_k, new_k, positions, axis=2)
                self_v = _write_rows(self_v, new_v, positions, axis=1)
                return layer.attend_cached(x, (self_k, self_v), (cross_k, cross_v), mask), (self_k, self_v)

            xs = list(zip(cache.self_k, cache.self_v, cache.cross_k, cache.cross_v, strict=True))
            x, self_kv = _run_layers(layers, num_layers, looped, x, xs, scan=False, remat="none")
            self_k, self_v = (tuple(layer_kv) for layer_kv in zip(*self_kv, strict=True))
        return self.decoder.logits(x), cache.replace(self_k=self_k, self_v=self_v)


def create_model(config: WhisperConfig, *, mesh: jax.sharding.Mesh | None = None, seed: int = 0) -> Whisper:
    """A freshly initialised model; with a mesh, every parameter is created directly in its shards.

    The initialiser runs under `jax.jit` with the sharded output layout, so no host or device ever holds
    the full model (what makes large-v2 initialisation fit on a pod slice). "auto" runtime settings are
    resolved for the mesh's devices.
    """
    if mesh is None:
        return Whisper(config, rngs=nnx.Rngs(seed))
    config = resolve_runtime(config, list(mesh.devices.flat))
    abstract = nnx.eval_shape(lambda: Whisper(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)

    def init() -> Any:
        return nnx.state(Whisper(config, rngs=nnx.Rngs(seed)))

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
