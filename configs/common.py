"""Helpers shared by config files: parsing the `file.py:key=value,flag` argument, small from-scratch Whispers."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """`"variant=small,runlocal"` -> ConfigDict(variant="small", runlocal=True), typed like the defaults."""
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
        kind = type(defaults[key])
        if kind is bool:
            parsed[key] = value.lower() in ("", "1", "true", "yes")
        else:
            parsed[key] = kind(value)
    return parsed


def small_whisper(d_model: int, layers: int, heads: int, ffn_dim: int, **positions: int) -> dict[str, int]:
    """`model.arch_overrides` of a Whisper smaller than tiny, trained from scratch: the same depth, heads and
    MLP width in the encoder and the decoder; `positions`: max_source_positions / max_target_positions."""
    return dict(
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        **positions,
    )


# The smallest Whisper that still runs every code path, in seconds on a CPU: configs/smoke.py and tests.
TINY_ARCH = small_whisper(d_model=32, layers=1, heads=2, ffn_dim=64)
