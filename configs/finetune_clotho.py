"""Fine-tune on Clotho alone (the original's finetune_{tiny,small,large}: lr 2e-5, warmup 500, batch 32).

    python -m audiocap_jax.train --config=configs/finetune_clotho.py:variant=small --workdir=DIR \
        --config.data.data_dir=TFDS_DIR [--config.model.init=ours --config.model.init_from=PRETRAIN_DIR]

Expected (the original, beam 5 on Clotho evaluation): tiny SPIDEr 0.224, small 0.269, large-v2 0.279,
after AudioSet+AudioCaps pretraining (configs/pretrain.py).
"""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.optim.lr = 2e-5
    c.total_steps = 100_000
    return c
