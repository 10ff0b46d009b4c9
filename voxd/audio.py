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
* a stream that delivers much faster than real time (a device that stopped
  pacing itself, an ALSA file PCM past its end returning zeros at CPU
  speed) is not a microphone: it is reported lost and reopened the same way;
* an open that blocks (PortAudio probes every ALSA PCM when it starts, and a
  PCM reading a FIFO without a writer blocks in open()) is abandoned after
  ``open_timeout_s``: the mic is reported lost, the blocked open is left in
  its own thread (at most one at a time) and its stream is taken if it ever
  completes.

ALSA and JACK print their device-probing complaints (about 60 lines at each
PortAudio start on a machine without a sound server) straight to stderr.
voxd installs their error hooks (``snd_lib_error_set_handler``,
``jack_set_error_function``) and sends those messages to this module's log:
at DEBUG while PortAudio starts or terminates (the probe noise), at WARNING
otherwise (opening or running the configured device: they may matter).

PortAudio only enumerates devices when it is initialised, so every reopen
starts a fresh PyAudio instance: a USB microphone plugged back in (or an
ALSA device that appears) is found without restarting the daemon.

PyAudio is imported inside functions, so voxd imports without it.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import math
import os
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
from voxd.events import SAMPLE_RATE
from voxd.resample import Channel, FloatArray, Resampler, resample

log = logging.getLogger(__name__)

MicStatus = Literal["ok", "mic_lost"]
StatusCallback = Callable[[MicStatus], None]

MAX_DEFAULT_CHANNELS = 2  # with channels unset, open at most this many
OPEN_TIMEOUT_S = 10.0  # an open (PortAudio start + stream open) taking longer is abandoned
# A live microphone delivers audio at the pace of its clock. Within each
# window of PACE_WINDOW_S of wall-clock time, a stream may deliver at most
# PACE_EXCESS_S more audio than the time that passed: that tolerates a
# device's buffered backlog arriving at once (ALSA periods after a stall, a
# 64 KiB pipe holds 2 s of 16 kHz mono) and clock drift, and catches anything
# sustained above 1.5x real time within one window; a device running at CPU
# speed (hundreds of times real time) is caught at the first check (0.1 s).
PACE_WINDOW_S = 6.0
PACE_EXCESS_S = 3.0


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
    _library_messages.install()  # PyAudio has loaded libasound (and libjack) by now
    return pyaudio


# -- ALSA and JACK messages ------------------------------------------------------------

# snd_lib_error_handler_t is variadic; the hook declares the fixed arguments
# only and logs the unexpanded format. Reading the named arguments of a
# variadic call is safe on the ABIs voxd runs on (x86-64, AArch64, ARM EABI:
# named arguments are passed the same way in both cases).
_ALSA_HOOK = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
_JACK_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
MAX_LIBRARY_MESSAGES = 256  # distinct messages remembered for warn-once


def _text(b: bytes | None) -> str:
    return b.decode("utf-8", "replace") if b else ""


class _LibraryMessages:
    """Routes ALSA's and JACK's stderr chatter into voxd's log.

    Hooks are installed once per process, only into libraries PyAudio has
    already loaded (RTLD_NOLOAD), and the originals are put back at exit so
    that no message can reach Python after the interpreter is gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installed = False
        self._local = threading.local()
        self._alsa_hook = _ALSA_HOOK(self._on_alsa)  # kept alive for as long as installed
        self._jack_hook = _JACK_HOOK(self._on_jack)
        self.probe_messages = 0  # messages logged at DEBUG as probe noise
        self._seen: set[str] = set()  # messages already warned about

    def install(self) -> None:
        with self._lock:
            if self._installed:
                return
            self._installed = True
            restore = [r for r in (self._hook_alsa(), self._hook_jack()) if r is not None]
        for undo in restore:
            atexit.register(undo)

    def _hook_alsa(self) -> Callable[[], None] | None:
        lib = _loaded("libasound.so.2")
        if lib is None:
            return None
        lib.snd_lib_error_set_handler(self._alsa_hook)
        return lambda: lib.snd_lib_error_set_handler(None)  # None = alsa-lib's default

    def _hook_jack(self) -> Callable[[], None] | None:
        lib = _loaded("libjack.so.0")
        if lib is None:
            return None
        try:  # the current callbacks, to restore at exit (JACK has no "default" to ask for)
            old_error = ctypes.c_void_p.in_dll(lib, "jack_error_callback").value
            old_info = ctypes.c_void_p.in_dll(lib, "jack_info_callback").value
        except ValueError:  # a libjack without them: leave its messages alone
            return None
        lib.jack_set_error_function(self._jack_hook)
        lib.jack_set_info_function(self._jack_hook)

        def undo() -> None:
            lib.jack_set_error_function(ctypes.c_void_p(old_error))
            lib.jack_set_info_function(ctypes.c_void_p(old_info))

        return undo

    @property
    def probing(self) -> bool:
        return bool(getattr(self._local, "probing", False))

    def probe(self) -> _Probe:
        """Context: messages from this thread are PortAudio's device probe (logged at DEBUG)."""
        return _Probe(self._local)

    def _emit(self, source: str, message: str) -> None:
        if self.probing:
            self.probe_messages += 1
            log.debug("%s: %s", source, message)
            return
        # A running stream can repeat one message per period (alsa-lib's file
        # plugin at end of file does): warn once per distinct message.
        key = f"{source}: {message}"
        with self._lock:
            first = key not in self._seen
            if first and len(self._seen) < MAX_LIBRARY_MESSAGES:
                self._seen.add(key)
        if first:
            log.warning("%s (repeats are logged at debug level)", key)
        else:
            log.debug("%s", key)

    def _on_alsa(
        self, file: bytes | None, line: int, func: bytes | None, err: int, fmt: bytes | None
    ) -> None:
        where = f"{_text(file)}:{line} {_text(func)}"
        detail = f" ({os.strerror(-err)})" if err < 0 else ""
        self._emit("ALSA", f"{_text(fmt).strip()}{detail} [{where}]")

    def _on_jack(self, message: bytes | None) -> None:
        self._emit("JACK", _text(message).strip())


class _Probe:
    def __init__(self, local: threading.local) -> None:
        self._local = local

    def __enter__(self) -> None:
        self._local.probing = True

    def __exit__(self, *exc: object) -> None:
        self._local.probing = False


def _loaded(soname: str) -> ctypes.CDLL | None:
    """The library if this process has loaded it already (never loads it)."""
    try:
        return ctypes.CDLL(soname, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
    except OSError:
        return None


_library_messages = _LibraryMessages()


# Pa_Initialize and Pa_Terminate are not thread-safe: two captures (or a
# capture and `voxd devices`) must not run them at once.
_portaudio_lock = threading.Lock()


def _start_portaudio() -> Any:
    """A fresh PyAudio instance (PortAudio enumerates the devices now), probe noise muted.

    PortAudio counts initialisations: it enumerates afresh only when no
    other instance in the process is still alive.
    """
    pyaudio = _import_pyaudio()
    with _portaudio_lock, _library_messages.probe():
        return pyaudio.PyAudio()


def _stop_portaudio(pa: Any) -> None:
    with _portaudio_lock, _library_messages.probe():
        pa.terminate()


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
    pa = _start_portaudio()
    try:
        return _input_devices(pa)
    finally:
        _stop_portaudio(pa)


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
        self.frames = 0  # frames delivered so far (only the callback writes it)
        self.paced = True  # False once the stream was found running faster than real time
        # The pace window: its start (monotonic) and the frame count then.
        self.window_t = self.opened_at
        self.window_frames = 0

    def pace_violation(self, now: float) -> str | None:
        """Why this stream is not a live microphone, judged on its delivery pace; or None."""
        wall = now - self.window_t
        audio = (self.frames - self.window_frames) / self.fmt.rate
        if audio > wall + PACE_EXCESS_S:
            return (
                f"the device delivers audio faster than real time ({audio:.1f} s of audio "
                f"in {wall:.2f} s): it is not a live microphone (a file PCM past its end, "
                "or a device that stopped pacing itself)"
            )
        if wall >= PACE_WINDOW_S:
            self.window_t, self.window_frames = now, self.frames
        return None


class _Opening:
    """One attempt to open a stream, run in its own thread so that a blocking open
    cannot stall the supervisor."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.stream: _Stream | None = None
        self.error = ""
        self.orphan = False  # nobody will take the stream: the opener closes it


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
        open_timeout_s: float = OPEN_TIMEOUT_S,
        pace_check: bool = True,
        out_rate: int = SAMPLE_RATE,
    ) -> None:
        self.settings = settings or AudioSettings()
        self.on_status = on_status
        self.stall_timeout_s = stall_timeout_s
        self.close_timeout_s = close_timeout_s
        self.open_timeout_s = open_timeout_s
        # False accepts sources meant to run faster than real time (an ALSA
        # file PCM replaying a recording at CPU speed, as tests do).
        self.pace_check = pace_check
        self.out_rate = out_rate
        self._gain = float(10.0 ** (self.settings.gain_db / 20.0))
        blocks = math.ceil(self.settings.queue_seconds * 1000.0 / self.settings.block_ms)
        self._queue: queue.Queue[_Block] = queue.Queue(maxsize=max(blocks, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closer: threading.Thread | None = None
        self._opening: _Opening | None = None  # an abandoned open still running
        # Streams found running faster than real time: their queued blocks are
        # dropped unread (a few suffice: each such stream floods the queue and
        # is replaced at the next reopen).
        # A tuple, replaced whole, so the reader never sees it change mid-lookup.
        self._unpaced: tuple[_StreamFormat, ...] = ()
        self._open_lock = threading.Lock()
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
            if fmt in self._unpaced:
                continue  # not live audio: a stream that ran faster than real time
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
            try:
                delay = self._cycle(delay)
            except Exception as e:  # a bug here must not end capture for good
                log.exception("audio capture supervisor failed")
                self._set_lost(f"unexpected error: {e!r}", delay)
            if self._backoff(delay):
                break
            delay = min(delay * 2.0, s.reconnect_max_s)
        self._abandon_opening()
        self._device = None

    def _cycle(self, delay: float) -> float:
        """Open, watch until lost, report, release; the backoff delay to use next."""
        stream, error = self._open_bounded()
        if stream is not None:
            error = self._watch(stream)
            if self._stop.is_set():
                self._release(stream.pa, stream.stream)
                return delay
            if stream.last_data is not None and stream.paced:
                # It worked for a while: back off from scratch.
                delay = self.settings.reconnect_min_s
            self._set_lost(error, delay)  # report first: closing may take a while
            self._release(stream.pa, stream.stream)
        elif not self._stop.is_set():  # (an open cut short by stop() is no loss)
            self._set_lost(error, delay)
        return delay

    def _backoff(self, delay: float) -> bool:
        """Wait ``delay`` before the next attempt, or less if an abandoned open
        completes meanwhile; True when stopped."""
        end = time.monotonic() + delay
        while True:
            opening = self._opening
            if opening is not None and opening.done.is_set():
                return self._stop.is_set()
            left = end - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, 0.1)):
                return True

    def _open_bounded(self) -> tuple[_Stream | None, str]:
        """A running stream, or None and why not; never blocks longer than open_timeout_s."""
        self._attempts += 1
        opening = self._opening
        if opening is not None:
            if not opening.done.is_set():
                age = time.monotonic() - opening.started
                return None, f"an earlier open of the audio input is still blocked ({age:.0f} s)"
            self._opening = None
            if opening.stream is not None:
                log.info("a blocked open of the audio input completed; using its stream")
                return opening.stream, ""
            # It failed: its reason is stale, try afresh.
        if self._closer is not None and self._closer.is_alive():
            return None, "the previous stream is still closing"
        opening = _Opening()
        threading.Thread(
            target=self._run_opening, args=(opening,), name="voxd-capture-open", daemon=True
        ).start()
        deadline = opening.started + self.open_timeout_s
        while not opening.done.wait(0.05):
            if self._stop.is_set() or time.monotonic() >= deadline:
                self._opening = opening  # at most one: no new open while it is blocked
                return None, (
                    f"opening the audio input did not finish within {self.open_timeout_s:.0f} s "
                    "(the device blocks in open); it is left to finish on its own"
                )
        return opening.stream, opening.error

    def _run_opening(self, opening: _Opening) -> None:
        stream, error = self._try_open()
        with self._open_lock:
            opening.stream, opening.error = stream, error
            opening.done.set()
            orphan = opening.orphan
        if orphan and stream is not None:
            log.info("a blocked open of the audio input completed after capture stopped: closed")
            _close_stream(stream.pa, stream.stream)

    def _abandon_opening(self) -> None:
        """At stop: an open still running closes its own stream when it completes."""
        opening, self._opening = self._opening, None
        if opening is None:
            return
        with self._open_lock:
            opening.orphan = True
            taken = opening.done.is_set()
        if taken and opening.stream is not None:
            _close_stream(opening.stream.pa, opening.stream.stream)

    def _try_open(self) -> tuple[_Stream | None, str]:
        """A running stream, or None and why not (may block: runs in the opener thread)."""
        pa = None
        try:
            pa = _start_portaudio()
            return self._open(pa), ""
        except Exception as e:  # PortAudio reports trouble as OSError, ValueError, ...
            self._device = None
            if pa is not None:
                _close_stream(pa, None)
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
        """Channels to open; ValueError naming the setting when the device cannot give them."""
        if self.settings.channels is not None and self.settings.channels > dev.max_input_channels:
            raise ValueError(
                f"audio.channels = {self.settings.channels} but {dev.name!r} has only "
                f"{dev.max_input_channels} input channel(s); set audio.channels to at most "
                f"{dev.max_input_channels}, or leave it unset"
            )
        want = self.settings.channels or min(dev.max_input_channels, MAX_DEFAULT_CHANNELS)
        ch = self.settings.channel
        if ch != "mix" and ch >= want:
            if self.settings.channels is not None or ch >= dev.max_input_channels:
                raise ValueError(
                    f"audio.channel = {ch} but the stream has only {want} channel(s) "
                    f"({dev.name!r} offers {dev.max_input_channels}); set audio.channel "
                    f'to {_channel_range(min(want, dev.max_input_channels))} or "mix"'
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
            s.frames += frames
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
        # Stall and pace are judged from now: an open that was blocked may
        # have completed long after the stream object was made.
        s.opened_at = s.window_t = time.monotonic()
        s.window_frames = s.frames
        while not self._stop.wait(poll):
            last = s.last_data
            lying = s.pace_violation(time.monotonic()) if self.pace_check else None
            if lying is not None:
                s.paced = False
                self._unpaced = (*self._unpaced[-3:], s.fmt)
                return lying
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
            _close_stream(pa, stream)
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


def _channel_range(n: int) -> str:
    return "0" if n <= 1 else f"0..{n - 1}"


def _close_stream(pa: Any, stream: Any) -> None:
    """Close a stream (if any) and its PortAudio instance; errors are only logged."""
    try:
        if stream is not None:
            stream.close()
    except Exception as e:  # closing a dead stream may fail; nothing to do
        log.debug("closing audio stream: %s", e)
    try:
        _stop_portaudio(pa)
    except Exception as e:
        log.debug("terminating PortAudio: %s", e)


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


def read_wav(path: str | Path, *, rate: int = SAMPLE_RATE, channel: Channel = "mix") -> FloatArray:
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
