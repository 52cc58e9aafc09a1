"""Caption batches with the shared jitted beam search: what training validation, `predict` and `evaluate` run.

The host side of decoding: batches go onto the mesh, `search.make_decode_fn`'s function runs, each process
turns its own rows back into text, and the texts of all processes are gathered so every process sees every
prediction in dataset order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from audiocap_jax import metrics, search
from audiocap_jax.model.sharding import global_to_host, host_to_global
from audiocap_jax.text import Tokenizer


@dataclasses.dataclass(frozen=True)
class Prediction:
    file_name: str
    caption: str  # clean: prompt and special tokens removed
    raw: str  # the whole decoded sequence with special tokens, as the original logged it
    score: float  # beam score of the returned sequence
    references: tuple[str, ...] = ()


def decode_settings(config: Any, tokenizer: Tokenizer, checkpoint_dir: Path | None) -> search.DecodeSettings:
    """Beam settings from the config; suppress lists from a HF checkpoint's generation_config when asked."""
    fields: dict[str, Any] = dict(
        eos_id=tokenizer.specials.eot,
        num_beams=config.num_beams,
        max_length=config.max_length,
        length_penalty=config.length_penalty,
        length_penalty_form=config.length_penalty_form,
        min_length=config.min_length,
        num_return_sequences=config.num_return_sequences,
    )
    generation = checkpoint_dir / "generation_config.json" if checkpoint_dir is not None else None
    if config.use_checkpoint_suppress_tokens and generation is not None and generation.exists():
        return search.DecodeSettings.from_generation_config(generation, **fields)
    return search.DecodeSettings(**fields)


def allgather_strings(texts: list[str]) -> list[str]:
    """Concatenate every process's list of strings (in process order); identity on one process."""
    if jax.process_count() == 1:
        return list(texts)
    encoded = [t.encode("utf-8") for t in texts]
    counts = multihost_utils.process_allgather(np.int32(len(encoded)))
    width = int(multihost_utils.process_allgather(np.int32(max((len(e) for e in encoded), default=0))).max())
    rows = int(counts.max())
    buffer = np.zeros((rows, max(width, 1)), np.uint8)
    lengths = np.zeros(rows, np.int32)
    for i, e in enumerate(encoded):
        buffer[i, : len(e)] = np.frombuffer(e, np.uint8)
        lengths[i] = len(e)
    all_buffers = multihost_utils.process_allgather(buffer)  # [P, rows, width]
    all_lengths = multihost_utils.process_allgather(lengths)
    return [
        bytes(all_buffers[p, i, : all_lengths[p, i]]).decode("utf-8")
        for p in range(len(counts))
        for i in range(int(counts[p]))
    ]


def caption_batches(
    decode_fn: Any,
    model_state: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    tokenizer: Tokenizer,
    mesh: Mesh,
    *,
    desc: str = "captioning",
    total: int | None = None,
) -> list[Prediction]:
    """Decode every valid row of per-process batches; returns all processes' predictions in order.

    A batch has mel `[B, M, S]`, decoder_prompt `[B, P]` int32, optionally prompt_lengths `[B]` (default P),
    mask `[B]` bool (padding rows are False), file_name `[B]` and references `[B, R]` (str objects).
    """
    local: list[tuple[str, str, str, float, tuple[str, ...]]] = []
    show = jax.process_index() == 0
    for batch in tqdm(batches, desc=desc, total=total, disable=not show, unit="batch"):
        prompt = np.asarray(batch["decoder_prompt"], np.int32)
        lengths = np.asarray(batch.get("prompt_lengths", np.full(len(prompt), prompt.shape[1])), np.int32)
        inputs = host_to_global({"mel": batch["mel"], "prompt": prompt, "lengths": lengths}, mesh)
        sequences, scores = decode_fn(model_state, inputs["mel"], inputs["prompt"], inputs["lengths"])
        sequences, scores = global_to_host(sequences, mesh), global_to_host(scores, mesh)
        mask = np.asarray(batch.get("mask", np.ones(len(prompt), bool)))
        for i in np.flatnonzero(mask):
            ids = sequences[i, 0]
            references = tuple(r for r in batch.get("references", [[]] * len(prompt))[i] if r)
            local.append(
                (
                    str(batch["file_name"][i]),
                    tokenizer.caption_from_ids(ids, int(lengths[i])),
                    tokenizer.decode_with_specials(ids),
                    float(scores[i, 0]),
                    references,
                )
            )
    if jax.process_count() == 1:
        return [Prediction(*row) for row in local]
    columns = [allgather_strings([row[k] for row in local]) for k in range(3)]
    scores = allgather_strings([repr(row[3]) for row in local])
    references = allgather_strings(["\x1f".join(row[4]) for row in local])
    return [
        Prediction(f, c, r, float(s), tuple(x for x in refs.split("\x1f") if x))
        for f, c, r, s, refs in zip(*columns, scores, references, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Scoring.
# ---------------------------------------------------------------------------------------------------------------
def keyword_style(prefix: str) -> bool:
    """Whether a prefix asks for keywords (`audioset > keywords: `): those outputs also get keyword P/R/F1."""
    return prefix.rstrip().endswith("keywords:")


def score_captions(
    captions: dict[str, str],
    references: dict[str, list[str]],
    *,
    keywords: bool = False,
    spice: str | bool = "auto",
    allow_missing: bool = False,
    allow_extra: bool = False,
    **score_options: Any,
) -> metrics.CaptionScores:
    """Captioning metrics over aligned predictions and references; with `keywords`, keyword P/R/F1 too.
    `score_options` go to `metrics.score` as given: preset, candidates, model_dir, bootstrap, seed."""
    allow = dict(allow_missing=allow_missing, allow_extra=allow_extra)
    scores = metrics.score(captions, references, spice=spice, **allow, **score_options)
    if keywords:
        keyword_scores = metrics.score_keywords(captions, references, **allow)
        scores = dataclasses.replace(scores, corpus={**scores.corpus, **keyword_scores.corpus})
    return scores
