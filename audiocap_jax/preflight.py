"""Checks run before any work: everything that can be known wrong from the config and the file system.

`train`, `predict` and `evaluate` call one `check_*` function each before they load a model, decode audio or
create a directory, so a typo costs seconds instead of a run. Every check is a function of (config values,
file system) and raises `cli.UserError` naming the key or file and the fix; none writes anything.

A rule that code elsewhere enforces is asked of its owner, not restated: the mesh (`sharding.mesh_shape`), the
search settings (`DecodeSettings`), the runtime choices (`model.config.check_runtime`), the schedule
(`train_step.check_schedule`), the weights' source and checkpoint steps (`load.check_init`, `load.parse_step`).
The owner raises ValueError; `_asked` turns it into a UserError naming the config key. The rules only
preflight knows: lr > 0, warmup_steps < total_steps, take_first_n >= 0, mixture weights >= 0 with one > 0,
max_length longer than the forced prompt, batch sizes that split over the mesh's data-parallel devices. TFDS
datasets and splits are checked from the build's `dataset_info.json`, without asking TFDS (which answers a
missing dataset with its catalogue of ~250 names). A training run's model is known from JSON files too
(`rundir/plan.py`): a resumed workdir must hold the model the config describes, LoRA targets must match its
layer names, and its data must fit it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections
from jax.sharding import AbstractMesh

from audiocap_jax import audio, text
from audiocap_jax.cli import UserError
from audiocap_jax.data import features, pipeline
from audiocap_jax.decoding import inference, rerank
from audiocap_jax.decoding.search_settings import DecodeSettings
from audiocap_jax.metrics import dcase, java, spice_jar
from audiocap_jax.model import lora, sharding
from audiocap_jax.model.config import check_runtime
from audiocap_jax.rundir import load, plan, train_step, writer
from audiocap_jax.rundir.checkpoint import finished_steps
from audiocap_jax.rundir.layout import (
    CHECKPOINT_DIR,
    HF_CONFIG_FILE,
    HF_EXPORT_DIR,
    MODEL_CONFIG_FILE,
    RUN_CONFIG_FILE,
)

# The TFDS builds' mel configs, by name (importing features adds no third-party module: pipeline has them).
MEL_CONFIGS = tuple(config.name for config in features.MEL_CONFIGS)
# The fixes of refused decoding keys that can say more than "as the message says" (`key`: the flag prefix).
_DECODING_FIXES = {"num_beams": "set {key}.num_beams=1 (greedy) or more"}


def _require(condition: bool, problem: str, fix: str) -> None:
    if not condition:
        raise UserError(problem, fix)


def _choice(value: Any, key: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    _require(
        value in choices,
        f"{key}={value!r} is not one of {', '.join(map(repr, choices))}.",
        f"set {key} to one of {', '.join(choices)}",
    )


@contextlib.contextmanager
def _asked(prefix: str, fix: str) -> Iterator[None]:
    """A rule asked of the module that owns it: its ValueError becomes a UserError whose problem is `prefix`
    (the config key it is about) followed by the owner's message, and whose fix is `fix`."""
    try:
        yield
    except ValueError as error:
        raise UserError(f"{prefix}{error}", fix) from error


# ---------------------------------------------------------------------------------------------------------------
# Paths.
# ---------------------------------------------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | os.PathLike, key: str, shown: str | os.PathLike | None = None) -> Path:
    """`path` is, or can be created as, a directory this process may write; nothing is created.

    `shown` is the path the user typed as `key` when `path` is derived from it (the folder of an output file).
    """
    path = Path(path).expanduser().absolute()
    target = _existing_ancestor(path)
    where = f"{key}={shown or path}"
    _require(
        target.is_dir(),
        f"{where}: {target} is a file, so {path} cannot be {'used' if target == path else 'created'} as a folder.",
        f"choose another {key}",
    )
    _require(
        os.access(target, os.W_OK | os.X_OK),
        f"{where}: {target} is not writable.",
        f"choose a {key} you can write, or fix the permissions of {target}",
    )
    return path


def check_writable_file(path: str | os.PathLike, key: str) -> Path:
    """`path` can be (re)written as a file: not a directory, and its folder is (or can be made) writable."""
    path = Path(path).expanduser().absolute()
    _require(
        not path.is_dir(), f"{key}={path} is a directory.", f"give {key} a file name, e.g. {path / 'out.csv'}"
    )
    if path.exists():
        _require(
            os.access(path, os.W_OK),
            f"{key}={path} is not writable.",
            "choose another file or fix its permissions",
        )
    check_writable_dir(path.parent, key, shown=path)
    return path


def check_readable_file(path: str | os.PathLike, key: str, what: str) -> Path:
    path = Path(path).expanduser()
    _require(path.exists(), f"{key}={path} does not exist.", f"pass the path of {what}")
    _require(os.access(path, os.R_OK), f"{key}={path} is not readable.", f"fix the permissions of {path}")
    return path


def check_checkpoint(checkpoint: str, step: str | int = "best", key: str = "--checkpoint") -> None:
    """A training workdir of ours (with the requested step), a HF Whisper directory, or a hub id."""
    path = Path(checkpoint).expanduser()
    if (path / MODEL_CONFIG_FILE).is_file():
        steps = finished_steps(path / CHECKPOINT_DIR)
        _require(
            bool(steps),
            f"{key}={path} is a training workdir without any finished checkpoint in {path / CHECKPOINT_DIR}.",
            "train longer (checkpoint.every_steps) or pick another workdir",
        )
        number = load.parse_step(step)
        if isinstance(number, int):
            _require(
                number in steps,
                f"{key}={path} has no checkpoint at step {step}; it has steps {', '.join(map(str, steps))}.",
                "set step to one of them, 'best' or 'latest'",
            )
        return
    if path.is_dir():
        _require(
            (path / HF_CONFIG_FILE).is_file(),
            f"{key}={path} is neither a training workdir (no "
            f"{MODEL_CONFIG_FILE}) nor a HF Whisper checkpoint (no {HF_CONFIG_FILE}).",
            f"pass a workdir written by `audiocap_jax.train` or a HF directory such as {HF_EXPORT_DIR}/",
        )
        return
    looks_local = path.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1
    _require(
        not looks_local,
        f"{key}={checkpoint} is not a directory (nor a hub id like 'openai/whisper-tiny').",
        "pass an existing workdir or HF directory, or a hub id owner/name",
    )


def check_output_file(path: str | os.PathLike, key: str) -> Path:
    """`check_writable_file`, and not empty: `--output-file=""` would name the working directory."""
    _require(bool(os.fspath(path).strip()), f"{key} is empty.", f"pass a file name, e.g. {key}=captions.csv")
    return check_writable_file(path, key)


def checkpoint_architecture(checkpoint: str) -> dict[str, Any] | None:
    """The model's shape as its files say, before anything loads: a workdir's model_config.json or a HF
    directory's config.json (both carry HF's field names); None for a hub id (known once downloaded)."""
    path = Path(checkpoint).expanduser()
    for name in (MODEL_CONFIG_FILE, HF_CONFIG_FILE):
        if (path / name).is_file():
            return json.loads((path / name).read_text(encoding="utf-8"))
    return None


def check_decoder_positions(checkpoint: str, max_length: int, key: str) -> None:
    """`max_length` fits the decoder's learned positions (`max_target_positions`): longer sequences would
    index past the position table."""
    architecture = checkpoint_architecture(checkpoint) or {}
    positions = architecture.get("max_target_positions")
    if positions is not None:
        _require(
            max_length <= int(positions),
            f"{key}.max_length={max_length} is longer than the {positions} decoder positions of --checkpoint="
            f"{checkpoint} (its max_target_positions).",
            f"set {key}.max_length to {positions} or less",
        )


# ---------------------------------------------------------------------------------------------------------------
# Config values.
# ---------------------------------------------------------------------------------------------------------------
def check_step(step: Any, key: str) -> None:
    with _asked(f"{key}=", f"set {key}=best, {key}=latest or {key}=<step>, e.g. {key}=1000"):
        load.parse_step(step)


def check_mesh(mesh: Mapping[str, int], key: str, num_devices: int | None = None) -> int | None:
    """The mesh as `sharding.mesh_shape` takes it; with `num_devices`, returns how many data-parallel devices a
    batch splits over."""
    axes = f"{key}.{{{','.join(sharding.MESH_AXES)}}}"
    sizes_fix = "each >= 1 (or -1 for one axis: the remaining devices)"
    fix = f"make {axes} multiply to {num_devices}, {sizes_fix}" if num_devices else f"set {axes}, {sizes_fix}"
    with _asked(f"{key}: ", fix):
        sizes = sharding.mesh_shape(mesh, num_devices)
    if num_devices is None:
        return None
    return sharding.data_parallel_size(AbstractMesh(tuple(sizes.values()), tuple(sizes)))


def prompt_length(prefix: str) -> int:
    """Tokens of the forced decoder prompt: Whisper's special tokens + the prefix."""
    return len(text.Tokenizer.from_assets().prompt_ids(prefix))


def style_prompt_length(style: str, key: str) -> int:
    """`prompt_length` of a config style string, which must parse ('clotho > caption')."""
    with _asked(f"{key}: ", f"set {key} like 'clotho > caption', or 'none' for no prefix"):
        prefix = text.parse_style(style)
    return prompt_length(prefix)


def check_search(config: ml_collections.ConfigDict, key: str) -> None:
    """The decoding keys configs/predict.py and the training config's `eval` section share
    (`search_settings.DECODING_KEYS`; `key` is their flag prefix, e.g. '--config-file' or '--config.eval'): the
    search settings as `search.DecodeSettings` validates them, and the reranker (a plug-in must import)."""
    c = config
    try:  # every field's rule lives in DecodeSettings; its messages start with the field's name
        DecodeSettings(eos_id=0, **inference.settings_fields(c))
    except ValueError as error:
        field = re.match(r"\w*", str(error)).group()
        fix = _DECODING_FIXES.get(
            field, "change that {key} value as the message says (--help lists the keys)"
        )
        raise UserError(f"{key}.{error}", fix.format(key=key)) from error
    builtin = ", ".join(rerank.BUILTIN)
    with _asked(f"{key}.", f"set {key}.rerank to one of {builtin} or an importable '{rerank.PLUGIN_FORM}'"):
        reranker = rerank.Reranker.from_name(c.rerank)
    if reranker.name == rerank.MBR:
        problem = java.java_problem(f"{key}.rerank=mbr (CIDEr-D's PTB tokenizer)")
        _require(problem is None, str(problem), f"install Java, or set {key}.rerank=likelihood")


def check_decoding(config: ml_collections.ConfigDict, key: str, num_devices: int | None = None) -> None:
    """The decoding settings of configs/predict.py (`key` is the flag, e.g. '--config-file')."""
    c = config
    check_search(c, key)
    _require(c.batch_size >= 1, f"{key}.batch_size={c.batch_size} must be >= 1.", f"set {key}.batch_size=8")
    prompt = style_prompt_length(c.style, f"{key}.style")
    _require(
        c.max_length > prompt,
        f"{key}.max_length={c.max_length} leaves no room for a caption after the "
        f"{prompt}-token prompt of style {c.style!r}.",
        f"set {key}.max_length above {prompt}, e.g. 80",
    )
    _require(
        0 <= c.min_length < c.max_length,
        f"{key}.min_length={c.min_length} must be in [0, max_length).",
        f"set {key}.min_length=0",
    )
    _choice(c.long_audio, f"{key}.long_audio", audio.LONG_AUDIO_MODES)
    with _asked(f"{key}.", f"set {key}.dtype to one of the values listed"):
        check_runtime({"dtype": c.dtype})
    check_step(c.step, f"{key}.step")
    parallel = check_mesh(dict(c.mesh), f"{key}.mesh", num_devices)
    if parallel:
        _require(
            c.batch_size % parallel == 0,
            f"{key}.batch_size={c.batch_size} does not split over the {parallel} data-parallel devices.",
            f"set {key}.batch_size to a multiple of {parallel}",
        )


def check_scoring(bootstrap: int, bootstrap_seed: int, metrics_model_dir: str | None) -> None:
    """`evaluate`'s scoring flags, before any captioning or scoring: the resample count and seed numpy takes,
    and a `--metrics_model_dir` that holds the FENSE/FER models (a wrong path would otherwise only show as
    FENSE n/a at the end)."""
    _require(
        bootstrap >= 0,
        f"--bootstrap={bootstrap} is negative; it is a number of resamples of the clips.",
        "pass --bootstrap=1000 for 95% intervals, or --bootstrap=0 for none",
    )
    _require(
        bootstrap_seed >= 0,
        f"--bootstrap_seed={bootstrap_seed} is negative; numpy's generator takes seeds >= 0.",
        "pass --bootstrap_seed=0 or another number >= 0",
    )
    if metrics_model_dir is None:
        return
    folder = Path(metrics_model_dir).expanduser()
    download = f"run `{dcase.DOWNLOAD_COMMAND} --model_dir={folder}` once, or pass the folder it wrote"
    _require(
        folder.is_dir(),
        f"--metrics_model_dir={metrics_model_dir} is {'a file' if folder.exists() else 'not there'}, not the "
        "folder of the FENSE/FER models.",
        download,
    )
    absent = dcase.missing_models(folder)
    _require(
        not absent,
        f"--metrics_model_dir={metrics_model_dir} lacks {', '.join(str(p.relative_to(folder)) for p in absent)}.",
        download,
    )


def check_spice(spice: str) -> None:
    """`--spice=on` needs the SPICE jars and Java now, not after the captioning."""
    if spice == "on":
        status = spice_jar.spice_status()
        _require(
            status.available,
            f"--spice=on: {status.reason}",
            "pass --spice=auto (skip SPICE when it cannot run) or --spice=off",
        )


# ---------------------------------------------------------------------------------------------------------------
# TFDS builds.
# ---------------------------------------------------------------------------------------------------------------
def tfds_splits(data_dir: str | os.PathLike, builder: str, config: str, dir_key: str) -> dict[str, int]:
    """{split: number of examples} of the newest build of `builder/config` under `data_dir` (the flag
    `dir_key`), from its dataset_info.json; UserError when there is none."""
    data_dir = Path(data_dir).expanduser()
    build_hint = (
        f"build it: python -m tfds_builders build tfds_builders/{builder} --config={config} "
        f"--manual_dir=AUDIOFOLDER --data_dir={data_dir} (docs/pipeline.md)"
    )
    _require(
        data_dir.is_dir(),
        f"{dir_key}={data_dir} does not exist.",
        f"point {dir_key} at the folder your TFDS builds went to, or {build_hint}",
    )
    infos = sorted((data_dir / builder / config).glob("*/dataset_info.json"))
    _require(bool(infos), f"{dir_key}={data_dir} holds no TFDS dataset {builder}/{config}.", build_hint)
    info = json.loads(infos[-1].read_text(encoding="utf-8"))
    return {split["name"]: sum(map(int, split.get("shardLengths", []))) for split in info.get("splits", [])}


def check_dataset(
    name: str,
    split: str | None,
    data_dir: str | os.PathLike,
    mel_config: str,
    key: str,
    default_splits: Mapping[str, str],
    dir_key: str,
) -> None:
    """Dataset `name` (clotho, audiocaps, audioset) is built in `data_dir` with split `split`."""
    _choice(name, f"{key} dataset", pipeline.TFDS_NAMES)
    _choice(mel_config, f"{key} mel config", MEL_CONFIGS)
    split = split or default_splits[name]
    builder = pipeline.TFDS_NAMES[name]
    splits = tfds_splits(data_dir, builder, mel_config, dir_key)
    base = split.split("[")[0]
    _require(
        base in splits,
        f"{key}: {builder}/{mel_config} in {data_dir} has no split {base!r}; it has "
        f"{', '.join(splits) or 'none'}.",
        f"use one of {', '.join(splits)}",
    )
    _require(
        splits[base] > 0,
        f"{key}: split {base!r} of {builder}/{mel_config} in {data_dir} is empty (the build kept no clip).",
        "check the build's skipped clips (metadata.json beside dataset_info.json) and rebuild, or use another split",
    )


def check_evaluate(
    dataset: str, split: str | None, data_dir: str, mel_config: str | None, style: str | None
) -> None:
    """`evaluate --checkpoint --dataset`: a known dataset and split, built (mel_config: None = the model's)."""
    if style is not None:
        style_prompt_length(style, "--style")
    if mel_config is not None:
        check_dataset(
            dataset, split, data_dir, mel_config, "--dataset/--split", pipeline.EVAL_SPLITS, "--data_dir"
        )
    else:  # the model decides; at least one build must hold the split
        _choice(dataset, "--dataset", pipeline.TFDS_NAMES)
        errors = []
        for config in MEL_CONFIGS:
            try:
                check_dataset(
                    dataset, split, data_dir, config, "--dataset/--split", pipeline.EVAL_SPLITS, "--data_dir"
                )
                return
            except UserError as error:
                errors.append(error)
        raise errors[0]


# ---------------------------------------------------------------------------------------------------------------
# The model a training run trains: planned by the config, or saved in the workdir it resumes (rundir/plan.py).
# ---------------------------------------------------------------------------------------------------------------
def _previous_config(workdir: Path) -> dict[str, Any]:
    """The config of the workdir's last run (`config.json`, as train.py writes it); {} if unreadable."""
    try:
        return json.loads((workdir / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_resume(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """A workdir with finished checkpoints resumes the model it saved, so the config must describe that model:
    its architecture (vocabulary and mel bins included), against what `config.model` would build, and its LoRA
    adapters. Every difference is refused in one line naming the keys and both values, before anything in the
    workdir changes; starting afresh takes a new --workdir (README, "Training").

    When the config names a hub id that is not in the local HF cache, its architecture is unknown without a
    download; then the hub id itself must be the one the workdir's last run named (its config.json).
    """
    workdir = Path(workdir).expanduser().absolute()
    saved = plan.saved_model(workdir)
    if saved is None:
        return
    differences: list[tuple[str, Any, Any, str]] = []  # (key, saved value, config's value, what sets it)
    planned = plan.planned_model(config)
    if planned is not None:
        differences += [
            (field, value, planned.architecture[field], planned.sources[field])
            for field, value in saved.architecture.items()
            if planned.architecture[field] != value
        ]
    else:
        previous = _previous_config(workdir).get("model", {}).get("hf_checkpoint")
        if previous is not None and previous != config.model.hf_checkpoint:
            differences.append(
                ("hf_checkpoint", previous, config.model.hf_checkpoint, "--config.model.hf_checkpoint")
            )
    saved_adapters = load.saved_lora(workdir)
    adapters = lora.LoRASpec.from_config(config.model.lora)
    differences += [
        (
            f"lora.{f.name}",
            getattr(saved_adapters, f.name),
            getattr(adapters, f.name),
            f"{lora.CONFIG_KEY}.{f.name}",
        )
        for f in dataclasses.fields(lora.LoRASpec)
        if getattr(saved_adapters, f.name) != getattr(adapters, f.name)
    ]
    if differences:
        had = ", ".join(f"{key}={value!r}" for key, value, _, _ in differences)
        asked = ", ".join(f"{key}={value!r}" for key, _, value, _ in differences)
        sources = ", ".join(dict.fromkeys(source for *_, source in differences))
        raise UserError(
            f"--workdir={workdir} holds a run with {had} ({MODEL_CONFIG_FILE}), but the config asks for "
            f"{asked} ({sources}); a resumed run keeps its model.",
            f"resume with the run's settings (undo that change; its last config is {workdir / RUN_CONFIG_FILE}), "
            "or train the new model in a new --workdir",
        )


def check_model_and_data(config: ml_collections.ConfigDict, model: plan.ModelPlan | None) -> None:
    """The run's model (saved or planned; None: unknown until downloaded) takes the data the config feeds it:
    log-mels of its `num_mel_bins`, token sequences within its `max_target_positions`."""
    if model is None:
        return
    k, arch = "--config", model.architecture
    bins, positions = arch["num_mel_bins"], arch["max_target_positions"]
    _require(
        config.data.mel_config == f"mel{bins}",
        f"{k}.data.mel_config={config.data.mel_config!r}, but the model takes num_mel_bins={bins} "
        f"({model.sources['num_mel_bins']}).",
        f"set {k}.data.mel_config=mel{bins}",
    )
    for key, length in (
        ("data.max_length", config.data.max_length),
        ("eval.max_length", config.eval.max_length),
    ):
        _require(
            length <= positions,
            f"{k}.{key}={length} exceeds the model's {positions} decoder positions "
            f"(max_target_positions, {model.sources['max_target_positions']}).",
            f"set {k}.{key} to {positions} or less",
        )


# ---------------------------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------------------------
def _check_optimization(config: ml_collections.ConfigDict) -> None:
    """Steps, learning rate, warmup, schedule, and a batch that splits into its accumulation steps."""
    c, k = config, "--config"
    _require(c.total_steps >= 1, f"{k}.total_steps={c.total_steps} must be >= 1.", f"set {k}.total_steps")
    _require(
        c.optim.lr > 0,
        f"{k}.optim.lr={c.optim.lr} must be > 0 (a negative rate climbs the loss).",
        f"set {k}.optim.lr to a positive rate, e.g. 2e-5",
    )
    _require(
        0 <= c.optim.warmup_steps < c.total_steps,
        f"{k}.optim.warmup_steps={c.optim.warmup_steps} must be in [0, total_steps={c.total_steps}).",
        f"set {k}.optim.warmup_steps below {c.total_steps}",
    )
    with _asked(f"{k}.optim.", f"set {k}.optim.schedule to one of {', '.join(train_step.SCHEDULES)}"):
        train_step.check_schedule(c.optim.schedule)
    _require(
        c.batch_size >= 1 and c.accum_steps >= 1 and c.batch_size % c.accum_steps == 0,
        f"{k}.batch_size={c.batch_size} is not a positive multiple of {k}.accum_steps={c.accum_steps}.",
        f"set {k}.batch_size to a multiple of {k}.accum_steps",
    )


def _check_weights_source(config: ml_collections.ConfigDict) -> None:
    """Where the weights come from (`init` and the workdir or HF checkpoint it names) and how the model runs."""
    m, k = config.model, "--config.model"
    with _asked(
        f"{k}.", f"set {k}.init to one of {', '.join(load.INITS)} ('ours' with {k}.init_from=<a workdir>)"
    ):
        load.check_init(m.init, m.init_from)
    with _asked(f"{k}.", f"set that {k} key to one of the values listed"):
        check_runtime({name: m[name] for name in load.RUNTIME_KEYS})
    if m.init == "ours":
        check_checkpoint(m.init_from, "latest", f"{k}.init_from")
    if m.init == "hf":
        check_checkpoint(m.hf_checkpoint, key=f"{k}.hf_checkpoint")


def _check_model(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """The model the run trains: its LoRA adapters, the one a resumed workdir holds, and the data it takes."""
    adapters = lora.LoRASpec.from_config(config.model.lora)
    if adapters.enabled:
        lora.check_targets(adapters, lora.layer_names())
    lora.check_train_only(adapters, config.optim.train_only)
    check_resume(config, workdir)
    check_model_and_data(config, plan.saved_model(workdir) or plan.planned_model(config))


def _check_mixture(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The training datasets and their weights, each with room for a caption after its prompt; the weights."""
    c, k = config, "--config"
    weights = dict(c.data.mixture)
    for name, weight in weights.items():
        _choice(name, f"{k}.data.mixture", pipeline.TFDS_NAMES)
        _require(weight >= 0, f"{k}.data.mixture.{name}={weight} is negative.", "set it to 0 or more")
    _require(
        any(w > 0 for w in weights.values()),
        f"{k}.data.mixture={weights}: no dataset has a positive weight.",
        f"set at least one, e.g. {k}.data.mixture.clotho=1",
    )
    for name, weight in weights.items():
        if weight > 0:
            prompt = prompt_length(pipeline.DatasetSpec(name=name, data_dir="").prefix)
            _require(
                c.data.max_length > prompt + 1,
                f"{k}.data.max_length={c.data.max_length} leaves no room "
                f"for a {name} caption after the {prompt}-token prompt.",
                f"set {k}.data.max_length above {prompt + 1}, e.g. 80",
            )
    return weights


def _check_validation(config: ml_collections.ConfigDict) -> None:
    """The validation datasets, each with room for a caption, and the search that decodes them."""
    c, k = config, "--config"
    for name in c.eval.datasets:
        _choice(name, f"{k}.eval.datasets", pipeline.TFDS_NAMES)
        prompt = prompt_length(pipeline.DatasetSpec(name=name, data_dir="").prefix)
        _require(
            c.eval.max_length > prompt,
            f"{k}.eval.max_length={c.eval.max_length} leaves no room for a "
            f"{name} caption after the {prompt}-token prompt.",
            f"set {k}.eval.max_length above {prompt}",
        )
    check_search(c.eval, f"{k}.eval")


def _check_batches(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """The mesh, and (micro-)batches that split over its data-parallel devices."""
    c, k = config, "--config"
    parallel = check_mesh(dict(c.mesh), f"{k}.mesh", num_devices)
    if parallel:
        for key, size in (
            ("batch_size", c.batch_size // c.accum_steps),
            ("eval.batch_size", c.eval.batch_size),
        ):
            _require(
                size % parallel == 0,
                f"{k}.{key}: {size} examples per (micro-)batch do not split over "
                f"the {parallel} data-parallel devices.",
                f"set {k}.{key} to a multiple of {parallel}",
            )


def _check_builds(config: ml_collections.ConfigDict, weights: Mapping[str, float]) -> None:
    """The TFDS builds the run reads: each weighted training dataset, and the validation splits."""
    c, k = config, "--config"
    for name, weight in weights.items():
        if weight > 0:
            check_dataset(
                name,
                None,
                c.data.data_dir,
                c.data.mel_config,
                f"{k}.data.mixture.{name}",
                pipeline.TRAIN_SPLITS,
                f"{k}.data.data_dir",
            )
    for name, split in c.eval.datasets.items():
        if c.eval.every_steps:
            check_dataset(
                name,
                split,
                c.data.data_dir,
                c.data.mel_config,
                f"{k}.eval.datasets.{name}",
                pipeline.EVAL_SPLITS,
                f"{k}.data.data_dir",
            )


def check_train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, num_devices: int | None = None
) -> None:
    """The training config (`--config.<key>`) and workdir, before the workdir or anything else is created."""
    c, k = config, "--config"
    check_writable_dir(workdir, "--workdir")
    _check_optimization(c)
    _check_weights_source(c)
    _choice(c.data.mel_config, f"{k}.data.mel_config", MEL_CONFIGS)
    _check_model(c, workdir)
    _choice(c.log.wandb_mode, f"{k}.log.wandb_mode", writer.WANDB_MODES)
    weights = _check_mixture(c)
    _check_validation(c)
    _require(
        c.eval.every_steps >= 0 and c.checkpoint.every_steps >= 1 and c.log.every_steps >= 1,
        f"{k}.eval.every_steps / checkpoint.every_steps / log.every_steps must be >= 0 / 1 / 1.",
        "set them to step intervals",
    )
    _check_batches(c, num_devices)
    if not c.data.synthetic.enabled:  # the synthetic set is built into data_dir by the run itself
        _check_builds(c, weights)
