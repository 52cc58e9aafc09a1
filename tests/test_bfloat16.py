"""bfloat16 compute (what `dtype="auto"` picks on GPU/TPU) stays close to float32: logits of a HF checkpoint,
and a whole smoke training run."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from audiocap_jax.model.hf import load_hf_checkpoint
from audiocap_jax.testing import tfds_data
from audiocap_jax.testing.models import TINY_ARCH, save_tiny_hf_whisper
from audiocap_jax.writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_bfloat16_smoke_training_matches_float32(tmp_path):
    """30 steps of the smoke config in bfloat16 end within 5% of the float32 run's loss."""
    data_dir = tfds_data.build_all(tmp_path / "tfds")["clotho"].data_dir
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(REPO))
    final = {}
    for dtype in ("float32", "bfloat16"):
        workdir = tmp_path / dtype
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "audiocap_jax.train",
                "--config=configs/smoke.py",
                f"--workdir={workdir}",
                f"--config.data.data_dir={data_dir}",
                f"--config.model.dtype={dtype}",
                "--config.total_steps=30",
                "--config.eval.every_steps=0",
                "--config.checkpoint.every_steps=30",
                "--config.checkpoint.export_hf=False",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        losses = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
        assert losses[30] < losses[1] - 0.5, (dtype, losses[1], losses[30])  # it trained
        final[dtype] = np.mean([losses[s] for s in (28, 29, 30)])
    assert abs(final["bfloat16"] - final["float32"]) < 0.05 * final["float32"], final
