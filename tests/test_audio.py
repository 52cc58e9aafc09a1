"""Tests for audiocap_jax.audio: decoding, errors on broken files, and log-mel vs WhisperFeatureExtractor."""

import pickle

import librosa
import numpy as np
import pytest
import soundfile
import transformers

from audiocap_jax import audio
from audiocap_jax.testing import audio as test_audio


def test_constants_describe_whisper_30s_window():
    assert (audio.SAMPLE_RATE, audio.N_FFT, audio.HOP_LENGTH) == (16000, 400, 160)
    assert (audio.N_SAMPLES, audio.N_FRAMES) == (480000, 3000)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_librosa_slaney_filters(n_mels):
    filters = audio.mel_filters(n_mels)
    assert filters.shape == (n_mels, 201) and filters.dtype == np.float32
    np.testing.assert_array_equal(filters, librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels))


def test_mel_filters_reject_unknown_size():
    with pytest.raises(ValueError, match=r"n_mels must be one of \(80, 128\).*got 64"):
        audio.mel_filters(64)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Real-looking clips of different lengths: shorter, equal to and longer than 30 s."""
    return [
        test_audio.speech_like(12.0, seed=1),
        test_audio.tone(30.0, frequency=1234.0, amplitude=0.2),
        test_audio.noise(35.0, amplitude=0.05),
        test_audio.silence(5.0),
        test_audio.clipped(20.0, seed=2),
    ]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(clips, n_mels):
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(clips, sampling_rate=16000, return_tensors="np").input_features
    batch = np.stack([audio.pad_or_trim(clip) for clip in clips])
    features = audio.log_mel(batch, n_mels=n_mels)
    assert features.shape == (5, n_mels, 3000) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-4)


def test_log_mel_of_one_clip_is_a_batch_of_one_and_pads_to_30s(clips):
    features = audio.log_mel(clips[0])
    assert features.shape == (1, 80, 3000)
    np.testing.assert_array_equal(features, audio.log_mel(audio.pad_or_trim(clips[0])[None]))


def test_log_mel_literal_values():
    np.testing.assert_allclose(audio.log_mel(test_audio.silence(1.0)), -1.5, atol=1e-6)
    # A 440 Hz sine of amplitude 0.5 peaks in mel bin 11; bin 13 is already at the max - 8 floor.
    middle_frame = audio.log_mel(test_audio.tone(30.0))[0, 9:14, 1500]
    expected = [1.1593912, 1.348738, 1.4382038, 1.2935234, -0.5617962]
    np.testing.assert_allclose(middle_frame, expected, atol=1e-5)


def test_frames_after_the_audio_sit_at_the_floor():
    features = audio.log_mel(test_audio.noise(5.0))[0]
    assert audio.num_valid_frames(5 * 16000) == 500
    floor = features.min()
    assert np.all(features[:, :500] > floor)
    # Frames 500 and 501 still reach back into the audio through the 400-sample window.
    assert np.all(features[:, 502:] == floor)


@pytest.mark.parametrize(
    ("num_samples", "frames"),
    [(0, 0), (1, 1), (160, 1), (161, 2), (80000, 500), (479999, 3000), (600000, 3000)],
)
def test_num_valid_frames(num_samples, frames):
    assert audio.num_valid_frames(num_samples) == frames


def test_num_valid_frames_equals_feature_extractor_attention_mask():
    extractor = transformers.WhisperFeatureExtractor()
    for num_samples in (1, 159, 161, 12345, 480000):
        silence = np.zeros(num_samples, np.float32)
        mask = extractor(silence, sampling_rate=16000, return_attention_mask=True, return_tensors="np")
        assert audio.num_valid_frames(num_samples) == mask.attention_mask.sum()


def test_pad_or_trim():
    batch = np.ones((2, 5), np.float32)
    np.testing.assert_array_equal(audio.pad_or_trim(batch, 3), np.ones((2, 3)))
    np.testing.assert_array_equal(audio.pad_or_trim(batch, 7), [[1, 1, 1, 1, 1, 0, 0]] * 2)
    assert audio.pad_or_trim(batch, 5) is batch


@pytest.mark.parametrize(("extension", "max_error"), [("wav", 1 / 32768), ("flac", 1 / 32768)])
def test_load_lossless_roundtrip(tmp_path, extension, max_error):
    clip = test_audio.speech_like(2.0)
    loaded = audio.load_audio(test_audio.write_audio(tmp_path / f"clip.{extension}", clip))
    assert loaded.shape == (32000,) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, clip, atol=max_error)


@pytest.mark.parametrize("extension", ["ogg", "mp3"])
def test_load_lossy_keeps_length_and_waveform(tmp_path, extension):
    clip = test_audio.speech_like(2.0)
    loaded = audio.load_audio(test_audio.write_audio(tmp_path / f"clip.{extension}", clip))
    assert loaded.shape == (32000,) and loaded.dtype == np.float32
    assert np.corrcoef(loaded, clip)[0, 1] > 0.9


def test_load_downmixes_and_resamples_like_librosa(tmp_path):
    left, right = (
        test_audio.tone(1.0, amplitude=0.5, sr=44100),
        test_audio.tone(1.0, amplitude=0.25, sr=44100),
    )
    stereo = np.stack([left, right])
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo.T, 44100, subtype="FLOAT")
    loaded = audio.load_audio(path)
    assert loaded.shape == (16000,)
    np.testing.assert_allclose(loaded, librosa.load(path, sr=16000, mono=True)[0], atol=1e-6)
    np.testing.assert_allclose(np.abs(loaded[1000:-1000]).max(), 0.375, atol=1e-3)


def _truncated(path):
    data = test_audio.write_audio(path, test_audio.speech_like(2.0)).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _header_only_wav(path):
    soundfile.write(path, np.zeros(0, np.float32), 16000)
    return path


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("truncated.wav", test_audio.write_truncated_wav, "truncated: the header declares 32000 data bytes"),
        ("truncated.mp3", _truncated, "truncated: the header declares 32000 frames"),
        ("truncated.flac", _truncated, "corrupt FLAC data (Error : flac decoder lost sync.)"),
        ("empty.mp3", test_audio.write_zero_length, "the file is empty (0 bytes)"),
        ("page.flac", test_audio.write_not_audio, "not a readable audio file"),
        ("page.m4a", test_audio.write_not_audio, "not a readable audio file"),
        ("nan.wav", test_audio.write_nan_wav, "2 of 16000 samples are NaN or infinite"),
        ("header_only.wav", _header_only_wav, "the file holds no audio samples"),
        ("missing.wav", lambda path: path, "no such file"),
    ],
)
def test_broken_files_raise_audio_decode_error(tmp_path, name, write, reason):
    path = write(tmp_path / name)
    with pytest.raises(audio.AudioDecodeError) as error:
        audio.load_audio(path)
    assert error.value.path == str(path)
    assert error.value.reason.startswith(reason)
    assert name in str(error.value)
    assert isinstance(error.value, ValueError)


def test_audio_decode_error_survives_pickling():
    error = pickle.loads(pickle.dumps(audio.AudioDecodeError("/data/a.wav", "the file is empty (0 bytes)")))
    assert (error.path, error.reason) == ("/data/a.wav", "the file is empty (0 bytes)")
    assert str(error).startswith("Cannot decode audio file '/data/a.wav': the file is empty (0 bytes).")


def test_synthetic_generators_are_deterministic_and_scaled():
    speech = test_audio.speech_like(2.0, seed=3)
    np.testing.assert_array_equal(speech, test_audio.speech_like(2.0, seed=3))
    assert not np.array_equal(speech, test_audio.speech_like(2.0, seed=4))
    assert speech.shape == (32000,) and speech.dtype == np.float32
    np.testing.assert_allclose(np.abs(speech).max(), 0.3, rtol=1e-6)
    clipped = test_audio.clipped(2.0)
    assert np.abs(clipped).max() == 1.0 and np.mean(np.abs(clipped) == 1.0) > 0.1
    assert test_audio.silence(0.5).shape == (8000,) and not test_audio.silence(0.5).any()
