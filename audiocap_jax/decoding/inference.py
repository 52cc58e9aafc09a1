"""Caption batches with the shared jitted search: what training validation, `predict` and `evaluate` run.

The host side of decoding: batches go onto the mesh, `whisper_binding.make_decode_fn`'s function runs (each clip
sampled with its own key, `clip_key`: the seed folded with a hash of the clip's name, window included, so a
clip's sampled caption is the same whatever the batch size, mesh, process count and other clips), each process
turns its own rows back into text, the rows of all processes that share the mesh are gathered so every one of
them sees every prediction in dataset order, and each clip's candidates are ranked by the reranker
(`rerank.py`; "none" keeps the search's order). A mesh of one process's devices (`predict`'s) gathers nothing.

Legend: B clips per batch, R candidates per clip returned by the search, L `max_length`, M mel bins, S frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from audiocap_jax import csv_cells
from audiocap_jax.decoding import rerank, whisper_binding
from audiocap_jax.decoding.search_settings import SEARCH_KEYS, DecodeSettings
from audiocap_jax.model.sharding import global_to_host, host_to_global, mesh_processes
from audiocap_jax.text import Tokenizer

NBEST_COLUMNS = ("file_name", "rank", "caption", "score")


@dataclasses.dataclass(frozen=True)
class Candidate:
    caption: str  # clean, as Prediction.caption
    score: float  # what ranked it: the reranker's score, or the search's with rerank="none"


@dataclasses.dataclass(frozen=True)
class Prediction:
    file_name: str
    caption: str  # clean: prompt and special tokens removed; the chosen candidate (rank 1)
    raw: str  # the whole decoded sequence with special tokens, as the original logged it
    score: float  # the search's score of the chosen sequence (sum log p / length penalty)
    references: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = ()  # the N-best list, best first (num_return_sequences of them)


def settings_fields(config: Any) -> dict[str, Any]:
    """`DecodeSettings` fields from a decoding config (configs/predict.py or the training `eval`
    section), as the user wrote them; `decode_settings` adds the tokenizer's and checkpoint's facts."""
    return {name: config[name] for name in SEARCH_KEYS}


def candidate_pool(config: Any) -> int:
    """Candidates per clip the search returns: all of them (beams or samples) for a reranker to choose from,
    else `num_return_sequences`."""
    if config.rerank == rerank.NONE:
        return config.num_return_sequences
    return config.num_samples if config.strategy == "sample" else config.num_beams


def decode_settings(config: Any, tokenizer: Tokenizer, checkpoint_dir: Path | None) -> DecodeSettings:
    """The one mapping of a decoding config to `DecodeSettings`; suppress lists from a HF checkpoint's
    generation_config when asked. With a reranker, the search returns every candidate (`candidate_pool`)."""
    fields = settings_fields(config) | dict(
        eos_id=tokenizer.specials.eot, num_return_sequences=candidate_pool(config)
    )
    generation = checkpoint_dir / "generation_config.json" if checkpoint_dir is not None else None
    if config.use_checkpoint_suppress_tokens and generation is not None and generation.exists():
        return DecodeSettings.from_generation_config(generation, **fields)
    return DecodeSettings(**fields)


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


def clip_ids(file_names: Sequence[str]) -> np.ndarray:
    """uint32 [B]: a stable hash of each clip's name (file name and window), what its sampling key folds in.
    Python's `hash` changes between processes; BLAKE2b does not."""
    return np.asarray(
        [
            int.from_bytes(hashlib.blake2b(str(n).encode("utf-8"), digest_size=4).digest(), "little")
            for n in file_names
        ],
        np.uint32,
    )


def _decode_batch(
    decode_fn: Any,
    model_state: Any,
    batch: Mapping[str, np.ndarray],
    tokenizer: Tokenizer,
    mesh: Mesh,
    base_key: jax.Array | None,
    reranker: rerank.Reranker,
) -> list[dict[str, Any]]:
    """This process's valid rows of one batch, decoded, as JSON-ready dicts (what `allgather_strings` can
    carry between processes): every candidate's caption, raw text, score, generated length and plug-in score.
    `base_key`: the sampling seed's key (None: beam search, no keys)."""
    prompt = np.asarray(batch["decoder_prompt"], np.int32)
    lengths = np.asarray(batch.get("prompt_lengths", np.full(len(prompt), prompt.shape[1])), np.int32)
    host = {"mel": batch["mel"], "prompt": prompt, "lengths": lengths}
    sampling = base_key is not None
    inputs = host_to_global(host | ({"ids": clip_ids(batch["file_name"])} if sampling else {}), mesh)
    # One key per clip, from the seed and the clip's name: the same on every process, mesh and batch size.
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, inputs["ids"]) if sampling else None
    sequences, scores = decode_fn(model_state, inputs["mel"], inputs["prompt"], inputs["lengths"], keys)
    sequences, scores = global_to_host(sequences, mesh), global_to_host(scores, mesh)  # [B, R, L], [B, R]
    valid = np.flatnonzero(np.asarray(batch.get("mask", np.ones(len(prompt), bool))))
    generated = rerank.generated_lengths(sequences[valid], lengths[valid], tokenizer.specials.eot)
    captions = [[tokenizer.caption_from_ids(ids, int(lengths[i])) for ids in sequences[i]] for i in valid]
    plugin = (
        reranker.score_batch(np.asarray(batch["mel"])[valid], captions, scores[valid])
        if reranker.plugin is not None
        else np.zeros_like(scores[valid])
    )
    references = batch.get("references", [[]] * len(prompt))
    return [
        dict(
            file_name=str(batch["file_name"][i]),
            references=[r for r in references[i] if r],
            captions=captions[j],
            raws=[tokenizer.decode_with_specials(ids) for ids in sequences[i]],
            scores=scores[i].tolist(),
            lengths=generated[j].tolist(),
            plugin=plugin[j].tolist(),
        )
        for j, i in enumerate(valid)
    ]


def _ranked_predictions(
    rows: list[dict[str, Any]],
    reranker: rerank.Reranker,
    settings: DecodeSettings,
    num_candidates: int | None,
) -> list[Prediction]:
    """Every clip's candidates ranked by the reranker, the best as the prediction and the first
    `num_candidates` as its N-best list. The whole run at once: MBR's document frequencies come from every
    clip, so the choice does not depend on the batch size or the mesh."""
    candidates = [row["captions"] for row in rows]
    values = rerank.rerank_scores(
        reranker,
        candidates,
        np.array([row["scores"] for row in rows]),
        np.array([row["lengths"] for row in rows]),
        settings,
        np.array([row["plugin"] for row in rows]),
    )  # --> [C, R]
    predictions = []
    for row, order, value in zip(rows, rerank.ranking(values), values, strict=True):
        best = order[0]
        predictions.append(
            Prediction(
                row["file_name"],
                row["captions"][best],
                row["raws"][best],
                float(row["scores"][best]),
                tuple(row["references"]),
                tuple(Candidate(row["captions"][k], float(value[k])) for k in order[:num_candidates]),
            )
        )
    return predictions


def caption_batches(
    decode_fn: Any,
    model_state: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    tokenizer: Tokenizer,
    mesh: Mesh,
    *,
    desc: str = "captioning",
    total: int | None = None,
    show_progress: bool = True,
    settings: DecodeSettings | None = None,
    reranker: rerank.Reranker = rerank.KEEP_ORDER,
    num_candidates: int | None = None,
) -> list[Prediction]:
    """Decode every valid row of per-process batches; returns the predictions of all processes sharing `mesh`,
    in order.

    A batch has mel `[B, M, S]`, decoder_prompt `[B, P]` int32, optionally prompt_lengths `[B]` (default P),
    mask `[B]` bool (padding rows are False), file_name `[B]` and references `[B, R]` (str objects).
    `settings` (those `decode_fn` was made with) give the sampling seed and the length penalty the
    "likelihood" reranker undoes; `num_candidates`: how many of each clip's ranked candidates the prediction
    keeps (None = all the search returned). `show_progress`: a bar on process 0 (callers with their own bar
    turn it off).
    """
    settings = settings or DecodeSettings(eos_id=tokenizer.specials.eot)
    base_key = jax.random.key(settings.seed) if settings.strategy == "sample" else None
    local: list[dict[str, Any]] = []
    show = show_progress and jax.process_index() == 0
    for batch in tqdm(batches, desc=desc, total=total, disable=not show, unit="batch"):
        local += _decode_batch(decode_fn, model_state, batch, tokenizer, mesh, base_key, reranker)
    rows = (
        local
        if mesh_processes(mesh) == 1
        else [json.loads(r) for r in allgather_strings(list(map(json.dumps, local)))]
    )
    if not rows:
        return []
    return _ranked_predictions(rows, reranker, settings, num_candidates)


@dataclasses.dataclass(frozen=True)
class Decoder:
    """One decoding config, ready to run: the search settings, its jitted function and the reranker."""

    settings: DecodeSettings
    decode_fn: whisper_binding.DecodeFn
    reranker: rerank.Reranker
    num_candidates: int  # N-best candidates kept per clip (config num_return_sequences)

    @classmethod
    def from_config(
        cls, config: Any, model: Any, tokenizer: Tokenizer, checkpoint_dir: Path | None, mesh: Mesh
    ) -> Decoder:
        """`model`: a `Whisper` or its graphdef; each Decoder compiles its own search on first use."""
        settings = decode_settings(config, tokenizer, checkpoint_dir)
        return cls(
            settings,
            whisper_binding.make_decode_fn(model, settings, mesh),
            rerank.Reranker.from_name(config.rerank),
            config.num_return_sequences,
        )

    def caption(
        self,
        model_state: Any,
        batches: Iterable[Mapping[str, np.ndarray]],
        tokenizer: Tokenizer,
        mesh: Mesh,
        **progress: Any,
    ) -> list[Prediction]:
        """`caption_batches` with this config; `progress`: its desc and total."""
        return caption_batches(
            self.decode_fn,
            model_state,
            batches,
            tokenizer,
            mesh,
            settings=self.settings,
            reranker=self.reranker,
            num_candidates=self.num_candidates,
            **progress,
        )


def nbest_path(path: str | Path) -> Path:
    """`out.csv` -> `out_nbest.csv`: where the N-best list goes beside a one-caption CSV."""
    path = Path(path)
    return path.with_name(f"{path.stem}_nbest{path.suffix or '.csv'}")


def write_nbest_csv(path: str | Path, predictions: Sequence[Prediction]) -> None:
    """Writes `file_name,rank,caption,score` (rank 1 = the chosen caption; score = what ranked it), quoted
    and encoded as `caption_files.write_predictions_csv` writes the one-caption CSV, formula-like text guarded
    (`csv_cells`)."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv_cells.Writer(f)
        writer.writerow(NBEST_COLUMNS)
        for p in predictions:
            writer.writerows(
                (p.file_name, rank, c.caption, c.score) for rank, c in enumerate(p.candidates, 1)
            )
