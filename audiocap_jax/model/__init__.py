"""Whisper in Flax NNX: config, model, sharding rules, HF checkpoint import/export."""

from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import CheckpointError, export, load_hf_checkpoint
from audiocap_jax.model.sharding import LOGICAL_RULES, make_mesh
from audiocap_jax.model.whisper import DecodeCache, Whisper, create_model

__all__ = [
    "LOGICAL_RULES",
    "CheckpointError",
    "DecodeCache",
    "Whisper",
    "WhisperConfig",
    "create_model",
    "export",
    "load_hf_checkpoint",
    "make_mesh",
]
