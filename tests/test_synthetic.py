"""The synthetic demo set: deterministic, in the real layouts, learnable (distinct log-mel signatures)."""

import csv
import dataclasses
import importlib.resources
import json
import pathlib

import numpy as np
import pytest
import soundfile

from audiocap_jax import audio
from audiocap_jax import ontology as ontology_module
from audiocap_jax.data import prepare, synthetic
from audiocap_jax.data.prepare import CLOTHO_METADATA_COLUMNS
from audiocap_jax.ontology import Ontology

TINY = dict(num_train=3, num_valid=2, num_test=2, num_clotho_test=1)
NUM_FILES = {"development": 3, "validation": 2, "evaluation": 2, "test": 1}
KINDS = list(synthetic.EVENT_TYPES)
CLIP_SECONDS = 5.0
FRAMES = int(CLIP_SECONDS * audio.SAMPLE_RATE) // audio.HOP_LENGTH  # Log-mel frames of a 5 s clip.


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synthetic.SyntheticSummary:
    return synthetic.write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), seed=0, **TINY)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def _single_event(kind: str, count: int, loud: bool, background: str | None = None) -> synthetic.ClipSpec:
    """A 5 s clip with one event starting at 1 s."""
    event_type = synthetic.EVENT_TYPES[kind]
    seconds = event_type.seconds(count) if event_type.countable else 1.5
    return synthetic.ClipSpec(
        (synthetic.Event(kind, count, loud, 1.0, seconds),), (), background, CLIP_SECONDS
    )


def _log_mels(specs: list[synthetic.ClipSpec], seed: int) -> np.ndarray:
    """[B, 80, FRAMES] log-mel of the rendered clips."""
    clips = [synthetic.render(spec, np.random.default_rng([seed, i])) for i, spec in enumerate(specs)]
    return audio.log_mel(np.stack(clips))[:, :, :FRAMES]


# ----------------------------------------------------------------------------------------------------------
# Determinism and the files on disk.
# ----------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_for_any_worker_count_and_another_seed_differs(dataset, tmp_path):
    parallel = synthetic.write_synthetic_dataset(tmp_path / "parallel", seed=0, workers=2, **TINY)
    other_seed = synthetic.write_synthetic_dataset(tmp_path / "other", seed=1, **TINY)
    reference = _files(dataset.root)
    assert len(reference) == 27  # 8 Clotho + 7 AudioSet clips, 7 CSVs, 3 jsonl, ontology, manifest.
    assert _files(parallel.root) == reference
    different = _files(other_seed.root)
    assert different.keys() == reference.keys()
    changed = {name for name in reference if different[name] != reference[name]}
    assert changed == set(reference) - {"audioset/annotations/ontology.json"}


def test_clotho_files_parse_exactly_as_the_release(dataset):
    root = dataset.clotho_root
    for split, count in NUM_FILES.items():
        audio_names = sorted(path.name for path in (root / "audiofolder" / split).iterdir())
        assert audio_names == [f"synthetic_{split}_{i:05d}.wav" for i in range(count)]
        with (root / f"clotho_metadata_{split}.csv").open(encoding="utf-8", newline="") as f:
            metadata = list(csv.reader(f))
        assert tuple(metadata[0]) == CLOTHO_METADATA_COLUMNS
        assert [row[0] for row in metadata[1:]] == audio_names
        if split == "test":
            assert not (root / f"clotho_captions_{split}.csv").exists()
            continue
        raw = (root / f"clotho_captions_{split}.csv").read_bytes()
        assert raw.startswith(b"file_name,caption_1,caption_2,caption_3,caption_4,caption_5\r\n")
        with (root / f"clotho_captions_{split}.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [row["file_name"] for row in rows] == audio_names
        for row in rows:
            references = [row[f"caption_{i}"] for i in range(1, 6)]
            assert len(set(references)) == 5
            assert all(caption[0].isupper() and caption.endswith(".") for caption in references)


def test_audioset_files_parse_exactly_as_the_subset_annotations(dataset):
    packaged = importlib.resources.files("audiocap_jax") / "assets" / ontology_module.PACKAGED_ONTOLOGY
    real_keys = list(json.loads(packaged.read_text(encoding="utf-8"))[0])  # AudioSet's own field order.
    nodes = json.loads((dataset.audioset_annotations / "ontology.json").read_text(encoding="utf-8"))
    assert all(list(node) == real_keys for node in nodes)
    ontology = Ontology.load(dataset.audioset_annotations / "ontology.json")
    for split, folder, count in (
        ("train", "train_unbalanced", 3),
        ("valid", "train_balanced", 2),
        ("test", "eval", 2),
    ):
        lines = (dataset.audioset_annotations / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == count
        assert lines[0].startswith('{"youtube_id":"syn' + split[:2] + '000000","start_seconds":0.0,')
        assert '"labels":["\\/s\\/' in lines[0]
        for line in lines:
            record = json.loads(line)
            assert tuple(record) == prepare.AUDIOSET_SMALL_KEYS
            assert len(record["youtube_id"]) == 11 and record["orig_split"] == folder
            assert 5.0 <= record["end_seconds"] <= 10.0
            assert all(label in ontology for label in record["labels"])
            assert (dataset.audioset_download / "audios" / folder / f"{record['youtube_id']}.wav").is_file()


def test_audio_is_16khz_mono_pcm_of_5_to_10_seconds(dataset):
    paths = sorted(dataset.root.rglob("*.wav"))
    assert len(paths) == 15
    for path in paths:
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        samples = audio.load_audio(path)
        assert samples.dtype == np.float32
        assert 5.0 <= len(samples) / 16000 <= 10.0
        assert 0.05 < np.abs(samples).max() <= 1.0


def test_rerun_is_a_no_op_and_new_parameters_replace_the_set(dataset, tmp_path):
    root = tmp_path / "set"
    first = synthetic.write_synthetic_dataset(root, seed=0, **TINY)
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*")}
    again = synthetic.write_synthetic_dataset(root, seed=0, **TINY)
    assert (first.generated, again.generated) == (True, False)
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == before

    (root / "clotho" / "audiofolder" / "validation" / "synthetic_validation_00001.wav").unlink()
    assert synthetic.write_synthetic_dataset(root, seed=0, **TINY).generated  # An incomplete set is redone.
    smaller = synthetic.write_synthetic_dataset(root, seed=0, **{**TINY, "num_train": 1})
    assert smaller.generated
    assert len(list((root / "clotho" / "audiofolder" / "development").iterdir())) == 1  # No stale clips.
    assert len(list((root / "audioset" / "audios" / "train_unbalanced").iterdir())) == 1


def test_refuses_a_root_holding_someone_elses_clotho_folder(tmp_path):
    (tmp_path / "clotho").mkdir()
    (tmp_path / "clotho" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by audiocap_jax.data.synthetic"):
        synthetic.write_synthetic_dataset(tmp_path, **TINY)
    assert (tmp_path / "clotho" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="num_valid must be at least 1"):
        synthetic.write_synthetic_dataset(tmp_path / "new", **{**TINY, "num_valid": 0})
    with pytest.raises(ValueError, match=r"max_events must be in 1..3, got 4"):
        synthetic.write_synthetic_dataset(tmp_path / "new", max_events=4, **TINY)


def test_cli_then_both_prepare_commands_accept_the_set(tmp_path, capsys):
    root = tmp_path / "demo"
    argv = ["--num-train", "3", "--num-valid", "2", "--num-test", "2", "--num-clotho-test", "1"]
    assert synthetic.main([str(root), *argv, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Synthetic set written" in printed and "clotho/development 3" in printed
    assert prepare.main(["clotho", str(root / "clotho")]) == 0
    for split, count in NUM_FILES.items():
        rows = prepare.read_metadata(root / "clotho" / "audiofolder" / split)
        assert len(rows) == count
        assert len(prepare.captions_of(rows[0])) == (0 if split == "test" else 5)
        report = prepare.report_path(root / "clotho" / "audiofolder", split).read_text()
        assert report.strip() == "file_name,problem"  # Nothing left out.

    output = root / "audioset" / "audiofolder"
    assert (
        prepare.main(
            [
                "audioset-small",
                "--audioset-small-path",
                str(root / "audioset" / "annotations"),
                "--audioset-full-path",
                str(root / "audioset"),
                "--output",
                str(output),
                "--audio-format",
                "wav",
            ]
        )
        == 0
    )
    ontology = Ontology.load(output / "ontology.json")
    for split, count in (("train", 3), ("valid", 2), ("test", 2)):
        rows = prepare.read_metadata(output / split)
        assert len(rows) == count
        assert all(row["caption_1"] == ontology.keywords(row["labels"]) for row in rows)
        assert all((output / split / row["file_name"]).is_file() for row in rows)
    assert synthetic.main([str(root), *argv]) == 0
    assert "already complete" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# Captions, labels and keywords follow from the clip spec.
# ----------------------------------------------------------------------------------------------------------


def test_captions_labels_and_keywords_of_a_known_clip(tmp_path):
    spec = synthetic.ClipSpec(
        events=(
            synthetic.Event("beep_low", 2, True, 0.5, 0.6),
            synthetic.Event("knock", 3, False, 2.9, 0.86),
            synthetic.Event("hum", 1, True, 4.2, 1.5),
        ),
        pauses=(True, False),
        background="hiss",
        seconds=6.0,
    )
    assert synthetic.captions(spec) == [
        "Two loud low beeps followed, after a pause, by three quiet knocks followed by a loud humming sound "
        "can be heard over a background hiss.",
        "There are two loud low beeps and, after a pause, three quiet knocks and then a loud humming sound "
        "with a hiss in the background.",
        "We hear two loud low beeps and, after a pause, three quiet knocks and then a loud humming sound over "
        "a background hiss.",
        "A recording of two loud low beeps followed, after a pause, by three quiet knocks followed by a loud "
        "humming sound with a hiss in the background.",
        "Two loud low beeps, then, after a pause, three quiet knocks, then a loud humming sound over a "
        "background hiss.",
    ]
    single = _single_event("noise_white", 1, False)
    assert synthetic.captions(single)[1] == "There is a quiet burst of white noise."
    labels = synthetic.label_ids(spec)
    assert labels == ["/s/beep_low", "/s/knock", "/s/hum", "/s/hiss"]
    ontology = Ontology.load(synthetic.write_ontology(tmp_path / "ontology.json"))
    assert ontology.keywords(labels) == "tones, low beep, impacts, knock, hum, noise, hiss"
    assert ontology.keywords(synthetic.label_ids(single)) == "noise, white noise"
    assert len(ontology) == 1 + 4 + 12 + 2


def test_sampled_clips_stay_within_the_grammar():
    specs = [synthetic.sample_clip(np.random.default_rng([5, i])) for i in range(300)]
    assert {len(spec.events) for spec in specs} == {1, 2, 3}
    assert {event.kind for spec in specs for event in spec.events} == set(KINDS)
    assert {spec.background for spec in specs} == {None, "hiss", "rumble"}
    for spec in specs:
        assert 5.0 <= spec.seconds <= 10.0 and len(spec.pauses) == len(spec.events) - 1
        assert len({event.kind for event in spec.events}) == len(spec.events)
        assert spec.events[0].onset >= 0.2 and spec.events[-1].onset + spec.events[-1].seconds <= spec.seconds
        for event, following, pause in zip(spec.events, spec.events[1:], spec.pauses, strict=False):
            gap = following.onset - event.onset - event.seconds
            assert 1.5 <= gap <= 2.0 if pause else 0.3 <= gap <= 0.6
        for event in spec.events:
            assert event.count in ((1, 2, 3) if synthetic.EVENT_TYPES[event.kind].countable else (1,))
    single = [synthetic.sample_clip(np.random.default_rng([5, i]), max_events=1) for i in range(20)]
    assert {len(spec.events) for spec in single} == {1}


# ----------------------------------------------------------------------------------------------------------
# Learnability: what captions say is visible in Whisper's log-mel (10 ms hop).
# ----------------------------------------------------------------------------------------------------------


def _signature(mel: np.ndarray) -> np.ndarray:
    """[81]: the mean spectrum of the event's frames relative to its peak, plus the pitch direction.

    The direction (median frame-to-frame change of the spectral centroid, in mel bins) separates the rising
    from the falling chirp, which share their mean spectrum.
    """
    loudest = mel.max(axis=0)
    active = mel[:, loudest > loudest.max() - 0.25]  # Frames within 10 dB of the loudest.
    spectrum = active.mean(axis=1)
    weights = np.exp(4 * active)
    centroid = (np.arange(len(mel))[:, None] * weights).sum(0) / weights.sum(0)
    return np.append(spectrum - spectrum.max(), np.median(np.diff(centroid)))


def test_every_event_type_has_its_own_log_mel_signature():
    # Centroids from one quiet and one loud clip per type; held-out clips differ in noise, jitter, count.
    train = [_single_event(kind, 1 + i, loud=i == 0) for kind in KINDS for i in range(2)]
    held_out = [_single_event(kind, 3 - i, loud=i == 0) for kind in KINDS for i in range(2)]
    train_signatures = np.array([_signature(mel) for mel in _log_mels(train, seed=1)])
    centroids = train_signatures.reshape(len(KINDS), 2, -1).mean(axis=1)
    signatures = np.array([_signature(mel) for mel in _log_mels(held_out, seed=2)])
    distances = np.linalg.norm(signatures[:, None] - centroids[None], axis=-1)  # --> [clips, kinds]
    predicted = [KINDS[i] for i in distances.argmin(axis=1)]
    assert predicted == [kind for kind in KINDS for _ in range(2)]
    nearest_two = np.sort(distances, axis=1)[:, :2]
    assert np.all(nearest_two[:, 1] > 2 * nearest_two[:, 0])  # Clear margins, not a lucky tie-break.


def test_counts_loudness_and_backgrounds_are_audible():
    countable = [kind for kind in KINDS if synthetic.EVENT_TYPES[kind].countable]
    assert countable == [
        "beep_low",
        "beep_high",
        "chirp_rising",
        "chirp_falling",
        "noise_white",
        "noise_pink",
        "knock",
    ]
    specs = [
        _single_event(kind, count, loud=False, background="hiss") for kind in countable for count in (1, 2, 3)
    ]
    specs += [
        _single_event(kind, 1, loud=loud, background=background)
        for kind in KINDS
        for loud in (False, True)
        for background in ("hiss", "rumble")
    ]
    mels = _log_mels(specs, seed=3)
    counted, rest = mels[: 3 * len(countable)], mels[3 * len(countable) :]
    for mel, spec in zip(counted, specs, strict=False):
        contrast = (mel - np.median(mel, axis=1, keepdims=True)).max(axis=0)  # Rise above the background.
        on = (contrast > contrast.max() / 2).astype(int)
        assert np.sum(np.diff(on) == 1) == spec.events[0].count, spec.events[0]
    levels = []
    for mel, spec in zip(rest, specs[3 * len(countable) :], strict=True):
        event = spec.events[0]
        start, stop = int(event.onset * 100), int((event.onset + event.seconds) * 100)
        event_peaks = mel[:, start:stop].max(axis=1)  # [M]
        above_background = event_peaks - mel[:, stop + 20 :].max(axis=1)
        assert above_background.max() > 0.6, dataclasses.astuple(event)  # > 24 dB above hiss or rumble.
        levels.append(event_peaks[above_background > 0.25].max())  # In the bins the event dominates.
    levels = np.reshape(levels, (len(KINDS), 2, 2))  # [kind, quiet/loud, hiss/rumble]
    assert np.all(levels[:, 1] - levels[:, 0] > 0.25)  # Loud is > 10 dB above quiet.
