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


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.style = "clotho > caption"  # the forced dataset/style prefix; "none" = only Whisper's special tokens
    # Search (audiocap_jax/search.py), one jitted loop for every strategy.
    c.strategy = "beam"  # "beam" (num_beams; greedy = 1) or "sample" (num_samples draws per clip)
    c.num_beams = 5  # beam: beams per clip; 1 = greedy
    c.num_beam_groups = 1  # beam: diverse (group) beam search when > 1; must divide num_beams
    c.diversity_penalty = 0.0  # beam with groups: HF's Hamming penalty on tokens earlier groups chose
    c.temperature = 1.0  # sample: divides the logits (< 1 sharpens)
    c.top_k = 0  # sample: keep the k most likely tokens; 0 = off, 1 = greedy
    c.top_p = 1.0  # sample: nucleus, keep the smallest set with this much probability; 1 = off
    c.num_samples = 1  # sample: candidates drawn per clip
    c.seed = 0  # sample: same seed, same captions (on any mesh)
    c.max_length = 80  # counts the forced prompt tokens, as the original's generate(max_length=80)
    c.length_penalty = 1.0  # finished score = sum log p / penalty(generated tokens)
    c.length_penalty_form = "hf"  # "hf": score / len**lp; "gnmt": ((5 + len) / 6)**lp
    c.min_length = 0  # counts the prompt: no eot before this many tokens
    c.no_repeat_ngram_size = 0  # every strategy: no n-gram of this size twice in a caption; 0 = off
    c.repetition_penalty = 1.0  # every strategy: HF's penalty on tokens already in the sequence; 1 = off
    # Candidates per clip in the N-best CSV (<out>_nbest.csv), best first; at most num_beams / num_samples.
    c.num_return_sequences = 1
    # How the caption is chosen among the search's candidates (audiocap_jax/rerank.py): "none" (search score),
    # "likelihood" (log p per token), "mbr" (highest mean CIDEr-D against the clip's other candidates) or a
    # plug-in "package.module:function" scoring (mel, candidates, scores). Not "none": all beams/samples compete.
    c.rerank = "none"
    # The original applied the checkpoint's generation_config suppress lists (HF checkpoints only).
    c.use_checkpoint_suppress_tokens = True
    c.batch_size = 8
    c.dtype = "auto"  # compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU (model/backend.py)
    # clips longer than the model's window (num_frames / 100 s: 30 s for released Whisper, 10 s for the demo's):
    # "truncate" (the first window) or "windows" (caption every window)
    c.long_audio = "truncate"
    c.step = "best"  # for a training workdir: "best", "latest" or a step number
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return c
