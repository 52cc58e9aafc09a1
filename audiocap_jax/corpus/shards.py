"""`<output>.shards/`: predict's finished shards, the manifest that says what made them, and the merge.

The work list is cut into fixed shards of `shard_size` items (shard n = items [n*S, (n+1)*S)); process p of P
captions shards p, p+P, ... Each finished shard is three files, each written atomically (temporary name,
then rename), the CSV last because its presence is what "finished" means:

  <n>_nbest.csv   the shard's N-best rows (file_name,rank,caption,score)
  <n>.json        its counts and the files that could not be decoded
  <n>.csv         its file_name,caption_predicted rows

`manifest.json` holds the fingerprint of everything that changes captions (checkpoint, step, style, dtype,
decoding keys, long_audio, the work list, the shard size): a rerun with the same fingerprint skips the finished
shards; another one is refused, naming the keys that differ, unless `--overwrite` discards them. The merge
concatenates the shards' rows in shard order under one header, so the output is byte for byte the same
whichever process made which shard. The folder stays after the merge: a rerun of a finished command only
merges again, and a changed one is still refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audiocap_jax import cli
from audiocap_jax.corpus.worklist import SHARDS_SUFFIX
from audiocap_jax.decoding import inference
from audiocap_jax.metrics import caption_files

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


def plan(num_items: int, shard_size: int) -> list[range]:
    """Work-list indices of each shard, in order."""
    return [range(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]


@dataclasses.dataclass(frozen=True)
class Totals:
    """What the finished shards hold together."""

    files: int  # work-list items
    captioned_files: int  # items with at least one caption
    clips: int  # rows (windows with long_audio="windows", else files)
    failures: list[dict[str, str]]  # files that could not be decoded, in work-list order


@dataclasses.dataclass(frozen=True)
class ShardStore:
    root: Path  # <output>.shards

    @classmethod
    def beside(cls, output_file: Path) -> ShardStore:
        return cls(output_file.with_name(output_file.name + SHARDS_SUFFIX))

    def csv(self, n: int) -> Path:
        return self.root / f"{n}.csv"

    def nbest(self, n: int) -> Path:
        return self.root / f"{n}_nbest.csv"

    def counts(self, n: int) -> Path:
        return self.root / f"{n}.json"

    def done(self, n: int) -> bool:
        return self.csv(n).is_file()

    def finished(self) -> list[int]:
        """The numbers of the finished shards, ascending."""
        return sorted(int(p.stem) for p in self.root.glob("*.csv") if p.stem.isdigit())

    def probe(self, key: str) -> None:
        """Create the folder (and its missing parents) and a file in it, then remove what was created: an
        output path that passes the permission checks but cannot be written (/proc, a read-only mount) fails
        here, before any model loads, with nothing left behind."""
        created = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise cli.UserError(
                f"{key}: cannot write {self.root} beside it ({error.strerror or error}).",
                f"choose a {key} in a folder you can write",
            ) from error
        finally:
            for path in created:  # innermost first
                with contextlib.suppress(OSError):
                    path.rmdir()

    def check_manifest(self, fingerprint: dict[str, Any], overwrite: bool, key: str) -> None:
        """Refuse to resume shards that other settings made (unless `overwrite`)."""
        path = self.root / MANIFEST_FILE
        if overwrite or not path.is_file():
            return
        saved = json.loads(path.read_text(encoding="utf-8")).get("fingerprint", {})
        changed = [k for k in dict.fromkeys([*saved, *fingerprint]) if saved.get(k) != fingerprint.get(k)]
        if changed:
            finished = len(self.finished())
            differences = "; ".join(
                f"{k}: {saved.get(k)!r} then, {fingerprint.get(k)!r} now" for k in changed
            )
            raise cli.UserError(
                f"{key}: the {finished} finished shards in {self.root} were made with other settings "
                f"({differences}), so their captions would not match this run's.",
                "rerun with the earlier settings to resume, pass --overwrite to discard those shards, or "
                f"choose another {key}",
            )

    def start(self, fingerprint: dict[str, Any], overwrite: bool) -> None:
        """Process 0, before any process captions: the folder and its manifest (with `overwrite`, emptied)."""
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        with cli.atomic_path(self.root / MANIFEST_FILE) as partial:
            partial.write_text(
                json.dumps({"version": MANIFEST_VERSION, "fingerprint": fingerprint}, indent=1) + "\n",
                encoding="utf-8",
            )

    def write(
        self,
        n: int,
        predictions: Sequence[inference.Prediction],
        files: int,
        failures: Sequence[dict[str, str]],
    ) -> None:
        """Shard `n`'s three files; the CSV last, each complete or absent."""
        with cli.atomic_path(self.nbest(n)) as partial:
            inference.write_nbest_csv(partial, predictions)
        counts = {
            "files": files,
            "captioned_files": files - len(failures),
            "clips": len(predictions),
            "failures": list(failures),
        }
        with cli.atomic_path(self.counts(n)) as partial:
            partial.write_text(json.dumps(counts, ensure_ascii=False) + "\n", encoding="utf-8")
        with cli.atomic_path(self.csv(n)) as partial:
            caption_files.write_predictions_csv(partial, {p.file_name: p.caption for p in predictions})

    def wait(self, num_shards: int, stopped: Callable[[], bool], timeout_seconds: float) -> bool:
        """Until every shard is finished (other processes make theirs): True, or False when `stopped()`.
        Fails when no shard finishes for `timeout_seconds`, naming the missing ones."""
        missing = [n for n in range(num_shards) if not self.done(n)]
        last_progress = time.monotonic()
        while missing:
            if stopped():
                return False
            if time.monotonic() - last_progress > timeout_seconds:
                raise TimeoutError(
                    f"no shard of {self.root} finished in {timeout_seconds:.0f} s; still missing: "
                    f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Check the logs of the processes that "
                    "own them (process p owns shards p, p+P, ...); rerun the same command to resume."
                )
            time.sleep(0.2)
            still = [n for n in missing if not self.done(n)]
            if len(still) < len(missing):
                last_progress = time.monotonic()
            missing = still
        return True

    def totals(self, shards: Sequence[int]) -> Totals:
        """What finished shards `shards` hold together."""
        counts = [json.loads(self.counts(n).read_text(encoding="utf-8")) for n in shards]
        return Totals(
            files=sum(c["files"] for c in counts),
            captioned_files=sum(c["captioned_files"] for c in counts),
            clips=sum(c["clips"] for c in counts),
            failures=[f for c in counts for f in c["failures"]],
        )

    def merge(self, output_file: Path, nbest_file: Path, num_shards: int) -> None:
        """The shards' rows, in shard order under one header, into the output CSV and N-best CSV (atomically)."""
        for target, part in ((nbest_file, self.nbest), (output_file, self.csv)):
            with cli.atomic_path(target) as partial, partial.open("wb") as out:
                for n in range(num_shards):
                    header, _, rows = part(n).read_bytes().partition(b"\n")
                    if n == 0:
                        out.write(header + b"\n")
                    out.write(rows)
