"""Load a captioning model from a HF Whisper directory / hub id or from one of our training workdirs.

One entry point for `train` (`model.init_from`), `predict` and `evaluate`: `load_model(path)`.
A workdir holds `model_config.json`, `tokenizer/` and `checkpoints/` (written by train.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from absl import logging
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax.checkpoint import Checkpointer, abstract_like
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import load_hf_checkpoint, resolve_checkpoint_dir
from audiocap_jax.model.lora import LoRASpec, apply_lora, merge_lora
from audiocap_jax.model.whisper import Whisper, create_model
from audiocap_jax.text import Tokenizer, num_languages_for_vocab_size
from audiocap_jax.training import split_model

MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"


def is_workdir(path: str | Path) -> bool:
    return (Path(path) / MODEL_CONFIG_FILE).is_file()


def tokenizer_for(directory: Path | None, config: WhisperConfig) -> Tokenizer:
    """The checkpoint's own tokenizer files when it has them, else the packaged BPE for its vocabulary."""
    if directory is not None and any((directory / f).exists() for f in ("tokenizer.json", "vocab.json")):
        return Tokenizer.from_pretrained(directory)
    return Tokenizer.from_assets(num_languages_for_vocab_size(config.vocab_size))


def save_run_files(
    workdir: Path, config: WhisperConfig, tokenizer: Tokenizer, lora: LoRASpec | None = None
) -> None:
    """What a workdir needs to be loadable without the training config (with LoRA: the adapters' shapes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    adapters = {"lora": dataclasses.asdict(lora)} if lora is not None and lora.enabled else {}
    (workdir / MODEL_CONFIG_FILE).write_text(
        json.dumps({"model_type": "whisper", **config.architecture(), **adapters}, indent=1)
    )
    tokenizer.save_pretrained(workdir / TOKENIZER_DIR)


def load_model(
    path: str | Path, *, mesh: Mesh | None = None, step: int | str = "best", **runtime: Any
) -> tuple[Whisper, WhisperConfig, Tokenizer]:
    """(model, config, tokenizer) from a training workdir (its best, latest or given step) or a HF checkpoint.

    `runtime` sets run options (dtype, attention_impl, ...); parameters of a workdir keep their saved dtype
    unless param_dtype is given. A LoRA run's adapters are merged: the model returned is plain Whisper.
    """
    path = Path(path).expanduser()
    if is_workdir(path):
        config = WhisperConfig.from_json_file(path / MODEL_CONFIG_FILE, **runtime)
        model = create_model(config, mesh=mesh)
        saved_lora = json.loads((path / MODEL_CONFIG_FILE).read_text()).get("lora")
        if saved_lora is not None:  # The checkpoint holds adapters: restore them too, then merge.
            apply_lora(model, LoRASpec(**{**saved_lora, "targets": tuple(saved_lora["targets"])}))
        manager = Checkpointer(path / CHECKPOINT_DIR, async_save=False)
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{path / CHECKPOINT_DIR} has no finished checkpoint to load.")
        chosen = _choose_step(manager, steps, step, path)
        graphdef, params, frozen = split_model(model)
        restored = manager.restore_subset(
            chosen, {"params": abstract_like(params), "frozen": abstract_like(frozen)}
        )
        manager.close()
        logging.info("Loaded step %d of %s", chosen, path)
        model = merge_lora(nnx.merge(graphdef, restored["params"], restored["frozen"]))
        return model, config, Tokenizer.from_pretrained(path / TOKENIZER_DIR)
    directory = resolve_checkpoint_dir(path)
    model, config = load_hf_checkpoint(directory, mesh=mesh, **runtime)
    return model, config, tokenizer_for(directory, config)


def _choose_step(manager: Checkpointer, steps: list[int], step: int | str, path: Path) -> int:
    if step == "latest":
        return steps[-1]
    if step == "best":
        best = manager.best_step()
        return best if best is not None else steps[-1]
    if int(step) not in steps:
        raise ValueError(f"{path} has no checkpoint at step {step}; it has steps {steps}.")
    return int(step)
