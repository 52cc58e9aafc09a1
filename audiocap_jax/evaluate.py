"""Score captions with the standard captioning metrics (pycocoevalcap-identical), or predict and score in one go.

    # score a predictions CSV against Clotho references (or an AudioFolder metadata.jsonl)
    python -m audiocap_jax.evaluate --predictions=out.csv --references=clotho_captions_evaluation.csv

    # caption a TFDS split with the shared beam search, then score it
    python -m audiocap_jax.evaluate --checkpoint=RUN_OR_HF_DIR --dataset=clotho --split=evaluation \
        --data_dir=TFDS_DIR [--config-file=configs/predict.py --config-file.num_beams=5]

    # the DCASE 2024 ranking metrics with bootstrap 95% intervals (FENSE needs the models once:
    # python -m audiocap_jax.dcase_metrics download)
    python -m audiocap_jax.evaluate --predictions=out.csv --references=... --metrics=dcase2024 --bootstrap=1000

Presets (--metrics): coco (today's set), dcase2023 (+ SPIDEr-FL, FER), dcase2024 (FENSE first, + SBERT-sim, FER,
SPIDEr-FL, Vocab). Several rows per clip in the predictions CSV are an N-best list: the first row is scored,
and SPIDEr-max is added. Prints a table and writes a JSON file (corpus scores, intervals, unavailable metrics
with the fix, warnings, per-clip scores incl. CIDEr-D). `audioset > keywords` outputs also get keyword
precision/recall/F1 (`--keywords`, on by default for a keywords prefix). Inputs, dataset/split names and the
output folder are checked before any model loads; output files are written complete or not at all; problems
with the inputs exit 2 with one `error:` and one `fix:` line (README, "Exit codes and errors").
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from audiocap_jax import cli, inference, load, metrics, preflight, search
from audiocap_jax.data import pipeline
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import resolve_checkpoint_dir


def predict_split(
    checkpoint: str,
    dataset: str,
    split: str | None,
    data_dir: str,
    config: ml_collections.ConfigDict,
    *,
    mel_config: str | None = None,
    style: str | None = None,
) -> tuple[dict[str, str], dict[str, list[str]], str]:
    """Caption a TFDS split with the shared beam search: (predictions, references, prefix)."""
    mesh = sharding.make_mesh(dict(config.mesh))
    built = load.build_model(load.ModelInit.from_path(checkpoint, config.step, dtype=config.dtype), mesh=mesh)
    model, model_config, tokenizer = built.model, built.config, built.tokenizer
    spec = pipeline.DatasetSpec(
        name=dataset,
        data_dir=str(Path(data_dir).expanduser()),
        split=split,
        config=mel_config or f"mel{model_config.num_mel_bins}",
        style=style,
    )
    checkpoint_dir = None if load.is_workdir(checkpoint) else resolve_checkpoint_dir(checkpoint)
    settings = inference.decode_settings(config, tokenizer, checkpoint_dir)
    batches = pipeline.eval_dataset(
        spec,
        tokenizer,
        global_batch_size=config.batch_size,
        max_length=config.max_length,
        max_frames=model_config.num_frames,
    )
    decode_fn = search.make_decode_fn(model, settings, mesh)
    predictions = inference.caption_batches(
        decode_fn, nnx.state(model), batches, tokenizer, mesh, desc=f"{dataset}"
    )
    return (
        {p.file_name: p.caption for p in predictions},
        {p.file_name: list(p.references) for p in predictions},
        spec.prefix,
    )


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
    flags.DEFINE_enum("metrics", "coco", list(metrics.PRESETS), f"Metric preset. {metrics.PRESET_HELP}")
    flags.DEFINE_integer(
        "bootstrap", 0, "Resamples of the clips for 95% intervals of every metric (e.g. 1000)."
    )
    flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the --bootstrap resampling.")
    flags.DEFINE_string(
        "metrics_model_dir", None, "FENSE/FER models (default: $AUDIOCAP_METRICS_MODELS or ~/.cache)."
    )
    config_flags.DEFINE_config_file("config-file", cli.PREDICT_CONFIG, "Decoding settings.", lock_config=True)


def _alignment_fix(error: metrics.AlignmentError, predictions: dict[str, str], references: dict) -> str:
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    f = flags.FLAGS
    preflight.check_spice(f["spice"].value)
    n_best = None  # several rows per clip in --predictions: SPIDEr-max over them
    if f["checkpoint"].value is not None:
        if f["dataset"].value is None:
            raise app.UsageError("--checkpoint needs --dataset (clotho, audiocaps or audioset).")
        config = f["config-file"].value
        out_dir = preflight.check_writable_dir(
            f["output_dir"].value or Path(f["checkpoint"].value) / "evaluation", "--output_dir"
        )
        preflight.check_decoding(config, "--config-file", jax.device_count())
        preflight.check_checkpoint(f["checkpoint"].value, config.step)
        preflight.check_evaluate(
            f["dataset"].value, f["split"].value, f["data_dir"].value, f["mel_config"].value, f["style"].value
        )
        predictions, references, prefix = predict_split(
            f["checkpoint"].value,
            f["dataset"].value,
            f["split"].value,
            f["data_dir"].value,
            config,
            mel_config=f["mel_config"].value,
            style=f["style"].value,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        with cli.atomic_path(out_dir / f"{f['dataset'].value}_predictions.csv") as partial:
            metrics.write_predictions_csv(partial, predictions)
        json_path = out_dir / f"{f['dataset'].value}_scores.json"
        source = {
            "checkpoint": f["checkpoint"].value,
            "dataset": f["dataset"].value,
            "split": f["split"].value,
        }
        source["prefix"] = prefix
    elif f["predictions"].value is not None and f["references"].value is not None:
        predictions_path = preflight.check_readable_file(
            f["predictions"].value, "--predictions", "a predictions CSV"
        )
        references_path = preflight.check_readable_file(
            f["references"].value, "--references", "a Clotho captions CSV or an AudioFolder metadata.jsonl"
        )
        out_dir = preflight.check_writable_dir(
            f["output_dir"].value or predictions_path.parent, "--output_dir"
        )
        try:
            candidates = metrics.read_candidates_csv(predictions_path)
            references = metrics.read_references(references_path)
        except ValueError as error:  # the readers name the file, line and what is wrong with it
            raise cli.UserError(
                str(error), "correct the file named above (docs/metrics.md shows the layouts)"
            ) from error
        predictions = {name: captions[0] for name, captions in candidates.items()}
        if any(len(captions) > 1 for captions in candidates.values()):
            n_best = candidates
        prefix = ""
        json_path = out_dir / (predictions_path.stem + "_scores.json")
        source = {"predictions": f["predictions"].value, "references": f["references"].value}
    else:
        raise app.UsageError("Give --predictions and --references, or --checkpoint and --dataset.")
    keywords = f["keywords"].value if f["keywords"].value is not None else inference.keyword_style(prefix)
    try:
        scores = inference.score_captions(
            predictions,
            references,
            keywords=keywords,
            allow_missing=f["allow_missing"].value,
            allow_extra=f["allow_extra"].value,
            spice={"auto": "auto", "on": True, "off": False}[f["spice"].value],
            preset=f["metrics"].value,
            candidates=n_best,
            model_dir=f["metrics_model_dir"].value,
            bootstrap=f["bootstrap"].value,
            seed=f["bootstrap_seed"].value,
        )
    except metrics.AlignmentError as error:
        raise cli.UserError(str(error), _alignment_fix(error, predictions, references)) from error
    print(metrics.format_table(scores))
    out_dir.mkdir(parents=True, exist_ok=True)
    with cli.atomic_path(json_path) as partial:
        metrics.write_json(partial, scores, **source)
    print(f"Scores: {json_path}")


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags, config_flag="config-file", default_config=cli.PREDICT_CONFIG)
