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
may also send ``audio-start`` without ``transcribe`` first (Wyoming
satellites do); ``ping`` gets ``pong``; other events are ignored, as the
protocol asks.

Engine: every connection gets its own stream of the daemon's one loaded
model, beside the microphone pipeline's. The C engine allows that
(native/include/voxd_engine.h: different streams of one model may be used
from different threads at once; the thread pool's ``run_lock`` takes the
matrix jobs of concurrent callers in turn, the Q8/Q4 activation buffer has
its own mutex, native/tests/test_threadpool.c runs two callers on one pool),
so there is no lock here. What must never happen is one stream used from two
threads, or engine work on the event loop: each connection has one worker
thread of its own, every engine and resampling call of that connection runs
there, in order, and the stream is closed there too, after the last call.

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
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

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
from voxd.config import EngineSettings, WyomingSettings
from voxd.engine import Engine, EngineError, Stream, StreamEvent
from voxd.events import SAMPLE_RATE
from voxd.resample import Resampler
from voxd.wyoming.wire import BoundedReader, WireError
from voxd.wyoming.zeroconf import Advertisement, default_instance_name

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class AsrSession:
    """One connection's engine stream and audio converter, on its own worker thread.

    ``call`` runs a method on that thread; the methods starting with ``w_``
    are only to be run that way.
    """

    def __init__(
        self,
        engine: Engine,
        settings: EngineSettings,
        name: str,
        on_closed: Callable[[AsrSession], None] | None = None,
    ) -> None:
        self._engine = engine
        self._on_closed = on_closed
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"voxd-{name}")
        self._stream: Stream | None = None  # made on the worker, at the first request
        self._resampler: Resampler | None = None
        self._fmt: PcmFormat | None = None
        self.pieces: list[str] = []
        self._closed = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def text(self) -> str:
        """The request's text so far, as its final will read."""
        return "".join(self.pieces).strip()

    def w_begin(self, fmt: PcmFormat) -> None:
        """A new request: a stream if there is none yet, a converter for its format."""
        if self._stream is None:
            s = self._settings
            self._stream = self._engine.stream(delay_ms=s.delay_ms, interval_ms=s.interval_ms)
        if self._resampler is None or self._fmt != fmt:
            self._resampler = Resampler(fmt.rate, SAMPLE_RATE, channels=fmt.channels)
        else:
            self._resampler.reset()
        self._fmt = fmt
        self.pieces = []

    def w_feed(self, pcm: bytes) -> list[str]:
        """Convert and feed whole frames of PCM; the text pieces that came out."""
        assert self._stream is not None and self._resampler is not None and self._fmt is not None
        samples: npt.NDArray[Any] = np.frombuffer(pcm, dtype=_SAMPLE_TYPES[self._fmt.width])
        x = self._resampler.process(samples)
        pieces = text_pieces(self._stream.feed(x)) if len(x) else []
        self.pieces += pieces
        return pieces

    def w_finish(self) -> list[str]:
        """End of the request: the converter's tail, the engine's flush; the last pieces."""
        assert self._stream is not None and self._resampler is not None
        tail = self._resampler.flush()
        events = self._stream.feed(tail) if len(tail) else []
        pieces = text_pieces(events + self._stream.flush())
        self.pieces += pieces
        return pieces

    def w_drop(self) -> None:
        """Forget the request in progress (the stream stays usable)."""
        if self._resampler is not None:
            self._resampler.reset()
        if self._stream is not None:
            self._stream.reset()
        self.pieces = []

    def _w_close(self) -> None:
        stream, self._stream = self._stream, None
        try:
            if stream is not None:
                stream.close()
        finally:
            if self._on_closed is not None:
                self._on_closed(self)

    def close(self) -> None:
        """Close the stream after any call still running; returns at once."""
        if not self._closed:
            self._closed = True
            self._executor.submit(self._w_close)
            self._executor.shutdown(wait=False)

    def join(self, timeout: float) -> bool:
        """Wait (blocking) until the worker has closed the stream; False if it did not in time."""
        done = threading.Event()

        def wait() -> None:
            self._executor.shutdown(wait=True)
            done.set()

        threading.Thread(target=wait, name="voxd-wyoming-join", daemon=True).start()
        return done.wait(timeout)


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

    def __init__(self, settings: WyomingSettings, engine: Engine, engine_settings: EngineSettings):
        self.settings = settings
        self.engine = engine
        self.engine_settings = engine_settings
        self.info_event = asr_info().event()
        self.active: set[WyomingHandler] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        # Sessions whose stream is not closed yet (the workers remove them: hence the lock).
        self._sessions: set[AsrSession] = set()
        self._sessions_lock = threading.Lock()
        self.connections = 0  # ever, for names

    def new_session(self) -> AsrSession:
        name = f"wyoming-{self.connections}"
        session = AsrSession(self.engine, self.engine_settings, name, on_closed=self._closed)
        with self._sessions_lock:
            self._sessions.add(session)
        return session

    def _closed(self, session: AsrSession) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)

    def open_sessions(self) -> list[AsrSession]:
        with self._sessions_lock:
            return list(self._sessions)


_State = Literal["idle", "audio", "over_limit"]


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
        idle = self._hub.settings.idle_timeout_s
        while self._is_running:
            try:
                event = await asyncio.wait_for(self._wire.read_event(), timeout=idle)
            except asyncio.TimeoutError:
                await self._fail(
                    ERR_IDLE, f"nothing received for {idle:g} s (wyoming.idle_timeout_s)"
                )
                return
            except WireError as err:
                await self._fail(ERR_BAD_EVENT, str(err))
                return
            if event is None:
                return  # the client hung up (disconnect() says if that dropped a request)
            try:
                await self.handle_event(event)
            except RequestError as err:
                await self._fail(err.code, str(err))
                return
            except EngineError as err:
                await self._fail(ERR_ENGINE, f"engine error (status {err.status}): {err}")
                return

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
            self._session.close()  # on its worker, after any engine call still running
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
        await self._session.call(self._session.w_begin, fmt)
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
        pieces = await self._session.call(self._session.w_feed, payload[: take * fmt.frame_bytes])
        self._frames += take
        await self._send_pieces(pieces)
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
        pieces = await session.call(session.w_finish)
        await self._send_pieces(pieces)
        text = session.text
        log.info(
            "wyoming client %s: %r (%.2f s of audio, %s)",
            self.peer,
            text,
            self._frames / self._fmt.rate,
            reason,
        )
        await self.write_event(Transcript(text=text).event())
        await self.write_event(TranscriptStop().event())

    async def _send_pieces(self, pieces: list[str]) -> None:
        for piece in pieces:
            await self.write_event(TranscriptChunk(text=piece).event())

    async def _drop_unfinished(self, why: str) -> None:
        if self._state == "audio" and self._session is not None:
            log.warning(
                "wyoming client %s: %s before audio-stop; the unfinished request is dropped",
                self.peer,
                why,
            )
            await self._session.call(self._session.w_drop)
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
        self, settings: WyomingSettings, engine: Engine, engine_settings: EngineSettings
    ) -> None:
        self.settings = settings
        self._hub = _Hub(settings, engine, engine_settings)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_async: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: Exception | None = None

    @property
    def clients(self) -> int:
        """Connections being served now (refused ones not counted)."""
        return len(self._hub.active)

    def start(self) -> None:
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
        if thread is None:
            return
        self._thread = None
        if loop is not None and stop_async is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop_async.set)
        thread.join(timeout)
        if thread.is_alive():
            log.error("the Wyoming server did not stop within %.0f s", timeout)
        for session in self._hub.open_sessions():
            if not session.join(timeout):
                log.error("a Wyoming connection's engine call did not end within %.0f s", timeout)

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
