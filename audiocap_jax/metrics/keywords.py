"""Keyword precision, recall, F1 and Jaccard for AudioSet keyword outputs (`audioset > keywords: `), whose
captions are comma-separated ontology names compared as sets, not as sentences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from audiocap_jax.metrics import caption_files, scorecard


def split_keywords(text: str) -> frozenset[str]:
    """Keyword caption -> set: split on commas, strip, lowercase, drop empties ("dog, Bark," -> {dog, bark}).

    Exact for the ontology rule's outputs, whose names never contain commas (they become " -").
    """
    return frozenset(k for k in (part.strip().lower() for part in text.split(",")) if k)


def score_keywords(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    allow_missing: bool = False,
    allow_extra: bool = False,
) -> scorecard.CaptionScores:
    """Keyword precision/recall/F1 and Jaccard for AudioSet keyword outputs, compared as comma-split sets.

    A clip's reference set is the union of its references' keywords (AudioSet clips have one). Micro: true
    positives, predicted and reference keyword counts summed over clips, then P/R/F1. Macro: per-clip P/R/F1
    and Jaccard averaged over clips (macro F1 is the mean of per-clip F1, not F1 of the mean P and R). An
    empty side gives 0 for that clip's ratio.
    """
    aligned = caption_files.align(
        predictions, references, allow_missing=allow_missing, allow_extra=allow_extra
    )
    per_clip: dict[str, dict[str, float]] = {}
    true_positives = predicted_total = reference_total = 0
    for name in aligned.file_names:
        predicted = split_keywords(aligned.predictions[name])
        reference = frozenset().union(*(split_keywords(r) for r in aligned.references[name]))
        hits = len(predicted & reference)
        true_positives += hits
        predicted_total += len(predicted)
        reference_total += len(reference)
        per_clip[name] = {
            "keyword_precision": hits / len(predicted) if predicted else 0.0,
            "keyword_recall": hits / len(reference) if reference else 0.0,
            "keyword_f1": 2 * hits / (len(predicted) + len(reference)) if predicted or reference else 0.0,
            "keyword_jaccard": hits / len(predicted | reference) if predicted or reference else 0.0,
        }

    def mean_of(metric: str) -> float:
        return float(np.mean([clip[metric] for clip in per_clip.values()]))

    corpus: dict[str, float | None] = {
        "keyword_precision_micro": true_positives / predicted_total if predicted_total else 0.0,
        "keyword_recall_micro": true_positives / reference_total if reference_total else 0.0,
        "keyword_f1_micro": (
            2 * true_positives / (predicted_total + reference_total)
            if predicted_total + reference_total
            else 0.0
        ),
        "keyword_precision_macro": mean_of("keyword_precision"),
        "keyword_recall_macro": mean_of("keyword_recall"),
        "keyword_f1_macro": mean_of("keyword_f1"),
        "keyword_jaccard": mean_of("keyword_jaccard"),
    }
    return scorecard.CaptionScores(corpus, per_clip, {}, list(aligned.warnings))
