"""One configuration dataclass for every released Whisper size, plus conversion from/to HF configs.

Architecture fields use the HuggingFace `WhisperConfig` names so the mapping is 1:1; runtime fields
(dtypes, remat, scan, attention implementation) are ours and never written to a HF config.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (d_model, encoder/decoder layers, attention heads); ffn is always 4 * d_model.
_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (384, 4, 6),
    "base": (512, 6, 8),
    "small": (768, 12, 12),
    "medium": (1024, 24, 16),
    "large-v2": (1280, 32, 20),
    "large-v3": (1280, 32, 20),
}
_V3_VARIANTS = ("large-v3",)  # 128 mel bins, 100 languages -> vocab 51866

ARCH_FIELDS = (
    "vocab_size",
    "num_mel_bins",
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_ffn_dim",
    "max_source_positions",
    "max_target_positions",
    "scale_embedding",
)
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "cpu")  # "auto" is resolved by model/backend.py
DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("auto", *DTYPES)  # "auto": bfloat16 on GPU/TPU, float32 on CPU (model/backend.py)
REMAT_POLICIES = ("none", "full", "dots")
RUNTIME_CHOICES = {  # the runtime fields that take one of a few names, and those names
    "dtype": COMPUTE_DTYPES,
    "param_dtype": DTYPES,
    "remat": REMAT_POLICIES,
    "attention_impl": ATTENTION_IMPLS,
}
VOCAB_PAD_MULTIPLE = 128  # the embedding's vocab axis is padded to this so it divides the `tensor` mesh axis


def check_runtime(runtime: Mapping[str, Any]) -> None:
    """The rule `WhisperConfig` holds its runtime fields to, for a config that will build one later (preflight
    asks before anything loads): ValueError naming the first field of `RUNTIME_CHOICES` in `runtime` whose
    value is not one of its names. Other keys (`scan_layers`) pass."""
    for name, choices in RUNTIME_CHOICES.items():
        if name in runtime and runtime[name] not in choices:
            raise ValueError(f"{name}={runtime[name]!r} is not one of {', '.join(map(repr, choices))}.")


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Whisper architecture (HF field names) + how to run it (dtypes, remat, scan, attention)."""

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    scale_embedding: bool = False
    # --- runtime, not architecture ---
    dtype: str = (
        "float32"  # compute dtype of matmuls ("auto" resolved per backend); layer norms, softmax stay f32
    )
    param_dtype: str = "float32"  # storage dtype of parameters (master weights)
    remat: str = "none"  # per layer: "none", "full" (recompute everything), "dots" (keep matmul outputs)
    scan_layers: bool = False  # lax.scan over layers: compile time independent of depth
    attention_impl: str = "auto"  # see model/attention.py; "auto" resolved per backend (model/backend.py)

    def __post_init__(self) -> None:
        for heads, name in (
            (self.encoder_attention_heads, "encoder"),
            (self.decoder_attention_heads, "decoder"),
        ):
            if self.d_model % heads:
                raise ValueError(
                    f"d_model {self.d_model} is not divisible by {name}_attention_heads {heads}; "
                    "pick a head count that divides the width."
                )
        check_runtime({name: getattr(self, name) for name in RUNTIME_CHOICES})

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table inside the model: vocab_size rounded up to a multiple of 128, so the
        vocab axis shards over `tensor` (51865 and 51866 --> 51968). The extra rows are never looked up and
        their logits are masked out; checkpoints, exports and the tokenizer keep `vocab_size`."""
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def num_frames(self) -> int:
        """Mel frames the encoder expects (3000 = 30 s for every released checkpoint)."""
        return 2 * self.max_source_positions

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> WhisperConfig:
        """`tiny`, `base`, `small`, `medium`, `large-v2`, `large-v3` (plus runtime overrides)."""
        if name not in _SIZES:
            raise ValueError(f"Unknown Whisper variant {name!r}; choose one of {sorted(_SIZES)}.")
        d_model, layers, heads = _SIZES[name]
        v3 = name in _V3_VARIANTS
        arch = dict(
            vocab_size=51866 if v3 else 51865,
            num_mel_bins=128 if v3 else 80,
            d_model=d_model,
            encoder_layers=layers,
            encoder_attention_heads=heads,
            encoder_ffn_dim=4 * d_model,
            decoder_layers=layers,
            decoder_attention_heads=heads,
            decoder_ffn_dim=4 * d_model,
        )
        return cls(**{**arch, **overrides})

    @classmethod
    def from_hf_config(cls, hf_config: Mapping[str, Any] | Any, **runtime: Any) -> WhisperConfig:
        """From a `transformers.WhisperConfig` or its `config.json` dict; refuses other architectures."""
        cfg = dict(hf_config) if isinstance(hf_config, Mapping) else hf_config.to_dict()
        model_type = cfg.get("model_type")
        if model_type != "whisper":
            raise ValueError(
                f"config has model_type={model_type!r}, architectures={cfg.get('architectures')}; only Whisper "
                "encoder-decoder checkpoints (model_type 'whisper') can be loaded."
            )
        activation = cfg.get("activation_function", "gelu")
        if activation != "gelu":
            raise ValueError(f"activation_function {activation!r} is not supported (Whisper uses 'gelu').")
        missing = [f for f in ARCH_FIELDS if f not in cfg and f != "scale_embedding"]
        if missing:
            raise ValueError(f"Whisper config lacks fields {missing}.")
        arch = {f: cfg[f] for f in ARCH_FIELDS if f in cfg}
        return cls(**arch, **runtime)

    @classmethod
    def from_json_file(cls, path: str | Path, **runtime: Any) -> WhisperConfig:
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No Whisper config at {path}: a checkpoint directory needs config.json."
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}).") from None
        return cls.from_hf_config(cfg, **runtime)

    def architecture(self) -> dict[str, Any]:
        """The HF `WhisperConfig` architecture fields."""
        return {f: getattr(self, f) for f in ARCH_FIELDS}

    def replace(self, **changes: Any) -> WhisperConfig:
        return dataclasses.replace(self, **changes)
