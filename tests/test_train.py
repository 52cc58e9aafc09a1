"""`python -m audiocap_jax.train` end to end on a tiny real-layout Clotho build: exact resume after SIGKILL,
SIGTERM saves and exits, checkpoint fallback, multi-process = single process, bad configs fail fast."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from audiocap_jax import checkpoint, load
from audiocap_jax.testing import tfds_data
from audiocap_jax.writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    return tfds_data.build_all(root)["clotho"].data_dir


def _command(workdir, data_dir, *overrides, config="configs/smoke.py"):
    return [
        sys.executable,
        "-m",
        "audiocap_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.eval.every_steps=0",
        "--config.checkpoint.export_hf=False",
        *overrides,
    ]


def _env(devices=8):
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", WANDB_MODE="disabled"
    )
    env["PYTHONPATH"] = str(REPO)
    return env


def _train(workdir, data_dir, *overrides, devices=8, timeout=600):
    result = subprocess.run(
        _command(workdir, data_dir, *overrides),
        cwd=REPO,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(workdir):
    by_step = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
    return [by_step[s] for s in sorted(by_step)]


def _params(workdir):
    model, _, _ = load.load_model(workdir, step="latest")
    from flax import nnx

    return jax.device_get(nnx.state(model))


def test_exact_resume_after_sigkill(tmp_path, data_dir):
    _train(tmp_path / "straight", data_dir)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        _command(interrupted, data_dir),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "6").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint 6 within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(r["step"] for r in read_metrics(interrupted))
    assert 6 <= killed_at < 10

    resumed = _train(interrupted, data_dir)
    assert "Resumed from step" in resumed.stderr
    straight_losses = _losses(tmp_path / "straight")
    assert len(straight_losses) == 10
    assert _losses(interrupted) == straight_losses
    for a, b in zip(
        jax.tree.leaves(_params(tmp_path / "straight")), jax.tree.leaves(_params(interrupted)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_multi_process_equals_single_process(tmp_path, data_dir):
    overrides = ("--config.total_steps=3", "--config.batch_size=8", "--config.checkpoint.every_steps=3")
    _train(tmp_path / "single", data_dir, *overrides)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "multi"
    processes = [
        subprocess.Popen(
            [
                *_command(workdir, data_dir, *overrides),
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=_env(devices=4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in processes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
    np.testing.assert_allclose(_losses(workdir), _losses(tmp_path / "single"), rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(_params(tmp_path / "single")), jax.tree.leaves(_params(workdir)), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_config_keys_and_paths_fail_fast(tmp_path, data_dir):
    unknown = subprocess.run(
        _command(tmp_path / "a", data_dir, "--config.optim.lrr=1e-4"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert unknown.returncode != 0 and "lrr" in unknown.stderr
    wrong_type = subprocess.run(
        _command(tmp_path / "b", data_dir, "--config.batch_size=large"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert wrong_type.returncode != 0 and "batch_size" in wrong_type.stderr
    missing = subprocess.run(
        _command(tmp_path / "c", tmp_path / "no_data"), cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert missing.returncode != 0 and "python -m tfds_builders build tfds_builders/clotho" in missing.stderr


def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir):
    workdir = tmp_path / "preempted"
    process = subprocess.Popen(
        _command(workdir, data_dir, "--config.total_steps=1000", "--config.checkpoint.every_steps=1000"),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not any("loss" in r for r in read_metrics(workdir)):
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-3000:]
    steps = checkpoint.Checkpointer(workdir / "checkpoints").all_steps()
    assert len(steps) == 1 and 1 <= steps[0] < 1000
    assert json.loads((workdir / "final_metrics.json").read_text())["step"] == steps[0]
