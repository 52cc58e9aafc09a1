"""Scaled dot-product attention behind one function, with per-platform implementations.

Legend: B batch, T query length, S key length, H heads, Dh head width.

- `dot_product`: `jax.nn.dot_product_attention`, which picks fused (cuDNN flash) kernels on GPU/TPU.
- `xla`: einsum -> softmax -> einsum; the fastest plain form for short keys (the decoder).
- `tiled`: one (batch, head) tile at a time (`lax.map`), normalising after the PV matmul, with a
  flash-attention style backward pass (custom VJP). XLA on CPU does not fuse matmul->softmax->matmul, so the
  encoder's [B, H, 1500, 1500] scores (432 MB for tiny at B=8) fall out of cache; a tile (9 MB) does not.
  This halved the tiny encoder's forward time on CPU; the custom backward (no stored scores, one matmul fewer
  than rematerialising, no transposed [T, S] operands) cut whisper-tiny's train step by 10%.
- `auto`: `dot_product` on GPU/TPU; on CPU `tiled` for unmasked long attention, else `xla`.
All implementations agree to float32 rounding (tests/test_attention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TILED_MIN_KEYS = 256  # below this the scores fit in cache anyway


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *, impl: str = "auto"
) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + mask) v.

    q: [B, T, H, Dh]; k, v: [B, S, H, Dh]; mask: bool, broadcastable to [B, H, T, S] (True = attend).
    Returns [B, T, H, Dh] in q's dtype; scores and softmax are computed in float32.
    """
    if impl == "auto":
        impl = _auto_impl(mask, k.shape[1])
    if impl == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)
    if impl == "tiled":
        if mask is not None:
            raise ValueError("attention_impl 'tiled' supports unmasked (encoder) attention only.")
        return _tiled_attention(q, k, v)
    if impl == "xla":
        return _einsum_attention(q, k, v, mask)
    raise ValueError(f"Unknown attention implementation {impl!r}.")


def heads_major(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, S, H, Dh] keys and values --> keys [B, H, Dh, S], values [B, H, S, Dh] (`heads_major_attention`)."""
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)


def heads_major_attention(
    q: jax.Array, k_heads_major: jax.Array, v_heads_major: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + mask) v for a few queries over keys kept for many steps (decoding).

    q: [B, T, H, Dh]; keys [B, H, Dh, S] and values [B, H, S, Dh] from `heads_major`; mask as `attention`.
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


def _auto_impl(mask: jax.Array | None, num_keys: int) -> str:
    if jax.default_backend() in ("gpu", "tpu"):
        return "dot_product"
    return "tiled" if mask is None and num_keys >= _TILED_MIN_KEYS else "xla"


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
