"""Train a Whisper captioner: `python -m audiocap_jax.train --config=configs/<x>.py --workdir=DIR`.

One readable loop in stages: setup -> model -> optimizer + state -> data -> resume -> jitted step -> loop
(log, validate with the shared beam search, checkpoint) -> final save and export. Overrides such as
`--config.optim.lr=4e-6` are type-checked by ml_collections; unknown keys fail at start.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from audiocap_jax import checkpoint, cli, decode, inference, load, metrics, preflight, report, text, training
from audiocap_jax.data import demo, pipeline
from audiocap_jax.model import sharding
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import load_hf_checkpoint, resolve_checkpoint_dir
from audiocap_jax.model.whisper import Whisper, create_model
from audiocap_jax.writer import MetricWriter, read_metrics

# Dense bf16 peak FLOP/s per device, for the MFU estimate.
_PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
}

PREDICTIONS_DIR = "predictions"  # final validation predictions and their scores, per dataset

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host pods; auto-detects TPU/SLURM)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (manual multi-process)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (manual multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (manual multi-process).")


# ---------------------------------------------------------------------------------------------------------------
# Model construction (resume order: workdir checkpoint > init_from > hf_checkpoint > fresh init).
# ---------------------------------------------------------------------------------------------------------------
def _runtime(config: ml_collections.ConfigDict) -> dict[str, Any]:
    m = config.model
    return dict(
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        scan_layers=m.scan_layers,
        attention_impl=m.attention_impl,
    )


def _redraw_input_convs(model: Whisper, std: float, seed: int) -> None:
    """Re-initialise the encoder's two input convolution kernels from N(0, std^2), in their shardings.

    With HF's N(0, 0.02^2) for every weight, the convolutions' output at init varies ~100x less over time
    than the frozen sinusoidal positions added to it, so a model trained from scratch is nearly deaf for its
    first few hundred steps (measured in configs/demo.py).
    """
    key = jax.random.key(seed)
    for index, conv in enumerate((model.encoder.conv1, model.encoder.conv2)):
        kernel = conv.kernel.get_value()
        fresh = std * jax.random.normal(jax.random.fold_in(key, index), kernel.shape, kernel.dtype)
        conv.kernel.set_value(jax.device_put(fresh, kernel.sharding))


def build_model(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, resuming: bool
) -> tuple[Whisper, text.Tokenizer]:
    """The initial model on the mesh; when resuming, a cheap random init that the checkpoint overwrites."""
    m = config.model
    runtime = _runtime(config)
    if m.init == "hf":
        directory = resolve_checkpoint_dir(m.hf_checkpoint)
        if resuming:
            model_config = WhisperConfig.from_json_file(directory / "config.json", **runtime)
            return create_model(model_config, mesh=mesh, seed=config.seed), load.tokenizer_for(
                directory, model_config
            )
        model, model_config = load_hf_checkpoint(directory, mesh=mesh, **runtime)
        return model, load.tokenizer_for(directory, model_config)
    if m.init == "scratch":
        model_config = WhisperConfig.from_variant(m.variant, **dict(m.arch_overrides), **runtime)
        tokenizer = text.Tokenizer.from_assets(text.num_languages_for_vocab_size(model_config.vocab_size))
        model = create_model(model_config, mesh=mesh, seed=config.seed)
        if m.conv_init_std:
            _redraw_input_convs(model, m.conv_init_std, config.seed)
        return model, tokenizer
    if m.init == "ours":
        if not m.init_from:
            raise ValueError("config.model.init='ours' needs config.model.init_from=<a training workdir>.")
        if resuming:
            model_config = WhisperConfig.from_json_file(Path(m.init_from) / load.MODEL_CONFIG_FILE, **runtime)
            tokenizer = text.Tokenizer.from_pretrained(Path(m.init_from) / load.TOKENIZER_DIR)
            return create_model(model_config, mesh=mesh, seed=config.seed), tokenizer
        model, _, tokenizer = load.load_model(m.init_from, mesh=mesh, step="latest", **runtime)
        return model, tokenizer
    raise ValueError(f"config.model.init={m.init!r} unknown; choose 'hf', 'scratch' or 'ours'.")


# ---------------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------------
def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> str:
    """The TFDS data_dir to read; with `data.synthetic.enabled`, first makes the synthetic set there.

    Only process 0 generates and builds (the others wait for it), so pods share one build on a shared disk.
    """
    synthetic = config.data.synthetic
    if not synthetic.enabled:
        return config.data.data_dir
    data_dir = config.data.data_dir or str(workdir / "data" / "tfds")
    if jax.process_index() == 0:
        demo.ensure_demo_data(
            synthetic.root or workdir / "data" / "synthetic",
            data_dir,
            num_train=synthetic.num_train,
            num_valid=synthetic.num_valid,
            num_test=synthetic.num_test,
            seed=synthetic.seed,
            max_events=synthetic.max_events,
            config=config.data.mel_config,
            workers=synthetic.workers,
        )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("synthetic data built")
    return data_dir


# ---------------------------------------------------------------------------------------------------------------
# Validation with the shared jitted beam search.
# ---------------------------------------------------------------------------------------------------------------
def _eval_specs(config: ml_collections.ConfigDict, data_dir: str) -> list[pipeline.DatasetSpec]:
    """One spec per validation set (its first `eval.max_clips` clips; 0 = all)."""
    return [
        pipeline.DatasetSpec(
            name=name,
            data_dir=data_dir,
            split=split,
            config=config.data.mel_config,
            max_clips=config.eval.max_clips,
        )
        for name, split in config.eval.datasets.items()
    ]


def validate(
    step: int,
    specs: list[pipeline.DatasetSpec],
    decode_fn: decode.DecodeFn,
    model_state: Any,
    tokenizer: text.Tokenizer,
    mesh: jax.sharding.Mesh,
    config: ml_collections.ConfigDict,
    writer: MetricWriter,
    *,
    max_frames: int = 0,
    predictions_dir: Path | None = None,
) -> dict[str, float]:
    """Caption each validation set with its own prefix and score it; returns `{dataset/metric: value}`.

    With `predictions_dir` (the final validation), process 0 also writes `<dataset>_<split>.csv` there
    (`file_name,caption_predicted`) and `<dataset>_<split>_metrics.json` (corpus and per-clip scores).
    """
    results: dict[str, float] = {}
    for spec in specs:
        batches = pipeline.eval_dataset(
            spec,
            tokenizer,
            global_batch_size=config.eval.batch_size,
            max_length=config.eval.max_length,
            max_frames=max_frames,
        )
        predictions = inference.caption_batches(
            decode_fn, model_state, batches, tokenizer, mesh, desc=f"validate {spec.name}"
        )
        captions = {p.file_name: p.caption for p in predictions}
        references = {p.file_name: list(p.references) for p in predictions}
        scores = metrics.score(captions, references, preset=config.eval.metrics)
        if spec.prefix.rstrip().endswith("keywords:"):
            scores = dataclasses.replace(
                scores, corpus={**scores.corpus, **metrics.score_keywords(captions, references).corpus}
            )
        for key, value in scores.corpus.items():
            if value is not None:
                results[f"{spec.name}/{key}"] = value
        writer.write_samples(
            step,
            spec.name,
            [
                {"file_name": p.file_name, "prediction": p.caption, "references": " | ".join(p.references)}
                for p in predictions[: config.eval.num_samples_logged]
            ],
        )
        logging.info("step %d %s:\n%s", step, spec.name, metrics.format_table(scores))
        if predictions_dir is not None and jax.process_index() == 0:
            predictions_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{spec.name}_{spec.split}"
            metrics.write_predictions_csv(predictions_dir / f"{stem}.csv", captions)
            metrics.write_json(
                predictions_dir / f"{stem}_metrics.json", scores, step=step, prefix=spec.prefix
            )
    return results


# ---------------------------------------------------------------------------------------------------------------
# Throughput bookkeeping.
# ---------------------------------------------------------------------------------------------------------------
def _peak_flops(config: ml_collections.ConfigDict) -> float | None:
    if config.log.peak_tflops_per_device:
        return config.log.peak_tflops_per_device * 1e12
    kind = jax.devices()[0].device_kind
    for name, flops in _PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


def _step_flops(compiled: Any) -> float | None:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


class _Preemption:
    """SIGTERM (pre-emption) sets a flag; the loop saves and exits cleanly at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("SIGTERM received: saving a checkpoint and exiting after this step.")
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


# ---------------------------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------------------------
def run(
    config: ml_collections.ConfigDict, workdir: str | Path, *, on_step: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Train per `config` in `workdir`, resuming from its latest checkpoint; returns the last validation."""
    workdir = Path(workdir).expanduser().absolute()
    is_main = jax.process_index() == 0
    logging.info(
        "audiocap-jax train: process %d/%d, %d devices (%s), workdir %s\n%s",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
        workdir,
        config,
    )
    if config.batch_size % config.accum_steps:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by accum_steps {config.accum_steps}; "
            "set --config.batch_size to a multiple of --config.accum_steps."
        )

    # --- Mesh and model -------------------------------------------------------------------------------------
    mesh = sharding.make_mesh(dict(config.mesh))
    data_parallel = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    for key, size in (
        ("batch_size", config.batch_size // config.accum_steps),
        ("eval.batch_size", config.eval.batch_size),
    ):
        if size % data_parallel:
            raise ValueError(
                f"{key} {size} (per micro-batch) does not split over the {data_parallel} data-parallel devices of "
                f"mesh {dict(mesh.shape)}; set --config.{key} to a multiple of {data_parallel}."
            )
    ckpt = checkpoint.Checkpointer(
        workdir / load.CHECKPOINT_DIR,
        keep_last=config.checkpoint.keep_last,
        keep_best=config.checkpoint.keep_best,
        async_save=config.checkpoint.async_save,
    )
    resuming = bool(ckpt.all_steps())
    model, tokenizer = build_model(config, mesh, resuming)
    model_frames = model.config.num_frames  # the stored 30 s log-mels are cropped to the model's window
    if is_main:
        load.save_run_files(workdir, model.config, tokenizer)
    graphdef, params, frozen = training.split_model(model)
    sharding.log_sharding_overview(params, mesh)

    # --- Optimizer and state --------------------------------------------------------------------------------
    o = config.optim
    schedule = training.make_schedule(
        lr=o.lr,
        warmup_steps=o.warmup_steps,
        total_steps=config.total_steps,
        decay=o.schedule,
        end_lr_fraction=o.end_lr_fraction,
    )
    tx = training.make_optimizer(
        params,
        schedule,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        train_only=tuple(o.train_only),
        freeze=tuple(o.freeze),
    )
    state = training.init_train_state(params, frozen, tx, config.seed, mesh)
    del model, params, frozen

    # --- Data -----------------------------------------------------------------------------------------------
    data_dir = prepare_data(config, workdir)
    mixture = pipeline.mixture_specs(dict(config.data.mixture), data_dir, config.data.mel_config)
    train_data = pipeline.train_dataset(
        mixture,
        tokenizer,
        global_batch_size=config.batch_size,
        max_length=config.data.max_length,
        seed=config.seed,
        train_prompt=config.data.train_prompt,
        augment_config=pipeline.AugmentConfig(**dict(config.data.augment)),
        max_frames=model_frames,
        read=pipeline.ReadConfig(
            num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch_batches
        ),
    )
    train_iter = pipeline.GlobalBatchIterator(train_data, mesh)

    # --- Resume (1. latest complete checkpoint of this workdir; else the init chosen above) -------------------
    writer = MetricWriter(
        workdir,
        wandb_settings=dict(
            mode=config.log.wandb_mode,
            project=config.log.project,
            group=config.log.group,
            name=config.log.name,
            tags=config.log.tags,
        ),
        config=config.to_dict(),
    )
    restored = ckpt.restore_latest(checkpoint.abstract_like(state)) if resuming else None
    if restored is not None:
        start_step, state, data_state = restored
        train_iter.set_state(data_state)
        writer.truncate_after(start_step)
        logging.info("Resumed from step %d in %s", start_step, ckpt.directory)
    else:
        start_step = 0

    # --- The jitted step ------------------------------------------------------------------------------------
    train_step = training.jit_train_step(graphdef, tx, schedule, state, mesh, config.accum_steps)
    decode_fn = decode.make_decode_fn(
        nnx.merge(graphdef, state.params, state.frozen),
        decode.DecodeSettings(
            eos_id=tokenizer.specials.eot, num_beams=config.eval.num_beams, max_length=config.eval.max_length
        ),
        mesh,
    )
    eval_specs = _eval_specs(config, data_dir)

    # --- Loop -----------------------------------------------------------------------------------------------
    preemption = _Preemption()
    compiled, step_flops, peak = None, None, _peak_flops(config)
    last_results: dict[str, float] = {}
    timer = time.perf_counter()
    steps_since_log = 0
    progress = tqdm(
        total=config.total_steps, initial=start_step, desc="train", disable=not is_main, unit="step"
    )
    step = start_step
    while step < config.total_steps:
        data_start = time.perf_counter()
        batch = next(train_iter)
        batch = {k: batch[k] for k in training.TRAIN_KEYS}
        data_time = time.perf_counter() - data_start
        if compiled is None:
            compile_start = time.perf_counter()
            with jax.set_mesh(mesh):
                compiled = train_step.lower(state, batch).compile()
            step_flops = _step_flops(compiled)
            compile_time = time.perf_counter() - compile_start
            logging.info(
                "Train step compiled in %.1f s; %.3g FLOP per step (XLA).",
                compile_time,
                step_flops or float("nan"),
            )
            writer.write(step, {"compile_seconds": compile_time})
        with jax.set_mesh(mesh), jax.transfer_guard("disallow"):
            state, step_metrics = compiled(state, batch)
        step += 1
        steps_since_log += 1
        progress.update(1)
        if on_step is not None:
            on_step(step)

        if step % config.log.every_steps == 0 or step == config.total_steps:
            values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(
                    f"Loss is {values['loss']} at step {step} (between steps {step - steps_since_log + 1} and {step}); "
                    "lower --config.optim.lr or check the data."
                )
            elapsed = time.perf_counter() - timer
            step_time = elapsed / steps_since_log
            values |= {
                "step_seconds": step_time,
                "data_seconds": data_time,
                "examples_per_second": config.batch_size / step_time,
                "tokens_per_second": values["tokens"] / step_time,
            }
            if step_flops:
                values["tflops_per_second"] = step_flops / step_time / 1e12
                if peak:
                    values["mfu"] = step_flops / step_time / (peak * jax.device_count())
            writer.write(step, values)
            progress.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['token_accuracy']:.3f}")
            timer, steps_since_log = time.perf_counter(), 0

        is_last = step == config.total_steps
        score = None
        if eval_specs and config.eval.every_steps > 0 and (step % config.eval.every_steps == 0 or is_last):
            eval_start = time.perf_counter()
            model_state = training.full_state(graphdef, state.params, state.frozen)
            last_results = validate(
                step,
                eval_specs,
                decode_fn,
                model_state,
                tokenizer,
                mesh,
                config,
                writer,
                max_frames=model_frames,
                predictions_dir=workdir / PREDICTIONS_DIR if is_last else None,
            )
            last_results["eval_seconds"] = time.perf_counter() - eval_start
            writer.write(step, last_results)
            _, score = metrics.select_best_metric(last_results, config.eval.best_metric)
            timer = time.perf_counter()
        if step % config.checkpoint.every_steps == 0 or is_last or preemption.requested or score is not None:
            ckpt.save(step, state, train_iter.get_state(), best_score=score)
        if preemption.requested:
            break

    # --- Finish ---------------------------------------------------------------------------------------------
    progress.close()
    ckpt.wait()
    preemption.restore()
    if is_main and config.checkpoint.export_hf and step == config.total_steps:
        from audiocap_jax.model.hf import export

        best = ckpt.best_step()
        if best is not None and best != step:
            logging.info("Exporting the best checkpoint (step %d) rather than the last.", best)
        model, _, _ = (
            load.load_model(workdir, step="best")
            if best is not None
            else (nnx.merge(graphdef, state.params, state.frozen), None, None)
        )
        export(model, tokenizer, workdir / "hf_export")
    ckpt.close()
    writer.close()
    if is_main:
        # A run resumed at its end validates nothing new: report its last validation from the log.
        final = last_results or report.last_validation(read_metrics(workdir))
        (workdir / report.FINAL_METRICS_FILE).write_text(json.dumps({"step": step, **final}, indent=1))
        report.plot_metrics(workdir)
        logging.info("Done at step %d. Workdir: %s", step, workdir)
    return last_results


def _maybe_initialize_distributed() -> None:
    if _COORDINATOR.value is not None:
        # Cross-process collectives for CPU devices (local multi-process runs); GPUs/TPUs use their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; settings go through --config.<key>=<value>.")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("Both --config=configs/<name>.py and --workdir=DIR are required.")
    _maybe_initialize_distributed()
    preflight.check_train(_CONFIG.value, _WORKDIR.value, jax.device_count())  # before the workdir exists
    np.set_printoptions(precision=4)
    run(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        print(report.summary(_WORKDIR.value))


if __name__ == "__main__":
    cli.run(main, config_flag="config", default_config=str(cli.CONFIGS_DIR / "base.py"))
