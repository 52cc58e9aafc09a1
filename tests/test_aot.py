"""Compiling for the real targets without them (audiocap_jax/aot): FSDP shards the whole train state, splash
attention works for every program of a run and is the Mosaic kernel on TPU meshes, cuDNN's fused attention
on NVIDIA meshes, and `python -m audiocap_jax.aot` reports, writes JSON and exits by the fit."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiocap_jax import text
from audiocap_jax.aot import analysis, programs, targets
from audiocap_jax.decoding import search, whisper_binding
from audiocap_jax.model import sharding
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.lora import NO_LORA
from audiocap_jax.model.whisper import create_model
from audiocap_jax.rundir import checkpoint, train_step
from audiocap_jax.rundir.load import abstract_model
from configs import smoke

# Wide enough that FSDP over 8 devices splits nearly every byte (what the 5% bound needs), small enough for CPU.
WIDE = WhisperConfig(
    d_model=256,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=1024,
    decoder_ffn_dim=1024,
    max_source_positions=64,
    max_target_positions=32,
)
# The attentions at their real encoder length (1500 positions) in a model that compiles in seconds.
NARROW = WIDE.replace(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500)
TOKENS = 15


def _per_device(tree):
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _total(tree):
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _updater(weights):
    schedule = train_step.make_schedule(lr=1e-3, warmup_steps=1, total_steps=10)
    return train_step.make_optimizer(schedule), schedule, train_step.trainable()


def _batch(config, n, mesh, seed=0):
    rng = np.random.default_rng(seed)
    host = {
        "mel": rng.standard_normal((n, config.num_mel_bins, config.num_frames)).astype(np.float16),
        "decoder_input_ids": rng.integers(0, 1000, (n, TOKENS)).astype(np.int32),
        "targets": rng.integers(0, 1000, (n, TOKENS)).astype(np.int32),
        "loss_mask": np.ones((n, TOKENS), np.float32),
    }
    return sharding.host_to_global(host, mesh)


def _assert_fsdp_split(state, devices=8):
    """Weights and optimizer state: one device holds 1/8 of each, give or take 5% (the replicated
    scalars: step, Adam's count)."""
    for part in (state.weights, state.opt_state):
        assert _per_device(part) == pytest.approx(_total(part) / devices, rel=0.05), (
            _per_device(part),
            _total(part),
        )


def test_fsdp_shards_the_whole_train_state(tmp_path):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8})
    graphdef, weights = nnx.split(create_model(WIDE, mesh=mesh))
    tx, schedule, selects = _updater(weights)
    abstract = train_step.abstract_train_state(weights, tx, selects, mesh)
    _assert_fsdp_split(abstract)
    state = train_step.init_train_state(weights, tx, selects, mesh)
    _assert_fsdp_split(state)
    assert jax.tree.map(lambda x: x.sharding, state) == jax.tree.map(lambda x: x.sharding, abstract)
    step = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh)
    with jax.set_mesh(mesh):
        state, _ = step(state, _batch(WIDE, 8, mesh))
    _assert_fsdp_split(state)
    saver = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
    saver.save(1, state, {})
    restored_step, restored, _ = saver.restore_latest(abstract)
    saver.close()
    assert restored_step == 1
    _assert_fsdp_split(restored)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("impl", ["splash", "xla"])
def test_every_program_of_a_run_compiles_in_one_process(impl):
    """What train.py runs one after another: the train step, validation's decoding (encoder and search),
    the encoder alone, and a second, different train step; splash in interpret mode on CPU."""
    config = NARROW.replace(attention_impl=impl, max_source_positions=64)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, weights = nnx.split(create_model(config, mesh=mesh))
    tx, schedule, selects = _updater(weights)
    state = train_step.init_train_state(weights, tx, selects, mesh)
    batch = _batch(config, 4, mesh)
    with jax.set_mesh(mesh):
        state, first = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh)(state, batch)
    tokenizer = text.Tokenizer.from_assets()
    prompt = np.tile(np.asarray(tokenizer.prompt_ids(text.CLOTHO_CAPTION), np.int32), (4, 1))
    inputs = sharding.host_to_global(
        {"prompt": prompt, "lengths": np.full(4, prompt.shape[1], np.int32)}, mesh
    )
    settings = search.DecodeSettings(
        eos_id=tokenizer.specials.eot, num_beams=2, max_length=prompt.shape[1] + 3
    )
    sequences, _ = whisper_binding.make_decode_fn(graphdef, settings, mesh)(
        state.weights, batch["mel"], inputs["prompt"], inputs["lengths"]
    )
    assert sequences.shape == (4, 1, prompt.shape[1] + 3)
    with jax.set_mesh(mesh):
        encoded = jax.jit(lambda w, mel: nnx.merge(graphdef, w).encode(mel))(state.weights, batch["mel"])
        accumulating = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh, accum_steps=2)
        _, second = accumulating(state, batch)
    assert encoded.shape == (4, config.max_source_positions, config.d_model)
    assert np.isfinite(float(first["loss"])) and np.isfinite(float(second["loss"]))


def _compile_train(target_name, config):
    target = targets.get_target(target_name)
    mesh = sharding.make_mesh({"data": -1}, devices=targets.compile_only_devices(target))
    model = programs.model_config(smoke.get_config(), mesh.devices.flat).replace(
        **{k: getattr(config, k) for k in ("d_model", "encoder_ffn_dim", "decoder_ffn_dim")}
    )
    return mesh, analysis.compile_program(programs.lower_train(smoke.get_config(), model, mesh, 1))


def test_cudnn_fused_attention_for_all_three_attentions_on_h100():
    mesh, compiled = _compile_train("h100x8", NARROW)
    text_hlo = compiled.executable.as_text()
    kernels = analysis.attention_kernels(text_hlo)
    # encoder self-attention, decoder causal self-attention, cross-attention: forward and backward each
    assert kernels == {"__cudnn$fmhaSoftmax": 3, "__cudnn$fmhaSoftmaxBackward": 3}
    assert not re.search(r"\[\d+,\d+,1500,1500\]", text_hlo), "a [B, H, 1500, 1500] score tensor"
    # ... while the same step with the XLA attention materialises those scores
    lowered_xla = programs.lower_train(
        smoke.get_config(),
        programs.model_config(smoke.get_config(), mesh.devices.flat).replace(attention_impl="xla"),
        mesh,
        1,
    )
    assert re.search(r"1500x1500x", lowered_xla.lowered.as_text())


def test_splash_is_the_mosaic_kernel_on_a_tpu_mesh():
    _, compiled = _compile_train("v5e-8", NARROW)
    kernels = analysis.attention_kernels(compiled.executable.as_text())
    by_pass = {
        p: sum(n for name, n in kernels.items() if name.startswith(f"splash_mha_{p}"))
        for p in ("fwd", "dq", "dkv")
    }
    assert by_pass == {"fwd": 3, "dq": 3, "dkv": 3}, kernels  # one per attention kind, forward and backward
    # the encoder and cross-attention mask their padded keys (1500 -> 1536); the causal one needs no segments
    assert sum(n for name, n in kernels.items() if "segmented" in name) == 6


def _aot(tmp_path, *args):
    out = tmp_path / "aot.json"
    run = subprocess.run(
        [sys.executable, "-m", "audiocap_jax.aot", "--config=configs/smoke.py", f"--json={out}", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return run, (json.loads(out.read_text()) if out.exists() else None)


PROGRAM_KEYS = {
    "per_device_batch",
    "global_batch",
    "per_device_gib",
    "hbm_gib",
    "fits",
    "compile_s",
    "attention_kernels",
    "collectives",
    "roofline_s",
    "roofline_mfu",
}


@pytest.mark.slow
def test_cli_compiles_a_tiny_config_for_a_gpu_and_a_tpu(tmp_path):
    gpu, report = _aot(tmp_path, "--target=h100x8")
    assert gpu.returncode == 0, gpu.stderr[-2000:]
    assert "Traceback" not in gpu.stderr and "h100x8: 8 x NVIDIA H100" in gpu.stdout
    assert {"target", "devices", "programs"} <= set(report) and report["devices"] == 8
    for name in ("train", "decode"):
        program = report["programs"][name]
        assert set(program) >= PROGRAM_KEYS and program["fits"] is True
        assert set(program["per_device_gib"]) == {"weights", "optimizer", "batch", "temp", "total"}
    train = report["programs"]["train"]
    assert 0 < train["roofline_mfu"] <= 1 and train["roofline_s"] > 0
    assert train["collectives"].get("all-reduce", 0) >= 1  # the data-parallel gradient sum
    tpu, report = _aot(tmp_path, "--target=v5e-8", "--program=decode")
    assert tpu.returncode == 0, tpu.stderr[-2000:]
    assert "Traceback" not in tpu.stderr and "WARNING: could not determine TPU" not in tpu.stderr
    decode = report["programs"]["decode"]
    assert set(decode) >= PROGRAM_KEYS and decode["fits"] is True and decode["attention_kernels"]


@pytest.mark.slow
def test_cli_says_which_knobs_help_when_a_batch_does_not_fit(tmp_path):
    run, report = _aot(tmp_path, "--target=h100x8", "--program=train", "--config.batch_size=262144")
    assert run.returncode == 1, run.stderr[-2000:]
    assert report["programs"]["train"]["fits"] is False
    line = next(x for x in run.stderr.splitlines() if x.startswith("train needs"))
    assert "of 79.11" in line and "model.remat" in line and "mesh.fsdp" in line and "accum_steps" in line


def test_cli_refuses_unknown_targets_and_missing_compilers(tmp_path):
    run, _ = _aot(tmp_path, "--target=v9x-1")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert (
        re.search(r"(?i)^error: --target='v9x-1'", run.stderr, re.M)
        and "fix: use one of h100x8" in run.stderr
    )
    hidden = "import sys, runpy; sys.modules['libtpu'] = None; runpy.run_module('audiocap_jax.aot', run_name='__main__', alter_sys=True)"
    env = {k: v for k, v in os.environ.items() if k != "TPU_LIBRARY_PATH"}  # set by `import jax` here
    run = subprocess.run(
        [sys.executable, "-c", hidden, "--config=configs/smoke.py", "--target=v5e-8"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f'pip install "jax[tpu]=={jax.__version__}"' in run.stderr


def test_largest_fitting_batch_searches_powers_of_two():
    compiled = []

    def total_at(batch):  # 1 GiB fixed + 0.3 GiB per example, "out of memory" above 64
        compiled.append(batch)
        return None if batch > 64 else (1 + 0.3 * batch) * 2**30

    assert analysis.largest_fitting(total_at, 16 * 2**30) == 32  # 1 + 0.3 * 32 = 10.6 <= 16 < 20.2
    assert len(compiled) <= 4
    assert analysis.largest_fitting(lambda b: 20 * 2**30, 16 * 2**30) == 0


def test_roofline_extrapolates_layers_from_twins():
    cost = lambda e, d: (10 + 3 * e + 5 * d, 100 + e + 2 * d)  # noqa: E731
    assert analysis.layer_extrapolation(cost, 32, 32) == cost(32, 32)
    assert analysis.layer_extrapolation(cost, 4, 6) == cost(4, 6)


def test_gpu_targets_match_their_spec_files():
    for target in targets.TARGETS.values():
        if target.platform != "cuda":
            continue
        spec = targets.gpu_spec_text(target)
        memory = int(re.search(r"device_memory_size: (\d+)", spec).group(1))
        bandwidth = int(re.search(r"memory_bandwidth: (\d+)", spec).group(1))
        assert target.hbm_gib == pytest.approx(memory / 2**30, abs=0.01), target.name
        assert target.memory_gbps == pytest.approx(bandwidth / 1e9, rel=0.01), target.name


def test_abstract_model_resolves_runtime_for_its_mesh():
    target = targets.get_target("v5e-8")
    mesh = sharding.make_mesh({"data": -1}, devices=targets.compile_only_devices(target))
    model = abstract_model(NARROW.replace(dtype="auto"), mesh, NO_LORA)
    assert (model.config.dtype, model.config.attention_impl) == ("bfloat16", "splash")
    assert jnp.dtype(model.encoder.conv1.kernel.dtype) == jnp.float32  # master weights stay float32
