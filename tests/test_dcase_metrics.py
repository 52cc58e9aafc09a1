"""Tests for the DCASE metrics: aac-metrics 0.5.5 equality, presets, SPIDEr-max, bootstrap, fallbacks, Java checks.

The AAC_* literals are what aac-metrics 0.5.5 computes on audiocap_jax.testing.metric_models' inputs and tiny
stand-in models; `scripts/crosscheck_aac_metrics.sh` reproduces them (largest difference 2.2e-16).
JVM budget: three `score` runs (PTB + METEOR each), module-scoped where shared.
"""

import csv
import subprocess
import sys

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from audiocap_jax.metrics import caption_files, coco, dcase, java, scorecard, scoring, spice_jar
from audiocap_jax.testing import metric_models
from audiocap_jax.testing.metric_models import CROSSCHECK_PREDICTIONS, CROSSCHECK_REFERENCES, CROSSCHECK_SPICE

pytest.importorskip("sentence_transformers")

# aac-metrics 0.5.5 (scripts/crosscheck_aac_metrics.sh), clips in sorted file-name order.
AAC_CORPUS = {
    "sbert_sim": 0.9223088522752126,
    "fer": 0.3333333333333333,
    "fense": 0.6374604811271031,
    "vocab": 23.0,
    "cider_d": 2.2106478858856295,
    "spider_fl": 1.0148586973859455,
}
AAC_PER_CLIP = {
    "sbert_sim": [
        0.9584331512451172,
        0.9632710814476013,
        0.9357180595397949,
        0.9617387652397156,
        0.8378322720527649,
        0.8768597841262817,
    ],
    "fer": [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
    "fense": [
        0.9584331512451172,
        0.09632710814476012,
        0.09357180595397947,
        0.9617387652397156,
        0.8378322720527649,
        0.8768597841262817,
    ],
    "cider_d": [
        3.0754810545652522,
        1.1083271445401603,
        1.014542796218099,
        5.871329753277818,
        1.566283979215644,
        0.6279225874968057,
    ],
    "spider_fl": [
        1.6627405272826261,
        0.057916357227008004,
        0.06072713981090494,
        3.085664876638909,
        0.858141989607822,
        0.36396129374840286,
    ],
}
NAMES = sorted(CROSSCHECK_REFERENCES)
CLASSIC_WITHOUT_SPICE = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d")
NO_OVERLAP = "xylophone"  # shares no n-gram with any reference: CIDEr-D exactly 0


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return metric_models.make_tiny_metric_models(tmp_path_factory.mktemp("metric_models"))


def test_dcase_metrics_equal_aac_metrics(model_root):
    ours = metric_models.crosscheck_ours(model_root)
    for key, value in AAC_CORPUS.items():
        assert ours["corpus"][key] == pytest.approx(value, abs=1e-6), key
    for key, values in AAC_PER_CLIP.items():
        np.testing.assert_allclose(ours["per_clip"][key], values, atol=1e-6, rtol=0, err_msg=key)


@pytest.fixture(scope="module")
def dcase2023_with_spice(model_root):
    """dcase2023 with N-best lists and a bootstrap; SPICE (not runnable offline) replaced by fixed values:
    CROSSCHECK_SPICE for the predictions, 1.0 for the NO_OVERLAP candidates."""
    spice_of = {}
    tokenized = java.ptb_tokenize([CROSSCHECK_PREDICTIONS[n] for n in NAMES])
    spice_of.update(zip(tokenized, CROSSCHECK_SPICE, strict=True))
    spice_of[NO_OVERLAP] = 1.0

    def fake_run_spice(candidates, references, *, spice_dir=None):
        values = [spice_of[c] for c in candidates]
        return float(np.mean(values)), values

    candidates = {n: [CROSSCHECK_PREDICTIONS[n], NO_OVERLAP] for n in NAMES}
    candidates["birds.wav"] = [CROSSCHECK_PREDICTIONS["birds.wav"]]  # lists may differ in length
    candidates["wind.wav"] = [
        CROSSCHECK_PREDICTIONS["wind.wav"],
        NO_OVERLAP,
        CROSSCHECK_PREDICTIONS["wind.wav"],
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            spice_jar, "spice_status", lambda spice_dir=None: spice_jar.SpiceStatus(True, None, model_root)
        )
        patch.setattr(spice_jar, "run_spice", fake_run_spice)
        return scoring.score(
            CROSSCHECK_PREDICTIONS,
            CROSSCHECK_REFERENCES,
            scoring.ScoreOptions(preset="dcase2023", model_dir=model_root, bootstrap=200, seed=3),
            candidates=candidates,
        )


def test_dcase2023_spider_fl_equals_aac_metrics(dcase2023_with_spice):
    scores = dcase2023_with_spice
    assert list(scores.corpus)[:3] == ["spider_fl", "fer", "bleu_1"]  # the ranking metric first
    assert scores.corpus["spider_fl"] == pytest.approx(AAC_CORPUS["spider_fl"], abs=1e-6)
    assert scores.corpus["fer"] == pytest.approx(AAC_CORPUS["fer"], abs=1e-6)
    assert [scores.per_clip[n]["cider_d"] for n in NAMES] == pytest.approx(AAC_PER_CLIP["cider_d"], abs=1e-12)
    assert "fense" not in scores.corpus and "vocab" not in scores.corpus


def test_spider_max_equals_hand_computation(dcase2023_with_spice):
    spider = [(c + s) / 2 for c, s in zip(AAC_PER_CLIP["cider_d"], CROSSCHECK_SPICE, strict=True)]
    alternative = (0.0 + 1.0) / 2  # NO_OVERLAP: CIDEr-D 0, SPICE 1.0
    # birds.wav (index 0) has no alternative; the others take the better of prediction and alternative.
    expected = [spider[0]] + [max(s, alternative) for s in spider[1:]]
    assert expected[5] == alternative and expected[1] == spider[1]  # wind.wav switches, car.wav does not
    got = [dcase2023_with_spice.per_clip[n]["spider_max"] for n in NAMES]
    assert got == pytest.approx(expected, abs=1e-12)
    assert dcase2023_with_spice.corpus["spider_max"] == pytest.approx(sum(expected) / 6, abs=1e-12)


def test_bootstrap_intervals_are_seeded_and_contain_the_score(dcase2023_with_spice):
    scores = dcase2023_with_spice
    assert set(scores.intervals) == {k for k, v in scores.corpus.items() if v is not None}
    for key, (low, high) in scores.intervals.items():
        assert low <= scores.corpus[key] <= high, key
    # Resampling is numpy's default_rng(seed): the same seed gives these numbers on every machine.
    resamples = np.random.default_rng(3).integers(0, 6, size=(200, 6))
    cider_means = np.array(AAC_PER_CLIP["cider_d"])[resamples].mean(axis=1)
    assert scores.intervals["cider_d"] == pytest.approx(tuple(np.percentile(cider_means, [2.5, 97.5])))
    assert scores.intervals["cider_d"] == pytest.approx((1.044787800005399, 3.8043556307886517), abs=1e-12)
    table = scorecard.format_table(scores)
    assert "| metric (6 clips) | score | 95% interval |" in table
    assert "| CIDEr-D | 2.2106 | [1.0448, 3.8044] |" in table


def test_missing_models_change_no_other_metric(tmp_path, dcase2023_with_spice):
    options = scoring.ScoreOptions(preset="dcase2024", spice=False, model_dir=tmp_path)
    scores = scoring.score(CROSSCHECK_PREDICTIONS, CROSSCHECK_REFERENCES, options)
    fix = f"fix: {dcase.DOWNLOAD_COMMAND} --model_dir={tmp_path}"
    for key in ("fense", "sbert_sim", "fer", "spider_fl"):
        assert scores.corpus[key] is None
        assert scores.unavailable[key].endswith(fix), scores.unavailable[key]
    assert list(scores.corpus)[0] == "fense"
    assert scores.corpus["vocab"] == AAC_CORPUS["vocab"]
    for key in CLASSIC_WITHOUT_SPICE:  # identical to the dcase2023 run with models and SPICE
        assert scores.corpus[key] == dcase2023_with_spice.corpus[key], key


def test_bleu_statistics_reproduce_pycocoevalcap():
    gts = {n: [r.lower() for r in CROSSCHECK_REFERENCES[n]] for n in NAMES}
    res = {n: [CROSSCHECK_PREDICTIONS[n].lower()] for n in NAMES}
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    statistics = coco.bleu_statistics(gts, res)
    assert statistics.shape == (6, 10)
    np.testing.assert_allclose(coco.corpus_bleu(statistics), expected, rtol=1e-12)
    # Resamples are stacked on a leading axis: [N, B, 10] --> [N, 4].
    assert coco.corpus_bleu(statistics[np.zeros((3, 6), dtype=int)]).shape == (3, 4)


def test_fluency_penalty():
    errors = dcase.fluency_errors(np.array([0.95, 0.9, 0.2]))
    assert errors.tolist() == [1.0, 0.0, 0.0]  # strictly above 0.9, as aac-metrics
    assert dcase.fluency_penalized([0.5, 0.5, 0.8], errors).tolist() == pytest.approx([0.05, 0.5, 0.8])


def test_select_best_metric_falls_back_to_cider_d_once(caplog):
    results = {"clotho/cider_d": 0.41, "clotho/fense": 0.5}
    assert scoring.select_best_metric(results, "clotho/fense") == ("clotho/fense", 0.5)
    with caplog.at_level("WARNING"):
        assert scoring.select_best_metric(results, "clotho/spider_fl") == ("clotho/cider_d", 0.41)
        assert scoring.select_best_metric(results, "clotho/spider_fl") == ("clotho/cider_d", 0.41)
    assert sum("clotho/spider_fl" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="audiocaps/cider_d"):
        scoring.select_best_metric(results, "audiocaps/spider")


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="coco, dcase2023, dcase2024"):
        scoring.get_preset("dcase2022")


def test_unavailable_reason_ends_with_the_download_command(tmp_path, monkeypatch):
    reason = dcase.unavailable_reason(tmp_path)
    assert str(tmp_path / dcase.ECHECKER_FILE) in reason
    assert reason.endswith(f"fix: python -m audiocap_jax.metrics.dcase download --model_dir={tmp_path}")
    monkeypatch.setenv(dcase.MODEL_DIR_ENV, str(tmp_path / "env"))
    assert dcase.default_model_dir() == tmp_path / "env"


def test_check_sha256(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"abc")
    dcase.check_sha256(path, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    with pytest.raises(ValueError, match="differs from the expected 0000; delete it and run"):
        dcase.check_sha256(path, "0000")


def test_java_problems_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(java, "java_major", lambda: None)
    assert java.java_problem("METEOR") == (
        "METEOR needs Java >= 8, but no working 'java' is on PATH; fix: apt-get install -y openjdk-17-jdk-headless"
    )
    monkeypatch.setattr(java, "java_major", lambda: 7)
    assert "is Java 7; fix: apt-get install" in java.java_problem("PTB tokenizer")
    with pytest.raises(FileNotFoundError, match="PTB tokenizer needs Java >= 8"):
        java.ptb_tokenize(["a dog barks"])


def test_read_candidates_csv_keeps_every_row_in_order(tmp_path):
    path = tmp_path / "nbest.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["file_name", "caption_predicted"],
                ["a.wav", "best"],
                ["b.wav", "only"],
                ["a.wav", "second, worse"],
            ]
        )
    assert caption_files.read_candidates_csv(path) == {"a.wav": ["best", "second, worse"], "b.wav": ["only"]}


def test_evaluate_help_documents_presets():
    out = subprocess.run(
        [sys.executable, "-m", "audiocap_jax.evaluate", "--help"], capture_output=True, text=True, check=False
    ).stdout
    assert "--metrics: <coco|dcase2023|dcase2024>" in out
    assert "dcase2024: FENSE (DCASE 2024 task 6" in " ".join(out.split())
    assert "--bootstrap" in out


def test_table_has_no_interval_for_vocab():
    scores = scorecard.CaptionScores({"fense": 0.5, "vocab": 12.0}, {}, intervals={"fense": (0.4, 0.6)})
    assert scorecard.format_table(scores).splitlines()[2:] == [
        "| FENSE | 0.5000 | [0.4000, 0.6000] |",
        "| Vocab | 12.0000 |  |",
    ]
