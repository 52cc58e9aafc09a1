"""Decoding settings for `python -m audiocap_jax.predict` and `python -m audiocap_jax.evaluate --checkpoint`.

Defaults are the submitted systems' (predict_clotho_beam_classic5_config.yaml): 5 beams, max_length 80
counting the 11 forced tokens, `clotho > caption` style; bfloat16 on GPU/TPU, float32 on CPU.

    python -m audiocap_jax.predict --checkpoint=RUN_OR_HF_DIR --data=clips/ --output-file=out.csv \
        --config-file=configs/predict.py --config-file.num_beams=10 --config-file.style="audioset > keywords"
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.style = "clotho > caption"  # the forced dataset/style prefix
    c.num_beams = 5
    c.max_length = 80  # counts the forced prompt tokens, as the original's generate(max_length=80)
    c.length_penalty = 1.0
    c.length_penalty_form = "hf"  # "hf": score / len**lp; "gnmt": ((5 + len) / 6)**lp
    c.min_length = 0
    c.num_return_sequences = 1
    # The original applied the checkpoint's generation_config suppress lists (HF checkpoints only).
    c.use_checkpoint_suppress_tokens = True
    c.batch_size = 8
    c.dtype = "auto"  # compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU (model/backend.py)
    c.loader_workers = 4  # threads decoding audio files
    c.long_audio = "truncate"  # clips over 30 s: "truncate" (first 30 s) or "windows" (caption every 30 s)
    c.step = "best"  # for a training workdir: "best", "latest" or a step number
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return c
