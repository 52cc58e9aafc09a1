"""HF's logits processors and warpers as array functions over decoder rows, and the exact top-k they use.

Legend: N decoder rows, L `max_length` (counts the forced prompt), V vocab, W candidates per row (the best
`_SAMPLE_CANDIDATES` tokens, or the whole vocabulary).

- Processors (every strategy): the token masks (`suppress_tokens`, `begin_suppress_tokens`, eot while a
  sequence is shorter than `min_length`), `no_repeat_ngram_size` bans (`ngram_bans`) and the repetition
  penalty (`penalise_repeats`). `step_processors` gathers what they need at one step; the search applies them
  in HF's order (see `search.py`). They see the decoder ids including the forced prompt, as HF's `input_ids`.
- Warpers (sampling): temperature, then the top-k and top-p filters over each row's best tokens, and a
  Gumbel-max draw keyed per row (`draw_tokens`).
- `top_k_per_example`: `lax.top_k` computed where each example lives (a mesh's batch shard), exact
  `blocked_top_k` on CPU; the beam step and the filters both rank through it.
Ties between exactly equal scores go towards the lower index, as `lax.top_k`'s do; top-p drops tied tokens at
its cut lower ids first (torch's unstable sort drops the same number, in no specified order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiocap_jax.decoding.search_settings import DecodeSettings
from audiocap_jax.model.backend import tracing_platform
from audiocap_jax.model.sharding import logical_to_spec

_TOP_K_BLOCK = 256  # candidates per block of `blocked_top_k`'s first pass


def top_k_per_example(x: jax.Array, k: int, block: int | None = None) -> tuple[jax.Array, jax.Array]:
    """lax.top_k over the last axis, computed where each example lives. [B, C] --> [B, k], [B, k]

    XLA's partitioner gathers the whole batch onto every device for a TopK; under a mesh (`jax.set_mesh`)
    we run it per batch shard instead (shard_map over the mesh axes the `batch` rule maps to). On CPU the
    exact `blocked_top_k` (with `block`, by default `_TOP_K_BLOCK`) replaces XLA:CPU's slow TopK; TPUs and
    GPUs have fast TopK kernels (and XLA:TPU ran out of scoped vector memory on the blocked form's
    reduce_window over a 51,968-token row).
    """
    block = block or _TOP_K_BLOCK

    def top_k(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        return blocked_top_k(a, k, block) if tracing_platform() == "cpu" else tuple(jax.lax.top_k(a, k))

    mesh = jax.sharding.get_abstract_mesh()
    spec = None if mesh.empty else logical_to_spec(("batch", None), x.shape, mesh)
    if spec is None or spec[0] is None:
        return top_k(x)
    return jax.shard_map(top_k, mesh=mesh, in_specs=spec, out_specs=(spec, spec))(x)


def blocked_top_k(x: jax.Array, k: int, block: int = _TOP_K_BLOCK) -> tuple[jax.Array, jax.Array]:
    """Exactly `lax.top_k(x, k)` (ties included), for rows much longer than k. [B, C] --> [B, k], [B, k]

    `lax.top_k` over a beam step's K*V candidates cost 2.3 ms of a 32 ms step (whisper-tiny, 8 clips,
    4 beams) on CPU. The k largest values lie in the k blocks with the largest maxima, so one cheap
    max-reduction picks k blocks and the exact top-k runs over their k*block values only.
    Blocks are taken in index order, so equal values resolve towards the lower index, as in `lax.top_k`.
    (A reduce_window and a gather rather than a padded reshape: XLA fused the candidates' computation into
    the pad twice over.)
    """
    b, c = x.shape
    num_blocks = -(-c // block)
    if num_blocks <= 4 * k:
        return tuple(jax.lax.top_k(x, k))
    padding = ((0, 0), (0, num_blocks * block - c))
    maxima = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, block), (1, block), padding)
    _, chosen = jax.lax.top_k(maxima, k)
    chosen = jnp.sort(chosen, axis=-1)  # --> [B, k] in index order
    columns = (chosen[:, :, None] * block + jnp.arange(block)).reshape(b, k * block)
    candidates = jnp.take_along_axis(x, columns, axis=1, mode="fill", fill_value=-jnp.inf)
    values, pick = jax.lax.top_k(candidates, k)
    return values, jnp.take_along_axis(columns, pick, axis=1)


def _token_mask(token_ids: tuple[int, ...], vocab_size: int, what: str) -> np.ndarray:
    """bool [V]: True at token_ids (a trace-time constant)."""
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what} {bad} are outside the model's vocabulary of {vocab_size} tokens.")
    mask = np.zeros(vocab_size, bool)
    mask[list(token_ids)] = True
    return mask


def _scatter_flags(tokens: jax.Array, keep: jax.Array, vocab_size: int) -> jax.Array:
    """True at each row's kept tokens, in one scatter. int32 [N, T], bool [N, T] --> bool [N, V]"""
    columns = jnp.where(keep, tokens, vocab_size)  # a spare column past the vocab takes what is not kept
    rows = jnp.arange(tokens.shape[0])[:, None]
    flags = jnp.zeros((tokens.shape[0], vocab_size + 1), bool).at[rows, columns].set(True)
    return flags[:, :vocab_size]


def ngram_bans(seqs: jax.Array, lengths: jax.Array, ngram_size: int, vocab_size: int) -> jax.Array:
    """HF's `NoRepeatNGramLogitsProcessor`: the tokens that would complete an n-gram already present in the
    row's first `lengths` tokens (the forced prompt included, as HF's decoder ids include it).
    int32 [N, L], int32 [N] --> bool [N, V]

    Window i (tokens i..i+n-1, inside the row) bans its last token when its first n-1 tokens equal the row's
    last n-1 tokens; a row shorter than n bans nothing. One gather and one comparison of every window with
    that suffix, [N, L, n-1], so the graph has the same operations whatever n (a Python loop over the n-1
    positions made n=100000 trace for minutes); `DecodeSettings` keeps n below L, which bounds the array.
    """
    n, width = ngram_size, seqs.shape[1]
    offsets = jnp.arange(n - 1)  # position j inside a window's first n-1 tokens
    suffix_columns = lengths[:, None] - (n - 1) + offsets[None, :]  # --> [N, n-1]
    suffix = jnp.take_along_axis(seqs, jnp.maximum(suffix_columns, 0), axis=1)
    window_columns = jnp.arange(width)[:, None] + offsets[None, :]  # [L, n-1]
    windows = jnp.take(seqs, jnp.minimum(window_columns, width - 1), axis=1)  # --> [N, L, n-1]
    inside = jnp.arange(width)[None, :] + n <= lengths[:, None]  # [N, L] window inside the row
    matches = inside & jnp.all(windows == suffix[:, None, :], axis=-1)  # --> [N, L]
    last_tokens = jnp.take(seqs, jnp.minimum(jnp.arange(width) + n - 1, width - 1), axis=1)  # --> [N, L]
    return _scatter_flags(last_tokens, matches, vocab_size)


class Processors(NamedTuple):
    """What HF's logit processors need at one step, per decoder row."""

    presence: jax.Array | None  # bool [N, V]: tokens in the row so far (None: no repetition penalty)
    banned: jax.Array  # bool [N, V]: tokens set to -inf (suppress, begin-suppress, min-length, n-gram)


def step_processors(
    seqs: jax.Array, lengths: jax.Array, step: jax.Array, settings: DecodeSettings, vocab_size: int
) -> Processors:
    """The bans and presence flags of one step, computed once for every strategy and group to apply.
    seqs int32 [N, L] with `lengths` int32 [N] tokens so far (prompt included; HF's `input_ids`)."""
    rows = seqs.shape[0]
    banned = jnp.broadcast_to(
        _token_mask(settings.suppress_tokens, vocab_size, "suppress_tokens"), (rows, vocab_size)
    )
    if settings.begin_suppress_tokens:
        begin = _token_mask(settings.begin_suppress_tokens, vocab_size, "begin_suppress_tokens")
        banned = banned | (begin[None, :] & (step == 0))
    if settings.min_length > 0:
        eos = _token_mask((settings.eos_id,), vocab_size, "eos_id")
        banned = banned | (eos[None, :] & (lengths < settings.min_length)[:, None])
    if settings.no_repeat_ngram_size > 0:
        banned = banned | ngram_bans(seqs, lengths, settings.no_repeat_ngram_size, vocab_size)
    presence = None
    if settings.repetition_penalty != 1.0:
        presence = _scatter_flags(seqs, jnp.arange(seqs.shape[1])[None, :] < lengths[:, None], vocab_size)
    return Processors(presence, banned)


def penalise_repeats(scores: jax.Array, presence: jax.Array | None, penalty: float) -> jax.Array:
    """HF's `RepetitionPenaltyLogitsProcessor`: scores of tokens already present are multiplied by the
    penalty where negative, divided where not. [..., V] --> [..., V]"""
    if presence is None:
        return scores
    return jnp.where(presence, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def greedy_log_probs(logits: jax.Array, processors: Processors, settings: DecodeSettings) -> jax.Array:
    """Processed log-probs where HF processes raw logits (greedy and sampling): repetition penalty on the
    logits, log_softmax, then the bans as -inf (not renormalised, so a token's score is the one beam
    search gives it). [N, V] --> [N, V]"""
    logits = penalise_repeats(logits.astype(jnp.float32), processors.presence, settings.repetition_penalty)
    return jnp.where(processors.banned, -jnp.inf, jax.nn.log_softmax(logits, axis=-1))


def temperature_warp(scores: jax.Array, temperature: float) -> jax.Array:
    """HF's `TemperatureLogitsWarper`. [N, V] --> [N, V]"""
    return scores if temperature == 1.0 else scores / temperature


# Sampling looks at each row's best tokens first: the top-k / top-p cut almost always falls among them, and
# then neither a sort of the vocabulary (3.7 s per step for 128 rows of whisper's 51865 tokens on CPU) nor
# noise for every token (0.65 s) is needed. Rows whose cut lies further down send the batch's step to the
# whole sorted vocabulary, with the same result.
_SAMPLE_CANDIDATES = 64


class _Candidates(NamedTuple):
    """Each row's W best tokens after top-k and top-p: warped scores (-inf when dropped) best first (equal
    scores: lower id first), their token ids, and whether the row's kept set surely lies inside them."""

    scores: jax.Array  # float32 [N, W]
    ids: jax.Array  # int32 [N, W]
    complete: jax.Array  # bool [N]


def _filtered_candidates(scores: jax.Array, settings: DecodeSettings, width: int) -> _Candidates:
    """HF's `TopKLogitsWarper` then `TopPLogitsWarper` (min_tokens_to_keep=1) on the W best of tempered
    scores [N, V]. Top-k drops scores below the k-th (ties with it stay); top-p drops, best first, every token
    once the probability mass before it (normalised over what top-k kept) reaches top_p. HF's top-p sums in
    ascending order from the least likely token, so the two differ only by float rounding at the cut; of
    equal scores at the cut we keep the lower ids (torch's unstable sort keeps some, unspecified)."""
    vocab_size = scores.shape[-1]
    # --> [N, W] descending. The barrier keeps XLA:CPU from turning the top-k, whose k-th column is read
    # below, into a sort of the whole row (655 instead of 6.5 ms for 64 rows of 51865 tokens).
    # Blocks of 64 rather than 256: 3.6 instead of 6.4 ms for the 64 best of 51865 tokens in 64 rows.
    values, ids = jax.lax.optimization_barrier(top_k_per_example(scores, width, block=64))
    last = values[:, -1]
    complete = jnp.full(values.shape[:1], width == vocab_size)
    if settings.top_k > 0:
        kth = values[:, min(settings.top_k, width) - 1]
        values = jnp.where(values < kth[:, None], -jnp.inf, values)
        # Everything past the candidates is <= the last one: dropped if that is below the k-th.
        complete = complete | ((settings.top_k < width) & (last < kth))
    if settings.top_p < 1.0:
        if settings.top_k > 0:  # normalised over the top-k set (inside the candidates when complete)
            log_total = jax.nn.logsumexp(values, axis=-1, keepdims=True)
        else:
            log_total = jax.nn.logsumexp(scores, axis=-1, keepdims=True)
        probs = jnp.exp(values - log_total)
        mass = jnp.cumsum(probs, axis=-1)
        values = jnp.where(mass - probs >= settings.top_p, -jnp.inf, values)
        # The candidates hold top_p of the mass: every later token comes after that much.
        covered = mass[:, -1] >= settings.top_p
        complete = complete | (covered if settings.top_k == 0 else complete & covered)
    return _Candidates(values, ids.astype(jnp.int32), complete)


def _over_candidates(
    scores: jax.Array, settings: DecodeSettings, use: Callable[[jax.Array, jax.Array], jax.Array]
) -> jax.Array:
    """`use(filtered scores [N, W], ids [N, W])` over the best `_SAMPLE_CANDIDATES` tokens of every row when
    each row's kept set lies among them, else over the whole vocabulary sorted (one decision per batch, so
    every row sees the same W: a row's result does not depend on which)."""
    vocab_size = scores.shape[-1]
    width = min(_SAMPLE_CANDIDATES, vocab_size)
    fast = _filtered_candidates(scores, settings, width)
    if width == vocab_size:
        return use(fast.scores, fast.ids)

    def whole() -> jax.Array:
        return use(*_filtered_candidates(scores, settings, vocab_size)[:2])

    return jax.lax.cond(jnp.all(fast.complete), lambda: use(fast.scores, fast.ids), whole)


def _filters(settings: DecodeSettings) -> bool:
    return settings.top_k > 0 or settings.top_p < 1.0


def _rank_noise(key: jax.Array, width: int) -> jax.Array:
    """Gumbel noise float32 [W] for the W best-ranked tokens of one row, drawn in blocks of
    `_SAMPLE_CANDIDATES` ranks (block b from `fold_in(key, b)`), so the first ranks get the same noise
    whether the step looks at the candidates or at the whole vocabulary."""
    block = _SAMPLE_CANDIDATES
    blocks = -(-width // block)
    noise = jax.vmap(lambda b: jax.random.gumbel(jax.random.fold_in(key, b), (block,)))(jnp.arange(blocks))
    return noise.reshape(blocks * block)[:width]


def draw_tokens(scores: jax.Array, keys: jax.Array, settings: DecodeSettings) -> jax.Array:
    """One token per row from the distribution HF's warpers leave (temperature, then the top-k and top-p
    filters; Gumbel-max). float [N, V], keys [N] --> int32 [N]

    Row n draws with its own key `keys[n]`, so a row's token depends on its scores and key only: not on the
    other rows, the batch size or how the rows are sharded. The noise is indexed by rank (then by token id
    with no filter to rank by).
    """
    scores = temperature_warp(scores, settings.temperature)
    if not _filters(settings):
        return jax.vmap(jax.random.categorical)(keys, scores).astype(jnp.int32)

    def draw(values: jax.Array, ids: jax.Array) -> jax.Array:
        noise = jax.vmap(_rank_noise, in_axes=(0, None))(keys, values.shape[1])  # --> [N, W]
        pick = jnp.argmax(values + noise, axis=-1)
        return jnp.take_along_axis(ids, pick[:, None], axis=1)[:, 0]

    return _over_candidates(scores, settings, draw)
