"""Beam search: toy Markov chains whose answers are worked out by hand (t5x style), an exhaustive-search oracle,
and exact parity with transformers' PyTorch `GenerationMixin.generate` on a tiny random Whisper."""

import collections
import dataclasses
import functools
import itertools
import json
import math
import re
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from audiocap_jax import text
from audiocap_jax.decoding import search, whisper_binding
from audiocap_jax.decoding.search import DecodeSettings
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import load_hf_checkpoint
from audiocap_jax.testing.models import TINY_ARCH, tiny_hf_whisper

# ---------------------------------------------------------------------------------------------------------
# Toy scorer: a (second-order) Markov chain over a handful of tokens. The cache is each row's token history,
# so a wrong beam reordering of the cache changes the answer.
# ---------------------------------------------------------------------------------------------------------
EOT, SOT, A, B, C, D, E = range(7)


@flax.struct.dataclass
class HistoryCache:
    tokens: jax.Array  # int32: [N, L] tokens written so far per row

    def repeat_rows(self, repeats: int) -> "HistoryCache":
        return self.replace(tokens=jnp.repeat(self.tokens, repeats, axis=0))

    def gather_rows(self, idx: jax.Array) -> "HistoryCache":
        return self.replace(tokens=self.tokens[idx])


def markov_scorer(log_probs: np.ndarray) -> search.TokensToLogits:
    """Logits for the next token from log_probs [V_prev, V_cur, V_next]; position 0's previous token is EOT."""
    table = jnp.asarray(log_probs, jnp.float32)

    def tokens_to_logits(ids, cache, positions):
        columns = positions[:, None] + jnp.arange(ids.shape[1])[None, :]  # [N, T]
        tokens = jax.vmap(lambda row, new, p: jax.lax.dynamic_update_slice(row, new, (p,)))(
            cache.tokens, ids, positions
        )
        previous = jnp.take_along_axis(tokens, jnp.maximum(columns - 1, 0), axis=1)
        previous = jnp.where(columns == 0, EOT, previous)
        return table[previous, ids], HistoryCache(tokens)

    return tokens_to_logits


def first_order(rows: dict[int, dict[int, float]], vocab: int = 7) -> np.ndarray:
    """[V, V, V] log-probs of a first-order chain: rows[cur] = {next: p}, the rest of a row's mass spread
    evenly over the other tokens; unlisted rows are uniform."""
    probs = np.full((vocab, vocab), 1.0 / vocab)
    for cur, nexts in rows.items():
        others = [t for t in range(vocab) if t not in nexts]
        probs[cur, others] = (1.0 - sum(nexts.values())) / len(others)
        for token, p in nexts.items():
            probs[cur, token] = p
    return np.broadcast_to(np.log(probs), (vocab, vocab, vocab))


def run(log_probs, prompts, rng=None, **settings):
    """Decode prompts (list of token lists) with the toy scorer; returns numpy sequences [B, R, L], scores."""
    settings = DecodeSettings(eos_id=EOT, **settings)
    width = max(map(len, prompts))
    prompt_ids = np.full((len(prompts), width), EOT, np.int32)
    for i, p in enumerate(prompts):
        prompt_ids[i, : len(p)] = p
    cache = HistoryCache(jnp.zeros((len(prompts), settings.max_length), jnp.int32))
    run_search = jax.jit(functools.partial(search.decode_tokens, markov_scorer(log_probs), settings=settings))
    seqs, scores = run_search(cache, jnp.asarray(prompt_ids), jnp.asarray([len(p) for p in prompts]), rng=rng)
    return np.asarray(seqs), np.asarray(scores)


def padded(tokens, length):
    return tokens + [EOT] * (length - len(tokens))


log = math.log
# Greedy takes A (0.55) then C; the best raw log-prob path is B then EOT.
CHAIN = first_order(
    {
        SOT: {A: 0.55, B: 0.42},
        A: {C: 0.67, EOT: 0.30},
        B: {EOT: 0.96},
        C: {EOT: 0.96},
    }
)
A_C_EOT = log(0.55) + log(0.67) + log(0.96)
B_EOT = log(0.42) + log(0.96)


def test_greedy_takes_the_locally_best_token():
    seqs, scores = run(CHAIN, [[SOT]], num_beams=1, max_length=8)
    assert seqs.tolist() == [[padded([SOT, A, C, EOT], 8)]]
    np.testing.assert_allclose(scores, [[A_C_EOT / 3]], rtol=1e-5)


def test_beam_search_and_length_penalty_pick_the_expected_hypotheses():
    # Length penalty 1 (HF default) divides by the 3 and 2 generated tokens: A C EOT wins.
    seqs, scores = run(CHAIN, [[SOT]], num_beams=2, max_length=8, num_return_sequences=2)
    assert seqs.tolist() == [[padded([SOT, A, C, EOT], 8), padded([SOT, B, EOT], 8)]]
    np.testing.assert_allclose(scores, [[A_C_EOT / 3, B_EOT / 2]], rtol=1e-5)
    # Without a length penalty the raw log-prob decides: B EOT, which greedy never sees.
    seqs, scores = run(CHAIN, [[SOT]], num_beams=2, max_length=8, length_penalty=0.0, num_return_sequences=2)
    assert seqs.tolist() == [[padded([SOT, B, EOT], 8), padded([SOT, A, C, EOT], 8)]]
    np.testing.assert_allclose(scores, [[B_EOT, A_C_EOT]], rtol=1e-5)
    # GNMT form ((5 + g) / 6) ** lp favours length less: B EOT wins by 0.0008.
    seqs, scores = run(
        CHAIN, [[SOT]], num_beams=2, max_length=8, length_penalty_form="gnmt", num_return_sequences=2
    )
    assert seqs.tolist() == [[padded([SOT, B, EOT], 8), padded([SOT, A, C, EOT], 8)]]
    np.testing.assert_allclose(scores, [[B_EOT / (7 / 6), A_C_EOT / (8 / 6)]], rtol=1e-5)


def test_suppress_tokens_apply_to_generated_positions_only():
    # SOT is suppressed but stays the forced first token; C is suppressed, so A continues with EOT.
    seqs, scores = run(CHAIN, [[SOT]], num_beams=1, max_length=8, suppress_tokens=(SOT, C))
    assert seqs.tolist() == [[padded([SOT, A, EOT], 8)]]
    # HF semantics: -inf after log_softmax, no renormalisation.
    np.testing.assert_allclose(scores, [[(log(0.55) + log(0.30)) / 2]], rtol=1e-5)
    # begin_suppress_tokens act at the first generated position only: B first, then EOT is allowed.
    seqs, _ = run(CHAIN, [[SOT]], num_beams=1, max_length=8, begin_suppress_tokens=(A, EOT))
    assert seqs.tolist() == [[padded([SOT, B, EOT], 8)]]


def test_min_length_counts_the_prompt():
    chain = first_order({SOT: {A: 0.9}, A: {EOT: 0.6, B: 0.3}, B: {EOT: 0.6, C: 0.3}, C: {EOT: 0.9}})
    # HF's rule: EOT is banned while the sequence so far (prompt included) is shorter than min_length, so
    # EOT lands at index >= min_length.
    seqs, _ = run(chain, [[SOT]], num_beams=1, max_length=8, min_length=3)
    assert seqs.tolist() == [[padded([SOT, A, B, EOT], 8)]]
    seqs, _ = run(chain, [[SOT], [SOT, A]], num_beams=1, max_length=8, min_length=4)
    assert seqs.tolist() == [[padded([SOT, A, B, C, EOT], 8)], [padded([SOT, A, B, C, EOT], 8)]]


def test_max_length_counts_the_prompt_and_ends_unfinished_hypotheses():
    loop = first_order({SOT: {A: 0.9}, A: {A: 0.8}})
    seqs, scores = run(loop, [[SOT], [SOT, A, A]], num_beams=2, max_length=6)
    assert seqs.tolist() == [[[SOT, A, A, A, A, A]], [[SOT, A, A, A, A, A]]]
    # Scored like HF: summed log-probs over the generated tokens divided by their number.
    np.testing.assert_allclose(scores, [[(log(0.9) + 4 * log(0.8)) / 5], [3 * log(0.8) / 3]], rtol=1e-5)


# K = 2, length penalty 1. After step 2 both finished slots are full (B EOT: -0.494, A C EOT: -0.344) while
# the live A D E still has -1.463 / 3 = -0.488 > -0.494 at the current length, and finishes at -0.368.
EARLY = first_order(
    {
        SOT: {A: 0.6, B: 0.38},
        A: {C: 0.6, D: 0.39},
        B: {EOT: 0.98},
        C: {EOT: 0.99},
        D: {E: 0.99},
        E: {EOT: 0.99},
    },
)


@pytest.mark.parametrize(
    "early_stopping, expected",
    [
        # True: done as soon as K hypotheses are finished.
        (True, [[SOT, A, C, EOT], [SOT, B, EOT]]),
        # False (HF default): done when the best live score at the current length cannot beat the worst
        # finished one; here it can, so A D E EOT replaces B EOT.
        (False, [[SOT, A, C, EOT], [SOT, A, D, E, EOT]]),
        ("never", [[SOT, A, C, EOT], [SOT, A, D, E, EOT]]),
    ],
)
def test_early_stopping_rule(early_stopping, expected):
    seqs, scores = run(
        EARLY, [[SOT]], num_beams=2, max_length=10, early_stopping=early_stopping, num_return_sequences=2
    )
    assert seqs.tolist() == [[padded(e, 10) for e in expected]]
    a_c_eot = (log(0.6) + log(0.6) + log(0.99)) / 3
    assert scores[0, 0] == pytest.approx(a_c_eot, rel=1e-5)


def test_loop_exits_when_every_example_is_done():
    calls = []

    def counting(ids, cache, positions):
        jax.debug.callback(lambda: calls.append(1))
        return markov_scorer(CHAIN)(ids, cache, positions)

    settings = DecodeSettings(eos_id=EOT, num_beams=2, max_length=40)
    cache = HistoryCache(jnp.zeros((1, 40), jnp.int32))
    run_search = jax.jit(functools.partial(search.beam_search, counting, settings=settings))
    seqs, _ = jax.block_until_ready(run_search(cache, jnp.asarray([[SOT]]), jnp.asarray([1])))
    assert seqs[0, 0, :4].tolist() == [SOT, A, C, EOT]
    # Prefill + 3 steps (after the third, no live beam can beat the finished ones), not 1 + 39.
    assert len(calls) == 4


def test_mixed_prompt_lengths_in_one_batch_equal_separate_runs():
    prompts = [[SOT], [SOT, B], [SOT, A, C], [SOT, A]]
    seqs, scores = run(CHAIN, prompts, num_beams=2, max_length=7, num_return_sequences=2)
    for i, prompt in enumerate(prompts):
        alone_seqs, alone_scores = run(CHAIN, [prompt], num_beams=2, max_length=7, num_return_sequences=2)
        np.testing.assert_array_equal(seqs[i], alone_seqs[0])
        np.testing.assert_allclose(scores[i], alone_scores[0], rtol=1e-6)
    assert seqs[1, 0].tolist() == padded([SOT, B, EOT], 7)
    assert seqs[2, 0].tolist() == padded([SOT, A, C, EOT], 7)


def _all_hypotheses(log_probs, prompt, max_length):
    """Every (sequence, summed log-prob) the chain can produce: ended by EOT or by max_length."""
    vocab = log_probs.shape[0]
    out = []
    for n in range(1, max_length - len(prompt) + 1):
        for tail in itertools.product(range(vocab), repeat=n):
            if EOT in tail[:-1] or (tail[-1] != EOT and len(prompt) + n < max_length):
                continue
            seq = list(prompt) + list(tail)
            score = sum(
                log_probs[seq[i - 1] if i else EOT, seq[i], seq[i + 1]]
                for i in range(len(prompt) - 1, len(seq) - 1)
            )
            out.append((padded(seq, max_length), score))
    return sorted(out, key=lambda x: -x[1])


def test_wide_beam_equals_exhaustive_search_on_a_second_order_chain():
    # With K above the number of live hypotheses and no length penalty, beam search is exact; the answer
    # depends on the token two steps back, which lives in the cache: wrong cache reordering would show.
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.standard_normal((3, 3, 3))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    prompt, max_length = [1, 2], 7
    expected = _all_hypotheses(log_probs, prompt, max_length)[:6]
    seqs, scores = run(
        log_probs, [prompt], num_beams=48, max_length=max_length, length_penalty=0.0, num_return_sequences=6
    )
    assert seqs[0].tolist() == [s for s, _ in expected]
    np.testing.assert_allclose(scores[0], [s for _, s in expected], rtol=1e-5)


def test_settings_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="num_return_sequences 3 must be between 1 and num_beams 2"):
        DecodeSettings(eos_id=0, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="length_penalty_form 'exp' unknown"):
        DecodeSettings(eos_id=0, length_penalty_form="exp")
    with pytest.raises(ValueError, match="early_stopping 'soon'"):
        DecodeSettings(eos_id=0, early_stopping="soon")
    with pytest.raises(ValueError, match="prompt_ids are 8 tokens wide but max_length is 8"):
        run(CHAIN, [[SOT] * 8], num_beams=1, max_length=8)
    with pytest.raises(ValueError, match=r"suppress_tokens \[99\] are outside the model's vocabulary of 7"):
        run(CHAIN, [[SOT]], num_beams=1, max_length=8, suppress_tokens=(99,))
    with pytest.raises(FileNotFoundError, match="No generation config at"):
        DecodeSettings.from_generation_config(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json is not valid JSON"):
        DecodeSettings.from_generation_config(tmp_path)
    with pytest.raises(ValueError, match="has no transformers equivalent"):
        DecodeSettings(eos_id=0, length_penalty_form="gnmt").to_hf_generation_config()


def test_settings_from_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "eos_token_id": 50257,
                "suppress_tokens": [1, 25],
                "begin_suppress_tokens": [220, 50257],
                "max_length": 448,
                "forced_decoder_ids": [[1, None]],
            }
        )
    )
    settings = DecodeSettings.from_generation_config(tmp_path, num_beams=4)
    assert settings == DecodeSettings(
        eos_id=50257, num_beams=4, max_length=80, suppress_tokens=(1, 25), begin_suppress_tokens=(220, 50257)
    )


# ---------------------------------------------------------------------------------------------------------
# Processors inside the search; sampling and diverse beams on chains.
# ---------------------------------------------------------------------------------------------------------
def _decode_graph_lines(ngram_size: int, max_length: int) -> tuple[int, int]:
    """(jaxpr lines, HLO lines) of a 2-beam toy decode with the n-gram ban on: what tracing builds."""
    settings = DecodeSettings(eos_id=EOT, num_beams=2, max_length=max_length, no_repeat_ngram_size=ngram_size)
    decode = functools.partial(search.decode_tokens, markov_scorer(CHAIN), settings=settings)
    args = (HistoryCache(jnp.zeros((1, max_length), jnp.int32)), jnp.array([[SOT]]), jnp.array([1]))
    jaxpr = str(jax.make_jaxpr(decode)(*args))
    hlo = jax.jit(decode).lower(*args).as_text()
    return len(jaxpr.splitlines()), len(hlo.splitlines())


def test_ngram_ban_graph_does_not_grow_with_n():
    """n=100000 used to unroll a Python loop of n-1 comparisons at trace time (memory grew until killed)."""
    assert _decode_graph_lines(3, 1100) == _decode_graph_lines(1000, 1100)
    with pytest.raises(
        ValueError, match="no_repeat_ngram_size 100000 can never ban a token with max_length 80"
    ):
        DecodeSettings(eos_id=EOT, no_repeat_ngram_size=100000)
    DecodeSettings(eos_id=EOT, max_length=8, no_repeat_ngram_size=7)  # the largest n that can still ban


def test_top_k_1_sampling_is_greedy_with_the_same_scores():
    # Greedy would loop A B A B ...; the repeated bigram is banned and EOT (0.1) is the best of the rest
    # (0.04 each, and lower where the repetition penalty of 1.5 applies). No ties, so top_k=1 keeps one token.
    repeating = first_order({SOT: {A: 0.6}, A: {B: 0.7, EOT: 0.1}, B: {A: 0.8, EOT: 0.1}})
    options = dict(no_repeat_ngram_size=2, repetition_penalty=1.5, suppress_tokens=(D,), max_length=8)
    greedy, greedy_scores = run(repeating, [[SOT], [SOT, B]], num_beams=1, **options)
    assert greedy[:, 0].tolist() == [padded([SOT, A, B, A, EOT], 8), padded([SOT, B, A, B, EOT], 8)]
    sampled, sampled_scores = run(
        repeating,
        [[SOT], [SOT, B]],
        strategy="sample",
        top_k=1,
        num_samples=3,
        num_return_sequences=3,
        **options,
    )
    np.testing.assert_array_equal(sampled, np.repeat(greedy, 3, axis=1))
    np.testing.assert_allclose(sampled_scores, np.repeat(greedy_scores, 3, axis=1), rtol=1e-6)


def _chain_score(log_probs, seq, prompt_length):
    """Summed first-order log-probs of the generated tokens (through the first EOT) / their number."""
    total, g = 0.0, 0
    for i in range(prompt_length, len(seq)):
        total, g = total + log_probs[0, seq[i - 1], seq[i]], g + 1
        if seq[i] == EOT:
            break
    return total / g


def test_sampling_draws_from_the_filtered_distribution_and_scores_like_beams():
    # top_p 0.5 after SOT drops, in ascending order, the five 0.006 tokens and B (0.45 <= 0.5): only A is left;
    # after A only C, after C only EOT. Every sample is greedy's SOT A C EOT, with greedy's score.
    seqs, scores = run(
        CHAIN, [[SOT]], strategy="sample", top_p=0.5, num_samples=4, num_return_sequences=2, max_length=8
    )
    assert seqs.tolist() == [[padded([SOT, A, C, EOT], 8)] * 2]
    np.testing.assert_allclose(scores, [[A_C_EOT / 3] * 2], rtol=1e-5)
    # top_k 2 after SOT leaves A (0.55) and B (0.42): 32 samples start with both, nothing else.
    seqs, scores = run(
        CHAIN, [[SOT]], strategy="sample", top_k=2, num_samples=32, num_return_sequences=32, max_length=8
    )
    assert set(seqs[0, :, 1].tolist()) == {A, B}
    expected = [_chain_score(CHAIN, seq, 1) for seq in seqs[0].tolist()]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    assert (np.diff(scores[0]) <= 0).all()  # best first


def test_sampling_seed_fixes_the_samples():
    near_uniform = first_order({SOT: {EOT: 0.05}, A: {EOT: 0.2}, B: {EOT: 0.2}, C: {EOT: 0.2}})
    prompts = [[SOT], [SOT, A], [SOT, B, C]]
    options = dict(strategy="sample", num_samples=6, num_return_sequences=6, max_length=9, temperature=0.8)
    first, first_scores = run(near_uniform, prompts, rng=jax.random.key(3), **options)
    again, again_scores = run(near_uniform, prompts, rng=jax.random.key(3), **options)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_scores, again_scores)
    assert len({tuple(s) for s in first.reshape(-1, 9).tolist()}) >= 12  # the samples do differ
    other, _ = run(near_uniform, prompts, rng=jax.random.key(4), **options)
    assert (other != first).any(axis=-1).sum() >= 12
    # No key: jax.random.key(settings.seed).
    by_seed, _ = run(near_uniform, prompts, seed=3, **options)
    np.testing.assert_array_equal(by_seed, first)


# Three groups of one beam. From SOT: A 0.5, B 0.3, C 0.15; every letter then ends (EOT 0.9).
DIVERSE = first_order({SOT: {A: 0.5, B: 0.3, C: 0.15}, A: {EOT: 0.9}, B: {EOT: 0.9}, C: {EOT: 0.9}})


def test_diverse_beam_groups_differ_where_the_penalty_says():
    # Without a penalty each group is the same 1-beam search: A three times.
    seqs, scores = run(DIVERSE, [[SOT]], num_beams=3, num_beam_groups=3, num_return_sequences=3, max_length=6)
    assert seqs[0].tolist() == [padded([SOT, A, EOT], 6)] * 3
    # Penalty 1: group 1 sees A at log 0.5 - 1 = -1.69 < B's -1.20 and takes B; group 2 sees A and B chosen
    # once each: A -1.69, B -2.20, C -1.90, so A again. The penalty stays in the beam's score (as in HF).
    seqs, scores = run(
        DIVERSE,
        [[SOT]],
        num_beams=3,
        num_beam_groups=3,
        diversity_penalty=1.0,
        num_return_sequences=3,
        max_length=6,
    )
    assert seqs[0].tolist() == [padded([SOT, A, EOT], 6), padded([SOT, B, EOT], 6), padded([SOT, A, EOT], 6)]
    np.testing.assert_allclose(
        scores[0],
        [(log(0.5) + log(0.9)) / 2, (log(0.3) + log(0.9)) / 2, (log(0.5) - 1 + log(0.9)) / 2],
        rtol=1e-5,
    )


def test_beam_groups_without_penalty_are_independent_beam_searches():
    # Two groups of two beams and no penalty: each group finds what a 2-beam search finds, merged by score.
    seqs, scores = run(EARLY, [[SOT], [SOT, B]], num_beams=2, num_return_sequences=2, max_length=10)
    grouped, grouped_scores = run(
        EARLY, [[SOT], [SOT, B]], num_beams=4, num_beam_groups=2, num_return_sequences=4, max_length=10
    )
    np.testing.assert_array_equal(grouped, np.repeat(seqs, 2, axis=1))
    np.testing.assert_allclose(grouped_scores, np.repeat(scores, 2, axis=1), rtol=1e-6)


def test_strategy_settings_errors_name_the_field():
    cases = [
        (dict(temperature=0.5), 'temperature=0.5 only apply to strategy="sample"'),
        (dict(top_k=5, num_samples=2), 'top_k=5, num_samples=2 only apply to strategy="sample"'),
        (dict(strategy="greedy"), "strategy 'greedy' unknown"),
        (dict(num_beams=4, num_beam_groups=3), "num_beam_groups 3 must be >= 1 and divide num_beams 4"),
        (dict(diversity_penalty=0.5), "diversity_penalty 0.5 needs num_beam_groups > 1"),
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=-1.0), "diversity_penalty -1.0 must be >= 0"),
        (dict(strategy="sample", num_beam_groups=5), 'num_beam_groups=5 only apply to strategy="beam"'),
        (dict(strategy="sample", temperature=0.0), "temperature 0.0 must be > 0"),
        (dict(strategy="sample", top_k=-1), "top_k -1 must be >= 0"),
        (dict(strategy="sample", top_p=0.0), r"top_p 0.0 must be in \(0, 1\]"),
        (dict(strategy="sample", top_p=1.5), r"top_p 1.5 must be in \(0, 1\]"),
        (dict(strategy="sample", num_samples=0), "num_samples is 0"),
        (dict(strategy="sample", num_samples=4, num_return_sequences=5), "between 1 and num_samples 4"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size -1 must be >= 0"),
        (dict(repetition_penalty=0.0), "repetition_penalty 0.0 must be > 0"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            DecodeSettings(eos_id=0, **fields)
    with pytest.raises(ValueError, match="num_beam_groups 2: transformers 5 has no diverse"):
        DecodeSettings(eos_id=0, num_beams=4, num_beam_groups=2).to_hf_generation_config()


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers' PyTorch generate on a tiny random Whisper.
# ---------------------------------------------------------------------------------------------------------
MAX_LENGTH = 20
NUM_INPUTS = 8


def peaked_tiny_whisper(seed: int = 0):
    """Tiny random HF Whisper edited so decoding is meaningful: peaked, position- and audio-dependent
    distributions (random weights give near-uniform ones, where float noise decides) and an eot that wins at
    some positions, so hypotheses end at different lengths."""
    model = tiny_hf_whisper(seed)
    d_model = TINY_ARCH["d_model"]
    with torch.no_grad():
        decoder = model.model.decoder
        decoder.layer_norm.weight.mul_(40.0)  # sharp softmax
        decoder.embed_positions.weight.mul_(30.0)  # tokens vary along the sequence
        for layer in decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(15.0)  # ... and with the audio
        table = decoder.embed_tokens.weight  # tied to the output projection
        eot = model.config.eos_token_id
        positions = decoder.embed_positions.weight[[14, 16, 18]].sum(0)  # eot likely near these positions
        table[eot] = positions
        table.div_(table.norm(dim=1, keepdim=True)).mul_(0.02 * d_model**0.5)  # no token wins by norm alone
    return model


class WhisperPair(NamedTuple):
    torch_model: Any
    ours: Any
    path: Any
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray]  # mel [B, M, S], prompt_ids [B, P], prompt_lengths [B]
    eot: int
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]


@pytest.fixture(scope="module")
def whisper_pair(tmp_path_factory) -> WhisperPair:
    """The torch model, ours loaded from its HF checkpoint, 8 inputs with three prompt lengths, and
    Whisper-like suppress lists that matter for this model."""
    path = tmp_path_factory.mktemp("peaked_tiny")
    torch_model = peaked_tiny_whisper()
    torch_model.save_pretrained(str(path))
    ours, _ = load_hf_checkpoint(path)
    tokenizer = text.Tokenizer.from_assets()
    eot = tokenizer.specials.eot
    prompts = [
        tokenizer.prompt_ids(text.CLOTHO_CAPTION),  # 11 tokens, with the suppressed ids 25 ":" and 12331 " >"
        tokenizer.prompt_ids(""),  # 4 tokens
        tokenizer.prompt_ids(text.AUDIOSET_KEYWORDS)[:8],
    ]
    rows = [prompts[i % len(prompts)] for i in range(NUM_INPUTS)]
    prompt_ids = np.full((NUM_INPUTS, max(map(len, rows))), eot, np.int32)
    for i, row in enumerate(rows):
        prompt_ids[i, : len(row)] = row
    rng = np.random.default_rng(0)
    frames = 2 * TINY_ARCH["max_source_positions"]
    # A per-example spectrum held over time (plus noise): random iid frames average out in attention.
    mel = rng.normal(size=(NUM_INPUTS, 80, 1)) * 2 + 0.3 * rng.normal(size=(NUM_INPUTS, 80, frames))
    inputs = (mel.astype(np.float32), prompt_ids, np.array([len(r) for r in rows], np.int32))

    # Suppress what this model likes to generate, so suppression visibly changes the output.
    greedy, _ = hf_generate(
        torch_model, inputs, DecodeSettings(eos_id=eot, num_beams=1, max_length=MAX_LENGTH)
    )
    firsts = collections.Counter(int(seq[0, n]) for seq, n in zip(greedy, inputs[2], strict=True))
    generated = collections.Counter(
        int(t) for seq, n in zip(greedy, inputs[2], strict=True) for t in seq[0, n:] if t != eot
    )
    suppress = (25, 12331, *(t for t, _ in generated.most_common(3)))
    begin_suppress = (220, eot, firsts.most_common(1)[0][0])
    return WhisperPair(torch_model, ours, path, inputs, eot, suppress, begin_suppress)


def hf_generate(torch_model, inputs, settings: DecodeSettings):
    """The oracle: plain GenerationMixin.generate, once per prompt length (HF cannot mix them in a batch)."""
    mel, prompt_ids, lengths = inputs
    config = transformers.GenerationConfig(
        decoder_start_token_id=prompt_ids[0, 0].item(),
        output_scores=True,
        return_dict_in_generate=True,
        **settings.to_hf_generation_config(),
    )
    num_returned = settings.num_return_sequences
    sequences = np.full((len(mel), num_returned, settings.max_length), settings.eos_id, np.int64)
    scores = np.full((len(mel), num_returned), np.nan, np.float32)
    for length in sorted(set(lengths.tolist())):
        idx = np.flatnonzero(lengths == length)
        with torch.no_grad():
            out = transformers.GenerationMixin.generate(
                torch_model,
                input_features=torch.tensor(mel[idx]),
                decoder_input_ids=torch.tensor(prompt_ids[idx, :length], dtype=torch.long),
                generation_config=config,
            )
        seqs = out.sequences.numpy().reshape(len(idx), num_returned, -1)
        sequences[idx, :, : seqs.shape[-1]] = seqs
        if settings.strategy == "beam" and settings.num_beams > 1:
            scores[idx] = out.sequences_scores.numpy().reshape(len(idx), num_returned)
    return sequences, scores


def our_generate(model, inputs, settings: DecodeSettings, mesh=None, rng=None):
    mel, prompt_ids, lengths = inputs
    state = nnx.state(model)
    # On a mesh, build from the graphdef as the training loop does (it holds graphdef + state).
    decode_fn = whisper_binding.make_decode_fn(nnx.graphdef(model) if mesh else model, settings, mesh=mesh)
    if mesh is not None:
        batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
        mel, prompt_ids, lengths = (jax.device_put(x, batch) for x in (mel, prompt_ids, lengths))
    sequences, scores = decode_fn(state, mel, prompt_ids, lengths, rng)
    return np.asarray(sequences), np.asarray(scores)


# "suppress": use the fixture's Whisper-like suppress and begin-suppress lists.
PARITY_CASES = {
    "greedy": dict(num_beams=1),
    "greedy_suppress": dict(num_beams=1, suppress=True),
    "beam4_lp0.6_suppress": dict(num_beams=4, length_penalty=0.6, suppress=True, num_return_sequences=4),
    "beam5_lp1.0": dict(num_beams=5, num_return_sequences=5),
    "beam5_lp0.6_early_true": dict(
        num_beams=5, length_penalty=0.6, early_stopping=True, num_return_sequences=2
    ),
    "beam4_never_min_length_suppress": dict(
        num_beams=4, early_stopping="never", min_length=16, suppress=True, num_return_sequences=2
    ),
    # Repetition penalty on log-probs (beam search) or on logits (greedy, sampling), as HF applies it.
    "beam4_ngram3_rep1.3": dict(
        num_beams=4, no_repeat_ngram_size=3, repetition_penalty=1.3, num_return_sequences=2
    ),
    "greedy_ngram3_rep1.3_suppress": dict(
        num_beams=1, no_repeat_ngram_size=3, repetition_penalty=1.3, suppress=True
    ),
    # top_k=1 sampling is greedy (HF: do_sample=True, top_k=1).
    "sample_top_k1_ngram2_rep1.3": dict(
        strategy="sample",
        top_k=1,
        num_samples=2,
        num_return_sequences=2,
        no_repeat_ngram_size=2,
        repetition_penalty=1.3,
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_matches_transformers_generate(whisper_pair, case):
    pair = whisper_pair
    options = dict(PARITY_CASES[case])
    if options.pop("suppress", False):
        options.update(suppress_tokens=pair.suppress, begin_suppress_tokens=pair.begin_suppress)
    settings = DecodeSettings(eos_id=pair.eot, max_length=MAX_LENGTH, **options)
    expected_seqs, expected_scores = hf_generate(pair.torch_model, pair.inputs, settings)
    seqs, scores = our_generate(pair.ours, pair.inputs, settings)
    np.testing.assert_array_equal(seqs, expected_seqs)
    if settings.strategy == "beam" and settings.num_beams > 1:
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    # The forced prompt is returned untouched, suppressed ids included.
    _, prompt_ids, lengths = pair.inputs
    for i, n in enumerate(lengths):
        assert (seqs[i, :, :n] == prompt_ids[i, :n]).all()
    # First eot after the prompt (max_length if none): several lengths, so the test is not degenerate.
    ends = [
        next((j for j in range(n, MAX_LENGTH) if seq[j] == pair.eot), MAX_LENGTH)
        for seq, n in zip(seqs[:, 0], lengths, strict=True)
    ]
    if settings.min_length:
        assert min(ends) >= settings.min_length
    else:
        assert len(set(ends)) >= 3 and (settings.no_repeat_ngram_size or MAX_LENGTH in ends)
    if settings.no_repeat_ngram_size:
        # The bans matter: without them and the penalty HF returns other sequences for several inputs.
        free = dataclasses.replace(settings, no_repeat_ngram_size=0, repetition_penalty=1.0)
        assert (hf_generate(pair.torch_model, pair.inputs, free)[0] != seqs).any(axis=(1, 2)).sum() >= 2
    if settings.suppress_tokens:
        generated = np.concatenate([seq[:, n:].ravel() for seq, n in zip(seqs, lengths, strict=True)])
        assert not np.isin(generated, settings.suppress_tokens).any()
        # ... and suppression matters: without it HF picks other tokens for most inputs.
        unsuppressed = dataclasses.replace(settings, suppress_tokens=(), begin_suppress_tokens=())
        assert (hf_generate(pair.torch_model, pair.inputs, unsuppressed)[0] != seqs).any(
            axis=(1, 2)
        ).sum() >= 4


def test_sharded_decode_equals_transformers(whisper_pair):
    pair = whisper_pair
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded, _ = load_hf_checkpoint(pair.path, mesh=mesh)
    settings = DecodeSettings(eos_id=pair.eot, max_length=MAX_LENGTH, num_beams=4, num_return_sequences=2)
    seqs, scores = our_generate(sharded, pair.inputs, settings, mesh=mesh)
    expected_seqs, expected_scores = hf_generate(pair.torch_model, pair.inputs, settings)
    np.testing.assert_array_equal(seqs, expected_seqs)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_sampling_seed_gives_the_same_captions_on_1_and_8_devices(whisper_pair):
    pair = whisper_pair
    settings = DecodeSettings(
        eos_id=pair.eot,
        max_length=MAX_LENGTH,
        strategy="sample",
        num_samples=4,
        num_return_sequences=4,
        temperature=3.0,  # the peaked model is near-deterministic at 1
        top_k=20,
        top_p=0.95,
        no_repeat_ngram_size=3,
    )
    decode_fn = whisper_binding.make_decode_fn(pair.ours, settings)  # one compilation for the three keys
    state = nnx.state(pair.ours)

    def sample_with(seed):
        return [np.asarray(x) for x in decode_fn(state, *pair.inputs, jax.random.key(seed))]

    seqs, scores = sample_with(7)
    np.testing.assert_array_equal(sample_with(7)[0], seqs)
    assert len({tuple(s) for s in seqs.reshape(-1, MAX_LENGTH).tolist()}) >= 16  # the samples vary
    assert (sample_with(8)[0] != seqs).any(axis=-1).sum() >= 8
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded, _ = load_hf_checkpoint(pair.path, mesh=mesh)
    on_mesh, mesh_scores = our_generate(sharded, pair.inputs, settings, mesh=mesh, rng=jax.random.key(7))
    np.testing.assert_array_equal(on_mesh, seqs)
    np.testing.assert_allclose(mesh_scores, scores, atol=1e-4)


def test_scanned_layers_decode_like_transformers(whisper_pair):
    """With scan_layers the decoding loop runs the layer scan over a stacked self-attention cache."""
    pair = whisper_pair
    scanned, _ = load_hf_checkpoint(pair.path, scan_layers=True)
    settings = DecodeSettings(eos_id=pair.eot, max_length=MAX_LENGTH, num_beams=4, num_return_sequences=2)
    seqs, scores = our_generate(scanned, pair.inputs, settings)
    expected_seqs, expected_scores = hf_generate(pair.torch_model, pair.inputs, settings)
    np.testing.assert_array_equal(seqs, expected_seqs)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def _hlo_computations(hlo: str) -> dict[str, list[str]]:
    """Optimised HLO text --> {computation name: its instruction lines}."""
    computations, lines = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            lines = computations.setdefault(header.group(1), [])
        elif line == "}":
            lines = None
        elif lines is not None:
            lines.append(line.strip())
    return computations


def _reachable(computations: dict[str, list[str]], root: str) -> set[str]:
    """`root` and every computation it calls (fusions, nested loops, conditional branches)."""
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for line in computations[name]:
            todo += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                todo += [b.strip().lstrip("%") for b in branches.split(",")]
    return seen


def test_scanned_decoding_loop_copies_no_cache(whisper_pair):
    """Compiled, the scanned decoding loop writes the stacked [L, ...] self-attention cache in place (one
    scatter each for K and V; otherwise only the beam reordering, a gather and its copy into the loop's carry,
    as in the unscanned loop, makes a stack) and reads the clips' cross-attention K/V where they are: no
    instruction in the loop makes a value of their shape (no copy, slice, transpose, gather or concat)."""
    scanned, config = load_hf_checkpoint(whisper_pair.path, scan_layers=True)
    batch, beams, max_length = 2, 3, 12
    settings = DecodeSettings(eos_id=whisper_pair.eot, num_beams=beams, max_length=max_length)
    mel = np.zeros((batch, 80, 2 * TINY_ARCH["max_source_positions"]), np.float32)
    prompt = np.full((batch, 4), 50258, np.int32)
    compiled = (
        whisper_binding.make_decode_fn(scanned, settings)
        .lower(nnx.state(scanned), mel, prompt, np.full((batch,), 4, np.int32))
        .compile()
    )
    computations = _hlo_computations(compiled.as_text())
    heads, width = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
    frames, layers, rows = TINY_ARCH["max_source_positions"], config.decoder_layers, batch * beams
    cross = {f"f32[{batch},{heads},{width},{frames}]", f"f32[{batch},{heads},{frames},{width}]"}
    stack = {
        f"f32[{layers},{rows},{heads},{width},{max_length}]",
        f"f32[{layers},{rows},{heads},{max_length},{width}]",
    }
    # The beam loop: the while loop whose body reaches the most computations (it holds the layer scan).
    loops = [
        m
        for lines in computations.values()
        for line in lines
        for m in re.findall(r" while\(.*body=%?([\w.\-]+)", line)
    ]
    body = max(loops, key=lambda name: len(_reachable(computations, name)))
    lines = [line for name in _reachable(computations, body) for line in computations[name]]
    producing = re.compile(
        r"= (f32\[[\d,]+\])\{[\d,]*\} (copy|slice|dynamic-slice|transpose|gather|concatenate|fusion)\("
    )
    made = [(m.group(1), line) for m, line in ((producing.search(line), line) for line in lines) if m]
    assert not [line for shape, line in made if shape in cross], (
        "the loop makes values of the cross K/V's shape"
    )
    stack_made = [line for shape, line in made if shape in stack]
    assert sum("scatter" in line for line in stack_made) == 2, stack_made
    reorders = [line for line in stack_made if "scatter" not in line]
    assert len(reorders) == 4 and sum(" copy(" in line for line in reorders) == 2, reorders
