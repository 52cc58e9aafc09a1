"""The model a training run will build, known from config values and JSON files only, before anything loads.

`load.build_model` builds a run's model in its resume order; this module says which architecture that gives
without building it: `saved_model` (the workdir's `model_config.json`, when the run resumes) or
`planned_model` (the variant and overrides, `init_from`'s `model_config.json`, or a HF checkpoint's
`config.json`). Preflight compares the two and checks the data against them; `aot` compiles for the planned one.
Problems are `cli.UserError`s naming the config key or the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from audiocap_jax.cli import UserError
from audiocap_jax.model.config import ARCH_FIELDS, WhisperConfig
from audiocap_jax.rundir.checkpoint import finished_steps
from audiocap_jax.rundir.layout import CHECKPOINT_DIR, HF_CONFIG_FILE, MODEL_CONFIG_FILE


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """A model's architecture (`WhisperConfig.architecture()`: HF field names) and, per field, what decides it."""

    architecture: dict[str, Any]
    sources: dict[
        str, str
    ]  # field -> e.g. "--config.model.arch_overrides.d_model", "--workdir=W (model_config.json)"


def _read_architecture(path: Path, where: str) -> dict[str, Any]:
    """The architecture in a `model_config.json` or a HF `config.json`; UserError naming `where` if unusable."""
    try:
        return WhisperConfig.from_hf_config(json.loads(path.read_text(encoding="utf-8"))).architecture()
    except (OSError, ValueError) as error:  # unreadable, not JSON, not Whisper, fields missing
        raise UserError(
            f"{where}: {path} does not describe a Whisper model ({error}).",
            "point it at a training workdir or a HF Whisper checkpoint",
        ) from error


def _hf_config_file(checkpoint: str) -> Path | None:
    """`config.json` of a HF directory, or of a hub id already in the local HF cache; None when only a
    download would tell (nothing is fetched here)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path / HF_CONFIG_FILE
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(checkpoint, HF_CONFIG_FILE)
    return Path(cached) if isinstance(cached, str) else None


def _variant_plan(model: ml_collections.ConfigDict, key: str) -> ModelPlan:
    """`init="scratch"`: the variant changed by the overrides, each field's source the key that sets it."""
    overrides = dict(model.arch_overrides)
    unknown = sorted(set(overrides) - set(ARCH_FIELDS))
    if unknown:
        raise UserError(
            f"{key}.arch_overrides has unknown keys {unknown}.",
            f"use architecture fields only: {', '.join(ARCH_FIELDS)}",
        )
    try:
        architecture = WhisperConfig.from_variant(model.variant, **overrides).architecture()
    except ValueError as error:  # an unknown variant, a width the heads do not divide
        raise UserError(
            f"{key}.variant={model.variant!r} with {key}.arch_overrides={overrides}: {error}",
            f"change {key}.variant or {key}.arch_overrides as the message says",
        ) from error
    return ModelPlan(
        architecture,
        {
            f: f"{key}.arch_overrides.{f}" if f in overrides else f"{key}.variant={model.variant}"
            for f in architecture
        },
    )


def planned_model(config: ml_collections.ConfigDict) -> ModelPlan | None:
    """The model `config.model` builds when nothing is resumed, from config values and JSON files only (the
    variant and overrides, `init_from`'s model_config.json or the HF checkpoint's config.json); None for a hub
    id that is not in the local HF cache."""
    m, k = config.model, "--config.model"
    if m.init == "scratch":
        return _variant_plan(m, k)
    if m.init == "ours":
        path, where = Path(m.init_from).expanduser() / MODEL_CONFIG_FILE, f"{k}.init_from={m.init_from}"
    else:
        path, where = _hf_config_file(m.hf_checkpoint), f"{k}.hf_checkpoint={m.hf_checkpoint}"
        if path is None:
            return None
    architecture = _read_architecture(path, where)
    return ModelPlan(architecture, dict.fromkeys(architecture, where))


def saved_model(workdir: str | os.PathLike) -> ModelPlan | None:
    """The model a training workdir resumes (its `model_config.json`), or None when it has no finished
    checkpoint (the run starts from `config.model`)."""
    workdir = Path(workdir).expanduser().absolute()
    if not finished_steps(workdir / CHECKPOINT_DIR):
        return None
    path = workdir / MODEL_CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"--workdir={workdir} has checkpoints but no {MODEL_CONFIG_FILE}, so its model is unknown.",
            "resume from the workdir the checkpoints came from, or train in a new --workdir",
        )
    architecture = _read_architecture(path, f"--workdir={workdir}")
    return ModelPlan(architecture, dict.fromkeys(architecture, f"--workdir={workdir} ({MODEL_CONFIG_FILE})"))
