"""Grain input pipeline over tiny TFDS builds: mixture, (clip, caption) pairs, resume, eval padding, mesh."""

import collections
import dataclasses
import json

import grain
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from audiocap_jax import text
from audiocap_jax.data import pipeline
from audiocap_jax.model import sharding
from audiocap_jax.testing import layouts, tfds_data

NO_SHARDING = grain.sharding.NoSharding()
CLOTHO_PROMPT = [50258, 50259, 50359, 50363, 3474, 900, 78, 12331, 31974, 25, 220]
READ = pipeline.ReadConfig(num_threads=2, prefetch_batches=2)  # 2 busy cores


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tfds_data.build_all(tmp_path_factory.mktemp("pipeline"))["clotho"].data_dir


@pytest.fixture(scope="module")
def tokenizer():
    return text.Tokenizer.from_assets()


def _batches(dataset, count: int) -> list[dict[str, np.ndarray]]:
    iterator = iter(dataset)
    return [next(iterator) for _ in range(count)]


def _caption(tokenizer, row_targets, row_mask) -> str:
    return tokenizer.decode(row_targets[row_mask == 1])


def test_mixture_ratio_over_10k_examples(data_dir, tokenizer):
    weights = {"audioset": 12, "audiocaps": 3, "clotho": 1}
    specs = pipeline.mixture_specs(weights, data_dir)
    dataset = pipeline.train_dataset(
        specs, tokenizer, global_batch_size=100, mel_dtype=np.float16, shard=NO_SHARDING, read=READ
    )
    counts = collections.Counter()
    for batch in _batches(dataset, 100):
        counts.update(batch["dataset_index"].tolist())
        for row, index in enumerate(batch["dataset_index"][:10]):
            prompt = tokenizer.prompt_ids(specs[index].prefix)
            assert batch["decoder_input_ids"][row, : len(prompt)].tolist() == prompt
    assert sum(counts.values()) == 10_000
    for index, weight in enumerate(weights.values()):
        expected = weight / sum(weights.values())
        assert abs(counts[index] / 10_000 - expected) <= 0.02 * expected, (counts, weights)


def test_clotho_trains_on_every_caption_in_one_global_shuffle(data_dir, tokenizer):
    spec = pipeline.DatasetSpec("clotho", data_dir=data_dir)
    # 2 clips x 5 captions = 10 pairs: one batch of 10 is one epoch.
    epochs = _batches(
        pipeline.train_dataset([spec], tokenizer, global_batch_size=10, seed=7, shard=NO_SHARDING, read=READ),
        2,
    )
    clip_of = {c: name for name, captions in layouts.CLOTHO_CAPTIONS["development"] for c in captions}
    orders = []
    for batch in epochs:
        captions = [
            _caption(tokenizer, t, m) for t, m in zip(batch["targets"], batch["loss_mask"], strict=True)
        ]
        assert sorted(captions) == sorted(
            c for name, cs in layouts.CLOTHO_CAPTIONS["development"] if name != "Santa Motor.wav" for c in cs
        )
        clips = [clip_of[c] for c in captions]
        assert clips not in (sorted(clips), sorted(clips, reverse=True)), f"copies adjacent: {clips}"
        orders.append(captions)
    assert orders[0] != orders[1], "each epoch is reshuffled"
    assert epochs[0]["targets"].shape == (10, 79) and epochs[0]["mel"].shape == (10, 80, 3000)
    # train_prompt=False: targets 0..9 are the forced prompt's (untrained), target 10 is the first caption token.
    assert epochs[0]["loss_mask"][:, :10].sum() == 0 and (epochs[0]["loss_mask"][:, 10] == 1).all()


def test_resumed_iterator_continues_exactly(data_dir, tokenizer):
    def make():
        specs = pipeline.mixture_specs({"audioset": 2, "audiocaps": 1, "clotho": 1}, data_dir)
        augment = pipeline.AugmentConfig(shift_probability=0.5, gain_probability=0.5, mask_probability=0.5)
        return pipeline.train_dataset(
            specs,
            tokenizer,
            global_batch_size=4,
            seed=3,
            augment_config=augment,
            shard=NO_SHARDING,
            read=READ,
        )

    uninterrupted = _batches(make(), 6)
    iterator = iter(make())
    for _ in range(3):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    assert state == {"next_index": 3}
    resumed = iter(make())
    resumed.set_state(state)
    for expected in uninterrupted[3:]:
        batch = next(resumed)
        assert batch.keys() == expected.keys()
        for key in batch:
            np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def test_processes_read_disjoint_rows_of_the_same_global_batches(data_dir, tokenizer):
    specs = pipeline.mixture_specs({"audioset": 1, "audiocaps": 1, "clotho": 2}, data_dir)

    def batches(shard):
        return _batches(
            pipeline.train_dataset(specs, tokenizer, global_batch_size=4, seed=1, shard=shard, read=READ), 3
        )

    single = batches(NO_SHARDING)
    halves = [batches(grain.sharding.ShardOptions(index, 2)) for index in range(2)]
    for step, batch in enumerate(single):
        for key in batch:
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=f"step {step} {key}")
    assert halves[0][0]["mel"].shape == (2, 80, 3000)


def test_eval_batches_pad_with_masked_rows_and_keep_all_references(data_dir, tokenizer):
    spec = pipeline.DatasetSpec("clotho", data_dir=data_dir)
    [batch] = list(pipeline.eval_dataset(spec, tokenizer, global_batch_size=3, shard=NO_SHARDING, read=READ))
    assert batch["mask"].tolist() == [True, True, False]
    assert batch["num_references"].tolist() == [5, 5, 0]
    references = dict(layouts.CLOTHO_CAPTIONS["validation"])
    for row in range(2):
        assert batch["references"][row].tolist() == list(references[batch["file_name"][row]])
    assert batch["file_name"][2] == "" and batch["references"][2].tolist() == [""] * 5
    assert (batch["mel"][2] == 0).all() and batch["num_frames"].tolist() == [25, 25, 0]
    assert batch["decoder_prompt"].tolist() == [CLOTHO_PROMPT] * 3
    first = _caption(tokenizer, batch["targets"][0], batch["loss_mask"][0])
    assert first == references[batch["file_name"][0]][0]

    subset = dataclasses.replace(spec, max_clips=1)
    [batch] = list(
        pipeline.eval_dataset(subset, tokenizer, global_batch_size=3, shard=NO_SHARDING, read=READ)
    )
    assert batch["mask"].tolist() == [True, False, False]

    per_process = [
        list(
            pipeline.eval_dataset(
                spec, tokenizer, global_batch_size=4, shard=grain.sharding.ShardOptions(i, 2)
            )
        )
        for i in range(2)
    ]
    assert [[b["mask"].tolist() for b in batches] for batches in per_process] == [
        [[True, True]],
        [[False, False]],
    ]


def test_audioset_eval_references_are_keyword_captions(data_dir, tokenizer):
    spec = pipeline.DatasetSpec("audioset", data_dir=data_dir)
    [batch] = list(pipeline.eval_dataset(spec, tokenizer, global_batch_size=4, shard=NO_SHARDING, read=READ))
    references = dict(zip(batch["file_name"], batch["references"][:, 0], strict=True))
    assert references["--iSerV5DbY.mp3"] == "domestic sounds - home sounds, hair dryer"
    assert batch["mask"].tolist() == [True, True, True, False]
    assert tokenizer.decode(batch["decoder_prompt"][0]) == "audioset > keywords: "


def test_global_arrays_are_sharded_over_data_and_fsdp(data_dir, tokenizer):
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    spec = pipeline.DatasetSpec("clotho", data_dir=data_dir)
    dataset = pipeline.train_dataset([spec], tokenizer, global_batch_size=8, shard=NO_SHARDING, read=READ)
    host = next(iter(dataset))
    iterator = pipeline.GlobalBatchIterator(dataset, mesh)
    batch = next(iterator)
    assert iterator.get_state() == {"next_index": 1}
    assert batch["mel"].dtype == np.float16  # as stored; the model casts on the device
    for key, value in batch.items():
        assert value.sharding.spec == PartitionSpec(("data", "fsdp")), key
        assert value.shape == host[key].shape
        assert {shard.data.shape[0] for shard in value.addressable_shards} == {1}
        np.testing.assert_array_equal(np.asarray(value), host[key])

    tensor_mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "tensor"))
    on_data_only = sharding.host_to_global(host, tensor_mesh)
    assert on_data_only["mel"].sharding.spec == PartitionSpec("data")
    assert {s.data.shape for s in on_data_only["mel"].addressable_shards} == {(2, 80, 3000)}
    with pytest.raises(ValueError, match="not a multiple of the 8 data-parallel devices"):
        sharding.host_to_global({"mel": host["mel"][:6]}, mesh)


def test_augment_ops_do_what_they_say():
    rng_mel = np.random.default_rng(0)
    mel = rng_mel.uniform(-0.5, 1.0, size=(8, 20)).astype(np.float16)
    mel[:, 10:] = -0.5  # padding after 10 valid frames
    example = {"mel": mel, "num_frames": np.int32(10)}

    def run(config, seed=0):
        return pipeline.augment(example, np.random.default_rng(seed), config)["mel"]

    shifts = set()
    for seed in range(10):
        shifted = run(pipeline.AugmentConfig(shift_probability=1.0, max_shift_fraction=0.3), seed)
        [shift] = [
            s for s in range(-3, 4) if np.array_equal(shifted[:, :10], np.roll(mel[:, :10], s, axis=1))
        ]
        np.testing.assert_array_equal(shifted[:, 10:], mel[:, 10:])  # padding stays put
        shifts.add(shift)
    assert len(shifts) >= 4  # 10 draws from the 7 shifts -3..3 (max 30 % of 10 valid frames)

    gained = run(pipeline.AugmentConfig(gain_probability=1.0, max_gain_db=10.0)).astype(np.float32)
    offset = gained - mel.astype(np.float32)
    assert np.ptp(offset) < 2e-3 and 0 < abs(offset.mean()) <= 10 / 40 + 1e-3

    masked = run(
        pipeline.AugmentConfig(
            mask_probability=1.0,
            num_time_masks=1,
            max_time_mask_frames=4,
            num_freq_masks=1,
            max_freq_mask_bins=3,
        ),
        seed=5,
    )
    changed = masked != mel
    assert changed.any() and (masked[changed] == mel.min()).all()
    np.testing.assert_array_equal(masked[:, 10:][~changed[:, 10:]], mel[:, 10:][~changed[:, 10:]])

    assert pipeline.AugmentConfig().enabled is False
    np.testing.assert_array_equal(run(pipeline.AugmentConfig()), mel)


def test_bad_configs_raise_clear_errors(data_dir, tokenizer):
    with pytest.raises(ValueError, match="unknown datasets \\['wavcaps'\\]"):
        pipeline.mixture_specs({"wavcaps": 1}, data_dir)
    spec = pipeline.DatasetSpec("clotho", data_dir=data_dir)
    with pytest.raises(ValueError, match="not a positive multiple of the 2 processes"):
        pipeline.train_dataset(
            [spec], tokenizer, global_batch_size=3, shard=grain.sharding.ShardOptions(0, 2)
        )
    with pytest.raises(ValueError, match="no dataset has a positive weight"):
        pipeline.train_dataset(
            [dataclasses.replace(spec, weight=0)], tokenizer, global_batch_size=2, shard=NO_SHARDING
        )
    with pytest.raises(
        FileNotFoundError, match="python -m tfds_builders build tfds_builders/clotho --config=mel128"
    ):
        pipeline.train_dataset(
            [pipeline.DatasetSpec("clotho", data_dir=data_dir, config="mel128")],
            tokenizer,
            global_batch_size=2,
            shard=NO_SHARDING,
        )
    with pytest.raises(ValueError, match="has no split 'train'; it has"):
        pipeline.eval_dataset(
            pipeline.DatasetSpec("clotho", data_dir=data_dir, split="train"),
            tokenizer,
            global_batch_size=2,
            shard=NO_SHARDING,
        )
