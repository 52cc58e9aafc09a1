"""bfloat16 compute (what `dtype="auto"` picks on GPU/TPU) stays close to float32: logits of a HF checkpoint,
and 30 training steps."""

import jax
import numpy as np
from flax import nnx
from test_train_step import TINY, _batch  # the tiny model and 8-clip batch the train-step tests use

from audiocap_jax import text
from audiocap_jax.model import sharding
from audiocap_jax.model.hf import load_hf_checkpoint
from audiocap_jax.model.whisper import create_model
from audiocap_jax.rundir import train_step
from audiocap_jax.testing.models import TINY_ARCH, save_tiny_hf_whisper


def test_bfloat16_logits_within_bfloat16_tolerance(tmp_path):
    """Parameters stay float32 (`param_dtype`); matmuls run in bfloat16 (8 significant bits), layer-norm
    statistics, softmax and logits in float32."""
    save_tiny_hf_whisper(tmp_path, seed=1)
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, 80, 2 * TINY_ARCH["max_source_positions"])).astype(np.float32)
    ids = rng.integers(0, 51865, (2, 9)).astype(np.int32)
    logits = {}
    for dtype in ("float32", "bfloat16"):
        model, config = load_hf_checkpoint(tmp_path, dtype=dtype)
        assert config.dtype == dtype
        assert model.decoder.embed_tokens.embedding[...].dtype == np.float32  # master weights
        graphdef, state = nnx.split(model)
        out = jax.jit(lambda s, a, b, g=graphdef: nnx.merge(g, s)(a, b))(state, mel, ids)
        assert out.dtype == np.float32
        logits[dtype] = np.asarray(out)[..., :51865]
    error = np.abs(logits["bfloat16"] - logits["float32"])
    scale = np.abs(logits["float32"]).max()
    assert 0 < error.max() < 0.02 * scale, (error.max(), scale)  # bf16 rounding, not float32's
    assert (logits["bfloat16"].argmax(-1) == logits["float32"].argmax(-1)).mean() > 0.9


def test_bfloat16_training_matches_float32():
    """30 optimizer steps in bfloat16 end within 5% of the float32 run's loss (same data, same init): the
    float32 master weights and float32 loss keep bf16 matmuls from drifting. In-process train steps on a tiny
    model; `train.py` reads `config.model.dtype` into this same `WhisperConfig.dtype`."""
    batch = _batch(text.Tokenizer.from_assets())
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    final = {}
    for dtype in ("float32", "bfloat16"):
        graphdef, weights = nnx.split(create_model(TINY.replace(dtype=dtype), mesh=mesh, seed=0))
        selects = train_step.trainable((), ())
        schedule = train_step.make_schedule(lr=3e-3, warmup_steps=5, total_steps=30, decay="constant")
        tx = train_step.make_optimizer(schedule)
        state = train_step.init_train_state(weights, tx, selects, mesh)
        step = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh)
        on_mesh = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
        losses = []
        with jax.set_mesh(mesh):
            for _ in range(30):
                state, metrics = step(state, on_mesh)
                losses.append(float(metrics["loss"]))
        assert losses[-1] < losses[0] - 0.5, (dtype, losses[0], losses[-1])  # it trained
        final[dtype] = np.mean(losses[-3:])
    assert abs(final["bfloat16"] - final["float32"]) < 0.05 * final["float32"], final
