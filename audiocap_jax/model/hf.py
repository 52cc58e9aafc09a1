"""HuggingFace Whisper checkpoints <-> our NNX model, without torch for safetensors.

The name mapping is one rule (`hf_name`): our parameter paths mirror HF's module names, stacked layers get
their index back (`layers.{i}`), and leaves rename `kernel`/`scale`/`embedding` -> `weight`. Linear kernels
are stored transposed ([out, in] in PyTorch) and conv kernels as [out, in, width]: for both, our layout is
the full axis reversal (`.T`). The output projection is tied to the token embedding and never stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from audiocap_jax.cli import UserError
from audiocap_jax.model import sharding
from audiocap_jax.model.backend import resolve_runtime
from audiocap_jax.model.config import WhisperConfig
from audiocap_jax.model.lora import merge_lora
from audiocap_jax.model.whisper import Whisper

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_IGNORED_HF_TENSORS = ("proj_out.weight",)  # tied to embed_tokens
_HF_PREFIX = "model."  # WhisperForConditionalGeneration nests WhisperModel under `model`


class CheckpointError(UserError):
    """A checkpoint directory or file that cannot be loaded; the message names the file and tensor.

    A user error (cli.py): the commands print it without a traceback and exit 2."""


# ----------------------------------------------------------------------------------------------------------
# Reading safetensors lazily (memory-mapped; BF16 via ml_dtypes; no torch).
# ----------------------------------------------------------------------------------------------------------
class SafetensorsIndex:
    """Name -> memory-mapped numpy array over one or more .safetensors files."""

    def __init__(self, files: list[Path]):
        self._entries: dict[str, tuple[Path, np.dtype, tuple[int, ...], int, int]] = {}
        for path in files:
            for name, entry in self._read_header(path).items():
                self._entries[name] = (path, *entry)

    @staticmethod
    def _read_header(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...], int, int]]:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(
                    f"{path} is not a safetensors file (shorter than its 8-byte header length)."
                )
            header_len = int.from_bytes(raw_len, "little")
            if header_len > size - 8:
                raise CheckpointError(f"{path} is truncated or not safetensors (header length {header_len}).")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path} has an unreadable safetensors header ({e}).") from None
        entries = {}
        data_start = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
            begin, end = info["data_offsets"]
            if data_start + end > size:
                raise CheckpointError(
                    f"{path} is truncated: tensor {name} ends at byte {data_start + end} but the file has {size}. "
                    "Re-download the checkpoint."
                )
            entries[name] = (
                np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]),
                tuple(info["shape"]),
                data_start + begin,
                end - begin,
            )
        return entries

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def file_of(self, name: str) -> Path:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][2]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][1]

    def array(self, name: str) -> np.ndarray:
        path, dtype, shape, offset, nbytes = self._entries[name]
        if nbytes == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class TorchBinIndex(SafetensorsIndex):
    """The optional torch path for old `pytorch_model.bin` checkpoints: needs torch, loads the file whole."""

    def __init__(self, path: Path):
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{path} is a PyTorch pickle; reading it needs torch (`pip install torch==2.13.0`, CPU build), "
                "or convert the checkpoint to safetensors once where torch is installed."
            ) from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt pickles
            raise CheckpointError(f"{path} could not be read by torch.load ({e}).") from None
        self._arrays = {
            name: t.float().numpy() if t.is_floating_point() else t.numpy() for name, t in state.items()
        }
        self._path = path

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def names(self) -> list[str]:
        return list(self._arrays)

    def file_of(self, name: str) -> Path:
        return self._path

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._arrays[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return self._arrays[name].dtype

    def array(self, name: str) -> np.ndarray:
        return self._arrays[name]


def _open_tensors(files: list[Path]) -> SafetensorsIndex:
    if files[0].suffix == ".bin":
        return TorchBinIndex(files[0])
    return SafetensorsIndex(files)


def _checkpoint_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({directory / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shard files that are missing: {missing}.")
        return files
    if (directory / "pytorch_model.bin").exists():
        return [directory / "pytorch_model.bin"]
    raise CheckpointError(
        f"{directory} has no model weights: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin."
    )


def resolve_checkpoint_dir(path_or_hub_id: str | Path) -> Path:
    """A local directory as is; otherwise a HF hub id fetched with `huggingface_hub.snapshot_download`."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_hub_id).startswith((".", "/")) or str(path_or_hub_id).count("/") != 1:
        raise FileNotFoundError(
            f"Checkpoint {path_or_hub_id!r} is not a directory (nor a hub id like 'openai/whisper-tiny')."
        )
    import huggingface_hub

    patterns = ["*.json", "*.safetensors", "*.txt", "*.tiktoken"]
    return Path(huggingface_hub.snapshot_download(str(path_or_hub_id), allow_patterns=patterns))


# ----------------------------------------------------------------------------------------------------------
# The name mapping rule.
# ----------------------------------------------------------------------------------------------------------
_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    names = tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
    return names[:-1] if names[-1] == "value" else names  # the array inside an nnx.Variable


def hf_name(path: tuple[str, ...], layer: int | None = None) -> str:
    """Our parameter path -> HF tensor name (without the `model.` prefix)."""
    parts = [*path[:-1], _LEAF_TO_HF[path[-1]]]
    if layer is not None:
        parts.insert(parts.index("layers") + 1, str(layer))
    return ".".join(parts)


def _num_layers(path: tuple[str, ...], config: WhisperConfig) -> int | None:
    if "layers" not in path:
        return None
    return config.encoder_layers if path[0] == "encoder" else config.decoder_layers


def _to_ours(path: tuple[str, ...], hf_array: np.ndarray) -> np.ndarray:
    return hf_array.T if path[-1] == "kernel" else hf_array


_TOKEN_TABLE = ("decoder", "embed_tokens", "embedding")  # padded to config.padded_vocab_size rows inside


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...], config: WhisperConfig) -> tuple[int, ...]:
    """Our (per-layer) array shape as the checkpoint stores it, in our axis order: the real vocabulary."""
    return (config.vocab_size, *shape[1:]) if path == _TOKEN_TABLE else tuple(shape)


def _zero_padded_rows(array: np.ndarray, rows: int, index: tuple[slice, ...]) -> np.ndarray:
    """`index` into `array` as if it had `rows` rows, those past its end zero (the padded token table)."""
    first = index[0] if index else slice(None)
    start, stop, _ = first.indices(rows)
    real = np.asarray(array[start : min(stop, len(array))][(slice(None), *index[1:])])
    return np.pad(real, ((0, stop - start - len(real)),) + ((0, 0),) * (real.ndim - 1))


def _iter_params(state: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        yield _path_names(path), leaf


# ----------------------------------------------------------------------------------------------------------
# Import.
# ----------------------------------------------------------------------------------------------------------
def load_hf_checkpoint(
    path_or_hub_id: str | Path, *, mesh: Mesh | None = None, **runtime: Any
) -> tuple[Whisper, WhisperConfig]:
    """Load a HF Whisper checkpoint (config.json + safetensors) into our model.

    `runtime` sets our run options (dtype, param_dtype, remat, scan_layers, attention_impl). With a `mesh`,
    each device reads only its own slice of each tensor (memory-mapped), so the full model is never
    materialised on one host. Every tensor is checked (presence, shape, floating dtype) before any device
    array is made: an error names the file and tensor, and nothing half-loaded is returned.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    config = WhisperConfig.from_json_file(directory / "config.json", **runtime)
    config = resolve_runtime(config, list(mesh.devices.flat) if mesh is not None else None)
    tensors = _open_tensors(_checkpoint_files(directory))

    abstract = nnx.eval_shape(lambda: Whisper(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = sharding.state_shardings(abstract_state, mesh) if mesh is not None else None
    plan = _plan_import(abstract_state, tensors, config, directory)

    paths_and_leaves = list(_iter_params(abstract_state))
    target = [None] * len(paths_and_leaves) if shardings is None else jax.tree.leaves(shardings)
    arrays = [
        _load_leaf(tensors, config, p, plan[p], leaf, s)
        for (p, leaf), s in zip(paths_and_leaves, target, strict=True)
    ]
    state = jax.tree.unflatten(jax.tree.structure(abstract_state), arrays)
    logging.info("Loaded %d tensors from %s", len({n for names in plan.values() for n in names}), directory)
    return nnx.merge(graphdef, state), config


def _plan_import(
    abstract_state: Any, tensors: SafetensorsIndex, config: WhisperConfig, directory: Path
) -> dict[tuple[str, ...], list[str]]:
    """Our parameter path -> its checkpoint tensor names (one per layer when stacked).

    Checks every tensor first (present, shape, floating dtype, none left over) and raises one
    CheckpointError listing the problems, so nothing is loaded from a checkpoint that does not fit.
    """
    prefix = _HF_PREFIX if any(n.startswith(_HF_PREFIX) for n in tensors.names()) else ""
    plan: dict[tuple[str, ...], list[str]] = {}
    used: set[str] = set()
    errors: list[str] = []
    for path, leaf in _iter_params(abstract_state):
        n = _num_layers(path, config)
        names = [prefix + hf_name(path, i) for i in range(n)] if n is not None else [prefix + hf_name(path)]
        expected = _hf_shape(path, leaf.shape[1:] if n is not None else leaf.shape, config)
        for name in names:
            if name not in tensors:
                errors.append(f"missing tensor {name}")
                continue
            used.add(name)
            error = _tensor_error(tensors, name, path, expected)
            if error:
                errors.append(error)
        plan[path] = names
    unexpected = sorted(
        n for n in tensors.names() if n not in used and n.removeprefix(prefix) not in _IGNORED_HF_TENSORS
    )
    if unexpected:
        errors.append(f"unexpected tensors (not part of a Whisper encoder-decoder): {unexpected[:10]}")
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise CheckpointError(f"Cannot load checkpoint {directory}:\n  {shown}{more}")
    return plan


def _tensor_error(
    tensors: SafetensorsIndex, name: str, path: tuple[str, ...], expected: tuple[int, ...]
) -> str | None:
    """What is wrong with a present tensor for our (per-layer) `expected` shape, or None."""
    found = tensors.shape(name)
    if tuple(reversed(found) if path[-1] == "kernel" else found) != tuple(expected):
        return (
            f"tensor {name} in {tensors.file_of(name).name} has shape {found}, expected "
            f"{tuple(reversed(expected)) if path[-1] == 'kernel' else tuple(expected)} for this config"
        )
    if not np.issubdtype(tensors.dtype(name), np.floating) and tensors.dtype(name) != ml_dtypes.bfloat16:
        return f"tensor {name} has dtype {tensors.dtype(name)}, expected a floating dtype"
    return None


def _leaf_reader(
    tensors: SafetensorsIndex, config: WhisperConfig, path: tuple[str, ...], names: list[str], dtype: np.dtype
) -> Callable[[Any], np.ndarray]:
    """index -> that slice of our array for `path`, read from the checkpoint (one device's shard at a time)."""

    def callback(index: tuple[slice, ...] = ()) -> np.ndarray:
        if path == _TOKEN_TABLE:
            return _zero_padded_rows(tensors.array(names[0]), config.padded_vocab_size, index).astype(dtype)
        if _num_layers(path, config) is None:
            return np.asarray(_to_ours(path, tensors.array(names[0]))[index]).astype(dtype)
        layer_index, rest = (index[0], index[1:]) if index else (slice(None), ())
        chosen = names[layer_index]
        return np.stack([np.asarray(_to_ours(path, tensors.array(n))[rest]).astype(dtype) for n in chosen])

    return callback


def _load_leaf(
    tensors: SafetensorsIndex,
    config: WhisperConfig,
    path: tuple[str, ...],
    names: list[str],
    leaf: Any,
    target_sharding: Any,
) -> jax.Array:
    """One parameter as a device array: whole on the default device, or built shard by shard on a mesh."""
    callback = _leaf_reader(tensors, config, path, names, np.dtype(leaf.dtype))
    if target_sharding is None:
        return jnp.asarray(callback())
    return jax.make_array_from_callback(leaf.shape, target_sharding, callback)


# ----------------------------------------------------------------------------------------------------------
# Export.
# ----------------------------------------------------------------------------------------------------------
def hf_state_dict(model: Whisper) -> dict[str, np.ndarray]:
    """Our parameters as HF-named float32 numpy arrays (with the `model.` prefix)."""
    config = model.config
    out: dict[str, np.ndarray] = {}
    for path, leaf in _iter_params(nnx.state(model)):
        array = np.asarray(jax.device_get(leaf)).astype(np.float32)
        if path == _TOKEN_TABLE:
            array = array[: config.vocab_size]  # the padding rows are ours alone
        n = _num_layers(path, config)
        for i, layer_array in enumerate(array) if n is not None else [(None, array)]:
            out[_HF_PREFIX + hf_name(path, i)] = np.ascontiguousarray(_to_ours(path, layer_array))
    return out


def export(
    model: Whisper, tokenizer: Any, out_dir: str | Path, *, generation: dict[str, Any] | None = None
) -> Path:
    """Write a HF directory (config.json, model.safetensors, generation_config.json, tokenizer and feature
    extractor files) that `transformers.WhisperForConditionalGeneration.from_pretrained` loads."""
    import safetensors.numpy
    import transformers

    model = merge_lora(model)  # LoRA adapters folded into plain Whisper weights (a no-op without LoRA)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    specials = tokenizer.specials
    token_ids = dict(
        decoder_start_token_id=specials.sot,
        eos_token_id=specials.eot,
        pad_token_id=specials.eot,
        bos_token_id=specials.eot,
    )
    hf_config = transformers.WhisperConfig(
        **config.architecture(),
        **token_ids,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        architectures=["WhisperForConditionalGeneration"],
        tie_word_embeddings=True,
    )
    hf_config.save_pretrained(out)
    transformers.GenerationConfig(**token_ids, **(generation or {})).save_pretrained(out)
    tensors = hf_state_dict(model)
    safetensors.numpy.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)
    n_params = sum(t.size for t in tensors.values())
    logging.info("Exported %s parameters to %s", f"{n_params:,}", out)
    return out
