"""The scores of one evaluation (`CaptionScores`), the one table of metric names, and how scores are shown:
a markdown table (as DCASE's result pages print them) and a JSON file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# Metric key -> printed name: the one table of metric names for tables and logs.
METRIC_NAMES = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "spider_fl": "SPIDEr-FL",
    "fense": "FENSE",
    "sbert_sim": "SBERT-sim",
    "fer": "FER",
    "vocab": "Vocab",
    "spider_max": "SPIDEr-max",
    "keyword_precision_micro": "keyword precision (micro)",
    "keyword_recall_micro": "keyword recall (micro)",
    "keyword_f1_micro": "keyword F1 (micro)",
    "keyword_precision_macro": "keyword precision (macro)",
    "keyword_recall_macro": "keyword recall (macro)",
    "keyword_f1_macro": "keyword F1 (macro)",
    "keyword_jaccard": "keyword Jaccard (macro)",
}


@dataclasses.dataclass(frozen=True)
class CaptionScores:
    """Corpus and per-clip scores of one evaluation.

    `corpus[metric]` is None for a metric that could not be computed (reason in `unavailable[metric]`).
    `per_clip[file_name][metric]` holds the sentence-level scores pycocoevalcap returns. CIDEr-D per clip
    uses the document frequencies of this whole corpus, so it changes when the set of clips changes.
    """

    corpus: dict[str, float | None]
    per_clip: dict[str, dict[str, float]]
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    # metric -> (low, high): bootstrap 95% percentile interval over resampled clips (empty unless asked).
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # file name -> "TOOL: its message" for each JVM tool that failed on this clip's text: a partial result
    # (`evaluate` exits 3). A PTB failure leaves the clip out of every metric; METEOR or SPICE, that metric.
    failed_clips: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        return len(self.per_clip)

    def to_json_dict(self) -> dict:
        return {
            "num_clips": self.num_clips,
            "corpus": self.corpus,
            "intervals_95": {k: list(v) for k, v in self.intervals.items()},
            "unavailable": self.unavailable,
            "warnings": self.warnings,
            "failed_clips": self.failed_clips,
            "per_clip": self.per_clip,
        }


def format_table(scores: CaptionScores, *, digits: int = 4) -> str:
    """Markdown table of the corpus scores, with a 95% interval column when bootstrapped (as DCASE's result
    pages print them); unavailable metrics show n/a with the reason below the table."""
    with_intervals = bool(scores.intervals)
    lines = [
        f"| metric ({scores.num_clips} clips) | score |" + (" 95% interval |" if with_intervals else ""),
        "|---|---|" + ("---|" if with_intervals else ""),
    ]
    for key, value in scores.corpus.items():
        shown = "n/a" if value is None else f"{value:.{digits}f}"
        if with_intervals:
            low, high = scores.intervals.get(key, (None, None))
            shown += " | " + ("" if low is None else f"[{low:.{digits}f}, {high:.{digits}f}]")
        lines.append(f"| {METRIC_NAMES[key]} | {shown} |")
    notes = [f"- {METRIC_NAMES[k]}: {reason}" for k, reason in scores.unavailable.items()]
    notes += [f"- warning: {w}" for w in scores.warnings]
    return "\n".join(lines + ([""] + notes if notes else []))


def write_json(path: str | Path, scores: CaptionScores, **extra: object) -> None:
    """JSON with corpus scores, unavailable metrics with reasons, warnings, per-clip scores and `extra`."""
    payload = {**extra, **scores.to_json_dict()}
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
