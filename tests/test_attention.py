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


def test_tiled_under_jit_and_grad(qkv):
    q, k, v = qkv
    grad_tiled = jax.grad(lambda q: attention(q, k, v, impl="tiled").sum())(q)
    grad_xla = jax.grad(lambda q: attention(q, k, v, impl="xla").sum())(q)
    assert np.abs(np.asarray(grad_tiled) - np.asarray(grad_xla)).max() < 1e-4
