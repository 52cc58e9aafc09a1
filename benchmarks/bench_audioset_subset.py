"""`prepare select-audioset-subset` on an AudioSet-sized input: wall time and peak memory of the command.

Run: `python -m benchmarks.bench_audioset_subset [--rows 2041789]` (about 2 minutes on one busy CPU core).
The real unbalanced_train_segments.csv (2,041,789 rows) is not shipped, so this writes a synthetic one of the
same size and shape to a temporary directory: the real comment header, `YTID, start, end, "labels"` rows,
Music on half the rows and Speech on half (as in AudioSet), plus 1 + Poisson(0.8) other labels drawn from a
Zipf-like distribution over the ontology's labels, so a few labels are frequent and most are rare. 500 of its
clips are listed in a synthetic AudioCaps train.csv and must be removed. Then it runs the real command in a
child process (per label 1000, step 10, 10 per label on each held-out side, the original's settings) and
prints a markdown table with its wall time and peak resident memory. Target: under 5 minutes and 4 GiB.
"""

import argparse
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from audiocap_jax import cli
from audiocap_jax.data import prepare
from audiocap_jax.ontology import Ontology
from audiocap_jax.testing import layouts

UNBALANCED_ROWS = 2_041_789  # unbalanced_train_segments.csv as released (num_segs in its header).
AUDIOCAPS_CLIPS = 500
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def write_synthetic_segments(path: pathlib.Path, rows: int, seed: int = 0) -> list[str]:
    """Writes an unbalanced-train-like segments CSV of `rows` rows; returns its YouTube ids."""
    rng = np.random.default_rng(seed)
    mids = [mid for mid in Ontology.load().names if mid not in ("/m/04rlf", "/m/09x0r")]
    weights = 1.0 / np.arange(1, len(mids) + 1) ** 1.1
    others = rng.choice(len(mids), size=(rows, 4), p=weights / weights.sum())
    num_others = np.minimum(1 + rng.poisson(0.8, rows), 4)
    music, speech = (rng.random((2, rows)) < 0.5).astype(int)
    ids = ["".join(chars) for chars in _ID_ALPHABET[rng.integers(0, 64, size=(rows, 11))]]
    starts = rng.integers(0, 30, rows) * 10
    lines = []
    for row in range(rows):
        labels = [mids[label] for label in others[row, : num_others[row]]]
        labels += ["/m/04rlf"] * int(music[row]) + ["/m/09x0r"] * int(speech[row])
        lines.append(f'{ids[row]}, {starts[row]:.3f}, {starts[row] + 10:.3f}, "{",".join(labels)}"')
    layouts.write_audioset_segments(path, lines)
    return ids


def write_audiocaps(folder: pathlib.Path, youtube_ids: list[str]) -> None:
    folder.mkdir()
    for split in prepare.AUDIOCAPS_SPLITS:
        chosen = youtube_ids if split == "train" else []
        lines = [",".join(prepare.AUDIOCAPS_COLUMNS)]
        lines += [f"{i},{youtube_id},0,a caption" for i, youtube_id in enumerate(chosen)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    cli.start_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=UNBALANCED_ROWS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = pathlib.Path(directory)
        segments = root / "unbalanced_train_segments.csv"
        ids = write_synthetic_segments(segments, args.rows)
        write_audiocaps(root / "audiocaps", ids[:: len(ids) // AUDIOCAPS_CLIPS][:AUDIOCAPS_CLIPS])
        command = [
            sys.executable,
            "-m",
            "audiocap_jax.data.prepare",
            "select-audioset-subset",
            "--segments",
            str(segments),
            "--ontology",
            str(Ontology.load().source),
            "--exclude-audiocaps",
            str(root / "audiocaps"),
            "--per-label=1000",
            "--step=10",
            "--test-per-label=10",
            "--seed=42",
            "--output",
            str(root / "annotations"),
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # ru_maxrss is in KiB
        size_mib = segments.stat().st_size / 2**20
    print(result.stdout.strip().replace("\n", "  \n"))
    print()
    print("| segment rows | CSV size | wall time | peak memory (RSS) |")
    print("|---|---|---|---|")
    print(f"| {args.rows:,} | {size_mib:.0f} MiB | {seconds:.1f} s | {peak_gib:.2f} GiB |")


if __name__ == "__main__":
    main()
