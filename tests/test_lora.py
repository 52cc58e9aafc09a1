"""LoRA: adapters start as a no-op and shard like their layer, only they (and biases) train, resuming restores
them and their optimizer state, loading a workdir and the export merge them, and a smoke run trains with them."""

import dataclasses
import json
import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from test_train import REPO, _command, _env
from test_train_step import TINY, _batch  # the tiny model and 8-clip batch the train-step tests use

from audiocap_jax import cli, text
from audiocap_jax.model import lora, sharding
from audiocap_jax.model.hf import export, load_hf_checkpoint
from audiocap_jax.model.sharding import batch_sharding
from audiocap_jax.model.whisper import create_model
from audiocap_jax.rundir import checkpoint, layout, load, train_step
from audiocap_jax.testing.models import TINY_ARCH, save_tiny_hf_whisper
from configs import finetune_lora

Q_V_FC1 = lora.LoRASpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "fc1"), bias="all")
WRAPPED_Q_V_FC1 = [
    "decoder.layers.encoder_attn.q_proj",
    "decoder.layers.encoder_attn.v_proj",
    "decoder.layers.fc1",
    "decoder.layers.self_attn.q_proj",
    "decoder.layers.self_attn.v_proj",
    "encoder.layers.fc1",
    "encoder.layers.self_attn.q_proj",
    "encoder.layers.self_attn.v_proj",
]


@pytest.fixture(scope="module")
def tokenizer():
    return text.Tokenizer.from_assets()


def _randomise_adapters(model, seed=1):
    """B is zero at the start; give it values so the adapters change the output."""
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if isinstance(module, lora.LoRADense):
            key = jax.random.key(seed + index)
            module.lora_b[...] = 0.05 * jax.random.normal(key, module.lora_b.shape, module.lora_b.dtype)


def _forward(model, mel, ids):
    """Logits over the real vocabulary (the padding rows' logits are -inf)."""
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))(state, mel, ids)
    return np.asarray(logits[..., : model.config.vocab_size])


def test_wrapped_model_starts_equal_and_adapters_shard_like_their_layer():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = create_model(TINY, mesh=mesh, seed=0)
    mel = np.random.default_rng(0).standard_normal((2, 80, TINY.num_frames)).astype(np.float32)
    ids = np.ones((2, 5), np.int32)
    before = _forward(model, mel, ids)
    assert lora.apply_lora(model, Q_V_FC1) == WRAPPED_Q_V_FC1
    np.testing.assert_array_equal(_forward(model, mel, ids), before)  # B = 0: nothing changes yet.
    fc1 = model.encoder.layers.fc1
    assert (fc1.lora_a.shape, fc1.lora_b.shape) == ((2, 64, 4), (2, 4, 128))
    assert fc1.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert fc1.lora_a[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    assert fc1.lora_b[...].sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
    assert lora.apply_lora(model, Q_V_FC1) == []  # Wrapped layers are not wrapped twice.


def test_targets_missing_from_the_model_and_bad_settings_fail_at_start():
    """Every setting is checked from the config alone, before a model exists (pre-flight runs these): targets
    against the layer names of the architecture, which do not depend on its sizes (stacked layers)."""
    model = create_model(TINY, seed=0)
    assert lora.layer_names() == [name for name, *_ in lora._dense_layers(model)]
    spec = lora.LoRASpec(rank=4, alpha=8.0, targets=("q_proj", "query", "c_attn"), bias="all")
    for check in (lambda: lora.check_targets(spec, lora.layer_names()), lambda: lora.apply_lora(model, spec)):
        with pytest.raises(
            cli.UserError, match=r"targets \['query', 'c_attn'\] match no layer of Whisper.*'q_proj'"
        ):
            check()
    base = dict(rank=64, alpha=32.0, dropout=0.05, targets=("q_proj",), bias="all")
    assert lora.LoRASpec.from_config(base).scale == 0.5
    assert (
        lora.LoRASpec.from_config(dict(rank=0, alpha=0.0, dropout=0.0, targets=(), bias="none"))
        == lora.NO_LORA
    )
    for change, message in (
        ({"rank": -1}, r"lora.rank=-1 is negative\.\nfix: set --config.model.lora.rank=0 \(no LoRA\)"),
        # Rank 0 is no LoRA: every weight would train while the other keys ask for adapters.
        (
            {"rank": 0},
            r"rank=0 means no LoRA \(every weight trains\), yet --config.model.lora sets alpha=32.0, ",
        ),
        ({"dropout": 1.0}, r"dropout=1 is outside \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1 is outside \[0, 1\)"),
        ({"bias": "some"}, r"bias='some' is not one of 'none', 'all', 'lora_only'"),
        ({"targets": ()}, "targets is empty"),
        ({"targets": ("q_proj(",)}, r"targets: 'q_proj\(' is not a regex"),
        ({"targets": "q_proj"}, r"targets='q_proj' is a string, not a tuple"),
        ({"alpha": 0.0}, "alpha=0 must be positive"),
    ):
        with pytest.raises(cli.UserError, match=message):
            lora.LoRASpec.from_config({**base, **change})
    lora.apply_lora(model, Q_V_FC1)
    with pytest.raises(cli.UserError, match=r"train_only=\['fc1'\] and --config.model.lora both choose"):
        train_step.trainable(train_only=("fc1",), lora=Q_V_FC1, weights=nnx.state(model))


@pytest.mark.parametrize(
    "bias, trained_biases",
    [
        ("none", set()),
        ("lora_only", {f"{layer}.bias" for layer in WRAPPED_Q_V_FC1}),
    ],
)
def test_bias_mode_chooses_the_biases_that_train(bias, trained_biases):
    model = create_model(TINY, seed=0)
    spec = lora.LoRASpec(rank=4, alpha=8.0, targets=Q_V_FC1.targets, bias=bias)
    lora.apply_lora(model, spec)
    weights = nnx.state(model)
    trained = set(
        train_step.param_names(
            train_step.split_trained(weights, train_step.trainable(lora=spec, weights=weights))[0]
        )
    )
    adapters = {f"{layer}.{name}" for layer in WRAPPED_Q_V_FC1 for name in lora.ADAPTER_NAMES}
    assert trained == adapters | trained_biases


def _lora_setup(model, spec, mesh, lr=3e-3, total=100):
    """What train.build_state does for a LoRA run: the filter over the wrapped model, optimizer, state, step."""
    lora.apply_lora(model, spec)
    graphdef, weights = nnx.split(model)
    selects = train_step.trainable(lora=spec, weights=weights)
    schedule = train_step.make_schedule(lr=lr, warmup_steps=5, total_steps=total, decay="constant")
    tx = train_step.make_optimizer(schedule)
    state = train_step.init_train_state(weights, tx, selects, mesh)
    step = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh)
    return graphdef, selects, tx, state, step


def test_only_adapters_and_biases_train_resume_restores_them_and_loading_merges_them(tokenizer, tmp_path):
    mesh = sharding.make_mesh({"data": 8})
    graphdef, selects, tx, state, step = _lora_setup(create_model(TINY, mesh=mesh, seed=0), Q_V_FC1, mesh)

    names = train_step.param_names(state.weights)
    sizes = {
        name: math.prod(leaf.shape) for name, leaf in zip(names, jax.tree.leaves(state.weights), strict=True)
    }
    trainable = {name for name in names if name.endswith((".lora_a", ".lora_b", ".bias"))}
    # Adam keeps a first and a second moment per trainable number; frozen parameters get none.
    # Trainable: adapters 9,216 (encoder 2 x (q, v: 2 x 256; fc1: 256 + 512), decoder 2 x (4 x 512 + 768))
    # + biases 2,816 (encoder 1,216, decoder 1,600).
    moments = sum(leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim > 0)
    assert moments == 2 * sum(sizes[name] for name in trainable) == 2 * 12_032

    before = jax.device_get(state.weights)
    batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in _batch(tokenizer).items()}
    with jax.set_mesh(mesh):
        for _ in range(6):  # past the 5 warmup steps, lr > 0
            state, _ = step(state, batch)
    after = jax.device_get(state.weights)
    changed = {
        name
        for name, a, b in zip(names, jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        if not np.array_equal(a, b)
    }
    assert changed == trainable

    # The run files record the adapters: resuming restores them and their optimizer state exactly.
    workdir = tmp_path / "run"
    load.save_run_files(workdir, TINY, tokenizer, Q_V_FC1)
    assert json.loads((workdir / layout.MODEL_CONFIG_FILE).read_text())["lora"]["targets"] == list(
        Q_V_FC1.targets
    )
    assert load.saved_lora(workdir) == Q_V_FC1
    saver = checkpoint.Checkpointer(workdir / layout.CHECKPOINT_DIR, async_save=False)
    saver.save(6, state, {"position": 0})
    resumed = load.build_model(
        load.ModelInit(init="scratch"), mesh=mesh, resume_from=saver, run_files=workdir
    )
    assert resumed.resume
    target = train_step.abstract_train_state(nnx.state(resumed.model), tx, selects, mesh)
    restored_step, restored, _ = saver.restore_latest(target)
    saver.close()
    assert restored_step == 6
    for a, b in zip(
        jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored)), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    # Loading the workdir (predict, evaluate, init_from) merges the adapters: plain Whisper, same outputs.
    loaded = load.build_model(load.ModelInit.from_path(workdir, step="latest")).model
    assert not any(isinstance(module, lora.LoRADense) for _, module in nnx.iter_modules(loaded))
    tuned = nnx.merge(graphdef, state.weights)
    mel, ids = np.asarray(batch["mel"][:2]), np.asarray(batch["decoder_input_ids"][:2])
    assert np.abs(_forward(loaded, mel, ids) - _forward(tuned, mel, ids)).max() < 1e-5


def test_export_merges_adapters_into_plain_whisper_with_the_same_logits(tmp_path):
    torch_base = save_tiny_hf_whisper(tmp_path / "base", seed=0)
    model, _ = load_hf_checkpoint(tmp_path / "base")
    lora.apply_lora(model, finetune_lora_spec("q-v-fc1-k-fc2-out"))
    _randomise_adapters(model)
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, 80, 2 * TINY_ARCH["max_source_positions"])).astype(np.float32)
    ids = rng.integers(0, 51865, (2, 9)).astype(np.int32)
    unmerged = _forward(model, mel, ids)

    merged = lora.merge_lora(model)
    assert not any(isinstance(module, lora.LoRADense) for _, module in nnx.iter_modules(merged))
    assert np.abs(_forward(merged, mel, ids) - unmerged).max() < 1e-5
    out = export(model, text.Tokenizer.from_assets(), tmp_path / "exported")
    reloaded, _ = load_hf_checkpoint(out)
    assert np.abs(_forward(reloaded, mel, ids) - unmerged).max() < 1e-5
    with torch.no_grad():
        inputs = dict(input_features=torch.tensor(mel), decoder_input_ids=torch.tensor(ids, dtype=torch.long))
        theirs = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()(**inputs).logits
        base = torch_base(**inputs).logits
    assert np.abs(theirs.numpy() - unmerged).max() < 1e-4  # the PyTorch oracle's tolerance
    assert np.abs(base.numpy() - unmerged).max() > 1e-2  # the adapters did change the model


def _dropout_step(spec, mesh, tokenizer):
    """A LoRA model with random adapters (B = 0 would hide the dropout), its state at step 0, its jitted step
    (not donated, so a state can be stepped twice) and the 8-clip batch on `mesh`."""
    model = create_model(TINY, mesh=mesh, seed=0)
    lora.apply_lora(model, spec)
    _randomise_adapters(model)
    graphdef, weights = nnx.split(model)
    selects = train_step.trainable(lora=spec, weights=weights)
    schedule = optax.constant_schedule(1e-3)
    tx = train_step.make_optimizer(schedule)
    state = train_step.init_train_state(weights, tx, selects, mesh)
    step = jax.jit(train_step.make_train_step(graphdef, tx, schedule, selects, seed=0))
    batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in _batch(tokenizer).items()}
    return state, step, batch


def _run(state, step, batch, mesh):
    with jax.set_mesh(mesh):
        new_state, metrics = step(state, batch)
    return {k: float(v) for k, v in metrics.items()}, jax.device_get(new_state.weights)


def test_dropout_changes_the_step_its_masks_follow_seed_and_step_not_the_mesh(tokenizer):
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    dropout = lora.LoRASpec(rank=4, alpha=8.0, dropout=0.5, targets=Q_V_FC1.targets, bias="all")
    state, step, batch = _dropout_step(dropout, mesh, tokenizer)
    first, first_weights = _run(state, step, batch, mesh)
    again, again_weights = _run(state, step, batch, mesh)
    later, _ = _run(state.replace(step=state.step + 1), step, batch, mesh)
    plain_state, plain_step, _ = _dropout_step(dataclasses.replace(dropout, dropout=0.0), mesh, tokenizer)
    plain, _ = _run(plain_state, plain_step, batch, mesh)
    plain_later, _ = _run(plain_state.replace(step=plain_state.step + 1), plain_step, batch, mesh)
    pod = sharding.make_mesh({"data": 4, "fsdp": 2})
    sharded, _ = _run(*_dropout_step(dropout, pod, tokenizer), pod)

    # Dropout changes the loss and gradient of the same weights; without it the step number changes nothing.
    assert abs(first["loss"] - plain["loss"]) > 1e-3, (first, plain)
    assert abs(first["grad_norm"] - plain["grad_norm"]) > 1e-3, (first, plain)
    assert plain["loss"] == plain_later["loss"]
    # The same (seed, step) draws the same masks: the identical step twice, weights and all.
    assert first == again
    for a, b in zip(jax.tree.leaves(first_weights), jax.tree.leaves(again_weights), strict=True):
        np.testing.assert_array_equal(a, b)
    # Another step draws other masks; so does another seed (or micro-step): the key of each differs.
    assert abs(first["loss"] - later["loss"]) > 1e-4, (first, later)
    keys = {
        tuple(np.asarray(jax.random.key_data(train_step.step_key(seed, 3, micro))))
        for seed, micro in ((0, 0), (1, 0), (0, 1))
    }
    assert len(keys) == 3
    # The masks are the same on a mesh of 8 devices (batch split 4 ways): partitionable threefry.
    assert sharded["loss"] == pytest.approx(first["loss"], abs=1e-5)
    assert sharded["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-4)


def test_eval_and_decoding_are_deterministic_and_ignore_dropout():
    """No key, no mask: the teacher-forced forward and a decoding step give what dropout 0 gives."""
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, 80, TINY.num_frames)).astype(np.float32)
    ids = rng.integers(0, 51865, (2, 5)).astype(np.int32)
    outputs = []
    for rate in (0.05, 0.0):
        model = create_model(TINY, seed=0)
        lora.apply_lora(model, dataclasses.replace(Q_V_FC1, dropout=rate))
        _randomise_adapters(model)
        graphdef, state = nnx.split(model)

        def forward_and_decode(state, graphdef=graphdef):
            model = nnx.merge(graphdef, state)
            tokens_to_logits, cache = model.start_decoding(model.encode(mel), max_length=8)
            return model(mel, ids), tokens_to_logits(ids, cache, jnp.zeros(2, jnp.int32))[0]

        outputs.append(jax.device_get(jax.jit(forward_and_decode)(state)))
    for ours, plain in zip(*outputs, strict=True):
        np.testing.assert_array_equal(ours, plain)


def finetune_lora_spec(name):
    """A small-rank version of one of configs/finetune_lora.py's adapter sets."""
    spec = lora.LoRASpec.from_config(finetune_lora.get_config(f"variant=tiny,lora={name}").model.lora)
    return lora.LoRASpec(rank=8, alpha=16.0, targets=spec.targets, bias=spec.bias)


def test_lora_tuned_tiny_model_overfits_eight_clips(tokenizer):
    """Only adapters and biases train, on a random tiny base, until every caption token is predicted.

    LoRA assumes a useful base; two changes stand in for one: the token embeddings (frozen, and tied to the
    output) are scaled x5, since random ones of std 0.02 bound every logit near 0; and each clip gets a loud
    band of its own (10 mel bins + 3) on top of the fixtures' noise, as different sounds differ in spectrum.
    Rank 64 = the tiny width, so the adapters can express any change of the six adapted layers.
    """
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = create_model(TINY, mesh=mesh, seed=0)
    model.decoder.embed_tokens.embedding[...] = 5.0 * model.decoder.embed_tokens.embedding[...]
    targets = finetune_lora.LORA_VARIANTS["q-v-fc1-k-fc2-out"][2]
    spec = lora.LoRASpec(rank=64, alpha=64.0, targets=targets, bias="all")
    _, _, _, state, step = _lora_setup(model, spec, mesh, total=300)
    batch = _batch(tokenizer)
    for clip in range(8):
        batch["mel"][clip, 10 * clip : 10 * clip + 10] += 3.0
    batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in batch.items()}
    history = []
    with jax.set_mesh(mesh):
        for _ in range(300):  # 190 steps when this was written
            state, metrics = step(state, batch)
            history.append((float(metrics["loss"]), float(metrics["token_accuracy"])))
            if history[-1][1] == 1.0:
                break
    (first_loss, first_accuracy), (last_loss, last_accuracy) = history[0], history[-1]
    assert (first_accuracy, last_accuracy) == (0.0, 1.0), (history[-1], len(history))
    assert first_loss > 11.0 and last_loss < 5.0, (first_loss, last_loss)


def test_smoke_run_with_lora_trains_logs_the_trainable_line_exports_and_resumes(tmp_path, clotho_data_dir):
    workdir = tmp_path / "run"
    settings = (
        "--config.eval.every_steps=0",
        "--config.model.lora.rank=4",
        "--config.model.lora.alpha=8",
        '--config.model.lora.targets=("q_proj","v_proj")',
    )

    def train(*overrides):
        command = _command(workdir, clotho_data_dir, *settings, *overrides, validate_and_export=True)
        result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    log = train("--config.total_steps=4")
    # Smoke model: 1,697,248 parameters + adapters on 3 q/v pairs of 32 x 32: 3 x 2 x (32 x 4 + 4 x 32).
    line = next((line for line in log.splitlines() if "trainable parameters" in line), log[-3000:])
    assert line.endswith(
        "] trainable parameters 1,536 of 1,698,784 (0.09%) selected by train_only [], freeze [], LoRA rank 4, "
        "alpha 8 (scale 2), dropout 0, bias none, targets [q_proj, v_proj]"
    ), line
    assert load.saved_lora(workdir) == lora.LoRASpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    exported, _ = load_hf_checkpoint(workdir / "hf_export")
    assert not any(isinstance(module, lora.LoRADense) for _, module in nnx.iter_modules(exported))
    # Resuming restores the adapters and their optimizer state into the abstract model the run files describe.
    assert "Resumed from step 4" in train("--config.total_steps=6")
