"""Tiny randomly initialised Whisper checkpoints in the real HuggingFace format (torch is the oracle).

Only tests and benchmarks import this module: it needs torch (the `test` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Real Whisper special-token ids for the multilingual (99-language) vocabulary; tiny test checkpoints
# carry them in config.json like released checkpoints do.
_V2_TOKEN_IDS = dict(decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257, bos_token_id=50257)
_V3_TOKEN_IDS = _V2_TOKEN_IDS

TINY_ARCH: dict[str, Any] = dict(
    vocab_size=51865,
    num_mel_bins=80,
    d_model=96,
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=3,
    decoder_attention_heads=3,
    encoder_ffn_dim=192,
    decoder_ffn_dim=192,
    max_source_positions=100,  # 200 mel frames: fast tests; real checkpoints use 1500 (30 s)
    max_target_positions=64,
)


def tiny_hf_whisper(seed: int = 0, **overrides: Any) -> Any:
    """A random `transformers.WhisperForConditionalGeneration` (torch, CPU, eval mode)."""
    import torch
    import transformers

    arch = {**TINY_ARCH, **overrides}
    token_ids = _V3_TOKEN_IDS if arch["vocab_size"] == 51866 else _V2_TOKEN_IDS
    config = transformers.WhisperConfig(**arch, **token_ids)
    torch.manual_seed(seed)
    return transformers.WhisperForConditionalGeneration(config).eval()


def save_tiny_hf_whisper(path: str | Path, seed: int = 0, **overrides: Any) -> Any:
    """Save a tiny random HF Whisper with `save_pretrained` (safetensors) into `path`; returns the torch model."""
    model = tiny_hf_whisper(seed, **overrides)
    model.save_pretrained(str(path))
    return model
