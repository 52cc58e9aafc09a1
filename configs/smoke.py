"""The smallest end-to-end run: a 2-layer Whisper from scratch, a few steps, validation, checkpoints.

For CI and a quick "does my install work" on any TFDS Clotho build (the tests use a tiny one):

    python -m audiocap_jax.train --config=configs/smoke.py --workdir=/tmp/smoke --config.data.data_dir=TFDS_DIR

Runs in about a minute on a 2-core CPU. Learns nothing useful in 10 steps; see configs/demo.py for a run
that does.
"""

from configs import base, common


def get_config(arg=None):
    c = base.get_config("runlocal")
    c.model.init = "scratch"
    c.model.arch_overrides = dict(common.TINY_ARCH, max_target_positions=64)
    c.data.max_length = 32
    c.data.num_threads = 2
    c.batch_size = 8  # a multiple of the data-parallel devices (8 fake CPU devices in the tests)
    c.total_steps = 10
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.eval.every_steps = 5
    c.eval.batch_size = 8
    c.eval.max_length = 32
    c.eval.num_beams = 2
    c.checkpoint.every_steps = 2
    c.checkpoint.export_hf = True
    c.log.every_steps = 1
    return c
