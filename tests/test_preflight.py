"""Pre-flight checks as pure functions of (config values, file system): each names the key and the fix."""

import json

import pytest

from audiocap_jax import cli, preflight
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.rundir import layout
from configs import base


def test_output_paths(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert preflight.check_writable_file(tmp_path / "new" / "deeper" / "out.csv", "--output-file") == (
        tmp_path / "new" / "deeper" / "out.csv"
    )
    assert not (tmp_path / "new").exists()  # checked, not created
    with pytest.raises(
        cli.UserError, match=r"--output-file=.*out is a directory\.\nfix: give --output-file a file"
    ):
        (tmp_path / "out").mkdir()
        preflight.check_writable_file(tmp_path / "out", "--output-file")
    with pytest.raises(cli.UserError, match=r"a_file is a file, so .* cannot be created as a folder"):
        preflight.check_writable_dir(tmp_path / "a_file" / "run", "--workdir")
    with pytest.raises(cli.UserError, match=r"a_file is a file, so .* cannot be used as a folder"):
        preflight.check_writable_dir(tmp_path / "a_file", "--workdir")


def test_mesh_and_steps():
    assert preflight.check_mesh({"data": -1, "fsdp": 2, "tensor": 1}, "--config.mesh", 8) == 8
    assert preflight.check_mesh({"data": 2, "fsdp": 1, "tensor": 4}, "--config.mesh", 8) == 2
    for mesh, message in (
        ({"data": 3}, "does not fit the 8 visible devices"),
        ({"data": 0}, "sizes must be >= 1 or -1"),
        ({"data": -1, "fsdp": -1}, "more than one axis is -1"),
        ({"pipeline": 2}, r"unknown axes \['pipeline'\]"),
    ):
        with pytest.raises(cli.UserError, match=message):
            preflight.check_mesh(mesh, "--config.mesh", 8)
    preflight.check_step("1200", "--config-file.step")
    with pytest.raises(cli.UserError, match="neither 'best', 'latest' nor a step number"):
        preflight.check_step("last", "--config-file.step")


def test_checkpoints_and_tfds_builds(tmp_path):
    workdir = tmp_path / "run"
    (workdir / layout.CHECKPOINT_DIR / "40").mkdir(parents=True)
    (workdir / layout.CHECKPOINT_DIR / "60.corrupt-20260101T000000Z").mkdir()
    (workdir / layout.MODEL_CONFIG_FILE).write_text("{}")
    preflight.check_checkpoint(str(workdir), "40")
    with pytest.raises(cli.UserError, match="has no checkpoint at step 60; it has steps 40"):
        preflight.check_checkpoint(str(workdir), "60")
    with pytest.raises(cli.UserError, match="is neither a training workdir"):
        preflight.check_checkpoint(str(tmp_path))
    preflight.check_checkpoint("openai/whisper-tiny")  # a hub id: resolved when loading

    build = tmp_path / "tfds" / "clotho" / "mel80" / "1.0.0"
    build.mkdir(parents=True)
    splits = [
        {"name": "development", "shardLengths": ["3", "2"]},
        {"name": "validation", "shardLengths": ["0"]},
    ]
    (build / "dataset_info.json").write_text(json.dumps({"splits": splits}))
    assert preflight.tfds_splits(tmp_path / "tfds", "clotho", "mel80", "--data_dir") == {
        "development": 5,
        "validation": 0,
    }
    with pytest.raises(cli.UserError, match=r"split 'validation' of clotho/mel80 in .* is empty"):
        preflight.check_evaluate("clotho", None, str(tmp_path / "tfds"), "mel80", None)
    with pytest.raises(cli.UserError, match=r"--style: style 'clotho' is not of the form"):
        preflight.check_evaluate("clotho", "development", str(tmp_path / "tfds"), "mel80", "clotho")


def _train_config(**changes):
    """The tiny runlocal config on the synthetic set (no TFDS build to look for): global batch 16 in 2
    micro-batches of 8, validation batches of 8, every device data-parallel; `changes` by flattened key."""
    config = base.get_config("variant=tiny,runlocal")
    config.data.synthetic.enabled = True
    config.update_from_flattened_dict(
        {"batch_size": 16, "accum_steps": 2, "eval.batch_size": 8, "mesh.data": -1, **changes}
    )
    return config


def test_train_config_batch_sizes_and_choices(tmp_path):
    """check_train alone guards the batch sizes (train.setup does not repeat them); its choices are the ones
    the code uses (load.INITS, train_step.SCHEDULES, the TFDS builds' mel configs)."""
    preflight.check_train(_train_config(), tmp_path / "run", num_devices=8)
    assert not (tmp_path / "run").exists()
    for changes, message in (
        ({"accum_steps": 3}, r"batch_size=16 is not a positive multiple of --config.accum_steps=3"),
        (
            {"accum_steps": 4},
            r"batch_size: 4 examples per \(micro-\)batch do not split over the 8 data-parallel",
        ),
        (
            {"eval.batch_size": 12},
            r"eval.batch_size: 12 examples per \(micro-\)batch do not split over the 8",
        ),
        ({"optim.schedule": "step"}, r"schedule='step' is not one of 'linear', 'cosine', 'constant'"),
        ({"model.init": "random"}, r"init='random' is not one of 'ours', 'hf', 'scratch'"),
        ({"data.mel_config": "mel64"}, r"mel_config='mel64' is not one of 'mel80', 'mel128'"),
    ):
        with pytest.raises(cli.UserError, match=message):
            preflight.check_train(_train_config(**changes), tmp_path / "run", num_devices=8)


def _saved_run(workdir, lora=None, **arch):
    """A workdir as a finished run leaves it, as far as pre-flight reads it: model_config.json, config.json
    (whose model came from `arch`, the tiny variant's fields changed) and one finished checkpoint folder."""
    saved = {"model_type": "whisper", **WhisperConfig.from_variant("tiny", **arch).architecture()}
    (workdir / layout.CHECKPOINT_DIR / "4").mkdir(parents=True)
    (workdir / layout.MODEL_CONFIG_FILE).write_text(json.dumps({**saved, **({"lora": lora} if lora else {})}))
    (workdir / layout.RUN_CONFIG_FILE).write_text(
        json.dumps({"model": {"hf_checkpoint": "openai/whisper-tiny"}})
    )
    return {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()}


def test_a_resumed_workdir_must_hold_the_configured_model(tmp_path):
    """The issue's reproduction, in process: a run saved with d_model=32, resumed with d_model=64, is refused in
    one line naming the key and both values; so are other LoRA settings, data of other mel bins and sequences
    longer than the saved model's positions. Nothing in the workdir changes."""
    workdir = tmp_path / "run"
    files = _saved_run(workdir, d_model=32, encoder_attention_heads=2, decoder_attention_heads=2)
    scratch = {
        "model.init": "scratch",
        "model.arch_overrides": {"d_model": 32, "encoder_attention_heads": 2, "decoder_attention_heads": 2},
    }
    preflight.check_train(_train_config(**scratch), workdir, num_devices=8)  # the same model: resumes

    wider = _train_config(**scratch)
    wider.model.arch_overrides.d_model = 64
    with pytest.raises(cli.UserError) as refused:
        preflight.check_train(wider, workdir, num_devices=8)
    problem, fix = refused.value.problem, refused.value.fix
    assert problem == (
        f"--workdir={workdir} holds a run with d_model=32 (model_config.json), but the config asks for "
        "d_model=64 (--config.model.arch_overrides.d_model); a resumed run keeps its model."
    )
    assert fix.startswith("resume with the run's settings") and fix.endswith(
        "or train the new model in a new --workdir"
    )
    for changes, message in (
        (
            {"model.lora": dict(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj",), bias="none")},
            r"holds a run with lora.rank=0, lora.alpha=0.0, lora.targets=\(\) .* asks for lora.rank=4, "
            r"lora.alpha=8.0, lora.targets=\('q_proj',\) \(--config.model.lora.rank, --config.model.lora.alpha",
        ),
        (
            {"model.variant": "base"},
            r"holds a run with encoder_layers=4, encoder_ffn_dim=1536, .* asks for encoder_layers=6, .*"
            r"\(--config.model.variant=base\)",
        ),
        (
            {"data.mel_config": "mel128"},
            r"mel_config='mel128', but the model takes num_mel_bins=80 \(--workdir=",
        ),
        ({"data.max_length": 500}, r"max_length=500 exceeds the model's 448 decoder positions"),
    ):
        config = _train_config(**scratch)
        config.update_from_flattened_dict({k: v for k, v in changes.items() if k != "model.lora"})
        if "model.lora" in changes:
            config.model.lora.update(changes["model.lora"])
        with pytest.raises(cli.UserError, match=message):
            preflight.check_train(config, workdir, num_devices=8)
    assert {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()} == files


def test_resume_compares_the_hf_checkpoint_and_starts_fresh_without_checkpoints(tmp_path):
    """init=hf: a local HF directory's config.json is the planned model; a hub id that is not cached cannot be
    read without a download, so it must be the one the workdir's last run named."""
    workdir = tmp_path / "run"
    _saved_run(workdir)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    tiny = WhisperConfig.from_variant("tiny").architecture()
    (hf_dir / layout.HF_CONFIG_FILE).write_text(
        json.dumps({"model_type": "whisper", **tiny, "decoder_layers": 2})
    )
    with pytest.raises(
        cli.UserError,
        match=rf"decoder_layers=4 .* decoder_layers=2 \(--config.model.hf_checkpoint={hf_dir}\)",
    ):
        preflight.check_resume(_train_config(**{"model.hf_checkpoint": str(hf_dir)}), workdir)
    preflight.check_resume(_train_config(**{"model.hf_checkpoint": "openai/whisper-tiny"}), workdir)
    with pytest.raises(
        cli.UserError, match=r"hf_checkpoint='openai/whisper-tiny' .* hf_checkpoint='someone/whisper-x'"
    ):
        preflight.check_resume(_train_config(**{"model.hf_checkpoint": "someone/whisper-x"}), workdir)
    (workdir / layout.CHECKPOINT_DIR / "4").rename(
        workdir / layout.CHECKPOINT_DIR / "4.corrupt-20260101T000000Z"
    )
    # Without a finished checkpoint there is nothing to resume: the config's model starts afresh.
    preflight.check_resume(_train_config(**{"model.hf_checkpoint": str(hf_dir)}), workdir)
