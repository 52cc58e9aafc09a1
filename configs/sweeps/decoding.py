"""Decoding settings compared on one split: the original's hyperparameter search table, one row per setting.

    python -m audiocap_jax.evaluate --checkpoint=RUN --dataset=clotho --split=validation \
        --sweep=configs/sweeps/decoding.py [--config-file.batch_size=32]

`get_config()` returns setting name -> overrides of configs/predict.py (rows come in name order). Only
decoding keys may differ (`search_settings.DECODING_KEYS`): the model and the split are loaded once and each setting
is compiled once.
Writes `sweep.csv` (every metric of `--metrics` per setting, plus seconds to caption, compilation included)
and each setting's `<dataset>_<name>_predictions.csv` / `_nbest.csv` under --output_dir, and prints the table.
The original's Clotho validation SPIDEr: greedy 0.2688, beam 5 0.2791, beam 10 0.2939, diverse beams up to
0.2878.
"""

import ml_collections


def _setting(**overrides):
    return ml_collections.ConfigDict(overrides)


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.beam1 = _setting(num_beams=1)  # greedy, what training validates with
    c.beam5 = _setting(num_beams=5)  # the submitted systems' setting
    c.beam10 = _setting(num_beams=10)
    # The DCASE 2023 winner's candidates (it drew 50): nucleus samples, the consensus caption chosen by MBR.
    c.sample16_mbr = _setting(
        strategy="sample",
        num_samples=16,
        temperature=0.5,
        top_p=0.95,
        no_repeat_ngram_size=3,
        rerank="mbr",
    )
    # Diverse beam search, 10 beams in 5 groups of 2, HF's Hamming penalty between groups.
    c.diverse10x5 = _setting(num_beams=10, num_beam_groups=5, diversity_penalty=1.0)
    return c
