"""Whisper tokenizer, special-token ids and the multitask prefixes ("clotho > caption: ").

The ids must equal the original system's (prompteus/audio-captioning, HF `WhisperTokenizer` of
openai/whisper-*), because released checkpoints and our own models are trained on them. Two interchangeable
backends give the same ids for the same text:

* `Tokenizer.from_assets(num_languages)`: offline, from the packaged Whisper BPE ranks (tiktoken), for models
  trained from scratch and for tests;
* `Tokenizer.from_pretrained(path)`: the HF tokenizer files of a checkpoint directory (transformers).

Every special id (50257, 50258, ...) is read from the tokenizer into `SpecialTokens`; no other module types
them.

The original forces `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>` and then a multitask prefix
`"{dataset} > {task}: "`; the caption follows without a leading space token. See docs/text.md for the training
targets and where we deliberately differ from the original.

Shapes: T = max_length - 1 tokens of one training row.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import tiktoken

if TYPE_CHECKING:  # transformers is imported lazily: Grain workers need only tiktoken.
    import transformers

# Whisper's language order (openai/whisper tokenizer.LANGUAGES); language i has id sot + 1 + i.
# v1/v2 checkpoints use the first 99, large-v3 all 100 (adds <|yue|>).
LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
    "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg",
    "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br",
    "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so",
    "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt",
    "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
)  # fmt: skip
NUM_LANGUAGES_V2 = 99  # v1, v2 (vocab 51865)
NUM_LANGUAGES_V3 = 100  # large-v3 (vocab 51866)
NUM_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in steps of 0.02 s

# Whisper's pre-tokenisation regex (openai/whisper tokenizer.get_encoding).
_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPECIAL_TEXT = re.compile(r"<\|[^<>|]*\|>")
_ASSETS = pathlib.Path(__file__).parent / "assets"
_RANKS_FILE = "multilingual.tiktoken"


def special_token_names(num_languages: int) -> list[str]:
    """Whisper's special tokens in id order; the first gets id = number of BPE ranks (50257)."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGES[:num_languages]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)],
    ]


def num_languages_for_vocab_size(vocab_size: int) -> int:
    """Which tokenizer a model's vocabulary size implies: 51865 -> 99 languages, 51866 -> 100."""
    sizes = {_vocab_size(n): n for n in (NUM_LANGUAGES_V2, NUM_LANGUAGES_V3)}
    if vocab_size not in sizes:
        raise ValueError(
            f"vocab_size {vocab_size} is not a multilingual Whisper vocabulary; expected "
            f"{sorted(sizes)} (51865 for v1/v2 checkpoints, 51866 for large-v3)."
        )
    return sizes[vocab_size]


def _vocab_size(num_languages: int) -> int:
    return len(_load_ranks()) + len(special_token_names(num_languages))


# ----------------------------------------------------------------------------------------------------
# Prefixes.
# ----------------------------------------------------------------------------------------------------


def make_prefix(dataset: str, task: str) -> str:
    """The original's multitask prefix, e.g. ("clotho", "caption") -> "clotho > caption: "."""
    for what, value in (("dataset", dataset), ("task", task)):
        if not value.strip() or value != value.strip() or any(c in value for c in ">:"):
            raise ValueError(
                f"{what} {value!r} cannot go into a prefix: it must be non-empty, without surrounding "
                "spaces, '>' or ':' (the prefix is split on them when reading outputs back)."
            )
    return f"{dataset} > {task}: "


CLOTHO_CAPTION = make_prefix("clotho", "caption")
AUDIOCAPS_CAPTION = make_prefix("audiocaps", "caption")
AUDIOSET_KEYWORDS = make_prefix("audioset", "keywords")
# The original's datasets and the prefix each was trained with.
DEFAULT_PREFIXES: Mapping[str, str] = MappingProxyType(
    {"clotho": CLOTHO_CAPTION, "audiocaps": AUDIOCAPS_CAPTION, "audioset": AUDIOSET_KEYWORDS}
)
DATASETS: tuple[str, ...] = tuple(DEFAULT_PREFIXES)


# Styles that force no prefix: the prompt is only `SpecialTokens.decoder_prompt`, as an unmodified Whisper
# checkpoint expects (it transcribes; useful to hear what a pretrained model hears).
PLAIN_STYLES: tuple[str, ...] = ("none", "")


def parse_style(style: str) -> str:
    """Config style string -> prefix: "clotho > caption", "clotho>caption:" -> "clotho > caption: ";
    "none" or "" (`PLAIN_STYLES`) -> "" (no prefix).

    Any dataset/task pair is accepted, so new datasets and styles need only a config change.
    """
    if style.strip() in PLAIN_STYLES:
        return ""
    body = style.strip().removesuffix(":")
    parts = [part.strip() for part in body.split(">")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"style {style!r} is not of the form '<dataset> > <task>', e.g. 'clotho > caption' "
            f"(known datasets: {', '.join(DATASETS)}), nor 'none' (no prefix)."
        )
    return make_prefix(*parts)


def split_prefixed_text(text: str) -> tuple[str, str]:
    """Split raw decoded text "clotho > caption: X" into ("clotho > caption", "X").

    The original's rule (predict.py `split(":", 1)`), for outputs of systems that generate the prefix
    themselves.
    Text without ":" has no prefix: ("", text.strip()).
    """
    style, sep, caption = text.partition(":")
    if not sep:
        return "", text.strip()
    return style.strip(), caption.strip()


# ----------------------------------------------------------------------------------------------------
# Special tokens.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's special tokens, read from a tokenizer. All special ids are >= `eot`."""

    eot: int  # <|endoftext|>: end of caption and padding
    sot: int  # <|startoftranscript|>: first decoder input
    languages: tuple[str, ...]  # language codes; LANGUAGES[i] has id sot + 1 + i
    translate: int
    transcribe: int
    startoflm: int
    startofprev: int
    nospeech: int
    notimestamps: int
    timestamp_begin: int  # <|0.00|>; the NUM_TIMESTAMPS timestamps follow

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int], source: str) -> SpecialTokens:
        """Reads the ids by token name and checks they have Whisper's layout."""

        def lookup(*names: str) -> int:
            for name in names:
                if name in vocab:
                    return vocab[name]
            raise ValueError(
                f"{source} has no {names[0]} token, so it is not a complete Whisper tokenizer (older HF "
                "files lack the timestamps); Tokenizer.from_assets() gives the same ids offline."
            )

        sot = lookup("<|startoftranscript|>")
        languages = tuple(code for code in LANGUAGES if f"<|{code}|>" in vocab)
        specials = cls(
            eot=lookup("<|endoftext|>"),
            sot=sot,
            languages=languages,
            translate=lookup("<|translate|>"),
            transcribe=lookup("<|transcribe|>"),
            startoflm=lookup("<|startoflm|>"),
            startofprev=lookup("<|startofprev|>"),
            nospeech=lookup("<|nospeech|>", "<|nocaptions|>"),  # older HF files name it <|nocaptions|>
            notimestamps=lookup("<|notimestamps|>"),
            timestamp_begin=lookup("<|0.00|>"),
        )
        expected = [sot + 1 + i for i in range(len(languages))]
        if languages != LANGUAGES[: len(languages)] or [vocab[f"<|{c}|>"] for c in languages] != expected:
            raise ValueError(
                f"{source}: language tokens must be Whisper's (en, zh, de, ...) from id {sot + 1}."
            )
        found = (sot, specials.translate, specials.timestamp_begin)
        layout = (specials.eot + 1, sot + len(languages) + 1, specials.notimestamps + 1)
        if found != layout:
            raise ValueError(
                f"{source}: ids of (sot, translate, <|0.00|>) are {found}; Whisper's are {layout}."
            )
        return specials

    @property
    def num_languages(self) -> int:
        return len(self.languages)

    def language(self, code: str) -> int:
        """Id of a language token, e.g. "en" -> 50259."""
        if code not in self.languages:
            raise ValueError(f"unknown language {code!r}; this tokenizer knows {', '.join(self.languages)}.")
        return self.sot + 1 + self.languages.index(code)

    @property
    def en(self) -> int:
        return self.language("en")

    @property
    def decoder_prompt(self) -> tuple[int, ...]:
        """The forced special tokens before every prefix: SOT, <|en|>, <|transcribe|>, <|notimestamps|>."""
        return (self.sot, self.en, self.transcribe, self.notimestamps)


# ----------------------------------------------------------------------------------------------------
# Backends: the same encode/decode over tiktoken (packaged ranks) or HF tokenizers (checkpoint directory).
# ----------------------------------------------------------------------------------------------------


@functools.cache
def _load_ranks() -> dict[bytes, int]:
    """The packaged BPE ranks (token bytes -> id 0..50256); rank 50256 is the empty token b''."""
    with open(_ASSETS / _RANKS_FILE, encoding="ascii") as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line)}


class _TiktokenBackend:
    def __init__(self, num_languages: int):
        ranks = _load_ranks()
        names = special_token_names(num_languages)
        self.num_languages = num_languages
        self.special_vocab = {name: len(ranks) + i for i, name in enumerate(names)}
        self.encoding = tiktoken.Encoding(
            name=f"whisper-multilingual-{num_languages}",
            explicit_n_vocab=len(ranks) + len(names),
            pat_str=_SPLIT_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.special_vocab,
        )
        self.vocab_size = self.encoding.n_vocab
        self.source = f"packaged {_RANKS_FILE} ({num_languages} languages)"

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def to_hf(self) -> transformers.WhisperTokenizer:
        return _hf_tokenizer_from_assets(self.num_languages)


class _HFBackend:
    def __init__(self, hf_tokenizer: transformers.WhisperTokenizer, source: str):
        self.hf = hf_tokenizer
        vocab = hf_tokenizer.get_vocab()
        eot = vocab.get("<|endoftext|>", len(vocab))
        self.special_vocab = {name: i for name, i in vocab.items() if i >= eot}
        self.vocab_size = len(hf_tokenizer)
        self.source = source

    # The Rust core directly: transformers' decode also regex-deletes "<|x.xx|>" text and may clean spaces.
    def encode(self, text: str) -> list[int]:
        return self.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.backend_tokenizer.decode(ids, skip_special_tokens=False)

    def to_hf(self) -> transformers.WhisperTokenizer:
        return self.hf


def _bpe_split(ranks: Mapping[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-pair-merge `token` with merges of rank < max_rank; the two parts left are its own merge."""
    parts = [bytes([b]) for b in token]
    while True:
        best: tuple[int, int] | None = None  # (rank, position)
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


@functools.cache
def _hf_tokenizer_from_assets(num_languages: int) -> transformers.WhisperTokenizer:
    """The packaged ranks as a transformers WhisperTokenizer (GPT-2 byte-level vocab + merges), same ids.

    transformers 5 takes `vocab=`/`merges=` (a `vocab_file=` is silently ignored, giving an empty vocabulary).
    Timestamps are added as non-special tokens, as in the hub's Whisper tokenizers.
    """
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = _load_ranks()
    byte_to_char = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:  # single bytes and the empty rank-50256 token need no merge
            pair = _bpe_split(ranks, token, rank)
            assert len(pair) == 2, (token, pair)
            merges.append((to_str(pair[0]), to_str(pair[1])))
    hf = transformers.WhisperTokenizer(vocab=vocab, merges=merges)  # adds <|endoftext|> at len(vocab)
    names = special_token_names(num_languages)
    timestamps = names[-NUM_TIMESTAMPS:]
    hf.add_special_tokens({"additional_special_tokens": names[1:-NUM_TIMESTAMPS]})
    hf.add_tokens([transformers.AddedToken(t, special=False, normalized=False) for t in timestamps])
    return hf


# ----------------------------------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------------------------------


@functools.cache
def _tokenizer_from_assets(num_languages: int) -> Tokenizer:
    return Tokenizer(_TiktokenBackend(num_languages), recipe=(Tokenizer.from_assets, (num_languages,)))


class Tokenizer:
    """Whisper BPE with the original system's prompt, training targets and caption clean-up."""

    def __init__(
        self, backend: _TiktokenBackend | _HFBackend, recipe: tuple[Callable[..., Tokenizer], tuple]
    ):
        """Use `from_assets` or `from_pretrained`; `recipe` rebuilds it when unpickled (Grain workers)."""
        self._backend = backend
        self._recipe = recipe
        self._special_vocab = backend.special_vocab
        self._prompt_cache: dict[str, tuple[int, ...]] = {}
        self.specials = SpecialTokens.from_vocab(backend.special_vocab, backend.source)

    @classmethod
    def from_assets(cls, num_languages: int = NUM_LANGUAGES_V2) -> Tokenizer:
        """Offline, from the packaged ranks: 99 languages (v1/v2, vocab 51865) or 100 (large-v3, 51866)."""
        if num_languages not in (NUM_LANGUAGES_V2, NUM_LANGUAGES_V3):
            raise ValueError(
                f"num_languages={num_languages}; Whisper checkpoints use {NUM_LANGUAGES_V2} (v1/v2) or "
                f"{NUM_LANGUAGES_V3} (large-v3)."
            )
        return _tokenizer_from_assets(num_languages)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """The HF tokenizer files in a local directory (a Whisper checkpoint or `save_pretrained` output)."""
        import transformers

        directory = pathlib.Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {directory} does not exist; pass a local HF Whisper checkpoint "
                "directory or use Tokenizer.from_assets() for the packaged tokenizer."
            )
        if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json")):
            raise FileNotFoundError(
                f"{directory} has no tokenizer.json or vocab.json; copy the checkpoint's tokenizer files "
                "there or write them with Tokenizer.from_assets().save_pretrained(dir)."
            )
        hf = transformers.WhisperTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cls(_HFBackend(hf, str(directory)), recipe=(Tokenizer.from_pretrained, (str(directory),)))

    def __reduce__(self) -> tuple[Callable[..., Tokenizer], tuple]:
        return self._recipe

    def __repr__(self) -> str:
        return f"Tokenizer({self._backend.source}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Number of ids including specials and timestamps (51865 or 51866); the model's V."""
        return self._backend.vocab_size

    def encode(self, text: str) -> list[int]:
        """BPE ids of plain text, no special tokens added; text naming a special token is refused."""
        for match in _SPECIAL_TEXT.finditer(text):
            if match.group() in self._special_vocab:
                raise ValueError(
                    f"text {text[:80]!r} contains the special token {match.group()}; backends disagree on "
                    "such text (tiktoken reads it as characters, transformers as the token), so remove it."
                )
        return self._backend.encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`, skipping special and timestamp tokens; lossless for ids from `encode`."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}).")
        return self._backend.decode([i for i in ids if i < self.specials.eot])

    def decode_with_specials(self, ids: Sequence[int] | np.ndarray) -> str:
        """The whole sequence with special tokens spelled out (the original's raw output log); the eot
        padding after the first eot is dropped."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        eots = [k for k, i in enumerate(ids) if i == self.specials.eot]
        return self._backend.decode(ids[: eots[0] + 1] if eots else ids)

    def prompt_ids(self, prefix: str) -> list[int]:
        """Forced decoder prompt: SOT, <|en|>, <|transcribe|>, <|notimestamps|>, then the prefix's ids."""
        if prefix not in self._prompt_cache:
            self._prompt_cache[prefix] = (*self.specials.decoder_prompt, *self.encode(prefix))
        return list(self._prompt_cache[prefix])

    def encode_target(
        self, prefix: str, caption: str, max_length: int, train_prompt: bool = False
    ) -> dict[str, np.ndarray]:
        """One static-shape training row for teacher forcing.

        sequence = prompt_ids(prefix) + caption ids + [eot], at most `max_length` tokens: a long caption is
        truncated, eot is kept. Inputs are sequence[:-1], targets sequence[1:], both padded with eot to T.

        Deliberate difference from the original: its decoder inputs started with <|startoftranscript|>
        twice (HF shift_tokens_right in front of labels that already began with it); ours start with it once,
        exactly as at inference. The original also trained the forced prompt tokens; `train_prompt=True` does
        that (the mask covers the prompt's targets <|en|> ... prefix); by default the loss covers only the
        caption and eot.

        Returns:
          decoder_input_ids: [T] int32.
          targets: [T] int32.
          loss_mask: [T] float32, 1 on trained targets, 0 on padding (and the prompt unless train_prompt).
        """
        prompt = self.prompt_ids(prefix)
        room = max_length - len(prompt) - 1  # caption tokens that fit beside the prompt and eot
        if room < 0:
            raise ValueError(
                f"max_length={max_length} leaves no room for eot after the {len(prompt)}-token prompt of "
                f"prefix {prefix!r}; use max_length >= {len(prompt) + 1}."
            )
        sequence = [*prompt, *self.encode(caption)[:room], self.specials.eot]
        padded = np.full(max_length, self.specials.eot, dtype=np.int32)
        padded[: len(sequence)] = sequence
        loss_mask = np.zeros(max_length - 1, dtype=np.float32)
        first_trained = 0 if train_prompt else len(prompt) - 1  # target index of the first caption token
        loss_mask[first_trained : len(sequence) - 1] = 1.0
        return {"decoder_input_ids": padded[:-1].copy(), "targets": padded[1:].copy(), "loss_mask": loss_mask}

    def caption_from_ids(self, ids: Sequence[int] | np.ndarray, prompt_length: int) -> str:
        """Generated ids [T] (forced prompt included) -> caption: drop the prompt, cut at first eot, strip."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or prompt_length < 0:
            raise ValueError(
                f"caption_from_ids takes one sequence [T] and prompt_length >= 0; got shape {ids.shape} and "
                f"prompt_length={prompt_length}."
            )
        generated = ids[prompt_length:]
        eots = np.flatnonzero(generated == self.specials.eot)
        if eots.size:
            generated = generated[: eots[0]]
        return self.decode(generated).strip()

    def save_pretrained(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write HF tokenizer files that transformers.WhisperTokenizer.from_pretrained loads, same ids."""
        return list(self._backend.to_hf().save_pretrained(str(directory)))
