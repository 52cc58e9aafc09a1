"""Pre-flight checks as pure functions of (config values, file system): each names the key and the fix."""

import json

import pytest

from audiocap_jax import cli, preflight
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
    (workdir / "checkpoints" / "40").mkdir(parents=True)
    (workdir / "checkpoints" / "60.corrupt-20260101T000000Z").mkdir()
    (workdir / "model_config.json").write_text("{}")
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
    the code uses (choices.INITS and SCHEDULES, the TFDS builds' mel configs)."""
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
