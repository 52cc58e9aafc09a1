"""Decode a split, write its predictions and score them: the one evaluator of training validation and `evaluate`.

`evaluate_split` captions the batches with the shared search (`inference.Decoder`), writes the predictions CSV
(and the N-best CSV beside it), scores the captions against the references the batches carry, and writes the
scores JSON. Every file is written complete or not at all (`cli.atomic_path`); the predictions are on disk before
scoring starts, so a metric that fails still leaves the captions. Scoring is the metrics package's: the
scorer is a `scoring.ScoreOptions` or a caller's wrapper around one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from audiocap_jax import cli
from audiocap_jax.decoding import inference
from audiocap_jax.metrics import caption_files, scorecard
from audiocap_jax.text import Tokenizer

# (captions, references, N-best lists or None) -> scores: a `scoring.ScoreOptions`, or a wrapper around one.
Scorer = Callable[
    [Mapping[str, str], Mapping[str, list[str]], Mapping[str, list[str]] | None], scorecard.CaptionScores
]


@dataclasses.dataclass(frozen=True)
class Output:
    """Where a split's files go; the caller chooses which processes write them."""

    predictions_csv: Path  # file_name,caption_predicted; the N-best CSV beside it (`inference.nbest_path`)
    scores_json: Path | None = None  # the scores (`scorecard.write_json`), after the fields of `source`
    source: Mapping[str, object] = dataclasses.field(default_factory=dict)  # e.g. step and prefix


@dataclasses.dataclass(frozen=True)
class SplitResult:
    predictions: list[inference.Prediction]  # every clip of the split, in dataset order
    scores: scorecard.CaptionScores
    seconds: float  # captioning, compilation included (not writing or scoring)


def evaluate_split(
    decoder: inference.Decoder,
    weights: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    tokenizer: Tokenizer,
    mesh: Mesh,
    scorer: Scorer,
    *,
    desc: str,
    output: Output | None = None,
    nbest: bool = True,
) -> SplitResult:
    """Caption `batches` with `decoder` and `weights`, write `output`'s files (none without it) and score.

    `nbest`: the N-best lists count too: their CSV is written beside the predictions, and they are scored for
    SPIDEr-max when the decoder keeps several candidates per clip. Training validation leaves them out: it
    logs and writes the chosen captions only.
    """
    started = time.perf_counter()
    predictions = decoder.caption(weights, batches, tokenizer, mesh, desc=desc)
    seconds = time.perf_counter() - started
    if output is not None:
        write_predictions(output.predictions_csv, predictions, nbest=nbest)
    captions = {p.file_name: p.caption for p in predictions}
    references = {p.file_name: list(p.references) for p in predictions}
    candidates = None
    if nbest and decoder.num_candidates > 1:
        candidates = {p.file_name: [c.caption for c in p.candidates] for p in predictions}
    scores = scorer(captions, references, candidates)
    if output is not None and output.scores_json is not None:
        write_scores(output.scores_json, scores, output.source)
    return SplitResult(predictions, scores, seconds)


def write_predictions(path: Path, predictions: Sequence[inference.Prediction], *, nbest: bool = True) -> None:
    """The one-caption CSV at `path` and, with `nbest`, the N-best CSV beside it (`inference.nbest_path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with cli.atomic_path(path) as partial:
        caption_files.write_predictions_csv(partial, {p.file_name: p.caption for p in predictions})
    if nbest:
        with cli.atomic_path(inference.nbest_path(path)) as partial:
            inference.write_nbest_csv(partial, predictions)


def write_scores(path: Path, scores: scorecard.CaptionScores, source: Mapping[str, object]) -> None:
    """The scores JSON at `path`: `source`'s fields (what was scored), then the scores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with cli.atomic_path(path) as partial:
        scorecard.write_json(partial, scores, **source)
