"""The one model builder: workdir restores keep the saved dtype and allocate nothing twice; a HF directory
loads within 1.3x the parameter bytes of host memory."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from audiocap_jax import text
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import export
from audiocap_jax.model.whisper import create_model
from audiocap_jax.rundir import layout, load
from configs.common import TINY_ARCH

REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: peak resident memory (VmHWM, reset after a warm-up) while building the model.
# The warm-up builds a 2-layer model from another HF directory first, so imports, the tokenizer's first load
# and library code pages (~130 MB, none of it the model's) are not counted.
_MEASURE = """
import json, sys
from pathlib import Path
import jax
from audiocap_jax.rundir import load

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

warm_up = load.build_model(load.ModelInit(init="hf", hf_checkpoint=sys.argv[2]))
del warm_up
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
before = status("VmRSS")
built = load.build_model(load.ModelInit(init="hf", hf_checkpoint=sys.argv[1]))
jax.block_until_ready(jax.tree.leaves(built.model))
param_bytes = sum(x.nbytes for x in jax.tree.leaves(built.model))
print(json.dumps({"peak_growth": status("VmHWM") - before, "param_bytes": param_bytes}))
"""


def test_hf_directory_loads_within_1_3x_parameter_bytes(tmp_path):
    """A whisper-base-sized (72.6 M parameters) HF directory written by our own export."""
    tokenizer = text.Tokenizer.from_assets()
    export(create_model(WhisperConfig.from_variant("base"), seed=0), tokenizer, tmp_path / "base")
    small = WhisperConfig.from_variant(
        "base",
        encoder_layers=1,
        decoder_layers=1,
        d_model=64,
        encoder_attention_heads=1,
        decoder_attention_heads=1,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    )
    export(create_model(small, seed=0), tokenizer, tmp_path / "small")
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "base"), str(tmp_path / "small")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["param_bytes"] > 280e6  # float32 whisper-base: 72.6 M parameters
    ratio = measured["peak_growth"] / measured["param_bytes"]
    print(f"peak host memory while loading: {ratio:.2f}x the parameter bytes")
    assert ratio <= 1.3, measured


def test_workdir_restore_keeps_saved_dtype_unless_asked(tmp_path):
    """A workdir saved in bfloat16 restores as bfloat16 (no param_dtype given), float32 when asked."""
    from audiocap_jax.rundir import checkpoint

    config = WhisperConfig(
        **TINY_ARCH, max_source_positions=50, max_target_positions=16, param_dtype="bfloat16"
    )
    weights = nnx.state(create_model(config, seed=3))
    load.save_run_files(tmp_path, config, text.Tokenizer.from_assets())
    saver = checkpoint.Checkpointer(tmp_path / layout.CHECKPOINT_DIR, async_save=False)
    saver.save(7, {"step": np.int32(7), load.WEIGHTS_KEY: weights, "opt_state": {}}, {"position": 7})
    saver.close()

    kept = load.build_model(load.ModelInit.from_path(tmp_path, step="latest"))
    assert kept.origin == f"{tmp_path} step 7" and kept.config.param_dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(nnx.state(kept.model))} == {jax.numpy.dtype("bfloat16")}
    for a, b in zip(jax.tree.leaves(nnx.state(kept.model)), jax.tree.leaves(weights), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    cast = load.build_model(load.ModelInit.from_path(tmp_path, step=7, param_dtype="float32"))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(cast.model))} == {jax.numpy.dtype("float32")}
    with pytest.raises(ValueError, match="no checkpoint at step 8; it has steps \\[7\\]"):
        load.build_model(load.ModelInit.from_path(tmp_path, step=8))
    assert json.loads((tmp_path / layout.MODEL_CONFIG_FILE).read_text())["d_model"] == 32
