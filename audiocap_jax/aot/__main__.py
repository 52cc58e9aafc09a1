"""Compile a training config's programs for a machine you do not have, and say whether they fit.

    python -m audiocap_jax.aot --config=configs/finetune_clotho.py:variant=large-v2 --target=v5e-256 \\
        --config.mesh.data=1 --config.mesh.fsdp=-1 --config.batch_size=256 --config.model.remat=full \\
        [--program=train|decode|both] [--max_batch] [--json=aot.json]

Compiles, without the devices and without reading weights or data, exactly what a run of the config would
run on the target (audiocap_jax/aot/programs.py): the train step and the validation/prediction decoding
search at `config.eval`'s batch, beams and max_length. Per program it prints memory per device (weights,
optimizer state, batch, temporaries, total against the device's HBM, 5% headroom), compile seconds, the
fused attention kernels in the compiled program (cuDNN on NVIDIA, Mosaic/splash on TPU), collectives by
kind, and for the train step a roofline bound on the step time with the MFU it implies: compiler figures,
not measurements. `--max_batch` also finds each program's largest per-device batch that fits (powers of
two, by compiling). Targets: audiocap_jax/aot/targets.py (`--target=help` lists them).

Exit codes: 0 every compiled program fits, 1 one does not (its line names the largest item and the knobs
that help), 2 a user error (unknown target, missing `jax[tpu]`/`jax[cuda13]`, a bad config key).
Needs `pip install "jax[tpu]==<jax>"` for TPU targets and `pip install "jax[cuda13]==<jax>"` for NVIDIA.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from audiocap_jax import cli
from audiocap_jax.aot import targets

PROGRAMS = ("train", "decode")
EXIT_DOES_NOT_FIT = 1
_KNOBS = "--config.model.remat=full|dots, a larger --config.mesh.fsdp, a smaller --config.batch_size or more --config.accum_steps"


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("target", None, f"Machine to compile for: {', '.join(targets.TARGETS)}.")
    flags.DEFINE_enum("program", "both", ["train", "decode", "both"], "Which programs to compile.")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
    flags.DEFINE_bool("max_batch", False, "Find each program's largest per-device batch that fits.")


def per_device_batch(global_batch: int, data_parallel: int, key: str, rounded: bool = False) -> int:
    """The batch one data-parallel device holds; training needs an exact split (`rounded`: decoding
    pads its last batch, so it rounds up)."""
    if rounded:
        return max(1, math.ceil(global_batch / data_parallel))
    if global_batch % data_parallel:
        raise cli.UserError(
            f"--config.{key}={global_batch} does not split over the mesh's {data_parallel} data-parallel "
            "devices.",
            f"use a multiple of {data_parallel} (or change --config.mesh.*).",
        )
    return global_batch // data_parallel


def compile_report(
    config: Any, target: targets.Target, program_names: tuple[str, ...], max_batch: bool
) -> dict:
    """Compile `program_names` of `config` for `target`; the JSON document the command prints and writes."""
    from audiocap_jax.aot import analysis, programs
    from audiocap_jax.model import sharding

    devices = targets.compile_only_devices(target)
    try:
        mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
        model = programs.model_config(config, devices)
    except ValueError as error:
        raise cli.UserError(str(error), "change --config.mesh.* or the model keys it names.") from error
    lower = {"train": programs.lower_train, "decode": programs.lower_decode}
    dp = sharding.data_parallel_size(mesh)
    batches = {
        "train": per_device_batch(config.batch_size, dp, "batch_size"),
        "decode": per_device_batch(config.eval.batch_size, dp, "eval.batch_size", rounded=True),
    }
    report: dict[str, Any] = {
        "target": target.name,
        "devices": target.num_devices,
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "model": {"dtype": model.dtype, "attention": model.attention_impl, "remat": model.remat},
        "programs": {},
    }
    for name in program_names:
        program = lower[name](config, model, mesh, batches[name])
        try:
            summary = analysis.program_summary(analysis.compile_program(program), target)
        except jax.errors.JaxRuntimeError as error:
            if not analysis.is_memory_error(error):
                raise
            summary = analysis.out_of_memory_summary(error, program, target)
        summary |= {"roofline_s": None, "roofline_mfu": None}  # decoding: a loop of data-dependent length
        if name == "train" and summary["fits"]:
            summary |= analysis.train_roofline(config, model, mesh, batches[name], target)
        if max_batch:

            def total_at(batch: int, name: str = name) -> float | None:
                return analysis.compile_total(lower[name](config, model, mesh, batch))

            limit = (1 - analysis.HEADROOM) * target.hbm_gib * programs.GIB
            summary["max_batch"] = analysis.largest_fitting(total_at, limit)
        report["programs"][name] = summary
    return report


def format_report(report: dict) -> str:
    """The printed table: one block per program."""
    lines = [
        f"{report['target']}: {report['devices']} x {report['device_kind']}, mesh {report['mesh']}, "
        f"{report['model']['dtype']}, attention {report['model']['attention']}, remat {report['model']['remat']}"
    ]
    for name, p in report["programs"].items():
        gib = p["per_device_gib"]
        roofline = (
            f"{p['roofline_s']:.3g} s, MFU <= {100 * p['roofline_mfu']:.0f}%"
            if p.get("roofline_s")
            else "n/a"
        )
        lines += [
            f"  {name}: batch {p['per_device_batch']}/device ({p['global_batch']} global), compiled in "
            f"{p['compile_s']:.1f} s",
            "    memory/device GiB: "
            + ", ".join(f"{k} {v:.2f}" for k, v in gib.items())
            + f" of {p['hbm_gib']:g}: {'fits' if p['fits'] else 'DOES NOT FIT'}",
            f"    attention kernels: {p['attention_kernels'] or 'none'}",
            f"    collectives: {p['collectives'] or 'none'}",
            f"    roofline bound (compiler): {roofline}",
        ]
        if "max_batch" in p:
            lines.append(f"    largest per-device batch that fits: {p['max_batch']}")
    return "\n".join(lines)


def too_large_line(name: str, program: dict) -> str:
    gib = program["per_device_gib"]
    item = max((k for k in gib if k != "total"), key=lambda k: gib[k])
    return (
        f"{name} needs {gib['total']:.2f} GiB per device of {program['hbm_gib']:g} (largest: {item} "
        f"{gib[item]:.2f} GiB); try {_KNOBS}."
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; settings go through --config.<key>=<value>.")
    values = flags.FLAGS
    if values["config"].value is None or values["target"].value is None:
        raise app.UsageError("Both --config=configs/<name>.py and --target=NAME are required.")
    target = targets.get_target(values["target"].value)
    names = PROGRAMS if values["program"].value == "both" else (values["program"].value,)
    report = compile_report(values["config"].value, target, names, values["max_batch"].value)
    print(format_report(report))
    if values["json"].value:
        Path(values["json"].value).write_text(json.dumps(report, indent=1) + "\n")
    too_large = [too_large_line(n, p) for n, p in report["programs"].items() if not p["fits"]]
    for line in too_large:
        print(line, file=sys.stderr)
    return EXIT_DOES_NOT_FIT if too_large else cli.EXIT_OK


if __name__ == "__main__":
    targets.prepare_process()
    cli.run(lambda argv: sys.exit(main(argv)), define_flags=_define_flags, config_flag="config")
