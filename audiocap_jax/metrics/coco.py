"""What the COCO metrics need beyond pycocoevalcap's scorers, computed exactly as pycocoevalcap does.

`scoring.score` calls pycocoevalcap's Bleu(4), Rouge and Cider directly; this module adds the per-clip BLEU
statistics a bootstrap resample re-aggregates, METEOR through one JVM that names the clips it dies on, and
SPIDEr-max over N-best candidates. Inputs are PTB-tokenised: `gts` maps a file name to its references, `res`
to a one-caption list. Legend: B clips, N bootstrap resamples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
from absl import logging
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider

from audiocap_jax.metrics import java


def bleu_statistics(gts: Mapping[str, list[str]], res: Mapping[str, list[str]]) -> np.ndarray:
    """Per clip [testlen, closest reflen, guess_1..4, correct_1..4] exactly as pycocoevalcap's BleuScorer
    counts them, so corpus BLEU can be recomputed for any multiset of clips. [B, 10] float64"""
    scorer = BleuScorer(n=4)
    for name in gts:
        scorer += (res[name][0], gts[name])
    rows = []
    for comps in scorer.ctest:
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])
        rows.append([comps["testlen"], reflen, *comps["guess"], *comps["correct"]])
    return np.array(rows, dtype=np.float64)


def corpus_bleu(statistics: np.ndarray) -> np.ndarray:
    """BLEU-1..4 from summed clip statistics [..., B, 10] -> [..., 4], pycocoevalcap's formula (tiny/small)."""
    tiny, small = 1e-15, 1e-9
    totals = statistics.sum(axis=-2)
    testlen, reflen, guess, correct = totals[..., 0], totals[..., 1], totals[..., 2:6], totals[..., 6:10]
    precisions = np.cumprod((correct + tiny) / (guess + small), axis=-1)
    bleus = precisions ** (1.0 / np.arange(1, 5))
    ratio = (testlen + tiny) / (reflen + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * brevity[..., None]


@dataclasses.dataclass(frozen=True)
class MeteorScores:
    corpus: float | None  # None when some clips failed
    per_clip: list[float]
    resampled: np.ndarray  # [N] corpus METEOR of each bootstrap resample
    failures: dict[str, str]  # file name -> the jar's error on that clip's SCORE line


def meteor(gts: Mapping[str, list[str]], res: Mapping[str, list[str]], resamples: np.ndarray) -> MeteorScores:
    """METEOR as pycocoevalcap computes it (same SCORE then EVAL lines to one JVM), plus the corpus METEOR of
    each bootstrap resample [N, B] of clip indices, re-aggregated by the jar from the per-clip statistics.

    A clip whose SCORE line kills the JVM is named with the jar's error and the JVM restarted for the rest
    (5 s each), so every clip at fault is found in one pass; then there is no corpus METEOR.
    """
    problem = java.java_problem("METEOR")
    if problem is not None:
        raise FileNotFoundError(problem)
    jvm = java.MeteorJvm()
    statistics, failures = [], {}
    try:
        for name in gts:
            try:
                statistics.append(jvm.stat(res[name][0], gts[name]))
            except java.JavaError as error:
                logging.error("metrics: METEOR failed on %r: %s", name, error)
                failures[name] = error.cause
                jvm.close()
                jvm = java.MeteorJvm()
        if failures:
            return MeteorScores(None, [], np.zeros(0), failures)
        value, per_clip = jvm.eval(statistics)
        resampled = np.array([jvm.eval([statistics[i] for i in row])[0] for row in resamples])
    finally:
        jvm.close()
    return MeteorScores(value, per_clip, resampled, {})


def spider_max(
    gts: Mapping[str, list[str]], candidate_tokens: Mapping[str, list[str]], candidate_spice: Iterator[float]
) -> np.ndarray:
    """Per clip: the highest SPIDEr among its candidates (as aac-metrics' spider_max). [B] float64

    CIDEr-D of candidate k is scored with the clip's references as corpus (document frequencies come from the
    references only, so other clips' candidates never change it); shorter lists repeat their last candidate.
    """
    names = list(gts)
    depth = max(len(c) for c in candidate_tokens.values())
    cider = np.stack(
        [
            Cider().compute_score(
                gts, {n: [candidate_tokens[n][min(k, len(candidate_tokens[n]) - 1)]] for n in names}
            )[1]
            for k in range(depth)
        ],
        axis=1,
    )  # --> [B, depth]
    spice = np.full((len(names), depth), -np.inf)
    for i, name in enumerate(names):
        for k in range(len(candidate_tokens[name])):
            spice[i, k] = next(candidate_spice)
        cider[i, len(candidate_tokens[name]) :] = -np.inf
    return np.max((cider + spice) / 2, axis=1)
