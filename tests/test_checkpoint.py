"""Checkpoint recovery: a corrupt latest step is moved aside (kept), and training passes that step again."""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from audiocap_jax import checkpoint
from audiocap_jax.testing import tfds_data

REPO = pathlib.Path(__file__).resolve().parents[1]


def _corrupt(step_dir: pathlib.Path) -> None:
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")


def test_corrupt_step_is_moved_aside_and_can_be_saved_again(tmp_path, caplog):
    manager = checkpoint.Checkpointer(tmp_path, keep_last=3, async_save=False)
    for step in (1, 2):
        manager.save(step, {"w": jnp.full((4,), float(step))}, {"position": step})
    manager.wait()
    _corrupt(tmp_path / "2")
    step, state, data_state = manager.restore_latest({"w": jnp.zeros((4,))})
    assert (step, float(state["w"][0]), data_state) == (1, 1.0, {"position": 1})
    [aside] = tmp_path.glob("2.corrupt-*")
    assert (aside / "state").is_dir()  # kept, not deleted
    assert any(str(aside) in r.getMessage() and "step 2" in r.getMessage() for r in caplog.records)
    manager.save(2, {"w": jnp.full((4,), 5.0)}, {"position": 2})  # was StepAlreadyExistsError
    manager.wait()
    assert manager.all_steps() == [1, 2]
    assert checkpoint.Checkpointer(tmp_path).all_steps() == [1, 2]


def _train(workdir, data_dir, *overrides):
    """The smoke config as a subprocess on 8 fake CPU devices, no validation or export (seconds)."""
    return subprocess.run(
        [sys.executable, "-m", "audiocap_jax.train", "--config=configs/smoke.py", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}", "--config.eval.every_steps=0", "--config.checkpoint.export_hf=False",
         *overrides],
        cwd=REPO,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tfds_data.build_all(tmp_path_factory.mktemp("tfds"))["clotho"].data_dir


def test_training_passes_a_corrupt_latest_checkpoint(tmp_path, data_dir):
    """Smoke config: checkpoints 2 and 4, step 4 corrupted; the rerun resumes at 2, saves 4 anew, ends at 6."""

    def train(total_steps):
        result = _train(
            tmp_path, data_dir, f"--config.total_steps={total_steps}", "--config.checkpoint.every_steps=2"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    train(4)
    _corrupt(tmp_path / "checkpoints" / "4")
    resumed = train(6)
    assert "Resumed from step 2" in resumed.stderr and "moved it aside" in resumed.stderr
    [aside] = (tmp_path / "checkpoints").glob("4.corrupt-*")
    assert (aside / "state").is_dir()
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == [4, 6]
