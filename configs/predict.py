"""Decoding settings for `python -m audiocap_jax.predict` and `python -m audiocap_jax.evaluate --checkpoint`.

Defaults are the submitted systems' (predict_clotho_beam_classic5_config.yaml): 5 beams, max_length 80
counting the 11 forced tokens, `clotho > caption` style; bfloat16 on GPU/TPU, float32 on CPU.

    python -m audiocap_jax.predict --checkpoint=RUN_OR_HF_DIR --data=clips/ --output-file=out.csv \
        --config-file=configs/predict.py --config-file.num_beams=10 --config-file.style="audioset > keywords"

    # the DCASE 2023 winner's candidates: 16 nucleus samples, the consensus (MBR) caption chosen
    ... --config-file.strategy=sample --config-file.num_samples=16 --config-file.temperature=0.5 \
        --config-file.top_p=0.95 --config-file.no_repeat_ngram_size=3 --config-file.rerank=mbr
"""

import ml_collections

from audiocap_jax.decoding.search_settings import decoding_keys


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.style = "clotho > caption"  # the forced dataset/style prefix; "none" = only Whisper's special tokens
    # Search (audiocap_jax/decoding/search.py), one jitted loop for every strategy, and the choice among its candidates
    # (audiocap_jax/decoding/rerank.py): every decoding key, its default and meaning in audiocap_jax/decoding/search_settings.py.
    c.update(decoding_keys())
    c.batch_size = 8
    c.dtype = "auto"  # compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU (model/backend.py)
    # clips longer than the model's window (num_frames / 100 s: 30 s for released Whisper, 10 s for the demo's):
    # "truncate" (the first window) or "windows" (caption every window)
    c.long_audio = "truncate"
    c.step = "best"  # for a training workdir: "best", "latest" or a step number
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return c
