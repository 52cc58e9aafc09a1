"""Every metric of a preset on aligned captions: `score` with its `ScoreOptions` (what training validation and
`evaluate` call through the evaluator), and the checkpoint-selection metric.

`score` runs in stages, each adding to one `_Tally`: PTB tokenisation (`_tokenize`), the classic metrics
(`_add_classic`), SPICE and SPIDEr (`_add_spice`), SPIDEr-max (`_add_spider_max`), the model-based DCASE
metrics (`_add_fluency`) and Vocab, then the bootstrap intervals (`_intervals`). A preset only adds metrics:
the classic numbers are the same under every preset, and a missing model or jar turns only the metrics that
need it into None with the fix. Clips are always scored in sorted file-name order, so results do not depend on
dict order. Legend: B scored clips, N bootstrap resamples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from absl import logging
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from audiocap_jax.metrics import caption_files, coco, dcase, java, scorecard, spice_jar

# The function, not the module: `ScoreOptions` has a `keywords` field.
from audiocap_jax.metrics.keywords import score_keywords

CLASSIC_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider")
# Metrics whose corpus value is the mean of the per-clip values, so a bootstrap resamples per-clip values.
# BLEU (corpus n-gram counts) and METEOR (the jar's corpus statistics) are recomputed per resample.
_MEAN_OF_CLIPS = frozenset(
    {"rouge_l", "cider_d", "spice", "spider", "spider_fl", "fense", "sbert_sim", "fer", "spider_max"}
)
_NEEDS_MODELS = frozenset({"fense", "sbert_sim", "fer", "spider_fl"})
# No bootstrap interval: a resample holds only ~63% distinct clips, so its vocabulary is always smaller than
# the corpus's (975 AudioCaps clips: 970 words, resamples 782-832), and the interval would not contain it.
_NO_INTERVAL = frozenset({"vocab"})
_SPICE_OFF = "SPICE is off; fix: --spice=auto"
_CLIP_FIX = "check those predictions (a degenerate or very long caption?); the other metrics are scored"


@dataclasses.dataclass(frozen=True)
class MetricPreset:
    """A named metric set: `ranking` is the challenge's ranking metric, `metrics` the table order."""

    ranking: str
    metrics: tuple[str, ...]


# The one table of presets (`evaluate --metrics`, config `eval.metrics`), after aac-metrics' METRICS_SETS.
PRESETS = {
    "coco": MetricPreset("spider", CLASSIC_METRICS),
    "dcase2023": MetricPreset("spider_fl", ("spider_fl", "fer", *CLASSIC_METRICS)),
    "dcase2024": MetricPreset("fense", ("fense", "sbert_sim", "fer", "spider_fl", "vocab", *CLASSIC_METRICS)),
}
PRESET_HELP = (
    "coco: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr (ranked by SPIDEr); "
    "dcase2023: + SPIDEr-FL (DCASE 2023 task 6a ranking) and FER; "
    "dcase2024: FENSE (DCASE 2024 task 6 ranking) first, + SBERT-sim, FER, SPIDEr-FL, Vocab. "
    f"FENSE-family metrics need `{dcase.DOWNLOAD_COMMAND}` once."
)
# Always computed (no jar, no model), so it is what `select_best_metric` falls back to.
FALLBACK_METRIC = "cider_d"


def get_preset(name: str) -> MetricPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown metric preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclasses.dataclass(frozen=True)
class _Tokens:
    """The PTB-tokenised texts every metric scores: the clips the tokenizer did not fail on, sorted."""

    names: list[str]
    res: dict[str, list[str]]  # file name -> [prediction]
    gts: dict[str, list[str]]  # file name -> its references
    candidates: dict[str, list[str]] | None  # file name -> its N-best list; None without `candidates=`


@dataclasses.dataclass
class _Tally:
    """What the stages of `score` add up, in the order they add it (the order of the per-clip JSON keys)."""

    corpus: dict[str, float | None] = dataclasses.field(default_factory=dict)
    per_clip: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # metric -> float64 [B]
    resampled: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # metric -> [N] corpus values
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    failed_clips: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def warn(self, message: str) -> None:
        logging.warning("metrics: %s", message)
        self.warnings.append(message)

    def fail(self, what: str, failures: Mapping[str, str]) -> None:
        """Records `what` (a JVM tool) as failed on each of these clips, with its own words."""
        for name, cause in failures.items():
            self.failed_clips.setdefault(name, []).append(f"{what}: {cause}")


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """How captions are scored: the one set of scoring options and defaults (`score`, validation, `evaluate`).

    preset: "coco" (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr = (CIDEr-D + SPICE) / 2), "dcase2023"
    (+ SPIDEr-FL, FER) or "dcase2024" (FENSE, SBERT-sim, FER, SPIDEr-FL, Vocab + classic).
    spice: "auto" computes SPICE when `spice_jar.spice_status` says it can and otherwise reports SPICE and the
    metrics built on it as None with the fix (a crash too; the other metrics survive); True requires it; False
    skips it. spice_dir: where its jars are (default `spice_jar`'s).
    model_dir: the FENSE/FER models (dcase.default_model_dir()); without them those metrics are None with the
    download command, and nothing else changes.
    bootstrap: number of resamples of the clips (with replacement, numpy seed `seed`) for 95% percentile
    intervals of every corpus metric; 0 = none.
    allow_missing / allow_extra: score only the clips that have predictions / ignore predictions of clips
    without references (otherwise either is an `AlignmentError`).
    keywords: keyword P/R/F1 too (`keyword_style` of a split's prefix).
    """

    preset: str = "coco"
    spice: Literal["auto"] | bool = "auto"
    spice_dir: str | Path | None = None
    model_dir: str | Path | None = None
    bootstrap: int = 0
    seed: int = 0
    allow_missing: bool = False
    allow_extra: bool = False
    keywords: bool = False

    def __call__(
        self,
        predictions: Mapping[str, str],
        references: Mapping[str, Sequence[str]],
        candidates: Mapping[str, Sequence[str]] | None = None,
    ) -> scorecard.CaptionScores:
        """`score` with these options: the evaluator's scorer."""
        return score(predictions, references, self, candidates=candidates)


def score(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    options: ScoreOptions | None = None,
    *,
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> scorecard.CaptionScores:
    """The preset's metrics (`PRESETS`), classic ones pycocoevalcap-identical, DCASE ones aac-metrics-identical.

    Like aac-metrics' `evaluate`, every metric sees the PTB-tokenised, lowercased text without punctuation.
    options: `ScoreOptions` (default: its defaults).
    candidates: N-best lists per clip (file name -> captions, best first); adds SPIDEr-max = mean over clips of
    the best candidate's SPIDEr. `predictions` stay the captions every other metric scores.
    Costs: two JVM starts (~1 s PTB, ~5 s METEOR), SPICE when on, the two small BERTs for FENSE-family metrics.
    """
    options = options or ScoreOptions()
    scores = _score_captioning(predictions, references, options, candidates)
    if options.keywords:
        keyword_scores = score_keywords(
            predictions, references, allow_missing=options.allow_missing, allow_extra=options.allow_extra
        )
        scores = dataclasses.replace(scores, corpus={**scores.corpus, **keyword_scores.corpus})
    return scores


def _score_captioning(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    options: ScoreOptions,
    candidates: Mapping[str, Sequence[str]] | None,
) -> scorecard.CaptionScores:
    """`score` without the keyword metrics: the stages of the module's docstring."""
    metric_preset = get_preset(options.preset)
    bootstrap = options.bootstrap
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap}; give a number of resamples >= 0 (1000 is usual), 0 = none")
    spice_state = _resolve_spice(options.spice, options.spice_dir)
    aligned = caption_files.align(
        predictions, references, allow_missing=options.allow_missing, allow_extra=options.allow_extra
    )
    candidate_lists = caption_files.align_candidates(candidates, aligned) if candidates is not None else None
    tally = _Tally(warnings=list(aligned.warnings))
    tokens = _tokenize(aligned, candidate_lists, tally)
    names = tokens.names
    resamples = np.random.default_rng(options.seed).integers(
        0, len(names), size=(bootstrap, len(names))
    )  # [N, B]

    _add_classic(tokens, resamples, tally)
    candidate_spice: Iterator[float] = iter(())
    if spice_state is not None:
        candidate_spice = _add_spice(tokens, spice_state, options.spice is True, tally)
    if tokens.candidates is not None:
        _add_spider_max(tokens, candidate_spice, tally)
    _add_fluency(tokens, metric_preset, options.model_dir, tally)
    if "vocab" in metric_preset.metrics:
        token_sets = [frozenset(tokens.res[n][0].split()) for n in names]
        tally.per_clip["vocab"] = np.array([len(t) for t in token_sets], dtype=np.float64)
        tally.corpus["vocab"] = float(len(frozenset().union(*token_sets)))

    order = [m for m in metric_preset.metrics if m in tally.corpus]
    order += [m for m in tally.corpus if m not in metric_preset.metrics]
    corpus = {k: None if tally.corpus[k] is None else float(tally.corpus[k]) for k in order}
    intervals = _intervals(corpus, tally, resamples) if bootstrap else {}
    per_clip = {n: {m: float(v[i]) for m, v in tally.per_clip.items()} for i, n in enumerate(names)}
    return scorecard.CaptionScores(
        corpus, per_clip, tally.unavailable, tally.warnings, intervals, tally.failed_clips
    )


def _resolve_spice(
    setting: Literal["auto"] | bool, spice_dir: str | Path | None
) -> spice_jar.SpiceStatus | None:
    """None when SPICE is off; raises for setting=True when it cannot run (before minutes of other work)."""
    if setting is False:
        return None
    if setting not in ("auto", True):
        raise ValueError(f"spice={setting!r}; expected 'auto', True or False")
    status = spice_jar.spice_status(spice_dir)
    if not status.available and setting is True:
        raise spice_jar.SpiceUnavailableError(status.reason)
    return status


def _tool_failure(what: str, failures: Mapping[str, str], fix: str) -> str:
    """The `unavailable` reason of a metric whose tool failed on some clips: which ones, and its own words."""
    causes = sorted(set(failures.values()))
    return (
        f"{what} failed on {len(failures)} clip{'s' if len(failures) > 1 else ''}: "
        f"{caption_files.format_names(sorted(failures))} "
        f"({'; '.join(causes[:3])}); "
        f"fix: {fix}"
    )


def _tokenize(
    aligned: caption_files.Alignment, candidate_lists: Mapping[str, list[str]] | None, tally: _Tally
) -> _Tokens:
    """Each clip's texts, tokenised in one JVM: prediction, references, then its N-best candidates. A clip
    whose text the tokenizer fails on is left out of every metric (named in `tally`)."""
    texts = [
        (n, t)
        for n in aligned.file_names
        for t in [aligned.predictions[n], *aligned.references[n], *(candidate_lists or {}).get(n, [])]
    ]
    tokenized, failures = java.isolate_failures(
        lambda items: java.ptb_tokenize([texts[i][1] for i in items]), len(texts), "PTB tokenizer"
    )
    ptb_failures = {texts[i][0]: cause for i, cause in failures.items()}
    if ptb_failures:
        tally.fail("PTB tokenizer", ptb_failures)
        tally.warn(_tool_failure("PTB tokenizer", ptb_failures, "left out of every metric; " + _CLIP_FIX))
    names = [n for n in aligned.file_names if n not in ptb_failures]
    by_clip: dict[str, list[str]] = {n: [] for n in names}
    for i, (name, _) in enumerate(texts):
        if name in by_clip:
            by_clip[name].append(tokenized[i])
    references_end = {n: 1 + len(aligned.references[n]) for n in names}
    res = {n: by_clip[n][:1] for n in names}
    gts = {n: by_clip[n][1 : references_end[n]] for n in names}
    candidate_tokens = {n: by_clip[n][references_end[n] :] for n in names} if candidate_lists else None

    punctuation_only = [n for n in names if not res[n][0] and aligned.predictions[n].strip()]
    if punctuation_only:
        tally.warn(
            f"{len(punctuation_only)} predictions are only punctuation (scored as empty): "
            f"{caption_files.format_names(punctuation_only)}"
        )
    return _Tokens(names, res, gts, candidate_tokens)


def _add_classic(tokens: _Tokens, resamples: np.ndarray, tally: _Tally) -> None:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D by pycocoevalcap's scorers; BLEU's and METEOR's corpus value of
    each resample [N, B] too (theirs is not a mean of clips). A METEOR failure leaves only METEOR out."""
    gts, res = tokens.gts, tokens.res
    bleu, bleu_per_clip = Bleu(4).compute_score(gts, res, verbose=0)
    bleu_resampled = coco.corpus_bleu(coco.bleu_statistics(gts, res)[resamples])  # --> [N, 4]
    for k, (value, values) in enumerate(zip(bleu, bleu_per_clip, strict=True)):
        key = f"bleu_{k + 1}"
        tally.corpus[key], tally.per_clip[key], tally.resampled[key] = (
            value,
            np.array(values),
            bleu_resampled[:, k],
        )
    meteor = coco.meteor(gts, res, resamples)
    tally.corpus["meteor"] = meteor.corpus
    if meteor.failures:
        tally.fail("METEOR", meteor.failures)
        tally.unavailable["meteor"] = _tool_failure("METEOR", meteor.failures, _CLIP_FIX)
    else:
        tally.per_clip["meteor"], tally.resampled["meteor"] = np.array(meteor.per_clip), meteor.resampled
    tally.corpus["rouge_l"], tally.per_clip["rouge_l"] = Rouge().compute_score(gts, res)
    tally.corpus["cider_d"], tally.per_clip["cider_d"] = Cider().compute_score(gts, res)


def _add_spice(
    tokens: _Tokens, status: spice_jar.SpiceStatus, required: bool, tally: _Tally
) -> Iterator[float]:
    """SPICE and SPIDEr = (CIDEr-D + SPICE) / 2, or both None with the reason. One SPICE run scores the
    predictions and every N-best candidate (per-clip SPICE is independent); returns the candidates' values,
    clip by clip, for SPIDEr-max. A crash is re-raised when SPICE is `required`."""
    candidate_spice: Iterator[float] = iter(())
    if status.available:
        try:
            candidate_spice = _spice_values(tokens, status.spice_dir, tally)
        except (java.JavaError, OSError, ValueError, KeyError) as e:
            if required:
                raise
            logging.error("metrics: SPICE failed, reporting it as unavailable: %s", e)
            tally.unavailable["spice"] = (
                f"SPICE failed: {str(e).splitlines()[0]} (full error in the log); fix: {spice_jar.SPICE_FIX} --force"
            )
    else:
        tally.unavailable["spice"] = status.reason
    if "spice" in tally.unavailable:
        tally.corpus["spice"] = tally.corpus["spider"] = None
        tally.unavailable["spider"] = "SPIDEr needs SPICE; " + tally.unavailable["spice"]
    else:
        tally.per_clip["spider"] = (tally.per_clip["cider_d"] + tally.per_clip["spice"]) / 2
        tally.corpus["spider"] = (tally.corpus["cider_d"] + tally.corpus["spice"]) / 2
    return candidate_spice


def _spice_values(tokens: _Tokens, spice_dir: Path, tally: _Tally) -> Iterator[float]:
    """Per-clip and corpus SPICE of the predictions (or the clips it failed on); the candidates' values."""
    names = tokens.names
    extra = [(n, c) for n in names for c in tokens.candidates[n]] if tokens.candidates else []
    items = [(n, tokens.res[n][0]) for n in names] + extra
    values, failures = spice_jar.score_items(items, tokens.gts, spice_dir)
    if failures:
        tally.fail("SPICE", failures)
        tally.unavailable["spice"] = _tool_failure("SPICE", failures, _CLIP_FIX)
        return iter(())
    tally.per_clip["spice"] = np.array(values[: len(names)])
    tally.corpus["spice"] = float(np.mean(tally.per_clip["spice"]))
    undefined = [n for n, v in zip(names, tally.per_clip["spice"], strict=True) if math.isnan(v)]
    if undefined:
        tally.warn(
            f"SPICE is NaN (as in pycocoevalcap, so is its mean) for {caption_files.format_names(undefined)}"
        )
    return iter(values[len(names) :])


def _add_spider_max(tokens: _Tokens, candidate_spice: Iterator[float], tally: _Tally) -> None:
    """SPIDEr-max over the N-best lists, or None with SPICE's reason when there is no SPIDEr."""
    tally.corpus["spider_max"] = None
    if "spider" in tally.per_clip:
        tally.per_clip["spider_max"] = coco.spider_max(tokens.gts, tokens.candidates, candidate_spice)
        tally.corpus["spider_max"] = float(np.mean(tally.per_clip["spider_max"]))
    else:
        tally.unavailable["spider_max"] = "SPIDEr-max needs SPICE; " + tally.unavailable.get(
            "spice", _SPICE_OFF
        )


def _add_fluency(
    tokens: _Tokens, metric_preset: MetricPreset, model_dir: str | Path | None, tally: _Tally
) -> None:
    """The preset's model-based metrics (FENSE, SBERT-sim, FER, SPIDEr-FL), or None with why not."""
    wanted = [m for m in metric_preset.metrics if m in _NEEDS_MODELS]
    if not wanted:
        return
    names = tokens.names
    fluency, reason = _fluency_per_clip(
        model_dir,
        [tokens.res[n][0] for n in names],
        [tokens.gts[n] for n in names],
        tally.per_clip.get("spider"),
    )
    tally.per_clip.update(fluency)
    for metric in wanted:
        if metric in tally.per_clip:
            tally.corpus[metric] = float(np.mean(tally.per_clip[metric]))
        else:
            tally.corpus[metric] = None
            if metric == "spider_fl" and reason is None:
                tally.unavailable[metric] = "SPIDEr-FL needs SPICE; " + tally.unavailable.get(
                    "spice", _SPICE_OFF
                )
            else:
                tally.unavailable[metric] = f"{scorecard.METRIC_NAMES[metric]} unavailable: {reason}"


def _fluency_per_clip(
    model_dir: str | Path | None,
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    spider: np.ndarray | None,
) -> tuple[dict[str, np.ndarray], str | None]:
    """Per-clip FER, SBERT-sim, FENSE and (with SPIDEr) SPIDEr-FL, or ({}, why not) when the models are
    missing or fail to load; the reason ends with the command that fixes it."""
    reason = dcase.unavailable_reason(model_dir)
    if reason is not None:
        return {}, reason
    try:
        models = dcase.load_models(model_dir)
        errors = dcase.fluency_errors(dcase.error_probabilities(models, candidates))
        similarity = dcase.sbert_similarity(models, candidates, references)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        logging.error("metrics: the FENSE models failed, reporting them as unavailable: %s", e)
        return {}, f"{str(e).splitlines()[0]} (full error in the log); fix: {dcase.DOWNLOAD_COMMAND}"
    per_clip = {
        "fer": errors,
        "sbert_sim": similarity,
        "fense": dcase.fluency_penalized(similarity, errors),
    }
    if spider is not None:
        per_clip["spider_fl"] = dcase.fluency_penalized(spider, errors)
    return per_clip, None


def _intervals(
    corpus: Mapping[str, float | None], tally: _Tally, resamples: np.ndarray
) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% percentile interval of each computed corpus metric over the resamples [N, B]: the mean of
    the resampled per-clip values, or the corpus value recomputed per resample (BLEU, METEOR)."""
    intervals = {}
    for metric, value in corpus.items():
        if value is None or metric in _NO_INTERVAL:
            continue
        values = (
            tally.per_clip[metric][resamples].mean(axis=1)
            if metric in _MEAN_OF_CLIPS
            else tally.resampled[metric]
        )
        low, high = np.percentile(values, [2.5, 97.5])
        intervals[metric] = (float(low), float(high))
    return intervals


def keyword_style(prefix: str) -> bool:
    """Whether a prefix asks for keywords (`audioset > keywords: `): those outputs also get keyword P/R/F1."""
    return prefix.rstrip().endswith("keywords:")


def select_best_metric(results: Mapping[str, float], metric: str) -> tuple[str, float]:
    """The checkpoint-selection score: `metric` (e.g. "clotho/fense") if it was computed, else the same
    dataset's CIDEr-D, which every preset computes without jars or models (one log line per metric)."""
    if metric in results:
        return metric, results[metric]
    dataset = metric.rpartition("/")[0]
    fallback = f"{dataset}/{FALLBACK_METRIC}" if dataset else FALLBACK_METRIC
    if fallback not in results:
        raise ValueError(
            f"best_metric {metric!r} and its fallback {fallback!r} are not among the validation results "
            f"{sorted(results)}; set --config.eval.best_metric to one of them"
        )
    if metric not in _fallbacks_logged:
        _fallbacks_logged.add(metric)
        logging.warning(
            "best_metric %s was not computed (see the unavailable metrics above); selecting checkpoints by %s.",
            metric,
            fallback,
        )
    return fallback, results[fallback]


_fallbacks_logged: set[str] = set()
