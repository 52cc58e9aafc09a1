"""Analytic FLOPs against hand arithmetic and against XLA's own count of a loop-free step; the peak table."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.whisper import Whisper
from audiocap_jax.rundir import mfu

# whisper-small's width, heads and vocabulary at two layers per stack (the per-layer mix of matmuls and
# elementwise work is the model's; fewer layers only shorten the compile). XLA attention, no scan, no remat:
# a program without loops, which XLA's cost analysis counts completely.
SMALL_2_LAYERS = WhisperConfig.from_variant(
    "small", encoder_layers=2, decoder_layers=2, attention_impl="xla", scan_layers=False, remat="none"
)
BATCH, TOKENS = 2, 32


def test_model_flops_by_hand():
    config = WhisperConfig(
        vocab_size=5,
        num_mel_bins=2,
        d_model=4,
        encoder_attention_heads=1,
        encoder_ffn_dim=8,
        decoder_attention_heads=1,
        decoder_ffn_dim=8,
        encoder_layers=1,
        decoder_layers=1,
        max_source_positions=3,
    )
    # Per example, M=2, S=6, S'=3, D=4, F=8, T=2, V=5: conv1 2*6*3*2*4 = 288, conv2 2*3*3*4*4 = 288;
    # encoder layer: projections 2*3*4*16 = 384, QK^T and PV 2 * 2*3*3*4 = 144, MLP 2*3*2*4*8 = 384;
    # decoder layer: self projections 2*2*4*16 = 256, causal QK^T and PV 2 * 2*2*2*4 / 2 = 32, cross q/out
    # 2*2*2*16 = 128, cross k/v 2*3*2*16 = 192, cross QK^T and PV 2 * 2*2*3*4 = 96, MLP 2*2*2*4*8 = 256;
    # logits 2*2*4*5 = 80. Forward 2528.
    assert mfu.model_flops_per_step(config, batch_size=1, target_length=2, training=False) == 2528.0
    assert mfu.model_flops_per_step(config, batch_size=2, target_length=2) == 3 * 2 * 2528.0


def test_model_flops_of_released_sizes():
    """Regression literals: whisper-small and large-v2, one example, 80 target tokens, training step."""
    small, large = WhisperConfig.from_variant("small"), WhisperConfig.from_variant("large-v2")
    assert mfu.model_flops_per_step(small, batch_size=1, target_length=80) == 1_240_196_751_360.0
    assert mfu.model_flops_per_step(large, batch_size=1, target_length=80) == 8_206_457_856_000.0


def _xla_flops(fn, config: WhisperConfig) -> float:
    """XLA's FLOP count of `fn(params, rest, mel, ids)` compiled (never run) for one device."""
    model = nnx.eval_shape(lambda: Whisper(config, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mel = jax.ShapeDtypeStruct((BATCH, config.num_mel_bins, config.num_frames), jnp.float32)
    ids = jax.ShapeDtypeStruct((BATCH, TOKENS), jnp.int32)
    compiled = jax.jit(fn(graphdef)).lower(params, rest, mel, ids).compile()
    return float(compiled.cost_analysis()["flops"])


def _forward(graphdef):
    def forward(params, rest, mel, ids):
        return nnx.merge(graphdef, params, rest)(mel, ids)

    return forward


def _gradient(graphdef):
    def loss(params, rest, mel, ids):  # a token cross-entropy (which targets does not change the FLOPs)
        logits = _forward(graphdef)(params, rest, mel, ids)
        target = jnp.take_along_axis(logits, ids[..., None], axis=-1)
        return (jax.nn.logsumexp(logits, axis=-1) - target[..., 0]).sum()

    return jax.grad(loss)


# XLA counts every HLO op; the analytic count is matmuls only, so XLA's count is the larger. The gap is
# elementwise work: exact GELU is 64 FLOPs per element in XLA's count (erf is a rational polynomial), softmax
# 5 per score, plus layer norms, biases and residual adds. Summing only the dot and convolution ops of the
# compiled forward gives the analytic count to 0.01% (1.474e11; XLA computes the causal self-attention in
# full, the only matmul difference). Measured: forward 1.9% over (1.502e11), training step 0.5% over (each
# matmul gets two backward matmuls, while conv1 has no input gradient: the mel is not trained). At
# whisper-tiny's width the GELU share doubles: forward 3.1%, training 0.8%.
@pytest.mark.parametrize(("training", "make_fn"), [(True, _gradient), (False, _forward)])
def test_model_flops_match_xla_loop_free_step(training, make_fn):
    analytic = mfu.model_flops_per_step(
        SMALL_2_LAYERS, batch_size=BATCH, target_length=TOKENS, training=training
    )
    assert 1.0 <= _xla_flops(make_fn, SMALL_2_LAYERS) / analytic < 1.03


@pytest.mark.parametrize(
    ("device_kind", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA B200", 2250.0),
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5", 459.0),
        ("TPU v5p", 459.0),
        ("TPU v6 lite", 918.0),
    ],
)
def test_peak_flops_per_device(device_kind, tflops):
    assert mfu.peak_flops_per_device(device_kind) == tflops * 1e12


def test_peak_flops_unknown_device_and_override():
    assert mfu.peak_flops_per_device("cpu") is None
    assert mfu.peak_flops_per_device("TPU v4 lite") is None  # v4i: not a v4, not in the table
    assert mfu.peak_flops_per_device("cpu", override_tflops=1.5) == 1.5e12
    assert mfu.peak_flops_per_device("NVIDIA H200", override_tflops=700.0) == 700e12


def test_mfu():
    assert mfu.mfu(1e15, 2.0, 4, 1e14) == 1.25
    assert mfu.mfu(9.89e14, 1.0, 1, 989e12) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step_seconds > 0"):
        mfu.mfu(1e15, 0.0, 1, 1e14)
