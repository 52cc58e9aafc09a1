"""The compile-only capacity table: largest per-device batches that fit, compile time and the roofline MFU
bound, for whisper sizes x targets x remat policies, from `python -m audiocap_jax.aot`'s own functions.

    python -m benchmarks.bench_aot [--variants=base,small,large-v2] [--targets=h100x8,v5e-256] \\
        [--remat=none,full] [--programs=train,decode] [--beams=5]

Each row compiles the train step of `configs/finetune_clotho.py` (every weight trained, AdamW, scanned
layers, bfloat16; data parallel on NVIDIA hosts, FSDP over a TPU slice) at growing power-of-two per-device
batches until it no longer fits in 95% of a device's memory, then gives the compile time and the roofline
MFU bound at the largest batch that fits. The decode row does the same for the validation/predict search at
`--beams`. Compiler figures, not measurements; rows print as they finish (a large-v2 row takes minutes).
"""

from __future__ import annotations

import argparse
import time

from audiocap_jax import cli
from audiocap_jax.aot import analysis, programs, targets

MESHES = {"cuda": {"data": -1, "fsdp": 1, "tensor": 1}, "tpu": {"data": 1, "fsdp": -1, "tensor": 1}}
HEADER = "| model | target | program | remat | largest batch/device | compile s | roofline MFU bound |"


def _config(variant: str, remat: str, target: targets.Target, beams: int):
    from configs import finetune_clotho

    config = finetune_clotho.get_config(f"variant={variant}")
    config.model.scan_layers, config.model.remat = True, remat
    config.mesh = MESHES[target.platform]
    config.eval.num_beams = beams
    return config


def capacity_row(variant: str, target: targets.Target, program: str, remat: str, beams: int) -> str:
    """One table row: the largest batch by `analysis.largest_fitting`, the compile seconds the search
    measured at that batch (and, for training, the roofline from the layer twins)."""
    from audiocap_jax.model import sharding

    config = _config(variant, remat, target, beams)
    devices = targets.compile_only_devices(target)
    mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
    model = programs.model_config(config, devices)
    lower = programs.lower_train if program == "train" else programs.lower_decode
    limit = (1 - analysis.HEADROOM) * target.hbm_gib * programs.GIB
    seconds: dict[int, float] = {}

    def total_at(batch: int) -> float | None:
        lowered = lower(config, model, mesh, batch)
        start = time.perf_counter()
        total = analysis.compile_total(lowered)
        seconds[batch] = time.perf_counter() - start
        return total

    batch = analysis.largest_fitting(total_at, limit)
    compile_s, mfu = "–", "–"
    if batch:
        compile_s = f"{seconds[batch]:.0f}"
        if program == "train":
            mfu = f"{analysis.train_roofline(config, model, mesh, batch, target)['roofline_mfu']:.0%}"
    name = "train" if program == "train" else f"decode, {beams} beams"
    remat = remat if program == "train" else "–"
    return f"| whisper-{variant} | {target.name} | {name} | {remat} | {batch} | {compile_s} | {mfu} |"


def main() -> None:
    cli.start_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="base,small,large-v2")
    parser.add_argument("--targets", default="h100x8,v5e-256")
    parser.add_argument("--remat", default="none,full")
    parser.add_argument("--programs", default="train,decode")
    parser.add_argument("--beams", type=int, default=5)
    args = parser.parse_args()
    targets.prepare_process()
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|", flush=True)
    for variant in args.variants.split(","):
        for name in args.targets.split(","):
            target = targets.get_target(name)
            if "train" in args.programs.split(","):
                for remat in args.remat.split(","):
                    print(capacity_row(variant, target, "train", remat, args.beams), flush=True)
            if "decode" in args.programs.split(","):
                print(capacity_row(variant, target, "decode", "none", args.beams), flush=True)


if __name__ == "__main__":
    main()
