"""A synthetic sound-scene captioning set in the real Clotho and AudioSet-small layouts, for the demo.

Real datasets cannot be downloaded here, yet the demo must show that the system *learns*. This module writes
procedural 16 kHz clips whose captions follow from the audio: 1-3 events from 12 acoustically distinct types
(beeps, chirps, noise bursts, knocks, clicking, hum, ...), with a count (1-3) for the countable ones, a
loudness (quiet/loud), an order ("followed by"), a silence gap that is either short or a "pause", and an
optional background (hiss or rumble). Each clip gets 5 Clotho-style captions from 5 templates that share most
words, and AudioSet-style label ids under a small ontology whose keyword captions read like
"tones, low beep, impacts, knock".

The files use the real layouts, so the demo runs the same `prepare` commands and TFDS builders as real data:

  ROOT/clotho/clotho_captions_{development,validation,evaluation}.csv    file_name,caption_1..caption_5
  ROOT/clotho/clotho_metadata_{development,validation,evaluation,test}.csv
  ROOT/clotho/audiofolder/{development,validation,evaluation,test}/<file_name>.wav
  ROOT/audioset/annotations/{train,valid,test}.jsonl + ontology.json   the AudioSet-small annotations
  ROOT/audioset/audios/<orig_split>/<youtube_id>.wav                    as scripts/download_audioset.sh leaves
  ROOT/synthetic.json                                                   parameters; makes re-runs a no-op

The keyword (AudioSet-style) clips are drawn independently of the caption (Clotho-style) clips: twice the
distinct audio for the same generation cost, and held-out splits stay held out for both styles. Every clip is
a pure function of (seed, dataset, split, index), so files are byte-identical across runs and worker counts.
"""

import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import scipy.fft
import soundfile
import tqdm
from absl import logging

from audiocap_jax import cli
from audiocap_jax.audio import SAMPLE_RATE
from audiocap_jax.data import prepare
from audiocap_jax.data.prepare import CLOTHO_METADATA_COLUMNS

VERSION = 1  # Bump when the audio or captions change, so existing sets are regenerated.
MANIFEST_FILE = "synthetic.json"
AUDIO_FORMAT = "wav"  # 16-bit PCM at SAMPLE_RATE: byte-deterministic and needs no resampling.

MIN_SECONDS, MAX_SECONDS = 5.0, 10.0
NUM_CAPTIONS = prepare.CLOTHO_NUM_CAPTIONS
MAX_EVENTS = 3
# Default clips per split (Clotho development/validation/evaluation = AudioSet-small train/valid/test), sized so
# that generation, preparation and the TFDS builds of the demo take well under a minute on 2 cores.
DEFAULT_NUM_TRAIN, DEFAULT_NUM_VALID, DEFAULT_NUM_TEST = 400, 50, 50
DEFAULT_NUM_CLOTHO_TEST = 10  # Clotho's audio-only test split: not used by the demo, but prepare needs it.
NUM_EVENTS_WEIGHTS = (0.4, 0.45, 0.15)  # P(1, 2, 3 events); mostly short captions, so the demo learns fast.
LONG_PAUSE_PROBABILITY = 0.3
BACKGROUND_WEIGHTS = {None: 0.4, "hiss": 0.3, "rumble": 0.3}

# Seconds of silence between consecutive events: a "pause" is 3x longer than the longest short gap.
SHORT_GAP = (0.3, 0.6)
LONG_GAP = (1.5, 2.0)
CONTINUOUS_SECONDS = (1.2, 1.8)
EDGE_SILENCE = 0.2  # At least this much silence before the first and after the last event.
# Peak amplitudes: quiet is ~15 dB below loud and >= 25 dB above the backgrounds (rms <= 0.01).
LOUD_PEAK = (0.5, 0.7)
QUIET_PEAK = (0.08, 0.12)

# Clotho split -> the AudioSet-small split with the same role; the Clotho test split (audio only) has none.
AUDIOSET_SPLIT_OF = dict(zip(prepare.CLOTHO_CAPTIONED_SPLITS, prepare.AUDIOSET_SMALL_SPLITS, strict=True))
# AudioSet-small split -> the download folder (`orig_split`) its clips live in; one per segment list, so the
# demo also exercises prepare's search over download folders.
ORIG_SPLIT_OF = dict(zip(prepare.AUDIOSET_SMALL_SPLITS, prepare.AUDIOSET_DOWNLOAD_FOLDERS, strict=True))
_DATASET_IDS = {"clotho": 0, "audioset": 1}  # Part of each clip's seed.
_COUNT_WORDS = ("a", "two", "three")

ONTOLOGY_ROOT = "/s/synthetic"
CATEGORIES = {  # Parent id -> name; the first words of keyword captions.
    "/s/tones": "Tones",
    "/s/chirps": "Chirps",
    "/s/noise": "Noise",
    "/s/impacts": "Impacts",
}


# ----------------------------------------------------------------------------------------------------------
# Sound synthesis. Each function returns `[samples] float32` at SAMPLE_RATE with peak 1.
# ----------------------------------------------------------------------------------------------------------


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE


def _normalise(wave: np.ndarray, fade_seconds: float = 0.005) -> np.ndarray:
    """Raised-cosine fades (no onset clicks smearing the spectrum), then peak 1."""
    ramp = min(int(fade_seconds * SAMPLE_RATE), len(wave) // 2)
    if ramp:
        fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        wave = wave.copy()
        wave[:ramp] *= fade
        wave[len(wave) - ramp :] *= fade[::-1]
    return (wave / max(np.abs(wave).max(), 1e-9)).astype(np.float32)


def _sweep(frequency: np.ndarray) -> np.ndarray:
    """A sine whose instantaneous frequency (Hz, one value per sample) follows `frequency`."""
    return np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE)


def _jitter(rng: np.random.Generator) -> float:
    """±4% pitch/rate variation, so no two events are identical but types never overlap."""
    return rng.uniform(0.96, 1.04)


def _shaped_noise(rng: np.random.Generator, seconds: float, gain: Callable[[np.ndarray], np.ndarray]):
    """Gaussian noise whose spectrum is multiplied by `gain(frequency in Hz)`."""
    num_samples = len(_time(seconds))
    length = scipy.fft.next_fast_len(num_samples, real=True)  # A length with a large prime factor is slow.
    spectrum = np.fft.rfft(rng.standard_normal(length)) * gain(np.fft.rfftfreq(length, 1 / SAMPLE_RATE))
    return np.fft.irfft(spectrum, length)[:num_samples]


def _decaying(frequency_hz: float, decay_seconds: float, seconds: float) -> np.ndarray:
    t = _time(seconds)
    return np.sin(2 * np.pi * frequency_hz * t) * np.exp(-t / decay_seconds)


def _beep(frequency_hz: float) -> Callable[[np.random.Generator, float], np.ndarray]:
    return lambda rng, seconds: _normalise(np.sin(2 * np.pi * frequency_hz * _jitter(rng) * _time(seconds)))


def _chirp(start_hz: float, end_hz: float) -> Callable[[np.random.Generator, float], np.ndarray]:
    def synth(rng: np.random.Generator, seconds: float) -> np.ndarray:
        t, scale = _time(seconds), _jitter(rng)
        return _normalise(_sweep(scale * start_hz * (end_hz / start_hz) ** (t / seconds)))

    return synth


def _white_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    return _normalise(rng.standard_normal(len(_time(seconds))))


def _pink_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    return _normalise(_shaped_noise(rng, seconds, lambda f: 1 / np.sqrt(np.maximum(f, 20.0))), 0.01)


def _knock(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A wooden thump: a damped low resonance plus a short noise transient."""
    thump = _decaying(160 * _jitter(rng), 0.025, seconds)
    transient = rng.standard_normal(len(thump)) * np.exp(-_time(seconds) / 0.004)
    return _normalise(thump + 0.3 * transient, 0.001)


def _clicking(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Sharp 4.5 kHz ticks at ~15 per second."""
    wave = np.zeros(len(_time(seconds)))
    click = _decaying(4500.0, 0.0015, 0.01)
    period = int(SAMPLE_RATE / (15 * _jitter(rng)))
    for start in range(0, len(wave) - len(click), period):
        wave[start : start + len(click)] += click
    return _normalise(wave, 0.0)


def _hum(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A 110 Hz buzz with 8 harmonics, like a transformer."""
    t, f0 = _time(seconds), 110 * _jitter(rng)
    return _normalise(sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 9)), 0.05)


def _warble(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A 900 Hz tone whose loudness pulses 7 times a second (tremolo)."""
    t = _time(seconds)
    return _normalise(np.sin(2 * np.pi * 900 * _jitter(rng) * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 7 * t)))


def _dripping(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Irregular water drops (~6 per second): short decaying tones gliding up from 1.2 to 1.9 kHz."""
    wave = np.zeros(len(_time(seconds)))
    drop_t = _time(0.06)
    drop = _sweep(1200 * (1900 / 1200) ** np.minimum(drop_t / 0.03, 1.0)) * np.exp(-drop_t / 0.02)
    start = 0
    while start + len(drop) <= len(wave):
        wave[start : start + len(drop)] += drop * rng.uniform(0.6, 1.0)
        start += int(SAMPLE_RATE * rng.uniform(0.1, 0.25))
    return _normalise(wave, 0.0)


def _whistle(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A 3.8 kHz whistle with 5.5 Hz vibrato."""
    t = _time(seconds)
    return _normalise(_sweep(3800 * _jitter(rng) + 120 * np.sin(2 * np.pi * 5.5 * t)), 0.03)


def _hiss(rng: np.random.Generator, seconds: float) -> np.ndarray:
    wave = rng.standard_normal(len(_time(seconds)))
    return wave / np.sqrt(np.mean(wave**2)) * rng.uniform(0.001, 0.002)  # rms, not peak


def _rumble(rng: np.random.Generator, seconds: float) -> np.ndarray:
    wave = _shaped_noise(rng, seconds, lambda f: (f < 150.0) / np.maximum(f, 20.0))
    return wave / np.sqrt(np.mean(wave**2)) * rng.uniform(0.005, 0.01)


@dataclasses.dataclass(frozen=True)
class EventType:
    """One kind of sound event: how it sounds, how captions and labels name it."""

    label_id: str  # "/s/beep_low": the AudioSet-style label (the "/s/" namespace marks synthetic labels).
    name: str  # Ontology name, lower-cased into keyword captions: "Low beep".
    parent: str  # Category id in CATEGORIES.
    noun: str  # Caption noun of one occurrence: "low beep", "burst of white noise", "humming sound".
    plural: str | None  # "low beeps"; None for a continuous sound, which is never counted.
    synth: Callable[[np.random.Generator, float], np.ndarray]  # (rng, seconds) -> [samples], peak 1.
    unit_seconds: float = 0.0  # Countable: length of one occurrence.
    spacing_seconds: float = 0.0  # Countable: silence between occurrences.
    description: str = ""

    @property
    def countable(self) -> bool:
        return self.plural is not None

    def seconds(self, count: int) -> float:
        """Length of `count` occurrences of a countable event."""
        return count * self.unit_seconds + (count - 1) * self.spacing_seconds


# One event type per row.
# fmt: off
EVENT_TYPES: dict[str, EventType] = {
    event.label_id.removeprefix("/s/"): event
    for event in (
        EventType("/s/beep_low", "Low beep", "/s/tones", "low beep", "low beeps", _beep(500.0), 0.2, 0.2,
                  "A 500 Hz sine beep of 0.2 s."),
        EventType("/s/beep_high", "High beep", "/s/tones", "high beep", "high beeps", _beep(2600.0), 0.2, 0.2,
                  "A 2.6 kHz sine beep of 0.2 s."),
        EventType("/s/chirp_rising", "Rising chirp", "/s/chirps", "rising chirp", "rising chirps",
                  _chirp(400.0, 4000.0), 0.4, 0.2, "A 0.4 s sweep up from 400 Hz to 4 kHz."),
        EventType("/s/chirp_falling", "Falling chirp", "/s/chirps", "falling chirp", "falling chirps",
                  _chirp(4000.0, 400.0), 0.4, 0.2, "A 0.4 s sweep down from 4 kHz to 400 Hz."),
        EventType("/s/noise_white", "White noise", "/s/noise", "burst of white noise", "bursts of white noise",
                  _white_noise, 0.3, 0.25, "A 0.3 s burst of white noise (flat spectrum)."),
        EventType("/s/noise_pink", "Pink noise", "/s/noise", "burst of pink noise", "bursts of pink noise",
                  _pink_noise, 0.3, 0.25, "A 0.3 s burst of pink noise (power falling 3 dB per octave)."),
        EventType("/s/knock", "Knock", "/s/impacts", "knock", "knocks", _knock, 0.12, 0.25,
                  "A wooden knock: a damped 160 Hz resonance with a short transient."),
        EventType("/s/clicking", "Clicking", "/s/impacts", "clicking sound", None, _clicking,
                  description="Sharp 4.5 kHz ticks at about 15 per second."),
        EventType("/s/dripping", "Dripping", "/s/impacts", "dripping sound", None, _dripping,
                  description="Irregular drops gliding up from 1.2 to 1.9 kHz, about 6 per second."),
        EventType("/s/hum", "Hum", "/s/tones", "humming sound", None, _hum,
                  description="A 110 Hz tone with 8 harmonics."),
        EventType("/s/warble", "Warbling tone", "/s/tones", "warbling tone", None, _warble,
                  description="A 900 Hz tone with a 7 Hz tremolo."),
        EventType("/s/whistle", "Whistle", "/s/tones", "whistle", None, _whistle,
                  description="A 3.8 kHz whistle with 5.5 Hz vibrato."),
    )
}
# fmt: on


@dataclasses.dataclass(frozen=True)
class Background:
    """A quiet sound under a whole clip; labelled, and named at the end of captions."""

    label_id: str
    name: str  # Ontology name; also the caption word, lower-cased ("over a background hiss").
    parent: str
    synth: Callable[[np.random.Generator, float], np.ndarray]  # Already at its level (rms 0.001-0.01).
    description: str


BACKGROUNDS: dict[str, Background] = {
    "hiss": Background("/s/hiss", "Hiss", "/s/noise", _hiss, "Quiet white noise under the whole clip."),
    "rumble": Background("/s/rumble", "Rumble", "/s/noise", _rumble, "Quiet noise below 150 Hz."),
}


# ----------------------------------------------------------------------------------------------------------
# Clip specs: what a clip contains, sampled from a seeded generator; captions and labels follow from it.
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    """One event placed in a clip."""

    kind: str  # Key of EVENT_TYPES.
    count: int  # 1-3 occurrences; always 1 for continuous sounds.
    loud: bool
    onset: float  # Seconds from the clip start.
    seconds: float


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything a clip's audio, captions and labels depend on (except the noise samples)."""

    events: tuple[Event, ...]  # In time order, distinct kinds.
    pauses: tuple[bool, ...]  # Per gap between consecutive events: long silence ("after a pause")?
    background: str | None  # Key of BACKGROUNDS.
    seconds: float  # Clip length.


def _check_max_events(max_events: int) -> None:
    if not 1 <= max_events <= MAX_EVENTS:
        raise ValueError(f"max_events must be in 1..{MAX_EVENTS}, got {max_events}.")


def sample_clip(rng: np.random.Generator, max_events: int = MAX_EVENTS) -> ClipSpec:
    """Draws a clip: 1..max_events distinct events, their counts, loudness, gaps, background and length."""
    _check_max_events(max_events)
    weights = np.asarray(NUM_EVENTS_WEIGHTS[:max_events])
    num_events = 1 + rng.choice(max_events, p=weights / weights.sum())
    kinds = [list(EVENT_TYPES)[i] for i in rng.choice(len(EVENT_TYPES), num_events, replace=False)]
    pauses = tuple(bool(rng.random() < LONG_PAUSE_PROBABILITY) for _ in range(num_events - 1))
    gaps = [rng.uniform(*(LONG_GAP if pause else SHORT_GAP)) for pause in pauses]
    drafts = []
    for kind in kinds:
        event_type = EVENT_TYPES[kind]
        count = int(rng.integers(1, 4)) if event_type.countable else 1
        seconds = event_type.seconds(count) if event_type.countable else rng.uniform(*CONTINUOUS_SECONDS)
        drafts.append((kind, count, bool(rng.random() < 0.5), seconds))
    busy = sum(draft[3] for draft in drafts) + sum(gaps)
    clip_seconds = rng.uniform(max(MIN_SECONDS, busy + 2 * EDGE_SILENCE), MAX_SECONDS)
    onset = rng.uniform(EDGE_SILENCE, clip_seconds - busy - EDGE_SILENCE)
    events = []
    for (kind, count, loud, seconds), gap in zip(drafts, [*gaps, 0.0], strict=True):
        events.append(Event(kind, count, loud, round(onset, 4), round(seconds, 4)))
        onset += seconds + gap
    background_names = list(BACKGROUND_WEIGHTS)
    background = background_names[rng.choice(len(background_names), p=list(BACKGROUND_WEIGHTS.values()))]
    return ClipSpec(tuple(events), pauses, background, round(clip_seconds, 3))


def render(spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """The clip's audio, `[samples] float32` in [-1, 1] at SAMPLE_RATE; `rng` draws noise and jitter."""
    audio = np.zeros(int(round(spec.seconds * SAMPLE_RATE)), np.float64)
    for event in spec.events:
        event_type = EVENT_TYPES[event.kind]
        peak = rng.uniform(*(LOUD_PEAK if event.loud else QUIET_PEAK))
        if event_type.countable:
            step = event_type.unit_seconds + event_type.spacing_seconds
            pieces = [
                (event.onset + i * step, event_type.synth(rng, event_type.unit_seconds))
                for i in range(event.count)
            ]
        else:
            pieces = [(event.onset, event_type.synth(rng, event.seconds))]
        for onset, wave in pieces:
            start = int(round(onset * SAMPLE_RATE))
            audio[start : start + len(wave)] += peak * wave[: len(audio) - start]
    if spec.background is not None:
        audio += BACKGROUNDS[spec.background].synth(rng, spec.seconds)[: len(audio)]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _event_phrase(event: Event) -> str:
    """The caption words of one event: "two loud high beeps", "a quiet humming sound"."""
    event_type = EVENT_TYPES[event.kind]
    noun = event_type.plural if event.count > 1 else event_type.noun
    return f"{_COUNT_WORDS[event.count - 1]} {'loud' if event.loud else 'quiet'} {noun}"


# The 5 caption templates: (sentence with {seq} and {is}, connector after a short gap, after a pause,
# background phrase). They share most words so that a small model learns them quickly.
TEMPLATES = (
    ("{Seq} can be heard{bg}.", "followed by", "followed, after a pause, by", " over a background {}"),
    ("There {is} {seq}{bg}.", "and then", "and, after a pause,", " with a {} in the background"),
    ("We hear {seq}{bg}.", "and then", "and, after a pause,", " over a background {}"),
    (
        "A recording of {seq}{bg}.",
        "followed by",
        "followed, after a pause, by",
        " with a {} in the background",
    ),
    ("{Seq}{bg}.", ", then", ", then, after a pause,", " over a background {}"),
)


def captions(spec: ClipSpec) -> list[str]:
    """The clip's NUM_CAPTIONS reference captions, one per template in TEMPLATES order."""
    phrases = [_event_phrase(event) for event in spec.events]
    result = []
    for sentence, short, long, background in TEMPLATES:
        sequence = phrases[0]
        for phrase, pause in zip(phrases[1:], spec.pauses, strict=True):
            connector = long if pause else short
            sequence += f"{'' if connector.startswith(',') else ' '}{connector} {phrase}"
        result.append(
            sentence.format(
                Seq=sequence[0].upper() + sequence[1:],
                seq=sequence,
                bg=background.format(spec.background) if spec.background else "",
                **{"is": "are" if spec.events[0].count > 1 else "is"},
            )
        )
    return result


def label_ids(spec: ClipSpec) -> list[str]:
    """AudioSet-style labels: the events in time order, then the background.

    Real AudioSet lists are sorted by MID; time order keeps the keyword caption in the order of the sounds.
    """
    labels = [EVENT_TYPES[event.kind].label_id for event in spec.events]
    return labels + ([BACKGROUNDS[spec.background].label_id] if spec.background else [])


def ontology_nodes() -> list[dict]:
    """The synthetic labels as AudioSet `ontology.json` nodes: a root, 4 abstract categories, the leaves."""

    def node(mid: str, name: str, description: str, child_ids: list[str], abstract: bool) -> dict:
        return {
            "id": mid,
            "name": name,
            "description": description,
            "citation_uri": "",
            "positive_examples": [],
            "child_ids": child_ids,
            "restrictions": ["abstract"] if abstract else [],
        }

    leaves = [*EVENT_TYPES.values(), *BACKGROUNDS.values()]
    nodes = [
        node(
            ONTOLOGY_ROOT,
            "Synthetic sounds",
            "Procedural sounds of audiocap_jax.data.synthetic.",
            list(CATEGORIES),
            abstract=True,
        )
    ]
    for mid, name in CATEGORIES.items():
        children = [leaf.label_id for leaf in leaves if leaf.parent == mid]
        nodes.append(node(mid, name, f"Synthetic {name.lower()}.", children, abstract=True))
    nodes += [node(leaf.label_id, leaf.name, leaf.description, [], abstract=False) for leaf in leaves]
    return nodes


def write_ontology(path: str | os.PathLike) -> pathlib.Path:
    """Writes `ontology_nodes()` formatted like AudioSet's ontology.json (2-space indent, one line per field)."""
    path = pathlib.Path(path)
    entries = (
        "  {\n"
        + ",\n".join(f"    {json.dumps(key)}: {json.dumps(value)}" for key, value in node.items())
        + "\n  }"
        for node in ontology_nodes()
    )
    path.write_text("[\n" + ",\n".join(entries) + "\n]\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# Writing the dataset.
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ClipTask:
    dataset: str  # "clotho" or "audioset".
    split: str  # The dataset's own split name.
    index: int
    path: str
    seed: int
    max_events: int


@dataclasses.dataclass(frozen=True)
class _ClipResult:
    spec: ClipSpec
    captions: tuple[str, ...]  # In a per-clip random order, as Clotho's annotators are unordered.


def clip_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """The generator of one clip: independent of every other clip and of the number of workers."""
    splits = prepare.CLOTHO_SPLITS if dataset == "clotho" else prepare.AUDIOSET_SMALL_SPLITS
    split_id = splits.index(split)
    return np.random.default_rng([seed, _DATASET_IDS[dataset], split_id, index])


def _generate_clip(task: _ClipTask) -> _ClipResult:
    """Samples, renders and writes one clip (runs in worker processes)."""
    rng = clip_rng(task.seed, task.dataset, task.split, task.index)
    spec = sample_clip(rng, task.max_events)
    audio = render(spec, rng)
    pathlib.Path(task.path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(task.path, audio, SAMPLE_RATE, subtype="PCM_16")
    references = captions(spec)
    return _ClipResult(spec, tuple(references[i] for i in rng.permutation(len(references))))


@dataclasses.dataclass(frozen=True)
class SyntheticSummary:
    """Where `write_synthetic_dataset` put things, ready for the prepare commands."""

    root: pathlib.Path
    clotho_root: pathlib.Path  # `prepare clotho CLOTHO_ROOT`
    audioset_annotations: pathlib.Path  # `prepare audioset-small --audioset-small-path`
    audioset_download: pathlib.Path  # `... --audioset-full-path` (with `--audio-format wav`)
    num_clips: Mapping[str, int]  # "clotho/development" -> 400, "audioset/train" -> 400, ...
    generated: bool  # False when a complete set with the same parameters was already there.


def clotho_file_name(split: str, index: int) -> str:
    return f"synthetic_{split}_{index:05d}.{AUDIO_FORMAT}"


def youtube_id(split: str, index: int) -> str:
    """An 11-character id like YouTube's: "syn" + 2 letters of the split + 6 digits."""
    return f"syn{split[:2]}{index:06d}"


def _parameters(num_clips: Mapping[str, int], seed: int, max_events: int) -> dict:
    return {"version": VERSION, "seed": seed, "max_events": max_events, "num_clips": dict(num_clips)}


def _tasks(root: pathlib.Path, num_clips: Mapping[str, int], seed: int, max_events: int) -> list[_ClipTask]:
    tasks = []
    for split in prepare.CLOTHO_SPLITS:
        folder = root / "clotho" / "audiofolder" / split
        tasks += [
            _ClipTask("clotho", split, i, str(folder / clotho_file_name(split, i)), seed, max_events)
            for i in range(num_clips[f"clotho/{split}"])
        ]
    for split in prepare.AUDIOSET_SMALL_SPLITS:
        folder = root / "audioset" / "audios" / ORIG_SPLIT_OF[split]
        tasks += [
            _ClipTask(
                "audioset", split, i, str(folder / f"{youtube_id(split, i)}.{AUDIO_FORMAT}"), seed, max_events
            )
            for i in range(num_clips[f"audioset/{split}"])
        ]
    return tasks


def _annotation_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The CSV, jsonl and ontology files of a written set."""
    clotho, annotations = root / "clotho", root / "audioset" / "annotations"
    return [
        *(clotho / f"clotho_captions_{split}.csv" for split in prepare.CLOTHO_CAPTIONED_SPLITS),
        *(clotho / f"clotho_metadata_{split}.csv" for split in prepare.CLOTHO_SPLITS),
        *(annotations / f"{split}.jsonl" for split in prepare.AUDIOSET_SMALL_SPLITS),
        annotations / prepare.ONTOLOGY_FILE,
    ]


def _is_complete(root: pathlib.Path, parameters: dict, tasks: Sequence[_ClipTask]) -> bool:
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text(encoding="utf-8"))
    return (
        recorded.get("complete") is True
        and recorded.get("parameters") == parameters
        and all(path.is_file() for path in _annotation_files(root))
        and all(os.path.isfile(task.path) for task in tasks)
    )


def _clear_previous(root: pathlib.Path) -> None:
    """Removes an older synthetic set under `root`; refuses to touch folders this module did not write."""
    owned = [root / "clotho", root / "audioset"]
    if (root / MANIFEST_FILE).is_file():
        for folder in owned:
            shutil.rmtree(folder, ignore_errors=True)
        return
    foreign = [str(folder) for folder in owned if folder.exists() and any(folder.iterdir())]
    if foreign:
        raise ValueError(
            f"{', '.join(foreign)} already exist(s) but {root / MANIFEST_FILE} does not, so they were not "
            "written by audiocap_jax.data.synthetic. Pass an empty or new ROOT, or remove them."
        )


def _map_clips(tasks: Sequence[_ClipTask], workers: int) -> Iterator[_ClipResult]:
    """Generates the clips in task order on `workers` spawned processes (spawn: callers may hold threads)."""
    if workers <= 1:
        yield from map(_generate_clip, tasks)
        return
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        yield from pool.map(_generate_clip, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers))))


def _write_csv(path: pathlib.Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Comma-separated, minimal quoting, CRLF line ends, as the Clotho release."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _audioset_row(split: str, index: int, spec: ClipSpec) -> str:
    """One annotation line in the real files' style: compact JSON with escaped slashes ("\\/s\\/knock")."""
    values = (youtube_id(split, index), 0.0, spec.seconds, label_ids(spec), ORIG_SPLIT_OF[split])
    record = dict(zip(prepare.AUDIOSET_SMALL_KEYS, values, strict=True))
    return json.dumps(record, separators=(",", ":")).replace("/", "\\/")


_ClipsBySplit = dict[tuple[str, str], list[tuple[_ClipTask, _ClipResult]]]  # (dataset, split) -> clips


def _write_clotho_metadata(clotho_root: pathlib.Path, by_split: _ClipsBySplit) -> None:
    """The metadata and caption CSVs of each Clotho split, in the release's columns."""
    for split in prepare.CLOTHO_SPLITS:
        clips = by_split[("clotho", split)]
        _write_csv(
            clotho_root / f"clotho_metadata_{split}.csv",
            CLOTHO_METADATA_COLUMNS,
            [
                (
                    clotho_file_name(split, task.index),
                    ";".join(e.kind for e in result.spec.events),
                    task.index,
                    "",
                    f"[0, {int(round(result.spec.seconds * SAMPLE_RATE))}]",
                    "audiocap_jax.data.synthetic",
                    "http://creativecommons.org/publicdomain/zero/1.0/",
                )
                for task, result in clips
            ],
        )
        if split in prepare.CLOTHO_CAPTIONED_SPLITS:
            _write_csv(
                clotho_root / f"clotho_captions_{split}.csv",
                prepare.CLOTHO_CAPTION_COLUMNS,
                [(clotho_file_name(split, task.index), *result.captions) for task, result in clips],
            )


def _write_audioset_annotations(annotations: pathlib.Path, by_split: _ClipsBySplit) -> None:
    """The `{split}.jsonl` files `prepare audioset-small` reads."""
    for split in prepare.AUDIOSET_SMALL_SPLITS:
        lines = [
            _audioset_row(split, task.index, result.spec) for task, result in by_split[("audioset", split)]
        ]
        (annotations / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_synthetic_dataset(
    root: str | os.PathLike,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_valid: int = DEFAULT_NUM_VALID,
    num_test: int = DEFAULT_NUM_TEST,
    num_clotho_test: int = DEFAULT_NUM_CLOTHO_TEST,
    seed: int = 0,
    max_events: int = MAX_EVENTS,
    workers: int = 1,
) -> SyntheticSummary:
    """Writes the synthetic set in the Clotho v2.1 and AudioSet-small layouts under `root` (see module doc).

    Re-running with the same parameters is a no-op (checked against `root/synthetic.json` and the files);
    different parameters replace the earlier set.

    Args:
      root: output folder, created if needed.
      num_train, num_valid, num_test: clips of Clotho development/validation/evaluation, and as many
        (different) clips of AudioSet-small train/valid/test.
      num_clotho_test: clips of Clotho's audio-only test split.
      seed: every clip is a function of (seed, dataset, split, index).
      max_events: at most this many events per clip (1-3).
      workers: processes generating clips; the files do not depend on it.
    """
    root = pathlib.Path(root)
    _check_max_events(max_events)
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    for name, count in {**counts, "clotho_test": num_clotho_test}.items():
        if count < 1:
            raise ValueError(
                f"num_{name} must be at least 1 (the prepare commands need every split), got {count}."
            )
    num_clips = {f"clotho/{clotho}": counts[audioset] for clotho, audioset in AUDIOSET_SPLIT_OF.items()}
    num_clips["clotho/test"] = num_clotho_test
    num_clips.update({f"audioset/{split}": counts[split] for split in prepare.AUDIOSET_SMALL_SPLITS})
    parameters = _parameters(num_clips, seed, max_events)
    tasks = _tasks(root, num_clips, seed, max_events)
    summary = SyntheticSummary(
        root=root,
        clotho_root=root / "clotho",
        audioset_annotations=root / "audioset" / "annotations",
        audioset_download=root / "audioset",
        num_clips=num_clips,
        generated=not _is_complete(root, parameters, tasks),
    )
    if not summary.generated:
        logging.info("Synthetic set under %s is complete (%s); nothing to do.", root, MANIFEST_FILE)
        return summary

    root.mkdir(parents=True, exist_ok=True)
    _clear_previous(root)
    manifest = root / MANIFEST_FILE
    manifest.write_text(json.dumps({"parameters": parameters, "complete": False}, indent=2), encoding="utf-8")
    summary.audioset_annotations.mkdir(parents=True, exist_ok=True)

    results = list(
        tqdm.tqdm(_map_clips(tasks, workers), total=len(tasks), desc="synthetic clips", unit="clip")
    )
    by_split: _ClipsBySplit = {}
    for task, result in zip(tasks, results, strict=True):
        by_split.setdefault((task.dataset, task.split), []).append((task, result))

    _write_clotho_metadata(summary.clotho_root, by_split)
    _write_audioset_annotations(summary.audioset_annotations, by_split)
    write_ontology(summary.audioset_annotations / prepare.ONTOLOGY_FILE)
    manifest.write_text(json.dumps({"parameters": parameters, "complete": True}, indent=2), encoding="utf-8")
    logging.info("Wrote %d synthetic clips under %s.", len(tasks), root)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the synthetic set and prints the prepare commands that come next; returns the exit status."""
    parser = cli.ArgumentParser(
        prog="python -m audiocap_jax.data.synthetic",
        description="Write the synthetic captioning set in the Clotho and AudioSet-small layouts. "
        "See docs/synthetic.md.",
    )
    parser.add_argument("root", type=pathlib.Path, help="output folder")
    for flag, default, what in (
        ("--num-train", DEFAULT_NUM_TRAIN, "Clotho development and AudioSet train"),
        ("--num-valid", DEFAULT_NUM_VALID, "Clotho validation and AudioSet valid"),
        ("--num-test", DEFAULT_NUM_TEST, "Clotho evaluation and AudioSet test"),
        ("--num-clotho-test", DEFAULT_NUM_CLOTHO_TEST, "Clotho's audio-only test split"),
    ):
        parser.add_argument(flag, type=int, default=default, help=f"clips of {what} (default {default})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-events", type=int, default=MAX_EVENTS, choices=range(1, MAX_EVENTS + 1))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all)")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    try:
        summary = write_synthetic_dataset(
            args.root,
            num_train=args.num_train,
            num_valid=args.num_valid,
            num_test=args.num_test,
            num_clotho_test=args.num_clotho_test,
            seed=args.seed,
            max_events=args.max_events,
            workers=args.workers,
        )
    except (ValueError, FileNotFoundError) as error:
        cli.print_user_error(error, sys.argv if argv is None else argv)
        return cli.EXIT_USER
    state = "written" if summary.generated else "already complete"
    print(
        f"Synthetic set {state} under {summary.root}: "
        + ", ".join(f"{split} {count}" for split, count in summary.num_clips.items())
    )
    print("Next:")
    print(f"  python -m audiocap_jax.data.prepare clotho {summary.clotho_root}")
    print(
        "  python -m audiocap_jax.data.prepare audioset-small "
        f"--audioset-small-path {summary.audioset_annotations} --audioset-full-path {summary.audioset_download} "
        f"--output {summary.audioset_download / 'audiofolder'} --audio-format {AUDIO_FORMAT}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
