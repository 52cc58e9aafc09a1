"""Train step: learns (overfits 8 clips), sharded == single device, freezing by split (no gradients or optimizer
state for frozen weights, grad_norm over the trained ones), schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from audiocap_jax import text
from audiocap_jax.decoding import search, whisper_binding
from audiocap_jax.model import sharding
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.sharding import batch_sharding
from audiocap_jax.model.whisper import create_model
from audiocap_jax.rundir import train_step

TINY = WhisperConfig(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_source_positions=50,
    max_target_positions=32,
)
CAPTIONS = [
    "a dog barks twice",
    "rain falls on a metal roof",
    "birds chirp in the morning",
    "a car passes by quickly",
    "water drips into a bucket",
    "people talk in a busy cafe",
    "a door creaks and slams",
    "wind blows through the trees",
]
MAX_LENGTH = 24


def _batch(tokenizer, n=8, seed=0):
    rng = np.random.default_rng(seed)
    mel = rng.standard_normal((n, 80, TINY.num_frames)).astype(np.float32)
    rows = [tokenizer.encode_target(text.CLOTHO_CAPTION, CAPTIONS[i % 8], MAX_LENGTH) for i in range(n)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return {"mel": mel, **batch}


def _setup(mesh, lr=3e-3, total=200, train_only=(), freeze=()):
    graphdef, weights = nnx.split(create_model(TINY, mesh=mesh, seed=0))
    selects = train_step.trainable(train_only, freeze)
    schedule = train_step.make_schedule(lr=lr, warmup_steps=5, total_steps=total, decay="constant")
    tx = train_step.make_optimizer(schedule)
    state = train_step.init_train_state(weights, tx, selects, mesh)
    step = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh)
    return graphdef, state, step


@pytest.fixture(scope="module")
def tokenizer():
    return text.Tokenizer.from_assets()


def test_overfits_eight_clips_and_beam_search_reproduces_them(tokenizer):
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    graphdef, state, step = _setup(mesh)
    batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in _batch(tokenizer).items()}
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(200):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
            if losses[-1] < 0.02:
                break
    assert losses[0] > 5.0 and losses[-1] < 0.05, (losses[0], losses[-1])
    whisper = nnx.merge(graphdef, state.weights)
    settings = search.DecodeSettings(eos_id=tokenizer.specials.eot, num_beams=4, max_length=MAX_LENGTH)
    decode_fn = whisper_binding.make_decode_fn(whisper, settings, mesh)
    prompt = np.tile(np.asarray(tokenizer.prompt_ids(text.CLOTHO_CAPTION), np.int32), (8, 1))
    sequences, _ = decode_fn(
        nnx.state(whisper),
        batch["mel"],
        jax.device_put(prompt, batch_sharding(mesh)),
        jax.device_put(np.full(8, prompt.shape[1], np.int32), batch_sharding(mesh)),
    )
    sequences = np.asarray(sequences)
    captions = [tokenizer.caption_from_ids(sequences[i, 0], prompt.shape[1]) for i in range(8)]
    assert captions == CAPTIONS


def test_sharded_steps_equal_single_device(tokenizer):
    single = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    pod = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    results = {}
    for name, mesh in (("single", single), ("pod", pod)):
        _, state, step = _setup(mesh, lr=1e-3)
        losses = []
        with jax.set_mesh(mesh):
            for i in range(5):
                batch = {
                    k: jax.device_put(v, batch_sharding(mesh)) for k, v in _batch(tokenizer, seed=i).items()
                }
                state, metrics = step(state, batch)
                losses.append(float(metrics["loss"]))
        results[name] = (np.array(losses), jax.device_get(state.weights))
    np.testing.assert_allclose(results["single"][0], results["pod"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results["single"][1]), jax.tree.leaves(results["pod"][1]), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def _names(weights):
    return [train_step.dotted_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(weights)]


def test_fc1_only_slice_trains_and_differentiates_fc1_only(tokenizer):
    mesh = sharding.make_mesh({"data": 8})
    graphdef, state, step = _setup(mesh, train_only=("fc1",))
    fc1 = {
        "encoder.layers.fc1.kernel",
        "encoder.layers.fc1.bias",
        "decoder.layers.fc1.kernel",
        "decoder.layers.fc1.bias",
    }
    # Adam's two moments exist for the four fc1 leaves only: frozen weights carry no optimizer state.
    moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim > 0]
    assert len(moments) == 2 * len(fc1)
    before = jax.device_get(state.weights)
    batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in _batch(tokenizer).items()}

    # grad_norm is the norm of the fc1 gradients alone, as a full backward pass computes them.
    def loss(weights):
        sums = train_step.token_loss(
            nnx.merge(graphdef, weights)(batch["mel"], batch["decoder_input_ids"]),
            batch["targets"],
            batch["loss_mask"],
        )
        return sums["loss_sum"] / sums["tokens"]

    with jax.set_mesh(mesh):
        all_grads = jax.grad(loss)(state.weights)
        fc1_norm = np.sqrt(
            sum(
                float(np.sum(np.square(g)))
                for n, g in zip(_names(all_grads), jax.tree.leaves(all_grads), strict=True)
                if n in fc1
            )
        )
        for i in range(6):  # past the 5 warmup steps, lr > 0
            state, metrics = step(state, batch)
            if i == 0:
                assert float(metrics["grad_norm"]) == pytest.approx(fc1_norm, rel=1e-4)
    after = jax.device_get(state.weights)
    changed = {
        n
        for n, a, b in zip(_names(before), jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        if not np.array_equal(a, b)
    }
    assert changed == fc1


def test_gradient_accumulation_equals_one_big_batch(tokenizer):
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    graphdef, weights = nnx.split(create_model(TINY, mesh=mesh))
    selects = train_step.trainable()
    schedule = optax.constant_schedule(1e-2)
    tx = optax.sgd(schedule)  # plain SGD: the update is the gradient itself (Adam would amplify float noise)
    batch = {k: jnp.asarray(v) for k, v in _batch(tokenizer).items()}
    out = []
    for accum in (1, 4):
        state = train_step.init_train_state(weights, tx, selects, mesh)
        new_state, metrics = jax.jit(train_step.make_train_step(graphdef, tx, schedule, selects, accum))(
            state, batch
        )
        out.append((float(metrics["loss"]), jax.device_get(new_state.weights)))
    assert abs(out[0][0] - out[1][0]) < 1e-5
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_schedule_and_bad_settings():
    schedule = train_step.make_schedule(lr=1e-3, warmup_steps=10, total_steps=110, decay="linear")
    assert [float(schedule(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 0.0])
    with pytest.raises(ValueError, match="warmup_steps 10 >= total_steps 10"):
        train_step.make_schedule(lr=1e-3, warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="schedule='step' is not one of 'linear', 'cosine', 'constant'"):
        train_step.make_schedule(lr=1e-3, warmup_steps=1, total_steps=10, decay="step")
    weights = nnx.state(create_model(TINY))
    with pytest.raises(ValueError, match="train_only=nothing leave no parameter to train"):
        train_step.check_trainable(
            weights, train_step.trainable(train_only=("nothing_matches",)), "train_only=nothing"
        )


def test_token_loss_counts_only_masked_tokens():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]]]))
    sums = train_step.token_loss(logits, jnp.array([[0, 0, 0]]), jnp.array([[1.0, 1.0, 0.0]]))
    assert float(sums["loss_sum"]) == pytest.approx(-np.log(0.5) - np.log(0.9), rel=1e-5)
    assert (float(sums["tokens"]), float(sums["correct"])) == (2.0, 2.0)
