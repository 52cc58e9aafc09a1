"""Balanced AudioSet subset selection: a hand-worked toy case, the split, and a run on the real segment CSVs."""

import csv
import json
import pathlib
import re

import numpy as np
import pytest

from audiocap_jax.data import audioset_subset, prepare
from audiocap_jax.ontology import Ontology
from audiocap_jax.testing import layouts

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
AUDIOSET_FULL = SHARED / "audioset_full"
AUDIOCAPS = SHARED / "audiocaps"
needs_shared = pytest.mark.skipif(
    not (AUDIOSET_FULL / "eval.csv").is_file() or not (AUDIOCAPS / "train.csv").is_file(),
    reason=f"the real AudioSet and AudioCaps CSVs are not in {SHARED} (shared/ must sit beside the checkout)",
)

DOG, CAT, MUSIC, SPEECH = "/m/0bt9lr", "/m/01yrx", "/m/04rlf", "/m/09x0r"
# Totals: Dog 2, Cat 3, Music 4, Speech 5, so the queue is Dog, Cat, Music, Speech.
TOY_ROWS = (
    f'dog00000000, 0.000, 10.000, "{DOG}"',
    f'dogcat00000, 0.000, 10.000, "{DOG},{CAT}"',
    f'catmusic000, 0.000, 10.000, "{CAT},{MUSIC}"',
    f'catmusicsp0, 0.000, 10.000, "{CAT},{MUSIC},{SPEECH}"',
    f'music000000, 0.000, 10.000, "{MUSIC}"',
    f'musicspeech, 0.000, 10.000, "{MUSIC},{SPEECH}"',
    f'speech00000, 0.000, 10.000, "{SPEECH}"',
    f'speech00001, 0.000, 10.000, "{SPEECH}"',
    f'speech00002, 0.000, 10.000, "{SPEECH}"',
)


def read_toy(tmp_path, rows=TOY_ROWS):
    path = layouts.write_audioset_segments(tmp_path / "eval_segments.csv", rows)
    segments, *_ = audioset_subset.read_segments([path], Ontology.load())
    return segments


def selected_ids(segments, picked_for):
    return {
        str(segments.youtube_ids[row]): segments.label_ids[picked_for[row]]
        for row in np.flatnonzero(picked_for >= 0)
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rarest_labels_are_served_first_and_clips_without_music_or_speech_preferred(tmp_path, seed):
    # Hand-worked with 2 clips per label, step 1:
    #   Dog (2 clips <= 2) takes both at once -> Dog 2, Cat 1.
    #   Cat needs 1: of its unselected clips catmusic000 (Music only) beats catmusicsp0 (both) -> Cat 2, Music 1.
    #   Music needs 1: music000000 (one of the two) beats catmusicsp0 and musicspeech (both) -> Music 2.
    #   Speech needs 2, one per turn: two of the three Speech-only clips, never the clips with both.
    segments = read_toy(tmp_path)
    preference = audioset_subset.music_speech_preference(segments)
    assert preference.tolist() == [0, 0, 1, 2, 1, 2, 1, 1, 1]
    picked = selected_ids(segments, audioset_subset.select_balanced(segments, 2, 1, seed, preference))
    speech_picks = {youtube_id for youtube_id, label in picked.items() if label == SPEECH}
    assert {k: v for k, v in picked.items() if v != SPEECH} == {
        "dog00000000": DOG,
        "dogcat00000": DOG,
        "catmusic000": CAT,
        "music000000": MUSIC,
    }
    assert len(speech_picks) == 2 and speech_picks < {"speech00000", "speech00001", "speech00002"}


def test_a_large_step_fills_a_label_in_one_turn_and_counts_every_label_of_a_clip(tmp_path):
    # Step 10, 3 per label: Dog (2 <= 3) takes both its clips -> Cat 1. Cat (3 <= 3) takes all its unselected clips
    # at once, catmusicsp0 with both Music and Speech included -> Cat 3, Music 2, Speech 1. Music needs 1 and
    # takes music000000 (one of the two) -> Music 3. Speech needs 2: two Speech-only clips -> Speech 3.
    segments = read_toy(tmp_path)
    picked_for = audioset_subset.select_balanced(
        segments, 3, 10, 0, audioset_subset.music_speech_preference(segments)
    )
    counts = segments.label_counts(np.flatnonzero(picked_for >= 0))
    label = {mid: segments.label_ids.index(mid) for mid in (DOG, CAT, MUSIC, SPEECH)}
    assert [counts[label[mid]] for mid in (DOG, CAT, MUSIC, SPEECH)] == [2, 3, 3, 3]
    assert np.bincount(picked_for[picked_for >= 0]).max() <= 3  # A label's own picks never pass 3.


def test_selection_is_deterministic_for_a_seed_and_depends_on_it(tmp_path):
    segments = read_toy(tmp_path)
    preference = audioset_subset.music_speech_preference(segments)
    runs = [audioset_subset.select_balanced(segments, 2, 1, seed, preference).tolist() for seed in (5, 5)]
    assert runs[0] == runs[1]
    others = {tuple(audioset_subset.select_balanced(segments, 2, 1, seed, preference)) for seed in range(8)}
    assert len(others) > 1


def test_balanced_split_holds_out_per_label_clips_and_respects_keep_in_train(tmp_path):
    segments = read_toy(tmp_path)
    pool = np.ones(segments.num_rows, bool)
    keep = np.zeros(segments.num_rows, bool)
    keep[[6, 7]] = True  # speech00000, speech00001 must stay in training.
    held_out = audioset_subset.balanced_split(segments, pool, 3, np.random.default_rng(0), keep)
    # Labels with >= 3 clips: Cat (all 3 go), Music (3 of 4), Speech (3 of its 3 eligible clips).
    counts = segments.label_counts(np.flatnonzero(held_out))
    assert counts[segments.label_ids.index(CAT)] == 3
    assert counts[segments.label_ids.index(SPEECH)] == 3
    assert not held_out[keep].any()
    assert {2, 3, 8} <= set(np.flatnonzero(held_out).tolist())
    assert not held_out[0]  # Dog has 2 < 3 clips and dog00000000 carries nothing else.

    splits = audioset_subset.split_train_valid_test(segments, pool, 1, seed=0)
    assert list(splits) == ["train", "valid", "test"]
    masks = np.stack(list(splits.values()))
    assert (masks.sum(axis=0) == 1).all()  # Disjoint, and together every selected row.


def test_read_segments_reports_unusable_rows_and_rejects_bad_ones(tmp_path):
    rows = (*TOY_ROWS[:2], 'dog00000000, 5.000, 15.000, "/m/0bt9lr"', 'nolabels000, 0.000, 10.000, ""')
    path = layouts.write_audioset_segments(tmp_path / "train_balanced.csv", rows)
    segments, per_file, duplicates, unlabelled = audioset_subset.read_segments([path], Ontology.load())
    assert (segments.num_rows, per_file, duplicates, unlabelled) == (2, {"train_balanced.csv": 4}, 1, 1)
    assert segments.orig_split.tolist() == ["train_balanced", "train_balanced"]

    bad = layouts.write_audioset_segments(tmp_path / "eval.csv", ('abc, 0.000, "/m/0bt9lr"',))
    with pytest.raises(ValueError, match=r"eval.csv:4 has 3 fields, expected 4"):
        audioset_subset.read_segments([bad], Ontology.load())
    unknown = layouts.write_audioset_segments(tmp_path / "eval.csv", ('abc, 0.000, 10.000, "/m/nope"',))
    with pytest.raises(ValueError, match=r"eval.csv:4 has label '/m/nope', which is not in the ontology"):
        audioset_subset.read_segments([unknown], Ontology.load())
    other = layouts.write_audioset_segments(tmp_path / "mine.csv")
    with pytest.raises(ValueError, match=r"Cannot tell which AudioSet segment list .*mine.csv"):
        audioset_subset.read_segments([other], Ontology.load())


# ----------------------------------------------------------------------------------------------------------
# The real eval and balanced-train CSVs, AudioCaps excluded.
# ----------------------------------------------------------------------------------------------------------

PER_LABEL, STEP, TEST_PER_LABEL = 60, 10, 3


def audiocaps_rows(count):
    """The first AudioCaps train clips as unbalanced-train segment rows: they must never be selected."""
    with (AUDIOCAPS / "train.csv").open(encoding="utf-8", newline="") as f:
        ids = [record["youtube_id"] for record, _ in zip(csv.DictReader(f), range(count), strict=False)]
    return ids, [f'{youtube_id}, 0.000, 10.000, "{DOG}"' for youtube_id in ids]


def run_cli(tmp_path, name, seed=42):
    ids, rows = audiocaps_rows(50)
    unbalanced = layouts.write_audioset_segments(tmp_path / "unbalanced_train_segments.csv", rows)
    output = tmp_path / name
    status = prepare.main(
        [
            "select-audioset-subset",
            "--segments",
            str(AUDIOSET_FULL / "eval.csv"),
            str(AUDIOSET_FULL / "train_balanced.csv"),
            str(unbalanced),
            "--ontology",
            str(AUDIOSET_FULL / "ontology.json"),
            "--exclude-audiocaps",
            str(AUDIOCAPS),
            "--per-label",
            str(PER_LABEL),
            "--step",
            str(STEP),
            "--test-per-label",
            str(TEST_PER_LABEL),
            "--seed",
            str(seed),
            "--output",
            str(output),
        ]
    )
    assert status == 0
    return output, set(ids)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return run_cli(tmp_path_factory.mktemp("subset"), "annotations")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_shared
def test_real_csvs_leave_out_audiocaps_and_balance_labels(real_run, capsys):
    output, audiocaps_ids = real_run
    rows = {split: read_jsonl(output / f"{split}.jsonl") for split in prepare.AUDIOSET_SMALL_SPLITS}
    selected = [row for split_rows in rows.values() for row in split_rows]
    assert not {row["youtube_id"] for row in selected} & audiocaps_ids
    assert len({row["youtube_id"] for row in selected}) == len(selected)
    assert set(selected[0]) == set(prepare.AUDIOSET_SMALL_KEYS)
    assert {row["orig_split"] for row in selected} == {"eval", "train_balanced"}

    with (output / audioset_subset.REPORT_FILE).open(encoding="utf-8", newline="") as f:
        report = list(csv.DictReader(f))
    assert tuple(report[0]) == audioset_subset.REPORT_COLUMNS
    assert len(report) == 527
    for label in report:
        listed, available, selected_count, picked = (
            int(label[k]) for k in ("listed", "available", "selected", "picked")
        )
        assert picked <= PER_LABEL  # A label's own turns never pass its desired count.
        if available <= PER_LABEL:
            assert selected_count == available, label  # Labels with fewer clips than desired get all.
        else:
            assert selected_count >= PER_LABEL, label
        assert sum(int(label[split]) for split in ("train", "valid", "test")) == selected_count
        if selected_count >= 2 * TEST_PER_LABEL:
            assert int(label["test"]) >= TEST_PER_LABEL and int(label["valid"]) >= TEST_PER_LABEL, label
    dog = next(label for label in report if label["label_id"] == DOG)
    assert int(dog["listed"]) - int(dog["available"]) == 50  # The planted AudioCaps rows.
    # Labels that only pass the desired count + step through clips picked for rarer labels they co-occur with:
    over = {label["name"] for label in report if int(label["selected"]) > PER_LABEL + STEP}
    assert {"Music", "Speech", "Vehicle"} <= over
    assert (output / audioset_subset.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_shared
def test_real_subset_reads_back_through_prepare_audioset_small(real_run, tmp_path):
    output, _ = real_run
    valid = read_jsonl(output / "valid.jsonl")
    present = {row["youtube_id"]: row["orig_split"] for row in valid[:3]}
    download = layouts.write_audioset_download(tmp_path / "audioset", present)
    summaries = prepare.prepare_audioset_small(output, download, tmp_path / "folder", splits=["valid"])
    assert summaries["valid"].num_clips == 3
    assert len(summaries["valid"].problems) == len(valid) - 3
    assert {problem.problem for problem in summaries["valid"].problems} == {prepare.MISSING_AUDIO}
    metadata = prepare.read_metadata(tmp_path / "folder" / "valid")
    ontology = Ontology.load(output / prepare.ONTOLOGY_FILE)
    assert [row["caption_1"] for row in metadata] == [ontology.keywords(row["labels"]) for row in valid[:3]]


@needs_shared
def test_two_runs_with_one_seed_write_identical_files(real_run, tmp_path):
    output, _ = real_run
    again, _ = run_cli(tmp_path, "again")
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", audioset_subset.REPORT_FILE):
        assert (again / name).read_bytes() == (output / name).read_bytes(), name
    other, _ = run_cli(tmp_path, "other", seed=7)
    assert (other / "train.jsonl").read_bytes() != (output / "train.jsonl").read_bytes()


def _subset_inputs(tmp_path, rows=TOY_ROWS):
    """A toy segment list, the packaged ontology and the AudioCaps CSVs, as select-audioset-subset reads them."""
    ontology = tmp_path / "ontology.json"
    ontology.write_bytes(pathlib.Path(Ontology.load().source).read_bytes())
    return {
        "segments": layouts.write_audioset_segments(tmp_path / "eval_segments.csv", rows),
        "ontology": ontology,
        "audiocaps": layouts.write_audiocaps(tmp_path / "audiocaps"),
        "output": tmp_path / "out",
    }


def _run_subset(inputs, *extra):
    return prepare.main(
        [
            "select-audioset-subset",
            "--segments",
            str(inputs["segments"]),
            "--ontology",
            str(inputs["ontology"]),
        ]
        + ["--exclude-audiocaps", str(inputs["audiocaps"]), "--output", str(inputs["output"]), *extra]
    )


def _bad_row(row):
    return lambda inputs: layouts.write_audioset_segments(inputs["segments"], (*TOY_ROWS, row))


BAD_SUBSET_INPUTS = {
    "step": (["--step", "0"], None, "--step must be at least 1, got 0", "--step=10"),
    "per-label": (["--per-label", "-5"], None, "--per-label must be at least 1, got -5", "--per-label=1000"),
    "seed": (["--seed", "-1"], None, "--seed must be at least 0", "--seed=42"),
    "ontology-not-a-list": ([], lambda i: i["ontology"].write_text("[1]"), "is not an AudioSet ontology", "ontology.json"),
    "ontology-not-json": ([], lambda i: i["ontology"].write_bytes(b"\xff\xfe"), "--ontology", "ontology.json"),
    "ontology-without-music": (
        [], lambda i: i["ontology"].write_text(json.dumps([{"id": DOG, "name": "Dog", "child_ids": []}])),
        "lacks the labels ['/m/04rlf', '/m/09x0r']", "--ontology",
    ),
    "three-fields": ([], _bad_row("abc, 0.0, 10.0"), "eval_segments.csv:13 has 3 fields, expected 4", "restore"),
    "bad-times": ([], _bad_row(f'abc, x, 10.0, "{DOG}"'), "eval_segments.csv:13 has start/end 'x', '10.0'", "restore"),
    "end-before-start": ([], _bad_row(f'abc, 9.0, 1.0, "{DOG}"'), "0 <= start < end", "restore"),
    "unknown-label": ([], _bad_row('abc, 0.0, 10.0, "/m/nonsense"'), "label '/m/nonsense', which is not", "--ontology"),
    "not-utf8": ([], lambda i: i["segments"].write_bytes(b"abc, 0, 1, \"\xff\"\n"), "is not a UTF-8 CSV line", "restore"),
    "odd-file-name": (
        [], lambda i: i.update(segments=layouts.write_audioset_segments(i["segments"].with_name("segs.csv"))),
        "Cannot tell which AudioSet segment list", "rename it to one of eval_segments.csv",
    ),
    "missing-segments": ([], lambda i: i.update(segments=i["output"].with_name("eval.csv")), "does not exist", "download"),
    "missing-audiocaps": ([], lambda i: (i["audiocaps"] / "test.csv").unlink(), "test.csv does not exist", "--exclude-audiocaps"),
    "output-is-a-file": ([], lambda i: i["output"].write_text(""), "is a file", "pass a folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SUBSET_INPUTS))
def test_cli_refuses_bad_input_with_a_fix_before_writing_anything(tmp_path, capsys, case):
    extra, corrupt, problem, fix = BAD_SUBSET_INPUTS[case]
    inputs = _subset_inputs(tmp_path)
    if corrupt is not None:
        corrupt(inputs)
    assert _run_subset(inputs, *extra) == 2
    err = capsys.readouterr().err
    assert re.search(r"(?i)^error: ", err) and "Traceback" not in err, err
    assert problem in err.split("\nfix: ")[0], err
    assert fix in err.split("\nfix: ")[1], err
    assert not inputs["output"].is_dir()


def test_duplicate_youtube_ids_are_counted_and_named(tmp_path, capsys, caplog):
    rows = (*TOY_ROWS, TOY_ROWS[0], TOY_ROWS[4].replace("0.000, 10.000", "20.000, 30.000"))
    inputs = _subset_inputs(tmp_path, rows)
    assert _run_subset(inputs, "--per-label", "2", "--step", "1", "--test-per-label", "0") == 0
    assert (
        "read 11 segments (eval_segments.csv 11); skipped 2 duplicate YouTube ids" in capsys.readouterr().out
    )
    warning = next(r.getMessage() for r in caplog.records if "repeat a YouTube id" in r.getMessage())
    assert warning.startswith("2 segment rows repeat a YouTube id read before")
    assert (
        "dog00000000 (" in warning
        and "eval_segments.csv:13, first at " in warning
        and "music000000" in warning
    )
