"""The error convention of every command (audiocap_jax/cli.py), run as the user runs them, in processes.

Each bad input must exit 2 with `Error:` naming the key or file and a `fix:` line, no traceback unless asked,
and no output file. The cases fail in pre-flight by design, before any model loads, so a case costs little
beyond importing jax/TFDS (3 s of CPU; far more on a loaded machine). So the cases of one command share that
import: one subprocess imports the command's dependencies, then forks one child per case that runs the
command's `__main__` with the case's argv (`runpy`, as `python -m` does) and records its own exit code,
stdout and stderr. `--help` and the traceback switches run as plain subprocesses.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from audiocap_jax import cli
from audiocap_jax.data import features
from audiocap_jax.testing import audio as test_audio
from audiocap_jax.testing import tfds_data
from audiocap_jax.testing.models import save_tiny_hf_whisper

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Placeholders of the cases: a tiny HF checkpoint, audio folders, a Clotho TFDS build, CSVs, a file."""
    root = tmp_path_factory.mktemp("cli")
    save_tiny_hf_whisper(root / "ckpt", seed=1)
    clips = root / "clips"
    clips.mkdir()
    test_audio.write_audio(clips / "a.wav", test_audio.tone(1.0, 440.0))
    test_audio.write_audio(clips / "b.wav", test_audio.noise(1.0))
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder")
    audiofolders = tfds_data.write_audiofolders(root / "raw")
    features.build("clotho", manual_dir=audiofolders["clotho"], data_dir=root / "tfds", num_workers=0)
    references = root / "references.csv"
    with references.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["file_name", "caption_1"], ["a.wav", "a tone"], ["b.wav", "some noise"]])
    (root / "extra.csv").write_text("file_name,caption_predicted\na.wav,a tone\nb.wav,noise\nc.wav,extra\n")
    (root / "missing.csv").write_text("file_name,caption_predicted\na.wav,a tone\n")
    (root / "bad_header.csv").write_text("name,caption\na.wav,a tone\n")
    return {
        "ckpt": str(root / "ckpt"),
        "clips": str(clips),
        "empty": str(root / "empty"),
        "file": str(root / "a_file"),
        "tfds": str(root / "tfds"),
        "clotho_af": str(audiofolders["clotho"]),
        "refs": str(references),
        "root": str(root),
    }


def _run(module: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` (or `python -c SCRIPT args` for module "-c") from the repository root."""
    return subprocess.run(
        [sys.executable, *(["-c"] if module == "-c" else ["-m", module]), *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


# Forks one child per case after importing what the commands import (not the commands themselves, which
# define their absl flags when run): argv = module, cases JSON, results folder, the folder no case may create.
_FORK_RUNNER = """
import json, os, runpy, shutil, sys, traceback
module, cases, out, forbidden = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
for name in ("jax", "flax.nnx", "orbax.checkpoint", "tensorflow_datasets", "audiocap_jax.decoding.inference",
             "audiocap_jax.decoding.search", "audiocap_jax.rundir.load", "audiocap_jax.metrics.scoring", "audiocap_jax.preflight",
             "audiocap_jax.rundir.train_step", "audiocap_jax.report", "audiocap_jax.data.features"):
    __import__(name)
for index, args in enumerate(cases):
    pid = os.fork()
    if pid == 0:
        for fd, suffix in ((1, "out"), (2, "err")):
            os.dup2(os.open(f"{out}/{index}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv, code = [module, *args], 0
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (print(stop.code, file=sys.stderr) or 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with open(f"{out}/{index}.json", "w") as f:
        json.dump({"code": code, "created": os.path.exists(forbidden)}, f)
    shutil.rmtree(forbidden, ignore_errors=True)  # the next case starts clean
"""


PREDICT = ["--checkpoint={ckpt}", "--data={clips}", "--output-file={root}/out/p.csv"]
EVALUATE = ["--checkpoint={ckpt}", "--data_dir={tfds}", "--output_dir={root}/out/e"]
SCORE = ["--predictions={root}/missing.csv", "--references={refs}", "--output_dir={root}/out/e"]
TRAIN = ["--config=configs/smoke.py", "--workdir={root}/out/w", "--config.data.data_dir={tfds}"]
LORA = [
    "--config.model.lora.rank=4",
    "--config.model.lora.alpha=8",
    '--config.model.lora.targets=("q_proj",)',
]
TFDS = ["build", "tfds_builders/clotho", "--manual_dir={clotho_af}", "--data_dir={root}/out/t"]

# (id, module, arguments, texts the message must contain: the key or file, and the fix)
CASES = [
    ("predict-key-typo", "audiocap_jax.predict", [*PREDICT, "--config-file.num_beam=3"],
     ["--config-file.num_beam:", "did you mean --config-file.num_beams"]),
    ("predict-negative-take-first-n", "audiocap_jax.predict", [*PREDICT, "--take-first-n=-1"],
     ["--take-first-n=-1 is negative", "0 for all"]),
    ("predict-step-not-a-number", "audiocap_jax.predict", [*PREDICT, "--config-file.step=nonsense"],
     ["--config-file.step='nonsense'", "--config-file.step=latest"]),
    ("predict-zero-beams", "audiocap_jax.predict", [*PREDICT, "--config-file.num_beams=0"],
     ["--config-file.num_beams=0 must be >= 1", "--config-file.num_beams=1"]),
    ("predict-max-length-below-prompt", "audiocap_jax.predict", [*PREDICT, "--config-file.max_length=8"],
     ["--config-file.max_length=8", "11-token prompt", "above 11"]),
    ("predict-bad-style", "audiocap_jax.predict", [*PREDICT, "--config-file.style=captions"],
     ["--config-file.style", "'clotho > caption'"]),
    ("predict-bad-choice", "audiocap_jax.predict", [*PREDICT, "--config-file.long_audio=split"],
     ["--config-file.long_audio='split'", "truncate, windows"]),
    ("predict-wrong-type", "audiocap_jax.predict", [*PREDICT, "--config-file.batch_size=many"],
     ["--config-file.batch_size=many", "takes a whole number", "--config-file.batch_size=8"]),
    ("predict-output-is-a-folder", "audiocap_jax.predict",
     ["--checkpoint={ckpt}", "--data={clips}", "--output-file={clips}"], ["--output-file=", "is a directory"]),
    ("predict-output-under-a-file", "audiocap_jax.predict",
     ["--checkpoint={ckpt}", "--data={clips}", "--output-file={file}/p.csv"], ["a_file is a file", "choose another"]),
    ("predict-missing-data", "audiocap_jax.predict", [*PREDICT[:1], "--data={root}/nope", *PREDICT[2:]],
     ["--data=", "nope is not a folder", "pass the folder"]),
    ("predict-no-audio", "audiocap_jax.predict", [*PREDICT[:1], "--data={empty}", *PREDICT[2:]],
     ["holds no audio files", "--recursive"]),
    ("predict-missing-checkpoint", "audiocap_jax.predict", ["--checkpoint={root}/nope", *PREDICT[1:]],
     ["--checkpoint=", "nope is not a directory", "hub id"]),
    ("predict-missing-flag", "audiocap_jax.predict", PREDICT[:2], ["--output-file is required", "--help"]),
    ("predict-missing-config-file", "audiocap_jax.predict", [*PREDICT, "--config-file={root}/nope.py"],
     ["nope.py: no such config file", "configs/smoke.py"]),
    ("evaluate-missing-predictions", "audiocap_jax.evaluate",
     ["--predictions={root}/nope.csv", "--references={refs}", "--output_dir={root}/out/e"], ["--predictions=", "nope.csv does not exist"]),
    ("evaluate-extra-predictions", "audiocap_jax.evaluate",
     ["--predictions={root}/extra.csv", "--references={refs}", "--output_dir={root}/out/e"], ["'c.wav'", "pass --allow_extra"]),
    ("evaluate-missing-predictions-rows", "audiocap_jax.evaluate",
     ["--predictions={root}/missing.csv", "--references={refs}", "--output_dir={root}/out/e"], ["'b.wav'", "pass --allow_missing"]),
    ("evaluate-bad-header", "audiocap_jax.evaluate",
     ["--predictions={root}/bad_header.csv", "--references={refs}", "--output_dir={root}/out/e"], ["bad_header.csv", "lacks columns"]),
    ("evaluate-spice-required", "audiocap_jax.evaluate", [*EVALUATE, "--dataset=clotho", "--spice=on"],
     ["--spice=on: SPICE unavailable", "--spice=off"]),
    ("evaluate-unknown-dataset", "audiocap_jax.evaluate", [*EVALUATE, "--dataset=wavcaps"],
     ["--dataset='wavcaps'", "clotho, audiocaps, audioset"]),
    ("evaluate-unknown-split", "audiocap_jax.evaluate", [*EVALUATE, "--dataset=clotho", "--split=valid"],
     ["has no split 'valid'", "development", "validation"]),
    ("evaluate-missing-data-dir", "audiocap_jax.evaluate",
     ["--checkpoint={ckpt}", "--dataset=clotho", "--data_dir={root}/nope", "--output_dir={root}/out/e"],
     ["--data_dir=", "nope does not exist", "python -m tfds_builders build"]),
    ("evaluate-checkpoint-without-dataset", "audiocap_jax.evaluate", EVALUATE, ["--checkpoint needs --dataset"]),
    ("evaluate-negative-bootstrap", "audiocap_jax.evaluate", [*SCORE, "--bootstrap=-1"],
     ["--bootstrap=-1 is negative", "--bootstrap=1000"]),
    ("evaluate-metrics-model-dir-empty", "audiocap_jax.evaluate", [*SCORE, "--metrics=dcase2024", "--metrics_model_dir={empty}"],
     ["--metrics_model_dir=", "lacks paraphrase-TinyBERT-L6-v2/modules.json", "metrics.dcase download"]),
    ("evaluate-metrics-model-dir-file", "audiocap_jax.evaluate", [*SCORE, "--metrics_model_dir={file}"],
     ["a_file is a file, not the folder", "metrics.dcase download"]),
    ("train-key-typo", "audiocap_jax.train", [*TRAIN, "--config.optim.learning_rate=1e-3"],
     ["--config.optim.learning_rate:", "did you mean --config.optim.lr?"]),
    ("train-section-typo", "audiocap_jax.train", [*TRAIN, "--config.optimizer.lr=1e-3"],
     ["no key 'optimizer.lr'", "--config has:", "--help"]),
    ("train-negative-lr", "audiocap_jax.train", [*TRAIN, "--config.optim.lr=-1"],
     ["--config.optim.lr=-1", "positive rate"]),
    ("train-warmup-past-end", "audiocap_jax.train", [*TRAIN, "--config.optim.warmup_steps=10"],
     ["--config.optim.warmup_steps=10", "below 10"]),
    ("train-no-positive-weight", "audiocap_jax.train", [*TRAIN, "--config.data.mixture.clotho=0"],
     ["no dataset has a positive weight", "--config.data.mixture.clotho=1"]),
    ("train-negative-weight", "audiocap_jax.train", [*TRAIN, "--config.data.mixture.audioset=-1"],
     ["--config.data.mixture.audioset=-1.0 is negative", "0 or more"]),
    ("train-batch-over-mesh", "audiocap_jax.train", [*TRAIN, "--config.batch_size=12"],
     ["--config.batch_size: 12 examples", "multiple of 8"]),
    ("train-mesh-does-not-fit", "audiocap_jax.train", [*TRAIN, "--config.mesh.data=3"],
     ["does not fit the 8 visible devices", "multiply to 8"]),
    ("train-zero-eval-beams", "audiocap_jax.train", [*TRAIN, "--config.eval.num_beams=0"],
     ["--config.eval.num_beams=0", "greedy"]),
    ("train-max-length-below-prompt", "audiocap_jax.train", [*TRAIN, "--config.data.max_length=10"],
     ["--config.data.max_length=10", "11-token prompt"]),
    ("train-unknown-split", "audiocap_jax.train", [*TRAIN, "--config.eval.datasets.clotho=valid"],
     ["--config.eval.datasets.clotho", "has no split 'valid'"]),
    ("train-missing-data-dir", "audiocap_jax.train",
     [*TRAIN[:2], "--config.data.data_dir={root}/nope"], ["--config.data.data_dir=", "python -m tfds_builders build"]),
    ("train-config-arg", "audiocap_jax.train", ["--config=configs/base.py:size=small", "--workdir={root}/out/w"],
     ["Unknown config argument 'size'", "after ':'"]),
    ("train-lora-negative-rank", "audiocap_jax.train", [*TRAIN, "--config.model.lora.rank=-1"],
     ["--config.model.lora.rank=-1 is negative", "a positive rank"]),
    ("train-lora-rank-0-with-targets", "audiocap_jax.train", [*TRAIN, '--config.model.lora.targets=("q_proj",)'],
     ["rank=0 means no LoRA (every weight trains)", "targets=('q_proj',)", "a positive rank"]),
    ("train-lora-dropout", "audiocap_jax.train", [*TRAIN, *LORA, "--config.model.lora.dropout=1.5"],
     ["--config.model.lora.dropout=1.5 is outside [0, 1)", "e.g. 0.05"]),
    ("train-lora-bias", "audiocap_jax.train", [*TRAIN, *LORA, "--config.model.lora.bias=some"],
     ["--config.model.lora.bias='some'", "none, all, lora_only"]),
    ("train-lora-unknown-target", "audiocap_jax.train",
     [*TRAIN, *LORA[:2], '--config.model.lora.targets=("query",)'], ["['query'] match no layer", "'q_proj'"]),
    ("train-lora-and-train-only", "audiocap_jax.train", [*TRAIN, *LORA, '--config.optim.train_only=("fc1",)'],
     ["train_only=['fc1'] and --config.model.lora both choose", "leave --config.optim.train_only empty"]),
    ("report-not-a-workdir", "audiocap_jax.report", ["{empty}"], ["holds no training log", "--workdir of a"]),
    ("dcase-metrics-unknown-command", "audiocap_jax.metrics.dcase", ["fetch"],
     ["the only command is `download`; got ['fetch']", "download [--model_dir=DIR]"]),
    ("tfds-unknown-builder", "tfds_builders", ["build", "tfds_builders/wavcaps", "--manual_dir={clotho_af}"],
     ["No TFDS builder 'wavcaps'", "known builders: audiocaps, audioset_small, clotho"]),
    ("tfds-unknown-config", "tfds_builders", [*TFDS, "--config=mel64"], ["--config=mel64", "mel80, mel128"]),
    ("tfds-manual-dir-without-splits", "tfds_builders", [*TFDS[:2], "--manual_dir={empty}", *TFDS[3:]],
     ["No split folder with metadata.jsonl", "python -m audiocap_jax.data.prepare"]),
    ("tfds-malformed-beam-options", "tfds_builders", [*TFDS, "--beam_pipeline_options=direct_num_workers=two"],
     ["--beam_pipeline_options='direct_num_workers=two'", "invalid int value", "runner=DirectRunner"]),
    ("tfds-data-dir-under-a-file", "tfds_builders", [*TFDS[:3], "--data_dir={file}/t"],
     ["a_file is a file", "choose another --data_dir"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def results(paths, tmp_path_factory) -> Callable[[str], subprocess.CompletedProcess]:
    """Case id -> its (exit code, stdout, stderr); the cases of a command run together, when first needed.

    Whether a case created <root>/out (where every output path of the cases lies) is recorded in the
    result's `created` attribute; the runner then removes it, so each case starts clean.
    """
    done: dict[str, subprocess.CompletedProcess] = {}

    def run_module(module: str) -> None:
        cases = [(c[0], [arg.format(**paths) for arg in c[2]]) for c in CASES if c[1] == module]
        out = tmp_path_factory.mktemp(module.replace(".", "_"))
        (out / "cases.json").write_text(json.dumps([args for _, args in cases]))
        forbidden = pathlib.Path(paths["root"]) / "out"
        runner = _run("-c", [_FORK_RUNNER, module, str(out / "cases.json"), str(out), str(forbidden)])
        assert runner.returncode == 0, runner.stderr[-3000:]
        for index, (case_id, args) in enumerate(cases):
            outcome = json.loads((out / f"{index}.json").read_text())
            done[case_id] = subprocess.CompletedProcess(
                [module, *args],
                outcome["code"],
                (out / f"{index}.out").read_text(),
                (out / f"{index}.err").read_text(),
            )
            done[case_id].created = outcome["created"]

    def result_of(case_id: str) -> subprocess.CompletedProcess:
        if case_id not in done:
            run_module(next(c[1] for c in CASES if c[0] == case_id))
        return done[case_id]

    return result_of


@pytest.mark.parametrize("case_id, expected", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_user_error(paths, results, case_id, expected):
    result = results(case_id)
    assert result.returncode == cli.EXIT_USER, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.rindex("Error: ") :]
    assert "\nfix: " in message, message
    for text in expected:
        assert text in message, message
    assert not result.created  # no output file, no workdir, no output folder


def test_traceback_on_request(paths):
    args = [arg.format(**paths) for arg in [*PREDICT, "--take-first-n=-1"]]
    for extra_args, env in (([], {"AUDIOCAP_TRACEBACK": "1"}), (["--verbosity=1"], {})):
        result = _run("audiocap_jax.predict", [*args, *extra_args], env)
        assert result.returncode == cli.EXIT_USER
        assert "Traceback" in result.stderr and "Error: --take-first-n=-1 is negative" in result.stderr


@pytest.mark.parametrize(
    "module, args, lines",
    [
        (
            "audiocap_jax.predict",
            [],
            ["--take-first-n", "num_beams", "  style  ", "the forced dataset/style prefix"],
        ),
        (
            "audiocap_jax.evaluate",
            [],
            ["allow_extra: Ignore predictions", "long_audio", "caption every window"],
        ),
        ("audiocap_jax.report", [], ["python -m audiocap_jax.report WORKDIR"]),
        ("audiocap_jax.metrics.dcase", [], ["--model_dir", "python -m audiocap_jax.metrics.dcase download"]),
        (
            "audiocap_jax.train",
            ["--config=configs/smoke.py"],
            [
                "--workdir",
                "optim.lr",
                "0.001",
                "data.max_length",
                "tokens per sequence counting the forced prompt",
            ],
        ),
    ],
)
def test_help_lists_config_keys(module, args, lines):
    result = _run(
        module, [*args, "--help"], env={"JAX_PLATFORMS": "no_such_platform"}
    )  # a backend would fail
    assert result.returncode == cli.EXIT_OK, result.stderr[-3000:]
    for line in lines:
        assert line in result.stdout


def test_config_comments_and_override_suggestions():
    comments = cli.config_comments(REPO / "configs" / "demo.py")
    assert comments["model.conv_init_std"].startswith("HF's N(0, 0.02^2) makes the input convolutions")
    assert (
        comments["model.arch_overrides.max_source_positions"]
        == "1000 mel frames = 10 s, the longest synthetic clip"
    )
    assert comments["batch_size"] == "global, over all devices and processes"  # from base.py
    assert comments["data.synthetic.root"] == 'raw layouts + AudioFolders; "" = <workdir>/data/synthetic'
    config = cli.load_config(str(REPO / "configs" / "smoke.py"), "config")
    with pytest.raises(cli.UserError, match=r"did you mean --config\.eval\.num_beams\b"):
        cli.check_overrides(["--config.eval.numbeams=2"], "config", config, "train")
    cli.check_overrides(["--config.eval.num_beams=2", "--config.mesh.data", "4"], "config", config, "train")
