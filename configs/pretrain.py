"""Pretraining on AudioSet-small keywords + AudioCaps (+ Clotho), each with its own prefix.

    python -m audiocap_jax.train --config=configs/pretrain.py:variant=large-v2,mix=12:3:1 --workdir=DIR \
        --config.data.data_dir=TFDS_DIR

`mix` is AudioSet:AudioCaps:Clotho as in the original's file names (12:3:1, 3:1:0, 1:1:0). The original used
lr 2e-5, warmup 1000, batch 32 and picked checkpoints by hand (max_steps 1e6 made the decay nearly flat);
validation here covers every dataset of the mix with its own prefix.
"""

from configs import base
from configs.common import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="tiny", mix="12:3:1", runlocal=False)
    c = base.get_config(f"variant={arg.variant}" + (",runlocal" if arg.runlocal else ""))
    audioset, audiocaps, clotho = (float(w) for w in arg.mix.split(":"))
    c.data.mixture.audioset = audioset
    c.data.mixture.audiocaps = audiocaps
    c.data.mixture.clotho = clotho
    c.optim.warmup_steps = 1000 if not arg.runlocal else c.optim.warmup_steps
    c.total_steps = 1_000_000 if not arg.runlocal else c.total_steps
    c.eval.datasets = {"audiocaps": "valid", "audioset": "valid"} | (
        {"clotho": "validation"} if clotho else {}
    )
    c.eval.max_clips = 200 if not arg.runlocal else c.eval.max_clips
    c.eval.best_metric = "clotho/spider" if clotho else "audiocaps/spider"
    return c
