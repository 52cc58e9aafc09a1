"""`python -m audiocap_jax.train` end to end on a tiny real-layout Clotho build: exact resume after SIGKILL,
SIGTERM saves and exits with the "resume me" code, checkpoint fallback, bad configs fail fast, and two
processes (validation and HF export on) = one 8-device process, with pre-emption agreed between them."""

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

from audiocap_jax import checkpoint, cli, load
from audiocap_jax.testing import tfds_data
from audiocap_jax.writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    return tfds_data.build_all(root)["clotho"].data_dir


def _command(workdir, data_dir, *overrides, config="configs/smoke.py", validate_and_export=False):
    switches = (
        () if validate_and_export else ("--config.eval.every_steps=0", "--config.checkpoint.export_hf=False")
    )
    return [
        sys.executable,
        "-m",
        "audiocap_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *switches,
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
    from flax import nnx

    built = load.build_model(load.ModelInit.from_path(workdir, step="latest"))
    return jax.device_get(nnx.state(built.model))


def test_exact_resume_after_sigkill_and_a_corrupt_latest_checkpoint(tmp_path, data_dir):
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
    # The latest checkpoint is also corrupt (a node died while the storage wrote it): the run moves it aside,
    # kept for a post-mortem, resumes from the one before and still ends exactly where the straight run does.
    saved = checkpoint.Checkpointer(interrupted / "checkpoints").all_steps()
    latest = saved[-1]
    for path in (interrupted / "checkpoints" / str(latest) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")

    resumed = _train(interrupted, data_dir)
    assert f"Resumed from step {saved[-2]}" in resumed.stderr and "moved it aside" in resumed.stderr
    [aside] = (interrupted / "checkpoints").glob(f"{latest}.corrupt-*")
    assert (aside / "state").is_dir()
    straight_losses = _losses(tmp_path / "straight")
    assert len(straight_losses) == 10
    assert _losses(interrupted) == straight_losses
    for a, b in zip(
        jax.tree.leaves(_params(tmp_path / "straight")), jax.tree.leaves(_params(interrupted)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# Two processes of 4 devices vs one of 8, validating at steps 3 and 6 and exporting at the end. The tiny
# validation split has 2 clips, so one process's share of the padded global batch is empty.
POD = (
    "--config.total_steps=6",
    "--config.batch_size=8",
    "--config.eval.every_steps=3",
    "--config.checkpoint.every_steps=2",
)


def _start_pair(workdir, data_dir, logs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                *_command(workdir, data_dir, *POD, validate_and_export=True),
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=_env(devices=4),
            stdout=subprocess.DEVNULL,
            stderr=(logs / f"process{i}.log").open("w"),
        )
        for i in range(2)
    ]


def _wait(processes, logs, timeout=1500):
    for p in processes:
        p.wait(timeout=timeout)
    return [(p.returncode, (logs / f"process{i}.log").read_text()) for i, p in enumerate(processes)]


@pytest.fixture(scope="module")
def pod_runs(tmp_path_factory, data_dir):
    """(single-process workdir, two-process workdir), both finished; run side by side."""
    root = tmp_path_factory.mktemp("pod")
    single = subprocess.Popen(
        _command(root / "single", data_dir, *POD, validate_and_export=True),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=(root / "single.log").open("w"),
    )
    pair = _start_pair(root / "multi", data_dir, root / "multi_logs")
    for code, log in _wait(pair, root / "multi_logs"):
        assert code == 0, log[-3000:]
    assert single.wait(timeout=1500) == 0, (root / "single.log").read_text()[-3000:]
    return root / "single", root / "multi"


def _hf_logits(directory):
    import torch
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(directory).eval()
    features = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 80, 3000)).astype(np.float32))
    with torch.no_grad():
        return model(
            input_features=features, decoder_input_ids=torch.tensor([[50258, 50259, 50359, 50363]] * 2)
        ).logits.numpy()


def test_two_processes_validate_export_and_equal_one(pod_runs):
    single, multi = pod_runs
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(_params(single)), jax.tree.leaves(_params(multi)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    validated = [r for r in read_metrics(multi) if "clotho/cider_d" in r]
    assert [r["step"] for r in validated] == [3, 6]
    final = json.loads((multi / "final_metrics.json").read_text())
    assert final["step"] == 6 and "clotho/cider_d" in final
    assert (multi / "predictions" / "clotho_validation.csv").read_text().count("\n") == 3  # header + 2 clips
    np.testing.assert_allclose(_hf_logits(multi / "hf_export"), _hf_logits(single / "hf_export"), atol=1e-5)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, data_dir, pod_runs):
    workdir, logs = tmp_path / "preempted", tmp_path / "logs"
    pair = _start_pair(workdir, data_dir, logs)
    deadline = time.time() + 1200
    while not (workdir / "checkpoints" / "2").is_dir():
        assert all(p.poll() is None for p in pair), (logs / "process0.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint 2 within 1200 s"
        time.sleep(0.05)
    pair[1].send_signal(signal.SIGTERM)
    outcomes = _wait(pair, logs, timeout=300)
    assert [code for code, _ in outcomes] == [cli.EXIT_PREEMPTED] * 2, outcomes[0][1][-3000:]
    stopped = {int(log.split("Pre-empted: stopped at step ")[1].split()[0]) for _, log in outcomes}
    assert len(stopped) == 1, stopped  # both processes stopped after the same step
    [step] = stopped
    assert 2 <= step < 6 and checkpoint.Checkpointer(workdir / "checkpoints").all_steps()[-1] == step
    assert not (workdir / "final_metrics.json").exists()  # not finished: no final report

    resumed = _wait(_start_pair(workdir, data_dir, tmp_path / "resumed_logs"), tmp_path / "resumed_logs")
    for code, log in resumed:
        assert code == 0 and f"Resumed from step {step}" in log, log[-3000:]
    _, uninterrupted = pod_runs
    assert _losses(workdir) == _losses(uninterrupted)
    for a, b in zip(jax.tree.leaves(_params(uninterrupted)), jax.tree.leaves(_params(workdir)), strict=True):
        np.testing.assert_array_equal(a, b)


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


def test_sigterm_saves_and_exits_with_resume_code(tmp_path, data_dir):
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
    assert process.returncode == cli.EXIT_PREEMPTED, err.decode()[-3000:]
    steps = checkpoint.Checkpointer(workdir / "checkpoints").all_steps()
    assert len(steps) == 1 and 1 <= steps[0] < 1000
    assert f"Pre-empted: stopped at step {steps[0]}" in err.decode()
    assert not (workdir / "final_metrics.json").exists()
