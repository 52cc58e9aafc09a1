"""The backend policy: which attention kernel, compute dtype and CPU-only layouts a model runs with.

Resolved once, when a model is built (`resolve_runtime`), from the devices it will run on and the compute dtype,
and written into its `WhisperConfig`; the model code then reads concrete values and carries no backend flags.

| devices             | dtype "auto" | attention "auto"                                   |
|---------------------|--------------|----------------------------------------------------|
| NVIDIA GPU          | bfloat16     | "cudnn" (flash attention) for bf16/f16, else "xla" |
| TPU                 | bfloat16     | "splash" (Pallas splash attention)                 |
| CPU                 | float32      | "cpu" (tiled encoder attention, CPU layouts)       |
| anything else       | bfloat16     | "xla"                                              |

bfloat16 is compute only: parameters and optimizer state stay float32 (`param_dtype`), and softmax, layer-norm
statistics, logits and the loss are computed in float32 (model/whisper.py, model/attention.py). On CPU,
bfloat16 matmuls are ~50% slower than float32, hence float32 there. cuDNN's fused attention has no float32
kernel, so an explicit "cudnn" with float32 falls back to "xla" with a log line.

The CPU-only layouts (`cpu_layouts`): the "cpu" policy also runs the decoding encoder's row-wise parts in
sequence chunks and a decoding step's output projection vocab-major (see model/whisper.py); other backends keep
the plain forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from absl import logging

from audiocap_jax.model.config import WhisperConfig

_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logging.info("%s", message)


def platform_of(devices: Sequence[jax.Device] | None = None) -> str:
    """ "nvidia", "tpu", "cpu" or another platform name, for the devices a model runs on (default: JAX's)."""
    device = (devices or jax.devices())[0]
    if device.platform == "gpu":
        version = getattr(device.client, "platform_version", "").lower()
        return "rocm" if "rocm" in version else "nvidia"
    return device.platform


def resolve_runtime(config: WhisperConfig, devices: Sequence[jax.Device] | None = None) -> WhisperConfig:
    """`config` with `dtype="auto"` and `attention_impl="auto"` replaced by what `devices` run best (table
    above). Concrete values are kept; idempotent. The choice is logged once per process."""
    platform = platform_of(devices)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float32" if platform == "cpu" else "bfloat16"
    impl = config.attention_impl
    if impl == "auto":
        impl = {"nvidia": "cudnn", "tpu": "splash", "cpu": "cpu"}.get(platform, "xla")
    if impl == "cudnn" and dtype == "float32":
        _log_once(
            "cuDNN flash attention has no float32 kernel: attention runs as plain XLA (set dtype=bfloat16)."
        )
        impl = "xla"
    if (dtype, impl) != (config.dtype, config.attention_impl):
        _log_once(f"Backend {platform}: compute dtype {dtype}, attention {impl}.")
    return config.replace(dtype=dtype, attention_impl=impl)


def tracing_platform() -> str:
    """The platform of the program being traced: the devices of the mesh in context (`jax.set_mesh`;
    compile-only TPU/GPU devices included, so a program compiled from a CPU host for a pod gets the pod's
    kernels), else JAX's default backend. "tpu", "gpu", "cpu"..."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def cpu_layouts(config: WhisperConfig) -> bool:
    """Whether the model uses the CPU-only forms (decoding encoder in sequence chunks, vocab-major logits for
    decoding steps): exactly when the policy chose the CPU attention."""
    return config.attention_impl == "cpu"
