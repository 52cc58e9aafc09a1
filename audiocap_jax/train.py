"""Train a Whisper captioner: `python -m audiocap_jax.train --config=configs/<x>.py --workdir=DIR`.

`run` reads as its stages, numbered in this order below: `setup` (mesh, checkpoints, writer) -> `build_state` (the
model in the resume order of `load.build_model`, optimizer, train state restored or fresh) -> `build_data` (train
stream at its saved position, validation with the shared decoding: search + reranker) -> `compile_step` (the
jitted step compiled on the first batch, its FLOPs) -> `train_loop` (log, validate, checkpoint, agreed
pre-emption; returns the final state) -> `finish` (HF export, final report). Overrides such as
`--config.optim.lr=4e-6` are type-checked by ml_collections; unknown keys fail at start.

The run holds the workdir's lock from after the pre-flight checks to its end (`hold_workdir`,
`lock.py`): a second training into the same workdir stops with exit 2 before it writes anything.

Every stage works with any number of processes (one per host, each with its own data shard): validation
decodes padded global batches and gathers the captions, the export gathers the weights, and pre-emption is
agreed: a SIGTERM reaching any process stops all of them after the same step, each saves that step and the
command exits with `cli.EXIT_PREEMPTED`. Waits for the other processes carry a timeout whose message names
the process and the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from audiocap_jax import cli, preflight, runtime, text
from audiocap_jax.data import demo, pipeline
from audiocap_jax.decoding import evaluator, inference
from audiocap_jax.metrics import scorecard, scoring
from audiocap_jax.model import lora, sharding
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.rundir import checkpoint, layout, load, lock, mfu, summary, train_step
from audiocap_jax.rundir.writer import MetricWriter, read_metrics

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
runtime.define_flags()


# ---------------------------------------------------------------------------------------------------------------
# Waiting for the other processes.
# ---------------------------------------------------------------------------------------------------------------
class Preemption:
    """SIGTERM on any process stops every process after the same step.

    The handler only sets a local flag. At each step boundary a process that saw the signal publishes it under
    that step in the coordination service's key-value store, all processes meet at the step's barrier, and
    then each reads that step's keys: a key written before the barrier is seen by everyone after it, so all
    processes agree on the step. One process: the local flag.
    """

    def __init__(self) -> None:
        self._sigterm = runtime.SigtermFlag("every process saves a checkpoint and stops after this step.")

    def agreed(self, step: int) -> bool:
        """Whether the run stops after `step` (the same answer on every process)."""
        if jax.process_count() == 1:
            return self._sigterm.requested
        client = runtime.coordination_client()
        if self._sigterm.requested:
            client.key_value_set(f"audiocap/preempt/{step}/{jax.process_index()}", "SIGTERM")
        runtime.barrier("step", step)
        return bool(client.key_value_dir_get(f"audiocap/preempt/{step}/"))

    def __enter__(self) -> Preemption:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sigterm.restore()


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: setup.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    config: ml_collections.ConfigDict
    workdir: Path
    mesh: jax.sharding.Mesh
    checkpoints: checkpoint.Checkpointer
    writer: MetricWriter


def setup(config: ml_collections.ConfigDict, workdir: str | Path) -> Setup:
    """Banner, mesh, the run's checkpoints and metric writer (the config was checked by `run`'s preflight)."""
    workdir = Path(workdir).expanduser().absolute()
    logging.info(
        "audiocap-jax train: process %d/%d, %d devices (%s), workdir %s",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
        workdir,
    )
    logging.vlog(1, "Config:\n%s", config)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / layout.RUN_CONFIG_FILE).write_text(config.to_json_best_effort(indent=1) + "\n")
    mesh = sharding.make_mesh(dict(config.mesh))
    checkpoints = checkpoint.Checkpointer(
        workdir / layout.CHECKPOINT_DIR,
        keep_last=config.checkpoint.keep_last,
        keep_best=config.checkpoint.keep_best,
        async_save=config.checkpoint.async_save,
    )
    log = config.log
    writer = MetricWriter(
        workdir,
        wandb_settings=dict(
            mode=log.wandb_mode, project=log.project, group=log.group, name=log.name, tags=log.tags
        ),
        config=config.to_dict(),
    )
    return Setup(config, workdir, mesh, checkpoints, writer)


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: model, optimizer and train state (restored or fresh).
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Trainee:
    """The model being trained and what updates it."""

    graphdef: nnx.GraphDef
    model_config: WhisperConfig
    tokenizer: text.Tokenizer
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    selects: Any  # NNX filter of the trained weights (train_step.trainable)
    state: train_step.TrainState  # where training starts (restored or fresh); donated to the first step
    start_step: int
    data_state: dict[str, Any] | None  # the train stream's saved position when resuming


def build_state(s: Setup) -> Trainee:
    """The model in `load.build_model`'s resume order (a new run wraps it with `config.model.lora`'s
    adapters; a resumed one has them from its run files), then the optimizer and the train state: restored
    from this workdir's latest checkpoint (into abstract arrays, nothing allocated twice) or fresh."""
    config = s.config
    adapters = lora.LoRASpec.from_config(config.model.lora)
    built = load.build_model(
        load.ModelInit.from_config(config), mesh=s.mesh, resume_from=s.checkpoints, run_files=s.workdir
    )
    logging.info("Model: %s", built.origin)
    # A resumed model already holds the adapters its checkpoints were saved with (preflight.check_resume made
    # sure they are the config's).
    if not built.resume:
        lora.apply_lora(built.model, adapters, seed=config.seed)
    if jax.process_index() == 0:
        load.save_run_files(s.workdir, built.config, built.tokenizer, adapters)
    graphdef, weights = nnx.split(built.model)
    sharding.log_sharding_overview(weights, s.mesh, s.workdir / layout.SHARDING_TABLE_FILE)
    updater = train_step.updater_from_config(config, weights, adapters)
    logging.info("%s", train_step.describe_trainable(weights, updater.selects, updater.settings))
    tx, schedule, selects = updater.tx, updater.schedule, updater.selects
    start_step, data_state = 0, None
    if built.resume:
        restored = s.checkpoints.restore_latest(train_step.abstract_train_state(weights, tx, selects, s.mesh))
        if restored is None:
            raise FileNotFoundError(
                f"No checkpoint in {s.checkpoints.directory} can be restored (see the warnings above); move the "
                "folder aside to start over."
            )
        start_step, state, data_state = restored
        s.writer.truncate_after(start_step)
        logging.info("Resumed from step %d in %s", start_step, s.checkpoints.directory)
    else:
        state = train_step.init_train_state(weights, tx, selects, s.mesh)
    return Trainee(
        graphdef, built.config, built.tokenizer, tx, schedule, selects, state, start_step, data_state
    )


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: data (train stream and validation).
# ---------------------------------------------------------------------------------------------------------------
def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> str:
    """The TFDS data_dir to read; with `data.synthetic.enabled`, first makes the synthetic set there.

    Only process 0 generates and builds (the others wait for it), so pods share one build on a shared disk.
    """
    synthetic = config.data.synthetic
    if not synthetic.enabled:
        return config.data.data_dir
    data_dir = config.data.data_dir or str(workdir / layout.TFDS_DIR)
    if jax.process_index() == 0:
        demo.ensure_demo_data(
            synthetic.root or workdir / layout.SYNTHETIC_DIR,
            data_dir,
            num_train=synthetic.num_train,
            num_valid=synthetic.num_valid,
            num_test=synthetic.num_test,
            seed=synthetic.seed,
            max_events=synthetic.max_events,
            config=config.data.mel_config,
            workers=synthetic.workers,
        )
    runtime.barrier("synthetic data built", 0, timeout_seconds=max(runtime.COLLECTIVE_TIMEOUT_SECONDS, 3600))
    return data_dir


class Validation:
    """Training's validation: each configured dataset captioned with its own prefix by the shared search and
    scored by the one evaluator (`evaluator.evaluate_split`, as `evaluate --checkpoint` runs it), logged; the
    best-checkpoint score. SPICE that cannot run is announced once per run (with its fix), not in every table."""

    def __init__(self, s: Setup, t: Trainee, data_dir: str):
        self._s, self._t = s, t
        config = s.config
        # The shared decoding (config.eval's strategy, search and reranker) bound to the model's structure.
        self._decoder = inference.Decoder.from_config(config.eval, t.graphdef, t.tokenizer, None, s.mesh)
        self.specs = [
            pipeline.DatasetSpec(
                name=name,
                data_dir=data_dir,
                split=split,
                config=config.data.mel_config,
                max_clips=config.eval.max_clips,
            )
            for name, split in config.eval.datasets.items()
        ]
        self._spice: str | bool = "auto"

    def due(self, step: int) -> bool:
        every = self._s.config.eval.every_steps
        return bool(self.specs) and every > 0 and (step % every == 0 or step == self._s.config.total_steps)

    def run(self, step: int, weights: Any, write: bool = False) -> dict[str, float]:
        """Scores `{dataset/metric: value}`; with `write`, process 0 writes each set's captions
        (`predictions/<dataset>_<split>.csv`) and scores (`<dataset>_<split>_metrics.json`) in the workdir."""
        results: dict[str, float] = {}
        for spec in self.specs:
            result = self._evaluate(spec, step, weights, write)
            scores = result.scores
            if "spice" in scores.unavailable and self._spice == "auto":
                logging.warning(
                    "SPICE and SPIDEr are not computed in this run: %s", scores.unavailable["spice"]
                )
                self._spice = False
            results |= {f"{spec.name}/{k}": v for k, v in scores.corpus.items() if v is not None}
            self._log(step, spec, result, results)
        return results

    def _evaluate(
        self, spec: pipeline.DatasetSpec, step: int, weights: Any, write: bool
    ) -> evaluator.SplitResult:
        config, t = self._s.config, self._t
        batches = pipeline.eval_dataset(
            spec,
            t.tokenizer,
            global_batch_size=config.eval.batch_size,
            max_length=config.eval.max_length,
            max_frames=t.model_config.num_frames,
        )
        output = None
        if write and jax.process_index() == 0:
            directory = self._s.workdir / layout.PREDICTIONS_DIR
            stem = f"{spec.name}_{spec.split_or(pipeline.EVAL_SPLITS)}"
            output = evaluator.Output(
                directory / f"{stem}.csv",
                directory / f"{stem}_metrics.json",
                {"step": step, "prefix": spec.prefix},
            )
        options = scoring.ScoreOptions(
            keywords=scoring.keyword_style(spec.prefix), spice=self._spice, preset=config.eval.metrics
        )
        return evaluator.evaluate_split(
            self._decoder,
            weights,
            batches,
            t.tokenizer,
            self._s.mesh,
            options,
            desc=f"validate {spec.name}",
            output=output,
            nbest=False,
        )

    def _log(
        self, step: int, spec: pipeline.DatasetSpec, result: evaluator.SplitResult, results: dict[str, float]
    ) -> None:
        """The first clips' captions to the metric writer, the headline scores to the log (the table at -v 1)."""
        samples = result.predictions[: self._s.config.eval.num_samples_logged]
        self._s.writer.write_samples(
            step,
            spec.name,
            [
                {"file_name": p.file_name, "prediction": p.caption, "references": " | ".join(p.references)}
                for p in samples
            ],
        )
        logging.info(
            "step %d %s (%d clips): %s",
            step,
            spec.name,
            result.scores.num_clips,
            summary.headline(results, spec.name),
        )
        table = scorecard.format_table(dataclasses.replace(result.scores, unavailable={}))
        logging.vlog(1, "step %d %s:\n%s", step, spec.name, table)


@dataclasses.dataclass
class Data:
    train: pipeline.GlobalBatchIterator
    validation: Validation


def build_data(s: Setup, t: Trainee) -> Data:
    """The train stream (this process's shard, at its saved position when resuming) and the validation."""
    config = s.config
    data_dir = prepare_data(config, s.workdir)
    mixture = pipeline.mixture_specs(dict(config.data.mixture), data_dir, config.data.mel_config)
    train_data = pipeline.train_dataset(
        mixture,
        t.tokenizer,
        global_batch_size=config.batch_size,
        max_length=config.data.max_length,
        seed=config.seed,
        train_prompt=config.data.train_prompt,
        augment_config=pipeline.AugmentConfig(**dict(config.data.augment)),
        max_frames=t.model_config.num_frames,
        read=pipeline.ReadConfig(
            num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch_batches
        ),
    )
    train = pipeline.GlobalBatchIterator(train_data, s.mesh)
    if t.data_state is not None:
        train.set_state(t.data_state)
    return Data(train, Validation(s, t, data_dir))


# ---------------------------------------------------------------------------------------------------------------
# Stage 4: the train step, compiled on the first batch.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CompiledStep:
    fn: Any  # (state, batch) -> (state, metrics), the state donated
    flops: float  # analytic model FLOPs of one optimizer step (audiocap_jax.rundir.mfu)
    first: tuple[dict[str, Any], float]  # the batch it was compiled on (the loop's first), seconds to load it


def _timed_batches(train: pipeline.GlobalBatchIterator) -> Iterator[tuple[dict[str, Any], float]]:
    """(the step's keys of the next batch, seconds spent loading it), for ever."""
    while True:
        start = time.perf_counter()
        batch = {k: v for k, v in next(train).items() if k in train_step.TRAIN_KEYS}
        yield batch, time.perf_counter() - start


def compile_step(s: Setup, t: Trainee, data: Data) -> CompiledStep | None:
    """The step jitted with the state's shardings (donated) and compiled for the first batch's shapes, and
    its FLOPs; None when no step is left (a run resumed at its end compiles nothing)."""
    if t.start_step >= s.config.total_steps:
        return None
    step_fn = train_step.jit_train_step(
        t.graphdef, t.tx, t.schedule, t.selects, t.state, s.mesh, s.config.accum_steps, s.config.seed
    )
    batch, load_seconds = next(_timed_batches(data.train))
    start = time.perf_counter()
    with jax.set_mesh(s.mesh):
        compiled = step_fn.lower(t.state, batch).compile()
    # MaxText's analytic count, not XLA's cost_analysis (which counts a loop body once and one device's share).
    flops = mfu.model_flops_per_step(
        t.model_config,
        batch_size=s.config.batch_size,
        target_length=batch["decoder_input_ids"].shape[1],
    )
    seconds = time.perf_counter() - start
    logging.info("Train step compiled in %.1f s; %.3g model FLOP per step (analytic).", seconds, flops)
    s.writer.write(t.start_step, {"compile_seconds": seconds})
    # Compile times differ between hosts; the first step's collectives open the cross-process connections,
    # whose own connect timeout (gloo's, on CPU) is short, so every process starts that step together.
    runtime.barrier("train step compiled", t.start_step)
    return CompiledStep(compiled, flops, (batch, load_seconds))


# ---------------------------------------------------------------------------------------------------------------
# Stage 5: the loop.
# ---------------------------------------------------------------------------------------------------------------
class _Throughput:
    """Step and data-loading times averaged over the logging window, and the FLOP-based rates."""

    def __init__(self, config: ml_collections.ConfigDict, step_flops: float):
        self._batch_size = config.batch_size
        self._peak = mfu.peak_flops_per_device(
            jax.devices()[0].device_kind, config.log.peak_tflops_per_device
        )
        self._step_flops = step_flops
        self.restart()

    def restart(self) -> None:
        """Start a new window (after logging, and after a validation so its time is not counted)."""
        self._start, self._data_seconds, self._steps = time.perf_counter(), 0.0, 0

    def add(self, data_seconds: float) -> None:
        self._data_seconds += data_seconds
        self._steps += 1

    def window(self, tokens: float) -> dict[str, float]:
        steps = max(self._steps, 1)
        step_time = (time.perf_counter() - self._start) / steps
        values = {
            "step_seconds": step_time,
            "data_seconds": self._data_seconds / steps,
            "examples_per_second": self._batch_size / step_time,
            "tokens_per_second": tokens / step_time,
        }
        if self._step_flops:
            values["model_flops_per_step"] = self._step_flops
            values["tflops_per_second"] = self._step_flops / step_time / 1e12
            if self._peak:
                values["mfu"] = mfu.mfu(self._step_flops, step_time, jax.device_count(), self._peak)
        return values


@dataclasses.dataclass
class LoopEnd:
    step: int
    results: dict[str, float]  # the last validation's scores ({} when none ran)
    preempted: bool
    state: train_step.TrainState  # after the last step


def train_loop(
    s: Setup, t: Trainee, data: Data, compiled: CompiledStep | None, preemption: Preemption
) -> LoopEnd:
    """Steps from `t.start_step` to `total_steps` (`t.state` is donated to the first): log every
    `log.every_steps`, validate, checkpoint, and stop early (every process at the same step, checkpoint saved)
    when any process got SIGTERM."""
    config, state, step = s.config, t.state, t.start_step
    progress = tqdm(
        total=config.total_steps, initial=step, desc="train", disable=jax.process_index() != 0, unit="step"
    )
    if compiled is None:  # resumed at its end: nothing to train
        progress.close()
        return LoopEnd(step, {}, False, state)
    throughput, results, preempted = _Throughput(config, compiled.flops), {}, False
    batches = itertools.chain([compiled.first], _timed_batches(data.train))
    while step < config.total_steps and not preempted:
        batch, data_seconds = next(batches)
        throughput.add(data_seconds)
        with jax.set_mesh(s.mesh), jax.transfer_guard("disallow"):
            state, step_metrics = compiled.fn(state, batch)
        step += 1
        progress.update(1)
        if step % config.log.every_steps == 0 or step == config.total_steps:
            _log_window(s, step, step_metrics, throughput, progress)
        score = None
        if data.validation.due(step):
            results, score = _validate(s, data.validation, step, state.weights)
            throughput.restart()
        preempted = preemption.agreed(step)
        if (
            step % config.checkpoint.every_steps == 0
            or step == config.total_steps
            or preempted
            or score is not None
        ):
            s.checkpoints.save(step, state, data.train.get_state(), best_score=score)
    progress.close()
    return LoopEnd(step, results, preempted, state)


def _log_window(s: Setup, step: int, step_metrics: Any, throughput: _Throughput, progress: tqdm) -> None:
    """The step's metrics and the window's throughput to the writer; a loss that is not finite stops the run."""
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    if not math.isfinite(values["loss"]):
        raise FloatingPointError(
            f"Loss is {values['loss']} at step {step} (in the {s.config.log.every_steps} steps up to it); "
            "lower --config.optim.lr or check the data."
        )
    s.writer.write(step, values | throughput.window(values["tokens"]))
    progress.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['token_accuracy']:.3f}")
    throughput.restart()


def _validate(
    s: Setup, validation: Validation, step: int, weights: Any
) -> tuple[dict[str, float], float | None]:
    """(scores with the seconds they took, the best-checkpoint score); the last step's predictions are
    written to the workdir."""
    eval_start = time.perf_counter()
    results = validation.run(step, weights, write=step == s.config.total_steps)
    results["eval_seconds"] = time.perf_counter() - eval_start
    s.writer.write(step, results)
    _, score = scoring.select_best_metric(results, s.config.eval.best_metric)
    return results, score


# ---------------------------------------------------------------------------------------------------------------
# Stage 6: finish.
# ---------------------------------------------------------------------------------------------------------------
def _to_host(x: jax.Array) -> np.ndarray:
    """The whole of a global array on this host (a collective with several processes)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def export_hf(s: Setup, t: Trainee, end: LoopEnd) -> None:
    """Write `hf_export/` from the best checkpoint (else the last step). Every process restores and gathers
    the weights together; process 0 writes the files."""
    from audiocap_jax.model.hf import export

    best = s.checkpoints.best_step()
    graphdef, weights = t.graphdef, end.state.weights
    if best is not None and best != end.step:
        logging.info("Exporting the best checkpoint (step %d) rather than the last.", best)
        init = load.ModelInit.from_path(s.workdir, step=best, **{"param_dtype": t.model_config.param_dtype})
        # LoRA adapters come back merged, so the model's structure can differ from the trained one.
        graphdef, weights = nnx.split(load.build_model(init, mesh=s.mesh).model)
    runtime.barrier("export", end.step)
    host_weights = jax.tree.map(_to_host, weights)
    if jax.process_index() == 0:
        export(nnx.merge(graphdef, host_weights), t.tokenizer, s.workdir / layout.HF_EXPORT_DIR)


def finish(s: Setup, t: Trainee, end: LoopEnd) -> None:
    """Wait for the checkpoints, export, write the final report; a pre-empted run only says how to resume."""
    s.checkpoints.wait()
    if end.preempted:
        logging.warning(
            "Pre-empted: stopped at step %d with its checkpoint saved; rerun the same command to resume.",
            end.step,
        )
    elif s.config.checkpoint.export_hf and end.step == s.config.total_steps:
        export_hf(s, t, end)
    s.checkpoints.close()
    s.writer.close()
    if jax.process_index() == 0 and not end.preempted:
        # A run resumed at its end validates nothing new: report its last validation from the log.
        final = end.results or summary.last_validation(read_metrics(s.workdir))
        (s.workdir / layout.FINAL_METRICS_FILE).write_text(json.dumps({"step": end.step, **final}, indent=1))
        summary.plot_metrics(s.workdir)
        logging.info("Done at step %d. Workdir: %s", end.step, s.workdir)
    runtime.barrier("finish", end.step)


@contextlib.contextmanager
def hold_workdir(workdir: str | Path) -> Iterator[None]:
    """The run holds its workdir's lock (`workdir_lock`): process 0 takes it, and every process learns the
    outcome through the coordination service, so a refused pod stops whole, each process with the same error."""
    held, refusal = None, None
    if jax.process_index() == 0:
        try:
            held = lock.WorkdirLock.acquire(workdir)
        except cli.UserError as error:
            refusal = [error.problem, error.fix]
    if jax.process_count() > 1:
        client, key = runtime.coordination_client(), "audiocap/workdir_lock"
        if jax.process_index() == 0:
            client.key_value_set(key, json.dumps(refusal))
        else:
            refusal = json.loads(
                client.blocking_key_value_get(key, runtime.COLLECTIVE_TIMEOUT_SECONDS * 1000)
            )
    if refusal is not None:
        raise cli.UserError(*refusal)
    try:
        yield
    finally:
        if held is not None:
            held.release()


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> LoopEnd:
    """Train per `config` in `workdir`, resuming from its latest checkpoint.

    Every process checks the config first (`preflight.check_train`: batch sizes against accumulation and the
    mesh's data-parallel devices, a resumed model against the config, among the rest), before the workdir is
    created; then the run takes the workdir's lock, and holds it until it ends, however it ends.
    """
    preflight.check_train(config, workdir, jax.device_count())
    with hold_workdir(workdir):
        # Again under the lock: a run that held it until now may have saved the workdir's first checkpoints.
        preflight.check_resume(config, workdir)
        s = setup(config, workdir)
        trainee = build_state(s)
        data = build_data(s, trainee)
        # From the compilation on, a SIGTERM stops the run after a step every process agrees on.
        with Preemption() as preemption:
            compiled = compile_step(s, trainee, data)
            end = train_loop(s, trainee, data, compiled, preemption)
        finish(s, trainee, end)
    return end


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; settings go through --config.<key>=<value>.")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("Both --config=configs/<name>.py and --workdir=DIR are required.")
    runtime.start()
    np.set_printoptions(precision=4)
    end = run(_CONFIG.value, _WORKDIR.value)
    if end.preempted:
        sys.exit(cli.EXIT_PREEMPTED)
    if jax.process_index() == 0:
        print(summary.describe(_WORKDIR.value))


if __name__ == "__main__":
    cli.run(main, config_flag="config", default_config=str(cli.CONFIGS_DIR / "base.py"))
