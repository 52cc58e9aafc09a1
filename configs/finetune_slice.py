"""The "slice" fine-tuning: only the MLP fc1 layers train, lr 4e-6 (finetune_*_small-lr_*_slice).

python -m audiocap_jax.train --config=configs/finetune_slice.py:variant=large-v2 --workdir=DIR ...
"""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.optim.lr = 4e-6
    c.optim.train_only = ("fc1",)
    c.total_steps = 10_000
    return c
