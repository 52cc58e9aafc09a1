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
precision/recall/F1 (`--keywords`, on by default for a keywords prefix).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from audiocap_jax import decode, inference, load, metrics
from audiocap_jax.data import pipeline
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import resolve_checkpoint_dir


def score_files(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    *,
    keywords: bool = False,
    allow_missing: bool = False,
    spice: str = "auto",
    **score_options: Any,
) -> metrics.CaptionScores:
    """Captioning metrics (and keyword metrics) over aligned predictions and references.

    score_options go to `metrics.score` as given: preset, candidates, model_dir, bootstrap, seed.
    """
    spice_arg: Any = {"auto": "auto", "on": True, "off": False}[spice]
    scores = metrics.score(
        predictions, references, spice=spice_arg, allow_missing=allow_missing, **score_options
    )
    if keywords:
        keyword_scores = metrics.score_keywords(predictions, references, allow_missing=allow_missing)
        scores = dataclasses.replace(scores, corpus={**scores.corpus, **keyword_scores.corpus})
    return scores


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
    model, model_config, tokenizer = load.load_model(
        checkpoint, mesh=mesh, step=config.step, dtype=config.dtype
    )
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
    decode_fn = decode.make_decode_fn(model, settings, mesh)
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
    config_flags.DEFINE_config_file(
        "config-file", "configs/predict.py", "Decoding settings.", lock_config=True
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    n_best = None  # several rows per clip in --predictions: SPIDEr-max over them
    if flags.FLAGS["checkpoint"].value is not None:
        if flags.FLAGS["dataset"].value is None:
            raise app.UsageError("--checkpoint needs --dataset (clotho, audiocaps or audioset).")
        predictions, references, prefix = predict_split(
            flags.FLAGS["checkpoint"].value,
            flags.FLAGS["dataset"].value,
            flags.FLAGS["split"].value,
            flags.FLAGS["data_dir"].value,
            flags.FLAGS["config-file"].value,
            mel_config=flags.FLAGS["mel_config"].value,
            style=flags.FLAGS["style"].value,
        )
        out_dir = Path(
            flags.FLAGS["output_dir"].value or Path(flags.FLAGS["checkpoint"].value) / "evaluation"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics.write_predictions_csv(
            out_dir / f"{flags.FLAGS['dataset'].value}_predictions.csv", predictions
        )
        json_path = out_dir / f"{flags.FLAGS['dataset'].value}_scores.json"
        source = {
            "checkpoint": flags.FLAGS["checkpoint"].value,
            "dataset": flags.FLAGS["dataset"].value,
            "split": flags.FLAGS["split"].value,
            "prefix": prefix,
        }
    elif flags.FLAGS["predictions"].value is not None and flags.FLAGS["references"].value is not None:
        candidates = metrics.read_candidates_csv(flags.FLAGS["predictions"].value)
        predictions = {name: captions[0] for name, captions in candidates.items()}
        if any(len(captions) > 1 for captions in candidates.values()):
            n_best = candidates
        references = metrics.read_references(flags.FLAGS["references"].value)
        prefix = ""
        out_dir = Path(flags.FLAGS["output_dir"].value or Path(flags.FLAGS["predictions"].value).parent)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / (Path(flags.FLAGS["predictions"].value).stem + "_scores.json")
        source = {
            "predictions": flags.FLAGS["predictions"].value,
            "references": flags.FLAGS["references"].value,
        }
    else:
        raise app.UsageError("Give --predictions and --references, or --checkpoint and --dataset.")
    keywords = (
        flags.FLAGS["keywords"].value
        if flags.FLAGS["keywords"].value is not None
        else prefix.rstrip().endswith("keywords:")
    )
    try:
        scores = score_files(
            predictions,
            references,
            keywords=keywords,
            allow_missing=flags.FLAGS["allow_missing"].value,
            spice=flags.FLAGS["spice"].value,
            preset=flags.FLAGS["metrics"].value,
            candidates=n_best,
            model_dir=flags.FLAGS["metrics_model_dir"].value,
            bootstrap=flags.FLAGS["bootstrap"].value,
            seed=flags.FLAGS["bootstrap_seed"].value,
        )
    except metrics.AlignmentError as error:
        print(f"error: {error} (on the command line: --allow_missing)", file=sys.stderr)
        sys.exit(2)
    print(metrics.format_table(scores))
    metrics.write_json(json_path, scores, **source)
    print(f"Scores: {json_path}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
