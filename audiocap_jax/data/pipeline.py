"""Grain input pipeline over the TFDS log-mel records: mixture, prefixes, static-shape targets, mesh batches.

Reading needs no TensorFlow: `tfds` ArrayRecord data sources + `grain.MapDataset`. Every stage is a pure
function of the element index, so the pipeline is deterministic, and an iterator's state is one JSON-able
dict (`it.get_state()`) from which `it.set_state(state)` continues exactly.

Training stream (the same for any number of processes):
  per dataset: (clip, caption) pair indices, endless, each epoch in its own seeded global shuffle
  -> read record, pick the caption, tokenise behind the dataset's prefix
  -> `MapDataset.mix` with the configured weights (exact proportions, e.g. audioset:audiocaps:clotho = 12:3:1)
  -> optional feature-domain augmentation (seeded per global index)
  -> rows of global batch g: [g*G, (g+1)*G); process p reads only rows [g*G + p*B, g*G + (p+1)*B).
So N hosts together put exactly the examples one host would into every global batch.

Evaluation stream: one element per clip with all references, padded to a multiple of G with masked rows.

Shape legend: G global batch, B per-process batch (G / process count), M mel bins, S frames (the stored 3000,
or the model's `num_frames` when `max_frames` crops them), T decoder tokens (max_length - 1), P prompt tokens,
R references per clip (max in the split).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from jax.sharding import Mesh

from audiocap_jax import text
from audiocap_jax.model import sharding

# TFDS builder (tfds_builders/<name>) holding each dataset, and the split folders `prepare` writes.
TFDS_NAMES: Mapping[str, str] = {"clotho": "clotho", "audiocaps": "audiocaps", "audioset": "audioset_small"}
TRAIN_SPLITS: Mapping[str, str] = {"clotho": "development", "audiocaps": "train", "audioset": "train"}
EVAL_SPLITS: Mapping[str, str] = {"clotho": "validation", "audiocaps": "valid", "audioset": "valid"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a mixture (or one evaluation set).

    Attributes:
      name: dataset name; picks the defaults below ("clotho", "audiocaps", "audioset").
      data_dir: TFDS data_dir of the build.
      weight: mixing weight; only ratios matter (12:3:1 = 0.75:0.1875:0.0625).
      split: TFDS split; default TRAIN_SPLITS / EVAL_SPLITS[name].
      config: builder config, "mel80" or "mel128".
      style: "<dataset> > <task>" prefix style; default `text.DEFAULT_PREFIXES[name]`.
      tfds_name: builder name; default TFDS_NAMES[name].
      max_clips: use only the first max_clips clips of the split (0 = all; more than it has = all). Records
        are stored in TFDS's key-hash order, so this is a fixed pseudo-random subset, like the original's
        seeded `sample(n=limit)` of validation sets; unlike a TFDS slice "split[:N]" it never fails on a
        split smaller than N.
    """

    name: str
    data_dir: str | os.PathLike
    weight: float = 1.0
    split: str | None = None
    config: str = "mel80"
    style: str | None = None
    tfds_name: str | None = None
    max_clips: int = 0

    @property
    def prefix(self) -> str:
        if self.style is not None:
            return text.parse_style(self.style)
        if self.name not in text.DEFAULT_PREFIXES:
            raise ValueError(
                f"dataset {self.name!r} has no default prefix; set style='<dataset> > <task>' or use one of "
                f"{', '.join(text.DEFAULT_PREFIXES)}."
            )
        return text.DEFAULT_PREFIXES[self.name]

    @property
    def builder_name(self) -> str:
        if self.tfds_name is not None:
            return self.tfds_name
        if self.name not in TFDS_NAMES:
            raise ValueError(
                f"dataset {self.name!r} has no default TFDS builder; set tfds_name or use one of "
                f"{', '.join(TFDS_NAMES)}."
            )
        return TFDS_NAMES[self.name]

    def split_or(self, defaults: Mapping[str, str]) -> str:
        if self.split is not None:
            return self.split
        if self.name not in defaults:
            raise ValueError(f"dataset {self.name!r} has no default split; set split=... explicitly.")
        return defaults[self.name]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Feature-domain augmentation of training examples; every op is off unless its probability is > 0.

    The original augmented waveforms (audiomentations: Gaussian noise, shift, gain); see docs/pipeline.md for
    how these log-mel ops relate to it. Defaults of the magnitudes are the original's.
    """

    shift_probability: float = 0.0
    max_shift_fraction: float = 0.1  # of the valid frames; the original's Shift(-0.1, 0.1, rollover=True)
    gain_probability: float = 0.0
    max_gain_db: float = 10.0  # the original's Gain(-10 dB, +10 dB)
    mask_probability: float = 0.0
    num_time_masks: int = 2
    max_time_mask_frames: int = 50  # 0.5 s at 100 frames/s
    num_freq_masks: int = 2
    max_freq_mask_bins: int = 8

    @property
    def enabled(self) -> bool:
        return max(self.shift_probability, self.gain_probability, self.mask_probability) > 0


@dataclasses.dataclass(frozen=True)
class ReadConfig:
    """Host-side parallelism: threads each reading whole batches, and how many batches to keep ready.

    Grain can use at most `prefetch_batches` threads at once, so more threads than that are capped.
    """

    num_threads: int = 4
    prefetch_batches: int = 8


# Whisper's normalised log-mel is (log10(power) + 4) / 4, so a gain of g dB (power x 10^(g/10)) adds g / 40.
NORMALISED_UNITS_PER_DB = 1.0 / 40.0


def augment(example: dict[str, Any], rng: np.random.Generator, config: AugmentConfig) -> dict[str, Any]:
    """Time shift with roll-over inside the valid frames, gain, SpecAugment time/frequency masks.

    Args:
      example: with mel `[M, S]` float and num_frames (valid frames at the start of S).
      rng: Grain's per-index generator, so the result depends only on the seed and the element index.
      config: which ops and how strong.

    Returns:
      The example with a new mel array (the input is not modified).
    """
    mel = np.array(example["mel"], dtype=np.float32)
    num_frames = int(example["num_frames"])
    if rng.random() < config.shift_probability and num_frames > 1:
        max_shift = int(config.max_shift_fraction * num_frames)
        shift = int(rng.integers(-max_shift, max_shift + 1))
        # Only the clip rolls over; the zero-padding after it (Whisper pads to 30 s) stays where it is.
        mel[:, :num_frames] = np.roll(mel[:, :num_frames], shift, axis=1)
    if rng.random() < config.gain_probability:
        # Whisper's floor (max - 8) moves with the max, so shifting every frame is the exact log-domain gain.
        mel += rng.uniform(-config.max_gain_db, config.max_gain_db) * NORMALISED_UNITS_PER_DB
    if rng.random() < config.mask_probability:
        silence = mel.min()  # the clip's floor: what silence maps to after Whisper's max - 8 clamp
        for _ in range(config.num_time_masks):
            width = int(rng.integers(0, min(config.max_time_mask_frames, num_frames) + 1))
            start = int(rng.integers(0, num_frames - width + 1))
            mel[:, start : start + width] = silence
        num_bins = mel.shape[0]
        for _ in range(config.num_freq_masks):
            width = int(rng.integers(0, min(config.max_freq_mask_bins, num_bins) + 1))
            start = int(rng.integers(0, num_bins - width + 1))
            mel[start : start + width, :] = silence
    return {**example, "mel": mel.astype(example["mel"].dtype)}


# ---------------------------------------------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Source:
    """The records of one split and its caption statistics."""

    records: grain.MapDataset  # of dicts: mel [M, S] float16, num_frames, file_name, captions, labels
    max_captions: int  # R: the most captions any clip of the split has


def _open(spec: DatasetSpec, split: str) -> _Source:
    name = f"{spec.builder_name}/{spec.config}"
    try:
        builder = tfds.builder(name, data_dir=os.path.expanduser(os.fspath(spec.data_dir)))
    except tfds.core.DatasetNotFoundError as error:
        raise FileNotFoundError(
            f"No TFDS dataset {name} in {spec.data_dir}. Build it with `python -m tfds_builders build "
            f"tfds_builders/{spec.builder_name} --config={spec.config} --manual_dir=AUDIOFOLDER "
            f"--data_dir={spec.data_dir}` (docs/pipeline.md)."
        ) from error
    base_split = split.split("[")[0]
    if base_split not in builder.info.splits:
        raise ValueError(
            f"{name} in {spec.data_dir} has no split {base_split!r}; it has {', '.join(builder.info.splits)}."
        )
    counts = (builder.info.metadata or {}).get("splits", {}).get(base_split, {}).get("captions_per_clip", {})
    records = grain.MapDataset.source(builder.as_data_source(split=split))
    if spec.max_clips:
        records = records[: spec.max_clips]
    return _Source(records=records, max_captions=max((int(k) for k in counts), default=0))


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _mel(record: Mapping[str, Any], mel_dtype: np.dtype, max_frames: int = 0) -> np.ndarray:
    """The record's log-mel `[M, S]`, its first `max_frames` frames when > 0 (a model with a shorter window)."""
    mel = np.asarray(record["mel"])
    if max_frames:
        if mel.shape[-1] < max_frames:
            raise ValueError(
                f"records hold {mel.shape[-1]} mel frames but max_frames is {max_frames}; the model expects "
                "longer inputs than the build stores. Use a model with max_source_positions <= "
                f"{mel.shape[-1] // 2}."
            )
        mel = mel[:, :max_frames]
    return mel.astype(mel_dtype, copy=False)


_SHUFFLE, _AUGMENT = 0, 1  # random stages, each with its own seed stream


def _seed_for(seed: int, *path: int) -> int:
    """Independent 32-bit seeds for each random stage, derived from the one pipeline seed."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------------------
# Index streams: per-epoch shuffle, and the rows of each global batch that this process reads.
# ---------------------------------------------------------------------------------------------------------------


class _EpochShuffled(grain.MapDataset):
    """Endless stream of range(n), each epoch in its own seeded random order: element i is perm_e[i % n].

    Grain's `shuffle` maps one index at a time through a cycle-walking Feistel network whose cost grows as
    the dataset shrinks (about 10 ms per element for n = 2, 3 ms for n = 10, 5 us for n = 10^4), which
    makes small datasets (the demo, tests, Clotho with few clips) slower than reading the audio features.
    A per-epoch numpy permutation costs O(n) once per epoch (~50 ms and 16 MB for 2M AudioSet pairs).
    """

    def __init__(self, size: int, seed: int):
        super().__init__()
        self._size = size
        self._seed = seed
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, self._size)
        return int(self._permutation(epoch)[position])

    def _permutation(self, epoch: int) -> np.ndarray:
        permutation = self._permutations.get(epoch)
        if permutation is None:
            permutation = np.random.default_rng([self._seed, epoch]).permutation(self._size)
            # Reader threads are at most one epoch boundary apart: keep the neighbouring epochs only.
            nearby = {e: p for e, p in self._permutations.items() if abs(e - epoch) <= 1}
            self._permutations = nearby | {epoch: permutation}
        return permutation

    def __str__(self) -> str:
        return f"_EpochShuffled(size={self._size})"


class _ProcessRows(grain.MapDataset):
    """The rows of a global-batch stream that one process reads: [g*G + p*B, g*G + (p+1)*B) for batch g."""

    def __init__(self, parent: grain.MapDataset, global_batch_size: int, shard: grain.sharding.ShardOptions):
        super().__init__(parent)
        self._global = global_batch_size
        self._local = global_batch_size // shard.shard_count
        self._offset = shard.shard_index * self._local

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._local)
        return self._parent[batch * self._global + self._offset + row]

    def __str__(self) -> str:
        return f"_ProcessRows(global={self._global}, local={self._local}, offset={self._offset})"


def _local_batch_size(global_batch_size: int, shard: grain.sharding.ShardOptions) -> int:
    if global_batch_size <= 0 or global_batch_size % shard.shard_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not a positive multiple of the {shard.shard_count} "
            "processes; set the batch size to a multiple of the process count."
        )
    return global_batch_size // shard.shard_count


def _to_iter(ds: grain.MapDataset, read: ReadConfig) -> grain.IterDataset:
    # Elements are whole batches (B x ~0.5-1 MB of mel); Grain's default buffer of 500 would hold gigabytes.
    num_threads = min(read.num_threads, read.prefetch_batches)
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=read.prefetch_batches)
    )


# ---------------------------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------------------------


def train_dataset(
    datasets: Sequence[DatasetSpec],
    tokenizer: text.Tokenizer,
    *,
    global_batch_size: int,
    max_length: int = 80,
    seed: int = 0,
    train_prompt: bool = False,
    augment_config: AugmentConfig | None = None,
    mel_dtype: Any = np.float16,
    max_frames: int = 0,
    shard: grain.sharding.ShardOptions | None = None,
    read: ReadConfig = ReadConfig(),
) -> grain.IterDataset:
    """The endless, shuffled, mixed training stream of this process's per-process batches.

    Every caption is its own example: a Clotho clip appears 5 times per epoch, once with each caption, at
    independent places of one global shuffle (not in a row, as the original's 20-item buffer left them).

    Args:
      datasets: the mixture; weights need not sum to 1, datasets with weight 0 are left out.
      tokenizer: encodes prefix + caption into `Tokenizer.encode_target` rows.
      global_batch_size: G, over all processes.
      max_length: tokens per sequence counting the forced prompt (the original: 80).
      seed: the one seed of shuffles and augmentation.
      train_prompt: also train on the forced prompt tokens (the original did).
      augment_config: feature-domain augmentation; None = off.
      mel_dtype: dtype of the `mel` leaf; the stored float16 by default (half the bytes to the device, where
        the model casts it to its compute dtype).
      max_frames: crop the stored 3000 frames (30 s) to the model's window, `WhisperConfig.num_frames`
        (e.g. 1000 = 10 s for the demo's model); 0 = no crop. num_frames is clipped to it.
      shard: this process's shard; default `grain.sharding.ShardByJaxProcess()`.
      read: threads and prefetch.

    Returns:
      IterDataset of dicts: mel `[B, M, S]` mel_dtype, num_frames `[B]` int32, decoder_input_ids `[B, T]`
      int32, targets `[B, T]` int32, loss_mask `[B, T]` float32, dataset_index `[B]` int32 (position of the
      example's dataset in `datasets`).
    """
    shard = shard or grain.sharding.ShardByJaxProcess()
    local_batch_size = _local_batch_size(global_batch_size, shard)
    used = [(index, spec) for index, spec in enumerate(datasets) if spec.weight > 0]
    if not used:
        raise ValueError(f"no dataset has a positive weight in {[(s.name, s.weight) for s in datasets]}.")
    streams = [
        _train_stream(
            spec,
            index,
            _Encoder(spec.prefix, tokenizer, max_length, mel_dtype, max_frames),
            train_prompt,
            seed,
        )
        for index, spec in used
    ]
    mixed = (
        streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, [spec.weight for _, spec in used])
    )
    if augment_config is not None and augment_config.enabled:
        mixed = mixed.random_map(
            functools.partial(augment, config=augment_config), seed=_seed_for(seed, _AUGMENT)
        )
    rows = _ProcessRows(mixed, global_batch_size, shard)
    return _to_iter(rows.batch(local_batch_size, drop_remainder=True), read)


def _train_stream(
    spec: DatasetSpec, index: int, encoder: _Encoder, train_prompt: bool, seed: int
) -> grain.MapDataset:
    """One dataset's (clip, caption) pairs as examples, shuffled per epoch with the dataset's own seed."""
    source = _open(spec, spec.split_or(TRAIN_SPLITS))
    num_clips = len(source.records)
    if num_clips == 0 or source.max_captions == 0:
        raise ValueError(
            f"{spec.name} split {spec.split_or(TRAIN_SPLITS)} has no captioned clips to train on."
        )
    pairs = num_clips * source.max_captions
    logging.info(
        "train %s: %d clips x %d captions = %d examples per epoch, weight %s, prefix %r",
        spec.name,
        num_clips,
        source.max_captions,
        pairs,
        spec.weight,
        spec.prefix,
    )
    make_example = _TrainExample(source.records, source.max_captions, index, train_prompt, encoder)
    return _EpochShuffled(pairs, seed=_seed_for(seed, _SHUFFLE, index)).map(make_example)


@dataclasses.dataclass(frozen=True)
class _Encoder:
    """Record and caption -> model inputs, the same for training and evaluation rows of one dataset."""

    prefix: str
    tokenizer: text.Tokenizer
    max_length: int
    mel_dtype: Any
    max_frames: int

    def mel(self, record: Mapping[str, Any]) -> tuple[np.ndarray, np.int32]:
        """(mel `[M, S]` mel_dtype, its valid frames): the stored count, clipped to the cropped window."""
        mel = _mel(record, self.mel_dtype, self.max_frames)
        return mel, np.int32(min(record["num_frames"], mel.shape[-1]))

    def target(self, caption: str, train_prompt: bool = False) -> dict[str, np.ndarray]:
        """decoder_input_ids / targets / loss_mask `[T]` of prefix + caption."""
        return self.tokenizer.encode_target(self.prefix, caption, self.max_length, train_prompt)


@dataclasses.dataclass(frozen=True)
class _TrainExample:
    """Pair index -> training example: record pair // R, its caption pair % R (clips with fewer repeat theirs)."""

    records: grain.MapDataset
    max_captions: int
    dataset_index: int
    train_prompt: bool
    encoder: _Encoder

    def __call__(self, pair: int) -> dict[str, Any]:
        clip, slot = divmod(pair, self.max_captions)
        record = self.records[clip]
        captions = record["captions"]
        caption = _decode(captions[slot % len(captions)])
        mel, num_frames = self.encoder.mel(record)
        return {
            "mel": mel,
            "num_frames": num_frames,
            **self.encoder.target(caption, self.train_prompt),
            "dataset_index": np.int32(self.dataset_index),
        }


# ---------------------------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------------------------


def eval_dataset(
    spec: DatasetSpec,
    tokenizer: text.Tokenizer,
    *,
    global_batch_size: int,
    max_length: int = 80,
    mel_dtype: Any = np.float16,
    max_frames: int = 0,
    shard: grain.sharding.ShardOptions | None = None,
    read: ReadConfig = ReadConfig(),
) -> grain.IterDataset:
    """One pass over a split, one element per clip with all its references, in record order.

    The last global batch is padded with rows whose `mask` is False, so every batch has the static shape
    and no clip is dropped; every process yields the same number of batches. `max_frames` crops the mel as in
    `train_dataset` (0 = no crop).

    Returns:
      IterDataset of dicts: mel `[B, M, S]`, num_frames `[B]` int32, mask `[B]` bool, file_name `[B]` object
      (str), references `[B, R]` object (str, "" beyond num_references), num_references `[B]` int32,
      decoder_prompt `[B, P]` int32 (the forced prompt to decode from), and decoder_input_ids / targets /
      loss_mask `[B, T]` for a teacher-forced loss on the first reference.
    """
    shard = shard or grain.sharding.ShardByJaxProcess()
    local_batch_size = _local_batch_size(global_batch_size, shard)
    split = spec.split_or(EVAL_SPLITS)
    source = _open(spec, split)
    num_clips = len(source.records)
    if num_clips == 0:
        raise ValueError(f"{spec.name} split {split} is empty; nothing to evaluate.")
    num_rows = math.ceil(num_clips / global_batch_size) * global_batch_size
    make_example = _EvalExample(
        source.records,
        num_clips,
        max(source.max_captions, 1),
        _Encoder(spec.prefix, tokenizer, max_length, mel_dtype, max_frames),
    )
    rows = _ProcessRows(grain.MapDataset.range(num_rows).map(make_example), global_batch_size, shard)
    return _to_iter(rows.batch(local_batch_size, drop_remainder=True), read)


@dataclasses.dataclass(frozen=True)
class _EvalExample:
    """Row index -> evaluation element; rows past the last clip are masked copies of clip 0 with blanks."""

    records: grain.MapDataset
    num_clips: int
    max_references: int
    encoder: _Encoder

    def __call__(self, row: int) -> dict[str, Any]:
        valid = row < self.num_clips
        record = self.records[row if valid else 0]
        references = [_decode(c) for c in record["captions"]] if valid else []
        padded_references = np.full(self.max_references, "", dtype=object)
        padded_references[: len(references)] = references
        mel, num_frames = self.encoder.mel(record)
        return {
            "mel": mel if valid else np.zeros_like(mel),
            "num_frames": num_frames if valid else np.int32(0),
            "mask": np.bool_(valid),
            "file_name": np.asarray(_decode(record["file_name"]) if valid else "", dtype=object),
            "references": padded_references,
            "num_references": np.int32(len(references)),
            "decoder_prompt": np.asarray(
                self.encoder.tokenizer.prompt_ids(self.encoder.prefix), dtype=np.int32
            ),
            **self.encoder.target(references[0] if references else ""),
        }


# ---------------------------------------------------------------------------------------------------------------
# Onto the mesh.
# ---------------------------------------------------------------------------------------------------------------


class GlobalBatchIterator(Iterator[dict[str, Any]]):
    """Wraps a Grain iterator so `next()` gives mesh batches and `get_state`/`set_state` still checkpoint it."""

    def __init__(self, dataset: grain.IterDataset, mesh: Mesh):
        self._iterator = iter(dataset)
        self._mesh = mesh

    def __next__(self) -> dict[str, Any]:
        return sharding.host_to_global(next(self._iterator), self._mesh)

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state)


def mixture_specs(
    weights: Mapping[str, float], data_dir: str | os.PathLike, config: str = "mel80"
) -> list[DatasetSpec]:
    """{"audioset": 12, "audiocaps": 3, "clotho": 1} -> specs with the default builders, splits and prefixes."""
    unknown = sorted(set(weights) - set(TFDS_NAMES))
    if unknown:
        raise ValueError(f"unknown datasets {unknown} in the mixture; known: {', '.join(TFDS_NAMES)}.")
    return [
        DatasetSpec(name=name, data_dir=data_dir, weight=float(w), config=config)
        for name, w in weights.items()
    ]
