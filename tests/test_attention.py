"""Every attention implementation computes the same function."""

import jax
import numpy as np
import pytest

from audiocap_jax.model.attention import attention


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((2, n, 3, 16)).astype(np.float32) for n in (300, 300, 300))


def test_unmasked_implementations_agree(qkv):
    ref = np.asarray(attention(*qkv, impl="xla"))
    for impl in ("tiled", "dot_product", "auto"):
        assert np.abs(np.asarray(attention(*qkv, impl=impl)) - ref).max() < 1e-5, impl


def test_masked_implementations_agree(qkv):
    q, k, v = qkv
    mask = np.tril(np.ones((300, 300), bool))[None, None]
    ref = np.asarray(attention(q, k, v, mask, impl="xla"))
    assert np.abs(np.asarray(attention(q, k, v, mask, impl="dot_product")) - ref).max() < 1e-5
    # First query sees only the first key: the output is exactly v[0].
    np.testing.assert_allclose(ref[:, 0], v[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="unmasked"):
        attention(q, k, v, mask, impl="tiled")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiled_gradients_match_einsum_attention(qkv, dtype):
    """The tiled implementation's hand-written backward pass equals autodiff through einsum-softmax."""
    q, k, v = (x.astype(dtype) for x in qkv)
    weights = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)

    def loss(impl):
        return lambda q, k, v: (attention(q, k, v, impl=impl).astype(np.float32) * weights).sum()

    grads_tiled = jax.jit(jax.grad(loss("tiled"), argnums=(0, 1, 2)))(q, k, v)
    grads_xla = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    tolerance = 1e-5 if dtype == "float32" else 0.1
    for name, tiled, ref in zip("qkv", grads_tiled, grads_xla, strict=True):
        assert tiled.dtype == ref.dtype == np.dtype(dtype), name
        scale = np.abs(np.asarray(ref, np.float32)).max()
        assert 0.1 < scale < 10, name  # a real gradient, not zeros
        error = np.abs(np.asarray(tiled, np.float32) - np.asarray(ref, np.float32)).max()
        assert error < tolerance * scale, (name, error)
