"""Tests of the AudioFolder preparation commands on tiny datasets in the exact real layouts."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from audiocap_jax.data import prepare
from audiocap_jax.testing import layouts

CLOTHO_VALIDATION = [name for name, _ in layouts.CLOTHO_CAPTIONS["validation"]]
CLOTHO_DEVELOPMENT = [name for name, _ in layouts.CLOTHO_CAPTIONS["development"]]
# The sample `--limit 2 --seed 42` keeps (worked out once, fixed here so a change of the rule shows).
VALIDATION_KEPT_SEED_42 = ["01 Footsteps on gravel.wav", "kitchen_sizzle.wav"]
VALIDATION_MOVED_SEED_42 = ["Birds at dawn – Łódź park.wav", "Train passing.wav"]


def names_in(split_dir: pathlib.Path) -> list[str]:
    return [row["file_name"] for row in prepare.read_metadata(split_dir)]


def audio_files_in(split_dir: pathlib.Path) -> list[str]:
    return sorted(path.name for path in split_dir.iterdir() if path.name != prepare.METADATA_FILE)


# A download command's flags for its annotations and its AudioSet download.
DOWNLOAD_FLAGS = {
    "audiocaps": ("--audiocaps-path", "--audioset-path"),
    "audioset-small": ("--audioset-small-path", "--audioset-full-path"),
}


def download_argv(
    command: str, annotations: pathlib.Path, audioset: pathlib.Path, output: pathlib.Path, *options: str
) -> list[str]:
    """Arguments of a download command: its two inputs, --output, then `options`."""
    annotations_flag, audioset_flag = DOWNLOAD_FLAGS[command]
    return [
        command,
        annotations_flag,
        str(annotations),
        audioset_flag,
        str(audioset),
        "--output",
        str(output),
        *options,
    ]


@pytest.fixture
def clotho_root(tmp_path: pathlib.Path) -> pathlib.Path:
    layouts.write_clotho(tmp_path / "clotho")
    return tmp_path / "clotho"


# ------------------------------------------------------------------------------------------------------
# clotho
# ------------------------------------------------------------------------------------------------------


def test_clotho_writes_caption_rows_unchanged(clotho_root, capsys):
    assert prepare.main(["clotho", str(clotho_root)]) == 0
    audiofolder = clotho_root / "audiofolder"

    development = prepare.read_metadata(audiofolder / "development")
    assert [row["file_name"] for row in development] == [
        "Santa Motor.wav",
        "Café ambience, Paris.wav",
        "rain_on_tin_roof_02.wav",
    ]
    assert development[1] == {
        "file_name": "Café ambience, Paris.wav",
        "caption_1": "People chat in a café, cups clink and a door opens.",
        "caption_2": "An espresso machine hisses while guests talk, laugh and stir their coffee.",
        "caption_3": 'A waiter says "merci" as plates, cups and spoons rattle.',
        "caption_4": "Customers converse over the noise of dishes being stacked.",
        "caption_5": "Crowd murmur in a busy café with a coffee grinder running.",
    }
    # UTF-8 text, not \u escapes: the file reads as the captions do.
    assert "Birds at dawn – Łódź park.wav" in (audiofolder / "validation" / "metadata.jsonl").read_text(
        "utf-8"
    )
    assert prepare.captions_of(prepare.read_metadata(audiofolder / "validation")[2]) == [
        "A train passes by, its horn blowing twice.",
        "A locomotive rumbles past on the tracks, wheels clacking.",
        "The train approaches, passes, and fades into the distance.",
        "Metal wheels screech and clatter as a train goes by.",
        'A train horn sounds "toot toot" as carriages roll past.',
    ]
    assert names_in(audiofolder / "evaluation") == ["Ocean waves, Costa Brava.wav", "typing_keyboard.wav"]
    assert prepare.read_metadata(audiofolder / "test") == [
        {"file_name": "Straßenbahn, Wien.wav"},
        {"file_name": "clotho_test_0001.wav"},
    ]
    for split in prepare.CLOTHO_SPLITS:
        assert prepare.report_path(audiofolder, split).read_text() == "file_name,problem\n"
    assert capsys.readouterr().out.splitlines()[1] == (
        f"validation: 4 clips, 0 left out (listed in {audiofolder / 'report_validation.csv'})"
    )


def test_clotho_reports_rows_without_audio_and_audio_without_rows(tmp_path):
    layouts.write_clotho(
        tmp_path, without_audio=["Train passing.wav"], unlisted_audio={"evaluation": ["stray, extra.wav"]}
    )
    summaries = prepare.prepare_clotho(tmp_path)

    audiofolder = tmp_path / "audiofolder"
    assert {split: s.num_clips for split, s in summaries.items()} == {
        "development": 3,
        "validation": 3,
        "evaluation": 2,
        "test": 2,
    }
    assert summaries["validation"].problems == (prepare.Problem("Train passing.wav", "missing audio"),)
    assert names_in(audiofolder / "validation") == [
        "01 Footsteps on gravel.wav",
        "Birds at dawn – Łódź park.wav",
        "kitchen_sizzle.wav",
    ]
    assert (audiofolder / "report_evaluation.csv").read_text() == (
        'file_name,problem\n"stray, extra.wav",audio file without a caption row\n'
    )


def test_problem_reports_guard_formula_file_names(tmp_path):
    report = tmp_path / "report.csv"
    prepare.write_problems(report, [prepare.Problem("-0RWZT-miFs.wav", "missing audio")])
    assert report.read_text() == "file_name,problem\n'-0RWZT-miFs.wav,missing audio\n"


def test_clotho_names_missing_files_of_the_layout(clotho_root, capsys):
    (clotho_root / "clotho_metadata_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="clotho_metadata_test.csv"):
        prepare.prepare_clotho(clotho_root)
    assert prepare.main(["clotho", str(clotho_root)]) == 2
    assert "clotho_metadata_test.csv" in capsys.readouterr().err


def test_clotho_rejects_a_row_with_an_unquoted_comma(clotho_root):
    path = clotho_root / "clotho_captions_evaluation.csv"
    path.write_text(path.read_text("utf-8") + "extra.wav,a,b,c,d,e,f\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"clotho_captions_evaluation.csv:4 has 7 fields, expected 6"):
        prepare.prepare_clotho(clotho_root)


# ------------------------------------------------------------------------------------------------------
# limit-clotho-split
# ------------------------------------------------------------------------------------------------------


def test_limit_keeps_a_seeded_sample_and_moves_the_rest_into_development(clotho_root, capsys):
    prepare.prepare_clotho(clotho_root)
    audiofolder = clotho_root / "audiofolder"
    captions_before = {row["file_name"]: row for row in prepare.read_metadata(audiofolder / "validation")}

    argv = ["limit-clotho-split", str(audiofolder), "validation", "--limit", "2", "--seed", "42"]
    assert prepare.main(argv) == 0
    assert capsys.readouterr().out == "validation: kept 2 clips, moved 2 into development\n"

    assert names_in(audiofolder / "validation") == VALIDATION_KEPT_SEED_42
    assert audio_files_in(audiofolder / "validation") == VALIDATION_KEPT_SEED_42
    development = prepare.read_metadata(audiofolder / "development")
    assert [row["file_name"] for row in development] == CLOTHO_DEVELOPMENT + VALIDATION_MOVED_SEED_42
    assert development[3:] == [captions_before[name] for name in VALIDATION_MOVED_SEED_42]
    assert audio_files_in(audiofolder / "development") == sorted(
        CLOTHO_DEVELOPMENT + VALIDATION_MOVED_SEED_42
    )
    assert [
        json.loads(line) for line in (audiofolder / "limit_validation.jsonl").read_text("utf-8").splitlines()
    ] == [{"split": "validation", "limit": 2, "seed": 42, "moved_to_development": VALIDATION_MOVED_SEED_42}]


def test_limit_is_idempotent(clotho_root):
    prepare.prepare_clotho(clotho_root)
    audiofolder = clotho_root / "audiofolder"
    prepare.limit_clotho_split(audiofolder, "validation", 2, seed=42)
    snapshot = {path: path.read_bytes() for path in sorted(audiofolder.rglob("*")) if path.is_file()}

    again = prepare.limit_clotho_split(audiofolder, "validation", 2, seed=42)
    other_seed = prepare.limit_clotho_split(audiofolder, "validation", 2, seed=7)

    assert again == other_seed == prepare.LimitResult(kept=tuple(VALIDATION_KEPT_SEED_42), moved=())
    assert {path: path.read_bytes() for path in sorted(audiofolder.rglob("*")) if path.is_file()} == snapshot


def test_limit_refuses_more_clips_than_the_split_has(clotho_root, capsys):
    prepare.prepare_clotho(clotho_root)
    audiofolder = clotho_root / "audiofolder"
    with pytest.raises(
        ValueError, match=r"--limit 5 is larger than the 4 clips of .*validation; nothing was moved"
    ):
        prepare.limit_clotho_split(audiofolder, "validation", 5, seed=42)
    assert prepare.main(["limit-clotho-split", str(audiofolder), "evaluation", "--limit", "3"]) == 2
    assert "--limit 3 is larger than the 2 clips" in capsys.readouterr().err
    assert names_in(audiofolder / "validation") == CLOTHO_VALIDATION
    assert audio_files_in(audiofolder / "development") == sorted(CLOTHO_DEVELOPMENT)
    with pytest.raises(ValueError, match=r"Cannot limit split 'development'"):
        prepare.limit_clotho_split(audiofolder, "development", 1, seed=42)


@pytest.mark.parametrize("interrupted_after", ["first_file_moved", "development_metadata_written"])
def test_limit_finishes_an_interrupted_run_without_duplicates(clotho_root, interrupted_after):
    prepare.prepare_clotho(clotho_root)
    audiofolder = clotho_root / "audiofolder"
    validation, development = audiofolder / "validation", audiofolder / "development"
    # Re-create the state an interrupted run leaves: some moves done, validation's metadata not yet cut.
    moved_rows = [
        row for row in prepare.read_metadata(validation) if row["file_name"] in VALIDATION_MOVED_SEED_42
    ]
    os.replace(validation / VALIDATION_MOVED_SEED_42[0], development / VALIDATION_MOVED_SEED_42[0])
    if interrupted_after == "development_metadata_written":
        os.replace(validation / VALIDATION_MOVED_SEED_42[1], development / VALIDATION_MOVED_SEED_42[1])
        prepare.write_metadata(development, prepare.read_metadata(development) + moved_rows)

    result = prepare.limit_clotho_split(audiofolder, "validation", 2, seed=42)

    assert result == prepare.LimitResult(tuple(VALIDATION_KEPT_SEED_42), tuple(VALIDATION_MOVED_SEED_42))
    assert names_in(validation) == audio_files_in(validation) == VALIDATION_KEPT_SEED_42
    assert names_in(development) == CLOTHO_DEVELOPMENT + VALIDATION_MOVED_SEED_42
    assert audio_files_in(development) == sorted(CLOTHO_DEVELOPMENT + VALIDATION_MOVED_SEED_42)


# ------------------------------------------------------------------------------------------------------
# audiocaps
# ------------------------------------------------------------------------------------------------------


def write_audiocaps_inputs(
    root: pathlib.Path, missing: tuple[str, ...] = ()
) -> tuple[pathlib.Path, pathlib.Path]:
    clips = {yid: folder for yid, folder in layouts.AUDIOCAPS_DOWNLOAD_FOLDERS.items() if yid not in missing}
    return layouts.write_audiocaps(root / "audiocaps"), layouts.write_audioset_download(
        root / "audioset", clips
    )


def test_audiocaps_groups_captions_per_clip_and_searches_every_download_folder(tmp_path):
    audiocaps_dir, audioset_dir = write_audiocaps_inputs(tmp_path, missing=("r1nicOVtvkQ",))
    output = tmp_path / "audiofolder"
    argv = download_argv(
        "audiocaps", audiocaps_dir, audioset_dir, output, "--audio-format", "mp3", "--link", "hardlink"
    )
    assert prepare.main(argv) == 0

    assert prepare.read_metadata(output / "valid") == [
        {
            "file_name": "vJ7JPEFhyLA.mp3",
            "youtube_id": "vJ7JPEFhyLA",
            "start_time": 16,
            "caption_1": "Water flows as men speak and yell",
            "caption_2": "Three men talk while wind blows and some liquid flows",
            "caption_3": "Water flows quickly and a man speaks while other people yell",
            "caption_4": "Water splashes as a man speak nearby followed by a man's voice in the distance and a "
            "woman’s brief gasp",
            "caption_5": "Three men talk while wind blows and liquid flows",
        },
        {
            "file_name": "vfY_TJq7n_U.mp3",
            "youtube_id": "vfY_TJq7n_U",
            "start_time": 130,
            "caption_1": "Rustling occurs, ducks quack and water splashes, followed by an adult female and adult "
            "male speaking and duck calls being blown",
            "caption_2": "Ducks quack as a man speaks and makes a duck sound",
            "caption_3": "Birds chirp and ducks squawk while a man and woman speak",
            "caption_4": "Birds chirp and ducks quack before a man speaks",
            "caption_5": "Ducks quack and a man speaks",
        },
    ]
    # Train keeps its single caption as caption_1; clips come from train_balanced and eval too.
    assert prepare.read_metadata(output / "train") == [
        {
            "file_name": "-5weqk40jaI.mp3",
            "youtube_id": "-5weqk40jaI",
            "start_time": 17,
            "caption_1": "Strong wind against the microphone simultaneously with heavy rain.",
        },
        {
            "file_name": "0-bn-Mo_4g0.mp3",
            "youtube_id": "0-bn-Mo_4g0",
            "start_time": 450,
            "caption_1": "Wind is blowing and it’s raining",
        },
        {
            "file_name": "3eJ9RynJzP8.mp3",
            "youtube_id": "3eJ9RynJzP8",
            "start_time": 80,
            "caption_1": "The wind is blowing, insects are singing, and rustling occurs",
        },
    ]
    assert [len(prepare.captions_of(row)) for row in prepare.read_metadata(output / "test")] == [5, 5]
    assert (output / "report_train.csv").read_text() == "file_name,problem\nr1nicOVtvkQ.mp3,missing audio\n"
    assert (output / "report_test.csv").read_text() == "file_name,problem\n"
    assert os.path.samefile(
        output / "valid" / "vJ7JPEFhyLA.mp3", audioset_dir / "audios/eval/vJ7JPEFhyLA.mp3"
    )
    assert audio_files_in(output / "train") == ["-5weqk40jaI.mp3", "0-bn-Mo_4g0.mp3", "3eJ9RynJzP8.mp3"]


def test_audiocaps_rerun_replaces_links_with_copies_and_keeps_metadata(tmp_path):
    audiocaps_dir, audioset_dir = write_audiocaps_inputs(tmp_path)
    output = tmp_path / "audiofolder"
    prepare.prepare_audiocaps(audiocaps_dir, audioset_dir, output, link="symlink", splits=["test"])
    linked = output / "test" / "VjSEIRnLAh8.mp3"
    assert os.readlink(linked) == str(audioset_dir / "audios/train_balanced/VjSEIRnLAh8.mp3")
    metadata = (output / "test" / prepare.METADATA_FILE).read_bytes()

    summaries = prepare.prepare_audiocaps(audiocaps_dir, audioset_dir, output, link="copy", splits=["test"])

    assert not linked.is_symlink()
    assert linked.read_bytes() == (audioset_dir / "audios/train_balanced/VjSEIRnLAh8.mp3").read_bytes()
    assert (output / "test" / prepare.METADATA_FILE).read_bytes() == metadata
    assert list(summaries) == ["test"] and not (output / "train").exists()


def test_audiocaps_fails_clearly_when_no_clip_is_found(tmp_path):
    audiocaps_dir = layouts.write_audiocaps(tmp_path / "audiocaps")
    audioset_dir = layouts.write_audioset_download(tmp_path / "audioset", {"someOtherId": "eval"})
    with pytest.raises(
        FileNotFoundError, match=r"None of the 2 clips of .*valid.csv were found.*--audio-format"
    ):
        prepare.prepare_audiocaps(audiocaps_dir, audioset_dir, tmp_path / "out", splits=["valid"])
    with pytest.raises(FileNotFoundError, match=r"audios does not exist"):
        prepare.prepare_audiocaps(audiocaps_dir, tmp_path / "nowhere", tmp_path / "out")


# ------------------------------------------------------------------------------------------------------
# audioset-small
# ------------------------------------------------------------------------------------------------------


def test_audioset_small_rows_carry_labels_and_keyword_captions(tmp_path):
    annotations = layouts.write_audioset_small(tmp_path / "annotations")
    folders = layouts.audioset_small_download_folders()
    audioset_dir = layouts.write_audioset_download(
        tmp_path / "audioset", folders, broken={"-7QlZmjk9Oc": "empty"}
    )
    # A second copy in another list: the row's own orig_split folder must win.
    layouts.write_audioset_download(tmp_path / "audioset", {"-0xzrMun0Rs": "train_unbalanced"})
    output = tmp_path / "audiofolder"
    argv = download_argv("audioset-small", annotations, audioset_dir, output, "--link", "symlink")
    assert prepare.main(argv) == 0

    assert prepare.read_metadata(output / "valid") == [
        {
            "file_name": "--iSerV5DbY.mp3",
            "youtube_id": "--iSerV5DbY",
            "start_seconds": 120.0,
            "end_seconds": 130.0,
            "labels": ["/m/03wvsk"],
            "caption_1": "domestic sounds - home sounds, hair dryer",
        },
        {
            "file_name": "-6KN5x9rpwo.mp3",
            "youtube_id": "-6KN5x9rpwo",
            "start_seconds": 50.0,
            "end_seconds": 60.0,
            "labels": ["/m/07bjf", "/m/0dv5r"],
            "caption_1": "camera, single-lens reflex camera, mechanisms",
        },
        {
            "file_name": "-5Kk-m7BmiE.mp3",
            "youtube_id": "-5Kk-m7BmiE",
            "start_seconds": 21.0,
            "end_seconds": 31.0,
            "labels": ["/m/07pyf11", "/m/07qmpdm"],
            "caption_1": "generic impact sounds, flap, onomatopoeia, clatter",
        },
        {
            "file_name": "-0xzrMun0Rs.mp3",
            "youtube_id": "-0xzrMun0Rs",
            "start_seconds": 30.0,
            "end_seconds": 40.0,
            "labels": ["/m/01g90h", "/m/04rlf"],
            "caption_1": "digestive, stomach rumble, music",
        },
    ]
    assert os.readlink(output / "valid" / "-0xzrMun0Rs.mp3") == str(
        audioset_dir / "audios/eval/-0xzrMun0Rs.mp3"
    )
    assert names_in(output / "train") == ["-21GRnZ5a5I.mp3"]
    assert (output / "report_train.csv").read_text() == (
        "file_name,problem\n'-7QlZmjk9Oc.mp3,empty audio file (0 bytes)\n"
    )  # a leading '-' is guarded against spreadsheets (csv_cells)
    assert (output / "ontology.json").read_bytes() == (annotations / "ontology.json").read_bytes()


def test_audioset_small_names_a_missing_annotation_file(tmp_path, capsys):
    annotations = layouts.write_audioset_small(tmp_path / "annotations", splits=["valid", "test"])
    audioset_dir = layouts.write_audioset_download(
        tmp_path / "audioset", layouts.audioset_small_download_folders()
    )
    argv = download_argv("audioset-small", annotations, audioset_dir, tmp_path / "out")
    assert prepare.main(argv) == 2
    assert f"missing: {annotations / 'train.jsonl'}" in capsys.readouterr().err
    assert prepare.main([*argv, "--splits", "valid,test"]) == 0
    assert prepare.main([*argv, "--splits", "valid,dev"]) == 2
    assert (
        "Unknown splits ['dev'] in ['valid', 'dev']; choose from ['train', 'valid', 'test']"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------------------------
# find-corrupted
# ------------------------------------------------------------------------------------------------------

BROKEN_CLOTHO = {
    "Santa Motor.wav": "empty",
    "kitchen_sizzle.wav": "truncated",
    "typing_keyboard.wav": "nan",
    "clotho_test_0001.wav": "not_audio",
}


def test_find_corrupted_names_every_broken_file(tmp_path):
    audiofolder = layouts.write_clotho(tmp_path, broken=BROKEN_CLOTHO)
    problems = prepare.find_corrupted(audiofolder, workers=1)

    assert [problem.file_name for problem in problems] == [
        "development/Santa Motor.wav",
        "evaluation/typing_keyboard.wav",
        "test/clotho_test_0001.wav",
        "validation/kitchen_sizzle.wav",
    ]
    reasons = [problem.problem for problem in problems]
    assert reasons[0] == "the file is empty (0 bytes)"
    assert reasons[1] == "2 of 16000 samples are NaN or infinite"
    assert reasons[2].startswith("not a readable audio file")
    assert reasons[3].startswith("truncated")


def test_find_corrupted_cli_uses_worker_processes_and_sets_the_exit_status(tmp_path):
    broken = layouts.write_clotho(tmp_path / "broken", broken=BROKEN_CLOTHO)
    clean = layouts.write_clotho(tmp_path / "clean")
    report = tmp_path / "corrupted.csv"
    command = [sys.executable, "-m", "audiocap_jax.data.prepare", "find-corrupted", "--workers", "2"]

    found = subprocess.run([*command, str(broken), "--report", str(report)], capture_output=True, text=True)
    assert found.returncode == 3, found.stderr  # cli.EXIT_PARTIAL
    assert [line.split("\t")[0] for line in found.stdout.splitlines()] == [
        "development/Santa Motor.wav",
        "evaluation/typing_keyboard.wav",
        "test/clotho_test_0001.wav",
        "validation/kitchen_sizzle.wav",
    ]
    assert report.read_text().splitlines()[:2] == [
        "file_name,problem",
        "development/Santa Motor.wav,the file is empty (0 bytes)",
    ]
    assert "4 files under" in found.stderr

    none_found = subprocess.run([*command, str(clean)], capture_output=True, text=True)
    assert (none_found.returncode, none_found.stdout) == (0, "")


def test_captions_of_orders_caption_columns_numerically():
    row = {"file_name": "a.wav", "caption_10": "ten", "caption_2": "two", "caption_1": "one", "labels": ["x"]}
    assert prepare.captions_of(row) == ["one", "two", "ten"]


# ------------------------------------------------------------------------------------------------------
# the same rules in every layout: unreadable entries, byte-order marks, uncaptioned rows, empty splits
# ------------------------------------------------------------------------------------------------------


def test_unreadable_directory_entries_are_reported_and_counts_add_up(tmp_path):
    audiofolder = layouts.write_clotho(tmp_path / "clotho")
    development, test = audiofolder / "development", audiofolder / "test"
    (development / "Santa Motor.wav").unlink()
    os.symlink("gone.wav", development / "Santa Motor.wav")  # a listed clip whose link dangles
    os.symlink("loop.wav", development / "loop.wav")  # `ln -s loop.wav loop.wav`, listed nowhere
    os.symlink("loop.wav", test / "loop.wav")

    summaries = prepare.prepare_clotho(tmp_path / "clotho")

    dev = summaries["development"]
    assert [(p.file_name, p.problem) for p in dev.problems] == [
        ("Santa Motor.wav", "unreadable directory entry (No such file or directory)"),
        ("loop.wav", "unreadable directory entry (Too many levels of symbolic links)"),
    ]
    rows, unlisted_entries = len(layouts.CLOTHO_CAPTIONS["development"]), 1
    assert dev.num_clips + len(dev.problems) == rows + unlisted_entries
    assert names_in(development) == ["Café ambience, Paris.wav", "rain_on_tin_roof_02.wav"]
    assert summaries["test"].num_clips == len(layouts.CLOTHO_TEST_FILES)
    assert [p.file_name for p in summaries["test"].problems] == ["loop.wav"]

    audiocaps_dir, audioset_dir = write_audiocaps_inputs(tmp_path)
    download = audioset_dir / "audios" / "eval" / "vJ7JPEFhyLA.mp3"
    download.unlink()
    os.symlink(download.name, download)
    valid = prepare.prepare_audiocaps(audiocaps_dir, audioset_dir, tmp_path / "ac", splits=["valid"])["valid"]
    assert [(p.file_name, p.problem) for p in valid.problems] == [
        ("vJ7JPEFhyLA.mp3", "unreadable directory entry (Too many levels of symbolic links)")
    ]
    assert valid.num_clips == 1


def test_bom_uncaptioned_rows_and_empty_splits_are_reported_alike_in_every_layout(tmp_path, caplog):
    clotho = tmp_path / "clotho"
    layouts.write_clotho(clotho)
    captions = clotho / "clotho_captions_development.csv"
    lines = captions.read_text(encoding="utf-8").split("\n")
    lines[1] = '"Santa Motor.wav",,," ",,'  # every caption empty
    captions.write_text("\ufeff" + "\n".join(lines), encoding="utf-8")
    evaluation = clotho / "clotho_captions_evaluation.csv"
    evaluation.write_text(evaluation.read_text(encoding="utf-8").split("\n")[0] + "\n", encoding="utf-8")

    audiocaps_dir, audioset_dir = write_audiocaps_inputs(tmp_path)
    valid_csv = audiocaps_dir / "valid.csv"
    header, *records = csv.reader(valid_csv.read_text(encoding="utf-8").splitlines())
    records = [[*r[:3], ""] if r[1] == "vfY_TJq7n_U" else r for r in records]  # all its captions empty
    with valid_csv.open("w", encoding="utf-8", newline="") as f:
        f.write("\ufeff")
        csv.writer(f, lineterminator="\n").writerows([header, *records])
    (audiocaps_dir / "test.csv").write_text(",".join(header) + "\n", encoding="utf-8")

    clotho_summaries = prepare.prepare_clotho(clotho)
    audiocaps_summaries = prepare.prepare_audiocaps(audiocaps_dir, audioset_dir, tmp_path / "ac")

    assert [(p.file_name, p.problem) for p in clotho_summaries["development"].problems] == [
        ("Santa Motor.wav", prepare.NO_CAPTION)
    ]
    assert [(p.file_name, p.problem) for p in audiocaps_summaries["valid"].problems] == [
        ("vfY_TJq7n_U.mp3", prepare.NO_CAPTION)
    ]
    assert not (tmp_path / "ac" / "valid" / "vfY_TJq7n_U.mp3").exists()  # left out before copying
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for path in (captions, valid_csv):
        assert f"{path} starts with a UTF-8 byte-order mark (BOM); it is ignored." in warnings
    for split in ("evaluation", "test"):
        assert any(w.startswith(f"{split}: the split is empty (") for w in warnings), warnings
    assert clotho_summaries["evaluation"].num_clips == audiocaps_summaries["test"].num_clips == 0
