"""What a finished run leaves for a person: a PNG of its loss and validation metrics, a printed summary, and
the one-line headline of a validation that the training log shows.

All read only the workdir (`metrics.jsonl` from `writer.MetricWriter`, the files train.py writes), so they also
work on a run that finished earlier (`python -m audiocap_jax.report WORKDIR`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

from audiocap_jax.metrics import scorecard  # noqa: E402
from audiocap_jax.rundir import layout  # noqa: E402
from audiocap_jax.rundir.writer import read_metrics  # noqa: E402

# Validation metrics of a caption style and of a keyword style (`audioset > keywords`), in the order shown; the
# first ones of each are plotted. Only those a run logged appear.
CAPTION_METRICS = ("cider_d", "spider", "meteor", "bleu_4")
KEYWORD_METRICS = ("keyword_f1_micro", "keyword_precision_micro", "keyword_recall_micro")
_PLOTTED = ("cider_d", "spider", "keyword_f1_micro")
# Log keys that are per-run bookkeeping rather than a dataset's score.
_VALIDATION_EXTRAS = ("eval_seconds",)


def _is_validation(record: Mapping[str, float]) -> bool:
    return any("/" in key for key in record)


def last_validation(records: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The `dataset/metric` scores (and eval_seconds) of the last validation in a metrics log; {} if none."""
    for record in reversed(records):
        if _is_validation(record):
            return {k: v for k, v in record.items() if "/" in k or k in _VALIDATION_EXTRAS}
    return {}


def _headline_keys(records: Sequence[Mapping[str, float]], plotted_only: bool = False) -> list[str]:
    """`dataset/metric` keys worth showing, grouped by dataset: keyword metrics for keyword styles, else
    caption metrics (a keyword style's CIDEr-D compares comma lists as sentences, which says little)."""
    logged = {key for record in records for key in record if "/" in key}
    keys = []
    for dataset in sorted({key.split("/", 1)[0] for key in logged}):
        names = KEYWORD_METRICS if f"{dataset}/{KEYWORD_METRICS[0]}" in logged else CAPTION_METRICS
        keys += [
            f"{dataset}/{m}"
            for m in names
            if f"{dataset}/{m}" in logged and (m in _PLOTTED or not plotted_only)
        ]
    return keys


def headline(results: Mapping[str, float], dataset: str) -> str:
    """One dataset's headline scores from `dataset/metric` results, e.g. `CIDEr-D 2.8614, METEOR 0.2571,
    BLEU-4 0.1502` (keyword styles: keyword F1/precision/recall): one log line per dataset and validation,
    so a run's log stays short; the full tables are in the predictions' JSON and at --verbosity=1."""
    keys = [key for key in _headline_keys([results]) if key.startswith(f"{dataset}/")]
    return ", ".join(f"{scorecard.METRIC_NAMES[key.split('/', 1)[1]]} {results[key]:.4f}" for key in keys)


def _series(records: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
    return [int(s) for s, _ in points], [float(v) for _, v in points]


def plot_metrics(workdir: str | Path) -> Path:
    """Writes `workdir/metrics.png`: training loss and token accuracy, and the validation metrics, per step.

    Raises:
      FileNotFoundError: the workdir has no metrics.jsonl (no training step was logged yet).
    """
    workdir = Path(workdir)
    records = read_metrics(workdir)
    if not records:
        raise FileNotFoundError(
            f"{workdir / layout.METRICS_FILE} is missing or empty; train first (python -m audiocap_jax.train)."
        )
    figure, (loss_axis, validation_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps, losses = _series(records, "loss")
    loss_axis.plot(steps, losses, color="tab:blue", label="loss")
    loss_axis.set(xlabel="step", ylabel="training loss (token cross-entropy)", yscale="log", title="training")
    accuracy_axis = loss_axis.twinx()
    steps, accuracies = _series(records, "token_accuracy")
    accuracy_axis.plot(steps, accuracies, color="tab:orange", label="token accuracy")
    accuracy_axis.set(ylabel="token accuracy", ylim=(0, 1))
    loss_axis.legend(
        loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0],
        ["loss", "token accuracy"],
        loc="center right",
    )
    for key in _headline_keys(records, plotted_only=True):
        steps, values = _series(records, key)
        validation_axis.plot(
            steps,
            values,
            marker="o",
            label=f"{key.split('/')[0]} {scorecard.METRIC_NAMES[key.split('/')[1]]}",
        )
    validation_axis.set(xlabel="step", ylabel="score", title="validation")
    if validation_axis.lines:
        validation_axis.legend(loc="best")
    else:
        validation_axis.text(
            0.5, 0.5, "no validation yet", ha="center", va="center", transform=validation_axis.transAxes
        )
    figure.suptitle(workdir.name)
    figure.tight_layout()
    path = workdir / layout.PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def describe(workdir: str | Path) -> str:
    """A few lines for the terminal: the final scores, throughput, and where every output is."""
    workdir = Path(workdir).absolute()
    records = read_metrics(workdir)
    lines = [f"Run in {workdir}"]
    train = [r for r in records if "loss" in r]
    if train:
        last = train[-1]
        speeds = [r["examples_per_second"] for r in train[1:] if "examples_per_second" in r]
        speed = f", {sorted(speeds)[len(speeds) // 2]:.1f} examples/s (median)" if speeds else ""
        lines.append(
            f"  step {last['step']}: loss {last['loss']:.4f}, token accuracy {last['token_accuracy']:.3f}{speed}"
        )
    validation = last_validation(records)
    for key in _headline_keys([validation]):
        dataset, metric = key.split("/")
        lines.append(f"  {dataset:<10} {scorecard.METRIC_NAMES[metric]:<18} {validation[key]:.4f}")
    outputs = [
        ("checkpoints", workdir / layout.CHECKPOINT_DIR),
        ("predictions", workdir / layout.PREDICTIONS_DIR),
        ("final metrics", workdir / layout.FINAL_METRICS_FILE),
        ("plot", workdir / layout.PLOT_FILE),
        ("metrics log", workdir / layout.METRICS_FILE),
        ("sample captions", workdir / layout.SAMPLES_FILE),
        ("HF export", workdir / layout.HF_EXPORT_DIR),
    ]
    lines.append("Outputs:")
    lines += [f"  {name:<16} {path}" for name, path in outputs if path.exists()]
    lines.append(
        f"Caption audio files: python -m audiocap_jax.predict --checkpoint={workdir} --data=AUDIO_DIR "
        "--output-file=captions.csv"
    )
    return "\n".join(lines)
