"""The one jitted beam search (greedy = 1 beam) that training validation, `predict` and `evaluate` call.

Legend: B batch, K beams (`num_beams`), N = B*K decoder rows (row b*K + k is beam k of example b), R returned
sequences per example, P prompt width (right-padded), L `max_length` (counts the forced prompt), V vocab,
M mel bins, S mel frames.

The core, `beam_search`, is model-agnostic like t5x's: it sees a `tokens_to_logits(ids, cache, positions)`
callable and a cache that can reorder its rows. `make_decode_fn` binds it to a `Whisper` model: encoder once,
cross-attention K/V once per example (shared by its beams), the forced prompt prefilled in one pass, then one
token per step inside a single `lax.while_loop` that exits as soon as every example is done.

Semantics are those of the original system, `transformers.GenerationMixin.generate(model, input_features,
decoder_input_ids=prompt, num_beams=K, max_length=L)` in transformers 5 (`_beam_search` for K > 1, `_sample`
i.e. greedy for K = 1, which the K = 1 beam search reproduces):
- Each step keeps the top 2K continuations over beam x vocab. Candidates ending in eot (or reaching
  `max_length`) leave the live set; only those ranked in the top K may enter the finished set.
- A finished hypothesis scores `sum(log p) / penalty(g)` where g is the number of generated tokens including
  the eot, NOT counting the prompt (HF: `(cur_len + 1 - decoder_prompt_len) ** length_penalty`). `penalty` is
  `g ** lp` (HF) or GNMT's `((5 + g) / 6) ** lp`.
- Logit processors act on log-softmax outputs without renormalising (as HF's do in beam search): suppressed
  tokens get -inf at every generated position, `begin_suppress_tokens` at the first generated position only,
  eot while the sequence (prompt included) is shorter than `min_length`. Forced prompt tokens are never
  processed, so a prefix may contain suppressed ids (":" and " >" are in Whisper's list).
- When an example is done (HF's rule, per example): `early_stopping=False` (default): every finished slot is
  filled and the best live score divided by `penalty(g)` at the current length cannot beat the worst finished
  score; `True`: every finished slot is filled; `"never"`: as False, but with `penalty` at the longest possible
  length when lp > 0 (the exact search). Reaching `max_length` ends an example. After that its finished set is
  frozen. With K = 1 the rule makes the search greedy; "never" is treated as False there, as HF runs greedy.
Prompts may differ in length within a batch (each row has its own positions and its own `max_length - P_b`
budget); HF cannot batch those, so parity there means "equal to HF run on each prompt length separately".
Ties between exactly equal scores are broken towards the lower index (`lax.top_k`); torch.topk does not promise
an order, so exact ties are the one place results may legitimately differ from HF.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax.model.sharding import constrain, logical_to_spec

# HF's "very large negative" score for dead beams and empty finished slots, kept identical so masking and
# the early-stop comparisons behave exactly as in the oracle.
_NEG = -1.0e9

LENGTH_PENALTY_FORMS = ("hf", "gnmt")
STRATEGIES = ("beam", "sample")
# The fields that only sampling reads, with their (inactive) defaults.
_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_samples": 1, "seed": 0}
EarlyStopping = bool | Literal["never"]


class RowCache(Protocol):
    """A decoder cache whose per-row (per-beam) state can be copied to the beams and reordered; shared
    state stays put."""

    def repeat_rows(self, repeats: int) -> RowCache: ...

    def gather_rows(self, idx: jax.Array) -> RowCache: ...


CacheT = TypeVar("CacheT", bound=RowCache)
# ids int32 [N, T], cache, positions int32 [N] (where row n's first token goes) -> (float [N, T, V], cache)
TokensToLogits = Callable[[jax.Array, CacheT, jax.Array], tuple[jax.Array, CacheT]]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Decoding options; defaults are the original system's (5 beams, 80 tokens counting the prompt)."""

    eos_id: int  # <|endoftext|>: ends a caption and pads the output
    num_beams: int = 5
    max_length: int = 80  # counts the forced prompt tokens, as HF's max_length does
    length_penalty: float = 1.0
    length_penalty_form: str = "hf"  # "hf": g ** lp; "gnmt": ((5 + g) / 6) ** lp; g = generated tokens
    early_stopping: EarlyStopping = False
    min_length: int = 0  # counts the prompt, as HF's min_length does
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    num_return_sequences: int = 1
    strategy: str = "beam"  # one of STRATEGIES
    num_beam_groups: int = 1  # diverse (group) beam search: K / G beams per group
    diversity_penalty: float = 0.0  # HF's Hamming diversity between groups; > 0 needs num_beam_groups > 1
    temperature: float = 1.0  # sample only
    top_k: int = 0  # sample only; 0 = off, 1 = greedy
    top_p: float = 1.0  # sample only; 1 = off
    num_samples: int = 1  # sample only: candidates per example
    seed: int = 0  # sample only: the key when the caller passes none
    no_repeat_ngram_size: int = 0  # every strategy; 0 = off
    repetition_penalty: float = 1.0  # every strategy; 1 = off

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} unknown; choose one of {STRATEGIES}.")
        if self.num_beams < 1:
            raise ValueError(f"num_beams is {self.num_beams}; it must be >= 1 (1 = greedy).")
        if self.num_samples < 1:
            raise ValueError(f"num_samples is {self.num_samples}; it must be >= 1.")
        if self.strategy == "beam":
            sampling_only = {
                name: getattr(self, name)
                for name, default in _SAMPLING_DEFAULTS.items()
                if getattr(self, name) != default
            }
            if sampling_only:
                raise ValueError(
                    f"{', '.join(f'{k}={v!r}' for k, v in sampling_only.items())} only apply to "
                    'strategy="sample"; set strategy="sample" or leave them at their defaults.'
                )
            if not 1 <= self.num_return_sequences <= self.num_beams:
                raise ValueError(
                    f"num_return_sequences {self.num_return_sequences} must be between 1 and num_beams "
                    f"{self.num_beams}; raise num_beams to return more sequences."
                )
        else:
            group_fields = {
                name: getattr(self, name)
                for name, default in (("num_beam_groups", 1), ("diversity_penalty", 0.0))
                if getattr(self, name) != default
            }
            if group_fields:
                raise ValueError(
                    f"{', '.join(f'{k}={v!r}' for k, v in group_fields.items())} only apply to "
                    'strategy="beam"; leave them at their defaults when sampling.'
                )
            if not 1 <= self.num_return_sequences <= self.num_samples:
                raise ValueError(
                    f"num_return_sequences {self.num_return_sequences} must be between 1 and num_samples "
                    f"{self.num_samples}; raise num_samples to return more sequences."
                )
        if self.num_beam_groups < 1 or self.num_beams % self.num_beam_groups:
            raise ValueError(
                f"num_beam_groups {self.num_beam_groups} must be >= 1 and divide num_beams {self.num_beams}; "
                "choose a divisor of num_beams."
            )
        if self.diversity_penalty < 0:
            raise ValueError(f"diversity_penalty {self.diversity_penalty} must be >= 0.")
        if self.diversity_penalty > 0 and self.num_beam_groups == 1:
            raise ValueError(
                f"diversity_penalty {self.diversity_penalty} needs num_beam_groups > 1 (it penalises tokens "
                "that earlier groups chose); set num_beam_groups or diversity_penalty=0."
            )
        if not self.temperature > 0:
            raise ValueError(
                f"temperature {self.temperature} must be > 0; for greedy decoding use top_k=1 "
                '(or strategy="beam", num_beams=1).'
            )
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k} must be >= 0 (0 = no top-k filter).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p} must be in (0, 1] (1 = no nucleus filter).")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size {self.no_repeat_ngram_size} must be >= 0 (0 = off).")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty {self.repetition_penalty} must be > 0 (1 = off).")
        if self.length_penalty_form not in LENGTH_PENALTY_FORMS:
            raise ValueError(
                f"length_penalty_form {self.length_penalty_form!r} unknown; choose one of {LENGTH_PENALTY_FORMS}."
            )
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping {self.early_stopping!r} must be True, False or 'never'.")
        if self.max_length < 2:
            raise ValueError(
                f"max_length {self.max_length} leaves no room for a prompt and a generated token."
            )
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        object.__setattr__(self, "begin_suppress_tokens", tuple(int(t) for t in self.begin_suppress_tokens))

    @classmethod
    def from_generation_config(
        cls, generation_config: Mapping[str, Any] | str | Path, **overrides: Any
    ) -> DecodeSettings:
        """eot id and suppress lists from a checkpoint's `generation_config.json` (path or dict).

        Only these token facts are taken from the file: a Whisper generation config also carries
        `max_length` 448 and Whisper-generate fields that the original system did not use; beams, lengths and
        penalties come from our own config through `overrides`.
        """
        if not isinstance(generation_config, Mapping):
            path = Path(generation_config)
            if path.is_dir():
                path = path / "generation_config.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"No generation config at {path}; pass a HF checkpoint directory or its generation_config.json."
                )
            try:
                generation_config = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}).") from None
        eos = generation_config.get("eos_token_id")
        if isinstance(eos, list | tuple):
            if len(eos) != 1:
                raise ValueError(
                    f"generation config has eos_token_id {eos}; exactly one end token is supported."
                )
            eos = eos[0]
        fields: dict[str, Any] = {}
        if eos is not None:
            fields["eos_id"] = int(eos)
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            fields[name] = tuple(generation_config.get(name) or ())
        fields.update(overrides)
        if "eos_id" not in fields:
            raise ValueError("generation config has no eos_token_id and no eos_id override was given.")
        return cls(**fields)

    def to_hf_generation_config(self) -> dict[str, Any]:
        """The `transformers.GenerationConfig` fields that make HF's `generate` run this same search
        (add `decoder_start_token_id`); what tests and benchmarks compare against."""
        if self.length_penalty_form != "hf":
            raise ValueError(
                f"length_penalty_form {self.length_penalty_form!r} has no transformers equivalent."
            )
        if self.num_beam_groups > 1:
            raise ValueError(
                f"num_beam_groups {self.num_beam_groups}: transformers 5 has no diverse (group) beam search."
            )
        common = dict(
            eos_token_id=self.eos_id,
            pad_token_id=self.eos_id,
            max_length=self.max_length,
            min_length=self.min_length,
            suppress_tokens=list(self.suppress_tokens) or None,
            begin_suppress_tokens=list(self.begin_suppress_tokens) or None,
            no_repeat_ngram_size=self.no_repeat_ngram_size or None,
            repetition_penalty=self.repetition_penalty,
        )
        if self.strategy == "sample":
            # HF has no per-sample length penalty; its sequences match ours, its scores do not.
            return dict(
                common,
                do_sample=True,
                num_beams=1,
                num_return_sequences=self.num_samples,
                temperature=self.temperature,
                top_k=self.top_k or None,
                top_p=self.top_p,
            )
        return dict(
            common,
            do_sample=False,
            num_beams=self.num_beams,
            num_return_sequences=self.num_return_sequences,
            length_penalty=self.length_penalty,
            early_stopping=self.early_stopping,
        )


@flax.struct.dataclass
class BeamState:
    """Loop carry of the beam search."""

    step: jax.Array  # int32: [] tokens generated so far (the same for every example)
    live_seqs: jax.Array  # int32: [B, K, L] prompt + generated tokens, eot beyond
    live_scores: jax.Array  # float32: [B, K] summed log-probs; _NEG for dead beams
    last_tokens: jax.Array  # int32: [B, K] the token each live beam chose last (next decoder input)
    finished_seqs: jax.Array  # int32: [B, K, L]
    finished_scores: jax.Array  # float32: [B, K] length-penalised, sorted descending; _NEG when empty
    finished_flags: jax.Array  # bool: [B, K] whether the slot holds a finished hypothesis
    improvable: jax.Array  # bool: [B] HF's "early stop heuristic unsatisfied" (sticky once False)
    done: jax.Array  # bool: [B] finished set frozen (see the module docstring's rule)
    cache: Any  # the decoder cache, rows in beam order


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


def top_k_per_example(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """lax.top_k over the last axis, computed where each example lives. [B, C] --> [B, k], [B, k]

    XLA's partitioner gathers the whole batch onto every device for a TopK; under a mesh (`jax.set_mesh`)
    we run it per batch shard instead (shard_map over the mesh axes the `batch` rule maps to).
    """
    mesh = jax.sharding.get_abstract_mesh()
    spec = None if mesh.empty else logical_to_spec(("batch", None), x.shape, mesh)
    if spec is None or spec[0] is None:
        return blocked_top_k(x, k)
    return jax.shard_map(lambda a: blocked_top_k(a, k), mesh=mesh, in_specs=spec, out_specs=(spec, spec))(x)


_TOP_K_BLOCK = 256


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


def _processed_log_probs(
    logits: jax.Array, step: jax.Array, prompt_lengths: jax.Array, settings: DecodeSettings
) -> jax.Array:
    """log_softmax, then HF's suppress / begin-suppress / min-length processors. [B, K, V] --> [B, K, V]"""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab_size = log_probs.shape[-1]
    # --> [B, V] tokens banned at this step (prompt lengths differ, so min_length is per example)
    banned = jnp.broadcast_to(
        _token_mask(settings.suppress_tokens, vocab_size, "suppress_tokens"), (log_probs.shape[0], vocab_size)
    )
    if settings.begin_suppress_tokens:
        begin = _token_mask(settings.begin_suppress_tokens, vocab_size, "begin_suppress_tokens")
        banned = banned | (begin[None, :] & (step == 0))
    if settings.min_length > 0:
        eos = _token_mask((settings.eos_id,), vocab_size, "eos_id")
        too_short = prompt_lengths + step < settings.min_length  # [B]
        banned = banned | (eos[None, :] & too_short[:, None])
    return jnp.where(banned[:, None, :], -jnp.inf, log_probs)


def _beam_step(
    state: BeamState,
    logits: jax.Array,
    prompt_lengths: jax.Array,
    settings: DecodeSettings,
) -> BeamState:
    """Choose each example's next K live beams and update its finished set from logits [N, V]."""
    num_beams, max_length = settings.num_beams, settings.max_length
    batch = prompt_lengths.shape[0]
    never = settings.early_stopping == "never" and num_beams > 1
    # --> [B, K, V]
    log_probs = _processed_log_probs(
        unflatten_beam_dim(logits, num_beams), state.step, prompt_lengths, settings
    )
    vocab_size = log_probs.shape[-1]
    # --> [B, K*V]
    candidates = (state.live_scores[:, :, None] + log_probs).reshape(batch, num_beams * vocab_size)
    # Keep 2K so that K live beams remain even if the best K all end here.
    # --> [B, 2K], [B, 2K]
    top_scores, top_idx = top_k_per_example(candidates, 2 * num_beams)
    top_parent = top_idx // vocab_size
    top_tokens = (top_idx % vocab_size).astype(jnp.int32)
    columns = prompt_lengths + state.step  # [B] where this step's token goes
    # --> [B, 2K, L]
    top_seqs = write_column(gather_beams(state.live_seqs, top_parent), columns, top_tokens)
    num_generated = state.step + 1
    at_max_length = columns + 1 >= max_length  # [B]
    ends = (top_tokens == settings.eos_id) | at_max_length[:, None]  # [B, 2K]

    # LIVE: the best K candidates that did not end.
    # --> [B, K]
    live_scores, live_pick = top_k_per_example(top_scores + jnp.where(ends, _NEG, 0.0), num_beams)
    live_seqs = gather_beams(top_seqs, live_pick)  # --> [B, K, L]
    last_tokens = jnp.take_along_axis(top_tokens, live_pick, axis=1)
    cache = state.cache
    if num_beams > 1:  # with one beam the row never changes
        parent = jnp.take_along_axis(top_parent, live_pick, axis=1)  # [B, K] beam within the example
        rows = parent + (jnp.arange(batch) * num_beams)[:, None]
        cache = cache.gather_rows(flatten_beam_dim(rows).astype(jnp.int32))  # [N]

    # FINISHED: among the top K candidates (not the backup K), those that ended, unless frozen.
    # --> [B, 2K]
    enters = ends & (jnp.arange(2 * num_beams) < num_beams)[None, :] & ~state.done[:, None]
    new_scores = jnp.where(enters, top_scores / length_penalty(num_generated, settings), _NEG)
    # Merge with the K finished so far and keep the best K.
    # --> [B, 3K]
    merged_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    finished_scores, finished_pick = top_k_per_example(merged_scores, num_beams)  # --> [B, K]
    finished_seqs = gather_beams(jnp.concatenate([state.finished_seqs, top_seqs], axis=1), finished_pick)
    finished_flags = jnp.take_along_axis(
        jnp.concatenate([state.finished_flags, enters], axis=1), finished_pick, axis=1
    )

    # DONE: can the best live beam still beat the worst finished one? (HF's heuristic, see module docstring)
    # --> [B]
    hypothetical_length = (
        (max_length - prompt_lengths) if never and settings.length_penalty > 0 else num_generated
    )
    best_possible = live_scores[:, 0] / length_penalty(hypothetical_length, settings)
    worst_finished = jnp.where(finished_flags, finished_scores.min(axis=1, keepdims=True), _NEG)  # [B, K]
    improvable = state.improvable & jnp.any(best_possible[:, None] > worst_finished, axis=1)
    done = state.done | ~improvable | at_max_length
    if settings.early_stopping is True:
        done = done | finished_flags.all(axis=1)

    return BeamState(
        step=state.step + 1,
        live_seqs=live_seqs,
        live_scores=live_scores,
        last_tokens=last_tokens,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        finished_flags=finished_flags,
        improvable=improvable,
        done=done,
        cache=cache,
    )


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: RowCache,
    prompt_ids: jax.Array,
    prompt_lengths: jax.Array,
    settings: DecodeSettings,
) -> tuple[jax.Array, jax.Array]:
    """Beam search from per-example forced prompts (traceable; call it inside `jax.jit`).

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
      penalised), best first.
    """
    batch, prompt_width = prompt_ids.shape
    num_beams, max_length, eos = settings.num_beams, settings.max_length, settings.eos_id
    if prompt_width >= max_length:
        raise ValueError(
            f"prompt_ids are {prompt_width} tokens wide but max_length is {max_length} (it counts the prompt); "
            "raise max_length or shorten the prefix."
        )
    prompt_lengths = prompt_lengths.astype(jnp.int32)
    in_prompt = jnp.arange(prompt_width)[None, :] < prompt_lengths[:, None]
    prompt = jnp.where(in_prompt, prompt_ids, eos).astype(jnp.int32)  # [B, P]
    # --> [B, K, L]
    seqs = jnp.full((batch, num_beams, max_length), eos, jnp.int32)
    seqs = seqs.at[:, :, :prompt_width].set(prompt[:, None, :])
    row_prompt_lengths = jnp.repeat(prompt_lengths, num_beams)  # [N]

    # Prefill each example's prompt in one pass from position 0, once per example (its beams start from
    # copies: prefilling all B*K rows cost whisper-tiny 2% of a 4-beam batch). Cache entries past a prompt
    # hold padding for now; they are overwritten by generated tokens before any query may attend to them.
    # The logits are not used (XLA drops their [B, P, V] projection): the loop's first step feeds each row's
    # last prompt token again, at its own position, and takes the first generated token's logits from there.
    _, cache = tokens_to_logits(prompt, cache, jnp.zeros_like(prompt_lengths))
    cache = cache.repeat_rows(num_beams)
    last_prompt_token = jnp.take_along_axis(prompt, (prompt_lengths - 1)[:, None], axis=1)  # [B, 1]

    state = BeamState(
        step=jnp.zeros((), jnp.int32),
        live_seqs=seqs,
        # Only beam 0 is live at first, so the K beams do not start as K copies of one hypothesis.
        live_scores=jnp.tile(jnp.array([0.0] + [_NEG] * (num_beams - 1), jnp.float32), (batch, 1)),
        last_tokens=jnp.broadcast_to(last_prompt_token, (batch, num_beams)),
        finished_seqs=seqs,
        finished_scores=jnp.full((batch, num_beams), _NEG, jnp.float32),
        finished_flags=jnp.zeros((batch, num_beams), bool),
        improvable=jnp.ones((batch,), bool),
        done=jnp.zeros((batch,), bool),
        cache=cache,
    )

    def not_done(state: BeamState) -> jax.Array:
        return jnp.any(~state.done) & (state.step < max_length)

    def step(state: BeamState) -> BeamState:
        # Each live beam's last token goes at its row's next position; a finished example's rows keep
        # running until the batch ends, clamped so they stay inside the cache.
        positions = jnp.minimum(row_prompt_lengths + state.step - 1, max_length - 1)
        # --> [N, 1, V]
        logits, cache = tokens_to_logits(flatten_beam_dim(state.last_tokens)[:, None], state.cache, positions)
        state = state.replace(cache=cache)
        return _beam_step(state, logits[:, 0], prompt_lengths, settings)

    state = jax.lax.while_loop(not_done, step, state)
    returned = settings.num_return_sequences
    return state.finished_seqs[:, :returned], state.finished_scores[:, :returned]


DecodeFn = Callable[..., tuple[jax.Array, jax.Array]]


def make_decode_fn(
    model: nnx.Module | nnx.GraphDef, settings: DecodeSettings, mesh: Mesh | None = None
) -> DecodeFn:
    """The captioning function: `decode(state, mel, prompt_ids, prompt_lengths, rng=None) -> (sequences, scores)`.

    `model` is a `Whisper` or its `nnx.graphdef` (only the structure is kept); `state` is `nnx.state(model)`
    (or any state of that structure, e.g. the training loop's), sharded however the caller placed it.
    mel: float [B, M, S]; prompt_ids: int32 [B, P]; prompt_lengths: int32 [B]; rng: a `jax.random.key` for
    sampling (beam search ignores it; None = `jax.random.key(settings.seed)`). Returns int32 [B, R, L] and
    float32 [B, R] (see `beam_search`). One `jax.jit`: encoder, cache init, prefill and the decoding loop.
    With `mesh`, the batch is constrained to the mesh's batch axes and the model's sharding annotations
    apply; compiled once per input shape.
    """
    graphdef = model if isinstance(model, nnx.GraphDef) else nnx.graphdef(model)

    @jax.jit
    def decode(
        state: Any,
        mel: jax.Array,
        prompt_ids: jax.Array,
        prompt_lengths: jax.Array,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        whisper = nnx.merge(graphdef, state)
        mel = constrain(mel, ("batch", None, None))
        tokens_to_logits, cache = whisper.start_decoding(whisper.encode(mel), settings.max_length)
        sequences, scores = beam_search(tokens_to_logits, cache, prompt_ids, prompt_lengths, settings)
        return constrain(sequences, ("batch", None, None)), constrain(scores, ("batch", None))

    if mesh is None:
        return decode

    def decode_on_mesh(
        state: Any,
        mel: jax.Array,
        prompt_ids: jax.Array,
        prompt_lengths: jax.Array,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        with jax.set_mesh(mesh):
            return decode(state, mel, prompt_ids, prompt_lengths, rng)

    return decode_on_mesh
