"""Rerankers on hand-worked candidate sets: MBR (CIDEr-D consensus), likelihood, plug-ins, generated lengths."""

import math

import numpy as np
import pytest

from audiocap_jax.decoding import rerank
from audiocap_jax.decoding.search import DecodeSettings


def test_mbr_picks_the_caption_a_hand_computation_picks():
    # Two clips of three candidates. CIDEr-D of entry (clip, i): candidate i against the OTHER two of its clip;
    # the 6 entries' reference sets are the documents, so ref_len = log 6 and idf(g) = log 6 - log df(g).
    # Clip A: "a dog barks" and its n-grams are in the references of all 3 A entries (df 3, idf log 2);
    # "cat", "meows", "a cat", ... only in those of A1, A2 (df 2, idf log 3). All captions have 3 words, so
    # CIDEr-D's Gaussian length factor is 1; 4-grams do not exist (their cosine counts 0).
    # A0 "a cat meows" vs "a dog barks" (twice): only the unigram "a" is shared, cos_1 = log2^2 /
    #   (|(log2, log3, log3)| * |(log2, log2, log2)|) = log2 / (sqrt3 * sqrt(log2^2 + 2 log3^2)) = 0.23523,
    #   CIDEr-D = 10 * mean_n(cos_n) = 10 * 0.23523 / 4 = 0.58807.
    # A1 "a dog barks" vs "a cat meows" (cos_1 0.23523 as above) and vs "a dog barks" (cos_1..3 = 1):
    #   10 * mean over refs of mean_n = 10 * ((0.23523 + 3) / 4) / 2 = 4.04404; A2 the same.
    # Clip B: B0 "rain falls" vs "rain falls" (cos_1 = cos_2 = 1) and "wind blows" (0): 10 * (2/4) / 2 = 2.5;
    #   B1 the same; B2 "wind blows" shares nothing: 0.
    # MBR picks A1 (ties keep the search's order), though the search ranked A0 first, and B0.
    candidates = [["a cat meows", "a dog barks", "a dog barks"], ["rain falls", "rain falls", "wind blows"]]
    values = rerank.mbr_scores(candidates)
    np.testing.assert_allclose(values, [[0.58807, 4.04404, 4.04404], [2.5, 2.5, 0.0]], atol=1e-5)
    assert rerank.ranking(values)[:, 0].tolist() == [1, 0]


def test_mbr_without_evidence_keeps_the_search_order():
    # One clip: every n-gram shared by two candidates is in every entry's references, so its idf is 0.
    assert rerank.mbr_scores([["a cat meows", "a dog barks", "a dog barks"]]).tolist() == [[0.0, 0.0, 0.0]]
    assert rerank.mbr_scores([["", ""], ["", ""]]).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert rerank.mbr_scores([["only one"]]).shape == (1, 1)


def test_likelihood_undoes_the_length_penalty():
    # No penalty (lp 0): the score is sum log p; per token -2/2 = -1.0 and -3/6 = -0.5, so the longer wins.
    plain = DecodeSettings(eos_id=0, length_penalty=0.0)
    values = rerank.likelihood(np.array([[-2.0, -3.0]]), np.array([[2, 6]]), plain)
    np.testing.assert_allclose(values, [[-1.0, -0.5]])
    assert rerank.ranking(values).tolist() == [[1, 0]]
    # GNMT, lp 1: penalty (5 + g) / 6 is 1 for g = 1 and 2 for g = 7, so equal scores -1 are sums -1 and -2,
    # i.e. -1 and -2/7 per token.
    gnmt = DecodeSettings(eos_id=0, length_penalty=1.0, length_penalty_form="gnmt")
    values = rerank.likelihood(np.array([[-1.0, -1.0]]), np.array([[1, 7]]), gnmt)
    np.testing.assert_allclose(values, [[-1.0, -2 / 7]])
    # HF form with lp 1: the search's score already is the per-token mean.
    hf = DecodeSettings(eos_id=0)
    np.testing.assert_allclose(rerank.likelihood(np.array([[-0.7]]), np.array([[4]]), hf), [[-0.7]])


def test_generated_lengths_count_the_first_eot():
    eot = 9
    sequences = np.array(
        [
            [[1, 2, 5, 9, 9, 9], [1, 2, 9, 9, 9, 9]],  # prompt of 2: 2 tokens + eot; only eot
            [[1, 5, 6, 7, 8, 4], [1, 9, 9, 9, 9, 9]],  # prompt of 1: no eot before max_length; eot at once
        ]
    )
    assert rerank.generated_lengths(sequences, np.array([2, 1]), eot).tolist() == [[2, 1], [5, 1]]


def test_rerank_scores_dispatch():
    settings = DecodeSettings(eos_id=0, length_penalty=0.0)
    scores, lengths = np.array([[-2.0, -3.0]]), np.array([[2, 6]])
    none = rerank.rerank_scores(rerank.KEEP_ORDER, [["a", "b"]], scores, lengths, settings)
    assert none.tolist() == [[-2.0, -3.0]]
    plugin = rerank.Reranker.from_name(f"{__name__}:prefer_longest")
    values = rerank.rerank_scores(plugin, [["a", "b"]], scores, lengths, settings, np.array([[1.0, 2.0]]))
    assert values.tolist() == [[1.0, 2.0]]


CALLS: list[tuple] = []


def prefer_longest(mel: np.ndarray, candidates: list[list[str]], scores: np.ndarray) -> np.ndarray:
    """A plug-in scorer: the longest caption wins (records what it was called with)."""
    CALLS.append((mel.shape, [len(c) for c in candidates], scores.shape))
    return np.array([[len(c) for c in clip] for clip in candidates], np.float64)


def test_plugin_scores_a_batch():
    CALLS.clear()
    reranker = rerank.Reranker.from_name(f"{__name__}:prefer_longest")
    values = reranker.score_batch(
        np.zeros((2, 4, 6), np.float32), [["a", "abc"], ["xy", "x"]], np.zeros((2, 2))
    )
    assert values.tolist() == [[1.0, 3.0], [2.0, 1.0]]
    assert CALLS == [((2, 4, 6), [2, 2], (2, 2))]
    bad = rerank.Reranker(f"{__name__}:prefer_longest", lambda mel, c, s: np.full((2, 3), math.nan))
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\).*\(2, 2\)"):
        bad.score_batch(np.zeros((2, 4, 6)), [["a", "b"], ["c", "d"]], np.zeros((2, 2)))


@pytest.mark.parametrize(
    "name, message",
    [
        ("best", "neither one of none, likelihood, mbr nor a plug-in"),
        ("no_such_module_xyz:score", "module 'no_such_module_xyz' does not import"),
        ("math:no_such_function", "module 'math' has no function 'no_such_function'"),
        (":score", "nor a plug-in 'package.module:function'"),
    ],
)
def test_bad_reranker_names(name, message):
    with pytest.raises(ValueError, match=message):
        rerank.Reranker.from_name(name)
