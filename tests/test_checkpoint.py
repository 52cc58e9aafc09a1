"""Checkpoint recovery: a corrupt latest step is moved aside (kept) and can be saved again. A training run that
meets one: tests/test_train.py::test_exact_resume_after_sigkill_and_a_corrupt_latest_checkpoint."""

import pathlib

import jax.numpy as jnp

from audiocap_jax.rundir import checkpoint

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
