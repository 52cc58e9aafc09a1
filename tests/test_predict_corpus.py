"""`predict` at corpus scale: shards over processes and resume, the manifest's refusal, TFDS input, per-clip
sampling keys, and the checks that run before any model loads (exit 2, a `fix:` line, nothing written)."""

import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from audiocap_jax import cli, predict
from audiocap_jax.corpus import worklist
from audiocap_jax.corpus.shards import ShardStore
from audiocap_jax.metrics import caption_files
from audiocap_jax.testing import audio as test_audio
from audiocap_jax.testing import tfds_data
from audiocap_jax.testing.models import save_tiny_hf_whisper

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_CLIPS = 60
# Greedy, short: the tiny model's 2 s window, 4 rows per batch (one per device of a 4-device process).
FAST = ("--config-file.num_beams=1", "--config-file.max_length=16", "--config-file.batch_size=4")


def _config(**overrides):
    config = cli.load_config(cli.PREDICT_CONFIG, "config-file")
    config.update(dict(num_beams=1, max_length=16, batch_size=8), **overrides)  # 8 devices in-process
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_hf")
    save_tiny_hf_whisper(path, seed=3)  # 200 frames: a 2 s window; 64 decoder positions
    return path


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(NUM_CLIPS):
        clip = test_audio.speech_like(0.5, seed=i) if i % 2 else test_audio.tone(0.5, 200.0 + 37 * i)
        test_audio.write_audio(folder / f"clip{i:02d}.wav", clip)
    return folder


def _env(tmp: pathlib.Path, devices: int = 4) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        AUDIOCAP_CACHE=str(tmp / "xla_cache"),
    )


def _command(checkpoint, data, output, *extra):
    return [
        sys.executable, "-m", "audiocap_jax.predict", f"--checkpoint={checkpoint}", f"--data={data}",
        f"--output-file={output}", "--input_workers=1", *FAST, *extra,
    ]  # fmt: skip


def _start(command, tmp, name, processes=1, devices=4):
    """`processes` local processes of 4 devices each (one coordinator); their stderr in tmp/<name><i>.log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = (
        [
            [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
            for i in range(processes)
        ]
        if processes > 1
        else [[]]
    )
    return [
        subprocess.Popen(
            [*command, *flags_],
            cwd=REPO,
            env=_env(tmp, devices),
            stdout=subprocess.DEVNULL,
            stderr=(tmp / f"{name}{i}.log").open("w"),
        )
        for i, flags_ in enumerate(group)
    ]


def _wait(runs, tmp, name, timeout=600):
    for i, run in enumerate(runs):
        code = run.wait(timeout=timeout)
        assert code == 0, (tmp / f"{name}{i}.log").read_text()[-3000:]


def test_two_processes_write_one_process_csv_and_resume_after_a_kill(checkpoint, corpus_dir, tmp_path):
    single, pair = tmp_path / "single.csv", tmp_path / "pair.csv"
    command = _command(checkpoint, corpus_dir, pair, "--shard_size=8")
    runs = _start(_command(checkpoint, corpus_dir, single, "--shard_size=8"), tmp_path, "single")
    runs += _start(command, tmp_path, "pair", processes=2)
    _wait(runs, tmp_path, "run")
    assert pair.read_bytes() == single.read_bytes()
    assert (tmp_path / "pair_nbest.csv").read_bytes() == (tmp_path / "single_nbest.csv").read_bytes()
    rows = list(caption_files.read_predictions_csv(pair))
    assert rows == [f"clip{i:02d}.wav" for i in range(NUM_CLIPS)]  # every clip once, in work-list order
    log = json.loads((tmp_path / "pair_log.json").read_text())
    assert (log["num_files"], log["num_clips"], log["shards"]["total"], log["processes"]) == (60, 60, 8, 2)
    assert set(log["seconds"]) >= {"load", "compile", "input", "decode"}

    # Killed after some shards: the rerun captions only the rest and writes the same CSV.
    resumed = tmp_path / "resumed.csv"
    runs = _start(
        _command(checkpoint, corpus_dir, resumed, "--shard_size=8"), tmp_path, "killed", processes=2
    )
    shards = pathlib.Path(f"{resumed}.shards")
    deadline = time.time() + 600
    while len(ShardStore(shards).finished()) < 2:
        assert all(r.poll() is None for r in runs), (tmp_path / "killed0.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    for run in reversed(runs):
        run.send_signal(signal.SIGKILL)
        run.wait()
    finished = len(ShardStore(shards).finished())
    assert 2 <= finished < 8 and not resumed.exists()
    assert not list(shards.glob(".*partial"))  # nothing half-written
    _wait(
        _start(_command(checkpoint, corpus_dir, resumed, "--shard_size=8"), tmp_path, "rerun", 2),
        tmp_path,
        "rerun",
    )
    assert resumed.read_bytes() == single.read_bytes()
    log = json.loads((tmp_path / "resumed_log.json").read_text())
    assert log["shards"] == {"total": 8, "finished_before": finished, "finished_now": 8 - finished}
    assert log["decoded_now"]["clips"] == NUM_CLIPS - 8 * finished  # the killed run's shards: 8 clips each


def test_sigterm_exits_75_keeps_finished_shards_and_the_rerun_completes(checkpoint, corpus_dir, tmp_path):
    out = tmp_path / "out.csv"
    command = _command(checkpoint, corpus_dir, out, "--shard_size=4", "--config-file.batch_size=1")
    [run] = _start(command, tmp_path, "term", devices=1)
    shards = pathlib.Path(f"{out}.shards")
    while not ShardStore(shards).finished():
        assert run.poll() is None, (tmp_path / "term0.log").read_text()[-3000:]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) == cli.EXIT_PREEMPTED, (tmp_path / "term0.log").read_text()[-3000:]
    finished = len(ShardStore(shards).finished())
    assert finished < 15 and not out.exists() and not list(shards.glob(".*partial"))
    _wait(_start(command, tmp_path, "again", devices=1), tmp_path, "again")
    assert list(caption_files.read_predictions_csv(out)) == [f"clip{i:02d}.wav" for i in range(NUM_CLIPS)]
    assert json.loads((tmp_path / "out_log.json").read_text())["shards"]["finished_before"] == finished


def test_a_changed_decoding_key_is_refused_unless_overwrite(checkpoint, corpus_dir, tmp_path):
    out = tmp_path / "out.csv"
    options = predict.Options(take_first_n=6, shard_size=4, input_workers=0)
    first = predict.predict(str(checkpoint), corpus_dir, out, _config(), options)
    assert first["decoded_now"]["clips"] == 6
    again = predict.predict(str(checkpoint), corpus_dir, out, _config(), options)
    assert (
        again["decoded_now"]["clips"] == 0 and again["shards"]["finished_before"] == 2
    )  # nothing recaptioned
    written = out.read_bytes()
    with pytest.raises(cli.UserError) as error:
        predict.predict(str(checkpoint), corpus_dir, out, _config(max_length=14), options)
    assert "max_length: 16 then, 14 now" in error.value.problem and "--overwrite" in error.value.fix
    assert out.read_bytes() == written
    changed = predict.predict(
        str(checkpoint),
        corpus_dir,
        out,
        _config(max_length=14),
        predict.Options(**{**vars(options), "overwrite": True}),
    )
    assert changed["decoded_now"]["clips"] == 6


def test_tfds_split_gives_the_captions_of_its_audio_folder(checkpoint, tmp_path_factory, tmp_path):
    build = tfds_data.build_all(tmp_path_factory.mktemp("tfds"))["audioset_small"]
    folder = build.audiofolder / "train"
    config = _config(style="audioset > keywords")
    options = predict.Options(data_dir=str(build.data_dir), input_workers=0)
    from_tfds = predict.predict(str(checkpoint), "tfds:audioset/train", tmp_path / "t.csv", config, options)
    predict.predict(str(checkpoint), folder, tmp_path / "a.csv", config, options)
    by_tfds = caption_files.read_predictions_csv(tmp_path / "t.csv")
    by_audio = caption_files.read_predictions_csv(tmp_path / "a.csv")
    assert from_tfds["num_clips"] == 2 and set(by_tfds) <= set(by_audio)
    assert {name: by_audio[name] for name in by_tfds} == by_tfds


def test_a_clip_samples_the_same_caption_whatever_the_batch_and_the_other_files(
    checkpoint, corpus_dir, tmp_path
):
    """One device per process, so batches of 1 and 3 both split; clip01 alone (two masked rows) too."""
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "clip01.wav").symlink_to(corpus_dir / "clip01.wav")
    sampling = ("--config-file.strategy=sample", "--config-file.num_samples=2", "--config-file.temperature=2.0",
                "--config-file.seed=5", "--take-first-n=3")  # fmt: skip
    runs = {
        (data.name, batch): subprocess.Popen(
            [
                *_command(checkpoint, data, tmp_path / f"{data.name}{batch}.csv", *sampling),
                f"--config-file.batch_size={batch}",
            ],
            cwd=REPO,
            env=_env(tmp_path, devices=1),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        for data, batch in ((corpus_dir, 1), (corpus_dir, 3), (alone, 3))
    }
    for run in runs.values():
        assert run.wait(timeout=600) == 0, run.stderr.read()[-3000:]
    one, three, single = (
        caption_files.read_predictions_csv(tmp_path / f"{name}{batch}.csv") for name, batch in runs
    )
    assert len(one) == 3 and one == three and single["clip01.wav"] == one["clip01.wav"]


def test_work_lists_from_a_text_file_and_predict_outputs_are_not_audio(corpus_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{corpus_dir / 'clip03.wav'}\n\nsub/b.wav\n", encoding="utf-8")
    work = worklist.read_work_list(f"@{listing}")
    assert work.names == (str(corpus_dir / "clip03.wav"), "sub/b.wav")
    assert work.paths[1] == str(tmp_path / "sub" / "b.wav")
    folder = tmp_path / "clips"
    folder.mkdir()
    test_audio.write_audio(folder / "a.wav", test_audio.tone(0.5, 440.0))
    for name in ("old.wav", "old_nbest.wav"):  # an earlier run's outputs, named like audio
        (folder / name).write_text("file_name,caption_predicted\n")
    (folder / "old_log.json").write_text(
        json.dumps({"output_file": str(folder / "old.wav"), "nbest_file": str(folder / "old_nbest.wav")})
    )
    (folder / "new.wav.shards").mkdir()
    (folder / "new.wav.shards" / "0.wav").write_text("")
    outputs = (folder / "new.wav", folder / "new.wav.shards")
    (folder / "new.wav").write_text("")
    assert worklist.read_work_list(str(folder), recursive=True, outputs=outputs).names == ("a.wav",)


def _run_cli(tmp, *args):
    return subprocess.run(
        [sys.executable, "-m", "audiocap_jax.predict", *FAST, *args], cwd=REPO, env=_env(tmp),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "case, problem",
    [
        ("max_length", "is longer than the 64 decoder positions"),
        ("empty_output", "--output-file is empty"),
        ("proc_output", "cannot write /proc/out.csv.shards"),
        ("duplicate_list", "is listed twice"),
    ],
)
def test_predict_refuses_before_loading_and_writes_nothing(checkpoint, corpus_dir, tmp_path, case, problem):
    data, output, extra = str(corpus_dir), str(tmp_path / "out.csv"), []
    if case == "max_length":
        extra = ["--config-file.max_length=65"]
    elif case == "empty_output":
        output = ""
    elif case == "proc_output":
        output = "/proc/out.csv"
    else:
        (tmp_path / "list.txt").write_text(f"{corpus_dir / 'clip00.wav'}\n{corpus_dir / 'clip00.wav'}\n")
        data = f"@{tmp_path / 'list.txt'}"
    before = sorted(tmp_path.rglob("*"))
    result = _run_cli(
        tmp_path.parent, f"--checkpoint={checkpoint}", f"--data={data}", f"--output-file={output}", *extra
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert problem in result.stderr and "\nfix: " in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(tmp_path.rglob("*")) == before and not pathlib.Path("/proc/out.csv.shards").exists()


def test_windows_log_counts_files_and_windows(checkpoint, tmp_path, caplog):
    folder = tmp_path / "long"
    folder.mkdir()
    test_audio.write_audio(folder / "long.wav", test_audio.speech_like(5.0, seed=1))  # 3 windows of 2 s
    log = predict.predict(
        str(checkpoint),
        folder,
        tmp_path / "w.csv",
        _config(long_audio="windows"),
        predict.Options(input_workers=0),
    )
    assert (log["num_files"], log["num_captioned"], log["num_clips"]) == (1, 1, 3)
    assert list(caption_files.read_predictions_csv(tmp_path / "w.csv")) == [
        "long.wav#t=0",
        "long.wav#t=2",
        "long.wav#t=4",
    ]
    with (tmp_path / "w_nbest.csv").open(newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 3
