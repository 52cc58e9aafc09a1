"""Analytic model FLOPs and MFU (model FLOPs utilisation), MaxText's convention.

Legend: B batch, M mel bins, S mel frames, S' = S/2 encoder positions, T target tokens, D width,
F MLP width (per stack), L layers (per stack), V vocabulary.

Why analytic: `compiled.cost_analysis()` counts a loop body once (scanned layers, remat, tiled attention,
gradient accumulation all run in loops), counts recomputation as work, and reports one device's share of a
partitioned program. The model's FLOPs are a property of the architecture and the batch, not of how a
step is compiled, so MFU computed from them is comparable across backends, meshes and remat policies.

Convention (MaxText's): 2 FLOPs per multiply-add of every matmul (the two convolutions as matmuls too),
attention's QK^T and PV in full except causal self-attention at half, embedding lookups, norms,
activations and the optimizer uncounted; a training step is 3x the forward (forward + two backward matmuls
per forward matmul).
"""

from __future__ import annotations

import re

from audiocap_jax.model.config import WhisperConfig

# Dense bfloat16 peak per device (chip), TFLOP/s, from the vendors' datasheets (NVIDIA's sparse figures
# halved). Keys are `jax.Device.device_kind` strings (TPUs) or the chip's name inside one (NVIDIA kinds
# carry memory sizes: "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS: dict[str, float] = {
    "A100": 312.0,
    "H100": 989.0,  # SXM; device_kind "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756.0,  # the PCIe card runs at lower clocks and power
    "H200": 989.0,  # the H100's chip with more memory
    "B200": 2250.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,  # v6e (Trillium)
}
# Other spellings of a TPU's device_kind (v5p reports "TPU v5").
_TPU_KIND_ALIASES = {"TPU v5": "TPU v5p", "TPU v5e": "TPU v5 lite", "TPU v6e": "TPU v6 lite"}


def model_flops_per_step(
    config: WhisperConfig, *, batch_size: int, target_length: int, training: bool = True
) -> float:
    """FLOPs of one optimizer step (`training`) or one forward pass over the global batch.

    The encoder runs at the model's `max_source_positions` (S' = 1500 for 30 s windows), the decoder at
    `target_length` (the batch's decoder input length). The vocabulary is the real one (`vocab_size`):
    padding it for sharding is an implementation detail that does no useful work.
    """
    if batch_size < 1 or target_length < 1:
        raise ValueError(f"batch_size {batch_size} and target_length {target_length} must both be >= 1.")
    mels, d, vocab = config.num_mel_bins, config.d_model, config.vocab_size
    frames, positions, tokens = config.num_frames, config.max_source_positions, target_length

    encoder_layer = (
        2 * positions * 4 * d * d  # q, k, v and out projections: 4 x [S', D] x [D, D]
        + 2 * positions * positions * d  # scores q k^T, all heads: [S', Dh] x [Dh, S'] per head
        + 2 * positions * positions * d  # probabilities x values: [S', S'] x [S', Dh] per head
        + 2 * positions * 2 * d * config.encoder_ffn_dim  # fc1 and fc2: [S', D] x [D, F], [S', F] x [F, D]
    )
    decoder_layer = (
        2 * tokens * 4 * d * d  # self-attention q, k, v and out projections: 4 x [T, D] x [D, D]
        + 2 * tokens * tokens * d / 2  # causal self-attention scores q k^T, half the [T, T] products
        + 2 * tokens * tokens * d / 2  # causal self-attention probabilities x values, half as well
        + 2 * tokens * 2 * d * d  # cross-attention q and out projections: 2 x [T, D] x [D, D]
        + 2 * positions * 2 * d * d  # cross-attention k and v of the encoder states: 2 x [S', D] x [D, D]
        + 2 * tokens * positions * d  # cross-attention scores: [T, Dh] x [Dh, S'] per head
        + 2 * tokens * positions * d  # cross-attention probabilities x values: [T, S'] x [S', Dh] per head
        + 2 * tokens * 2 * d * config.decoder_ffn_dim  # fc1 and fc2
    )
    forward_per_example = (
        2 * frames * 3 * mels * d  # conv1 (width 3, stride 1) as a matmul: [S, 3M] x [3M, D]
        + 2 * positions * 3 * d * d  # conv2 (width 3, stride 2): [S', 3D] x [3D, D]
        + config.encoder_layers * encoder_layer
        + config.decoder_layers * decoder_layer
        + 2 * tokens * d * vocab  # logits through the tied embedding: [T, D] x [D, V]
    )
    return float(forward_per_example * batch_size * (3 if training else 1))


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None when the device is not in `PEAK_BF16_TFLOPS` (CPUs,
    unlisted accelerators: MFU is then not reported). `override_tflops` > 0 wins over the table."""
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = _TPU_KIND_ALIASES.get(device_kind, device_kind)
    if kind in PEAK_BF16_TFLOPS:
        return PEAK_BF16_TFLOPS[kind] * 1e12
    # NVIDIA: the chip's name as a word of the kind; the longest match wins ("H100 PCIe" over "H100").
    chips = [
        chip
        for chip in PEAK_BF16_TFLOPS
        if not chip.startswith("TPU") and re.search(rf"\b{re.escape(chip)}\b", kind, re.IGNORECASE)
    ]
    return PEAK_BF16_TFLOPS[max(chips, key=len)] * 1e12 if chips else None


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak_per_device: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' total peak (a fraction, 0..1)."""
    if step_seconds <= 0 or num_devices < 1 or peak_per_device <= 0:
        raise ValueError(
            f"mfu needs step_seconds > 0, num_devices >= 1 and peak_per_device > 0; got {step_seconds}, "
            f"{num_devices}, {peak_per_device}."
        )
    return flops_per_step / step_seconds / (num_devices * peak_per_device)
