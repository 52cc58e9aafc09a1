"""Audio decoding and Whisper log-mel features.

This module is the one source of truth for the mel parameters (sample rate, FFT size, hop, 30 s window).
`load_audio` turns any audio file (a local path or a bucket URL) into 16 kHz mono float32 or raises
`AudioDecodeError`; `log_mel` computes
Whisper's log-mel spectrogram for a whole batch in numpy, equal to `transformers.WhisperFeatureExtractor`
within 1e-4.

Shape legend: B batch, M mel bins, S frames (N_FRAMES = 3000 for 30 s), F frequency bins (N_FFT // 2 + 1 = 201).
"""

import contextlib
import functools
import importlib.resources
import io
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator

import librosa
import numpy as np
import scipy.fft
import soundfile
from etils import epath

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per clip.
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames per clip.
MEL_BINS = (80, 128)  # Whisper v1/v2 use 80 bins, v3 uses 128.

# Resampler for files whose native rate differs from the target: librosa >= 0.10's default. The original
# system ran librosa 0.9.2, whose default was resampy's `kaiser_best` (resampy is not a dependency here).
RESAMPLE_TYPE = "soxr_hq"

# libsndfile logs a WAV/AIFF data chunk that is longer than the file as "data : 32000 (should be 15978)".
_TRUNCATED_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# An MP3's declared length (Xing/LAME header) may differ from the decoded length by encoder delay and
# padding; a larger shortfall means the file was cut.
_MP3_LENGTH_TOLERANCE = 2 * 1152


class AudioDecodeError(ValueError):
    """An audio file that cannot be turned into finite samples: callers catch, count and report it by name."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(
            f"Cannot decode audio file {self.path!r}: {reason}. Re-download or re-encode the file, or remove "
            "it from the dataset (`python -m audiocap_jax.data.prepare find-corrupted FOLDER` lists them all)."
        )

    def __reduce__(self):
        # Rebuild from (path, reason) so the error survives pickling out of a worker process.
        return type(self), (self.path, self.reason)


def load_audio(path: epath.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes an audio file to mono float32 at `sr` Hz.

    `path` is a local path or a URL that `etils.epath` reads (`gs://`, `s3://`, ...: the file layer TFDS
    uses for --manual_dir and --data_dir, backed by fsspec's gcsfs/s3fs, or by tf.io.gfile when TensorFlow
    is installed). The file is read once into memory (one request to a bucket, 0.2-5 MB per clip) and
    decoded from there, so a local file and its copy in a bucket decode to the same samples.

    Formats libsndfile knows (wav, flac, ogg, mp3, aiff, ...) are read with soundfile, which is what
    `librosa.load` tries first as well; anything else goes through librosa's audioread fallback (needs
    ffmpeg or gstreamer, and a real file: a bucket file is copied to a temporary file for it). Channels are
    averaged like `librosa.to_mono`; other rates are resampled with `librosa.resample(res_type=RESAMPLE_TYPE)`.

    Returns:
      `[samples] float32`.

    Raises:
      AudioDecodeError: the file is missing, empty, not audio, truncated, has no samples, or has NaN/inf
        samples. Never returns partial audio silently.
    """
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise AudioDecodeError(path, "no such file") from None
    if not data:
        raise AudioDecodeError(path, "the file is empty (0 bytes)")
    try:
        audio, native_sr = _read_soundfile(path, data)
    except soundfile.LibsndfileError as soundfile_error:
        audio, native_sr = _read_audioread(path, data, soundfile_error)
    if audio.size == 0:
        raise AudioDecodeError(path, "the file holds no audio samples")
    if not np.isfinite(audio).all():
        num_bad = int(np.size(audio) - np.isfinite(audio).sum())
        raise AudioDecodeError(path, f"{num_bad} of {audio.size} samples are NaN or infinite")
    if native_sr != sr:
        audio = librosa.resample(audio, orig_sr=native_sr, target_sr=sr, res_type=RESAMPLE_TYPE)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _read_soundfile(path: epath.Path, data: bytes) -> tuple[np.ndarray, int]:
    """Reads the bytes of `path` with libsndfile, `[samples]` mono and the native rate.

    Raises LibsndfileError only when libsndfile cannot open the format (the caller then tries audioread),
    and AudioDecodeError when a file it did open is corrupt or shorter than its header says: handing such
    a file to another decoder could return part of the audio without complaint.
    """
    with soundfile.SoundFile(io.BytesIO(data)) as sound_file:
        info_log = sound_file.extra_info
        declared_frames = sound_file.frames
        native_sr = sound_file.samplerate
        file_format = sound_file.format
        try:
            audio = sound_file.read(dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as error:
            raise AudioDecodeError(path, f"corrupt {file_format} data ({error})") from error
    truncated = _TRUNCATED_CHUNK.search(info_log)
    if truncated and int(truncated.group(2)) < int(truncated.group(1)):
        raise AudioDecodeError(
            path,
            f"truncated: the header declares {truncated.group(1)} data bytes, the file holds "
            f"{truncated.group(2)}",
        )
    tolerance = _MP3_LENGTH_TOLERANCE if file_format == "MP3" else 0
    if len(audio) < declared_frames - tolerance:
        raise AudioDecodeError(
            path, f"truncated: the header declares {declared_frames} frames, only {len(audio)} decode"
        )
    return audio.mean(axis=1), native_sr


def _read_audioread(
    path: epath.Path, data: bytes, soundfile_error: soundfile.LibsndfileError
) -> tuple[np.ndarray, int]:
    """librosa's audioread path for formats libsndfile lacks (m4a, webm, ...); it decodes files, not bytes.

    A local file is decoded in place; the bytes of a bucket file go to a temporary file with its suffix
    (ffmpeg guesses some formats from it), deleted afterwards.
    """
    try:
        with warnings.catch_warnings(), _local_copy(path, data) as local_path:
            # librosa warns that it is falling back; the failure, if any, is reported below instead.
            warnings.simplefilter("ignore")
            audio, native_sr = librosa.load(local_path, sr=None, mono=True, dtype=np.float32)
    except Exception as audioread_error:  # Any decoder failure means "cannot decode".
        detail = str(audioread_error) or "no backend could decode it (ffmpeg adds formats libsndfile lacks)"
        raise AudioDecodeError(
            path,
            # libsndfile's own message: str(error) would name the in-memory file object instead of the file.
            f"not a readable audio file (soundfile: {soundfile_error.error_string}; audioread: "
            f"{type(audioread_error).__name__}: {detail})",
        ) from audioread_error
    return audio, int(native_sr)


@contextlib.contextmanager
def _local_copy(path: epath.Path, data: bytes) -> Iterator[str]:
    """A local file with `data`: `path` itself when it is local, else a temporary copy."""
    if "://" not in os.fspath(path):
        yield os.fspath(path)
        return
    with tempfile.NamedTemporaryFile(suffix=path.suffix) as copy:
        copy.write(data)
        copy.flush()
        yield copy.name


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pads or cuts the last axis to `length` samples, as Whisper sees exactly 30 s.

    Args:
      audio: `[..., samples]`.

    Returns:
      `[..., length]`, the input itself when it already has that length.
    """
    num_samples = audio.shape[-1]
    if num_samples > length:
        return audio[..., :length]
    if num_samples < length:
        padding = [(0, 0)] * (audio.ndim - 1) + [(0, length - num_samples)]
        return np.pad(audio, padding)
    return audio


def num_valid_frames(num_samples: int) -> int:
    """How many of the N_FRAMES frames start inside real audio (the rest see only zero padding).

    Equals the sum of `WhisperFeatureExtractor(return_attention_mask=True)`'s frame mask.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    return min(math.ceil(num_samples / HOP_LENGTH), N_FRAMES)


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's Slaney mel filterbank from the packaged `assets/mel_filters.npz`.

    Returns:
      `[n_mels, F] float32`, read-only (it is cached and shared).
    """
    if n_mels not in MEL_BINS:
        raise ValueError(f"n_mels must be one of {MEL_BINS} (Whisper's filterbanks), got {n_mels}.")
    asset = importlib.resources.files("audiocap_jax") / "assets" / "mel_filters.npz"
    with asset.open("rb") as f, np.load(f) as filters:
        mel = np.asarray(filters[f"mel_{n_mels}"], dtype=np.float32)
    mel.setflags(write=False)
    return mel


@functools.cache
def _hann_window() -> np.ndarray:
    """Periodic Hann window of N_FFT samples (`torch.hann_window`), `[N_FFT] float32`."""
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    window.setflags(write=False)
    return window


def log_mel(audio: np.ndarray, n_mels: int = 80, *, workers: int = -1) -> np.ndarray:
    """Whisper log-mel spectrogram of a batch of 16 kHz clips, padded or trimmed to 30 s.

    STFT with a periodic Hann window, reflect padding (center=True) and the last frame dropped; power
    spectrum; mel filterbank; log10 clamped at 1e-10; floor at each clip's max - 8; (x + 4) / 4.

    Each clip's 3000 frames go through one rfft over a strided frame view and one float32 matmul with the
    filters. Clips are taken one at a time because a clip's temporaries (~10 MB) stay in cache: on 2 EPYC
    cores that was 1.5-2x faster than one rfft over a whole batch of 8.

    Args:
      audio: `[B, samples]` or `[samples]` float, 16 kHz mono.
      n_mels: 80 or 128.
      workers: FFT threads (`scipy.fft` convention, -1 = all cores); pass 1 inside a process pool.

    Returns:
      `[B, n_mels, N_FRAMES] float32` (B = 1 for a single clip).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"audio must be [B, samples] or [samples], got shape {audio.shape}.")
    filters = mel_filters(n_mels)
    window = _hann_window()
    padded = np.pad(pad_or_trim(audio), [(0, 0), (N_FFT // 2, N_FFT // 2)], mode="reflect")
    # Frame t covers padded[t*HOP : t*HOP+N_FFT]; a strided view, no copy. --> [B, S, N_FFT]
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[:, ::HOP_LENGTH][:, :N_FRAMES]
    mel = np.empty((len(audio), N_FRAMES, n_mels), np.float32)
    for clip_frames, clip_mel in zip(frames, mel, strict=True):
        spectrum = scipy.fft.rfft(clip_frames * window, axis=-1, workers=workers)  # --> [S, F] complex64
        np.matmul(np.square(np.abs(spectrum)), filters.T, out=clip_mel)  # --> [S, M]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - 8.0)
    return np.ascontiguousarray(((log_spec + 4.0) / 4.0).transpose(0, 2, 1))  # --> [B, M, S]


# What a clip longer than the model's window becomes (the `long_audio` key): its first window, or every window.
LONG_AUDIO_MODES = ("truncate", "windows")


def windows(clip: np.ndarray, long_audio: str, window: int) -> list[tuple[float, np.ndarray]]:
    """(start seconds, samples) pieces of one clip that each fit the model's window of `window` samples:
    the first window only (`long_audio="truncate"`), or every consecutive one (`"windows"`)."""
    if long_audio == "truncate" or len(clip) <= window:
        return [(0.0, clip[:window])]
    return [(start / SAMPLE_RATE, clip[start : start + window]) for start in range(0, len(clip), window)]


def window_mels(
    path: epath.PathLike, n_mels: int, num_frames: int, long_audio: str, fft_workers: int = 1
) -> list[tuple[float, float, np.ndarray]] | AudioDecodeError:
    """Decode one file and compute the log-mel of each of its windows (`windows`): what predict's input
    workers run, one file per call.

    A window's log-mel is that of its samples padded to 30 s, cropped to the model's `num_frames`, as the
    TFDS builds store clips and the training pipeline crops them.

    Returns:
      `[(start seconds, seconds of audio, [M, num_frames] float32)]`, or the AudioDecodeError (returned, not
      raised, so a worker process hands it back with the file's name and reason).
    """
    try:
        clip = load_audio(path)
    except AudioDecodeError as error:
        return error
    pieces = windows(clip, long_audio, num_frames * HOP_LENGTH)
    mels = log_mel(np.stack([pad_or_trim(samples) for _, samples in pieces]), n_mels, workers=fft_workers)
    return [
        (start, len(samples) / SAMPLE_RATE, mel[:, :num_frames])
        for (start, samples), mel in zip(pieces, mels, strict=True)
    ]
