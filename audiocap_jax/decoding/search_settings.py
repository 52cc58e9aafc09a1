"""The decoding settings of the search and the config keys that set them, each key written once.

`DecodeSettings` is what `search.py` decodes with. Users set it through the decoding keys of a config: those of
configs/predict.py (`predict`, `evaluate --checkpoint`) and of a training config's `eval` section (validation).
Each key's default and one-line meaning are declared once, on its `DecodeSettings` field (`_key`), or in
`HOST_KEYS` for the two keys `inference` reads around the search; `decoding_keys()` gives both configs their
keys from there, and `--help` shows these meanings (`cli.config_comments`). No JAX: config files import it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

LENGTH_PENALTY_FORMS = ("hf", "gnmt")
STRATEGIES = ("beam", "sample")
# The fields that only sampling reads; they must stay at their defaults with beam search. `seed` is not among
# them: beam search ignores it, so one config (or a sweep mixing strategies) can carry a seed whatever its
# strategy.
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "num_samples")
# The fields that only (diverse) beam search reads.
_GROUP_KEYS = ("num_beam_groups", "diversity_penalty")
EarlyStopping = bool | Literal["never"]
_MEANING = "meaning"  # the field metadata that makes a field a config key


def _key(default: Any, meaning: str) -> Any:
    """A `DecodeSettings` field that is also a decoding config key: its default and its one-line meaning."""
    return dataclasses.field(default=default, metadata={_MEANING: meaning})


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Decoding options; defaults are the original system's (5 beams, 80 tokens counting the prompt).

    The fields made with `_key` are the decoding config keys: their defaults here are the configs' (unless a
    config passes another to `decoding_keys`) and their meanings are what `--help` shows.
    """

    eos_id: int  # <|endoftext|>: ends a caption and pads the output
    # The decoding config keys, in the order the configs list them.
    strategy: str = _key("beam", '"beam" (num_beams; greedy = 1) or "sample" (num_samples draws per clip)')
    num_beams: int = _key(5, "beam: beams per clip; 1 = greedy")
    num_beam_groups: int = _key(1, "beam: diverse (group) beam search when > 1; must divide num_beams")
    diversity_penalty: float = _key(
        0.0, "beam with groups: HF's Hamming penalty on tokens earlier groups chose"
    )
    temperature: float = _key(1.0, "sample: divides the logits (< 1 sharpens)")
    top_k: int = _key(0, "sample: keep the k most likely tokens; 0 = off, 1 = greedy")
    top_p: float = _key(1.0, "sample: nucleus, keep the smallest set with this much probability; 1 = off")
    num_samples: int = _key(1, "sample: candidates drawn per clip")
    seed: int = _key(0, "sample: same seed, same captions (on any mesh); beam search ignores it")
    max_length: int = _key(80, "counts the forced prompt tokens, as the original's generate(max_length=80)")
    min_length: int = _key(0, "counts the prompt: no eot before this many tokens")
    length_penalty: float = _key(1.0, "finished score = sum log p / penalty(generated tokens)")
    length_penalty_form: str = _key("hf", '"hf": score / len**lp; "gnmt": ((5 + len) / 6)**lp')
    no_repeat_ngram_size: int = _key(0, "every strategy: no n-gram of this size twice in a caption; 0 = off")
    repetition_penalty: float = _key(
        1.0, "every strategy: HF's penalty on tokens already in the sequence; 1 = off"
    )
    num_return_sequences: int = _key(
        1, "candidates kept per clip, best first (the N-best CSV's); at most num_beams / num_samples"
    )
    # Not config keys: HF's stopping rule (the original's False) and the checkpoint's suppress lists.
    early_stopping: EarlyStopping = False
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} unknown; choose one of {STRATEGIES}.")
        if self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams} must be >= 1 (1 = greedy).")
        if self.num_samples < 1:
            raise ValueError(f"num_samples is {self.num_samples}; it must be >= 1.")
        # The knobs the other strategy reads must stay at their defaults, so a setting never silently does nothing.
        other_strategy, other_keys = (
            ("sample", _SAMPLING_KEYS) if self.strategy == "beam" else ("beam", _GROUP_KEYS)
        )
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        inactive = {k: getattr(self, k) for k in other_keys if getattr(self, k) != defaults[k]}
        if inactive:
            raise ValueError(
                f"{', '.join(f'{k}={v!r}' for k, v in inactive.items())} only apply to "
                f'strategy="{other_strategy}"; set strategy="{other_strategy}" or leave them at their defaults.'
            )
        width_name = "num_beams" if self.strategy == "beam" else "num_samples"
        width = getattr(self, width_name)
        if not 1 <= self.num_return_sequences <= width:
            raise ValueError(
                f"num_return_sequences {self.num_return_sequences} must be between 1 and {width_name} "
                f"{width}; raise {width_name} to return more sequences."
            )
        if self.num_beam_groups < 1 or self.num_beams % self.num_beam_groups:
            raise ValueError(
                f"num_beam_groups {self.num_beam_groups} must be >= 1 and divide num_beams {self.num_beams}; "
                "choose a divisor of num_beams."
            )
        if self.diversity_penalty < 0:
            raise ValueError(f"diversity_penalty {self.diversity_penalty} must be >= 0.")
        if self.diversity_penalty > 0 and self.num_beam_groups == 1:
            raise ValueError(
                f"diversity_penalty {self.diversity_penalty} needs num_beam_groups > 1 (it penalises tokens "
                "that earlier groups chose); set num_beam_groups or diversity_penalty=0."
            )
        if not self.temperature > 0:
            raise ValueError(
                f"temperature {self.temperature} must be > 0; for greedy decoding use top_k=1 "
                '(or strategy="beam", num_beams=1).'
            )
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k} must be >= 0 (0 = no top-k filter).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p} must be in (0, 1] (1 = no nucleus filter).")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size {self.no_repeat_ngram_size} must be >= 0 (0 = off).")
        if self.no_repeat_ngram_size >= self.max_length:
            # An n-gram must fit before the token it bans, inside max_length: a larger n could never ban.
            raise ValueError(
                f"no_repeat_ngram_size {self.no_repeat_ngram_size} can never ban a token with max_length "
                f"{self.max_length} (an n-gram must fit in the caption, prompt included); set it below "
                "max_length, e.g. 3, or 0 to turn it off."
            )
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty {self.repetition_penalty} must be > 0 (1 = off).")
        if self.length_penalty_form not in LENGTH_PENALTY_FORMS:
            raise ValueError(
                f"length_penalty_form {self.length_penalty_form!r} unknown; choose one of {LENGTH_PENALTY_FORMS}."
            )
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping {self.early_stopping!r} must be True, False or 'never'.")
        if self.max_length < 2:
            raise ValueError(
                f"max_length {self.max_length} leaves no room for a prompt and a generated token."
            )
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        object.__setattr__(self, "begin_suppress_tokens", tuple(int(t) for t in self.begin_suppress_tokens))

    @classmethod
    def from_generation_config(
        cls, generation_config: Mapping[str, Any] | str | Path, **overrides: Any
    ) -> DecodeSettings:
        """eot id and suppress lists from a checkpoint's `generation_config.json` (path or dict).

        Only these token facts are taken from the file: a Whisper generation config also carries
        `max_length` 448 and Whisper-generate fields that the original system did not use; beams, lengths and
        penalties come from our own config through `overrides`.
        """
        if not isinstance(generation_config, Mapping):
            path = Path(generation_config)
            if path.is_dir():
                path = path / "generation_config.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"No generation config at {path}; pass a HF checkpoint directory or its generation_config.json."
                )
            try:
                generation_config = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}).") from None
        eos = generation_config.get("eos_token_id")
        if isinstance(eos, list | tuple):
            if len(eos) != 1:
                raise ValueError(
                    f"generation config has eos_token_id {eos}; exactly one end token is supported."
                )
            eos = eos[0]
        fields: dict[str, Any] = {}
        if eos is not None:
            fields["eos_id"] = int(eos)
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            fields[name] = tuple(generation_config.get(name) or ())
        fields.update(overrides)
        if "eos_id" not in fields:
            raise ValueError("generation config has no eos_token_id and no eos_id override was given.")
        return cls(**fields)

    def to_hf_generation_config(self) -> dict[str, Any]:
        """The `transformers.GenerationConfig` fields that make HF's `generate` run this same search
        (add `decoder_start_token_id`); what tests and benchmarks compare against."""
        if self.length_penalty_form != "hf":
            raise ValueError(
                f"length_penalty_form {self.length_penalty_form!r} has no transformers equivalent."
            )
        if self.num_beam_groups > 1:
            raise ValueError(
                f"num_beam_groups {self.num_beam_groups}: transformers 5 has no diverse (group) beam search."
            )
        common = dict(
            eos_token_id=self.eos_id,
            pad_token_id=self.eos_id,
            max_length=self.max_length,
            min_length=self.min_length,
            suppress_tokens=list(self.suppress_tokens) or None,
            begin_suppress_tokens=list(self.begin_suppress_tokens) or None,
            no_repeat_ngram_size=self.no_repeat_ngram_size or None,
            repetition_penalty=self.repetition_penalty,
        )
        if self.strategy == "sample":
            # HF has no per-sample length penalty; its sequences match ours, its scores do not.
            return dict(
                common,
                do_sample=True,
                num_beams=1,
                num_return_sequences=self.num_samples,
                temperature=self.temperature,
                top_k=self.top_k or None,
                top_p=self.top_p,
            )
        return dict(
            common,
            do_sample=False,
            num_beams=self.num_beams,
            num_return_sequences=self.num_return_sequences,
            length_penalty=self.length_penalty,
            early_stopping=self.early_stopping,
        )


# The decoding keys that `inference` reads around the search: key -> (default, meaning).
HOST_KEYS: dict[str, tuple[Any, str]] = {
    "rerank": (
        "none",
        'how the caption is chosen among the candidates: "none" (search score) | "likelihood" | "mbr" | '
        '"package.module:function" (audiocap_jax/decoding/rerank.py)',
    ),
    "use_checkpoint_suppress_tokens": (
        True,
        "apply a HF checkpoint's generation_config suppress lists (as the original did) where the caller "
        "passes its directory (predict and evaluate; validation passes none)",
    ),
}
SEARCH_KEYS = tuple(f.name for f in dataclasses.fields(DecodeSettings) if _MEANING in f.metadata)
DECODING_KEYS = (*SEARCH_KEYS, *HOST_KEYS)  # what configs/predict.py and a training config's `eval` carry
MEANINGS = {
    **{f.name: f.metadata[_MEANING] for f in dataclasses.fields(DecodeSettings) if _MEANING in f.metadata},
    **{key: meaning for key, (_, meaning) in HOST_KEYS.items()},
}


def decoding_keys(**defaults: Any) -> dict[str, Any]:
    """Every decoding key with its default, in order; `defaults` replaces some for one use (training validation
    decodes greedily: `num_beams=1`). What a config `update`s its decoding section with."""
    table = {f.name: f.default for f in dataclasses.fields(DecodeSettings) if _MEANING in f.metadata}
    table |= {key: default for key, (default, _) in HOST_KEYS.items()}
    unknown = sorted(set(defaults) - set(table))
    if unknown:
        raise ValueError(f"{unknown} are not decoding keys; the keys are {', '.join(table)}.")
    return table | defaults
