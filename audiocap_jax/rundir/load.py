"""The one way to build a captioning model: `build_model(ModelInit, mesh=...)`, for `train`, `predict` and
`evaluate`.

Where the weights come from, first match wins (the resume order):
  1. this workdir's latest checkpoint, when a training run resumes (`resume_from` has finished steps): the
     model comes back *abstract* (shapes, dtypes, shardings) and the caller restores its whole train state
     (weights, optimizer, data position) into it; that is all of it: the step's random keys (LoRA dropout)
     are a function of `config.seed` and the step (`train_step.step_key`), not saved state;
  2. `init_from`: one of our training workdirs (`init="ours"`), its `step` restored into the abstract model;
  3. `hf_checkpoint`: a HF Whisper directory or hub id (`init="hf"`), read tensor by tensor into the shards;
  4. a fresh init of `variant` + `arch_overrides` (`init="scratch"`), created directly in its shards.
Nothing is initialised at random and then overwritten: restores and HF imports fill an `nnx.eval_shape`
model, so the host never holds a second copy. A restored workdir keeps its saved parameter dtype unless
`runtime` asks for a `param_dtype`.

A workdir holds `model_config.json`, `tokenizer/` and `checkpoints/` (written by train.py), so it loads
without the training config. A LoRA run's `model_config.json` also records its adapters (`"lora"`): resuming
restores them as they are; loading the workdir for predict, evaluate or `init_from` merges them into the
weights (`merge_lora`), so the model returned is plain Whisper.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax.model import sharding
from audiocap_jax.model.backend import resolve_runtime
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import load_hf_checkpoint, resolve_checkpoint_dir
from audiocap_jax.model.lora import NO_LORA, LoRASpec, apply_lora, merge_lora
from audiocap_jax.model.whisper import Whisper, create_model
from audiocap_jax.rundir.checkpoint import Checkpointer
from audiocap_jax.rundir.layout import CHECKPOINT_DIR, MODEL_CONFIG_FILE, TOKENIZER_DIR
from audiocap_jax.text import Tokenizer, num_languages_for_vocab_size

INITS = ("ours", "hf", "scratch")  # config.model.init: where the weights come from unless the run resumes
WEIGHTS_KEY = "weights"  # the field of a saved train state that holds every model variable
NAMED_STEPS = ("best", "latest")  # the checkpoints of a workdir that have names; any other is a step number
RUNTIME_KEYS = (  # config.model keys that say how the model runs, not what it is
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
    "attention_impl",
)


def check_init(init: str, init_from: str = "") -> None:
    """Raises ValueError unless `init` is one of `INITS`, "ours" with the workdir it restores."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {', '.join(map(repr, INITS))}.")
    if init == "ours" and not init_from:
        raise ValueError("init='ours' needs init_from=<a training workdir>.")


def parse_step(step: int | str) -> int | str:
    """Which checkpoint of a workdir `step` names: "best", "latest" or a step number; ValueError otherwise."""
    if str(step) in NAMED_STEPS:
        return str(step)
    if re.fullmatch(r"\d+", str(step)) is None:
        raise ValueError(f"{step!r} is neither {', '.join(map(repr, NAMED_STEPS))} nor a step number.")
    return int(step)


@dataclasses.dataclass(frozen=True)
class ModelInit:
    """Where a model's weights come from when no checkpoint of the run itself exists.

    Attributes:
      init: "ours" (`init_from`), "hf" (`hf_checkpoint`) or "scratch" (`variant`).
      init_from: a training workdir of ours.
      step: which checkpoint of `init_from`: "latest", "best" or a step number.
      hf_checkpoint: a HF Whisper directory or hub id.
      variant: architecture of a fresh init (`WhisperConfig.from_variant`), changed by `arch_overrides`.
      conv_init_std: fresh init only: std of the encoder's two input convolutions; 0 = HF's 0.02.
      seed: fresh init only.
      runtime: run options (dtype, param_dtype, remat, scan_layers, attention_impl); without param_dtype a
        restored workdir keeps the dtype it was saved in.
    """

    init: str
    init_from: str = ""
    step: int | str = "latest"
    hf_checkpoint: str = ""
    variant: str = "tiny"
    arch_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    conv_init_std: float = 0.0
    seed: int = 0
    runtime: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_init(self.init, self.init_from)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ModelInit:
        """From a training config (`config.model` and `config.seed`)."""
        m = config.model
        return cls(
            init=m.init,
            init_from=m.init_from,
            hf_checkpoint=m.hf_checkpoint,
            variant=m.variant,
            arch_overrides=dict(m.arch_overrides),
            conv_init_std=m.conv_init_std,
            seed=config.seed,
            runtime={k: m[k] for k in RUNTIME_KEYS},
        )

    @classmethod
    def from_path(cls, path: str | Path, step: int | str = "best", **runtime: Any) -> ModelInit:
        """For `predict` / `evaluate --checkpoint`: a workdir of ours (its `step`) or a HF directory / hub id."""
        if is_workdir(path):
            return cls(init="ours", init_from=str(path), step=step, runtime=runtime)
        return cls(init="hf", hf_checkpoint=str(path), runtime=runtime)


@dataclasses.dataclass(frozen=True)
class BuiltModel:
    model: Whisper  # concrete; abstract (jax.ShapeDtypeStruct leaves with shardings) when `resume` is True
    config: WhisperConfig
    tokenizer: Tokenizer
    origin: str  # where the weights came from, for the log
    resume: bool  # True: restore the run's own latest checkpoint into `model`


def is_workdir(path: str | Path) -> bool:
    return (Path(path).expanduser() / MODEL_CONFIG_FILE).is_file()


def tokenizer_for(directory: Path | None, config: WhisperConfig) -> Tokenizer:
    """The checkpoint's own tokenizer files when it has them, else the packaged BPE for its vocabulary."""
    if directory is not None and any((directory / f).exists() for f in ("tokenizer.json", "vocab.json")):
        return Tokenizer.from_pretrained(directory)
    return Tokenizer.from_assets(num_languages_for_vocab_size(config.vocab_size))


def save_run_files(
    workdir: Path, config: WhisperConfig, tokenizer: Tokenizer, lora: LoRASpec = NO_LORA
) -> None:
    """What a workdir needs to be loadable without the training config (with LoRA: the adapters' shapes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    adapters = {"lora": dataclasses.asdict(lora)} if lora.enabled else {}
    (workdir / MODEL_CONFIG_FILE).write_text(
        json.dumps({"model_type": "whisper", **config.architecture(), **adapters}, indent=1)
    )
    tokenizer.save_pretrained(workdir / TOKENIZER_DIR)


def saved_lora(workdir: Path) -> LoRASpec:
    """The LoRA adapters a workdir's checkpoints hold (rank 0: none)."""
    saved = json.loads((workdir / MODEL_CONFIG_FILE).read_text()).get("lora")
    return LoRASpec.from_config(saved) if saved else NO_LORA


def build_model(
    init: ModelInit,
    *,
    mesh: Mesh | None = None,
    resume_from: Checkpointer | None = None,
    run_files: Path | None = None,
) -> BuiltModel:
    """The model on `mesh` (None: one device), its config and tokenizer, in the resume order above.

    Args:
      init: where the weights come from unless the run resumes.
      mesh: where the parameters live; each is created, read or restored directly in its shards.
      resume_from: the run's own checkpoints; when it has steps, the model comes back abstract.
      run_files: the run's workdir (holding `model_config.json` and `tokenizer/`), read when resuming.
    """
    mesh = mesh or sharding.make_mesh({}, devices=jax.devices()[:1])
    runtime = dict(init.runtime)
    if resume_from is not None and resume_from.all_steps():
        if run_files is None or not is_workdir(run_files):
            raise FileNotFoundError(
                f"{resume_from.directory} has checkpoints but {run_files} lacks {MODEL_CONFIG_FILE}; "
                "resume from the workdir the checkpoints came from."
            )
        config = WhisperConfig.from_json_file(run_files / MODEL_CONFIG_FILE, **runtime)
        model = abstract_model(config, mesh, saved_lora(run_files))
        tokenizer = Tokenizer.from_pretrained(run_files / TOKENIZER_DIR)
        return BuiltModel(model, config, tokenizer, f"resuming {resume_from.directory}", resume=True)
    if init.init == "ours":
        return _restore_workdir(Path(init.init_from).expanduser(), init.step, mesh, runtime)
    if init.init == "hf":
        directory = resolve_checkpoint_dir(init.hf_checkpoint)
        model, config = load_hf_checkpoint(directory, mesh=mesh, **runtime)
        return BuiltModel(model, config, tokenizer_for(directory, config), f"HF {directory}", resume=False)
    # init.init == "scratch", the one left (`check_init`).
    config = WhisperConfig.from_variant(init.variant, **dict(init.arch_overrides), **runtime)
    model = create_model(config, mesh=mesh, seed=init.seed)
    if init.conv_init_std:
        _redraw_input_convs(model, init.conv_init_std, init.seed)
    tokenizer = Tokenizer.from_assets(num_languages_for_vocab_size(config.vocab_size))
    return BuiltModel(model, config, tokenizer, f"fresh init of {init.variant}", resume=False)


def abstract_model(config: WhisperConfig, mesh: Mesh, lora: LoRASpec) -> Whisper:
    """The model (with `lora`'s adapters) with `jax.ShapeDtypeStruct` leaves carrying their shardings: a
    restore target, or the input of a program compiled ahead of time; no memory. "auto" runtime settings
    are resolved for the mesh's devices (compile-only TPU/GPU devices included)."""
    config = resolve_runtime(config, list(mesh.devices.flat))

    def create() -> Whisper:
        model = Whisper(config, rngs=nnx.Rngs(0))
        apply_lora(model, lora)
        return model

    graphdef, state = nnx.split(nnx.eval_shape(create))
    shardings = sharding.state_shardings(state, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return nnx.merge(graphdef, abstract)


def _restore_workdir(path: Path, step: int | str, mesh: Mesh, runtime: dict[str, Any]) -> BuiltModel:
    if not is_workdir(path):
        raise FileNotFoundError(
            f"{path} is not a training workdir (no {MODEL_CONFIG_FILE}); give one written by audiocap_jax.train."
        )
    manager = Checkpointer(path / CHECKPOINT_DIR, async_save=False)
    try:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{path / CHECKPOINT_DIR} has no finished checkpoint to load.")
        chosen = _choose_step(manager, steps, step, path)
        if "param_dtype" not in runtime:
            runtime["param_dtype"] = _saved_param_dtype(manager.saved_dtypes(chosen, WEIGHTS_KEY))
        config = WhisperConfig.from_json_file(path / MODEL_CONFIG_FILE, **runtime)
        abstract = abstract_model(config, mesh, saved_lora(path))
        graphdef, target = nnx.split(abstract)
        weights = manager.restore_subset(chosen, {WEIGHTS_KEY: target})[WEIGHTS_KEY]
    finally:
        manager.close()
    logging.info("Loaded step %d of %s", chosen, path)
    model = merge_lora(nnx.merge(graphdef, weights))
    return BuiltModel(
        model, config, Tokenizer.from_pretrained(path / TOKENIZER_DIR), f"{path} step {chosen}", resume=False
    )


def _saved_param_dtype(dtypes: list[np.dtype]) -> str:
    """The one floating dtype the weights were saved in (WhisperConfig.param_dtype)."""
    floating = {np.dtype(d).name for d in dtypes if jax.numpy.issubdtype(d, jax.numpy.floating)}
    if len(floating) != 1:
        raise ValueError(f"saved weights mix dtypes {sorted(floating)}; pass param_dtype to choose one.")
    return floating.pop()


def _choose_step(manager: Checkpointer, steps: list[int], step: int | str, path: Path) -> int:
    best, latest = NAMED_STEPS
    chosen = parse_step(step)
    if chosen == latest:
        return steps[-1]
    if chosen == best:
        best_step = manager.best_step()
        return best_step if best_step is not None else steps[-1]
    if chosen not in steps:
        raise ValueError(f"{path} has no checkpoint at step {step}; it has steps {steps}.")
    return int(chosen)


def _redraw_input_convs(model: Whisper, std: float, seed: int) -> None:
    """Re-initialise the encoder's two input convolution kernels from N(0, std^2), in their shardings.

    With HF's N(0, 0.02^2) for every weight, the convolutions' output at init varies ~100x less over time
    than the frozen sinusoidal positions added to it, so a model trained from scratch is nearly deaf for its
    first few hundred steps (measured in configs/demo.py).
    """
    key = jax.random.key(seed)
    for index, conv in enumerate((model.encoder.conv1, model.encoder.conv2)):
        kernel = conv.kernel.get_value()
        draw = jax.jit(
            lambda k, shape=kernel.shape, dtype=kernel.dtype: std * jax.random.normal(k, shape, dtype),
            out_shardings=kernel.sharding,
        )
        conv.kernel.set_value(draw(jax.random.fold_in(key, index)))
