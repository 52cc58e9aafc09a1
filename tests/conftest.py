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

import shutil  # noqa: E402
import tempfile  # noqa: E402

from audiocap_jax import cli, runtime  # noqa: E402  (after the environment above)

# One compilation cache for the whole run, as a user's runs share one: the commands the tests start (their
# default) and the test processes themselves (pytest-xdist's workers inherit the variable). A fresh
# directory per run, so a run's time does not depend on the runs before it and nothing is left in $HOME.
_OWN_CACHE = runtime.CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[runtime.CACHE_ENV] = tempfile.mkdtemp(prefix="audiocap-tests-xla-")

cli.start_process()  # what every command does at its start
runtime.enable_compile_cache()


def pytest_sessionfinish(session, exitstatus):
    """The run's cache goes when the process that made it ends (xdist's workers inherited it, not made it)."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ[runtime.CACHE_ENV], ignore_errors=True)


@pytest.fixture(scope="session")
def clotho_data_dir(tmp_path_factory):
    """The tiny real-layout Clotho TFDS build (`audiocap_jax.testing.tfds_data`) end-to-end training runs use."""
    from audiocap_jax.testing import tfds_data

    return tfds_data.build_all(tmp_path_factory.mktemp("tfds"))["clotho"].data_dir
