"""`python -m benchmarks.accelerator --variants tiny --steps 1 --decode-batch-size 2` on CPU, with the packages an accelerator image
lacks made unimportable, prints one table with a train row and a beam-search row."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiocap_jax.model.config import WhisperConfig
from benchmarks import accelerator

ROOT = Path(__file__).resolve().parents[1]
# Installed here, absent from the GPU image the device check runs in (see the benchmark's docstring).
MISSING_ON_ACCELERATOR_IMAGE = (
    "ml_collections",
    "grain",
    "tensorflow_datasets",
    "tensorflow",
    "array_record",
    "librosa",
    "soundfile",
    "pycocoevalcap",
    "wandb",
)


@pytest.mark.slow
def test_accelerator_benchmark_on_cpu_without_data_packages(tmp_path):
    # A package of each name that fails to import, first on PYTHONPATH: the benchmark's worker processes
    # inherit it (a sys.modules block would cover the first process only).
    for name in MISSING_ON_ACCELERATOR_IMAGE:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    # Two CPU devices run the FSDP step's all-gathers; XLA:CPU aborts a collective one device waits at for
    # 40 s, which a 30 s-input step on a loaded 2-core machine (the suite's other workers) can exceed.
    xla_flags = (
        "--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_terminate_timeout_seconds=600"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "XLA_FLAGS": xla_flags}
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.accelerator", "--variants", "tiny", "--steps", "1",
            "--decode-batch-size", "2",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = [
        [cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines if line.startswith("| ")
    ]
    header, rows = table[0], table[1:]
    assert header == [name for name, _ in accelerator.COLUMNS]
    assert [row[:6] for row in rows] == [
        ["train", "whisper-tiny", "jax", rows[0][3], "float32", "2"],
        ["beam search", "whisper-tiny", "jax", rows[1][3], "float32", "2"],
    ], result.stdout[-3000:]  # a failed row's note says why
    cells = [dict(zip(header, row, strict=True)) for row in rows]
    assert all(float(c["examples or captions/s"]) > 0 for c in cells)
    assert all(float(c["compile s"]) >= 0 for c in cells)
    assert cells[0]["MFU"] == "n/a"  # no bf16 peak for a CPU
    assert float(cells[0]["peak memory GiB"]) > 0  # the process's peak RSS on CPU
    assert "2 x cpu (cpu)" in lines[0]
    assert "PyTorch rows skipped (JAX found no GPU)." in lines


def test_cudnn_compile_failure_falls_back_to_xla():
    config = WhisperConfig.from_variant("tiny", dtype="bfloat16", attention_impl="cudnn")

    def build(
        config,
    ):  # stands in for lower + compile; only the cuDNN variant fails, as when cuDNN cannot plan
        if config.attention_impl == "cudnn":
            raise RuntimeError("cuDNN could not plan the fused attention\ndetails")
        return "compiled", config.attention_impl

    compiled, inputs, _, note = accelerator._compile_with_fallback(config, build)
    assert (compiled, inputs) == ("compiled", "xla")
    assert (
        note
        == "cuDNN attention did not compile (cuDNN could not plan the fused attention); ran XLA attention"
    )
    with pytest.raises(RuntimeError, match="could not plan"):  # other implementations' failures are errors
        accelerator._compile_with_fallback(config.replace(attention_impl="xla"), lambda _: build(config))
