"""Resampler: rates, chunking invariance, passband accuracy, stopband, channels."""

from __future__ import annotations

import numpy as np
import pytest

from voxd.resample import Resampler, resample, to_float32, to_mono

RATES = [48000, 44100, 32000, 22050, 11025, 8000, 96000]


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def level_db(x: np.ndarray, ref: float) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) * np.sqrt(2) / ref))


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()])


def chunked(r: Resampler, x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out, i, k = [], 0, 0
    while i < len(x):
        n = int(sizes[k % len(sizes)])
        out.append(r.process(x[i : i + n]))
        i, k = i + n, k + 1
    out.append(r.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", RATES)
def test_any_block_split_gives_identical_output(rate: int) -> None:
    x = np.random.default_rng(rate).standard_normal(rate // 2).astype(np.float32) * 0.3
    whole = resample(x, rate)
    sizes = np.random.default_rng(1).integers(1, 3000, size=64)
    for split in (sizes, np.array([1]), np.array([7, 1, 4096]), np.array([len(x)])):
        assert np.array_equal(chunked(Resampler(rate), x, split), whole)


@pytest.mark.parametrize("rate", [*RATES, 16000])
def test_output_length_and_alignment(rate: int) -> None:
    x = tone(1000, rate, 0.5)
    y = resample(x, rate)
    assert len(y) == -(-len(x) * 16000 // rate)
    # The filter delay is compensated: output sample n is input time n/16000.
    ideal = tone(1000, 16000, len(y) / 16000)[: len(y)]
    mid = slice(800, len(y) - 800)
    assert np.max(np.abs(y[mid] - ideal[mid])) < 1e-3


@pytest.mark.parametrize("rate", RATES)
def test_1khz_tone_keeps_frequency_and_amplitude(rate: int) -> None:
    y = resample(tone(1000, rate, 2.0), rate)[2000:-2000]
    assert peak_hz(y, 16000) == pytest.approx(1000, abs=2)
    assert abs(level_db(y, 0.5)) < 0.05


def test_20khz_at_48khz_is_removed() -> None:
    y = resample(tone(20000, 48000, 2.0), 48000)[2000:-2000]
    assert level_db(y, 0.5) <= -60  # the design gives about -118 dB


@pytest.mark.parametrize(
    ("rate", "freq"), [(48000, 8000), (48000, 12000), (44100, 9000), (96000, 30000)]
)
def test_stopband_above_output_nyquist(rate: int, freq: float) -> None:
    y = resample(tone(freq, rate, 2.0), rate)[2000:-2000]
    assert level_db(y, 0.5) <= -70


def test_passthrough_at_16k_is_exact() -> None:
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    r = Resampler(16000)
    assert np.array_equal(np.concatenate([r.process(x[:123]), r.process(x[123:]), r.flush()]), x)


def test_int16_input_is_scaled() -> None:
    pcm = (tone(1000, 48000) * 32767).astype(np.int16)
    y = resample(pcm, 48000)[2000:-2000]
    assert abs(level_db(y, 0.5)) < 0.05


def test_stereo_pick_channel_or_mix() -> None:
    left, right = tone(1000, 48000, amp=0.5), tone(440, 48000, amp=0.25)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    pick_right = resample(interleaved, 48000, channels=2, channel=1)[2000:-2000]
    assert peak_hz(pick_right, 16000) == pytest.approx(440, abs=2)
    assert abs(level_db(pick_right, 0.25)) < 0.05
    mix = resample(np.stack([left, right], axis=1), 48000, channels=2)
    expected = resample((left + right) / 2, 48000)
    assert np.allclose(mix, expected, atol=1e-6)


def test_channel_helpers() -> None:
    assert to_float32(np.array([-32768, 0, 16384], dtype=np.int16)).tolist() == [-1.0, 0.0, 0.5]
    assert to_float32(np.array([0, 128, 192], dtype=np.uint8)).tolist() == [-1.0, 0.0, 0.5]
    frames = np.array([[0.2, 0.4], [0.6, 0.8]], dtype=np.float32)
    assert to_mono(frames, channel=1).tolist() == pytest.approx([0.4, 0.8])
    assert to_mono(frames.reshape(-1), 2).tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError, match="channel 2 does not exist"):
        to_mono(frames, channel=2)
    with pytest.raises(ValueError, match="whole number"):
        to_mono(np.zeros(5, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="channel 3"):
        Resampler(48000, channels=2, channel=3)
