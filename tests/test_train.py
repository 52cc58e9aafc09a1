"""`python -m audiocap_jax.train` end to end on a tiny real-layout Clotho build: exact resume after SIGKILL past a
corrupt latest checkpoint, SIGTERM saves and exits with the "resume me" code, bad configs fail fast. Two
processes = one 8-device process, and pre-emption agreed between them: tests/test_distributed_train.py. One
training per workdir, and a resumed workdir keeps its model: the last test."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from audiocap_jax import cli
from audiocap_jax.rundir import checkpoint, load
from audiocap_jax.rundir.writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _command(workdir, clotho_data_dir, *overrides, config="configs/smoke.py", validate_and_export=False):
    switches = (
        () if validate_and_export else ("--config.eval.every_steps=0", "--config.checkpoint.export_hf=False")
    )
    return [
        sys.executable,
        "-m",
        "audiocap_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={clotho_data_dir}",
        *switches,
        *overrides,
    ]


def _env(devices=8):
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", WANDB_MODE="disabled"
    )
    env["PYTHONPATH"] = str(REPO)
    return env


def _train(workdir, clotho_data_dir, *overrides, devices=8, timeout=600):
    result = subprocess.run(
        _command(workdir, clotho_data_dir, *overrides),
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


def test_exact_resume_after_sigkill_and_a_corrupt_latest_checkpoint(tmp_path, clotho_data_dir):
    _train(tmp_path / "straight", clotho_data_dir)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        _command(interrupted, clotho_data_dir),
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

    resumed = _train(interrupted, clotho_data_dir)
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


def test_bad_config_keys_and_paths_fail_fast(tmp_path, clotho_data_dir):
    unknown = subprocess.run(
        _command(tmp_path / "a", clotho_data_dir, "--config.optim.lrr=1e-4"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert unknown.returncode != 0 and "lrr" in unknown.stderr
    wrong_type = subprocess.run(
        _command(tmp_path / "b", clotho_data_dir, "--config.batch_size=large"),
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


def test_sigterm_saves_and_exits_with_resume_code(tmp_path, clotho_data_dir):
    workdir = tmp_path / "preempted"
    process = subprocess.Popen(
        _command(
            workdir, clotho_data_dir, "--config.total_steps=1000", "--config.checkpoint.every_steps=1000"
        ),
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


def test_one_training_per_workdir_and_a_resumed_workdir_keeps_its_model(tmp_path, clotho_data_dir):
    """A second training into the workdir of a running one exits 2 naming the lock's holder, and the first logs
    each step once; then resuming that workdir with another width (the issue's d_model 32 -> 64) exits 2 in one
    line naming the key and both values, before anything in the workdir changes."""
    workdir, lock = tmp_path / "run", tmp_path / "run" / "train.lock"
    first = subprocess.Popen(
        _command(workdir, clotho_data_dir, "--config.total_steps=4"),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not any("loss" in r for r in read_metrics(workdir)):
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # it holds the lock while the second starts, however fast this machine
    try:
        second = subprocess.run(
            _command(workdir, clotho_data_dir, "--config.total_steps=4"),
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == cli.EXIT_USER, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert f"Error: --workdir={workdir} is in use by another training run (host " in second.stderr
    assert f", pid {first.pid}, started " in second.stderr and f"its lock {lock} was renewed" in second.stderr
    assert "\nfix: wait for that run to end or stop it, or train into another --workdir" in second.stderr
    _, log = first.communicate(timeout=300)
    assert first.returncode == 0, log[-3000:]
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4]
    assert not lock.exists()

    before = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()}
    wider = subprocess.run(
        _command(
            workdir, clotho_data_dir, "--config.total_steps=4", "--config.model.arch_overrides.d_model=64"
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wider.returncode == cli.EXIT_USER, wider.stderr[-3000:]
    assert "Traceback" not in wider.stderr
    assert (
        f"Error: --workdir={workdir} holds a run with d_model=32 (model_config.json), but the config asks for "
        "d_model=64 (--config.model.arch_overrides.d_model); a resumed run keeps its model.\nfix: "
    ) in wider.stderr
    assert {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()} == before
