"""`predict` and `evaluate` on a tiny random HF Whisper: CSV and log, skipped files, long clips, scoring."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from audiocap_jax import evaluate, inference, metrics, predict
from audiocap_jax.testing import audio as test_audio
from audiocap_jax.testing import tfds_data
from audiocap_jax.testing.models import save_tiny_hf_whisper

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
    spec = REPO / "configs" / "predict.py"
    namespace: dict = {}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    config = namespace["get_config"]()
    config.update(dict(num_beams=2, max_length=20, batch_size=8, loader_workers=2), **overrides)
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_hf")
    save_tiny_hf_whisper(path, seed=3, max_source_positions=1500)  # 3000 frames: real 30 s inputs
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    test_audio.write_audio(folder / "rain, heavy.wav", test_audio.noise(3.0, seed=1))
    test_audio.write_audio(folder / "café tone.flac", test_audio.tone(2.0, 440.0))
    test_audio.write_audio(folder / "speech.ogg", test_audio.speech_like(4.0))
    (folder / "nested").mkdir()
    test_audio.write_audio(folder / "nested" / "long.wav", test_audio.speech_like(35.0, seed=2))
    test_audio.write_truncated_wav(folder / "broken.wav")
    (folder / "notes.txt").write_text("not audio, and not listed")
    return folder


def test_predict_writes_csv_and_log_and_skips_broken_files(checkpoint, clips, tmp_path, capsys):
    out = tmp_path / "out.csv"
    log = predict.predict(str(checkpoint), clips, out, _config(), recursive=True)
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows] == [
        "café tone.flac",
        "nested/long.wav",
        "rain, heavy.wav",
        "speech.ogg",
    ]
    assert all(r["caption_predicted"] == r["caption_predicted"].strip() for r in rows)
    written = json.loads((tmp_path / "out_log.json").read_text())
    assert written["num_files"] == 5 and written["num_captioned"] == 4
    assert [f["file_name"] for f in written["failed_files"]] == ["broken.wav"]
    assert written["prompt_ids"] == [50258, 50259, 50359, 50363, 3474, 900, 78, 12331, 31974, 25, 220]
    assert log["settings"]["num_beams"] == 2
    raw = capsys.readouterr().out
    assert (
        "rain, heavy.wav\t<|startoftranscript|><|en|><|transcribe|><|notimestamps|>clotho > caption:" in raw
    )


def test_batch_padding_does_not_change_captions(checkpoint, clips, tmp_path):
    """The last, padded batch and a full batch caption a clip identically (padding rows are masked)."""
    predict.predict(str(checkpoint), clips, tmp_path / "a.csv", _config(batch_size=8))
    predict.predict(
        str(checkpoint), clips, tmp_path / "b.csv", _config(batch_size=16), take_first_n=3
    )  # broken.wav, café, rain
    a = metrics.read_predictions_csv(tmp_path / "a.csv")
    b = metrics.read_predictions_csv(tmp_path / "b.csv")
    assert set(b) == {"café tone.flac", "rain, heavy.wav"}
    assert {k: a[k] for k in b} == b


def test_long_clips_as_windows(checkpoint, clips, tmp_path):
    predict.predict(str(checkpoint), clips / "nested", tmp_path / "w.csv", _config(long_audio="windows"))
    assert list(metrics.read_predictions_csv(tmp_path / "w.csv")) == ["long.wav#t=0", "long.wav#t=30"]


def test_exit_codes_of_skipped_files_and_no_partial_output(checkpoint, tmp_path):
    """Some files undecodable: exit 3 (cli.EXIT_PARTIAL) with the rest captioned; none decodable: exit 2, no CSV."""
    folder = tmp_path / "clips"
    folder.mkdir()
    test_audio.write_not_audio(folder / "a.wav")

    def run(output):
        return subprocess.run(
            [sys.executable, "-m", "audiocap_jax.predict", f"--checkpoint={checkpoint}", f"--data={folder}",
             f"--output-file={output}", "--config-file.max_length=16", "--config-file.num_beams=1"],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        )  # fmt: skip

    nothing = run(tmp_path / "none.csv")
    assert nothing.returncode == 2, nothing.stderr[-3000:]
    assert (
        "error: none of the 1 files in" in nothing.stderr
        and "a.wav: not a readable audio file" in nothing.stderr
    )
    assert "fix: check the files with `python -m audiocap_jax.data.prepare find-corrupted" in nothing.stderr
    assert not list(tmp_path.glob("none*"))

    test_audio.write_audio(folder / "b.wav", test_audio.tone(1.0, 440.0))
    partial = run(tmp_path / "some.csv")
    assert partial.returncode == 3, partial.stderr[-3000:]
    assert "Captioned 1 of 2 files; 1 failed to decode (listed in some_log.json)" in partial.stderr
    assert list(metrics.read_predictions_csv(tmp_path / "some.csv")) == ["b.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clips",
        "some.csv",
        "some_log.json",
    ]  # no temp files


def test_evaluate_predictions_against_clotho_csv(tmp_path):
    references = tmp_path / "clotho_captions_evaluation.csv"
    with references.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", *(f"caption_{i}" for i in range(1, 6))])
        writer.writerow(
            ["a.wav", "A dog barks, loudly.", "a dog barks", "dog barking", "a dog is barking", "barks"]
        )
        writer.writerow(
            ["b.wav", "Rain falls on a roof.", "rain on a roof", "it rains", "rain falls", "heavy rain"]
        )
    predictions = {"a.wav": "a dog barks", "b.wav": "rain falls on the roof"}
    scores = inference.score_captions(predictions, metrics.read_references(references), spice=False)
    assert (
        scores.corpus == metrics.score(predictions, metrics.read_references(references), spice=False).corpus
    )
    with pytest.raises(metrics.AlignmentError, match="'c.wav'"):
        inference.score_captions(
            {**predictions, "c.wav": "x"}, metrics.read_references(references), spice=False
        )
    extra = inference.score_captions(
        {**predictions, "c.wav": "x"}, metrics.read_references(references), allow_extra=True, spice=False
    )
    assert extra.corpus == scores.corpus


def test_evaluate_checkpoint_on_tfds_split(checkpoint, tmp_path):
    build = tfds_data.build_all(tmp_path)
    config = ml_collections.ConfigDict(_config())
    predictions, references, prefix = evaluate.predict_split(
        str(checkpoint), "audioset", "valid", str(build["audioset_small"].data_dir), config
    )
    assert prefix == "audioset > keywords: "
    assert len(predictions) == 3 and set(predictions) == set(references)
    scores = inference.score_captions(predictions, references, keywords=True, spice=False)
    assert {"cider_d", "keyword_f1_micro", "keyword_precision_macro"} <= set(scores.corpus)
