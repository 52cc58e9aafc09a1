"""Captions per second: our jitted beam search and sampling vs transformers' PyTorch `generate`, same random
weights.

    python -m benchmarks.bench_decode                       # tiny and base, beams 1 and 5, batch 8
    python -m benchmarks.bench_decode --variants=tiny --beams=5 --repeats=1
    python -m benchmarks.bench_decode --beams=5 --scan_layers   # + the scanned-layers search, per token
    python -m benchmarks.bench_decode --variants=tiny --beams=16 --strategies=beam,sample --samples=16

Sampling rows (`--strategies` with `sample`) draw `--samples` candidates per clip with the DCASE 2023 winner's
filters by default (temperature 0.5, top-p 0.95); their "vs beam" column is their time over the beam row of
the same width (issue 15's target: 16 samples at most 1.2x a 16-beam search).

Both sides decode the same 30 s clips from the same forced prompt (`clotho > caption: `, 11 tokens) and are
forced to generate exactly `--new_tokens` tokens (min_length = max_length, so eot is never allowed): the same
work whatever the random weights prefer. End-to-end times include the encoder, which is also timed alone on
both sides, so the table shows what the decoding loop itself gains. Our compile time is reported apart (paid
once per input shape). Prints a markdown table; takes about five minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import torch
import transformers
from absl import app, flags, logging
from flax import nnx

from audiocap_jax import cli, text
from audiocap_jax.decoding import search_settings
from audiocap_jax.decoding.search_settings import DecodeSettings
from audiocap_jax.decoding.whisper_binding import make_decode_fn
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.hf import load_hf_checkpoint
from audiocap_jax.testing.models import save_tiny_hf_whisper

_VARIANTS = flags.DEFINE_list("variants", ["tiny", "base"], "Whisper sizes (random weights).")
_BEAMS = flags.DEFINE_list("beams", ["1", "5"], "Beam counts to time.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per batch.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 30, "Tokens generated after the prompt, exactly.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per measurement (the best is reported).")
_STRATEGIES = flags.DEFINE_list(
    "strategies", ["beam"], f"Decoding strategies to time: {search_settings.STRATEGIES}."
)
_SAMPLES = flags.DEFINE_list("samples", ["16"], "Samples per clip to time (strategy sample).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.5, "Sampling temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sampling top-k (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 0.95, "Sampling top-p (1: off).")
_NO_REPEAT_NGRAM = flags.DEFINE_integer("no_repeat_ngram_size", 0, "n-gram blocking, every row (0: off).")
_SCAN_LAYERS = flags.DEFINE_bool(
    "scan_layers", False, "Also time our search with scan_layers=True (stacked cache in the scan's carry)."
)


@dataclasses.dataclass
class Row:
    variant: str
    strategy: str
    beams: int  # beams, or samples per clip
    ours_s: float  # one batch, end to end
    hf_s: float
    ours_encoder_s: float  # one batch, encoder alone
    hf_encoder_s: float
    ours_compile_s: float
    same_tokens: float | None  # share of clips whose best sequence is identical on both sides (beam only)
    scanned_s: float | None = None  # one batch, end to end, with scan_layers=True
    vs_beam: float | None = None  # sampling: ours_s over the beam row of the same width


# (header, cell) pairs: one place defines the table.
COLUMNS: tuple[tuple[str, Callable[[Row, int], str]], ...] = (
    ("model", lambda r, b: r.variant),
    ("strategy", lambda r, b: r.strategy),
    ("beams / samples", lambda r, b: str(r.beams)),
    ("ours captions/s", lambda r, b: f"{b / r.ours_s:.2f}"),
    ("HF captions/s", lambda r, b: f"{b / r.hf_s:.2f}"),
    ("speed-up", lambda r, b: f"**{r.hf_s / r.ours_s:.1f}x**"),
    ("ours / HF s per batch", lambda r, b: f"{r.ours_s:.2f} / {r.hf_s:.2f}"),
    ("of which encoder", lambda r, b: f"{r.ours_encoder_s:.2f} / {r.hf_encoder_s:.2f}"),
    (
        "decoding alone",
        lambda r, b: f"{max(r.ours_s - r.ours_encoder_s, 0):.2f} / {r.hf_s - r.hf_encoder_s:.2f}",
    ),
    ("ours compile s", lambda r, b: f"{r.ours_compile_s:.1f}"),
    ("same tokens", lambda r, b: "-" if r.same_tokens is None else f"{r.same_tokens:.0%}"),
    ("vs beam", lambda r, b: "-" if r.vs_beam is None else f"{r.vs_beam:.2f}x"),
    # Per generated token, decoding alone (the encoder is the same computation either way).
    (
        "scanned / unscanned per token",
        lambda r, b: (
            "-"
            if r.scanned_s is None
            else f"{(r.scanned_s - r.ours_encoder_s) / max(r.ours_s - r.ours_encoder_s, 1e-9):.2f}x"
        ),
    ),
)


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch both sides decode: the same clips and forced prompt, exactly `length` tokens out."""

    mel: np.ndarray  # float32 [B, M, S]
    prompt_ids: np.ndarray  # int32 [B, P]
    prompt_lengths: np.ndarray  # int32 [B]
    length: int  # prompt + new tokens: max_length = min_length

    @classmethod
    def random(cls, config: WhisperConfig, prompt: np.ndarray, batch: int, new_tokens: int) -> Batch:
        mel = np.random.default_rng(0).standard_normal((batch, config.num_mel_bins, config.num_frames))
        return cls(
            mel.astype(np.float32),
            np.tile(prompt, (batch, 1)),
            np.full((batch,), len(prompt), np.int32),
            len(prompt) + new_tokens,
        )


def decode_settings(strategy: str, width: int, eot: int, length: int) -> DecodeSettings:
    """The settings of one row: `width` beams or samples, forced to exactly `length` tokens."""
    common = dict(
        eos_id=eot, max_length=length, min_length=length, no_repeat_ngram_size=_NO_REPEAT_NGRAM.value
    )
    if strategy == "sample":
        return DecodeSettings(
            **common,
            strategy="sample",
            num_samples=width,
            num_return_sequences=width,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
        )
    return DecodeSettings(**common, num_beams=width)


def hf_generate(torch_model: torch.nn.Module, settings: DecodeSettings, batch: Batch) -> np.ndarray:
    """transformers' `generate` on the batch with the same search settings: int [B*R, L]."""
    config = transformers.GenerationConfig(
        decoder_start_token_id=int(batch.prompt_ids[0, 0]), **settings.to_hf_generation_config()
    )
    with torch.inference_mode():
        return transformers.GenerationMixin.generate(
            torch_model,
            input_features=torch.from_numpy(batch.mel),
            decoder_input_ids=torch.from_numpy(batch.prompt_ids).long(),
            generation_config=config,
        ).numpy()


def time_ours(model: nnx.Module, settings: DecodeSettings, batch: Batch) -> tuple[float, float, np.ndarray]:
    """(compile s, best s per batch, best sequences int32 [B, L]) of our search on `model`."""
    state = nnx.state(model)
    args = (batch.mel, batch.prompt_ids, batch.prompt_lengths)
    start = time.perf_counter()
    compiled = make_decode_fn(model, settings).lower(state, *args).compile()
    compile_s = time.perf_counter() - start
    run = lambda: np.asarray(compiled(state, *args)[0][:, 0])  # noqa: E731
    return (compile_s, *best_time(run, _REPEATS.value))


def encoder_times(model: nnx.Module, torch_model: torch.nn.Module, mel: np.ndarray) -> tuple[float, float]:
    """Best seconds of the encoder alone on one batch: ours (as decoding runs it), then HF's."""
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
    jax.block_until_ready(encode(state, mel))
    ours_s, _ = best_time(lambda: jax.block_until_ready(encode(state, mel)), _REPEATS.value)
    with torch.inference_mode():
        torch_model.model.encoder(torch.from_numpy(mel))  # first-call overhead is not steady state
        hf_s, _ = best_time(lambda: torch_model.model.encoder(torch.from_numpy(mel)), _REPEATS.value)
    return ours_s, hf_s


def with_vs_beam(rows: list[Row]) -> list[Row]:
    """Each sampling row's time over the beam row of the same width, where there is one."""
    beam_s = {r.beams: r.ours_s for r in rows if r.strategy == "beam"}
    return [
        dataclasses.replace(r, vs_beam=r.ours_s / beam_s[r.beams])
        if r.strategy == "sample" and r.beams in beam_s
        else r
        for r in rows
    ]


def bench_variant(
    variant: str,
    widths: Sequence[tuple[str, int]],
    prompt: np.ndarray,
    eot: int,
    checkpoint_dir: str,
) -> list[Row]:
    """Rows for (strategy, beams or samples) pairs on one model size."""
    arch = WhisperConfig.from_variant(variant).architecture()
    torch_model = save_tiny_hf_whisper(checkpoint_dir, seed=0, **arch)
    model, config = load_hf_checkpoint(checkpoint_dir)
    scanned_model = load_hf_checkpoint(checkpoint_dir, scan_layers=True)[0] if _SCAN_LAYERS.value else None
    batch = Batch.random(config, prompt, _BATCH.value, _NEW_TOKENS.value)
    ours_encoder_s, hf_encoder_s = encoder_times(model, torch_model, batch.mel)

    rows = []
    for strategy, width in widths:
        settings = decode_settings(strategy, width, eot, batch.length)
        compile_s, ours_s, ours = time_ours(model, settings, batch)
        scanned_s = None
        if scanned_model is not None:
            _, scanned_s, scanned = time_ours(scanned_model, settings, batch)
            if not (scanned == ours).all():
                raise RuntimeError("The scanned and unscanned models decoded different tokens.")
        warm_up = dataclasses.replace(settings, max_length=len(prompt) + 1, min_length=0)
        hf_generate(torch_model, warm_up, batch)
        hf_s, hf = best_time(lambda s=settings: hf_generate(torch_model, s, batch), _REPEATS.value)
        if strategy == "sample":
            hf = hf[::width]  # HF returns all B*S samples; compare shapes with each clip's first
        if hf.shape != ours.shape:
            raise RuntimeError(f"HF returned {hf.shape}, ours {ours.shape}: the runs did different work.")
        same = float((hf == ours).all(axis=1).mean()) if strategy == "beam" else None
        timings = (ours_s, hf_s, ours_encoder_s, hf_encoder_s, compile_s, same, scanned_s)
        rows.append(Row(variant, strategy, width, *timings))
        logging.info("%s", rows[-1])
    return with_vs_beam(rows)


def main(argv: list[str]) -> None:
    cli.start_process()
    del argv
    unknown = set(_STRATEGIES.value) - set(search_settings.STRATEGIES)
    if unknown:
        raise app.UsageError(
            f"--strategies {sorted(unknown)} unknown; choose from {search_settings.STRATEGIES}."
        )
    tokenizer = text.Tokenizer.from_assets()
    prompt = np.asarray(tokenizer.prompt_ids(text.CLOTHO_CAPTION), np.int32)
    rows = []
    for variant in _VARIANTS.value:
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            widths = [
                (strategy, int(n))
                for strategy in _STRATEGIES.value
                for n in (_SAMPLES.value if strategy == "sample" else _BEAMS.value)
            ]
            rows += bench_variant(variant, widths, prompt, tokenizer.specials.eot, checkpoint_dir)
    print(
        f"\nBatch {_BATCH.value} clips of 30 s, {_NEW_TOKENS.value} new tokens after a {len(prompt)}-token "
        f"prompt, random weights; {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}.\n"
    )
    print("| " + " | ".join(header for header, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(cell(row, _BATCH.value) for _, cell in COLUMNS) + " |")
    print(
        "\n'same tokens': clips whose best sequence is identical on both sides. Random weights give near-flat "
        "distributions where float rounding can pick another token; exact parity is tested in "
        "tests/test_search.py on peaked weights. Sampling rows: temperature "
        f"{_TEMPERATURE.value}, top-k {_TOP_K.value}, top-p {_TOP_P.value}; n-gram blocking "
        f"{_NO_REPEAT_NGRAM.value} on every row."
    )


if __name__ == "__main__":
    app.run(main)
