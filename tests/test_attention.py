"""Every attention implementation computes the same function; the GPU kernels are what the model lowers to."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiocap_jax.model import backend
from audiocap_jax.model.attention import attention
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.whisper import Whisper
from audiocap_jax.rundir.train_step import token_loss


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((2, n, 3, 16)).astype(np.float32) for n in (300, 300, 300))


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_implementation_agrees_with_xla(qkv, causal):
    ref = np.asarray(attention(*qkv, impl="xla", causal=causal))
    assert np.abs(np.asarray(attention(*qkv, impl="cpu", causal=causal)) - ref).max() < 1e-5
    if causal:  # the first query sees only the first key: the output is exactly v[0]
        np.testing.assert_allclose(ref[:, 0], qkv[2][:, 0], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiled_gradients_match_einsum_attention(qkv, dtype):
    """The CPU tiles' hand-written backward pass equals autodiff through einsum-softmax."""
    q, k, v = (x.astype(dtype) for x in qkv)
    weights = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)

    def loss(impl):
        return lambda q, k, v: (attention(q, k, v, impl=impl).astype(np.float32) * weights).sum()

    grads_tiled = jax.jit(jax.grad(loss("cpu"), argnums=(0, 1, 2)))(q, k, v)
    grads_xla = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    tolerance = 1e-5 if dtype == "float32" else 0.1
    for name, tiled, ref in zip("qkv", grads_tiled, grads_xla, strict=True):
        assert tiled.dtype == ref.dtype == np.dtype(dtype), name
        scale = np.abs(np.asarray(ref, np.float32)).max()
        assert 0.1 < scale < 10, name  # a real gradient, not zeros
        error = np.abs(np.asarray(tiled, np.float32) - np.asarray(ref, np.float32)).max()
        assert error < tolerance * scale, (name, error)


@pytest.mark.parametrize(
    "queries, keys, causal",
    [(1500, 1500, False), (80, 1500, False), (80, 80, True)],
    ids=["encoder_self", "cross", "decoder_causal"],
)
def test_splash_equals_xla_forward_and_gradients(queries, keys, causal):
    """TPU splash attention (Pallas interpret mode here) on Whisper's three shapes, lengths padded to
    multiples of 128 (1500 -> 1536, 80 -> 128) with the padded keys masked: float32 forward and gradients
    equal the XLA path within 2e-5."""
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, queries, 2, 64)).astype(np.float32)
    k, v = (rng.standard_normal((1, keys, 2, 64)).astype(np.float32) for _ in range(2))
    weights = rng.standard_normal(q.shape).astype(np.float32)

    def loss(impl):
        return lambda q, k, v: (attention(q, k, v, impl=impl, causal=causal) * weights).sum()

    _, grads_splash = jax.value_and_grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    _, grads_xla = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(
        attention(q, k, v, impl="splash", causal=causal),
        attention(q, k, v, impl="xla", causal=causal),
        atol=2e-5,
    )
    for name, ours, ref in zip("qkv", grads_splash, grads_xla, strict=True):
        assert np.abs(np.asarray(ref)).max() > 1e-3, name  # a real gradient, not zeros
        np.testing.assert_allclose(ours, ref, atol=2e-5, err_msg=name)


def test_backend_policy_resolves_auto():
    cpu = jax.devices("cpu")
    config = WhisperConfig(dtype="auto", attention_impl="auto")
    resolved = backend.resolve_runtime(config, cpu)
    assert (resolved.dtype, resolved.attention_impl) == ("float32", "cpu")
    assert backend.resolve_runtime(resolved, cpu) == resolved  # idempotent
    explicit = WhisperConfig(dtype="bfloat16", attention_impl="splash")
    assert backend.resolve_runtime(explicit, cpu) == explicit  # concrete choices are kept
    # cuDNN has no float32 kernel: an explicit "cudnn" with float32 falls back to XLA.
    assert backend.resolve_runtime(WhisperConfig(attention_impl="cudnn"), cpu).attention_impl == "xla"
    assert backend.platform_of(cpu) == "cpu"


@pytest.fixture
def cudnn_without_gpu(monkeypatch):
    """Let jax lower cuDNN attention on a machine without a GPU: its version and compute-capability checks
    ask the (absent) CUDA runtime; claim cuDNN 9.10 on Hopper. Lowering only: nothing runs."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(cudnn, "is_cuda_compute_capability_equal", lambda capability: capability == "9.0")


def test_cudnn_lowering_has_fused_attention_for_all_three(cudnn_without_gpu):
    """Lowered for CUDA with attention_impl="cudnn" in bfloat16, the forward and the gradient hold cuDNN
    flash-attention custom calls for the encoder's self-attention, the decoder's causal self-attention and
    the cross-attention, and no [B, H, 1500, 1500] score tensor."""
    layers = 2
    config = WhisperConfig(
        d_model=128,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        dtype="bfloat16",
        attention_impl="cudnn",
    )
    model = nnx.eval_shape(lambda: Whisper(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    mel = jax.ShapeDtypeStruct((2, 80, 3000), jnp.float32)
    ids = jax.ShapeDtypeStruct((2, 64), jnp.int32)

    def forward(state, mel, ids):
        return nnx.merge(graphdef, state)(mel, ids)

    def loss(state, mel, ids):
        logits = forward(state, mel, ids)
        return token_loss(logits, ids, jnp.ones(ids.shape))["loss_sum"]

    for fn, kinds in ((forward, ("fmha",)), (jax.grad(loss), ("fmha", "Backward"))):
        hlo = jax.jit(fn).trace(state, mel, ids).lower(lowering_platforms=("cuda",)).as_text()
        calls = [line for line in hlo.splitlines() if "__cudnn$fmha" in line]
        forward_calls = [c for c in calls if "Backward" not in c]
        assert len(forward_calls) == 3 * layers, len(forward_calls)  # encoder self + decoder self + cross
        assert sum('"mask_type": "CAUSAL"' in c or "CAUSAL" in c for c in forward_calls) == layers
        assert all(any(kind in c for c in calls) for kind in kinds)
        assert "1500x1500" not in hlo
