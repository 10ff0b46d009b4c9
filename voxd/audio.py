"""Microphone capture (PyAudio / PortAudio) and WAV reading, both giving 16 kHz mono float32.

Capture is built to run unattended for months on a Raspberry Pi or Jetson:

* the PortAudio callback only puts the raw bytes in a bounded queue; when
  the reader falls behind, new blocks are dropped and counted (``overruns``)
  instead of blocking the audio thread, and PortAudio's own input-overflow
  flags are counted too (``input_overflows``);
* the reader (``read`` / iteration) converts to 16 kHz mono float32 with
  the configured channel choice and gain, in the caller's thread;
* a supervisor thread watches the stream. A device that is missing, busy,
  fails, or stops delivering for ``stall_timeout_s`` is reported
  (``on_status("mic_lost")``, a log warning) and reopened with exponential
  backoff between ``reconnect_min_s`` and ``reconnect_max_s``; when audio
  flows again ``on_status("ok")`` follows. Nothing here is fatal.

PortAudio only enumerates devices when it is initialised, so every reopen
starts a fresh PyAudio instance: a USB microphone plugged back in (or an
ALSA device that appears) is found without restarting the daemon.

PyAudio is imported inside functions, so voxd imports without it.
"""

from __future__ import annotations

import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from voxd.config import AudioSettings
from voxd.resample import Channel, FloatArray, Resampler, resample

log = logging.getLogger(__name__)

MicStatus = Literal["ok", "mic_lost"]
StatusCallback = Callable[[MicStatus], None]

OUT_RATE = 16000
MAX_DEFAULT_CHANNELS = 2  # with channels unset, open at most this many


# -- devices ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    index: int  # PortAudio device index (valid until PortAudio is re-initialised)
    name: str
    max_input_channels: int
    default_rate: int
    is_default: bool = False


class DeviceNotFoundError(LookupError):
    """No input device matches the configured ``audio.device``."""


def _import_pyaudio() -> Any:
    try:
        import pyaudio  # type: ignore[import-untyped]
    except ImportError as e:
        raise ImportError("audio capture needs PyAudio: pip install pyaudio") from e
    return pyaudio


def _input_devices(pa: Any) -> list[DeviceInfo]:
    try:
        default = int(pa.get_default_input_device_info()["index"])
    except OSError:  # PortAudio has no default input
        default = -1
    devices = []
    for i in range(int(pa.get_device_count())):
        d = pa.get_device_info_by_index(i)
        if int(d["maxInputChannels"]) <= 0:
            continue
        devices.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                max_input_channels=int(d["maxInputChannels"]),
                default_rate=int(round(float(d["defaultSampleRate"]))),
                is_default=i == default,
            )
        )
    return devices


def list_input_devices() -> list[DeviceInfo]:
    """Input devices PortAudio sees now (it is initialised afresh for this)."""
    pa = _import_pyaudio().PyAudio()
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()


def select_device(devices: Sequence[DeviceInfo], spec: str | int | None) -> DeviceInfo:
    """The device ``audio.device`` names: an index, a name (substring, any case) or None.

    None picks PortAudio's default input (else the first input). A name that
    matches a device exactly wins over substring matches; among several
    substring matches the first is taken.
    """
    if not devices:
        raise DeviceNotFoundError("no audio input devices found")
    if spec is None:
        return next((d for d in devices if d.is_default), devices[0])
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, int):
        for d in devices:
            if d.index == spec:
                return d
        raise DeviceNotFoundError(f"no input device with index {spec}; {_describe(devices)}")
    want = spec.casefold()
    exact = [d for d in devices if d.name.casefold() == want]
    matches = exact or [d for d in devices if want in d.name.casefold()]
    if not matches:
        raise DeviceNotFoundError(f"no input device matches {spec!r}; {_describe(devices)}")
    if len(matches) > 1:
        others = ", ".join(repr(d.name) for d in matches[1:])
        log.info(
            "audio device %r matches several devices; using %r (also: %s)",
            spec,
            matches[0].name,
            others,
        )
    return matches[0]


def _describe(devices: Sequence[DeviceInfo]) -> str:
    return "inputs are: " + ", ".join(f"{d.index}: {d.name!r}" for d in devices)


# -- capture ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _StreamFormat:
    """What the bytes of one opened stream are (identity marks the stream)."""

    rate: int
    channels: int
    device: DeviceInfo


_Block = tuple[_StreamFormat, bytes]


class _Stream:
    """One PortAudio stream: its PyAudio instance, format and liveness."""

    def __init__(self, pa: Any, fmt: _StreamFormat) -> None:
        self.pa = pa
        self.fmt = fmt
        self.stream: Any = None
        self.opened_at = time.monotonic()
        self.last_data: float | None = None  # monotonic time of the latest callback


class Capture:
    """Microphone audio as 16 kHz mono float32 blocks, surviving device loss.

    Usage::

        with Capture(settings.audio, on_status=publish_state) as cap:
            for block in cap:
                events = endpointer.process(block)

    ``read(timeout)`` returns the next block, or None on timeout or after
    ``stop()``. Blocks are about ``block_ms`` long (resampling may make
    them a sample longer or shorter).
    """

    def __init__(
        self,
        settings: AudioSettings | None = None,
        *,
        on_status: StatusCallback | None = None,
        stall_timeout_s: float = 2.0,
        close_timeout_s: float = 2.0,
        out_rate: int = OUT_RATE,
    ) -> None:
        self.settings = settings or AudioSettings()
        self.on_status = on_status
        self.stall_timeout_s = stall_timeout_s
        self.close_timeout_s = close_timeout_s
        self.out_rate = out_rate
        self._gain = float(10.0 ** (self.settings.gain_db / 20.0))
        blocks = math.ceil(self.settings.queue_seconds * 1000.0 / self.settings.block_ms)
        self._queue: queue.Queue[_Block] = queue.Queue(maxsize=max(blocks, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closer: threading.Thread | None = None
        self._status: MicStatus | None = None
        self._overruns = 0
        self._input_overflows = 0
        self._reconnects = 0
        self._attempts = 0
        self._device: DeviceInfo | None = None
        self._conv_fmt: _StreamFormat | None = None
        self._resampler: Resampler | None = None

    # -- public state ---------------------------------------------------------

    @property
    def status(self) -> MicStatus | None:
        """'ok' while audio flows, 'mic_lost' while it does not, None before the first open."""
        return self._status

    @property
    def overruns(self) -> int:
        """Blocks dropped because the queue was full (the reader fell behind)."""
        return self._overruns

    @property
    def input_overflows(self) -> int:
        """Callbacks PortAudio flagged with an input overflow (lost samples upstream)."""
        return self._input_overflows

    @property
    def reconnects(self) -> int:
        """Times the stream was reopened successfully after being lost."""
        return self._reconnects

    @property
    def attempts(self) -> int:
        """Attempts to open a stream (successful or not)."""
        return self._attempts

    @property
    def device(self) -> DeviceInfo | None:
        """The device of the stream open now (None while lost)."""
        return self._device

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start capturing in the background. Returns at once; never raises for device trouble."""
        if self._thread is not None:
            raise RuntimeError("Capture already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="voxd-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the stream and end the supervisor; read() returns None from now on."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("audio capture thread did not finish within %.1fs", timeout)

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- reading --------------------------------------------------------------------

    def read(self, timeout: float | None = None) -> FloatArray | None:
        """The next block of 16 kHz mono float32, or None on timeout or once stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                fmt, data = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            out = self._convert(fmt, data)
            if len(out):
                return out
        return None

    def __iter__(self) -> Iterator[FloatArray]:
        """Blocks until ``stop()``; waits through device loss."""
        while not self._stop.is_set():
            block = self.read(timeout=0.5)
            if block is not None:
                yield block

    def _convert(self, fmt: _StreamFormat, data: bytes) -> FloatArray:
        if fmt is not self._conv_fmt:  # a new stream: fresh resampler state
            self._conv_fmt = fmt
            self._resampler = Resampler(
                fmt.rate, self.out_rate, channels=fmt.channels, channel=self.settings.channel
            )
        assert self._resampler is not None
        y = self._resampler.process(np.frombuffer(data, dtype="<i2"))
        if self._gain != 1.0:
            y = np.clip(y * np.float32(self._gain), -1.0, 1.0).astype(np.float32)
        return y

    # -- supervisor -------------------------------------------------------------------

    def _supervise(self) -> None:
        s = self.settings
        delay = s.reconnect_min_s
        while not self._stop.is_set():
            stream, error = self._try_open()
            if stream is not None:
                error = self._watch(stream)
                if self._stop.is_set():
                    self._release(stream.pa, stream.stream)
                    break
                if stream.last_data is not None:
                    delay = s.reconnect_min_s  # it worked for a while: back off from scratch
                self._set_lost(error, delay)  # report first: closing may take a while
                self._release(stream.pa, stream.stream)
            else:
                self._set_lost(error, delay)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2.0, s.reconnect_max_s)
        self._device = None

    def _try_open(self) -> tuple[_Stream | None, str]:
        """A running stream, or None and why not."""
        self._attempts += 1
        if self._closer is not None and self._closer.is_alive():
            return None, "the previous stream is still closing"
        pa = None
        try:
            pa = _import_pyaudio().PyAudio()
            return self._open(pa), ""
        except Exception as e:  # PortAudio reports trouble as OSError, ValueError, ...
            if pa is not None:
                self._release(pa, None)
            return None, f"cannot open audio input: {e}"

    def _open(self, pa: Any) -> _Stream:
        pyaudio = _import_pyaudio()
        dev = select_device(_input_devices(pa), self.settings.device)
        channels = self._channels_for(dev)
        rate = self._rate_for(pa, dev, channels)
        s = _Stream(pa, _StreamFormat(rate, channels, dev))
        frames = max(rate * self.settings.block_ms // 1000, 1)
        self._device = dev  # before the first callback can deliver; cleared on failure
        s.stream = pa.open(
            format=pyaudio.paInt16,
            channels=channels,
            rate=rate,
            input=True,
            input_device_index=dev.index,
            frames_per_buffer=frames,
            stream_callback=self._make_callback(s, int(pyaudio.paInputOverflow)),
            start=True,
        )
        log.info(
            "audio input open: %r (index %d) at %d Hz, %d channel(s), %d-frame blocks",
            dev.name,
            dev.index,
            rate,
            channels,
            frames,
        )
        return s

    def _channels_for(self, dev: DeviceInfo) -> int:
        want = self.settings.channels or min(dev.max_input_channels, MAX_DEFAULT_CHANNELS)
        ch = self.settings.channel
        if ch != "mix" and ch >= want:
            if self.settings.channels is not None or ch >= dev.max_input_channels:
                raise ValueError(
                    f"audio.channel = {ch} but the stream has only {want} channel(s) "
                    f"({dev.name!r} offers {dev.max_input_channels})"
                )
            want = ch + 1  # open enough channels to reach the one asked for
        return want

    def _rate_for(self, pa: Any, dev: DeviceInfo, channels: int) -> int:
        rate = self.settings.sample_rate
        if rate is None:
            return dev.default_rate
        try:
            pa.is_format_supported(
                rate,
                input_device=dev.index,
                input_channels=channels,
                input_format=_import_pyaudio().paInt16,
            )
        except ValueError as e:
            # Any rate works for us (we resample), so prefer a working stream
            # over insisting on the configured rate.
            log.warning(
                "audio device %r rejects %d Hz (%s); using its default %d Hz",
                dev.name,
                rate,
                e,
                dev.default_rate,
            )
            return dev.default_rate
        return rate

    def _make_callback(
        self, s: _Stream, overflow_flag: int
    ) -> Callable[[bytes | None, int, Any, int], tuple[None, int]]:
        put = self._queue.put_nowait
        full = queue.Full
        fmt = s.fmt

        def callback(data: bytes | None, frames: int, times: Any, flags: int) -> tuple[None, int]:
            # PortAudio's thread: never wait, never log; just hand the bytes over.
            s.last_data = time.monotonic()
            if flags & overflow_flag:
                self._input_overflows += 1
            if data:
                try:
                    put((fmt, data))
                except full:
                    self._overruns += 1
            return None, 0  # paContinue

        return callback

    def _watch(self, s: _Stream) -> str:
        """Wait while the stream is healthy; returns why it is not."""
        poll = min(0.1, self.stall_timeout_s / 4.0)
        while not self._stop.wait(poll):
            last = s.last_data
            if last is not None and self._status != "ok":
                if self._status == "mic_lost":
                    self._reconnects += 1
                log.info("audio input %r delivering", s.fmt.device.name)
                self._set_status("ok")
            try:
                active = bool(s.stream.is_active())
            except Exception as e:  # PortAudio error on a dead stream
                return f"stream error: {e}"
            if not active:
                return "the stream stopped (device error or unplugged)"
            quiet = time.monotonic() - (last if last is not None else s.opened_at)
            if quiet > self.stall_timeout_s:
                return f"no audio for {quiet:.1f}s"
        return "stopped"

    def _release(self, pa: Any, stream: Any) -> None:
        """Close the stream and PortAudio, waiting at most close_timeout_s.

        A wedged device can block Pa_CloseStream indefinitely; the close then
        finishes in its own thread and no new stream is opened until it has.
        """
        self._device = None
        done = threading.Event()

        def close() -> None:
            try:
                if stream is not None:
                    stream.close()
            except Exception as e:  # closing a dead stream may fail; nothing to do
                log.debug("closing audio stream: %s", e)
            try:
                pa.terminate()
            except Exception as e:
                log.debug("terminating PortAudio: %s", e)
            done.set()

        t = threading.Thread(target=close, name="voxd-capture-close", daemon=True)
        t.start()
        self._closer = t
        if not done.wait(self.close_timeout_s):
            log.warning(
                "audio stream did not close within %.1fs; will reopen once it has",
                self.close_timeout_s,
            )

    def _set_lost(self, reason: str, retry_in: float) -> None:
        if self._status != "mic_lost":
            log.warning("microphone lost: %s; retrying in %.2gs", reason, retry_in)
            self._set_status("mic_lost")
        else:
            log.info(
                "microphone still unavailable (attempt %d): %s; retrying in %.2gs",
                self._attempts,
                reason,
                retry_in,
            )

    def _set_status(self, status: MicStatus) -> None:
        self._status = status
        if self.on_status is None:
            return
        try:
            self.on_status(status)
        except Exception:  # a broken listener must not stop capture
            log.exception("audio status callback failed for %r", status)


# -- WAV files --------------------------------------------------------------------------

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    bits: int
    is_float: bool


def _chunks(data: bytes, name: str) -> dict[bytes, bytes]:
    """The RIFF chunks of a WAVE file, first occurrence of each id."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{name}: not a WAV file (no RIFF/WAVE header)")
    found: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]  # a streamed WAV may claim more than exists
        found.setdefault(cid, body)
        pos += 8 + size + (size & 1)  # chunks are padded to even length
    return found


def _parse_fmt(body: bytes, name: str) -> WavInfo:
    if len(body) < 16:
        raise ValueError(f"{name}: 'fmt ' chunk is too short ({len(body)} bytes)")
    tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 26:
            raise ValueError(f"{name}: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is too short")
        tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the SubFormat GUID
    if channels < 1 or rate < 1:
        raise ValueError(f"{name}: invalid WAV header ({channels} channels at {rate} Hz)")
    if tag == _PCM and bits not in (8, 16, 24, 32):
        raise ValueError(f"{name}: {bits}-bit integer WAV is not supported (8/16/24/32 are)")
    if tag == _FLOAT and bits not in (32, 64):
        raise ValueError(f"{name}: {bits}-bit float WAV is not supported (32/64 are)")
    if tag not in (_PCM, _FLOAT):
        raise ValueError(f"{name}: WAV encoding {tag:#06x} is not supported (PCM or float only)")
    if align != channels * bits // 8:
        raise ValueError(f"{name}: block align {align} does not fit {channels} x {bits} bits")
    return WavInfo(rate, channels, bits, tag == _FLOAT)


def _decode(raw: bytes, info: WavInfo) -> npt.NDArray[np.float32]:
    """Samples as float32, shape (frames, channels)."""
    width = info.bits // 8
    usable = len(raw) - len(raw) % (width * info.channels)
    b = np.frombuffer(raw[:usable], dtype=np.uint8)
    if info.is_float:
        x = b.view("<f4" if width == 4 else "<f8").astype(np.float32)
    elif width == 1:
        x = (b.astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        t = b.reshape(-1, 3).astype(np.int32)
        v = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    else:
        ints = b.view("<i2" if width == 2 else "<i4")
        x = (ints.astype(np.float64) / float(1 << (info.bits - 1))).astype(np.float32)
    return np.asarray(x, dtype=np.float32).reshape(-1, info.channels)


def read_wav(path: str | Path, *, rate: int = OUT_RATE, channel: Channel = "mix") -> FloatArray:
    """A WAV file as float32 mono at ``rate`` Hz (16 kHz by default).

    Reads 8/16/24/32-bit integer and 32/64-bit float WAV, plain or
    WAVE_FORMAT_EXTENSIBLE, any rate and channel count; channels are mixed
    (mean) unless ``channel`` picks one. Raises ValueError naming the file
    and the problem for anything else.
    """
    p = Path(path)
    chunks = _chunks(p.read_bytes(), str(p))
    if b"fmt " not in chunks:
        raise ValueError(f"{p}: WAV file has no 'fmt ' chunk")
    info = _parse_fmt(chunks[b"fmt "], str(p))
    if b"data" not in chunks:
        raise ValueError(f"{p}: WAV file has no 'data' chunk")
    if channel != "mix" and not 0 <= channel < info.channels:
        raise ValueError(f"{p}: channel {channel} does not exist (the file has {info.channels})")
    frames = _decode(chunks[b"data"], info)
    log.debug(
        "read %s: %d frames, %d Hz, %d ch, %d-bit",
        p,
        len(frames),
        info.rate,
        info.channels,
        info.bits,
    )
    return resample(frames, info.rate, rate, channels=info.channels, channel=channel)
