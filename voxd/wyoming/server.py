"""voxd as a Wyoming speech-to-text server for Home Assistant Assist.

Home Assistant's voice pipeline sends each voice command to a local STT
engine over the Wyoming protocol (TCP, port 10300 by convention). One request,
as Home Assistant's Wyoming integration drives it, on one connection::

    client -> transcribe {language}
    client -> audio-start {rate, width, channels}
                                  <- transcript-start
    client -> audio-chunk {rate, width, channels} + PCM     (many)
                                  <- transcript-chunk {text}  (one per delta)
    client -> audio-stop
                                  <- transcript-chunk {text}  (the last deltas)
                                  <- transcript {text}        (the final)
                                  <- transcript-stop

``describe`` is answered with ``info`` (one ASR program, "voxd", with
transcript streaming). ``audio-stop`` is voxd's non-terminal flush
(:meth:`voxd.engine.Stream.flush`): the stream stays open and the
connection serves the next ``transcribe`` as a fresh utterance. A client
ends a request once its own voice activity detection heard enough silence;
the microphone's endpointer, run over the request's audio as it arrives,
finds where the speech ended, and the flush counts the silence after it as
its padding, as the microphone pipeline does with its hangover (``voxd
transcribe --pad-after-speech`` gives the same text for the same audio). A
client may also send ``audio-start`` without ``transcribe`` first (Wyoming
satellites do); ``ping`` gets ``pong``; other events are ignored, as the
protocol asks.

Engine: every connection gets its own stream of the daemon's one loaded
model, beside the microphone pipeline's, and one engine worker thread per
server does the work of all of them together (:class:`EngineWorker`). It owns
a :class:`voxd.engine.StreamGroup` and every connection's stream: streams are
made, reset and closed only there, between group calls, and never used from
another thread. While no request is in progress the worker readies the next
connection's stream ahead (:meth:`voxd.engine.Stream.prepare`: the prompt's
prefill over the left padding, the same for every stream), so a request's
first audio does not wait for it: Home Assistant opens a connection per
request, and on a slow board the prefill is seconds. The connection handlers
on the event loop only convert audio (voxd's resampler, to 16 kHz float32)
and queue it, with their utterance ends (``audio-stop``) and stream
open/reset/close requests. Each round the worker
takes every connection's queued work, at most ``ROUND_SAMPLES`` (480 ms) of
audio per connection so that one client's long request does not hold up the
others, and makes one ``StreamGroup.feed`` call: the decoder passes of all the
connections with positions ready are one read of the weights, and each
connection's tokens are bit for bit what its stream alone would give. The
results (text pieces, the utterance end, or that stream's own error) go back
to each handler on the event loop (``call_soon_threadsafe``), which sends them
as they come while it goes on reading the client. A connection's queue is
bounded by its request: ``max_audio_s`` of audio at most, and the next
request is read only after the last one's final. The microphone pipeline's
stream runs beside the worker on its own thread, which the C engine allows
(native/include/voxd_engine.h: different streams of one model may be used
from different threads at once). On stop the connections are closed first,
then the worker closes every stream and its group, and only then may the
daemon close the engine.

Audio of any rate (8-192 kHz), width (1, 2 or 4 bytes: unsigned 8-bit,
signed 16- and 32-bit little-endian, as in WAV) and channel count (mixed to
mono) goes through voxd's own resampler to 16 kHz mono float32.

Bad input gets a log line naming the client and the cause, an ``error``
event with the reason (``code`` is one of the ERR_* values below), and the
connection is closed; other connections are not touched. Home Assistant
reads until ``transcript`` or the end of the connection, so closing is what
tells it at once that this request failed. The per-request audio limit is
the exception: the first ``max_audio_s`` seconds are transcribed and
answered as usual, the rest of that request's audio is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zeroconf
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from voxd import __version__
from voxd.config import EndpointSettings, EngineSettings, WyomingSettings
from voxd.endpoint import Endpointer
from voxd.engine import (
    Engine,
    EngineError,
    GroupStats,
    Status,
    Stream,
    StreamEvent,
    StreamGroup,
)
from voxd.events import SAMPLE_RATE
from voxd.resample import Resampler
from voxd.wyoming.wire import BoundedReader, WireError
from voxd.wyoming.zeroconf import Advertisement, default_instance_name

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

MIN_RATE = 8000
MAX_RATE = 192000
# The resampler's polyphase filter has 16000 / gcd(rate, 16000) phases; every
# common rate needs at most 640 (11025 Hz). A rate like 44101 Hz would need
# 16000 phases and a filter of millions of taps.
MAX_PHASES = 640
MAX_CHANNELS = 32
_SAMPLE_TYPES: dict[int, str] = {1: "u1", 2: "<i2", 4: "<i4"}

# The languages Voxtral Mini 4B Realtime 2602 was trained on (its model card).
LANGUAGES = ("en", "fr", "es", "de", "ru", "zh", "ja", "it", "pt", "nl", "ar", "hi", "ko")
MODEL_URL = "https://huggingface.co/mistralai/Voxtral-Mini-4B-Realtime-2602"

# After an error event: how long the client may go on sending before the
# connection is closed. Reading that rest (and dropping it) instead of
# closing at once lets the error event arrive: closing a socket with unread
# input makes the kernel reset the connection, which can discard it.
LINGER_S = 2.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

ERR_TOO_MANY_CLIENTS = "too-many-clients"
ERR_BAD_EVENT = "bad-event"
ERR_BAD_AUDIO = "bad-audio"
ERR_NO_AUDIO_START = "no-audio-start"
ERR_IDLE = "idle-timeout"
ERR_ENGINE = "engine-error"


class WyomingStartError(Exception):
    """The server cannot start (the address is in use, or not this machine's)."""


class RequestError(Exception):
    """The client's request cannot be served; ``code`` and the text go back in an error event."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


# -- audio --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PcmFormat:
    rate: int
    width: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels

    def __str__(self) -> str:
        return f"{self.rate} Hz, {self.width * 8}-bit, {self.channels} ch"


def _int_field(data: dict[str, Any], key: str, event_type: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(ERR_BAD_AUDIO, f"{event_type} has no integer {key!r} (got {value!r})")
    return value


def pcm_format(data: dict[str, Any], event_type: str) -> PcmFormat:
    """The format an audio-start/audio-chunk announces, or RequestError saying what is wrong."""
    rate = _int_field(data, "rate", event_type)
    width = _int_field(data, "width", event_type)
    channels = _int_field(data, "channels", event_type)
    if width not in _SAMPLE_TYPES:
        raise RequestError(
            ERR_BAD_AUDIO,
            f"{event_type}: sample width {width} bytes is not supported "
            "(1 = unsigned 8-bit, 2 = signed 16-bit, 4 = signed 32-bit)",
        )
    if not MIN_RATE <= rate <= MAX_RATE or SAMPLE_RATE // math.gcd(rate, SAMPLE_RATE) > MAX_PHASES:
        raise RequestError(
            ERR_BAD_AUDIO,
            f"{event_type}: sample rate {rate} Hz is not supported (use a common rate "
            f"between {MIN_RATE} and {MAX_RATE} Hz: 8000, 11025, 16000, 22050, 44100, 48000, ...)",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise RequestError(
            ERR_BAD_AUDIO, f"{event_type}: {channels} channels (1 to {MAX_CHANNELS} are accepted)"
        )
    return PcmFormat(rate, width, channels)


def text_pieces(events: list[StreamEvent]) -> list[str]:
    """The text of engine events, piece by piece.

    The rule of the microphone pipeline's deltas (``Pipeline._take_tokens``):
    every event with text is one piece, a token's or the leftover character of
    an utterance end; the final is the pieces joined and stripped, exactly as
    :func:`voxd.engine.transcribe` makes it.
    """
    return [e.text for e in events if e.text]


# Audio taken from one connection per round: a client that sent a long request at
# once is fed in slices of this size, so the others' audio goes into the same
# passes instead of waiting for all of it (six decoder positions of 80 ms).
ROUND_SAMPLES = SAMPLE_RATE * 480 // 1000

_OpKind = Literal["open", "audio", "end", "reset", "close"]


@dataclass
class _Op:
    """Work a connection queued for the engine worker, in the order it queued it."""

    kind: _OpKind
    gen: int  # the request it belongs to (AsrSession.gen when queued)
    audio: FloatArray | None = None
    silence: int = 0  # "end": samples of silence after the request's speech


@dataclass
class _Work:
    """What the worker does for one connection in one round."""

    session: AsrSession
    controls: list[_OpKind]
    audio: list[FloatArray]
    flush: bool
    gen: int
    silence: int  # the flush's: samples of silence after the speech


class AsrSession:
    """One connection's requests: its audio converter on the event loop, its stream on the worker.

    The handler calls the public methods on the event loop; they convert audio
    and queue work for the :class:`EngineWorker`, and return at once. The worker
    hands the results back on the loop (``_deliver``): the text pieces of the
    request, its end, or the stream's error. ``ops``, ``stream`` and ``failed``
    belong to the worker (``ops`` under its lock).
    """

    def __init__(
        self,
        worker: EngineWorker,
        name: str,
        loop: asyncio.AbstractEventLoop,
        endpoint: EndpointSettings | None = None,
    ) -> None:
        self.name = name
        self._worker = worker
        self._loop = loop
        # The request's speech as the microphone's endpointer would judge it:
        # the silence after it (the client's own hangover) is the flush's padding.
        self._listener = Endpointer(endpoint or EndpointSettings())
        self._resampler: Resampler | None = None
        self._fmt: PcmFormat | None = None
        self._opened = False
        self.gen = 0  # requests begun or dropped: results of older ones are stale
        self.pieces: list[str] = []  # the request's text pieces so far
        self._unsent: list[str] = []
        self.ended = False  # the worker has flushed the request's end
        self.error: EngineError | None = None
        self._news = False
        self._waiter: asyncio.Future[None] | None = None
        # the worker's
        self.ops: deque[_Op] = deque()
        self.stream: Stream | None = None
        self.failed = False

    @property
    def text(self) -> str:
        """The request's text so far, as its final will read."""
        return "".join(self.pieces).strip()

    def begin(self, fmt: PcmFormat) -> None:
        """A new request: a stream if there is none yet, a converter for its format."""
        if not self._opened:
            self._opened = True
            self._worker.submit(self, _Op("open", self.gen))
        if self._resampler is None or self._fmt != fmt:
            self._resampler = Resampler(fmt.rate, SAMPLE_RATE, channels=fmt.channels)
        else:
            self._resampler.reset()
        self._fmt = fmt
        self._new_request()
        self._listener.reset()

    def feed(self, pcm: bytes) -> None:
        """Convert whole frames of PCM and queue them for the engine."""
        assert self._resampler is not None and self._fmt is not None
        samples: npt.NDArray[Any] = np.frombuffer(pcm, dtype=_SAMPLE_TYPES[self._fmt.width])
        x = self._resampler.process(samples)
        if len(x):
            self._listener.process(x)
            self._worker.submit(self, _Op("audio", self.gen, x))

    def end(self) -> None:
        """End of the request: the converter's tail, then the engine's flush (``ended``).

        The flush counts the silence after the request's last speech as its
        padding, as the microphone's does with its hangover.
        """
        assert self._resampler is not None
        tail = self._resampler.flush()
        if len(tail):
            self._listener.process(tail)
            self._worker.submit(self, _Op("audio", self.gen, tail))
        silence = self._listener.trailing_silence
        log.debug("%s: request ends with %.2f s of silence", self.name, silence / SAMPLE_RATE)
        self._worker.submit(self, _Op("end", self.gen, silence=silence))

    def drop(self) -> None:
        """Forget the request in progress: its queued audio, and what the stream heard of it."""
        if self._resampler is not None:
            self._resampler.reset()
        self._new_request()
        self._worker.submit(self, _Op("reset", self.gen), drop_queued=True)

    def close(self) -> None:
        """Close the stream on the worker, between its calls; returns at once."""
        self._worker.submit(self, _Op("close", self.gen), drop_queued=True)

    def _new_request(self) -> None:
        self.gen += 1
        self.pieces = []
        self._unsent = []
        self.ended = False

    def take(self) -> list[str]:
        """The pieces handed back and not taken yet; raises the stream's error if it failed."""
        if self.error is not None:
            raise self.error
        pieces, self._unsent, self._news = self._unsent, [], False
        return pieces

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the worker has handed back something not taken yet."""
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
            if self._news:
                self._waiter.set_result(None)
        return self._waiter

    def _deliver(self, gen: int, pieces: list[str], ended: bool, error: EngineError | None) -> None:
        """On the event loop: one round's result for this connection."""
        if error is not None:
            self.error = self.error or error  # a stream error ends the connection, any request
        elif gen == self.gen:
            self.pieces += pieces
            self._unsent += pieces
            self.ended = self.ended or ended
        else:
            return  # a dropped request's
        self._news = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def deliver(self, gen: int, pieces: list[str], ended: bool, error: EngineError | None) -> None:
        """From the worker: hand a result to the event loop (gone if the loop is closed)."""
        # RuntimeError: the server's loop has ended, and the connection with it
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, gen, pieces, ended, error)


class EngineWorker:
    """The one thread that does every connection's engine work, in rounds.

    It owns the server's StreamGroup and every connection's Stream (made,
    fed, reset and closed only here, between group calls). Each round takes,
    for every connection with queued work, its stream controls, up to
    ``ROUND_SAMPLES`` of its audio and its utterance end if all the audio
    before it is taken, and runs them as one ``StreamGroup.feed``: the
    decoder passes of all the connections with positions ready are one read
    of the weights.
    """

    def __init__(self, engine: Engine, settings: EngineSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._cond = threading.Condition()
        self._sessions: list[AsrSession] = []  # queued work or an open stream
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: EngineError | None = None
        self._stats: GroupStats | None = None
        # the next connection's stream, its prefill done (worker thread only)
        self._ready_stream: Stream | None = None
        self._ready_failed = False  # making one failed: each open makes its own
        self._in_progress: set[AsrSession] = set()  # opened or fed, not flushed (worker only)

    def start(self) -> None:
        """Start the thread and its StreamGroup; EngineError if the group cannot be made."""
        self._thread = threading.Thread(target=self._run, name="voxd-wyoming-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float) -> bool:
        """Close every stream and the group, after the call in progress; False if not in time."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread.join(timeout)
        return not thread.is_alive()

    def stats(self) -> GroupStats | None:
        """The group's counters after the last round (None before the first)."""
        with self._cond:
            return self._stats

    @property
    def stream_ready(self) -> bool:
        """Whether the next connection's stream is made and prepared."""
        with self._cond:
            return self._ready_stream is not None

    def submit(self, session: AsrSession, op: _Op, *, drop_queued: bool = False) -> None:
        """Queue work for a connection (from the event loop)."""
        with self._cond:
            if drop_queued:  # its audio and utterance end are no longer wanted
                session.ops = deque(o for o in session.ops if o.kind in ("open", "close"))
            if session not in self._sessions:
                self._sessions.append(session)
            session.ops.append(op)
            self._cond.notify()

    def _run(self) -> None:
        try:
            group = self._engine.group()
        except EngineError as err:
            self._start_error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while (work := self._take()) is not None:
                if not work:
                    self._prepare_next()
                    continue
                try:
                    self._round(group, work)
                except Exception:  # a bug: these connections fail, the others go on
                    log.exception("the Wyoming engine worker failed a round")
                    bug = EngineError(
                        "internal error in voxd's Wyoming engine worker", Status.ERR_STATE
                    )
                    for w in work:
                        w.session.failed = True
                        w.session.deliver(w.gen, [], False, bug)
        finally:
            with self._cond:
                sessions, self._sessions = self._sessions, []
            for session in sessions:
                self._close_stream(session)
            if self._ready_stream is not None:
                self._ready_stream.close()
                self._ready_stream = None
            group.close()

    def _take(self) -> list[_Work] | None:
        """Wait for queued work and take this round's; None once stopping, [] when
        idle with the next connection's stream to prepare."""
        with self._cond:
            while not self._stopping and not any(s.ops for s in self._sessions):
                if self._ready_stream is None and not self._ready_failed and not self._in_progress:
                    return []
                self._cond.wait()
            if self._stopping:
                return None
            return [_take_work(s) for s in self._sessions if s.ops]

    def _new_stream(self) -> Stream:
        s = self._settings
        return self._engine.stream(delay_ms=s.delay_ms, interval_ms=s.interval_ms)

    def _prepare_next(self) -> None:
        """Make the next connection's stream and its prefill, between requests."""
        stream: Stream | None = None
        try:
            stream = self._new_stream()
            stream.prepare()
        except EngineError as err:
            if stream is not None:
                stream.close()
            log.warning("cannot ready a stream ahead (%s): each request makes its own", err)
            self._ready_failed = True
            return
        with self._cond:
            self._ready_stream = stream

    def _round(self, group: StreamGroup, work: list[_Work]) -> None:
        audio: dict[Stream, FloatArray] = {}
        flush: set[Stream] = set()
        silence: dict[Stream, int] = {}
        fed: dict[Stream, _Work] = {}
        for w in work:
            for kind in w.controls:
                self._control(w.session, kind, w.gen)
            stream = w.session.stream
            if stream is None or w.session.failed or not (w.audio or w.flush):
                continue
            if w.audio:
                audio[stream] = np.concatenate(w.audio) if len(w.audio) > 1 else w.audio[0]
            if w.flush:
                flush.add(stream)
                silence[stream] = w.silence
            fed[stream] = w
        if not fed:
            return
        for w in fed.values():  # in progress until its flush round
            if w.flush:
                self._in_progress.discard(w.session)
            else:
                self._in_progress.add(w.session)
        try:
            results = group.feed(audio, flush=flush, silence=silence)
        except EngineError as err:  # the call as a whole was refused
            results = dict.fromkeys(fed, err)
        stats = group.stats()
        with self._cond:
            self._stats = stats
        for stream, w in fed.items():
            result = results[stream]
            if isinstance(result, EngineError):
                w.session.failed = True
                w.session.deliver(w.gen, [], False, result)
            else:
                w.session.deliver(w.gen, text_pieces(result), w.flush, None)

    def _control(self, session: AsrSession, kind: _OpKind, gen: int) -> None:
        if kind == "open":  # a request begins: no stream readied until its end
            self._in_progress.add(session)
        elif kind in ("close", "reset"):
            self._in_progress.discard(session)
        if kind == "close":
            self._close_stream(session)
            with self._cond:
                if session in self._sessions and not session.ops:
                    self._sessions.remove(session)
            return
        if session.failed:
            return
        try:
            if kind == "open" and session.stream is None:
                with self._cond:
                    session.stream, self._ready_stream = self._ready_stream, None
                if session.stream is None:
                    session.stream = self._new_stream()
            elif kind == "reset" and session.stream is not None:
                session.stream.reset()
        except EngineError as err:
            session.failed = True
            session.deliver(gen, [], False, err)

    @staticmethod
    def _close_stream(session: AsrSession) -> None:
        stream, session.stream = session.stream, None
        if stream is not None:
            stream.close()


def _take_work(session: AsrSession) -> _Work:
    """A connection's share of one round, taken off its queue (under the worker's lock)."""
    ops = session.ops
    controls: list[_OpKind] = []
    gen = ops[0].gen
    while ops and ops[0].kind in ("open", "reset", "close"):
        op = ops.popleft()
        controls.append(op.kind)
        gen = op.gen
        if op.kind == "close":
            ops.clear()
    audio: list[FloatArray] = []
    taken = 0
    while ops and ops[0].kind == "audio" and taken < ROUND_SAMPLES:
        op = ops[0]
        assert op.audio is not None
        room = ROUND_SAMPLES - taken
        if op.audio.size <= room:
            ops.popleft()
            audio.append(op.audio)
        else:  # the rest waits for the next round
            audio.append(op.audio[:room])
            op.audio = op.audio[room:]
        taken += audio[-1].size
        gen = op.gen
    flush = bool(ops) and ops[0].kind == "end"
    silence = 0
    if flush:
        end = ops.popleft()
        gen, silence = end.gen, end.silence
    return _Work(session, controls, audio, flush, gen, silence)


# -- the protocol -------------------------------------------------------------------------


def asr_info() -> Info:
    """What ``describe`` answers: voxd, one model, its languages, transcript streaming."""
    mistral = Attribution(name="Mistral AI (Voxtral Realtime)", url=MODEL_URL)
    model = AsrModel(
        name="voxtral-mini-4b-realtime-2602",
        attribution=mistral,
        installed=True,
        description="Voxtral Mini 4B Realtime 2602, streaming speech-to-text",
        version="2602",
        languages=list(LANGUAGES),
    )
    program = AsrProgram(
        name="voxd",
        attribution=mistral,
        installed=True,
        description="voxd: local streaming speech-to-text with Voxtral Realtime",
        version=__version__,
        models=[model],
        supports_transcript_streaming=True,
    )
    return Info(asr=[program])


class _Hub:
    """What the connections of one server share."""

    def __init__(
        self,
        settings: WyomingSettings,
        engine: Engine,
        engine_settings: EngineSettings,
        endpoint_settings: EndpointSettings,
    ):
        self.settings = settings
        self.endpoint_settings = endpoint_settings
        self.info_event = asr_info().event()
        self.active: set[WyomingHandler] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.worker = EngineWorker(engine, engine_settings)
        self.connections = 0  # ever, for names

    def new_session(self) -> AsrSession:
        name = f"wyoming-{self.connections}"
        return AsrSession(self.worker, name, asyncio.get_running_loop(), self.endpoint_settings)


_State = Literal["idle", "audio", "over_limit"]


async def _cancel(read: asyncio.Future[Any]) -> None:
    """Cancel a pending read and wait until it let go of the stream (a new read may start)."""
    read.cancel()
    await asyncio.wait({read})


def _error_code(err: WireError | RequestError | EngineError) -> tuple[str, str]:
    """The error event's code and reason for what went wrong with a connection."""
    if isinstance(err, RequestError):
        return err.code, str(err)
    if isinstance(err, EngineError):
        return ERR_ENGINE, f"engine error (status {err.status}): {err}"
    return ERR_BAD_EVENT, str(err)


class WyomingHandler(AsyncEventHandler):
    """One client connection (the wyoming package makes one per accepted socket)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hub: _Hub,
        *,
        admitted: bool,
    ) -> None:
        super().__init__(reader, writer)
        self._hub = hub
        self._admitted = admitted
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._wire = BoundedReader(reader)
        self._session: AsrSession | None = None
        self._state: _State = "idle"
        self._fmt = PcmFormat(SAMPLE_RATE, 2, 1)
        self._frames = 0  # input frames of the request in progress
        self._limit_frames = 0
        self._ignored_frames = 0
        self._requests = 0

    # -- connection -------------------------------------------------------------------

    async def write_event(self, event: Event) -> None:
        """Send an event; a client that takes nothing for the idle timeout is given up."""
        idle = self._hub.settings.idle_timeout_s
        try:
            await asyncio.wait_for(super().write_event(event), timeout=idle)
        except asyncio.TimeoutError:
            raise ConnectionError(
                f"it took nothing voxd sent for {idle:g} s (wyoming.idle_timeout_s)"
            ) from None

    async def run(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._hub.tasks.add(task)
        self._is_running = True
        try:
            if self._admitted:
                log.debug("wyoming client %s connected", self.peer)
                await self._serve()
            else:
                await self._refuse()
        except (ConnectionError, OSError) as err:
            log.info("wyoming client %s went away (%s)", self.peer, err)
        except Exception:  # a bug: this connection ends, the server and the others go on
            log.exception("wyoming client %s: unexpected error; closing the connection", self.peer)
        finally:
            await self.disconnect()
            self.writer.close()
            if task is not None:
                self._hub.tasks.discard(task)

    async def _serve(self) -> None:
        """Read the client's events, and meanwhile send the text the engine worker hands back."""
        loop = asyncio.get_running_loop()
        idle = self._hub.settings.idle_timeout_s
        read: asyncio.Future[Event | None] | None = None
        deadline = 0.0
        try:
            while self._is_running:
                if read is None:
                    read = asyncio.ensure_future(self._wire.read_event())
                    deadline = loop.time() + idle
                waits: set[asyncio.Future[Any]] = {read}
                if self._session is not None:
                    waits.add(self._session.waiter())
                timeout = max(deadline - loop.time(), 0.0)
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                try:
                    await self._send_pieces()
                    if not read.done():
                        if loop.time() < deadline:
                            continue  # woken by the engine's text
                        await _cancel(read)
                        raise RequestError(
                            ERR_IDLE, f"nothing received for {idle:g} s (wyoming.idle_timeout_s)"
                        )
                    event, read = read.result(), None
                    if event is None:
                        return  # the client hung up (disconnect() says if that dropped a request)
                    await self.handle_event(event)
                except (WireError, RequestError, EngineError) as err:
                    if read is not None:  # the error event goes out; the rest is drained
                        await _cancel(read)
                    await self._fail(*_error_code(err))
                    return
        finally:
            if read is not None:
                await _cancel(read)

    async def _refuse(self) -> None:
        limit = self._hub.settings.max_clients
        reason = (
            f"voxd is already serving {limit} Wyoming clients (wyoming.max_clients = {limit}); "
            "try again later"
        )
        log.warning("wyoming client %s refused: %s", self.peer, reason)
        await self._send_error_and_linger(ERR_TOO_MANY_CLIENTS, reason)

    async def _fail(self, code: str, reason: str) -> None:
        during = ""
        if self._state == "audio":
            seconds = self._frames / self._fmt.rate
            during = f" (its request, {seconds:.2f} s of audio so far, is dropped)"
        log.warning("wyoming client %s: %s; closing the connection%s", self.peer, reason, during)
        self._state = "idle"  # said here: disconnect() need not say it again
        await self._send_error_and_linger(code, reason)

    async def _send_error_and_linger(self, code: str, reason: str) -> None:
        try:
            await self.write_event(Error(text=reason, code=code).event())
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self._discard_input(), timeout=LINGER_S)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass  # the client is gone or still sending: close anyway

    async def _discard_input(self) -> None:
        while await self.reader.read(65536):
            pass

    async def disconnect(self) -> None:
        if self._state == "audio":
            log.warning(
                "wyoming client %s: the connection ended in the middle of a request "
                "(%.2f s of audio); the request is dropped",
                self.peer,
                self._frames / self._fmt.rate,
            )
        self._state = "idle"
        self._hub.active.discard(self)
        if self._session is not None:
            self._session.close()  # on the engine worker, after any call still running
            self._session = None

    # -- events -----------------------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self._hub.info_event)
        elif Transcribe.is_type(event.type):
            await self._transcribe(event)
        elif AudioStart.is_type(event.type):
            await self._audio_start(event)
        elif AudioChunk.is_type(event.type):
            await self._audio_chunk(event)
        elif AudioStop.is_type(event.type):
            await self._audio_stop()
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        else:
            log.debug("wyoming client %s: %s event ignored", self.peer, event.type)
        return True

    async def _transcribe(self, event: Event) -> None:
        await self._drop_unfinished("a new transcribe")
        language = Transcribe.from_event(event).language
        # "en", "en-US", "pt_BR": the model knows languages, not regions
        base = language.replace("_", "-").split("-")[0].lower() if isinstance(language, str) else ""
        if base and base not in LANGUAGES:
            log.info(
                "wyoming client %s asks for language %r, which Voxtral Realtime was not "
                "trained on; transcribing anyway",
                self.peer,
                language,
            )

    async def _audio_start(self, event: Event) -> None:
        await self._drop_unfinished("a new audio-start")
        fmt = pcm_format(event.data, "audio-start")
        if self._session is None:
            self._session = self._hub.new_session()
        self._session.begin(fmt)
        self._fmt = fmt
        self._frames = 0
        self._limit_frames = max(int(self._hub.settings.max_audio_s * fmt.rate), 1)
        self._state = "audio"
        self._requests += 1
        log.debug("wyoming client %s: request %d, %s", self.peer, self._requests, fmt)
        await self.write_event(TranscriptStart().event())

    async def _audio_chunk(self, event: Event) -> None:
        if self._state == "over_limit":
            self._ignored_frames += len(event.payload or b"") // self._fmt.frame_bytes
            return
        if self._state != "audio" or self._session is None:
            raise RequestError(ERR_NO_AUDIO_START, "audio-chunk without audio-start")
        fmt = pcm_format(event.data, "audio-chunk")
        if fmt != self._fmt:
            raise RequestError(
                ERR_BAD_AUDIO, f"audio-chunk is {fmt}, but its audio-start said {self._fmt}"
            )
        payload = event.payload or b""
        if len(payload) % fmt.frame_bytes:
            raise RequestError(
                ERR_BAD_AUDIO,
                f"audio-chunk of {len(payload)} bytes is not a whole number of "
                f"{fmt.frame_bytes}-byte frames ({fmt})",
            )
        frames = len(payload) // fmt.frame_bytes
        take = min(frames, self._limit_frames - self._frames)
        self._session.feed(payload[: take * fmt.frame_bytes])  # its text comes back meanwhile
        self._frames += take
        if self._frames >= self._limit_frames:
            log.warning(
                "wyoming client %s: request reached wyoming.max_audio_s = %g s; its final is "
                "the text of those seconds, and the rest of its audio is ignored",
                self.peer,
                self._hub.settings.max_audio_s,
            )
            self._ignored_frames = frames - take
            await self._finish("max_audio_s")
            self._state = "over_limit"

    async def _audio_stop(self) -> None:
        if self._state == "over_limit":
            log.info(
                "wyoming client %s: %.2f s of audio beyond wyoming.max_audio_s were ignored",
                self.peer,
                self._ignored_frames / self._fmt.rate,
            )
            self._state = "idle"
            return
        if self._state != "audio":
            raise RequestError(ERR_NO_AUDIO_START, "audio-stop without audio-start")
        await self._finish("audio-stop")
        self._state = "idle"

    async def _finish(self, reason: str) -> None:
        session = self._session
        assert session is not None
        session.end()
        while not session.ended:
            await session.waiter()
            await self._send_pieces()
        text = session.text
        log.info(
            "wyoming client %s: %r (%.2f s of audio, %s)",
            self.peer,
            text,
            self._frames / self._fmt.rate,
            reason,
        )
        # The request is done: a client that closes once it has its transcript
        # (Home Assistant does) has not left in the middle of one.
        self._state = "idle"
        await self.write_event(Transcript(text=text).event())
        await self.write_event(TranscriptStop().event())

    async def _send_pieces(self) -> None:
        """Send the text pieces the engine handed back (raises its error, if it had one)."""
        if self._session is not None:
            for piece in self._session.take():
                await self.write_event(TranscriptChunk(text=piece).event())

    async def _drop_unfinished(self, why: str) -> None:
        if self._state == "audio" and self._session is not None:
            log.warning(
                "wyoming client %s: %s before audio-stop; the unfinished request is dropped",
                self.peer,
                why,
            )
            self._session.drop()
        self._state = "idle"


# -- the server ---------------------------------------------------------------------------


class WyomingServer:
    """The Wyoming server on its own thread and event loop, beside the daemon's pipeline.

    ``start()`` returns once the socket listens (or raises WyomingStartError);
    ``stop()`` withdraws the zeroconf advertisement, closes every connection
    and returns once every connection's stream is closed, so that the engine
    can be closed after it.
    """

    def __init__(
        self,
        settings: WyomingSettings,
        engine: Engine,
        engine_settings: EngineSettings,
        endpoint_settings: EndpointSettings | None = None,
    ) -> None:
        self.settings = settings
        self._hub = _Hub(settings, engine, engine_settings, endpoint_settings or EndpointSettings())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_async: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: Exception | None = None

    @property
    def clients(self) -> int:
        """Connections being served now (refused ones not counted)."""
        return len(self._hub.active)

    def group_stats(self) -> GroupStats | None:
        """The engine worker's StreamGroup counters after its last round (None before one)."""
        return self._hub.worker.stats()

    def stream_ready(self) -> bool:
        """Whether the next connection's stream is made and its prefill done."""
        return self._hub.worker.stream_ready

    def start(self) -> None:
        try:
            self._hub.worker.start()
        except EngineError as err:
            raise WyomingStartError(
                f"cannot step Wyoming clients' streams together: {err}"
            ) from err
        self._thread = threading.Thread(target=self._run, name="voxd-wyoming", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise WyomingStartError(f"the Wyoming server did not start within {START_TIMEOUT_S} s")
        if self._start_error is not None:
            s = self.settings
            raise WyomingStartError(
                f"cannot listen for Wyoming clients on {s.host}:{s.port}: {self._start_error}; "
                "set wyoming.host / wyoming.port, or wyoming.enabled = false"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        loop, stop_async, thread = self._loop, self._stop_async, self._thread
        self._thread = None
        if thread is not None:
            if loop is not None and stop_async is not None and thread.is_alive():
                # The thread may be closing its loop right now (a failed start):
                # then it is ending by itself, and there is nothing to signal.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop_async.set)
            thread.join(timeout)
            if thread.is_alive():
                log.error("the Wyoming server did not stop within %.0f s", timeout)
        # After the connections: the worker closes every stream, then its group.
        if not self._hub.worker.stop(timeout):
            log.error("the Wyoming engine worker's call did not end within %.0f s", timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as err:  # a bug: the daemon goes on with its microphone pipeline
            if not self._ready.is_set():
                self._start_error = err
            log.exception("the Wyoming server failed")
        finally:
            self._ready.set()
            loop.close()

    def _make_handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> WyomingHandler:
        hub = self._hub
        hub.connections += 1
        admitted = len(hub.active) < self.settings.max_clients
        handler = WyomingHandler(reader, writer, hub, admitted=admitted)
        if admitted:
            hub.active.add(handler)
        return handler

    async def _main(self) -> None:
        s = self.settings
        self._stop_async = asyncio.Event()
        server = AsyncTcpServer(s.host, s.port)
        try:
            await server.start(self._make_handler)
        except OSError as err:
            self._start_error = err
            self._ready.set()
            return
        log.info(
            "Wyoming speech-to-text server listening on %s:%d (at most %d clients)",
            s.host,
            s.port,
            s.max_clients,
        )
        self._ready.set()
        advert = await self._advertise() if s.zeroconf else None
        await self._stop_async.wait()
        if advert is not None:
            await advert.stop()
        await server.stop()  # closes every connection; the handlers then end
        tasks = set(self._hub.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        log.info("Wyoming server stopped")

    async def _advertise(self) -> Advertisement | None:
        s = self.settings
        advert = Advertisement(s.zeroconf_name or default_instance_name(), s.host, s.port)
        try:
            await advert.start()
        except (OSError, zeroconf.Error) as err:
            log.error(
                "zeroconf: cannot advertise the Wyoming server (%s); Home Assistant will not "
                "discover it, add it by host and port instead",
                err,
            )
            await advert.stop()
            return None
        return advert
