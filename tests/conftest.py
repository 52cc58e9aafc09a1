"""Test session setup: 8 fake CPU devices so sharding is exercised like on a pod; shared fixtures."""

import os

import pytest

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CPU runs the tests; the TPU and CUDA plugins (installed to compile for pods) only compile, quietly.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # test workers compile for TPUs side by side

from audiocap_jax import cli  # noqa: E402  (after the environment above)

cli.start_process()  # what every command does at its start


@pytest.fixture(scope="session")
def clotho_data_dir(tmp_path_factory):
    """The tiny real-layout Clotho TFDS build (`audiocap_jax.testing.tfds_data`) end-to-end training runs use."""
    from audiocap_jax.testing import tfds_data

    return tfds_data.build_all(tmp_path_factory.mktemp("tfds"))["clotho"].data_dir
