"""Whisper NNX model: numerical parity with transformers' PyTorch Whisper, KV cache, sharding, checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from audiocap_jax.model import sharding
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import CheckpointError, export, hf_state_dict, load_hf_checkpoint
from audiocap_jax.model.whisper import Whisper, create_model
from audiocap_jax.testing.models import TINY_ARCH, save_tiny_hf_whisper

V3_ARCH = dict(num_mel_bins=128, vocab_size=51866)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_v2")
    torch_model = save_tiny_hf_whisper(path, seed=0)
    return path, torch_model


def _inputs(num_mel_bins: int, vocab: int, batch: int = 2, tokens: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    mel = rng.standard_normal((batch, num_mel_bins, 2 * TINY_ARCH["max_source_positions"])).astype(np.float32)
    ids = rng.integers(0, vocab, (batch, tokens)).astype(np.int32)
    return mel, ids


def _torch_logits(torch_model, mel, ids) -> np.ndarray:
    with torch.no_grad():
        out = torch_model(
            input_features=torch.tensor(mel), decoder_input_ids=torch.tensor(ids, dtype=torch.long)
        )
    return out.logits.numpy()


def _jit_forward(model: Whisper, mel, ids) -> np.ndarray:
    """Logits over the real vocabulary (the model's padding columns are -inf and dropped here)."""
    graphdef, state = nnx.split(model)
    logits = np.asarray(jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))(state, mel, ids))
    padding = logits[..., model.config.vocab_size :]
    assert padding.shape[-1] == model.config.padded_vocab_size - model.config.vocab_size
    assert np.all(padding == -np.inf)
    return logits[..., : model.config.vocab_size]


@pytest.mark.parametrize("arch", [{}, V3_ARCH], ids=["80mel", "128mel_v3"])
def test_logits_match_pytorch(tmp_path, arch):
    torch_model = save_tiny_hf_whisper(tmp_path, seed=1, **arch)
    model, config = load_hf_checkpoint(tmp_path)
    assert (config.num_mel_bins, config.vocab_size) == (
        arch.get("num_mel_bins", 80),
        arch.get("vocab_size", 51865),
    )
    mel, ids = _inputs(config.num_mel_bins, config.vocab_size)
    ours = _jit_forward(model, mel, ids)
    ref = _torch_logits(torch_model, mel, ids)
    assert ours.shape == (2, 9, config.vocab_size)
    assert np.abs(ours - ref).max() < 1e-4


def test_scan_and_remat_match_layer_loop(tiny_dir):
    path, torch_model = tiny_dir
    mel, ids = _inputs(80, 51865)
    ref = _torch_logits(torch_model, mel, ids)
    runtimes = (
        dict(scan_layers=True),
        dict(scan_layers=True, remat="full"),
        dict(remat="dots"),
        dict(attention_impl="xla"),
        dict(attention_impl="splash"),
    )
    for runtime in runtimes:
        model, _ = load_hf_checkpoint(path, **runtime)
        assert np.abs(_jit_forward(model, mel, ids) - ref).max() < 1e-4, runtime


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_equals_full_forward(tiny_dir, scan_layers):
    """Token-by-token decoding with the KV cache gives the full forward's logits, also with per-row
    positions (rows at different lengths) and beams sharing one example's cross-attention keys."""
    path, _ = tiny_dir
    model, _ = load_hf_checkpoint(path, scan_layers=scan_layers)
    mel, ids = _inputs(80, 51865, batch=2, tokens=8)
    full = _jit_forward(model, mel, ids)
    enc = model.encode(jnp.asarray(mel))
    vocab = model.config.vocab_size

    step, cache = model.start_decoding(enc, max_length=12)
    assert cache.stacked == scan_layers
    logits, cache = step(jnp.asarray(ids[:, :3]), cache, jnp.zeros(2, jnp.int32))
    steps = [logits]
    for t in range(3, 8):
        logits, cache = step(jnp.asarray(ids[:, t : t + 1]), cache, jnp.full(2, t, jnp.int32))
        steps.append(logits)
    assert np.abs(np.concatenate(steps, axis=1)[..., :vocab] - full).max() < 1e-4

    # Two beams per example (rows 0,1 -> example 0; rows 2,3 -> example 1), rows at different positions:
    # row r continues the sequence of its example from position 3 + r % 2.
    beams = 2
    step, cache = model.start_decoding(enc, max_length=12)
    cache = cache.repeat_rows(beams)
    # cross K/V are per layer and per clip (not tiled per beam); a scanned self cache is stacked [L, N, ...]
    assert cache.cross_k[0].shape[0] == 2
    assert jax.tree.leaves(cache.self_k)[0].shape[1 if scan_layers else 0] == 4
    rows = np.repeat(ids, beams, axis=0)  # [N, T]
    _, cache = step(jnp.asarray(rows[:, :5]), cache, jnp.zeros(4, jnp.int32))
    start = np.array([3, 4, 3, 4], np.int32)
    step_ids = rows[np.arange(4), start][:, None]
    logits, _ = step(jnp.asarray(step_ids), cache, jnp.asarray(start))
    expected = np.repeat(full, beams, axis=0)[np.arange(4), start]
    assert np.abs(np.asarray(logits[:, 0, :vocab]) - expected).max() < 1e-4


def test_repeat_and_gather_rows_touch_self_cache_only(tiny_dir):
    path, _ = tiny_dir
    model, _ = load_hf_checkpoint(path)
    mel, ids = _inputs(80, 51865, batch=2, tokens=4)
    step, cache = model.start_decoding(model.encode(jnp.asarray(mel)), max_length=8)
    cache = cache.repeat_rows(2)
    rows = jnp.asarray(
        np.stack([ids[0], ids[0][::-1], ids[1], ids[1][::-1]])
    )  # example 0: rows 0,1; 1: rows 2,3
    _, cache = step(rows, cache, jnp.zeros(4, jnp.int32))
    reordered = cache.gather_rows(jnp.array([1, 1, 2, 3]))
    repeated = cache.repeat_rows(3)  # [4, ...] --> [12, ...]: row r to rows 3r..3r+2
    for layer in range(len(cache.self_k)):
        np.testing.assert_array_equal(repeated.self_k[layer], np.repeat(cache.self_k[layer], 3, axis=0))
        np.testing.assert_array_equal(repeated.self_v[layer][3:6], np.stack([cache.self_v[layer][1]] * 3))
        assert repeated.cross_k[layer] is cache.cross_k[layer]
        np.testing.assert_array_equal(reordered.self_k[layer][:2], np.asarray(cache.self_k[layer])[[1, 1]])
        np.testing.assert_array_equal(reordered.self_v[layer][2:], cache.self_v[layer][2:])
        np.testing.assert_array_equal(reordered.cross_k[layer], cache.cross_k[layer])


def test_sharded_forward_equals_single_device(tiny_dir):
    path, _ = tiny_dir
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    single, _ = load_hf_checkpoint(path)
    sharded, _ = load_hf_checkpoint(path, mesh=mesh)
    fc1 = sharded.encoder.layers.fc1.kernel[...]
    assert fc1.shape == (2, 96, 192)
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert fc1.addressable_shards[0].data.shape == (2, 48, 96)  # really split, not replicated
    # 51865 is padded inside the model to 51968 = 406 x 128, so the vocab axis splits over tensor.
    table = sharded.decoder.embed_tokens.embedding[...]
    assert table.shape == (51968, 96)
    assert table.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")

    mel, ids = _inputs(80, 51865, batch=4)
    graphdef, state = nnx.split(sharded)
    batch_sharding = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
    with jax.set_mesh(mesh):
        out = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))(
            state, jax.device_put(mel, batch_sharding), jax.device_put(ids, batch_sharding)
        )
    assert np.abs(np.asarray(out)[..., :51865] - _jit_forward(single, mel, ids)).max() < 1e-5


def test_vocab_sharded_over_tensor_4(tiny_dir):
    """With tensor=4 (8 devices) the padded vocab axis shards 4 ways; logits equal the one-device model's,
    and the real-size HF tensor round-trips."""
    path, _ = tiny_dir
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    sharded, _ = load_hf_checkpoint(path, mesh=mesh)
    table = sharded.decoder.embed_tokens.embedding[...]
    assert table.sharding.spec == jax.sharding.PartitionSpec("tensor", None)
    assert table.addressable_shards[0].data.shape == (51968 // 4, 96)
    np.testing.assert_array_equal(np.asarray(table)[51865:], 0.0)  # padding rows read as zeros
    assert hf_state_dict(sharded)["model.decoder.embed_tokens.weight"].shape == (51865, 96)
    mel, ids = _inputs(80, 51865, batch=2)
    single, _ = load_hf_checkpoint(path)
    graphdef, state = nnx.split(sharded)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))(state, mel, ids)
    assert out.shape == (2, 9, 51968)
    assert np.abs(np.asarray(out)[..., :51865] - _jit_forward(single, mel, ids)).max() < 1e-5


def test_create_model_is_sharded_at_init():
    config = WhisperConfig(**{k: v for k, v in TINY_ARCH.items()})
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = create_model(config, mesh=mesh, seed=3)
    kernel = model.decoder.layers.fc2.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    positions = model.encoder.embed_positions.embedding[...]
    np.testing.assert_allclose(
        np.asarray(positions)[1, :2], [np.sin(1.0), np.sin(np.exp(-np.log(10000) / 47))], rtol=1e-6
    )


def test_export_round_trip(tiny_dir, tmp_path):
    from audiocap_jax.text import Tokenizer

    path, torch_model = tiny_dir
    model, _ = load_hf_checkpoint(path)
    out = export(model, Tokenizer.from_assets(), tmp_path / "exported")
    assert {"config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    reloaded = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    mel, ids = _inputs(80, 51865)
    assert np.abs(_torch_logits(reloaded, mel, ids) - _torch_logits(torch_model, mel, ids)).max() < 1e-5
    again, _ = load_hf_checkpoint(out)
    assert np.abs(_jit_forward(again, mel, ids) - _jit_forward(model, mel, ids)).max() == 0.0
    hf_tok = transformers.WhisperTokenizer.from_pretrained(out)
    assert hf_tok.convert_tokens_to_ids("<|startoftranscript|>") == 50258


def test_hf_state_dict_names_match_transformers(tiny_dir):
    path, torch_model = tiny_dir
    model, _ = load_hf_checkpoint(path)
    ours = hf_state_dict(model)
    theirs = {k for k in torch_model.state_dict() if k != "proj_out.weight"}
    assert set(ours) == theirs


# ------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file/tensor, nothing half-loaded.
# ------------------------------------------------------------------------------------------------------
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_directory_and_files(tiny_dir, tmp_path):
    path, _ = tiny_dir
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf_checkpoint(tmp_path / "nope")
    broken = _copy(path, tmp_path / "no_config")
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(broken)
    broken = _copy(path, tmp_path / "no_weights")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model weights"):
        load_hf_checkpoint(broken)


def test_unknown_architecture(tiny_dir, tmp_path):
    broken = _copy(tiny_dir[0], tmp_path / "bert")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "bert"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type='bert'"):
        load_hf_checkpoint(broken)


def test_wrong_shape_and_dtype_name_the_tensor(tmp_path):
    import safetensors.numpy

    save_tiny_hf_whisper(tmp_path, seed=0)
    tensors = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    tensors["model.decoder.layers.1.fc1.weight"] = np.zeros((10, 96), np.float32)
    tensors["model.encoder.layer_norm.bias"] = np.zeros((96,), np.int32)
    safetensors.numpy.save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        load_hf_checkpoint(tmp_path)
    message = str(err.value)
    assert "model.decoder.layers.1.fc1.weight" in message and "(10, 96)" in message and "(192, 96)" in message
    assert "model.encoder.layer_norm.bias has dtype int32" in message


def test_truncated_safetensors(tiny_dir, tmp_path):
    broken = _copy(tiny_dir[0], tmp_path / "truncated")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_hf_checkpoint(broken)


def test_wrong_input_shape_is_explained(tiny_dir):
    model, _ = load_hf_checkpoint(tiny_dir[0])
    with pytest.raises(ValueError, match=r"expected \[batch, 80, 200\]"):
        model.encode(jnp.zeros((1, 80, 3000)))


# ------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------
def test_variants_and_hf_config():
    v3 = WhisperConfig.from_variant("large-v3")
    assert (v3.num_mel_bins, v3.vocab_size, v3.d_model, v3.encoder_layers, v3.decoder_attention_heads) == (
        128,
        51866,
        1280,
        32,
        20,
    )
    tiny = WhisperConfig.from_variant("tiny", dtype="bfloat16")
    assert (tiny.d_model, tiny.encoder_ffn_dim, tiny.dtype, tiny.num_frames) == (384, 1536, "bfloat16", 3000)
    hf = transformers.WhisperConfig(**tiny.architecture())
    assert WhisperConfig.from_hf_config(hf) == tiny.replace(dtype="float32")
    with pytest.raises(ValueError, match="Unknown Whisper variant 'huge'"):
        WhisperConfig.from_variant("huge")
    with pytest.raises(ValueError, match="not divisible"):
        WhisperConfig(d_model=100, encoder_attention_heads=3)


def test_make_mesh_errors():
    assert dict(sharding.make_mesh({"data": -1, "tensor": 2}).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(ValueError, match="needs 6 devices but 8 are visible"):
        sharding.make_mesh({"data": 3, "tensor": 2})
    with pytest.raises(ValueError, match="unknown axes"):
        sharding.make_mesh({"model": 2})


def test_forward_only_encoder_equals_training_encoder(tiny_dir, monkeypatch):
    """`encode` (decoding's encoder: under the CPU policy the row-wise parts run in sequence chunks) gives the
    training encoder's states."""
    from audiocap_jax.model import whisper

    path, _ = tiny_dir
    model, _ = load_hf_checkpoint(path)
    assert model.config.attention_impl == "cpu"  # "auto" on CPU
    mel, _ = _inputs(80, 51865, batch=2, tokens=4)
    plain = np.asarray(jax.jit(lambda m: model.encoder(m))(mel))
    monkeypatch.setattr(whisper, "_CHUNK_ROWS", 50)  # the test model's 2 x 100 positions -> 4 chunks
    assert whisper._encoder_row_chunks(model.config, (2, 100, 64)) == 4
    assert whisper._encoder_row_chunks(model.config.replace(attention_impl="xla"), (2, 100, 64)) == 1
    chunked = np.asarray(jax.jit(lambda m: model.encode(m))(mel))
    assert np.abs(chunked - plain).max() < 1e-5


def test_vocab_major_logits_equal_plain_logits(tiny_dir, monkeypatch):
    """The output projection's two forms (vocab-major for a decoding step's few rows under the CPU policy)
    give the same logits."""
    from audiocap_jax.model import whisper

    path, _ = tiny_dir
    model, _ = load_hf_checkpoint(path)
    states = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3, model.config.d_model)), jnp.float32)
    vocab_major = np.asarray(jax.jit(model.decoder.logits)(states))
    monkeypatch.setattr(whisper, "_VOCAB_MAJOR_MAX_ROWS", 0)
    plain = np.asarray(jax.jit(model.decoder.logits)(states))
    assert vocab_major.shape == plain.shape == (4, 3, 51968)
    np.testing.assert_allclose(vocab_major[..., :51865], plain[..., :51865], rtol=1e-5, atol=1e-5)
    assert np.all(vocab_major[..., 51865:] == -np.inf)
