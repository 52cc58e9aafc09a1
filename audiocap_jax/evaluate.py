"""Score captions with the standard captioning metrics (pycocoevalcap-identical), or predict and score in one go.

    # score a predictions CSV against Clotho references (or an AudioFolder metadata.jsonl)
    python -m audiocap_jax.evaluate --predictions=out.csv --references=clotho_captions_evaluation.csv

    # caption a TFDS split with the shared beam search, then score it
    python -m audiocap_jax.evaluate --checkpoint=RUN_OR_HF_DIR --dataset=clotho --split=evaluation \
        --data_dir=TFDS_DIR [--config-file=configs/predict.py --config-file.num_beams=5]

Prints a table and writes a JSON file (corpus scores, unavailable metrics with the fix, warnings, per-clip
scores incl. CIDEr-D). `audioset > keywords` outputs also get keyword precision/recall/F1 (`--keywords`, on by
default for a keywords prefix).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from audiocap_jax import inference, load, metrics, search, writer
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
    flags.DEFINE_enum(
        "spice", "auto", ["auto", "on", "off"], "SPICE: when the jars exist, required, or skipped."
    )
    config_flags.DEFINE_config_file(
        "config-file", "configs/predict.py", "Decoding settings.", lock_config=True
    )


def main(argv: list[str]) -> None:
    writer.quiet_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
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
        predictions = metrics.read_predictions_csv(flags.FLAGS["predictions"].value)
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
        else inference.keyword_style(prefix)
    )
    try:
        scores = inference.score_captions(
            predictions,
            references,
            keywords=keywords,
            allow_missing=flags.FLAGS["allow_missing"].value,
            spice={"auto": "auto", "on": True, "off": False}[flags.FLAGS["spice"].value],
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
