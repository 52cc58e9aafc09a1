"""Scaled dot-product attention behind one function, one implementation per backend.

Legend: B batch, T query length, S key length, H heads, Dh head width.

Which implementation runs is the backend policy's choice (model/backend.py), made once per model:
- `cudnn` (NVIDIA GPUs, bfloat16/float16): `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's
  fused flash attention, forward and backward; causality as `is_causal`, never as a mask tensor (a mask
  becomes a bias operand and a slower kernel). Nothing in Whisper's teacher-forced passes is padded (the
  encoder always sees 1500 frames; right-padded targets only feed masked-out loss positions), so no lengths.
- `splash` (TPU): Pallas splash attention (`make_splash_mha`), vmapped over the batch. Its blocks are
  multiples of 128 that divide the sequence, so queries and keys are padded (1500 frames --> 1536) and the
  padded keys are masked out with segment ids. The Mosaic kernel when the program is compiled for TPUs (the
  mesh's devices, compile-only ones included); Pallas interpret mode elsewhere (tests).
- `cpu`: `tiled` for long unmasked attention (the encoder), einsum-softmax-einsum otherwise.
  XLA on CPU does not fuse matmul->softmax->matmul, so the encoder's [B, H, 1500, 1500] scores (432 MB for
  tiny at B=8) fall out of cache; a (batch, head) tile (9 MB) does not. With its flash-style backward (no
  stored scores, one matmul fewer than rematerialising, no transposed [T, S] operands) it halved the tiny
  encoder's forward time on CPU and cut whisper-tiny's train step by 10%.
- `xla`: einsum -> float32 softmax -> einsum; what other backends, and float32 on GPU, run.
All implementations agree to float32 rounding (tests/test_attention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_masks

from audiocap_jax.model.backend import tracing_platform
from audiocap_jax.model.sharding import logical_to_spec

_TILED_MIN_KEYS = 256  # below this the scores fit in cache anyway
_SPLASH_BLOCK = 128  # splash attention's block sizes are multiples of this


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str, causal: bool = False) -> jax.Array:
    """softmax(q k^T / sqrt(Dh)) v, causal (query t sees keys <= t, T == S) or not.

    q: [B, T, H, Dh]; k, v: [B, S, H, Dh]. Returns [B, T, H, Dh] in q's dtype; scores and softmax are computed
    in float32 (cuDNN and splash accumulate in float32 internally).
    """
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, causal)
    if impl == "splash":
        return _splash_attention(q, k, v, causal)
    if impl == "cpu" and not causal and k.shape[1] >= _TILED_MIN_KEYS:
        return _tiled_attention(q, k, v)
    if impl in ("cpu", "xla"):
        mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None] if causal else None
        return _einsum_attention(q, k, v, mask)
    raise ValueError(
        f"Unknown attention implementation {impl!r}; resolve 'auto' with model/backend.py first."
    )


def _pad_length(x: jax.Array, length: int) -> jax.Array:
    """[B, L, H, Dh] --> [B, length, H, Dh], zeros after the real positions."""
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """cuDNN flash attention, with odd lengths padded to even ones: jax's cuDNN training path refuses odd
    sequence lengths (`Unsupported sequence length Q 79, KV 79` for the decoder's 79 teacher-forced tokens).
    Padded queries are dropped; padded keys come after every real query under the causal mask, and are cut
    off by the key lengths otherwise."""
    b, t, s = q.shape[0], q.shape[1], k.shape[1]
    t_even = t + t % 2
    s_even = t_even if causal else s + s % 2
    key_lengths = jnp.full((b,), s, jnp.int32) if s_even != s and not causal else None
    out = jax.nn.dot_product_attention(
        _pad_length(q, t_even),
        _pad_length(k, s_even),
        _pad_length(v, s_even),
        is_causal=causal,
        key_value_seq_lengths=key_lengths,
        implementation="cudnn",
    )
    return out[:, :t].astype(q.dtype)


def heads_major(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, S, H, Dh] keys and values --> keys [B, H, Dh, S], values [B, H, S, Dh] (`heads_major_attention`)."""
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)


def heads_major_attention(
    q: jax.Array, k_heads_major: jax.Array, v_heads_major: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + mask) v for a few queries over keys kept for many steps (decoding).

    q: [B, T, H, Dh]; keys [B, H, Dh, S] and values [B, H, S, Dh] from `heads_major`; mask: bool,
    broadcastable to [B, H, T, S] (True = attend).
    With that layout both products are plain batched matmuls. From [B, S, H, Dh], XLA transposed the
    encoder's keys and values again at every decoding step (147 MB per token for whisper-tiny, 8 clips).
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthd,bhds->bhts", q, k_heads_major, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_heads_major.dtype)
    out = jnp.einsum("bhts,bhsd->bhtd", probs, v_heads_major)  # the plain product; then move the small output
    return out.transpose(0, 2, 1, 3)


def _einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def _tiled_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return _tiled_core(q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), k, v)


# Tiles are [B*H, L, Dh] ("rows") or [B*H, Dh, L] ("cols"). Every matmul inside a tile is then a plain
# [M, K] x [K, N] product, the form XLA's CPU dot library runs fastest (a transposed operand cost up to 40%);
# only the small [L, Dh] operands are ever transposed, never the [T, S] scores.
def _rows(x: jax.Array) -> jax.Array:  # [B, L, H, Dh] --> [B*H, L, Dh]
    b, length, h, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * h, length, d)


def _cols(x: jax.Array) -> jax.Array:  # [B, L, H, Dh] --> [B*H, Dh, L]
    b, length, h, d = x.shape
    return x.transpose(0, 2, 3, 1).reshape(b * h, d, length)


def _from_rows(x: jax.Array, b: int) -> jax.Array:  # [B*H, L, Dh] --> [B, L, H, Dh]
    return x.reshape(b, -1, *x.shape[1:]).transpose(0, 2, 1, 3)


def _from_cols(x: jax.Array, b: int) -> jax.Array:  # [B*H, Dh, L] --> [B, L, H, Dh]
    return x.reshape(b, -1, *x.shape[1:]).transpose(0, 3, 1, 2)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _tiled_core(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v for pre-scaled q, one (batch, head) tile at a time. [B, T|S, H, Dh] --> [B, T, H, Dh]"""
    return _tiled_forward(q, k, v)[0]


def _tiled_forward(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Flash-attention style: the backward pass keeps only the output and each row's log-sum-exp, and
    recomputes a tile's probabilities from them (no [T, S] tensor is stored)."""

    def tile(qkv: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        qt, kt_cols, vt = qkv  # [T, Dh], [Dh, S], [S, Dh]
        scores = _matmul(qt, kt_cols)  # --> [T, S]
        row_max = scores.max(axis=-1, keepdims=True)
        weights = jnp.exp(scores - row_max)
        total = weights.sum(axis=-1, keepdims=True)
        out = _matmul(weights.astype(vt.dtype), vt) / total  # normalised after the PV matmul: [T, Dh]
        return out.astype(qt.dtype), (row_max + jnp.log(total))[:, 0]

    out_rows, lse = jax.lax.map(tile, (_rows(q), _cols(k), _rows(v)))
    out = _from_rows(out_rows, q.shape[0])
    return out, (q, k, v, out, lse)


def _tiled_backward(residuals: tuple[jax.Array, ...], d_out: jax.Array) -> tuple[jax.Array, ...]:
    """Works on transposed [S, T] tiles so all five matmuls are plain products (see _rows/_cols)."""
    q, k, v, out, lse = residuals
    b = q.shape[0]
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # --> [B, T, H]
    delta = delta.transpose(0, 2, 1).reshape(lse.shape)  # --> [B*H, T]

    def tile(inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
        q_rows, q_cols, k_rows, k_cols, v_rows, do_rows, do_cols, lse_t, delta_t = inputs
        probs_t = jnp.exp(_matmul(k_rows, q_cols) - lse_t[None, :])  # P^T: [S, T]
        dv = _matmul(probs_t.astype(do_rows.dtype), do_rows)  # --> [S, Dh]
        dprobs_t = _matmul(v_rows, do_cols)  # --> [S, T]
        dscores_t = (probs_t * (dprobs_t - delta_t[None, :])).astype(q_rows.dtype)
        dk = _matmul(dscores_t, q_rows)  # --> [S, Dh]
        dq_cols = _matmul(k_cols, dscores_t)  # --> [Dh, T]
        return dq_cols.astype(q_rows.dtype), dk.astype(k_rows.dtype), dv.astype(v_rows.dtype)

    inputs = (_rows(q), _cols(q), _rows(k), _cols(k), _rows(v), _rows(d_out), _cols(d_out), lse, delta)
    dq_cols, dk, dv = jax.lax.map(tile, inputs)
    return _from_cols(dq_cols, b), _from_rows(dk, b), _from_rows(dv, b)


_tiled_core.defvjp(_tiled_forward, _tiled_backward)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _splash_blocks(q_len: int, kv_len: int) -> splash.BlockSizes:
    """The largest of 512/256/128 dividing each (padded) length: fewer, bigger blocks for the kernel's grid."""

    def block(n: int) -> int:
        return next(b for b in (512, 256, _SPLASH_BLOCK) if n % b == 0)

    bq, bkv = block(q_len), block(kv_len)
    return splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )


def _splash_kernel(
    heads: int, q_len: int, kv_len: int, causal: bool, interpret: bool
) -> splash.SplashAttentionKernel:
    """A kernel for the program being traced, built anew in every trace that needs one.

    The kernel holds its mask tables as arrays of the trace that built it: cached across traces, it broke
    the second jitted program that used it (train step, then validation). The host-side mask processing it
    starts from is cached inside splash itself, so a rebuild costs well under a millisecond.
    """
    shape = (q_len, kv_len)
    head_mask = splash_masks.CausalMask(shape) if causal else splash_masks.FullMask(shape)
    return splash.make_splash_mha(
        splash_masks.MultiHeadMask([head_mask] * heads),
        block_sizes=_splash_blocks(q_len, kv_len),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """Splash attention on [B, T, H, Dh] inputs, lengths padded to multiples of 128 and padded keys masked.

    Under a mesh the kernel runs inside `shard_map`, one call per device on its batch rows and heads (the
    `batch` and `heads` rules): XLA cannot partition a Mosaic kernel itself.
    """
    _, t, _, dh = q.shape
    s = k.shape[1]
    t_pad, s_pad = _round_up(t, _SPLASH_BLOCK), _round_up(s, _SPLASH_BLOCK)
    if causal:  # queries and keys are the same positions: pad both alike; causality hides the padded keys
        t_pad = s_pad = max(t_pad, s_pad)
    interpret = tracing_platform() != "tpu"  # Pallas interpret mode off TPU (tests)

    def heads_first(x: jax.Array, length: int) -> jax.Array:  # [B, L, H, Dh] --> [B, H, L_pad, Dh]
        return _pad_length(x, length).transpose(0, 2, 1, 3)

    def local(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:  # one device's [B', H', L_pad, Dh]
        kernel = _splash_kernel(q.shape[1], t_pad, s_pad, causal, interpret)
        segments = None
        if s_pad != s and not causal:  # every query sees segment 1: the real keys
            segments = splash.SegmentIds(
                q=jnp.ones((t_pad,), jnp.int32), kv=(jnp.arange(s_pad) < s).astype(jnp.int32)
            )
        return jax.vmap(lambda q1, k1, v1: kernel(q1, k1, v1, segment_ids=segments))(q, k, v)

    q = heads_first(q * jnp.asarray(dh**-0.5, q.dtype), t_pad)
    k, v = heads_first(k, s_pad), heads_first(v, s_pad)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        spec = logical_to_spec(("batch", "heads", None, None), q.shape, mesh)
        local = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    out = local(q, k, v)  # --> [B, H, T_pad, Dh]
    return out[:, :, :t].transpose(0, 2, 1, 3).astype(q.dtype)
