"""One-command device check: train step and beam search on whatever backend JAX finds, in one table.

    python -m benchmarks.accelerator                              # the full check (GPU/TPU)
    python -m benchmarks.accelerator --variants tiny --steps 2    # CPU smoke run: ~65 CPU-seconds

Rows:
- train step of whisper-small and large-v2: the product's step (`train_step.jit_train_step`: AdamW with
  clipping and the warmup schedule, masked token loss, optimizer state sharded like the weights), compute
  dtype and attention from the model's backend policy (bfloat16 on GPU/TPU), scanned layers, FSDP over all
  local devices, 30 s log-mels and 80-token targets (the training configs' `max_length`): examples/s, MFU (`audiocap_jax.rundir.mfu`: analytic FLOPs over the
  bf16 peak of the device), peak device memory (`Device.memory_stats()`; on CPU the process's peak RSS) and
  compile time;
- beam search of base, small and large-v2 through the shared `whisper_binding.make_decode_fn`, the program
  `inference.Decoder` runs for validation, `predict` and `evaluate` (5 beams, exactly 30
  tokens after the 11-token `clotho > caption: ` prompt): captions/s and compile time;
- the same with transformers' PyTorch Whisper on the same GPU, where torch sees CUDA (AdamW, bf16 autocast;
  `GenerationMixin.generate(num_beams=5)`).
Random weights and synthetic mels: no data, no network. The attention column says which implementation
ran; when cuDNN cannot plan its fused attention at compile time, the row falls back to XLA attention and
says so.

Each JAX row group runs in its own process (clean peak-memory readings; an out-of-memory row does not end
the table), rows are printed as they finish. It imports only `audiocap_jax.model`, `decode`, `mfu` and
`text` (tiktoken), so it runs in an accelerator image without ml_collections, grain, TFDS, librosa,
pycocoevalcap or wandb (tests/test_accelerator_benchmark.py runs it with those blocked).

Time on one H100/H200 with the defaults (an estimate, not yet measured on either): about 5 minutes:
process starts ~10 s each (7 processes), compiles of the scanned train steps ~30 s (small) and ~60 s
(large-v2), of the beam searches ~20-60 s each, and 5 timed steps or batches per row after one warm-up
(large-v2: ~130 TFLOP a step at batch 16, 0.3-0.5 s). benchmarks/device_check.sh runs it under a 9-minute
timeout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from audiocap_jax import cli

DEFAULT_TRAIN_VARIANTS = ("small", "large-v2")
DEFAULT_DECODE_VARIANTS = ("base", "small", "large-v2")
# (train batch, beam-search batch) by backend: the sizes on accelerators (large-v2 trains at batch
# 16 in bf16 on one 141 GB H200), smoke-test sizes on CPU.
DEFAULT_BATCH_SIZES = {"cpu": (2, 4)}
ACCELERATOR_BATCH_SIZES = (16, 32)
TRAIN_TOKENS = 80  # target length of a training batch: configs/base.py's max_length
NUM_BEAMS, NEW_TOKENS = 5, 30
ROW_PREFIX, DEVICE_PREFIX = "ROW ", "DEVICE "  # worker stdout lines the parent reads


@dataclasses.dataclass
class Row:
    task: str  # "train" or "beam search"
    model: str  # "whisper-small"
    framework: str  # "jax" or "pytorch"
    attention: str = "–"  # the implementation that ran
    dtype: str = "–"
    batch: int = 0
    rate: float | None = None  # examples/s (train) or captions/s (beam search)
    mfu: float | None = None  # fraction of the devices' bf16 peak; None: device not in the peak table
    peak_gib: float | None = None
    compile_s: float | None = None
    note: str = ""


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _train_cell(row: Row, value: float | None, spec: str) -> str:
    """A train-only measurement: "–" on other rows and failed ones, "n/a" where the device reports none."""
    if row.task != "train" or row.rate is None:
        return "–"
    return "n/a" if value is None else format(value, spec)


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0][:160]


# (header, cell) pairs: one place defines the table.
COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("task", lambda r: r.task),
    ("model", lambda r: r.model),
    ("framework", lambda r: r.framework),
    ("attention", lambda r: r.attention),
    ("dtype", lambda r: r.dtype),
    ("batch", lambda r: str(r.batch or "–")),
    ("examples or captions/s", lambda r: _fmt(r.rate, ".2f")),
    ("MFU", lambda r: _train_cell(r, r.mfu, ".1%")),
    ("peak memory GiB", lambda r: _train_cell(r, r.peak_gib, ".1f")),
    ("compile s", lambda r: _fmt(r.compile_s, ".0f")),
    ("note", lambda r: r.note),
)


def format_row(row: Row) -> str:
    return "| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |"


# ----------------------------------------------------------------------------------------------------
# JAX workers (one process each).
# ----------------------------------------------------------------------------------------------------


def _batch_sizes() -> tuple[int, int]:
    import jax

    return DEFAULT_BATCH_SIZES.get(jax.default_backend(), ACCELERATOR_BATCH_SIZES)


def _device_summary() -> dict[str, Any]:
    import jax

    devices = jax.local_devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "count": len(devices),
        "jax": jax.__version__,
    }


def _peak_memory_gib() -> float | None:
    """Largest peak of the local devices' allocators; on CPU (no allocator statistics) the peak RSS."""
    import jax

    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    if all("peak_bytes_in_use" in s for s in stats):
        return max(s["peak_bytes_in_use"] for s in stats) / 2**30
    if jax.default_backend() == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return None


def _mean_seconds(call: Callable[[], Any], wait: Callable[[Any], Any], steps: int) -> float:
    """Mean wall time of `steps` calls after one warm-up call; calls are queued back to back (as a training
    loop runs) and waited for once at the end."""
    wait(call())
    start = time.perf_counter()
    for _ in range(steps):
        out = call()
    wait(out)
    return (time.perf_counter() - start) / steps


def _compile_with_fallback(config: Any, build: Callable[[Any], Any]) -> tuple[Any, Any, float, str]:
    """`build(config)` -> (compiled, inputs); a cuDNN attention that fails to compile is retried with XLA
    attention (cuDNN's fused attention is not planned for every shape and CUDA version, jax#32430).
    Returns (compiled, inputs, compile seconds, note)."""
    start = time.perf_counter()
    try:
        compiled, inputs = build(config)
        return compiled, inputs, time.perf_counter() - start, ""
    except Exception as error:  # noqa: BLE001 - any compile failure of the cuDNN variant falls back
        if config.attention_impl != "cudnn":
            raise
        note = f"cuDNN attention did not compile ({_first_line(error)}); ran XLA attention"
        print(note, file=sys.stderr, flush=True)
    start = time.perf_counter()
    compiled, inputs = build(config.replace(attention_impl="xla"))
    return compiled, inputs, time.perf_counter() - start, note


def _fsdp_mesh() -> Any:
    import jax

    from audiocap_jax.model.sharding import make_mesh

    return make_mesh({"fsdp": -1}, devices=jax.local_devices())


def _batch_on_mesh(arrays: dict[str, Any], mesh: Any) -> dict[str, Any]:
    """Host arrays -> device arrays split over the mesh's batch axes (the model's `batch` rule)."""
    import jax
    from jax.sharding import NamedSharding

    from audiocap_jax.model.sharding import logical_to_spec

    def put(x: Any) -> Any:
        spec = logical_to_spec(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return {name: put(x) for name, x in arrays.items()}


def jax_train_row(variant: str, batch_size: int, steps: int) -> Row:
    """One step of the product's train step (`train_step.jit_train_step`) on the state the trainer builds:
    AdamW with global-norm clipping and the warmup schedule (`configs/base.py`'s optimizer settings), every
    weight trained, the optimizer state sharded like the weights, a masked token loss; timed."""
    import jax
    import numpy as np
    from flax import nnx

    from audiocap_jax.model.backend import resolve_runtime
    from audiocap_jax.model.config import WhisperConfig
    from audiocap_jax.model.whisper import create_model
    from audiocap_jax.rundir import mfu, train_step

    mesh = _fsdp_mesh()
    if batch_size % mesh.size:
        raise ValueError(
            f"--batch-size {batch_size} is not divisible by the {mesh.size} local devices; use a multiple."
        )
    rng = np.random.default_rng(0)
    loss_mask = np.ones((batch_size, TRAIN_TOKENS), np.float32)
    loss_mask[:, TRAIN_TOKENS // 2 :] = 0.0  # captions end early; padding is masked out, as in real batches

    def build(config: WhisperConfig) -> tuple[Any, tuple[Any, ...]]:
        graphdef, weights = nnx.split(create_model(config, mesh=mesh))
        schedule = train_step.make_schedule(lr=2e-5, warmup_steps=500, total_steps=100_000)
        tx, selects = train_step.make_optimizer(schedule, max_grad_norm=1.0), train_step.trainable()
        state = train_step.init_train_state(weights, tx, selects, mesh)
        batch = _batch_on_mesh(
            {
                "mel": rng.standard_normal((batch_size, config.num_mel_bins, config.num_frames)).astype(
                    np.float16
                ),
                "decoder_input_ids": rng.integers(0, config.vocab_size, (batch_size, TRAIN_TOKENS), np.int32),
                "targets": rng.integers(0, config.vocab_size, (batch_size, TRAIN_TOKENS), np.int32),
                "loss_mask": loss_mask,
            },
            mesh,
        )
        step = train_step.jit_train_step(graphdef, tx, schedule, selects, state, mesh)
        with jax.set_mesh(mesh):
            compiled = step.lower(state, batch).compile()
        return compiled, (state, batch)

    config = resolve_runtime(
        WhisperConfig.from_variant(variant, dtype="auto", scan_layers=True), list(mesh.devices.flat)
    )
    compiled, (state, batch), compile_s, note = _compile_with_fallback(config, build)
    attention = config.attention_impl if not note else "xla"

    def one_step() -> Any:
        nonlocal state
        with jax.set_mesh(mesh):
            state, metrics = compiled(state, batch)
        return metrics["loss"]

    seconds = _mean_seconds(one_step, jax.block_until_ready, steps)
    flops = mfu.model_flops_per_step(config, batch_size=batch_size, target_length=TRAIN_TOKENS)
    peak = mfu.peak_flops_per_device(jax.local_devices()[0].device_kind)
    return Row(
        "train", f"whisper-{variant}", "jax", attention, config.dtype, batch_size, batch_size / seconds,
        None if peak is None else mfu.mfu(flops, seconds, mesh.size, peak),
        _peak_memory_gib(), compile_s, note,
    )  # fmt: skip


def _prompt_and_settings(vocab_size: int) -> tuple[list[int], Any]:
    """The clotho caption prompt and beam settings that force exactly NEW_TOKENS tokens after it (eot is
    barred until then), so both frameworks do the same work whatever the random weights prefer."""
    from audiocap_jax import text
    from audiocap_jax.decoding import search

    tokenizer = text.Tokenizer.from_assets(text.num_languages_for_vocab_size(vocab_size))
    prompt = tokenizer.prompt_ids(text.CLOTHO_CAPTION)
    length = len(prompt) + NEW_TOKENS
    settings = search.DecodeSettings(
        eos_id=tokenizer.specials.eot, num_beams=NUM_BEAMS, max_length=length, min_length=length
    )
    return prompt, settings


def jax_decode_row(variant: str, batch_size: int, steps: int) -> Row:
    """The shared jitted beam search over a batch of 30 s clips, timed per batch."""
    import jax
    import numpy as np
    from flax import nnx

    from audiocap_jax.decoding import whisper_binding
    from audiocap_jax.model.backend import resolve_runtime
    from audiocap_jax.model.config import WhisperConfig
    from audiocap_jax.model.whisper import create_model

    mesh = _fsdp_mesh()
    base = WhisperConfig.from_variant(variant, scan_layers=True)
    prompt, settings = _prompt_and_settings(base.vocab_size)
    rng = np.random.default_rng(0)

    def build(config: WhisperConfig) -> tuple[Any, tuple[Any, ...]]:
        model = create_model(config, mesh=mesh)
        inputs = _batch_on_mesh(
            {
                "mel": rng.standard_normal((batch_size, config.num_mel_bins, config.num_frames), np.float32),
                "prompt": np.tile(np.asarray(prompt, np.int32), (batch_size, 1)),
                "lengths": np.full((batch_size,), len(prompt), np.int32),
            },
            mesh,
        )
        state = nnx.state(model)
        with jax.set_mesh(mesh):
            compiled = (
                whisper_binding.make_decode_fn(model, settings)
                .lower(state, inputs["mel"], inputs["prompt"], inputs["lengths"])
                .compile()
            )
        return compiled, (state, inputs["mel"], inputs["prompt"], inputs["lengths"])

    config = resolve_runtime(base.replace(dtype="auto"), list(mesh.devices.flat))
    compiled, inputs, compile_s, note = _compile_with_fallback(config, build)
    seconds = _mean_seconds(lambda: compiled(*inputs), jax.block_until_ready, steps)
    attention = config.attention_impl if not note else "xla"
    return Row(
        "beam search", f"whisper-{variant}", "jax", attention, config.dtype, batch_size, batch_size / seconds,
        compile_s=compile_s, note=note,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# PyTorch rows (CUDA only; one process for all of them: torch resets its peak-memory counter).
# ----------------------------------------------------------------------------------------------------


def _torch_model(config: Any) -> Any:
    """transformers' WhisperForConditionalGeneration with random weights on the GPU."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.WhisperConfig(**config.architecture())
    return transformers.WhisperForConditionalGeneration(hf_config).to("cuda")


def _torch_mel(config: Any, batch_size: int) -> Any:
    import torch

    return torch.randn(batch_size, config.num_mel_bins, config.num_frames, device="cuda")


def _torch_wait(_: Any) -> None:
    import torch

    torch.cuda.synchronize()


def torch_train_row(variant: str, batch_size: int, steps: int) -> Row:
    """The same train step in PyTorch: AdamW, bf16 autocast, transformers' default (SDPA) attention."""
    import torch

    from audiocap_jax.model.config import WhisperConfig
    from audiocap_jax.rundir import mfu

    config = WhisperConfig.from_variant(variant)
    model = _torch_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    mel = _torch_mel(config, batch_size)
    ids, targets = (
        torch.randint(0, config.vocab_size, (batch_size, TRAIN_TOKENS), device="cuda") for _ in range(2)
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_features=mel, decoder_input_ids=ids, labels=targets).loss
        loss.backward()
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    seconds = _mean_seconds(step, _torch_wait, steps)
    flops = mfu.model_flops_per_step(config, batch_size=batch_size, target_length=TRAIN_TOKENS)
    peak = mfu.peak_flops_per_device(torch.cuda.get_device_name())
    return Row(
        "train", f"whisper-{variant}", "pytorch", model.config._attn_implementation, "bf16 autocast",
        batch_size, batch_size / seconds, None if peak is None else mfu.mfu(flops, seconds, 1, peak),
        torch.cuda.max_memory_allocated() / 2**30,
    )  # fmt: skip


def torch_decode_row(variant: str, batch_size: int, steps: int) -> Row:
    """The same beam search through `GenerationMixin.generate` (what the decode parity tests compare to)."""
    import numpy as np
    import torch
    import transformers

    from audiocap_jax.model.config import WhisperConfig

    config = WhisperConfig.from_variant(variant)
    model = _torch_model(config).eval()
    prompt, settings = _prompt_and_settings(config.vocab_size)
    generation_config = transformers.GenerationConfig(
        decoder_start_token_id=prompt[0], **settings.to_hf_generation_config()
    )
    mel = _torch_mel(config, batch_size)
    prompt_ids = torch.from_numpy(np.tile(np.asarray(prompt), (batch_size, 1))).to("cuda")

    def generate() -> Any:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return transformers.GenerationMixin.generate(
                model, input_features=mel, decoder_input_ids=prompt_ids, generation_config=generation_config
            )

    seconds = _mean_seconds(generate, _torch_wait, steps)
    return Row(
        "beam search", f"whisper-{variant}", "pytorch", model.config._attn_implementation, "bf16 autocast",
        batch_size, batch_size / seconds,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Driver: one process per JAX row group, then PyTorch.
# ----------------------------------------------------------------------------------------------------


def _framework(worker: str) -> str:
    return {"jax": "jax", "torch": "pytorch"}[worker]


def _worker_main(args: argparse.Namespace) -> None:
    """Print this worker's DEVICE line (JAX) and its ROW lines; a row that fails is a row with the error."""
    if args.worker == "jax":
        print(DEVICE_PREFIX + json.dumps(_device_summary()), flush=True)
        train_batch, decode_batch = _batch_sizes()
        train_row, decode_row = jax_train_row, jax_decode_row
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("torch sees no CUDA device")
        train_batch, decode_batch = ACCELERATOR_BATCH_SIZES
        train_row, decode_row = torch_train_row, torch_decode_row
    jobs = [("train", train_row, v, args.batch_size or train_batch) for v in args.train_variants] + [
        ("beam search", decode_row, v, args.decode_batch_size or decode_batch) for v in args.decode_variants
    ]
    for task, measure, variant, batch in jobs:
        try:
            row = measure(variant, batch, args.steps)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: reported in the table, next row runs
            print(f"{task} {variant} failed: {error}", file=sys.stderr, flush=True)
            note = f"failed: {_first_line(error)}"
            row = Row(task, f"whisper-{variant}", _framework(args.worker), batch=batch, note=note)
        print(ROW_PREFIX + json.dumps(dataclasses.asdict(row)), flush=True)


def _run_worker(
    worker: str, train: Sequence[str], decoding: Sequence[str], args: argparse.Namespace
) -> tuple[dict[str, Any] | None, list[Row]]:
    """Run one worker process: its device summary and rows (a crashed worker adds one failure row)."""
    command = [
        sys.executable, "-m", "benchmarks.accelerator", "--worker", worker, "--steps", str(args.steps),
        "--train-variants", ",".join(train), "--decode-variants", ",".join(decoding),
        "--batch-size", str(args.batch_size), "--decode-batch-size", str(args.decode_batch_size),
    ]  # fmt: skip
    env = dict(os.environ)
    if worker == "jax":
        # Each JAX worker has the device to itself: let XLA's allocator take 90% of it (default 75%).
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
    else:  # the PyTorch worker imports JAX modules for host-side facts only: keep JAX off the GPU
        env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    device, rows = None, []
    for line in result.stdout.splitlines():
        if line.startswith(DEVICE_PREFIX):
            device = json.loads(line.removeprefix(DEVICE_PREFIX))
        elif line.startswith(ROW_PREFIX):
            rows.append(Row(**json.loads(line.removeprefix(ROW_PREFIX))))
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1][:160]
        task = " + ".join(t for t, names in (("train", train), ("beam search", decoding)) if names)
        models = ", ".join(f"whisper-{name}" for name in dict.fromkeys([*train, *decoding]))
        rows.append(
            Row(task, models, _framework(worker), note=f"process exited {result.returncode}: {error}")
        )
    return device, rows


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _print_rows(rows: Sequence[Row]) -> None:
    for row in rows:
        print(format_row(row), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    cli.start_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        help="Whisper sizes for both parts (default: small,large-v2 for training; base,small,large-v2 for "
        "beam search)",
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="timed train steps / beam-search batches per row"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="train batch (default: 16 on GPU/TPU, 2 on CPU)"
    )
    parser.add_argument(
        "--decode-batch-size",
        type=int,
        default=0,
        help="beam-search batch (default: 32 on GPU/TPU, 4 on CPU)",
    )
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch rows")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--train-variants", type=_names, default=[], help=argparse.SUPPRESS)
    parser.add_argument("--decode-variants", type=_names, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps {args.steps} must be at least 1.")
    if args.worker:
        _worker_main(args)
        return

    train = _names(args.variants) if args.variants else list(DEFAULT_TRAIN_VARIANTS)
    decoding = _names(args.variants) if args.variants else list(DEFAULT_DECODE_VARIANTS)
    start = time.perf_counter()
    devices: list[dict[str, Any] | None] = []
    # One JAX process per train row (its own peak memory), one for the beam searches.
    for train_part, decode_part in [([v], []) for v in train] + [([], decoding)]:
        device, rows = _run_worker("jax", train_part, decode_part, args)
        if not devices:  # the table starts once the first worker has said where it ran
            print(_title(device, args))
            print("| " + " | ".join(header for header, _ in COLUMNS) + " |")
            print("|" + "---|" * len(COLUMNS))
        devices.append(device)
        _print_rows(rows)
    on_gpu = any(d is not None and d["platform"] == "gpu" for d in devices)
    if args.skip_torch or not on_gpu:
        print(f"\nPyTorch rows skipped ({'--skip-torch' if args.skip_torch else 'JAX found no GPU'}).")
    else:
        _print_rows(_run_worker("torch", train, decoding, args)[1])
    print(f"\n{time.perf_counter() - start:.0f} s in all.")


def _title(device: dict[str, Any] | None, args: argparse.Namespace) -> str:
    if device is None:
        where = "device unknown (the first worker failed)"
    else:
        where = f"{device['count']} x {device['device_kind']} ({device['platform']}), jax {device['jax']}"
    return (
        f"{time.strftime('%Y-%m-%d')}: {where}; {platform.machine()}, {os.cpu_count()} CPUs. Train: AdamW, "
        f"{TRAIN_TOKENS}-token targets, scanned layers, FSDP over all local devices, mean of {args.steps} steps. "
        f"Beam search: {NUM_BEAMS} beams, {NEW_TOKENS} new tokens, mean of {args.steps} batches. Random "
        "weights, 30 s synthetic log-mels.\n"
    )


if __name__ == "__main__":
    main()
