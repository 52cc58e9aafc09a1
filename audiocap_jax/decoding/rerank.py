"""Rerank each clip's decoded candidates on the host, after the jitted search has returned them.

Legend: B clips of one decoding batch, C clips of a whole run, R candidates per clip (the search's returned
sequences: `num_beams` beams or `num_samples` samples when reranking), L `max_length`, M mel bins, S frames.

The search orders a clip's candidates by its own score, `sum log p / length_penalty(g)` (g = generated tokens
including eot). A reranker gives every candidate another score, higher is better; the chosen caption is its
argmax, ties keep the search's order. `rerank` (config key) names one:

- "none": the search's score and order.
- "likelihood": the mean log-probability per generated token, `sum log p / g`, recovered from the search's
  score, g and the settings' length penalty (`likelihood`). Unlike the search's score it does not depend on
  `length_penalty`, so beams searched with any penalty are compared on the same footing.
- "mbr": minimum Bayes risk with CIDEr-D as the gain: the candidate with the highest mean CIDEr-D against the
  other candidates of its clip, the consensus caption (`mbr_scores`). CIDEr-D is the project's: captions
  PTB-tokenised as `scoring.score` does, then pycocoevalcap's `Cider`, the scorer `scoring.score` reports. Its
  document frequencies come from the candidates of every clip of the run (each candidate's set of the other
  candidates of its clip is one document, pycocoevalcap's rule for a set of references), so words every clip
  uses weigh little; the whole run is scored at once, after decoding, so the choice does not depend on the
  batch size or the mesh. With a single clip every shared n-gram has zero idf and MBR keeps the search's order.
- "package.module:function": a plug-in scorer, imported when the run starts and called once per decoding
  batch while its audio is at hand, as `function(mel [B, M, S] float32, candidates: list[list[str]] (B lists of
  R captions), scores [B, R] float32 (the search's)) -> [B, R]` (higher is better), e.g. an audio-text model
  (CLAP) or a fluency-error detector, without touching the decoding loop.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

import numpy as np
from pycocoevalcap.cider.cider import Cider

from audiocap_jax.decoding import search
from audiocap_jax.metrics import java

NONE, LIKELIHOOD, MBR = "none", "likelihood", "mbr"
BUILTIN = (NONE, LIKELIHOOD, MBR)
PLUGIN_FORM = "package.module:function"

# mel float32 [B, M, S], candidates (B lists of R captions), search scores float32 [B, R] -> float [B, R]
Scorer = Callable[[np.ndarray, list[list[str]], np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Reranker:
    """A `rerank` setting, resolved: a built-in name, or a plug-in's name and its imported scorer."""

    name: str
    plugin: Scorer | None = None  # called per decoding batch with the batch's audio

    @classmethod
    def from_name(cls, name: str) -> Reranker:
        """ "none" | "likelihood" | "mbr" | "package.module:function" (imported now; ValueError if not)."""
        if name in BUILTIN:
            return cls(name)
        module_name, colon, function_name = name.partition(":")
        if not colon or not module_name or not function_name:
            raise ValueError(
                f"rerank {name!r} is neither one of {', '.join(BUILTIN)} nor a plug-in '{PLUGIN_FORM}'."
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"rerank {name!r}: module {module_name!r} does not import ({error}); install it or put it "
                "on PYTHONPATH."
            ) from error
        function = getattr(module, function_name, None)
        if not callable(function):
            raise ValueError(f"rerank {name!r}: module {module_name!r} has no function {function_name!r}.")
        return cls(name, function)

    def score_batch(self, mel: np.ndarray, candidates: list[list[str]], scores: np.ndarray) -> np.ndarray:
        """The plug-in's scores of one batch: mel [B, M, S], B lists of R captions, scores [B, R] --> [B, R]"""
        assert self.plugin is not None, "only plug-ins score per batch"
        result = np.asarray(self.plugin(mel, candidates, scores), np.float64)
        wrong = f"shape {result.shape}" if result.shape != scores.shape else "non-finite values"
        if result.shape != scores.shape or not np.all(np.isfinite(result)):
            raise ValueError(
                f"rerank plug-in {self.name!r} returned {wrong}; it must return finite scores of shape "
                f"{scores.shape} (clips, candidates)."
            )
        return result


KEEP_ORDER = Reranker(NONE)  # the search's order


def generated_lengths(sequences: np.ndarray, prompt_lengths: np.ndarray, eos_id: int) -> np.ndarray:
    """g: generated tokens per candidate, the first eot included (all after the prompt when none was
    generated before `max_length`). sequences int [B, R, L], prompt_lengths int [B] --> int32 [B, R]"""
    sequences = np.asarray(sequences)
    positions = np.arange(sequences.shape[-1])
    generated = positions[None, None, :] >= np.asarray(prompt_lengths)[:, None, None]  # [B, 1, L]
    is_eos = (sequences == eos_id) & generated
    first_eos = np.where(is_eos.any(-1), is_eos.argmax(-1), sequences.shape[-1] - 1)  # [B, R]
    return (first_eos + 1 - np.asarray(prompt_lengths)[:, None]).astype(np.int32)


def likelihood(scores: np.ndarray, lengths: np.ndarray, settings: search.DecodeSettings) -> np.ndarray:
    """sum log p / g from the search's score `sum log p / length_penalty(g)`. [C, R], [C, R] --> [C, R]"""
    penalty = np.asarray(search.length_penalty(np.asarray(lengths), settings), np.float64)
    return np.asarray(scores, np.float64) * penalty / np.asarray(lengths, np.float64)


def mbr_scores(candidates: Sequence[Sequence[str]]) -> np.ndarray:
    """Mean CIDEr-D of each candidate against the other candidates of its clip (see the module docstring for
    the document frequencies). C lists of R captions --> float64 [C, R]; zeros when R < 2."""
    num_clips, num_candidates = len(candidates), len(candidates[0]) if candidates else 0
    if num_candidates < 2:
        return np.zeros((num_clips, num_candidates))
    tokens = iter(java.ptb_tokenize([c for clip in candidates for c in clip]))
    tokenized = [[next(tokens) for _ in clip] for clip in candidates]
    if not any(t for clip in tokenized for t in clip):  # nothing to compare (pycocoevalcap needs an n-gram)
        return np.zeros((num_clips, num_candidates))
    keys = [(c, r) for c in range(num_clips) for r in range(num_candidates)]
    others = {(c, r): [t for k, t in enumerate(tokenized[c]) if k != r] for c, r in keys}
    _, values = Cider().compute_score(others, {(c, r): [tokenized[c][r]] for c, r in keys})
    return np.asarray(values, np.float64).reshape(num_clips, num_candidates)


def rerank_scores(
    reranker: Reranker,
    candidates: Sequence[Sequence[str]],
    scores: np.ndarray,
    lengths: np.ndarray,
    settings: search.DecodeSettings,
    plugin_scores: np.ndarray | None = None,
) -> np.ndarray:
    """The ranking score of every candidate of a run, higher is better. C lists of R captions, search scores
    [C, R], generated lengths [C, R], the plug-in's per-batch scores stacked [C, R] --> float64 [C, R]"""
    if reranker.name == NONE:
        return np.asarray(scores, np.float64)
    if reranker.name == LIKELIHOOD:
        return likelihood(scores, lengths, settings)
    if reranker.name == MBR:
        return mbr_scores(candidates)
    assert plugin_scores is not None, "a plug-in's scores are computed per batch"
    return np.asarray(plugin_scores, np.float64)


def ranking(values: np.ndarray) -> np.ndarray:
    """Candidate indices best first; equal values keep the search's order. [C, R] --> int [C, R]"""
    return np.argsort(-np.asarray(values), axis=-1, kind="stable")
