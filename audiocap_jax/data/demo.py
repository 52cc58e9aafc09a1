"""The demo's data, made on first use: synthetic set -> prepare -> TFDS builds, each skipped when already there.

`ensure_demo_data` runs exactly what a user runs on real data (docs/synthetic.md), so the demo exercises the
same prepare commands and TFDS builders:

  data/synthetic.py  write_synthetic_dataset(ROOT)            Clotho + AudioSet-small download layouts
  data/prepare.py    prepare_clotho, prepare_audioset_small    AudioFolders under ROOT
  data/features.py   build("clotho"), build("audioset_small")  log-mel ArrayRecords in DATA_DIR

A stamp in DATA_DIR records the synthetic set's parameters the builds were made from; a re-run with the same
parameters does nothing, different ones regenerate and rebuild.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

from absl import logging

from audiocap_jax.data import features, pipeline, prepare, synthetic

STAMP_FILE = "demo_data.json"
# The demo's two styles, by mixture name: clotho (`clotho > caption: `) and audioset (`audioset > keywords: `).
DATASETS = ("clotho", "audioset")
BUILDERS = tuple(pipeline.TFDS_NAMES[name] for name in DATASETS)


@dataclasses.dataclass(frozen=True)
class DemoData:
    """Where the demo's data lives."""

    root: pathlib.Path  # the synthetic raw layouts and the prepared AudioFolders
    data_dir: pathlib.Path  # TFDS data_dir holding clotho/<config> and audioset_small/<config>
    audiofolders: dict[str, pathlib.Path]  # builder name -> prepared AudioFolder (its --manual_dir)
    built: bool  # False when everything was already there


def _stamp(root: pathlib.Path, config: str) -> dict:
    manifest = json.loads((root / synthetic.MANIFEST_FILE).read_text(encoding="utf-8"))
    return {"synthetic": manifest["parameters"], "root": os.fspath(root.absolute()), "config": config}


def _is_built(data_dir: pathlib.Path, stamp: dict) -> bool:
    path = data_dir / STAMP_FILE
    if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != stamp:
        return False
    return all((data_dir / builder / stamp["config"]).is_dir() for builder in BUILDERS)


def ensure_demo_data(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    num_train: int = synthetic.DEFAULT_NUM_TRAIN,
    num_valid: int = synthetic.DEFAULT_NUM_VALID,
    num_test: int = synthetic.DEFAULT_NUM_TEST,
    seed: int = 0,
    max_events: int = synthetic.MAX_EVENTS,
    config: str = "mel80",
    workers: int = 0,
) -> DemoData:
    """Generates, prepares and builds the synthetic Clotho and AudioSet-small sets where missing.

    Args:
      root: folder for the synthetic download layouts and their AudioFolders.
      data_dir: TFDS data_dir to build `clotho/<config>` and `audioset_small/<config>` into.
      num_train, num_valid, num_test: clips per split of each dataset (synthetic.write_synthetic_dataset).
      seed, max_events: of the synthetic set.
      config: builder config, "mel80" or "mel128".
      workers: processes for generation and feature extraction; 0 = one per core.
    """
    root, data_dir = pathlib.Path(root).expanduser(), pathlib.Path(data_dir).expanduser()
    workers = workers or os.cpu_count() or 1
    summary = synthetic.write_synthetic_dataset(
        root,
        num_train=num_train,
        num_valid=num_valid,
        num_test=num_test,
        seed=seed,
        max_events=max_events,
        workers=workers,
    )
    audiofolders = dict(
        zip(
            BUILDERS,
            (summary.clotho_root / "audiofolder", summary.audioset_download / "audiofolder"),
            strict=True,
        )
    )
    stamp = _stamp(root, config)
    if not summary.generated and _is_built(data_dir, stamp):
        logging.info("Demo data is ready in %s (built from %s).", data_dir, root)
        return DemoData(root, data_dir, audiofolders, built=False)

    prepare.prepare_clotho(summary.clotho_root)
    prepare.prepare_audioset_small(
        summary.audioset_annotations,
        summary.audioset_download,
        audiofolders[pipeline.TFDS_NAMES["audioset"]],
        audio_format=synthetic.AUDIO_FORMAT,
        link="symlink",
    )
    (data_dir / STAMP_FILE).unlink(missing_ok=True)
    for name, folder in audiofolders.items():
        shutil.rmtree(data_dir / name / config, ignore_errors=True)  # a build of an earlier synthetic set
        features.build(name, manual_dir=folder, data_dir=data_dir, config=config, num_workers=workers)
    (data_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    logging.info("Demo data built in %s from %s.", data_dir, root)
    return DemoData(root, data_dir, audiofolders, built=True)
