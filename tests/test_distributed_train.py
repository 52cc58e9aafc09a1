"""Multi-host training with fake hosts (local processes of 4 fake CPU devices each, a coordinator on localhost):
two processes train, validate and export like one process of 8 devices; a SIGTERM to one of them stops both
after the same step, and the pair resumes exactly.

Its own file so that pytest-xdist (`make test`: one file per worker) runs these minutes-long runs beside the
rest of test_train.py instead of after it.
"""

import json
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
from test_train import REPO, _command, _env, _losses, _params

from audiocap_jax import cli
from audiocap_jax.rundir import checkpoint
from audiocap_jax.rundir.writer import read_metrics

# Two processes of 4 devices vs one of 8, validating at steps 3 and 6 and exporting at the end. The tiny
# validation split has 2 clips, so one process's share of the padded global batch is empty.
POD = (
    "--config.total_steps=6",
    "--config.batch_size=8",
    "--config.eval.every_steps=3",
    "--config.checkpoint.every_steps=2",
)


def _start_pair(workdir, clotho_data_dir, logs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                *_command(workdir, clotho_data_dir, *POD, validate_and_export=True),
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
def pod_runs(tmp_path_factory, clotho_data_dir):
    """(single-process workdir, two-process workdir), both finished; run side by side."""
    root = tmp_path_factory.mktemp("pod")
    single = subprocess.Popen(
        _command(root / "single", clotho_data_dir, *POD, validate_and_export=True),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=(root / "single.log").open("w"),
    )
    pair = _start_pair(root / "multi", clotho_data_dir, root / "multi_logs")
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


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, clotho_data_dir, pod_runs):
    workdir, logs = tmp_path / "preempted", tmp_path / "logs"
    pair = _start_pair(workdir, clotho_data_dir, logs)
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

    resumed = _wait(
        _start_pair(workdir, clotho_data_dir, tmp_path / "resumed_logs"), tmp_path / "resumed_logs"
    )
    for code, log in resumed:
        assert code == 0 and f"Resumed from step {step}" in log, log[-3000:]
    _, uninterrupted = pod_runs
    assert _losses(workdir) == _losses(uninterrupted)
    for a, b in zip(jax.tree.leaves(_params(uninterrupted)), jax.tree.leaves(_params(workdir)), strict=True):
        np.testing.assert_array_equal(a, b)
