"""The logits processors and warpers against transformers' own classes, and the exact blocked top-k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from audiocap_jax.decoding import processors
from audiocap_jax.decoding.search_settings import DecodeSettings


@pytest.mark.parametrize("k", [1, 8, 10])
def test_blocked_top_k_equals_lax_top_k_ties_included(k):
    rng = np.random.default_rng(k)
    columns = 5 * 51865  # a 5-beam step's candidates: not a multiple of the block
    continuous = rng.standard_normal((4, columns)).astype(np.float32)
    tied = np.round(2 * rng.standard_normal((4, columns))).astype(np.float32)  # thousands of equal values
    tied[1, : columns // 2] = -np.inf  # suppressed tokens
    for x in (continuous, tied):
        values, idx = jax.jit(processors.blocked_top_k, static_argnums=1)(jnp.asarray(x), k)
        want_values, want_idx = jax.lax.top_k(jnp.asarray(x), k)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_bans_equal_transformers_no_repeat_ngram(n):
    rng = np.random.default_rng(n)
    seqs = rng.integers(0, 3, size=(24, 16)).astype(np.int32)  # 3 of 6 tokens: many repeated n-grams
    lengths = np.arange(24, dtype=np.int32) % 17  # 0..16 tokens so far; the rest of a row is stale
    ours = np.asarray(processors.ngram_bans(jnp.asarray(seqs), jnp.asarray(lengths), n, 6))
    processor = transformers.NoRepeatNGramLogitsProcessor(n)
    for i, (row, length) in enumerate(zip(seqs, lengths, strict=True)):
        hf = processor(torch.tensor(row[None, :length], dtype=torch.long), torch.zeros(1, 6))
        np.testing.assert_array_equal(ours[i], np.isinf(hf[0].numpy()), err_msg=f"row {i}")
    assert ours.any(axis=1).sum() >= 4  # not a comparison of empty sets


def _warper_inputs():
    rng = np.random.default_rng(0)
    continuous = 2.0 * rng.standard_normal((16, 50)).astype(np.float32)
    tied = np.round(continuous).astype(np.float32)  # many equal scores, at the cut-offs too
    masked = continuous.copy()
    masked[:, ::3] = -np.inf  # suppressed tokens
    equal = np.full((1, 50), -np.inf, np.float32)
    equal[0, 10:17] = 0.0  # 7 equal tokens: no top-p cut falls exactly between them
    return np.concatenate([continuous, tied, masked, equal])


def _warp(scores: jax.Array, settings: DecodeSettings) -> jax.Array:
    """The scores `draw_tokens` samples from, for comparing with HF's warpers: temperature, then the top-k and
    top-p filters over `processors._over_candidates` as the draw uses them; dropped tokens -inf. [N, V] --> [N, V]"""
    scores = processors.temperature_warp(scores, settings.temperature)
    if not processors._filters(settings):
        return scores
    rows = jnp.arange(scores.shape[0])[:, None]

    def scatter(values: jax.Array, ids: jax.Array) -> jax.Array:
        return jnp.full_like(scores, -jnp.inf).at[rows, ids].set(values)

    return processors._over_candidates(scores, settings, scatter)


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [
        (0.5, 0, 1.0),
        (1.0, 1, 1.0),
        (1.0, 5, 1.0),
        (1.0, 60, 1.0),
        (1.0, 0, 0.3),
        (1.0, 0, 0.95),
        (0.7, 10, 0.9),
        (2.0, 3, 0.5),
    ],
)
def test_sampling_warpers_keep_transformers_token_sets(temperature, top_k, top_p):
    scores = _warper_inputs()
    settings = DecodeSettings(eos_id=0, strategy="sample", temperature=temperature, top_k=top_k, top_p=top_p)
    ours = np.asarray(jax.jit(_warp, static_argnums=1)(jnp.asarray(scores), settings))
    warpers = transformers.LogitsProcessorList()  # HF's order (_get_logits_processor)
    if temperature != 1.0:
        warpers.append(transformers.TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(transformers.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(transformers.TopPLogitsWarper(top_p))
    hf = warpers(None, torch.tensor(scores)).numpy()
    untied = np.r_[0:16, 32:48]
    np.testing.assert_array_equal(np.isinf(ours[untied]), np.isinf(hf[untied]))
    np.testing.assert_allclose(
        ours[untied][~np.isinf(ours[untied])], hf[untied][~np.isinf(hf[untied])], rtol=1e-6
    )
    # Where equal scores straddle top-p's cut, torch's (unstable) sort picks which of them go in an
    # unspecified order; ours keeps the lower ids. The same number of tokens, at the same scores, stay.
    for mine, theirs in zip(ours[16:], hf[16:], strict=True):
        np.testing.assert_allclose(
            np.sort(mine[~np.isinf(mine)]), np.sort(theirs[~np.isinf(theirs)]), rtol=1e-6
        )
    kept_of_equal = np.flatnonzero(~np.isinf(ours[-1]))  # the row of 7 equal tokens
    assert kept_of_equal.tolist() == list(range(10, 10 + len(kept_of_equal)))
    kept, finite = (~np.isinf(ours)).sum(axis=1), (~np.isinf(scores)).sum(axis=1)
    assert kept.min() >= 1
    assert (kept < finite).any() == (0 < top_k < 50 or top_p < 1.0)  # a filter that filters, or none


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (20, 1.0), (40, 0.95)])
def test_sampling_over_candidates_equals_sampling_over_the_vocabulary(top_k, top_p):
    """Peaked rows keep few tokens, so a step looks at each row's best `_SAMPLE_CANDIDATES` only; one flat row
    sends the whole batch to the sorted vocabulary. The peaked rows' filtered sets and draws are the same."""
    rng = np.random.default_rng(1)
    peaked = 6.0 * rng.standard_normal((8, 300)).astype(np.float32)
    flat = np.zeros((1, 300), np.float32)  # top-k keeps all 300 (ties), top-p 270
    settings = DecodeSettings(eos_id=0, strategy="sample", top_k=top_k, top_p=top_p)
    fast, whole = jnp.asarray(peaked), jnp.asarray(np.concatenate([peaked, flat]))
    assert processors._filtered_candidates(fast, settings, processors._SAMPLE_CANDIDATES).complete.all()
    assert not processors._filtered_candidates(whole, settings, processors._SAMPLE_CANDIDATES).complete[-1]
    warp = jax.jit(_warp, static_argnums=1)
    np.testing.assert_array_equal(warp(fast, settings), warp(whole, settings)[:8])
    hf = transformers.LogitsProcessorList(
        ([transformers.TopKLogitsWarper(top_k)] if top_k else [])
        + ([transformers.TopPLogitsWarper(top_p)] if top_p < 1 else [])
    )(None, torch.tensor(peaked))
    np.testing.assert_array_equal(np.isinf(warp(fast, settings)), np.isinf(hf.numpy()))
    draw = jax.jit(processors.draw_tokens, static_argnums=2)
    for seed in range(3):
        keys = jax.random.split(jax.random.key(seed), 9)  # one per row: a row's draw ignores the others
        np.testing.assert_array_equal(draw(fast, keys[:8], settings), draw(whole, keys, settings)[:8])
