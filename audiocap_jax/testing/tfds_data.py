"""Tiny TFDS builds of the three datasets, from real-layout raw files through `prepare`, with broken audio.

Tests of the builders and of the input pipeline share these builds. Each dataset is written in its download
layout (`audiocap_jax.testing.layouts`), turned into an AudioFolder by the real prepare commands, damaged the
way real downloads are (a truncated file, an HTML page saved as audio, NaN samples, a file deleted after
prepare), and built with the real builders into one data_dir.

What survives (clips per split after the build skips the damaged ones):
  clotho:          development 2 of 3, validation 2 of 4, evaluation 1 of 2, test 2 of 2
  audiocaps:       train 4 of 4, valid 1 of 2, test 2 of 2
  audioset_small:  train 2 of 2, valid 3 of 4, test 2 of 2
"""

import dataclasses
import pathlib
from collections.abc import Sequence

import tensorflow_datasets as tfds

from audiocap_jax.data import features, prepare
from audiocap_jax.testing import layouts

BUILDERS = ("clotho", "audiocaps", "audioset_small")
# file name -> kind of damage (layouts.BROKEN_KINDS), planted before prepare; prepare passes them on because
# they are non-empty, and the build must skip them.
CLOTHO_BROKEN = {
    "Santa Motor.wav": "truncated",
    "Train passing.wav": "not_audio",
    "kitchen_sizzle.wav": "nan",
}
# Deleted after prepare wrote its row, as when a disk or sync loses a file: the build reports it missing.
CLOTHO_DELETED = ("evaluation", "typing_keyboard.wav")
AUDIOCAPS_BROKEN = {"vJ7JPEFhyLA": "not_audio"}
AUDIOSET_BROKEN = {"-6KN5x9rpwo": "truncated"}
AUDIO_FORMAT = "mp3"  # what scripts/download_audioset.sh leaves


@dataclasses.dataclass(frozen=True)
class TinyBuild:
    audiofolder: pathlib.Path  # the prepared AudioFolder (the builder's --manual_dir)
    data_dir: pathlib.Path  # the TFDS data_dir all three are built into
    builder: tfds.core.DatasetBuilder  # the prepared builder; `.data_path` holds its files


def write_audiofolders(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Raw layouts under `root/raw`, prepared AudioFolders under `root/audiofolders`; builder name -> folder."""
    raw, out = root / "raw", root / "audiofolders"
    clotho = layouts.write_clotho(raw / "clotho", broken=CLOTHO_BROKEN)
    prepare.prepare_clotho(raw / "clotho")
    split, file_name = CLOTHO_DELETED
    (clotho / split / file_name).unlink()

    layouts.write_audiocaps(raw / "audiocaps")
    layouts.write_audioset_download(
        raw / "audiocaps_download",
        layouts.AUDIOCAPS_DOWNLOAD_FOLDERS,
        audio_format=AUDIO_FORMAT,
        broken=AUDIOCAPS_BROKEN,
    )
    prepare.prepare_audiocaps(
        raw / "audiocaps", raw / "audiocaps_download", out / "audiocaps", audio_format=AUDIO_FORMAT
    )

    layouts.write_audioset_small(raw / "audioset_small")
    layouts.write_audioset_download(
        raw / "audioset_download",
        layouts.audioset_small_download_folders(),
        audio_format=AUDIO_FORMAT,
        broken=AUDIOSET_BROKEN,
    )
    prepare.prepare_audioset_small(
        raw / "audioset_small", raw / "audioset_download", out / "audioset_small", audio_format=AUDIO_FORMAT
    )
    return {"clotho": clotho, "audiocaps": out / "audiocaps", "audioset_small": out / "audioset_small"}


def build_all(
    root: pathlib.Path, *, num_workers: int = 0, configs: Sequence[str] = ("mel80",)
) -> dict[str, TinyBuild]:
    """Writes, prepares and builds all three datasets into `root/data`; builder name -> TinyBuild (last config)."""
    builds = {}
    for name, audiofolder in write_audiofolders(root).items():
        for config in configs:
            builder = features.build(
                name, manual_dir=audiofolder, data_dir=root / "data", config=config, num_workers=num_workers
            )
        builds[name] = TinyBuild(audiofolder=audiofolder, data_dir=root / "data", builder=builder)
    return builds
