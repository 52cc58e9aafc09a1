"""Score captions with the standard captioning metrics (pycocoevalcap-identical), or predict and score in one go.

    # score a predictions CSV against Clotho references (or an AudioFolder metadata.jsonl)
    python -m audiocap_jax.evaluate --predictions=out.csv --references=clotho_captions_evaluation.csv

    # caption a TFDS split with the shared search, then score it (also writes the N-best CSV)
    python -m audiocap_jax.evaluate --checkpoint=RUN_OR_HF_DIR --dataset=clotho --split=evaluation \
        --data_dir=TFDS_DIR [--config-file=configs/predict.py --config-file.num_beams=5]

    # a decoding sweep: the model and split loaded once, one row per named setting in sweep.csv
    python -m audiocap_jax.evaluate --checkpoint=RUN --dataset=clotho --split=validation \
        --sweep=configs/sweeps/decoding.py

    # the DCASE 2024 ranking metrics with bootstrap 95% intervals (FENSE needs the models once:
    # python -m audiocap_jax.metrics.dcase download)
    python -m audiocap_jax.evaluate --predictions=out.csv --references=... --metrics=dcase2024 --bootstrap=1000

Presets (--metrics): coco (today's set), dcase2023 (+ SPIDEr-FL, FER), dcase2024 (FENSE first, + SBERT-sim, FER,
SPIDEr-FL, Vocab). Several rows per clip in the predictions CSV are an N-best list: the first row is scored,
and SPIDEr-max is added (likewise with --checkpoint and num_return_sequences > 1). Prints a table and writes a
JSON file (corpus scores, intervals, unavailable metrics with the fix, warnings, per-clip scores incl. CIDEr-D).
`audioset > keywords` outputs also get keyword precision/recall/F1 (`--keywords`, on by default for a keywords
prefix). Inputs, dataset/split names and the output folder are checked before any model loads; output files are
written complete or not at all; problems with the inputs exit 2 with one `Error:` and one `fix:` line (README,
"Exit codes and errors"). With several processes (train's flags: `--coordinator_address/--num_processes/
--process_id`, or `--distributed` on a pod) every process reads its rows of each global batch and all of them
decode together on the global mesh; JAX's compilation cache is on unless `--no_compile_cache` (`runtime.py`).
A JVM metric tool (PTB tokenizer, METEOR, SPICE) that fails on some clips' captions
(METEOR's aligner runs out of memory on a 100,000-character one) names them with the tool's own message; the other
scores are still written, and the exit code is 3 (`cli.EXIT_PARTIAL`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from audiocap_jax import cli, csv_cells, preflight, runtime
from audiocap_jax.data import pipeline
from audiocap_jax.decoding import evaluator, inference, search_settings
from audiocap_jax.metrics import caption_files, scorecard, scoring
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import resolve_checkpoint_dir
from audiocap_jax.rundir import layout, load

SWEEP_CSV = "sweep.csv"


@dataclasses.dataclass(frozen=True)
class LoadedSplit:
    """A model and one TFDS split's batches, loaded once for any number of decoding configs."""

    model: Any  # Whisper
    tokenizer: Any  # text.Tokenizer
    mesh: jax.sharding.Mesh
    checkpoint_dir: Path | None  # a HF checkpoint's directory (its generation_config), None for a workdir
    batches: Iterable[dict[str, Any]]  # this process's batches in order (re-iterable)
    prefix: str
    dataset: str


def load_split(
    checkpoint: str,
    dataset: str,
    split: str | None,
    data_dir: str,
    config: ml_collections.ConfigDict,
    *,
    mel_config: str | None = None,
    style: str | None = None,
    in_memory: bool = False,
) -> LoadedSplit:
    """Build the model and open the split (config: mesh, step, dtype, batch_size, max_length). `in_memory`
    reads every batch now (the sweep decodes them once per setting); otherwise they stream from disk on each
    pass, so a large split needs no memory for its log-mels."""
    mesh = sharding.make_mesh(dict(config.mesh))
    built = load.build_model(load.ModelInit.from_path(checkpoint, config.step, dtype=config.dtype), mesh=mesh)
    spec = pipeline.DatasetSpec(
        name=dataset,
        data_dir=str(Path(data_dir).expanduser()),
        split=split,
        config=mel_config or f"mel{built.config.num_mel_bins}",
        style=style,
    )
    batches = pipeline.eval_dataset(
        spec,
        built.tokenizer,
        global_batch_size=config.batch_size,
        max_length=config.max_length,
        max_frames=built.config.num_frames,
    )
    return LoadedSplit(
        built.model,
        built.tokenizer,
        mesh,
        None if load.is_workdir(checkpoint) else resolve_checkpoint_dir(checkpoint),
        list(batches) if in_memory else batches,
        spec.prefix,
        dataset,
    )


def evaluate_loaded(
    loaded: LoadedSplit,
    config: ml_collections.ConfigDict,
    scorer: evaluator.Scorer,
    output: evaluator.Output,
    desc: str | None = None,
) -> evaluator.SplitResult:
    """Caption the loaded split with one decoding config (compiled on first use), write the predictions and
    their N-best CSV, and score them (`evaluator.evaluate_split`)."""
    decoder = inference.Decoder.from_config(
        config, loaded.model, loaded.tokenizer, loaded.checkpoint_dir, loaded.mesh
    )
    return evaluator.evaluate_split(
        decoder,
        nnx.state(loaded.model),
        loaded.batches,
        loaded.tokenizer,
        loaded.mesh,
        scorer,
        desc=desc or loaded.dataset,
        output=output,
    )


def predictions_csv(out_dir: Path, stem: str) -> Path:
    """`<out_dir>/<stem>_predictions.csv`; its N-best list goes beside it as `<stem>_predictions_nbest.csv`."""
    return out_dir / f"{stem}_predictions.csv"


# ---------------------------------------------------------------------------------------------------------------
# The decoding sweep.
# ---------------------------------------------------------------------------------------------------------------
def sweep_configs(
    base: ml_collections.ConfigDict, sweep_file: str, num_devices: int | None = None
) -> dict[str, ml_collections.ConfigDict]:
    """name -> the predict config with that setting's overrides, every one checked before any work.

    The sweep file's `get_config()` returns a ConfigDict of name -> overrides; only decoding keys
    (`search_settings.DECODING_KEYS`) may differ, because the model, mesh and batches are loaded once for all.
    Settings run in name order (a ConfigDict iterates its keys sorted).
    """
    sweep = cli.load_config(sweep_file, "sweep")
    if not isinstance(sweep, ml_collections.ConfigDict) or not len(sweep):
        raise cli.UserError(
            f"--sweep={sweep_file}: get_config() returned {type(sweep).__name__} without settings.",
            "return a ConfigDict of setting name -> ConfigDict of configs/predict.py keys to override",
        )
    configs = {}
    for name, overrides in sweep.items():
        key = f"--sweep={sweep_file}: {name}"
        if not isinstance(overrides, ml_collections.ConfigDict):
            raise cli.UserError(
                f"{key} is a {type(overrides).__name__}, not a ConfigDict of overrides.",
                f"write {name}=ml_collections.ConfigDict(dict(num_beams=5, ...))",
            )
        config = ml_collections.ConfigDict(base.to_dict())
        for field, value in overrides.items():
            if field not in search_settings.DECODING_KEYS:
                known = field in config
                raise cli.UserError(
                    f"{key}.{field}: "
                    + (
                        "the sweep loads the model and batches once, so only decoding keys may differ."
                        if known
                        else "no such key in configs/predict.py."
                    ),
                    f"use only {', '.join(search_settings.DECODING_KEYS)}"
                    + (f"; set {field} for all settings with --config-file.{field}" if known else ""),
                )
            config[field] = value
        preflight.check_decoding(config, key, num_devices)
        configs[name] = config
    return configs


def format_sweep_table(rows: list[dict[str, Any]], digits: int = 4) -> str:
    """Markdown table, one row per setting: its metrics (n/a when not computed) and decoding seconds."""
    columns = [k for k in rows[0] if k != "setting"]
    names = {**scorecard.METRIC_NAMES, "seconds": "seconds"}
    lines = ["| setting | " + " | ".join(names.get(c, c) for c in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for row in rows:
        shown = ["n/a" if row[c] is None else f"{row[c]:.{digits}f}" for c in columns]
        lines.append(f"| {row['setting']} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def run_sweep(
    loaded: LoadedSplit,
    configs: dict[str, ml_collections.ConfigDict],
    out_dir: Path,
    scorer: evaluator.Scorer,
) -> list[dict[str, Any]]:
    """Caption the split with every setting and score it with `scorer`; writes each setting's predictions and
    `sweep.csv` (one row per setting: its corpus metrics, seconds to caption including compilation)."""
    rows = []
    for name, config in configs.items():
        stem = f"{loaded.dataset}_{name}"
        output = evaluator.Output(predictions_csv(out_dir, stem))
        result = evaluate_loaded(loaded, config, scorer, output, desc=f"{loaded.dataset} {name}")
        rows.append({"setting": name, **result.scores.corpus, "seconds": result.seconds})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (
        cli.atomic_path(out_dir / SWEEP_CSV) as partial,
        partial.open("w", newline="", encoding="utf-8") as f,
    ):
        table = csv_cells.Writer(f)
        table.writerow(columns)
        table.writerows(["" if row.get(c) is None else row[c] for c in columns] for row in rows)
    return [{c: row.get(c) for c in columns} for row in rows]


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program so the library functions import anywhere."""
    flags.DEFINE_string("predictions", None, "Predictions CSV (file_name,caption_predicted).")
    flags.DEFINE_string("references", None, "Clotho captions CSV or AudioFolder metadata.jsonl.")
    flags.DEFINE_string("checkpoint", None, "Predict first: a training workdir or HF Whisper directory.")
    flags.DEFINE_string("dataset", None, "With --checkpoint: clotho, audiocaps or audioset.")
    flags.DEFINE_string("split", None, "With --checkpoint: TFDS split (default: the dataset's validation).")
    flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "With --checkpoint: TFDS data_dir.")
    flags.DEFINE_string("mel_config", None, "With --checkpoint: mel80/mel128 (default: the model's).")
    flags.DEFINE_string("style", None, "With --checkpoint: prefix style (default: the dataset's own).")
    flags.DEFINE_string("output_dir", None, "Where predictions.csv / scores.json go (default: beside).")
    flags.DEFINE_bool("keywords", None, "Also keyword P/R/F1 (default: on for a keywords prefix).")
    flags.DEFINE_bool("allow_missing", False, "Score only the clips that have predictions.")
    flags.DEFINE_bool("allow_extra", False, "Ignore predictions for clips without references.")
    flags.DEFINE_enum(
        "spice", "auto", ["auto", "on", "off"], "SPICE: when the jars exist, required, or skipped."
    )
    flags.DEFINE_enum("metrics", "coco", list(scoring.PRESETS), f"Metric preset. {scoring.PRESET_HELP}")
    flags.DEFINE_integer(
        "bootstrap", 0, "Resamples of the clips for 95% intervals of every metric (e.g. 1000)."
    )
    flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the --bootstrap resampling.")
    flags.DEFINE_string(
        "metrics_model_dir", None, "FENSE/FER models (default: $AUDIOCAP_METRICS_MODELS or ~/.cache)."
    )
    flags.DEFINE_string(
        "sweep",
        None,
        "With --checkpoint: a sweep file (configs/sweeps/decoding.py) of named decoding settings; decodes "
        "the split once per setting and writes sweep.csv.",
    )
    runtime.define_flags()
    config_flags.DEFINE_config_file("config-file", cli.PREDICT_CONFIG, "Decoding settings.", lock_config=True)


def _alignment_fix(
    error: caption_files.AlignmentError, predictions: Mapping[str, str], references: Mapping
) -> str:
    """The command-line fix for a predictions/references mismatch (metrics speaks of Python arguments)."""
    if not set(predictions) & set(references):
        return "write the file names relative to the same folder in both files"
    switches = [
        f"--{name}"
        for name, names in (("allow_missing", error.missing), ("allow_extra", error.extra))
        if names
    ]
    if not switches:
        return "give every clip at least one non-empty reference caption"
    return f"correct the file names, or pass {' '.join(switches)} to score the clips found in both"


# `scoring.ScoreOptions` taken as the flags give them: option -> flag.
_SCORING_FLAGS = {
    "preset": "metrics",
    "allow_missing": "allow_missing",
    "allow_extra": "allow_extra",
    "model_dir": "metrics_model_dir",
    "bootstrap": "bootstrap",
    "seed": "bootstrap_seed",
}


def _scorer(f: flags.FlagValues, prefix: str) -> evaluator.Scorer:
    """The flags' metrics (keyword ones by default for a keywords `prefix`); a predictions/references mismatch
    becomes a user error naming the switch that allows it."""
    options = scoring.ScoreOptions(
        keywords=f["keywords"].value if f["keywords"].value is not None else scoring.keyword_style(prefix),
        spice={"auto": "auto", "on": True, "off": False}[f["spice"].value],
        **{option: f[flag].value for option, flag in _SCORING_FLAGS.items()},
    )

    def score(
        predictions: Mapping[str, str],
        references: Mapping[str, list[str]],
        candidates: Mapping[str, list[str]] | None,
    ) -> scorecard.CaptionScores:
        try:
            return options(predictions, references, candidates)
        except caption_files.AlignmentError as error:
            raise cli.UserError(str(error), _alignment_fix(error, predictions, references)) from error

    return score


def _report(scores: scorecard.CaptionScores, json_path: Path) -> int:
    """Print the table and where the scores went; exit `cli.EXIT_PARTIAL` when a metric tool failed on clips."""
    print(scorecard.format_table(scores))
    print(f"Scores: {json_path}")
    return cli.finished(
        f"A metric tool failed on {len(scores.failed_clips)} clips (named above and under failed_clips in "
        f"{json_path.name}); every other score was written."
        if scores.failed_clips
        else None
    )


def _evaluate_checkpoint(f: flags.FlagValues) -> int:
    """--checkpoint: caption the split (once per setting with --sweep), write the predictions and score them."""
    if f["dataset"].value is None:
        raise app.UsageError("--checkpoint needs --dataset (clotho, audiocaps or audioset).")
    checkpoint, config, dataset = f["checkpoint"].value, f["config-file"].value, f["dataset"].value
    out_dir = preflight.check_writable_dir(
        f["output_dir"].value or Path(checkpoint) / layout.EVALUATION_DIR, "--output_dir"
    )
    preflight.check_decoding(config, "--config-file", jax.device_count())
    sweep = sweep_configs(config, f["sweep"].value, jax.device_count()) if f["sweep"].value else None
    preflight.check_checkpoint(checkpoint, config.step)
    preflight.check_evaluate(
        dataset, f["split"].value, f["data_dir"].value, f["mel_config"].value, f["style"].value
    )
    for checked in [config, *(sweep or {}).values()]:
        preflight.check_decoder_positions(checkpoint, checked.max_length, "--config-file")
    loaded = load_split(
        checkpoint,
        dataset,
        f["split"].value,
        f["data_dir"].value,
        config,
        mel_config=f["mel_config"].value,
        style=f["style"].value,
        in_memory=sweep is not None,
    )
    if sweep is not None:
        print(format_sweep_table(run_sweep(loaded, sweep, out_dir, _scorer(f, loaded.prefix))))
        print(f"Sweep: {out_dir / SWEEP_CSV}")
        return cli.EXIT_OK
    json_path = out_dir / f"{dataset}_scores.json"
    source = {
        "checkpoint": checkpoint,
        "dataset": dataset,
        "split": f["split"].value,
        "prefix": loaded.prefix,
    }
    output = evaluator.Output(predictions_csv(out_dir, dataset), json_path, source)
    return _report(evaluate_loaded(loaded, config, _scorer(f, loaded.prefix), output).scores, json_path)


def _evaluate_predictions(f: flags.FlagValues) -> int:
    """--predictions and --references: score the CSV's captions (SPIDEr-max too when it holds N-best lists)."""
    predictions_path = preflight.check_readable_file(
        f["predictions"].value, "--predictions", "a predictions CSV"
    )
    references_path = preflight.check_readable_file(
        f["references"].value, "--references", "a Clotho captions CSV or an AudioFolder metadata.jsonl"
    )
    out_dir = preflight.check_writable_dir(f["output_dir"].value or predictions_path.parent, "--output_dir")
    try:
        candidates = caption_files.read_candidates_csv(predictions_path)
        references = caption_files.read_references(references_path)
    except ValueError as error:  # the readers name the file, line and what is wrong with it
        raise cli.UserError(
            str(error), "correct the file named above (docs/metrics.md shows the layouts)"
        ) from error
    predictions = {name: captions[0] for name, captions in candidates.items()}
    n_best = candidates if any(len(captions) > 1 for captions in candidates.values()) else None
    scores = _scorer(f, "")(predictions, references, n_best)
    json_path = out_dir / (predictions_path.stem + "_scores.json")
    source = {"predictions": f["predictions"].value, "references": f["references"].value}
    evaluator.write_scores(json_path, scores, source)
    return _report(scores, json_path)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    f = flags.FLAGS
    runtime.start()
    preflight.check_spice(f["spice"].value)
    preflight.check_scoring(f["bootstrap"].value, f["bootstrap_seed"].value, f["metrics_model_dir"].value)
    if f["sweep"].value is not None and f["checkpoint"].value is None:
        raise app.UsageError(
            "--sweep needs --checkpoint and --dataset (it decodes the split once per setting)."
        )
    if f["checkpoint"].value is not None:
        return _evaluate_checkpoint(f)
    if f["predictions"].value is not None and f["references"].value is not None:
        return _evaluate_predictions(f)
    raise app.UsageError("Give --predictions and --references, or --checkpoint and --dataset.")


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags, config_flag="config-file", default_config=cli.PREDICT_CONFIG)
