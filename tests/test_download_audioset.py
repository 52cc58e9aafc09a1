"""Tests of scripts/download_audioset.sh with a fake yt-dlp: YouTube is out of reach, the script's logic is not.

Each test runs the script with a PATH holding only a fake `yt-dlp` and `ffmpeg` plus links to the few
standard tools the script uses, so a real yt-dlp on the machine can never be called.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

from audiocap_jax.testing import layouts

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "download_audioset.sh"
STANDARD_TOOLS = ("awk", "cat", "grep", "mkdir", "mktemp", "mv", "nproc", "rm", "sed", "tail", "tr", "xargs")

# Records its arguments, then writes "<id> <sections>" where `-o` points (with %(ext)s = the audio format),
# or fails like yt-dlp does for an unavailable video when the id is listed in FAKE_FAIL_IDS.
FAKE_YT_DLP = r"""#!/bin/bash
printf '%s\n' "$*" >> "$FAKE_CALLS"
while [ $# -gt 0 ]; do
  case $1 in
    -o) template=$2; shift ;;
    --audio-format) format=$2; shift ;;
    --download-sections) sections=$2; shift ;;
    https://*) id=${1#*v=} ;;
  esac
  shift
done
case " ${FAKE_FAIL_IDS:-} " in
  *" $id "*) echo "ERROR: [youtube] $id: Video unavailable. This video is private" >&2; exit 1 ;;
esac
printf '%s %s' "$id" "$sections" > "${template/\%(ext)s/$format}"
"""


@pytest.fixture
def fake_bin(tmp_path: pathlib.Path) -> pathlib.Path:
    """A PATH directory with the fake yt-dlp and ffmpeg and links to the standard tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in STANDARD_TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "yt-dlp").write_text(FAKE_YT_DLP)
    (bin_dir / "ffmpeg").write_text("#!/bin/bash\nexit 0\n")
    for fake in ("yt-dlp", "ffmpeg"):
        (bin_dir / fake).chmod(0o755)
    return bin_dir


def run_script(bin_dir: pathlib.Path, *args: str, fail_ids: str = "") -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "FAKE_CALLS": str(bin_dir.parent / "calls.log"), "FAKE_FAIL_IDS": fail_ids}
    return subprocess.run(
        [shutil.which("bash"), str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


def calls(bin_dir: pathlib.Path) -> dict[str, str]:
    """The fake yt-dlp's command lines so far, by YouTube id."""
    log = bin_dir.parent / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return {line.rsplit("v=", 1)[1]: line for line in lines}


def test_downloads_every_segment_of_an_audioset_csv(tmp_path, fake_bin):
    segments = layouts.write_audioset_segments(tmp_path / "eval_segments.csv")
    outdir = tmp_path / "audioset" / "audios" / "eval"

    result = run_script(fake_bin, "-j", "2", str(segments), str(outdir))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "4 downloaded, 0 already present, 0 failed"
    assert sorted(path.name for path in outdir.iterdir()) == [
        "--4gqARaEJE.mp3",
        "--BfvyPmVMo.mp3",
        "--U7joUcTCo.mp3",
        "--i-y1v8Hy8.mp3",
    ]
    assert (outdir / "--i-y1v8Hy8.mp3").read_text() == "--i-y1v8Hy8 *0.000-9.000"
    assert calls(fake_bin)["--BfvyPmVMo"] == (
        "--quiet --no-warnings --no-progress --no-playlist -f bestaudio/best --download-sections "
        f"*20.000-30.000 --extract-audio --audio-format mp3 -o {outdir}/.--BfvyPmVMo.part.%(ext)s "
        "https://www.youtube.com/watch?v=--BfvyPmVMo"
    )


def test_skips_existing_files_and_redownloads_empty_ones(tmp_path, fake_bin):
    segments = layouts.write_audioset_segments(tmp_path / "eval_segments.csv")
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "--BfvyPmVMo.mp3").write_text("an earlier download")
    (outdir / "--U7joUcTCo.mp3").write_text("")  # Left by an interrupted download: not done.

    first = run_script(fake_bin, str(segments), str(outdir))

    assert first.stdout.splitlines()[-1] == "3 downloaded, 1 already present, 0 failed"
    assert (outdir / "--BfvyPmVMo.mp3").read_text() == "an earlier download"
    assert (outdir / "--U7joUcTCo.mp3").read_text() == "--U7joUcTCo *0.000-10.000"
    assert sorted(calls(fake_bin)) == ["--4gqARaEJE", "--U7joUcTCo", "--i-y1v8Hy8"]

    second = run_script(fake_bin, str(segments), str(outdir))

    assert (second.returncode, second.stdout) == (0, "0 downloaded, 4 already present, 0 failed\n")
    assert len((fake_bin.parent / "calls.log").read_text().splitlines()) == 3  # No new yt-dlp call.


def test_logs_failures_with_their_id_and_exits_1(tmp_path, fake_bin):
    rows = (*layouts.AUDIOSET_SEGMENTS_ROWS[:2], "not a segment line")
    segments = layouts.write_audioset_segments(tmp_path / "segments.csv", rows)
    outdir = tmp_path / "out"

    result = run_script(fake_bin, str(segments), str(outdir), fail_ids="--4gqARaEJE")

    assert result.returncode == 1
    log = outdir / "download_failures.tsv"
    assert result.stdout.splitlines()[-1] == f"1 downloaded, 0 already present, 2 failed (listed in {log})"
    assert sorted(log.read_text().splitlines()) == [
        "--4gqARaEJE\t0.000\t10.000\tERROR: [youtube] --4gqARaEJE: Video unavailable. This video is private",
        "line 6\t\t\tcannot parse: not a segment line",
    ]
    assert "failed --4gqARaEJE: ERROR: [youtube]" in result.stderr
    # No partial or empty file is left that a later run or prepare could take for a finished download.
    assert sorted(os.listdir(outdir)) == ["--BfvyPmVMo.mp3", "download_failures.tsv"]


def test_reads_audioset_small_jsonl_annotations(tmp_path, fake_bin):
    annotations = layouts.write_audioset_small(tmp_path / "annotations", splits=["test"])
    outdir = tmp_path / "out"
    log = tmp_path / "failures.tsv"

    result = run_script(fake_bin, "-f", "wav", "-l", str(log), str(annotations / "test.jsonl"), str(outdir))

    assert result.returncode == 0, result.stderr
    assert {path.name: path.read_text() for path in outdir.iterdir()} == {
        "-1lgQov_rmA.wav": "-1lgQov_rmA *310.0-320.0",
        "-F8ZP9sXcKM.wav": "-F8ZP9sXcKM *5.0-15.0",
    }
    assert not log.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "expected SEGMENTS and OUTDIR, got 0 argument(s)"),
        (("missing.csv", "out"), "segments file 'missing.csv' does not exist"),
        (("-j", "0", "SEGMENTS", "out"), "-j must be a positive integer, got '0'"),
        (("-x", "SEGMENTS", "out"), "unknown option -x"),
    ],
)
def test_bad_arguments_print_the_usage_and_exit_2(tmp_path, fake_bin, args, message):
    segments = layouts.write_audioset_segments(tmp_path / "segments.csv")
    args = [str(segments) if arg == "SEGMENTS" else arg for arg in args]

    result = run_script(fake_bin, *args)

    assert result.returncode == 2
    assert result.stderr.startswith(f"download_audioset.sh: {message}\n")
    assert (
        "Usage: scripts/download_audioset.sh [-j JOBS] [-f FORMAT] [-l LOG] SEGMENTS OUTDIR" in result.stderr
    )
    assert calls(fake_bin) == {}


def test_a_missing_tool_is_named(tmp_path, fake_bin):
    (fake_bin / "ffmpeg").unlink()
    segments = layouts.write_audioset_segments(tmp_path / "segments.csv")

    result = run_script(fake_bin, str(segments), str(tmp_path / "out"))

    assert result.returncode == 2
    assert "'ffmpeg' is not on PATH" in result.stderr
