"""TFDS builders: real-layout raw files -> prepare -> build -> read back without TensorFlow."""

import csv
import importlib
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys

import fsspec
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from audiocap_jax import audio, cli
from audiocap_jax.data import features
from audiocap_jax.ontology import Ontology
from audiocap_jax.testing import layouts, tfds_data

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, tfds_data.TinyBuild]:
    return tfds_data.build_all(tmp_path_factory.mktemp("tfds"))


def _examples(builder, split: str) -> dict[str, dict]:
    """file name -> decoded example of one split."""
    source = builder.as_data_source(split=split)
    return {example["file_name"].decode(): example for example in (source[i] for i in range(len(source)))}


def _texts(values) -> list[str]:
    return [value.decode() for value in values]


def test_splits_keep_every_decodable_clip(builds):
    counts = {
        name: {s: i.num_examples for s, i in b.builder.info.splits.items()} for name, b in builds.items()
    }
    assert counts == {
        "clotho": {"development": 2, "validation": 2, "evaluation": 1, "test": 2},
        "audiocaps": {"train": 4, "valid": 1, "test": 2},
        "audioset_small": {"train": 2, "valid": 3, "test": 2},
    }


def test_broken_and_missing_audio_is_reported_by_name(builds):
    report = {
        name: {
            split: [(s["file_name"], s["reason"].split(":")[0]) for s in info["skipped"]]
            for split, info in features.build_report(b.builder.data_path)["splits"].items()
        }
        for name, b in builds.items()
    }
    assert report == {
        "clotho": {
            "development": [("Santa Motor.wav", "truncated")],
            "validation": [
                ("Train passing.wav", "not a readable audio file (soundfile"),
                ("kitchen_sizzle.wav", "2 of 16000 samples are NaN or infinite"),
            ],
            "evaluation": [("typing_keyboard.wav", "no such file")],
            "test": [],
        },
        "audiocaps": {
            "train": [],
            "valid": [("vJ7JPEFhyLA.mp3", "not a readable audio file (soundfile")],
            "test": [],
        },
        "audioset_small": {"train": [], "valid": [("-6KN5x9rpwo.mp3", "truncated")], "test": []},
    }
    clotho_validation = features.build_report(builds["clotho"].builder.data_path)["splits"]["validation"]
    assert (clotho_validation["num_rows"], clotho_validation["num_skipped"]) == (4, 2)


@pytest.mark.parametrize("name", tfds_data.BUILDERS)
def test_features_equal_log_mel_of_the_audio_file(builds, name):
    build = builds[name]
    for split in build.builder.info.splits:
        for file_name, example in _examples(build.builder, split).items():
            samples = audio.load_audio(build.audiofolder / split / file_name)
            expected = audio.log_mel(samples, n_mels=80)[0]
            assert example["mel"].dtype == np.float16 and example["mel"].shape == (80, 3000)
            # float16 keeps 11 significant bits: |x| <= 2 rounds by at most 2**-10.
            np.testing.assert_allclose(example["mel"].astype(np.float32), expected, rtol=0, atol=2**-10)
            # 0.25 s clips: 4000 samples at 16 kHz start 25 frames of 10 ms.
            assert example["num_frames"] == 25


def test_every_clotho_caption_survives_in_order(builds):
    for split, clips in layouts.CLOTHO_CAPTIONS.items():
        examples = _examples(builds["clotho"].builder, split)
        for file_name, captions in clips:
            if file_name in examples:
                assert _texts(examples[file_name]["captions"]) == list(captions)
    assert sorted(_examples(builds["clotho"].builder, "validation")) == [
        "01 Footsteps on gravel.wav",
        "Birds at dawn – Łódź park.wav",
    ]
    assert [_texts(e["captions"]) for e in _examples(builds["clotho"].builder, "test").values()] == [[], []]


def test_every_audiocaps_caption_survives_in_csv_order(builds):
    for split, rows in layouts.AUDIOCAPS_ROWS.items():
        expected: dict[str, list[str]] = {}
        for row in csv.DictReader([layouts.AUDIOCAPS_HEADER, *rows]):
            expected.setdefault(f"{row['youtube_id']}.mp3", []).append(row["caption"])
        examples = _examples(builds["audiocaps"].builder, split)
        assert {name: _texts(e["captions"]) for name, e in examples.items()} == {
            name: captions for name, captions in expected.items() if name in examples
        }
    valid = _examples(builds["audiocaps"].builder, "valid")
    assert _texts(valid["vfY_TJq7n_U.mp3"]["captions"])[0].startswith("Rustling occurs, ducks quack")
    assert len(valid["vfY_TJq7n_U.mp3"]["captions"]) == 5


def test_audioset_keeps_label_ids_and_keyword_caption(builds):
    ontology = Ontology.load()
    for split, rows in layouts.AUDIOSET_SMALL_ROWS.items():
        examples = _examples(builds["audioset_small"].builder, split)
        for record in map(json.loads, rows):
            example = examples.get(f"{record['youtube_id']}.mp3")
            if example is not None:
                assert _texts(example["labels"]) == record["labels"]
                assert _texts(example["captions"]) == [ontology.keywords(record["labels"])]
    valid = _examples(builds["audioset_small"].builder, "valid")
    assert _texts(valid["--iSerV5DbY.mp3"]["captions"]) == ["domestic sounds - home sounds, hair dryer"]


def test_reading_needs_no_tensorflow(builds):
    """A fresh process reads a split through tfds.data_source without ever importing TensorFlow."""
    code = (
        "import sys\n"
        "import tensorflow_datasets as tfds\n"
        f"source = tfds.data_source('clotho/mel80', split='development', data_dir={str(builds['clotho'].data_dir)!r})\n"
        "print(len(source), sorted(source[i]['file_name'].decode() for i in range(len(source))), "
        "source[0]['mel'].dtype, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "2 ['Café ambience, Paris.wav', 'rain_on_tin_roof_02.wav'] float16 False"


def test_cli_build_of_the_128_bin_config(builds, tmp_path):
    audiofolder = builds["audioset_small"].audiofolder
    env = {**os.environ, features.NUM_WORKERS_ENV: "0"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tfds_builders",
            "build",
            "tfds_builders/audioset_small",
            "--config=mel128",
            f"--manual_dir={audiofolder}",
            f"--data_dir={tmp_path}",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    source = tfds.data_source("audioset_small/mel128", split="valid", data_dir=tmp_path)
    example = source[0]
    samples = audio.load_audio(audiofolder / "valid" / example["file_name"].decode())
    assert example["mel"].shape == (128, 3000)
    np.testing.assert_allclose(example["mel"], audio.log_mel(samples, n_mels=128)[0], rtol=0, atol=2**-10)


def test_parallel_build_is_byte_identical_to_serial(builds, tmp_path):
    serial = builds["clotho"].builder
    parallel = features.build(
        "clotho", manual_dir=builds["clotho"].audiofolder, data_dir=tmp_path, num_workers=2
    )
    serial_files = sorted(p.name for p in serial.data_path.glob("*.array_record*"))
    assert serial_files == sorted(p.name for p in parallel.data_path.glob("*.array_record*"))
    assert len(serial_files) == 4
    for name in serial_files:
        assert (serial.data_path / name).read_bytes() == (parallel.data_path / name).read_bytes(), name
    assert features.build_report(serial.data_path) == features.build_report(parallel.data_path)


# The DirectRunner the issue names: 2 worker processes, each decoding its share of the clips.
DIRECT_RUNNER = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
# Beam's counters of each split: (examples, skipped), the clips that survive in tfds_data's docstring.
BEAM_COUNTS = {
    "clotho": {"development": (2, 1), "validation": (2, 2), "evaluation": (1, 1), "test": (2, 0)},
    "audiocaps": {"train": (4, 0), "valid": (1, 1), "test": (2, 0)},
    "audioset_small": {"train": (2, 0), "valid": (3, 1), "test": (2, 0)},
}


@pytest.mark.parametrize(
    "options, problem",
    [
        ("direct_num_workers=two", "argument --direct_num_workers: invalid int value: 'two'"),
        ("runner", "argument --runner: expected one argument"),
        ("direct_num_worker=2", "Beam has no option direct_num_worker"),
        ("runner=NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
        ("runner=DirectRunner,", "has an empty option"),
    ],
)
def test_malformed_beam_options_are_refused_before_building(tmp_path, options, problem):
    """Beam parses its options lazily: a bad one used to surface as Beam's traceback mid-build, after TFDS
    had created the dataset's folder in --data_dir."""
    pytest.importorskip("apache_beam", reason="the beam extra is not installed (pip install -e '.[beam]')")
    with pytest.raises(ValueError, match=re.escape(problem)):
        features.build(
            "clotho", manual_dir=tmp_path, data_dir=tmp_path / "tfds", beam_pipeline_options=options
        )
    assert not (tmp_path / "tfds").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", tfds_data.BUILDERS)
def test_beam_build_equals_local_build(builds, tmp_path, name):
    """On Beam's DirectRunner (2 processes) each builder writes the local build's examples and skip report."""
    pytest.importorskip("apache_beam", reason="the beam extra is not installed (pip install -e '.[beam]')")
    local = builds[name].builder
    beam_build = features.build(
        name, manual_dir=builds[name].audiofolder, data_dir=tmp_path, beam_pipeline_options=DIRECT_RUNNER
    )
    counts = {
        split: (
            beam_build.beam_counters.get(f"{split}/examples", 0),
            beam_build.beam_counters.get(f"{split}/skipped", 0),
        )
        for split in beam_build.info.splits
    }
    assert counts == BEAM_COUNTS[name]
    assert features.build_report(beam_build.data_path) == features.build_report(local.data_path)
    for split in local.info.splits:
        expected, actual = _examples(local, split), _examples(beam_build, split)
        assert list(actual) == list(expected)  # same keys, in the same (key-hash) record order
        for file_name, example in expected.items():
            assert actual[file_name]["mel"].tobytes() == example["mel"].tobytes(), file_name
            for key in ("num_frames", "file_name", "captions", "labels"):
                np.testing.assert_array_equal(actual[file_name][key], example[key])
    assert sorted(p.name for p in beam_build.data_path.iterdir()) == sorted(
        p.name for p in local.data_path.iterdir()
    )  # the side output files of skipped clips are gone


def test_work_list_keeps_the_job_graph_small(tmp_path):
    """`beam.Create` gets byte ranges of a work list: about as many for 50k clips as for 1k; they read back whole."""
    clips = [features.Clip(i, f"clip_{i:06d}.mp3", [f"caption {i}"], ["/m/09x0r"]) for i in range(50_000)]
    num_ranges, pickled_bytes = {}, {}
    for count in (1_000, 50_000):
        work_list = epath.Path(tmp_path / f"work-{count}.jsonl")
        ranges = features.write_work_list(work_list, clips[:count])
        num_ranges[count], pickled_bytes[count] = len(ranges), len(pickle.dumps(ranges))
        read = [clip for r in ranges for clip in features.read_work_range(r, os.fspath(work_list))]
        assert read == clips[:count]
    assert num_ranges == {1_000: 250, 50_000: 256} and features.MAX_WORK_RANGES == 256
    assert pickled_bytes[50_000] < 4_000, pickled_bytes  # what Create puts into the graph, any clip count
    assert features.write_work_list(epath.Path(tmp_path / "three.jsonl"), clips[:3]) == [
        (0, 96),
        (96, 192),
        (192, 288),
    ]


class _MemoryBucket(MemoryFileSystem):
    """fsspec's in-memory filesystem serving s3:// URLs: a bucket without network, visible in this process only.

    epath sends s3:// to fsspec's "s3" implementation (s3fs in real use); registering this one instead runs a
    build's real bucket code path offline. Not across processes: local builds run in-process (num_workers=0)
    and Beam builds in `in_memory` mode.
    """

    protocol = ("s3",)
    store: dict = {}  # its own files, apart from memory://
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(os.fspath(path).removeprefix("s3://"))


@pytest.fixture(scope="module")
def bucket(builds):
    """s3://tiny/<name>: a copy of each tiny AudioFolder in an in-memory bucket."""
    fsspec.register_implementation("s3", _MemoryBucket, clobber=True)
    epath.backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches the filesystem per scheme
    memory = _MemoryBucket()
    for name, build in builds.items():
        for path in build.audiofolder.rglob("*"):
            if path.is_file():
                memory.pipe_file(f"s3://tiny/{name}/{path.relative_to(build.audiofolder)}", path.read_bytes())
    yield "s3://tiny"
    # fsspec has no public unregister; afterwards s3:// finds s3fs again (if installed).
    importlib.import_module("fsspec.registry")._registry.pop("s3")
    epath.backend.fsspec_backend._get_filesystem.cache_clear()
    _MemoryBucket.store.clear()


@pytest.mark.parametrize(
    ("name", "beam_pipeline_options"),
    [("clotho", None), ("audioset_small", "runner=DirectRunner,direct_running_mode=in_memory")],
)
def test_bucket_manual_dir_builds_like_the_local_folder(
    builds, bucket, tmp_path, name, beam_pipeline_options
):
    """--manual_dir=s3://...: metadata.jsonl, ontology.json and audio read through epath, locally and on Beam."""
    if beam_pipeline_options:
        pytest.importorskip(
            "apache_beam", reason="the beam extra is not installed (pip install -e '.[beam]')"
        )
    local = builds[name].builder
    from_bucket = features.build(
        name,
        manual_dir=f"{bucket}/{name}",
        data_dir=tmp_path,
        num_workers=0,
        beam_pipeline_options=beam_pipeline_options,
    )
    report, local_report = (features.build_report(b.data_path) for b in (from_bucket, local))
    assert report.pop("source") == f"{bucket}/{name}"
    assert report == {key: value for key, value in local_report.items() if key != "source"}
    for split in local.info.splits:
        expected, actual = _examples(local, split), _examples(from_bucket, split)
        assert list(actual) == list(expected)
        for file_name, example in expected.items():
            assert actual[file_name]["mel"].tobytes() == example["mel"].tobytes(), file_name
            for key in ("num_frames", "file_name", "captions", "labels"):
                np.testing.assert_array_equal(actual[file_name][key], example[key])


def test_bucket_without_its_client_names_the_package(tmp_path, monkeypatch):
    """Python and the CLI: one message naming the package, before TFDS fails deep inside on the URL."""
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed (it is not, here)
    message = (
        "--manual_dir=gs://bucket/clotho is a gs:// URL, and reading it needs gcsfs, which is not installed. "
        "Install it where the build starts and on every worker: `pip install gcsfs` (README, 'Builds on "
        "Apache Beam')."
    )
    with pytest.raises(ImportError) as error:
        features.build("clotho", manual_dir="gs://bucket/clotho", data_dir=tmp_path)
    assert str(error.value) == message
    tfds_cli = importlib.import_module("tfds_builders.__main__")
    args = tfds_cli._parse_flags(
        [
            "tfds_builders",
            "build",
            "tfds_builders/clotho",
            "--manual_dir=gs://bucket/clotho",
            f"--data_dir={tmp_path}",
        ]
    )
    with pytest.raises(cli.UserError) as error:
        tfds_cli.check_args(args)
    assert (error.value.problem, error.value.fix) == (
        message,
        "install that package, or copy the AudioFolder here",
    )


def test_beam_loss_names_clips_neither_written_nor_skipped():
    plan = features.SplitPlan(
        num_rows=4,
        clips=[features.Clip(i, f"{i}.wav", ["a caption"], []) for i in range(3)],
        skipped=[features.Skip(3, "3.wav", "the metadata row has no caption")],
    )
    assert features.beam_loss("train", plan, num_written=2, num_skipped=1) is None
    assert features.beam_loss("train", plan, num_written=1, num_skipped=1) == (
        "split train sent 3 clips to the workers but 1 were written and 1 listed as skipped"
    )


def test_cli_refuses_beam_options_without_beam(tmp_path):
    """Without apache-beam, TFDS would drop --beam_pipeline_options and build locally; the CLI stops instead."""
    code = (
        "import runpy, sys\n"
        "sys.modules['apache_beam'] = None  # as if not installed\n"
        f"sys.argv = ['tfds_builders', 'build', 'tfds_builders/clotho', '--manual_dir={tmp_path}', "
        f"'--data_dir={tmp_path}', '--beam_pipeline_options=runner=DirectRunner']\n"
        "runpy.run_module('tfds_builders', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == cli.EXIT_USER
    assert result.stderr.strip().splitlines()[-2:] == [
        "Error: --beam_pipeline_options were given but apache-beam is not installed.",
        "fix: pip install -e '.[beam]' (README, 'Builds on Apache Beam'), or build without Beam options",
    ]


def test_bad_inputs_raise_clear_errors(tmp_path):
    (tmp_path / "not_prepared").mkdir()
    (tmp_path / "not_prepared" / "clip.wav").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="Run `python -m audiocap_jax.data.prepare`"):
        features.build("clotho", manual_dir=tmp_path / "not_prepared", data_dir=tmp_path / "data")
    with pytest.raises(ValueError, match="known builders: audiocaps, audioset_small, clotho"):
        features.load_builder_class("clothoo")
