"""The demo end to end, shortened: `python -m audiocap_jax.train --config=configs/demo.py` on a tiny synthetic
set (same code path as `make demo`: generate -> prepare -> TFDS build -> train two styles -> validate ->
predictions, metrics JSON, plot, summary), then a re-run, `predict` on its checkpoint, and the report."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import matplotlib.image
import pytest

from audiocap_jax.data import demo, synthetic
from audiocap_jax.rundir import layout, summary

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VALID, NUM_TEST = 8, 4, 1
TOTAL_STEPS = 4
SHORT_DEMO = (
    f"--config.data.synthetic.num_train={NUM_TRAIN}",
    f"--config.data.synthetic.num_valid={NUM_VALID}",
    f"--config.data.synthetic.num_test={NUM_TEST}",
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.batch_size=4",
    "--config.optim.warmup_steps=1",
    f"--config.eval.every_steps={TOTAL_STEPS}",
    "--config.eval.batch_size=4",
    f"--config.checkpoint.every_steps={TOTAL_STEPS}",
    "--config.log.every_steps=1",
)


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root on one CPU device, as `make demo` runs on a laptop
    (the suite's conftest asks for 8 fake devices)."""
    env = dict(os.environ, XLA_FLAGS="", WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _run_demo(workdir: pathlib.Path) -> subprocess.CompletedProcess:
    return _run("audiocap_jax.train", "--config=configs/demo.py", f"--workdir={workdir}", *SHORT_DEMO)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "run"
    return workdir, _run_demo(workdir)


def _csv_rows(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_builds_data_trains_and_writes_outputs(demo_run):
    workdir, result = demo_run
    data = workdir / "data"
    assert json.loads((data / "synthetic" / synthetic.MANIFEST_FILE).read_text())["complete"] is True
    stamp = json.loads((data / "tfds" / demo.STAMP_FILE).read_text())
    assert stamp["synthetic"]["num_clips"]["clotho/development"] == NUM_TRAIN
    assert stamp["synthetic"]["num_clips"]["audioset/valid"] == NUM_VALID
    assert (data / "tfds" / "clotho" / "mel80").is_dir() and (
        data / "tfds" / "audioset_small" / "mel80"
    ).is_dir()

    train_records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in train_records if "loss" in r]
    assert len(losses) == TOTAL_STEPS and all(math.isfinite(x) for x in losses)
    vocab_size = json.loads((workdir / layout.MODEL_CONFIG_FILE).read_text())["vocab_size"]
    assert vocab_size == 51865  # the demo keeps Whisper's multilingual vocabulary
    assert abs(losses[0] - math.log(vocab_size)) < 0.5  # a fresh model guesses uniformly over it
    assert losses[-1] < losses[0] - 0.5  # and learns from the first steps

    final = json.loads((workdir / layout.FINAL_METRICS_FILE).read_text())
    assert final["step"] == TOTAL_STEPS
    assert 0 <= final["clotho/cider_d"] < 10 and 0 <= final["clotho/meteor"] <= 1
    assert 0 <= final["audioset/keyword_f1_micro"] <= 1

    predictions = workdir / "predictions"
    clotho_rows = _csv_rows(predictions / "clotho_validation.csv")
    assert sorted(r["file_name"] for r in clotho_rows) == [
        synthetic.clotho_file_name("validation", i) for i in range(NUM_VALID)
    ]
    audioset_rows = _csv_rows(predictions / "audioset_valid.csv")
    assert sorted(r["file_name"] for r in audioset_rows) == [
        f"{synthetic.youtube_id('valid', i)}.wav" for i in range(NUM_VALID)
    ]
    scores = json.loads((predictions / "audioset_valid_metrics.json").read_text())
    assert scores["step"] == TOTAL_STEPS and scores["prefix"] == "audioset > keywords: "

    image = matplotlib.image.imread(workdir / layout.PLOT_FILE)
    assert image.shape[:2] == (450, 1200)  # figsize (12, 4.5) at 100 dpi
    assert (workdir / "hf_export" / "model.safetensors").is_file()

    assert f"step {TOTAL_STEPS}: loss" in result.stdout
    assert "clotho     CIDEr-D" in result.stdout and "audioset   keyword F1 (micro)" in result.stdout
    assert str(workdir / layout.PLOT_FILE) in result.stdout
    assert str(predictions) in result.stdout


def test_rerun_reuses_data_and_keeps_results(demo_run):
    workdir, _ = demo_run
    before = json.loads((workdir / layout.FINAL_METRICS_FILE).read_text())
    again = demo.ensure_demo_data(
        workdir / "data" / "synthetic",
        workdir / "data" / "tfds",
        num_train=NUM_TRAIN,
        num_valid=NUM_VALID,
        num_test=NUM_TEST,
    )
    assert again.built is False
    result = _run_demo(workdir)  # resumes at the last step: nothing to train, the report stays
    assert "Demo data is ready" in result.stderr
    assert json.loads((workdir / layout.FINAL_METRICS_FILE).read_text()) == before


def test_predict_on_demo_checkpoint(demo_run, tmp_path):
    """The README's predict command on the demo's 10 s model (predict crops the log-mels to its window)."""
    workdir, _ = demo_run
    audio_dir = workdir / "data" / "synthetic" / "audioset" / "audios" / synthetic.ORIG_SPLIT_OF["valid"]
    _run(
        "audiocap_jax.predict",
        f"--checkpoint={workdir}",
        f"--data={audio_dir}",
        f"--output-file={tmp_path / 'keywords.csv'}",
        "--config-file.style=audioset > keywords",
        "--config-file.num_beams=2",
        "--config-file.max_length=48",
    )
    rows = _csv_rows(tmp_path / "keywords.csv")
    assert [r["file_name"] for r in rows] == [
        f"{synthetic.youtube_id('valid', i)}.wav" for i in range(NUM_VALID)
    ]
    log = json.loads((tmp_path / "keywords_log.json").read_text())
    assert log["num_captioned"] == NUM_VALID and log["failed_files"] == []
    assert log["prefix"] == "audioset > keywords: "


def test_report_of_a_metrics_log(tmp_path):
    records = [
        {"step": 10, "loss": 3.0, "token_accuracy": 0.2, "examples_per_second": 9.0},
        {"step": 20, "loss": 2.0, "token_accuracy": 0.5, "examples_per_second": 11.0},
        {"step": 20, "clotho/cider_d": 1.25, "clotho/meteor": 0.3, "audioset/cider_d": 2.0,
         "audioset/keyword_f1_micro": 0.85, "eval_seconds": 4.0},
        {"step": 30, "loss": 1.0, "token_accuracy": 0.75, "examples_per_second": 12.0},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert summary.last_validation(records) == {
        "clotho/cider_d": 1.25,
        "clotho/meteor": 0.3,
        "audioset/cider_d": 2.0,
        "audioset/keyword_f1_micro": 0.85,
        "eval_seconds": 4.0,
    }
    assert summary.plot_metrics(tmp_path) == tmp_path / layout.PLOT_FILE
    lines = summary.describe(tmp_path).splitlines()
    assert lines[1:4] == [
        "  step 30: loss 1.0000, token accuracy 0.750, 12.0 examples/s (median)",
        "  audioset   keyword F1 (micro) 0.8500",
        "  clotho     CIDEr-D            1.2500",
    ]
    assert lines[4] == "  clotho     METEOR             0.3000"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        summary.plot_metrics(tmp_path / "empty")
