"""The original's "clever freeze" fine-tuning (finetune_large_clever-freeze_*): only every bias, both encoder
input convolutions and the encoder's fc1 layers train, lr 4e-6, 30k steps.

    python -m audiocap_jax.train --config=configs/finetune_clever_freeze.py:variant=large-v2 --workdir=DIR \
        --config.data.data_dir=TFDS_DIR [--config.model.init=ours --config.model.init_from=PRETRAIN_DIR]

The start-of-training log line gives how many parameters that is: 215,925,760 of large-v2's 1,541,516,800
(14.01%). The original did not report this run's score.
"""

from configs import base

CLEVER_FREEZE = (
    r"\.bias$",  # every bias, layer norms' included
    r"^encoder\.conv[12]\.",  # both input convolutions, kernel and bias
    r"^encoder\.layers\.fc1\.",  # the encoder's first MLP layers
)


def get_config(arg=None):
    c = base.get_config(arg or "variant=large-v2")
    c.optim.lr = 4e-6
    c.optim.train_only = CLEVER_FREEZE
    c.total_steps = 30_000
    return c
