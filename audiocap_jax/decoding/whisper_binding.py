"""The captioning program: `search.decode_tokens` bound to a `Whisper` model in one `jax.jit`.

The search core sees only `tokens_to_logits` and a cache; this module makes them from a Whisper model
(`Whisper.start_decoding`): the encoder runs once per clip, cross-attention K/V once per example (shared by
its beams or samples), the forced prompt is prefilled in one pass, then one token per step. Training
validation, `predict` and `evaluate` all decode through `make_decode_fn`; `audiocap_jax.aot` compiles its
`lower`ed program for a target.

Legend: B batch, R returned sequences per example, L `max_length`, M mel bins, F mel frames, P prompt width.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax.decoding.search import decode_tokens
from audiocap_jax.decoding.search_settings import DecodeSettings
from audiocap_jax.model.sharding import constrain


@dataclasses.dataclass(frozen=True)
class DecodeFn:
    """The jitted captioning program of `make_decode_fn`, run (or lowered ahead of time) under its mesh.

    `decode(state, mel, prompt_ids, prompt_lengths, rng=None) -> (sequences, scores)`; `lower` takes the
    same arguments, concrete or abstract (`jax.ShapeDtypeStruct` with shardings), and returns the lowered
    program without running it: what `audiocap_jax.aot` compiles for a target.
    """

    jitted: Any  # jax.jit of the whole search
    mesh: Mesh | None

    def _on_mesh(self) -> Any:
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def __call__(self, *args: Any) -> tuple[jax.Array, jax.Array]:
        with self._on_mesh():
            return self.jitted(*args)

    def lower(self, *args: Any) -> jax.stages.Lowered:
        with self._on_mesh():
            return self.jitted.trace(*args).lower()


def make_decode_fn(
    model: nnx.Module | nnx.GraphDef, settings: DecodeSettings, mesh: Mesh | None = None
) -> DecodeFn:
    """The captioning function: `decode(state, mel, prompt_ids, prompt_lengths, rng=None) -> (sequences, scores)`.

    `model` is a `Whisper` or its `nnx.graphdef` (only the structure is kept); `state` is `nnx.state(model)`
    (or any state of that structure, e.g. the training loop's), sharded however the caller placed it.
    mel: float [B, M, F]; prompt_ids: int32 [B, P]; prompt_lengths: int32 [B]; rng: sampling's keys, one
    per clip [B] (what `inference.caption_batches` passes: a clip's samples then depend on its key only), or
    one `jax.random.key` folded with each row's index (beam search ignores it; None =
    `jax.random.key(settings.seed)`). Returns int32 [B, R, L] and
    float32 [B, R] (see `search.beam_search`). One `jax.jit`: encoder, cache init, prefill and the decoding loop.
    With `mesh`, the batch is constrained to the mesh's batch axes and the model's sharding annotations
    apply; compiled once per input shape.
    """
    graphdef = model if isinstance(model, nnx.GraphDef) else nnx.graphdef(model)

    @jax.jit
    def decode(
        state: Any,
        mel: jax.Array,
        prompt_ids: jax.Array,
        prompt_lengths: jax.Array,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        whisper = nnx.merge(graphdef, state)
        mel = constrain(mel, ("batch", None, None))
        tokens_to_logits, cache = whisper.start_decoding(whisper.encode(mel), settings.max_length)
        sequences, scores = decode_tokens(tokens_to_logits, cache, prompt_ids, prompt_lengths, settings, rng)
        return constrain(sequences, ("batch", None, None)), constrain(scores, ("batch", None))

    return DecodeFn(decode, mesh)
