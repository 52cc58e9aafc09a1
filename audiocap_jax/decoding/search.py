"""The search core: the decoding loop (beam search, diverse beam search, sampling) that training validation,
`predict` and `evaluate` run inside one `jax.jit`.

Legend: B batch, K beams (`num_beams`), G beam groups (`num_beam_groups`), J = K/G beams per group,
E = B*G (example, group) pairs, S samples per example (`num_samples`), N decoder rows (B*K for beam search:
row b*K + g*J + j is beam j of group g of example b; B*S for sampling: row b*S + s), R returned sequences per
example, P prompt width (right-padded), L `max_length` (counts the forced prompt), V vocab, M mel bins,
F mel frames.

Strategies (`DecodeSettings.strategy`), all inside one `lax.while_loop` that exits when every example is done:
- "beam" (default): HF's beam search; K = 1 is greedy. With G > 1, HF v4's diverse (group) beam search:
  one decoder forward per step for all K rows, then groups choose in order, group g's log-probs lowered by
  `diversity_penalty` x (times each token was chosen at this step by groups < g of the example); each group
  keeps its own live and finished sets and done flag, and the answer merges the groups' finished hypotheses.
- "sample": S independent samples per example (HF's `_sample` with `do_sample=True`): processors on the raw
  logits, then HF's warpers (temperature, top-k, top-p) and a Gumbel-max draw keyed per row: example b's key
  (one per example, so a clip's samples depend on its key only, not on the rest of the batch), folded with
  the sample s and the step t, over each row's 64 best tokens when every row's cut lies among them (else over the sorted vocabulary). A sample scores like a finished beam (processed log-probs before the warpers, summed,
  divided by `penalty(g)`); the best R are returned.

The core, `decode_tokens` (`beam_search` or `sample`), is model-agnostic like t5x's: it sees a
`tokens_to_logits(ids, cache, positions)` callable and a cache that can copy and reorder its rows (`RowCache`),
so toy scorers test it. The logits processors and warpers are `processors.py`'s; `whisper_binding.py` binds
the core to a `Whisper` model.

Semantics are those of the original system, `transformers.GenerationMixin.generate(model, input_features,
decoder_input_ids=prompt, num_beams=K, max_length=L)` in transformers 5 (`_beam_search` for K > 1, `_sample`
i.e. greedy for K = 1, which the K = 1 beam search reproduces):
- Each step keeps the top 2K continuations over beam x vocab. Candidates ending in eot (or reaching
  `max_length`) leave the live set; only those ranked in the top K may enter the finished set.
- A finished hypothesis scores `sum(log p) / penalty(g)` where g is the number of generated tokens including
  the eot, NOT counting the prompt (HF: `(cur_len + 1 - decoder_prompt_len) ** length_penalty`). `penalty` is
  `g ** lp` (HF) or GNMT's `((5 + g) / 6) ** lp`.
- Logit processors, in HF's order, see the decoder ids so far INCLUDING the forced prompt (HF's `input_ids`):
  Hamming diversity (groups), `repetition_penalty` (scores of tokens present multiplied by it where
  negative, divided where not), then -inf for `no_repeat_ngram_size` bans, eot while the sequence is shorter
  than `min_length`, `suppress_tokens` at every generated position and `begin_suppress_tokens` at the first.
  Beam search (K > 1) applies them to log-softmax outputs without renormalising, as HF's beam search does;
  greedy (K = 1) and sampling apply the repetition penalty to the raw logits, as HF's `_sample` does, then
  log_softmax, then the bans (so a token's score is the same whichever of the two chose it). Forced prompt
  tokens are never processed, so a prefix may contain suppressed ids (":" and " >" are in Whisper's list).
- When an example is done (HF's rule, per example): `early_stopping=False` (default): every finished slot is
  filled and the best live score divided by `penalty(g)` at the current length cannot beat the worst finished
  score; `True`: every finished slot is filled; `"never"`: as False, but with `penalty` at the longest possible
  length when lp > 0 (the exact search). Reaching `max_length` ends an example. After that its finished set is
  frozen. With K = 1 the rule makes the search greedy; "never" is treated as False there, as HF runs greedy.
  With groups the rule holds per (example, group), as HF v4's BeamHypotheses per group.
Prompts may differ in length within a batch (each row has its own positions and its own `max_length - P_b`
budget); HF cannot batch those, so parity there means "equal to HF run on each prompt length separately".
Ties between exactly equal scores are broken towards the lower index (`lax.top_k`); torch.topk does not promise
an order, so exact ties are the one place results may legitimately differ from HF (top-p likewise drops tied
tokens at its cut lower ids first, where torch's unstable sort picks them in no specified order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import flax.struct
import jax
import jax.numpy as jnp

from audiocap_jax.decoding.processors import (
    draw_tokens,
    greedy_log_probs,
    penalise_repeats,
    step_processors,
    top_k_per_example,
)
from audiocap_jax.decoding.search_settings import DecodeSettings

# HF's "very large negative" score for dead beams and empty finished slots, kept identical so masking and
# the early-stop comparisons behave exactly as in the oracle.
_NEG = -1.0e9


class RowCache(Protocol):
    """A decoder cache whose per-row (per-beam) state can be copied to the beams and reordered; shared
    state stays put."""

    def repeat_rows(self, repeats: int) -> RowCache: ...

    def gather_rows(self, idx: jax.Array) -> RowCache: ...


CacheT = TypeVar("CacheT", bound=RowCache)
# ids int32 [N, T], cache, positions int32 [N] (where row n's first token goes) -> (float [N, T, V], cache)
TokensToLogits = Callable[[jax.Array, CacheT, jax.Array], tuple[jax.Array, CacheT]]


@flax.struct.dataclass
class Beams:
    """The hypotheses of E = B*G (example, beam group) pairs, J = K/G beams each (HF's BeamHypotheses per
    pair). Pair e = b*G + g; its beam j is decoder row e*J + j = b*K + g*J + j."""

    live_seqs: jax.Array  # int32: [E, J, L] prompt + generated tokens, eot beyond
    live_scores: jax.Array  # float32: [E, J] summed log-probs; _NEG for dead beams
    last_tokens: jax.Array  # int32: [E, J] the token each live beam chose last (next decoder input)
    finished_seqs: jax.Array  # int32: [E, J, L]
    finished_scores: jax.Array  # float32: [E, J] length-penalised, sorted descending; _NEG when empty
    finished_flags: jax.Array  # bool: [E, J] whether the slot holds a finished hypothesis
    improvable: jax.Array  # bool: [E] HF's "early stop heuristic unsatisfied" (sticky once False)
    done: jax.Array  # bool: [E] finished set frozen (see the module docstring's rule)


@flax.struct.dataclass
class BeamState:
    """Loop carry of the beam search."""

    step: jax.Array  # int32: [] tokens generated so far (the same for every example)
    beams: Beams
    cache: Any  # the decoder cache, rows in beam order


@flax.struct.dataclass
class SampleState:
    """Loop carry of sampling; row b*S + s is sample s of example b."""

    step: jax.Array  # int32: []
    seqs: jax.Array  # int32: [N, L] prompt + sampled tokens, eot beyond
    last_tokens: jax.Array  # int32: [N] next decoder input
    log_prob_sums: jax.Array  # float32: [N] processed log-probs of the sampled tokens, eot included
    num_generated: jax.Array  # int32: [N] tokens generated, eot included (final once the row is done)
    done: jax.Array  # bool: [N] ended by eot or max_length
    cache: Any


def flatten_beam_dim(x: jax.Array) -> jax.Array:
    """[B, K, ...] --> [B*K, ...]"""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unflatten_beam_dim(x: jax.Array, num_beams: int) -> jax.Array:
    """[B*K, ...] --> [B, K, ...]"""
    return x.reshape(x.shape[0] // num_beams, num_beams, *x.shape[1:])


def gather_beams(x: jax.Array, beam_idx: jax.Array) -> jax.Array:
    """Pick beams per example. x [B, old_beam, ...], beam_idx int32 [B, new_beam] --> [B, new_beam, ...]"""
    idx = beam_idx.reshape(*beam_idx.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)


def write_column(seqs: jax.Array, columns: jax.Array, tokens: jax.Array) -> jax.Array:
    """seqs[b, j, columns[b]] = tokens[b, j]; a column >= L writes nothing. [B, J, L] --> [B, J, L]"""
    hit = jnp.arange(seqs.shape[-1])[None, None, :] == columns[:, None, None]
    return jnp.where(hit, tokens[:, :, None], seqs)


def length_penalty(num_generated: jax.Array, settings: DecodeSettings) -> jax.Array:
    """Divisor of a finished hypothesis' log-prob: g ** lp (HF) or ((5 + g) / 6) ** lp (GNMT)."""
    g = jnp.asarray(num_generated, jnp.float32)
    if settings.length_penalty_form == "gnmt":
        g = (5.0 + g) / 6.0
    return g**settings.length_penalty


def _select(
    beams: Beams,
    log_probs: jax.Array,
    prompt_lengths: jax.Array,
    step: jax.Array,
    settings: DecodeSettings,
) -> tuple[Beams, jax.Array]:
    """One beam-search step for E' pairs of J beams from processed log-probs [E', J, V]: the next live
    beams, the finished set and the done flags. Returns them and each new live beam's parent int32 [E', J]."""
    pairs, num_beams, vocab_size = log_probs.shape
    max_length = settings.max_length
    never = settings.early_stopping == "never" and settings.num_beams > 1
    # --> [E', J*V]
    candidates = (beams.live_scores[:, :, None] + log_probs).reshape(pairs, num_beams * vocab_size)
    # Keep 2J so that J live beams remain even if the best J all end here.
    # --> [E', 2J], [E', 2J]
    top_scores, top_idx = top_k_per_example(candidates, 2 * num_beams)
    top_parent = top_idx // vocab_size
    top_tokens = (top_idx % vocab_size).astype(jnp.int32)
    columns = prompt_lengths + step  # [E'] where this step's token goes
    # --> [E', 2J, L]
    top_seqs = write_column(gather_beams(beams.live_seqs, top_parent), columns, top_tokens)
    num_generated = step + 1
    at_max_length = columns + 1 >= max_length  # [E']
    ends = (top_tokens == settings.eos_id) | at_max_length[:, None]  # [E', 2J]

    # LIVE: the best J candidates that did not end.
    # --> [E', J]
    live_scores, live_pick = top_k_per_example(top_scores + jnp.where(ends, _NEG, 0.0), num_beams)
    live_seqs = gather_beams(top_seqs, live_pick)  # --> [E', J, L]
    last_tokens = jnp.take_along_axis(top_tokens, live_pick, axis=1)
    parent = jnp.take_along_axis(top_parent, live_pick, axis=1)

    # FINISHED: among the top J candidates (not the backup J), those that ended, unless frozen.
    # --> [E', 2J]
    enters = ends & (jnp.arange(2 * num_beams) < num_beams)[None, :] & ~beams.done[:, None]
    new_scores = jnp.where(enters, top_scores / length_penalty(num_generated, settings), _NEG)
    # Merge with the J finished so far and keep the best J.
    # --> [E', 3J]
    merged_scores = jnp.concatenate([beams.finished_scores, new_scores], axis=1)
    finished_scores, finished_pick = top_k_per_example(merged_scores, num_beams)  # --> [E', J]
    finished_seqs = gather_beams(jnp.concatenate([beams.finished_seqs, top_seqs], axis=1), finished_pick)
    finished_flags = jnp.take_along_axis(
        jnp.concatenate([beams.finished_flags, enters], axis=1), finished_pick, axis=1
    )

    # DONE: can the best live beam still beat the worst finished one? (HF's heuristic, see module docstring)
    # --> [E']
    hypothetical_length = (
        (max_length - prompt_lengths) if never and settings.length_penalty > 0 else num_generated
    )
    best_possible = live_scores[:, 0] / length_penalty(hypothetical_length, settings)
    worst_finished = jnp.where(finished_flags, finished_scores.min(axis=1, keepdims=True), _NEG)  # [E', J]
    improvable = beams.improvable & jnp.any(best_possible[:, None] > worst_finished, axis=1)
    done = beams.done | ~improvable | at_max_length
    if settings.early_stopping is True:
        done = done | finished_flags.all(axis=1)

    new = Beams(
        live_seqs=live_seqs,
        live_scores=live_scores,
        last_tokens=last_tokens,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        finished_flags=finished_flags,
        improvable=improvable,
        done=done,
    )
    return new, parent


def _beam_step(
    state: BeamState, logits: jax.Array, prompt_lengths: jax.Array, settings: DecodeSettings
) -> BeamState:
    """Choose every pair's next J live beams and update its finished set from logits [N, V].

    One decoder forward serves all groups; the groups then choose in order 0..G-1 (HF's group beam search),
    each group's log-probs first lowered by `diversity_penalty` times the number of times each token was
    chosen at this step by the earlier groups of its example (a done group counts as choosing eot, as HF's
    padding does). With G = 1 this is the plain beam search.
    """
    groups = settings.num_beam_groups
    beams_per_group = settings.num_beams // groups
    pairs = prompt_lengths.shape[0]
    batch = pairs // groups
    vocab_size = logits.shape[-1]
    row_seqs = flatten_beam_dim(state.beams.live_seqs)  # [N, L]
    row_lengths = jnp.repeat(prompt_lengths + state.step, beams_per_group)  # [N] tokens so far
    processors = step_processors(row_seqs, row_lengths, state.step, settings, vocab_size)
    if settings.num_beams == 1:  # HF's greedy search processes logits, not log-probs
        log_probs = greedy_log_probs(logits, processors, settings)
    else:
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    def by_group(x: jax.Array, group: int) -> jax.Array:
        """[E*..., ...] --> group's [B, ...] (rows or pairs)"""
        return x.reshape(batch, groups, -1, *x.shape[1:])[:, group].reshape(-1, *x.shape[1:])

    chosen_before = jnp.zeros((batch, vocab_size), jnp.float32)  # [B, V] tokens chosen by earlier groups
    selected, parents = [], []
    for group in range(groups):
        scores = by_group(log_probs, group)  # [B*J, V]
        if settings.num_beams > 1:
            if group > 0 and settings.diversity_penalty > 0:
                scores = scores - settings.diversity_penalty * jnp.repeat(
                    chosen_before, beams_per_group, axis=0
                )
            presence = None if processors.presence is None else by_group(processors.presence, group)
            scores = penalise_repeats(scores, presence, settings.repetition_penalty)
            scores = jnp.where(by_group(processors.banned, group), -jnp.inf, scores)
        group_beams = jax.tree.map(lambda x, g=group: by_group(x, g), state.beams)
        new, parent = _select(
            group_beams,
            unflatten_beam_dim(scores, beams_per_group),
            by_group(prompt_lengths, group),
            state.step,
            settings,
        )
        if settings.diversity_penalty > 0 and group < groups - 1:
            tokens = jnp.where(group_beams.done[:, None], settings.eos_id, new.last_tokens)  # [B, J]
            chosen_before = chosen_before.at[jnp.arange(batch)[:, None], tokens].add(1.0)
        selected.append(new)
        parents.append(parent)

    def merge(*per_group: jax.Array) -> jax.Array:
        """G x [B, ...] --> [E, ...]"""
        stacked = jnp.stack(per_group, axis=1)
        return stacked.reshape(pairs, *stacked.shape[2:])

    beams = jax.tree.map(merge, *selected)
    cache = state.cache
    if settings.num_beams > 1:  # with one beam the row never changes
        rows = merge(*parents) + (jnp.arange(pairs) * beams_per_group)[:, None]  # [E, J]
        cache = cache.gather_rows(flatten_beam_dim(rows).astype(jnp.int32))  # [N]
    return BeamState(step=state.step + 1, beams=beams, cache=cache)


class _Start(NamedTuple):
    prompt_lengths: jax.Array  # int32 [B]
    seqs: jax.Array  # int32 [B, L] the prompt, eot beyond
    last_prompt_token: jax.Array  # int32 [B]
    cache: Any  # rows repeated for each example's beams or samples


def _start(
    tokens_to_logits: TokensToLogits,
    cache: RowCache,
    prompt_ids: jax.Array,
    prompt_lengths: jax.Array,
    settings: DecodeSettings,
    rows_per_example: int,
) -> _Start:
    """Validate the prompts and prefill them, once per example, into a cache for `rows_per_example` rows each."""
    batch, prompt_width = prompt_ids.shape
    max_length, eos = settings.max_length, settings.eos_id
    if prompt_width >= max_length:
        raise ValueError(
            f"prompt_ids are {prompt_width} tokens wide but max_length is {max_length} (it counts the prompt); "
            "raise max_length or shorten the prefix."
        )
    prompt_lengths = prompt_lengths.astype(jnp.int32)
    in_prompt = jnp.arange(prompt_width)[None, :] < prompt_lengths[:, None]
    prompt = jnp.where(in_prompt, prompt_ids, eos).astype(jnp.int32)  # [B, P]
    seqs = jnp.full((batch, max_length), eos, jnp.int32).at[:, :prompt_width].set(prompt)

    # Prefill each example's prompt in one pass from position 0, once per example (its beams start from
    # copies: prefilling all B*K rows cost whisper-tiny 2% of a 4-beam batch). Cache entries past a prompt
    # hold padding for now; they are overwritten by generated tokens before any query may attend to them.
    # The logits are not used (XLA drops their [B, P, V] projection): the loop's first step feeds each row's
    # last prompt token again, at its own position, and takes the first generated token's logits from there.
    _, cache = tokens_to_logits(prompt, cache, jnp.zeros_like(prompt_lengths))
    last_prompt_token = jnp.take_along_axis(prompt, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
    return _Start(prompt_lengths, seqs, last_prompt_token, cache.repeat_rows(rows_per_example))


def _next_logits(
    tokens_to_logits: TokensToLogits,
    last_tokens: jax.Array,
    cache: RowCache,
    row_prompt_lengths: jax.Array,
    step: jax.Array,
    max_length: int,
) -> tuple[jax.Array, Any]:
    """Logits [N, V] for each row's next token. Each row's last token goes at its row's next position; a
    finished row keeps running until the batch ends, clamped so it stays inside the cache."""
    positions = jnp.minimum(row_prompt_lengths + step - 1, max_length - 1)
    logits, cache = tokens_to_logits(last_tokens[:, None], cache, positions)
    return logits[:, 0], cache


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: RowCache,
    prompt_ids: jax.Array,
    prompt_lengths: jax.Array,
    settings: DecodeSettings,
) -> tuple[jax.Array, jax.Array]:
    """Beam search (diverse when `num_beam_groups` > 1) from per-example forced prompts (traceable; call it
    inside `jax.jit`).

    Args:
      tokens_to_logits: `(ids int32 [N, T], cache, positions int32 [N]) -> (logits [N, T, V], cache)`.
      cache: decoder cache for B rows (one per example) and `max_length` positions, with
        `repeat_rows(K)` (B --> N = B*K rows, an example's beams next to each other) and
        `gather_rows(idx int32 [N])`.
      prompt_ids: int32 [B, P] forced tokens, right-padded (padding is ignored); P < max_length.
      prompt_lengths: int32 [B] number of forced tokens per example, 1..P.
      settings: see `DecodeSettings`.

    Returns:
      sequences int32 [B, R, L] (prompt included, eot after the end) and scores float32 [B, R] (length
      penalised), best first; with groups, the best of all groups' finished hypotheses.
    """
    num_beams, groups, max_length = settings.num_beams, settings.num_beam_groups, settings.max_length
    beams_per_group = num_beams // groups
    start = _start(tokens_to_logits, cache, prompt_ids, prompt_lengths, settings, num_beams)
    batch = start.seqs.shape[0]
    pairs = batch * groups
    pair_prompt_lengths = jnp.repeat(start.prompt_lengths, groups)  # [E]
    row_prompt_lengths = jnp.repeat(start.prompt_lengths, num_beams)  # [N]
    seqs = jnp.broadcast_to(start.seqs[:, None, None, :], (batch, groups, beams_per_group, max_length))
    seqs = seqs.reshape(pairs, beams_per_group, max_length)  # [E, J, L]
    beams = Beams(
        live_seqs=seqs,
        # Only beam 0 of each group is live at first, so its beams do not start as copies of one hypothesis.
        live_scores=jnp.tile(jnp.array([0.0] + [_NEG] * (beams_per_group - 1), jnp.float32), (pairs, 1)),
        last_tokens=jnp.repeat(start.last_prompt_token, num_beams).reshape(pairs, beams_per_group),
        finished_seqs=seqs,
        finished_scores=jnp.full((pairs, beams_per_group), _NEG, jnp.float32),
        finished_flags=jnp.zeros((pairs, beams_per_group), bool),
        improvable=jnp.ones((pairs,), bool),
        done=jnp.zeros((pairs,), bool),
    )
    state = BeamState(step=jnp.zeros((), jnp.int32), beams=beams, cache=start.cache)

    def not_done(state: BeamState) -> jax.Array:
        return jnp.any(~state.beams.done) & (state.step < max_length)

    def step(state: BeamState) -> BeamState:
        last_tokens = flatten_beam_dim(state.beams.last_tokens)
        logits, cache = _next_logits(
            tokens_to_logits, last_tokens, state.cache, row_prompt_lengths, state.step, max_length
        )
        return _beam_step(state.replace(cache=cache), logits, pair_prompt_lengths, settings)

    beams = jax.lax.while_loop(not_done, step, state).beams
    returned = settings.num_return_sequences
    if groups == 1:  # already sorted
        return beams.finished_seqs[:, :returned], beams.finished_scores[:, :returned]
    # Merge each example's groups: [E, J, ...] --> [B, K, ...], then the best R.
    scores, pick = top_k_per_example(beams.finished_scores.reshape(batch, num_beams), returned)
    return gather_beams(beams.finished_seqs.reshape(batch, num_beams, max_length), pick), scores


def sample(
    tokens_to_logits: TokensToLogits,
    cache: RowCache,
    prompt_ids: jax.Array,
    prompt_lengths: jax.Array,
    settings: DecodeSettings,
    rng: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """`num_samples` independent samples per example (traceable; call it inside `jax.jit`).

    Arguments as `beam_search`'s (the cache needs `repeat_rows(S)` only), plus `rng`: keys [B], one per
    example (`example_keys`). Sample s of example b draws step t with `fold_in(fold_in(rng[b], s), t)`, so an
    example's samples depend on its own key only: not on the batch size, its neighbours or the sharding.
    Returns the best R of each example's samples,
    int32 [B, R, L] and float32 [B, R], scored like finished beams (processed log-probs before the
    warpers, summed and divided by `length_penalty(g)`), best first.
    """
    num_samples, max_length, eos = settings.num_samples, settings.max_length, settings.eos_id
    start = _start(tokens_to_logits, cache, prompt_ids, prompt_lengths, settings, num_samples)
    batch = start.seqs.shape[0]
    rows = batch * num_samples
    sample_ids = jnp.tile(jnp.arange(num_samples), batch)  # [N]
    row_keys = jax.vmap(jax.random.fold_in)(jnp.repeat(rng, num_samples), sample_ids)  # --> [N]
    row_prompt_lengths = jnp.repeat(start.prompt_lengths, num_samples)  # [N]
    state = SampleState(
        step=jnp.zeros((), jnp.int32),
        seqs=jnp.repeat(start.seqs, num_samples, axis=0),
        last_tokens=jnp.repeat(start.last_prompt_token, num_samples),
        log_prob_sums=jnp.zeros((rows,), jnp.float32),
        num_generated=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((rows,), bool),
        cache=start.cache,
    )

    def not_done(state: SampleState) -> jax.Array:
        return jnp.any(~state.done) & (state.step < max_length)

    def step(state: SampleState) -> SampleState:
        logits, cache = _next_logits(
            tokens_to_logits, state.last_tokens, state.cache, row_prompt_lengths, state.step, max_length
        )
        columns = row_prompt_lengths + state.step  # [N] tokens so far = where this step's token goes
        processors = step_processors(state.seqs, columns, state.step, settings, logits.shape[-1])
        log_probs = greedy_log_probs(logits, processors, settings)  # [N, V]
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, state.step)  # [N]
        drawn = draw_tokens(log_probs, step_keys, settings)
        tokens = jnp.where(state.done, eos, drawn)  # [N]
        token_log_probs = jnp.take_along_axis(log_probs, tokens[:, None], axis=1)[:, 0]
        ends = (tokens == eos) | (columns + 1 >= max_length)
        return SampleState(
            step=state.step + 1,
            seqs=write_column(state.seqs[:, None], columns, tokens[:, None])[:, 0],
            last_tokens=tokens,
            log_prob_sums=state.log_prob_sums + jnp.where(state.done, 0.0, token_log_probs),
            num_generated=jnp.where(state.done, state.num_generated, state.step + 1),
            done=state.done | ends,
            cache=cache,
        )

    state = jax.lax.while_loop(not_done, step, state)
    scores = unflatten_beam_dim(
        state.log_prob_sums / length_penalty(state.num_generated, settings), num_samples
    )
    best_scores, pick = top_k_per_example(scores, settings.num_return_sequences)  # [B, R]
    return gather_beams(unflatten_beam_dim(state.seqs, num_samples), pick), best_scores


def example_keys(rng: jax.Array | None, batch: int, settings: DecodeSettings) -> jax.Array:
    """Sampling keys [B], one per example: `rng` itself when it is already [B]; a single key (None:
    `jax.random.key(settings.seed)`) gives example b `fold_in(rng, b)`."""
    rng = jax.random.key(settings.seed) if rng is None else rng
    if rng.ndim == 1:
        return rng
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(batch))


def decode_tokens(
    tokens_to_logits: TokensToLogits,
    cache: RowCache,
    prompt_ids: jax.Array,
    prompt_lengths: jax.Array,
    settings: DecodeSettings,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`beam_search` or `sample`, as `settings.strategy` says (`rng`: see `example_keys`)."""
    if settings.strategy == "sample":
        keys = example_keys(rng, prompt_ids.shape[0], settings)
        return sample(tokens_to_logits, cache, prompt_ids, prompt_lengths, settings, keys)
    return beam_search(tokens_to_logits, cache, prompt_ids, prompt_lengths, settings)
