"""Synthetic test audio made with numpy, and writers of the broken files real datasets contain.

Every generator is deterministic (seeded) and returns `[samples] float32` at `sr` Hz. The writers put
files in exactly the formats a dataset folder holds, so loaders and builders can be tested on them.
"""

import os
import pathlib

import numpy as np
import soundfile

from audiocap_jax.audio import SAMPLE_RATE


def speech_like(seconds: float, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Voiced syllables with a wandering pitch, formants, fricative bursts and pauses.

    Real speech has harmonics under moving formant peaks, a ~4 Hz syllable rhythm and silent gaps; this
    exercises the mel features' dynamic range the way recorded speech does, without shipping a recording.
    """
    rng = np.random.default_rng(seed)
    num_samples = int(round(seconds * sr))
    t = np.arange(num_samples) / sr
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))  # Hz, a speaker's range.
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    # Two formants glide between vowel-like targets once per syllable.
    syllable_rate = 4.0
    syllable = np.floor(t * syllable_rate).astype(int)
    num_syllables = syllable.max() + 1
    formant1 = rng.uniform(300, 800, num_syllables)[syllable]
    formant2 = rng.uniform(900, 2500, num_syllables)[syllable]
    voiced = np.zeros(num_samples)
    for harmonic in range(1, 30):
        frequency = harmonic * pitch
        gain = np.exp(-(((frequency - formant1) / 150) ** 2))
        gain += 0.5 * np.exp(-(((frequency - formant2) / 250) ** 2))
        voiced += np.where(frequency < sr / 2, gain / harmonic**0.5, 0.0) * np.sin(harmonic * phase)
    envelope = np.sin(np.pi * (t * syllable_rate % 1.0)) ** 2
    pauses = rng.random(num_syllables)[syllable] < 0.2  # About one syllable in five is silent.
    fricatives = rng.random(num_syllables)[syllable] < 0.25
    hiss = np.diff(rng.standard_normal(num_samples + 1))  # High-passed noise, like "s" and "f".
    signal = np.where(fricatives, 0.3 * hiss, voiced) * envelope * ~pauses
    return (0.3 * signal / max(np.abs(signal).max(), 1e-9)).astype(np.float32)


def tone(
    seconds: float, frequency: float = 440.0, amplitude: float = 0.5, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """A pure sine: the narrowest spectrum, so window and filter mistakes show up at once."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def noise(seconds: float, amplitude: float = 0.1, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """White Gaussian noise with standard deviation `amplitude`: energy in every mel bin."""
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(round(seconds * sr)))).astype(np.float32)


def silence(seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Digital zeros: every mel energy hits the 1e-10 clamp."""
    return np.zeros(int(round(seconds * sr)), np.float32)


def clipped(seconds: float, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like audio overdriven 8x and hard-clipped to [-1, 1], as in loud field recordings."""
    return np.clip(8.0 * speech_like(seconds, sr, seed) / 0.3, -1.0, 1.0).astype(np.float32)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE) -> pathlib.Path:
    """Writes audio in the format named by the extension (wav 16-bit, flac, ogg, mp3) with libsndfile."""
    path = pathlib.Path(path)
    subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
    soundfile.write(path, audio, sr, subtype=subtype)
    return path


def write_truncated_wav(path: str | os.PathLike, seconds: float = 1.0, sr: int = SAMPLE_RATE) -> pathlib.Path:
    """A 16-bit wav cut in half after writing: the header still declares the full length."""
    path = write_audio(path, tone(seconds, sr=sr), sr)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_zero_length(path: str | os.PathLike) -> pathlib.Path:
    """An empty (0-byte) file with an audio extension, as left by an interrupted download."""
    path = pathlib.Path(path)
    path.write_bytes(b"")
    return path


def write_not_audio(path: str | os.PathLike) -> pathlib.Path:
    """A text file with an audio extension, e.g. an HTML error page saved by a downloader."""
    path = pathlib.Path(path)
    path.write_text("<html><body>404 Not Found: this video is unavailable</body></html>\n")
    return path


def write_nan_wav(path: str | os.PathLike, seconds: float = 1.0, sr: int = SAMPLE_RATE) -> pathlib.Path:
    """A valid float32 wav whose samples include NaN and +inf."""
    audio = tone(seconds, sr=sr)
    audio[len(audio) // 3] = np.nan
    audio[len(audio) // 2] = np.inf
    path = pathlib.Path(path)
    soundfile.write(path, audio, sr, subtype="FLOAT")
    return path
