"""The machines `python -m audiocap_jax.aot` compiles for, without them: one row per target.

XLA builds a program for TPUs and NVIDIA GPUs from compile-only device descriptions (no chip, no driver):
`jax.experimental.topologies.get_topology_desc` with libtpu (`jax[tpu]`) for TPU slices, and with the CUDA
plugin (`jax[cuda13]`) plus a `GpuTargetConfigProto` text file (`assets/gpu_targets/`) for NVIDIA hosts.
`topology` is libtpu's `<chip>:<chips grid>` for TPUs and `<slices>x<hosts>x<GPUs per host>` for NVIDIA.

Per device: `hbm_gib` is the memory a program may use (the GPU spec files' `device_memory_size`; TPU chips'
HBM), `peak_tflops` the dense bfloat16 peak (the chip's figure in `mfu.PEAK_BF16_TFLOPS`, split over the
devices a chip shows), `memory_gbps` the HBM bandwidth (vendors' datasheets). Compile-only TPU v4 slices
show each chip's two TensorCores as two devices (no megacore), so a v4 device is half a chip.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources

import jax

from audiocap_jax import cli
from audiocap_jax.rundir.mfu import PEAK_BF16_TFLOPS

GPU_TARGETS_DIR = "gpu_targets"  # under audiocap_jax/assets


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu" or "cuda"
    topology: str
    hbm_gib: float  # per device
    chip: str  # key of mfu.PEAK_BF16_TFLOPS
    memory_gbps: float  # per device, GB/s
    devices_per_chip: int = 1
    gpu_spec: str = ""  # NVIDIA: the GpuTargetConfigProto file under assets/gpu_targets/

    @property
    def peak_tflops(self) -> float:
        """Dense bfloat16 peak of one device, TFLOP/s."""
        return PEAK_BF16_TFLOPS[self.chip] / self.devices_per_chip

    @property
    def num_devices(self) -> int:
        if self.platform == "cuda":
            slices, hosts, per_host = (int(n) for n in self.topology.split("x"))
            return slices * hosts * per_host
        grid = self.topology.split(":")[1]
        chips = 1
        for n in grid.split("x"):
            chips *= int(n)
        return chips * self.devices_per_chip


_H100 = dict(platform="cuda", hbm_gib=79.11, chip="H100", memory_gbps=3352.0, gpu_spec="h100_sxm.txtpb")
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("h100x8", topology="1x1x8", **_H100),
        Target("h100x16", topology="1x2x8", **_H100),
        Target("h200x8", "cuda", "1x1x8", 141.0, "H200", 4800.0, gpu_spec="h200.txtpb"),
        Target("a100x8", "cuda", "1x1x8", 79.26, "A100", 2039.0, gpu_spec="a100_sxm_80.txtpb"),
        Target("v4-32", "tpu", "v4:2x2x4", 16.0, "TPU v4", 614.0, devices_per_chip=2),
        Target("v5e-8", "tpu", "v5e:2x4", 16.0, "TPU v5 lite", 819.0),
        Target("v5e-256", "tpu", "v5e:16x16", 16.0, "TPU v5 lite", 819.0),
        Target("v5p-128", "tpu", "v5p:4x4x4", 95.0, "TPU v5p", 2765.0),
        Target("v6e-64", "tpu", "v6e:8x8", 32.0, "TPU v6 lite", 1640.0),
    )
}
# What each platform needs installed, for the error that says so.
_EXTRA = {"tpu": "tpu", "cuda": "cuda13"}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise cli.UserError(f"--target={name!r} is not a known target.", f"use one of {', '.join(TARGETS)}.")
    return TARGETS[name]


def gpu_spec_text(target: Target) -> str:
    return resources.files("audiocap_jax").joinpath("assets", GPU_TARGETS_DIR, target.gpu_spec).read_text()


def compile_only_devices(target: Target) -> list[jax.Device]:
    """The target's devices as XLA's compile-only descriptions: usable in a `Mesh`, not for running.

    The caller runs with `jax_platforms="cpu"` (`prepare_process`), so neither plugin tries to open a chip.
    A missing plugin is a user error naming the pip command.
    """
    from jax.experimental import topologies

    install = f'pip install "jax[{_EXTRA[target.platform]}]=={jax.__version__}"'
    try:
        if target.platform == "tpu":
            topology = topologies.get_topology_desc(platform="tpu", topology_name=target.topology)
        else:
            topology = topologies.get_topology_desc(
                "", platform="cuda", topology=target.topology, target_config=gpu_spec_text(target)
            )
    except (NotImplementedError, RuntimeError) as error:
        missing = isinstance(error, NotImplementedError) or "not installed" in str(error)
        if not missing:
            raise
        raise cli.UserError(
            f"cannot compile for --target={target.name}: JAX has no {target.platform.upper()} compiler here "
            f"({str(error).splitlines()[0][:200]}).",
            f"install it next to this jax ({jax.__version__}): {install}",
        ) from error
    return list(topology.devices)


def prepare_process() -> None:
    """Process start of a compile-only run: JAX runs on the CPU (the plugins only compile); libtpu gets the
    settings it would otherwise look for in a TPU VM's metadata and complain about, and several compiling
    processes may load it at once (it otherwise holds /tmp/libtpu_lockfile for the process's lifetime)."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling opens no chip: no lock needed
    jax.config.update("jax_platforms", "cpu")
