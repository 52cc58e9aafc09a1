"""Scaled dot-product attention behind one function, with per-platform implementations.

Legend: B batch, T query length, S key length, H heads, Dh head width.

- `dot_product`: `jax.nn.dot_product_attention`, which picks fused (cuDNN flash) kernels on GPU/TPU.
- `xla`: einsum -> softmax -> einsum; the fastest plain form for short keys (the decoder).
- `tiled`: one (batch, head) tile at a time (`lax.map`), normalising after the PV matmul. XLA on CPU does not
  fuse matmul->softmax->matmul, so the encoder's [B, H, 1500, 1500] scores (432 MB for tiny at B=8) fall out
  of cache; a tile (9 MB) stays in it. This halved the tiny encoder's time on CPU.
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
    b, t, h, d = q.shape
    scale = d**-0.5

    def one_tile(qkv: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        qt, kt, vt = qkv  # [T, Dh], [S, Dh], [S, Dh]
        scores = jnp.einsum("td,sd->ts", qt, kt, preferred_element_type=jnp.float32) * scale
        weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
        out = jnp.einsum("ts,sd->td", weights.astype(vt.dtype), vt, preferred_element_type=jnp.float32)
        return (out / weights.sum(axis=-1, keepdims=True)).astype(qt.dtype)

    def tiles(x: jax.Array) -> jax.Array:  # [B, L, H, Dh] --> [B*H, L, Dh]
        return x.transpose(0, 2, 1, 3).reshape(b * h, x.shape[1], d)

    # Rematerialised: the backward pass recomputes a tile's scores instead of storing all B*H of them.
    out = jax.lax.map(jax.checkpoint(one_tile), (tiles(q), tiles(k), tiles(v)))  # --> [B*H, T, Dh]
    return out.reshape(b, h, t, d).transpose(0, 2, 1, 3)
