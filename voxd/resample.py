"""Streaming sample-rate conversion to 16 kHz, plus sample format and channel handling.

Microphones run at whatever rate the hardware likes (48 kHz on most USB
devices, 44.1 kHz on some, 16 kHz on a few); the engine wants 16 kHz mono
float32. :class:`Resampler` converts any rate to any other by a rational
factor ``up / down`` with a polyphase windowed-sinc filter. It keeps its
history between calls so a stream cut into blocks of any size comes out
identical to the same stream converted in one go.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from voxd.events import SAMPLE_RATE

FloatArray = npt.NDArray[np.float32]
Channel = int | Literal["mix"]

# Filter design: the -6 dB cutoff sits at 0.9 of the lower Nyquist frequency
# and the stopband starts at that Nyquist frequency, so anything that would
# alias into the output band is at least STOPBAND_DB down.
CUTOFF_FRACTION = 0.9
STOPBAND_DB = 80.0
# Outputs computed per vectorised step; bounds the (outputs x taps) gather.
_BATCH = 4096


def to_float32(x: npt.NDArray[np.generic]) -> FloatArray:
    """Samples of any common PCM type as float32 in [-1, 1)."""
    if x.dtype == np.float32:
        return x.astype(np.float32, copy=False)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if x.dtype == np.int16:
        return (x.astype(np.float32) * np.float32(1.0 / 32768.0)).astype(np.float32)
    if x.dtype == np.int32:
        return (x.astype(np.float64) * (1.0 / 2147483648.0)).astype(np.float32)
    if x.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return ((x.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0)).astype(np.float32)
    if x.dtype == np.int8:
        return (x.astype(np.float32) * np.float32(1.0 / 128.0)).astype(np.float32)
    raise TypeError(f"unsupported sample type {x.dtype}")


def to_mono(x: npt.NDArray[np.generic], channels: int = 1, channel: Channel = "mix") -> FloatArray:
    """One float32 channel from interleaved 1-D or (frames, channels) input.

    ``channel`` is a channel index, or "mix" for the mean of all channels
    (a mean, not a sum, so a mix can never clip).
    """
    f = to_float32(x)
    if f.ndim == 2:
        channels = f.shape[1]
    elif f.ndim != 1:
        raise ValueError(f"expected 1-D or 2-D samples, got shape {f.shape}")
    if channels == 1:
        return f.reshape(-1)
    if f.ndim == 1:
        if f.size % channels:
            raise ValueError(f"{f.size} samples is not a whole number of {channels}-channel frames")
        f = f.reshape(-1, channels)
    if channel == "mix":
        return np.asarray(f.mean(axis=1, dtype=np.float32), dtype=np.float32)
    if not 0 <= channel < channels:
        raise ValueError(f"channel {channel} does not exist (the input has {channels})")
    return np.ascontiguousarray(f[:, channel])


def design_lowpass(up: int, down: int, in_rate: int, out_rate: int) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc prototype for the rate ``in_rate * up`` (odd length).

    Tap count and window shape follow Kaiser's formulas for STOPBAND_DB of
    attenuation over a transition band from 0.8 to 1.0 of the lower Nyquist
    frequency (centred on the 0.9 cutoff).
    """
    fs = in_rate * up
    nyquist = min(in_rate, out_rate) / 2.0
    cutoff = CUTOFF_FRACTION * nyquist
    transition = 2.0 * (nyquist - cutoff)
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    n = math.ceil((STOPBAND_DB - 7.95) / (2.285 * 2.0 * math.pi * transition / fs)) + 1
    n += 1 - n % 2  # odd: the centre tap falls on a sample, so the delay is whole
    k = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    h = 2.0 * cutoff / fs * np.sinc(2.0 * cutoff / fs * k) * np.kaiser(n, beta)
    # Unity gain at DC after zero-stuffing by `up`.
    return np.asarray(h * (up / h.sum()), dtype=np.float64)


class Resampler:
    """Streaming rational resampler, any rate to ``out_rate`` (16 kHz by default).

    ``process`` takes blocks of any size (int16 or float, mono or interleaved
    ``channels``) and returns the float32 mono output they complete; ``flush``
    ends the stream and returns the rest. Output sample ``n`` is aligned with
    input time ``n / out_rate`` (the filter delay is compensated), and the whole
    output is ``ceil(len_in * out_rate / in_rate)`` samples long.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int = SAMPLE_RATE,
        *,
        channels: int = 1,
        channel: Channel = "mix",
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive (got {in_rate} -> {out_rate})")
        if channels < 1:
            raise ValueError(f"channels must be >= 1 (got {channels})")
        if channel != "mix" and not 0 <= channel < channels:
            raise ValueError(f"channel {channel} does not exist (the input has {channels})")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self.channel: Channel = channel
        g = math.gcd(in_rate, out_rate)
        self.up = out_rate // g
        self.down = in_rate // g
        self.passthrough = self.up == self.down
        h = design_lowpass(self.up, self.down, in_rate, out_rate)
        self.taps = len(h)
        self._delay = (len(h) - 1) // 2  # prototype samples
        self._phase_len = -(-len(h) // self.up)
        padded = np.zeros(self._phase_len * self.up, dtype=np.float64)
        padded[: len(h)] = h
        # _phases[p, j] = h[p + j * up]: the taps that meet input x[m - j]
        # when the output falls on phase p of the upsampled grid.
        self._phases = np.ascontiguousarray(
            padded.reshape(self._phase_len, self.up).T, dtype=np.float32
        )
        self.reset()

    def reset(self) -> None:
        """Forget all history: the next block starts a new stream."""
        # Zeros before the first sample stand in for the silence before the stream.
        self._buf: FloatArray = np.zeros(self._phase_len - 1, dtype=np.float32)
        self._buf_start = -(self._phase_len - 1)  # absolute index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    @property
    def latency_samples(self) -> int:
        """Input samples the converter must look ahead before an output is ready."""
        return 0 if self.passthrough else -(-self._delay // self.up)

    def process(self, x: npt.NDArray[np.generic]) -> FloatArray:
        """Convert one block; returns every output sample it completes."""
        mono = to_mono(x, self.channels, self.channel)
        if self.passthrough:
            self._n_in += len(mono)
            self._n_out += len(mono)
            return mono.copy() if mono is x else mono
        self._buf = np.concatenate([self._buf, mono]) if len(self._buf) else mono.copy()
        self._n_in += len(mono)
        return self._drain(self._ready_outputs(self._n_in))

    def flush(self) -> FloatArray:
        """End the stream: the remaining outputs, as if silence followed. Then reset."""
        if self.passthrough:
            self.reset()
            return np.zeros(0, dtype=np.float32)
        total = -(-self._n_in * self.up // self.down)
        # Enough zeros that the last output's newest input index exists.
        need = (max(total - 1, 0) * self.down + self._delay) // self.up + 1
        pad = max(need - (self._buf_start + len(self._buf)), 0)
        self._buf = np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)])
        out = self._drain(total)
        self.reset()
        return out

    def _ready_outputs(self, n_in: int) -> int:
        """Outputs whose newest input index, (n*down + delay) // up, is below n_in."""
        last = (n_in * self.up - 1 - self._delay) // self.down
        return max(last + 1, 0)

    def _drain(self, n_end: int) -> FloatArray:
        outs = []
        while self._n_out < n_end:
            stop = min(self._n_out + _BATCH, n_end)
            outs.append(self._compute(self._n_out, stop))
            self._n_out = stop
        self._trim()
        if not outs:
            return np.zeros(0, dtype=np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _compute(self, start: int, stop: int) -> FloatArray:
        t = np.arange(start, stop, dtype=np.int64) * self.down + self._delay
        newest = t // self.up - self._buf_start
        phase = t % self.up
        idx = newest[:, None] - np.arange(self._phase_len, dtype=np.int64)[None, :]
        y = np.einsum("ij,ij->i", self._buf[idx], self._phases[phase])
        return np.asarray(y, dtype=np.float32)

    def _trim(self) -> None:
        """Drop input no future output can reach."""
        oldest = (self._n_out * self.down + self._delay) // self.up - (self._phase_len - 1)
        cut = min(oldest - self._buf_start, len(self._buf))
        if cut > 0:
            self._buf = self._buf[cut:]
            self._buf_start += cut


def resample(
    x: npt.NDArray[np.generic],
    in_rate: int,
    out_rate: int = SAMPLE_RATE,
    *,
    channels: int = 1,
    channel: Channel = "mix",
) -> FloatArray:
    """Convert a whole signal in one call (process + flush)."""
    r = Resampler(in_rate, out_rate, channels=channels, channel=channel)
    head = r.process(x)
    tail = r.flush()
    return np.concatenate([head, tail]) if len(tail) else head
