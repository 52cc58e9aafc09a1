"""LoRA fine-tuning on Clotho: the original's finetune_large_augment_lora-* runs (peft, lr 4e-6, 30k steps).

    python -m audiocap_jax.train --config=configs/finetune_lora.py:variant=large-v2,lora=q-v-fc1 \
        --workdir=DIR --config.data.data_dir=TFDS_DIR [--config.model.init=ours --config.model.init_from=PRE]

`lora` picks one of the original's adapter sets (its config names): rank 64, alpha 32, dropout 0.05 (on the
adapters' input, in training only), bias "all" on
  q-v-fc1                 q_proj, v_proj, fc1 (every attention block's, encoder and decoder)
  q-v-fc1-k-fc2           + k_proj, fc2
  q-v-fc1-k-fc2-out       + out_proj
  q-v-fc1-k-fc2-out_r256  the same six, rank 256, alpha 128
Only the adapters and the biases train; the start-of-training log line gives their count. The export
(hf_export) merges the adapters into plain Whisper weights. The original never reported a LoRA run's score
(its two `lora_config` runs were, by a misplaced key, full fine-tunes).
"""

from configs import base
from configs.common import parse_arg

_QV_FC1 = ("q_proj", "v_proj", "fc1")
_SIX = (*_QV_FC1, "k_proj", "fc2", "out_proj")
# name -> (rank, alpha, target regexes)
LORA_VARIANTS = {
    "q-v-fc1": (64, 32.0, _QV_FC1),
    "q-v-fc1-k-fc2": (64, 32.0, (*_QV_FC1, "k_proj", "fc2")),
    "q-v-fc1-k-fc2-out": (64, 32.0, _SIX),
    "q-v-fc1-k-fc2-out_r256": (256, 128.0, _SIX),
}


def get_config(arg=None):
    arg = parse_arg(arg, variant="large-v2", lora="q-v-fc1", runlocal=False)
    if arg.lora not in LORA_VARIANTS:
        raise ValueError(f"Unknown lora={arg.lora!r}; choose one of {sorted(LORA_VARIANTS)}.")
    c = base.get_config(f"variant={arg.variant}" + (",runlocal" if arg.runlocal else ""))
    rank, alpha, targets = LORA_VARIANTS[arg.lora]
    c.model.lora.rank = rank
    c.model.lora.alpha = alpha
    c.model.lora.targets = targets
    c.model.lora.dropout = 0.05
    c.model.lora.bias = "all"
    c.optim.lr = 4e-6
    c.total_steps = 30_000 if not arg.runlocal else c.total_steps
    # The original augmented waveforms (p_total 1.0, 0.3 each); these are the feature-domain counterparts.
    c.data.augment.shift_probability = 0.3
    c.data.augment.gain_probability = 0.3
    return c
