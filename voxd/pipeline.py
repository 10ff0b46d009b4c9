"""The pipeline: audio -> endpointer -> engine -> events -> sinks.

Data flows one way, through one thread per blocking stage and bounded
queues between them::

    capture (PortAudio callback -> Capture's bounded queue)
        -> reader thread "voxd-pipeline-reader": [wake-word gate,] endpointer (cheap)
            -> backlog (bounded by the utterance limit)
                -> engine thread "voxd-pipeline": engine stream
                    -> one dispatcher thread per sink "voxd-sink-<name>" (bounded queue)
                        -> sink.handle(event)

The reader drains the capture queue all the time, so a slow engine (a small
board falling behind live speech) never makes capture drop audio: the
utterance audio waits in the backlog instead. With ``[wakeword]`` enabled,
the reader also runs the wake-word detector and passes on only the speech
that starts soon after a detection (see "the wake-word gate" below); the
rest never reaches the backlog. The backlog holds one
utterance of the maximum length (``endpoint.max_utterance_s``) plus a
second, so every sample of an utterance reaches the engine however far
behind it is, up to that. Only if the engine falls further behind (say,
continuous speech longer than the limit while lagging) is the utterance
ended early, where its queued audio stops, with reason "backlog" (logged at
WARNING), and the rest of that speech is not transcribed: an utterance never
has a hole. ``Stats.engine_lag_s`` says how far behind the engine is.

The reader owns the endpointer, the engine thread owns the engine stream:
nothing else touches them, so neither needs a lock. Commands (MQTT, paho's
thread) and microphone status changes (Capture's supervisor thread) only put
a message in the reader's control queue; the reader applies its part between
audio blocks (mute stops the endpointer, reset and mute discard the queued
audio of the speech they drop) and passes the message on through the
backlog, so the engine thread applies it between blocks too, in audio
order: a command applies to the speech it was given during. The stats come
from the reader (they go on while the engine is busy); both threads beat the
watchdog ("capture" and "engine").

A sink that is slow or stuck never blocks either thread: each sink has its
own queue and thread, and when a sink's queue is full the event is dropped
for that sink (and logged). MqttSink.handle itself never blocks, and keeps
finals on disk, so it only loses anything here if its thread is wedged.

Decisions worth knowing:

* Utterance ids are ``<site>-<unix ms at the start>-<counter>``: readable,
  sortable, unique across restarts, the same in the deltas and the final.
* Finals with empty text (the model heard noise, or only control tokens)
  are not published: consumers act on finals, and an empty command is
  noise. The state still goes back to idle, and the log says so.
* ``started_at``/``ended_at`` come from the audio timeline, not from the
  moment the endpointer noticed: each block read from the source anchors
  "end of this block = now", and a moment t in the audio maps to
  ``now - (block end - t)``. The onset (before the start was confirmed) and
  the end of the last voiced frame (before the hangover) are therefore
  dated when they were spoken, however late the engine gets to them: the
  reader dates the audio as it reads it. Re-anchoring on every block means
  dropped blocks, reconnect gaps and device clock drift never accumulate;
  the price is that backlog in the capture queue (normally under one
  block, as the reader only runs the endpointer) makes the times that much
  late. Audio faster than real time (a file) squeezes the timeline, so
  ``ended_at`` is kept no earlier than ``started_at``.
* ``latency_s`` is the wait a speaker has: from the end of speech (the end
  of the last voiced frame, ``ended_at``) to the final being ready, in three
  parts published beside it: ``hangover_s`` (until the end was decided: the
  endpointer's silence hangover; ~0 when a command, a cut, the microphone's
  loss or shutdown ends it; 0 for the model's EOS, decided on the audio it
  had), ``lag_s`` (until the engine had been fed all of the utterance's
  audio) and ``flush_s`` (the engine's flush and the final's assembly). The
  parts are measured on the monotonic clock and add up to ``latency_s``.
* When the model ends an utterance on its own (EOS token) or a ``flush``
  command arrives while speech goes on, the utterance is finished and the
  rest of the speech becomes a new utterance. After ``reset`` or an engine
  error, the rest of that speech is dropped instead.
* ``stop(flush=True)`` transcribes everything already read (it may take
  as long as the engine is behind); ``stop(flush=False)`` drops it.
* When the microphone is lost mid-utterance, what was heard is finished
  with reason "mic_lost" rather than kept waiting for audio that may never
  come.
* An utterance that published deltas and then ends without a published
  final (``reset``, ``mute``, an engine error, stop without flush, or a
  final with no text) gets a closing delta (``end`` = "dropped", a
  ``reason``, seq one past its last delta), so that consumers assembling
  deltas never keep a dangling utterance. A published final closes its
  deltas by itself. See :class:`voxd.events.TranscriptDelta`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from voxd.audio import MicStatus
from voxd.config import Settings
from voxd.endpoint import Audio, Endpointer, EndpointEvent, SpeechEnd, SpeechJudge, SpeechStart
from voxd.engine import Engine, EngineError, Stream, StreamEvent, StreamStats, TokenEvent
from voxd.events import (
    COMMANDS,
    SAMPLE_RATE,
    DropReason,
    EndReason,
    Event,
    PipelineState,
    StateChanged,
    Stats,
    TranscriptDelta,
    TranscriptFinal,
    WakeWordDetected,
)
from voxd.sdnotify import Watchdog
from voxd.sinks import Sink
from voxd.wakeword import Detection, WakeWordDetector

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# The worker waits at most this long for audio, so it applies commands and
# beats the watchdog even in silence or while the microphone is gone.
READ_TIMEOUT_S = 0.25
SINK_QUEUE_MAX = 1000  # events per sink; minutes of deltas at any real speaking rate
WATCHDOG_SOURCES = ("engine", "capture")
# The backlog holds an utterance of the maximum length (endpoint.max_utterance_s)
# plus this much, so the engine can still be busy with the previous block.
BACKLOG_MARGIN_S = 1.0


# -- stage interfaces -------------------------------------------------------------


class AudioSource(Protocol):
    """Where the pipeline's audio comes from: 16 kHz mono float32 blocks.

    :class:`voxd.audio.Capture` is one; the tests feed arrays through another.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout: float | None = None) -> FloatArray | None:
        """The next block, or None when none arrived within ``timeout`` (or stopped)."""
        ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def overruns(self) -> int: ...

    @property
    def reconnects(self) -> int: ...


# -- sink delivery ---------------------------------------------------------------------


class _SinkThread:
    """One sink's queue and dispatcher thread."""

    def __init__(self, sink: Sink, maxsize: int = SINK_QUEUE_MAX) -> None:
        self.sink = sink
        self.name = type(sink).__name__
        self.dropped = 0
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(
            target=self._run, name=f"voxd-sink-{self.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def offer(self, event: Event) -> None:
        """Queue the event; drop it (logged) if this sink is too far behind."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if isinstance(event, TranscriptFinal):
                log.error(
                    "sink %s is stuck (%d events queued): final of utterance %s dropped for it",
                    self.name,
                    self._queue.qsize(),
                    event.utterance_id,
                )
            elif self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "sink %s is falling behind: %d events dropped for it so far",
                    self.name,
                    self.dropped,
                )

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self.sink.handle(event)
            except Exception:  # one bad event or sink must not end delivery
                log.exception("sink %s failed on %s", self.name, type(event).__name__)

    def close(self, timeout: float) -> None:
        """Deliver what is queued, then end the thread (waits at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning(
                "sink %s did not take its remaining events within %.1fs", self.name, timeout
            )
            return
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            log.warning("sink %s did not finish within %.1fs", self.name, timeout)


# -- messages from the reader to the engine thread ----------------------------------------


@dataclass(frozen=True)
class _When:
    """A moment of the audio timeline on both clocks: wall (published) and monotonic (waits)."""

    wall: float
    mono: float


@dataclass(frozen=True)
class _Start:
    """The endpointer confirmed speech (its onset: ``started_at``)."""

    at: _When


@dataclass(frozen=True, eq=False)
class _Chunk:
    """Utterance audio for the engine, in order and without gaps."""

    samples: FloatArray
    start: _When
    end: _When


@dataclass(frozen=True)
class _SpeechEnd:
    """The endpointer ended the speech (or the microphone was lost, or the pipeline stops)."""

    reason: EndReason
    at: _When  # end of the last voiced frame, or of the audio when there is no silence
    decided: float  # monotonic: when the reader saw it
    silence: int = 0  # samples of the utterance's audio after ``at`` (the hangover)


@dataclass(frozen=True)
class _Cut:
    """End the utterance in progress now; the reader sends no more of this speech."""

    reason: EndReason
    decided: float


@dataclass(frozen=True)
class _Command:
    name: str
    decided: float = 0.0  # monotonic: when the reader took the command


@dataclass(frozen=True)
class _Mic:
    status: MicStatus
    decided: float = 0.0


@dataclass(frozen=True)
class _Stop:
    flush: bool
    decided: float


_Message = _Start | _Chunk | _SpeechEnd | _Cut | _Command | _Mic | _Stop
_Control = _Command | _Mic


class _Backlog:
    """The reader's hand-off to the engine thread: messages in order, audio bounded.

    Only the reader puts, only the engine thread gets. Markers (starts, ends,
    commands) always fit; audio fits while the audio waiting for the engine
    (queued, plus the chunk in the engine's hands) stays within ``capacity``
    samples. Nothing here blocks the reader.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[_Message] = deque()
        self._cond = threading.Condition()
        self._queued = 0  # audio samples in _items
        self._in_engine = 0  # samples of the chunk the engine is feeding

    @property
    def waiting(self) -> int:
        """Audio samples read from the source that the engine has not taken in yet."""
        with self._cond:
            return self._queued + self._in_engine

    def room(self) -> int:
        with self._cond:
            return self.capacity - self._queued - self._in_engine

    def put(self, msg: _Message) -> None:
        with self._cond:
            self._items.append(msg)
            if isinstance(msg, _Chunk):
                self._queued += len(msg.samples)
            self._cond.notify()

    def get(self, timeout: float) -> _Message | None:
        """The next message (its audio now counts as in the engine until ``done``)."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            msg = self._items.popleft()
            if isinstance(msg, _Chunk):
                self._queued -= len(msg.samples)
                self._in_engine = len(msg.samples)
            return msg

    def done(self) -> None:
        """The engine is through with the chunk it got."""
        with self._cond:
            self._in_engine = 0

    def drop_trailing_audio(self) -> int:
        """Remove the queued audio of the speech the reader is in (after the last marker)."""
        dropped = 0
        with self._cond:
            while self._items and isinstance(self._items[-1], _Chunk):
                chunk = self._items.pop()
                assert isinstance(chunk, _Chunk)
                dropped += len(chunk.samples)
            self._queued -= dropped
        return dropped

    def clear(self) -> int:
        """Forget every queued message; the audio samples they held."""
        with self._cond:
            dropped = self._queued
            self._items.clear()
            self._queued = 0
        return dropped


class _AudioClock:
    """Maps the endpointer's timeline (seconds since its reset) to the clocks.

    Anchored anew by every block read: see the module doc.
    """

    def __init__(self) -> None:
        self._t = 0.0
        self._wall = time.time()
        self._mono = time.monotonic()

    def anchor(self, t: float) -> None:
        """The audio up to ``t`` has just been read."""
        self._t = t
        self._wall = time.time()
        self._mono = time.monotonic()

    def at(self, t: float) -> _When:
        return _When(self._wall - (self._t - t), self._mono - (self._t - t))


@dataclass
class _Utterance:
    id: str
    started_at: float  # wall clock
    start_stats: StreamStats
    end: _When  # end of the last audio fed (its start while none was)
    samples: int = 0
    seq: int = 0  # next delta's seq
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Wait:
    """Where the wait for a final went, in seconds (monotonic clock)."""

    hangover_s: float  # end of speech -> the end was decided
    lag_s: float  # decided -> the engine had been fed all the utterance's audio
    flush_s: float  # the flush (and turning its tokens into the final)

    @classmethod
    def measure(cls, ended: float, decided: float, caught_up: float, ready: float) -> _Wait:
        # Each moment is kept no earlier than the one before (a squeezed
        # timeline can put the end of speech after the decision), so the
        # parts are never negative and always add up to ready - ended.
        decided = max(decided, ended)
        caught_up = max(caught_up, decided)
        ready = max(ready, caught_up)
        return cls(decided - ended, caught_up - decided, ready - caught_up)

    @property
    def total_s(self) -> float:
        return self.hangover_s + self.lag_s + self.flush_s


def _engine_ms(stats: StreamStats) -> float:
    return stats.mel_ms + stats.encoder_ms + stats.decoder_ms


def backlog_samples(settings: Settings) -> int:
    """Audio the engine may fall behind by: one utterance of the maximum length, plus a margin."""
    return int(round((settings.endpoint.max_utterance_s + BACKLOG_MARGIN_S) * SAMPLE_RATE))


# -- the pipeline -------------------------------------------------------------------------


class Pipeline:
    """Runs the audio -> endpointer -> engine -> sinks chain in background threads.

    ``start()`` starts the sink threads, the engine thread, the reader and the
    source; ``stop(flush=True)`` transcribes what was read (the utterance in
    progress gets reason "shutdown"), delivers what the sinks have queued, and
    stops. ``command(name)`` and ``on_mic_status(status)`` may be called from
    any thread. ``settings`` supplies the endpoint, engine (delay, interval),
    vad (threshold) and mqtt (site, stats_interval_s) sections.
    """

    def __init__(
        self,
        source: AudioSource,
        engine: Engine,
        sinks: Sequence[Sink] = (),
        *,
        settings: Settings,
        judge: SpeechJudge | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        # Loaded first: a model that cannot load is a configuration error (ConfigError).
        self._wake = WakeWordDetector(settings.wakeword) if settings.wakeword.enabled else None
        self._source = source
        self._engine = engine
        self._settings = settings
        self._watchdog = watchdog
        self._site = settings.mqtt.site
        self._stats_interval = settings.mqtt.stats_interval_s
        self._stream: Stream = self._new_stream()
        self._sinks = [_SinkThread(s) for s in sinks]
        self._controls: queue.SimpleQueue[_Control] = queue.SimpleQueue()
        self._backlog = _Backlog(backlog_samples(settings))
        self._stopping = threading.Event()
        self._flush_on_stop = True
        self._reader: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self._started_mono = time.monotonic()
        # Owned by the reader thread once started:
        self._endpointer = Endpointer(
            settings.endpoint, judge=judge, judge_threshold=settings.vad.threshold
        )
        self._clock = _AudioClock()
        self._ep_samples = 0  # samples given to the endpointer since its reset
        self._samples_read = 0
        self._read_muted = False
        self._read_mic_lost = False
        # Why the rest of the speech in progress is not sent to the engine, if it is not.
        self._skip: Literal["reset", "backlog"] | None = None
        self._skipped = 0  # samples of it so far
        # The wake-word gate (reader thread): see _gate_start.
        self._gate_from: float | None = None  # endpointer time of the last detection (armed)
        self._gated = False  # the endpointer's speech in progress is not for the engine
        self._wake_detections = 0
        self._next_stats = 0.0
        self._stats_engine_ms = 0.0
        self._stats_audio_s = 0.0
        # Owned by the engine thread ("voxd-pipeline") once started; the reader
        # only reads the counters, for the stats:
        self._state: PipelineState | None = None
        self._utt: _Utterance | None = None
        self._muted = False
        self._mic_lost = False
        self._in_speech = False  # the endpointer's speech, as far as the engine got
        self._discarding = False  # dropping the rest of the current speech
        self._counter = 0
        self._utterances = 0
        self._fed_audio_s = 0.0  # audio fed to the engine, all streams
        self._engine_ms_total = 0.0  # engine time, all streams
        self._stream_ms = 0.0  # engine time of the current stream at the last look

    # -- public API ----------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Add a sink (before start: e.g. one whose construction needs ``command``)."""
        if self._started:
            raise RuntimeError("add sinks before Pipeline.start()")
        self._sinks.append(_SinkThread(sink))

    def start(self) -> None:
        if self._started:
            raise RuntimeError("Pipeline already started")
        self._started = True
        self._started_mono = time.monotonic()
        self._next_stats = self._started_mono + self._stats_interval
        for sink in self._sinks:
            sink.start()
        self._worker = threading.Thread(target=self._run, name="voxd-pipeline", daemon=True)
        self._reader = threading.Thread(target=self._read, name="voxd-pipeline-reader", daemon=True)
        self._worker.start()
        self._reader.start()
        self._source.start()
        log.info(
            "pipeline started (site %s, engine delay %d ms, backlog up to %.0f s, %d sink(s))",
            self._site,
            self._settings.engine.delay_ms,
            self._backlog.capacity / SAMPLE_RATE,
            len(self._sinks),
        )

    def stop(self, flush: bool = True, timeout: float = 20.0) -> None:
        """Stop: transcribe (flush=True) or drop what was read, drain sinks, end threads."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self._flush_on_stop = flush
        self._stopping.set()
        for thread in (self._reader, self._worker):
            if thread is not None:
                thread.join(max(deadline - time.monotonic(), 0.0))
                if thread.is_alive():
                    log.error("pipeline thread %s did not stop within %.1fs", thread.name, timeout)
        self._source.stop()
        for sink in self._sinks:
            sink.close(max(deadline - time.monotonic(), 1.0))
        worker = self._worker
        if worker is None or not worker.is_alive():
            self._stream.close()  # the engine thread is done with it
        reader = self._reader
        if self._wake is not None and (reader is None or not reader.is_alive()):
            self._wake.close()  # the reader is done with it
        log.info("pipeline stopped (%d utterances)", self._utterances)

    def command(self, name: str) -> None:
        """Queue a command (mute, unmute, flush, reset); safe from any thread."""
        if name not in COMMANDS:
            log.warning("unknown pipeline command %r ignored", name)
            return
        self._controls.put(_Command(name))

    def on_mic_status(self, status: MicStatus) -> None:
        """Capture's status callback ('mic_lost' / 'ok'); safe from any thread."""
        self._controls.put(_Mic(status))

    @property
    def alive(self) -> bool:
        """False once a pipeline thread has ended (stopped, or died of a bug)."""
        threads = (self._reader, self._worker)
        return all(t is not None and t.is_alive() for t in threads)

    @property
    def state(self) -> PipelineState | None:
        return self._state

    @property
    def utterances(self) -> int:
        """Finals published so far."""
        return self._utterances

    @property
    def samples_read(self) -> int:
        """Samples read from the source so far (muted audio included)."""
        return self._samples_read

    @property
    def wake_detections(self) -> int:
        """Wake words detected so far (0 without ``[wakeword]``)."""
        return self._wake_detections

    @property
    def engine_lag_s(self) -> float:
        """Seconds of audio read from the source that the engine has not taken in yet."""
        return self._backlog.waiting / SAMPLE_RATE

    @property
    def dropped_events(self) -> int:
        """Events dropped because a sink fell behind, over all sinks."""
        return sum(s.dropped for s in self._sinks)

    # -- reader thread: source -> endpointer -> backlog ------------------------------

    def _read(self) -> None:
        stop = _Stop(False, 0.0)
        try:
            while not self._stopping.is_set():
                self._read_controls()
                block = self._source.read(timeout=READ_TIMEOUT_S)
                self._beat_capture(block is not None)
                if block is not None:
                    self._on_block(block)
                self._maybe_stats()
            self._read_controls()
            stop = self._wind_down()
        except Exception:
            # A bug, not an audio problem (those are handled where they happen).
            # The engine thread stops too; the daemon sees alive == False.
            log.exception("pipeline reader failed")
        finally:
            self._backlog.put(stop)

    def _beat_capture(self, got_audio: bool) -> None:
        # A capture that delivers, or that has reported the mic lost, is
        # healthy; one that does neither (a hung supervisor) lets the watchdog fire.
        if self._watchdog is not None and (got_audio or self._read_mic_lost):
            self._watchdog.beat("capture")

    def _wind_down(self) -> _Stop:
        now = time.monotonic()
        if not self._flush_on_stop:
            dropped = self._backlog.clear()
            if dropped:
                log.warning(
                    "stop without flush: %.1f s of audio read and not transcribed are dropped",
                    dropped / SAMPLE_RATE,
                )
            return _Stop(False, now)
        self._forward(self._endpointer.flush(), now)
        self._ep_samples = 0
        return _Stop(True, now)

    def _on_block(self, block: FloatArray) -> None:
        self._samples_read += len(block)
        if self._read_muted:
            return  # muted audio goes nowhere, not even to the endpointer or the detector
        if self._wake is None:
            self._endpoint(block)
            return
        done = 0
        for detection in self._wake.process(block):
            self._endpoint(block[done : detection.offset])
            done = detection.offset
            self._on_wake(detection)
        self._endpoint(block[done:])
        self._expire_gate()

    def _endpoint(self, samples: FloatArray) -> None:
        if not len(samples):
            return
        events = self._endpointer.process(samples)
        self._ep_samples += len(samples)
        self._clock.anchor(self._ep_samples / SAMPLE_RATE)
        self._forward(events, time.monotonic())

    # -- the wake-word gate (reader thread) ----------------------------------------------
    #
    # The detector hears all the audio the endpointer hears; the gate only
    # decides which speech goes on to the engine: speech that starts within
    # wakeword.open_s after a detection (one utterance per detection). Other
    # speech is never put in the backlog, so the engine does no work for it
    # and its state stays idle. At a detection the endpointer drops the
    # speech it is in (the wake phrase, held back or gated) and starts
    # afresh, so the next utterance begins after the detection, without the
    # phrase, even when the speaker hardly pauses.

    def _on_wake(self, detection: Detection) -> None:
        assert self._wake is not None
        self._wake_detections += 1
        event = WakeWordDetected(self._wake.name, detection.probability, time.time())
        log.info("wake word %s heard (probability %.3f)", event.wake_word, event.probability)
        self._emit(event)  # at once, not in audio order: a listener may answer it
        if self._endpointer.in_speech and not self._gated:
            # An admitted utterance goes on (the phrase is said inside it); the
            # next speech may start until open_s from now.
            self._gate_from = self._ep_samples / SAMPLE_RATE
            return
        self._endpointer.flush()  # its events (the phrase's own speech) are dropped
        self._gated = False
        self._ep_samples = 0
        self._gate_from = 0.0

    def _expire_gate(self) -> None:
        if self._gate_from is None or self._endpointer.in_speech:
            return
        if self._ep_samples / SAMPLE_RATE > self._gate_from + self._settings.wakeword.open_s:
            log.debug(
                "wake word: no speech within %.1f s; the gate is shut",
                self._settings.wakeword.open_s,
            )
            self._gate_from = None

    def _gate_start(self, event: SpeechStart) -> bool:
        """Whether this speech goes to the engine (always, without a wake word)."""
        if self._wake is None:
            return True
        gate_from = self._gate_from
        open_s = self._settings.wakeword.open_s
        if gate_from is not None and gate_from <= event.t <= gate_from + open_s:
            self._gate_from = None  # one utterance per detection
            return True
        log.debug("speech at %.2f s not preceded by the wake word: not transcribed", event.t)
        return False

    def _close_gate(self) -> None:
        """The endpointer restarts (mute, microphone lost): no detection is pending."""
        self._gate_from = None
        self._gated = False

    def _forward(
        self, events: list[EndpointEvent], decided: float, reason: EndReason | None = None
    ) -> None:
        """Pass endpoint events on to the engine thread (``reason`` overrides ends')."""
        for event in events:
            if isinstance(event, SpeechStart):
                self._gated = not self._gate_start(event)
                if self._gated:
                    continue
                self._end_skip()
                self._backlog.put(_Start(self._clock.at(event.t)))
            elif self._gated:
                if isinstance(event, SpeechEnd):
                    self._gated = False
                    log.debug(
                        "speech without the wake word ended at %.2f s (%s)", event.t, event.reason
                    )
            elif isinstance(event, Audio):
                self._forward_audio(event)
            elif isinstance(event, SpeechEnd):
                self._end_skip()
                end_reason: EndReason = reason or event.reason
                at = self._clock.at(event.t)
                self._backlog.put(_SpeechEnd(end_reason, at, decided, event.silence))

    def _forward_audio(self, event: Audio) -> None:
        samples = event.samples
        if self._skip is not None:
            self._skipped += len(samples)
            return
        keep = min(max(self._backlog.room(), 0), len(samples))
        if keep:
            end = event.t + keep / SAMPLE_RATE
            chunk = _Chunk(samples[:keep], self._clock.at(event.t), self._clock.at(end))
            self._backlog.put(chunk)
        if keep == len(samples):
            return
        # The engine is a whole backlog behind: end the utterance where its
        # audio stops rather than leave a hole in it.
        self._backlog.put(_Cut("backlog", time.monotonic()))
        self._skip, self._skipped = "backlog", len(samples) - keep
        log.warning(
            "the engine is %.1f s of audio behind (backlog full): utterance ended early "
            "(reason backlog); the rest of this speech is not transcribed",
            self._backlog.waiting / SAMPLE_RATE,
        )

    def _end_skip(self) -> None:
        if self._skip == "backlog":
            log.warning(
                "backlog: %.1f s of speech were not transcribed (the engine was behind)",
                self._skipped / SAMPLE_RATE,
            )
        self._skip, self._skipped = None, 0

    def _read_controls(self) -> None:
        while True:
            try:
                control = self._controls.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            if isinstance(control, _Command):
                self._read_command(control.name, now)
            else:
                self._read_mic(control.status, now)

    def _read_command(self, name: str, now: float) -> None:
        """The reader's part of a command; the engine thread does the rest in turn."""
        log.info("command: %s", name)
        if name == "mute" and not self._read_muted:
            self._read_muted = True
            self._backlog.drop_trailing_audio()  # it is dropped anyway: spare the engine
            # Forget the speech in progress; the floor is re-learnt after unmute.
            self._endpointer.reset()
            self._ep_samples = 0
            self._skip, self._skipped = None, 0
            self._close_gate()
            if self._wake is not None:
                self._wake.reset()
        elif name == "unmute":
            self._read_muted = False
        elif name == "reset":
            self._backlog.drop_trailing_audio()
            self._end_skip()
            if self._endpointer.in_speech:
                self._skip = "reset"
        self._backlog.put(_Command(name, now))

    def _read_mic(self, status: MicStatus, now: float) -> None:
        if status == "mic_lost" and not self._read_mic_lost:
            self._read_mic_lost = True
            # What the endpointer held back, and the end of the speech in progress.
            self._forward(self._endpointer.flush(), now, reason="mic_lost")
            self._ep_samples = 0
            self._close_gate()
        elif status == "ok":
            self._read_mic_lost = False
        self._backlog.put(_Mic(status, now))

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self._stats_interval
        # The engine thread's running totals (floats: read whole under the GIL).
        engine_ms, audio_s = self._engine_ms_total, self._fed_audio_s
        engine_s = max(engine_ms - self._stats_engine_ms, 0.0) / 1000.0
        window_audio_s = audio_s - self._stats_audio_s
        self._stats_engine_ms, self._stats_audio_s = engine_ms, audio_s
        self._emit(
            Stats(
                uptime_s=now - self._started_mono,
                real_time_factor=engine_s / window_audio_s if window_audio_s > 0 else 0.0,
                queue_depth=self._source.queue_depth,
                overruns=self._source.overruns,
                utterances=self._utterances,
                mic_reconnects=self._source.reconnects,
                engine_lag_s=self.engine_lag_s,
                wake_detections=self._wake_detections,
            )
        )

    # -- engine thread: backlog -> engine -> events --------------------------------------

    def _run(self) -> None:
        self._set_state("idle")
        try:
            while True:
                msg = self._backlog.get(timeout=READ_TIMEOUT_S)
                if self._watchdog is not None:
                    self._watchdog.beat("engine")
                if isinstance(msg, _Stop):
                    self._on_stop(msg)
                    return
                if msg is not None:
                    self._on_message(msg)
        except Exception:
            # A bug, not an audio or engine problem (those are handled where
            # they happen). The watchdog stops; the daemon sees alive == False.
            log.exception("pipeline worker failed")

    def _on_message(self, msg: _Message) -> None:
        if isinstance(msg, _Chunk):
            try:
                self._on_chunk(msg)
            finally:
                self._backlog.done()
        elif isinstance(msg, _Start):
            self._on_speech_start(msg)
        elif isinstance(msg, _SpeechEnd):
            self._on_speech_end(msg)
        elif isinstance(msg, _Cut):
            self._on_cut(msg)
        elif isinstance(msg, _Command):
            self._apply_command(msg.name, msg.decided)
        elif isinstance(msg, _Mic):
            self._apply_mic(msg.status, msg.decided)

    def _on_stop(self, msg: _Stop) -> None:
        if self._utt is None:
            return
        if msg.flush:  # e.g. a continuation the endpointer never confirmed
            self._finish("shutdown", msg.decided)
        else:
            self._drop_utterance("shutdown")

    # -- endpoint messages ---------------------------------------------------------------

    def _on_speech_start(self, msg: _Start) -> None:
        self._discarding = False
        self._in_speech = True
        if self._utt is not None:  # cannot happen: every start follows an end
            log.warning("utterance %s: new speech before its end; finishing it", self._utt.id)
            self._finish("silence", time.monotonic())
        self._utt = self._new_utterance(msg.at)
        self._set_state("speaking")

    def _on_chunk(self, msg: _Chunk) -> None:
        if self._utt is None:
            if self._discarding:
                return
            # Speech goes on after an EOS or a flush command: a new utterance.
            self._utt = self._new_utterance(msg.start)
            self._set_state("speaking")
        utt = self._utt
        try:
            stream_events = self._stream.feed(msg.samples)
        except EngineError as err:
            self._engine_failed(err, "feed")
            return
        utt.samples += len(msg.samples)
        utt.end = msg.end
        self._fed_audio_s += len(msg.samples) / SAMPLE_RATE
        self._count_engine_time()
        if self._take_tokens(utt, stream_events):
            log.info("utterance %s: the model ended it (EOS)", utt.id)
            # The model decided on the audio it had: all the wait since is lag.
            self._finish("model_eos", utt.end.mono)

    def _on_speech_end(self, msg: _SpeechEnd) -> None:
        self._in_speech = False
        if msg.reason == "mic_lost":
            self._mic_lost = True  # the _Mic that follows says so too: rest in mic_lost
        if self._utt is None:  # already finished (EOS, command) or dropped (reset)
            self._discarding = False
            self._set_state(self._resting_state())
            return
        self._finish(msg.reason, msg.decided, end=msg.at, silence=msg.silence)

    def _on_cut(self, msg: _Cut) -> None:
        self._discarding = self._in_speech  # the reader sends no more of this speech
        if self._utt is not None:
            self._finish(msg.reason, msg.decided)

    # -- utterances ------------------------------------------------------------------------

    def _new_utterance(self, at: _When) -> _Utterance:
        self._counter += 1
        utt_id = f"{self._site}-{int(at.wall * 1000)}-{self._counter}"
        log.debug("utterance %s: speech started", utt_id)
        return _Utterance(utt_id, at.wall, self._stream.stats(), end=at)

    def _take_tokens(self, utt: _Utterance, events: list[StreamEvent]) -> bool:
        """Record tokens, emit a delta per piece of text; True if the model said EOS."""
        eos = False
        for ev in events:
            if isinstance(ev, TokenEvent):
                utt.token_ids.append(ev.token_id)
                eos = eos or ev.token_id == self._engine.info.eos_id
            if ev.text:  # a token's text, or an UtteranceEnd's leftover character
                utt.pieces.append(ev.text)
                self._emit(TranscriptDelta(utt.id, utt.seq, ev.text, ev.audio_time))
                utt.seq += 1
        return eos

    def _finish(
        self, reason: EndReason, decided: float, end: _When | None = None, silence: int = 0
    ) -> None:
        """Flush the engine for the utterance in progress and publish its final.

        ``end`` is the end of speech (default: the end of the audio fed);
        ``decided`` (monotonic) when the end was decided; ``silence`` the
        samples fed after the end of speech (the hangover), which the flush
        counts as its right padding: the decoder stops delay + 11 positions
        past the speech, not past the silence. Everything before this
        message has been fed, so the engine has caught up now.
        """
        utt = self._utt
        assert utt is not None
        caught_up = time.monotonic()
        self._set_state("processing")
        try:
            events = self._stream.flush(silence=silence)
        except EngineError as err:
            self._engine_failed(err, "flush")
            return
        self._utt = None
        self._take_tokens(utt, events)
        self._count_engine_time()
        end = utt.end if end is None else end
        wait = _Wait.measure(end.mono, decided, caught_up, time.monotonic())
        final = self._make_final(utt, reason, end, wait)
        if final.text:
            self._utterances += 1
            self._emit(final)
            log.info(
                "utterance %s: %r (%.2f s of audio, %s, final %.2f s after the speech: "
                "hangover %.2f + lag %.2f + flush %.2f)",
                utt.id,
                final.text,
                final.audio_seconds,
                reason,
                final.latency_s,
                final.hangover_s,
                final.lag_s,
                final.flush_s,
            )
        else:
            log.info(
                "utterance %s: no text in %.2f s of audio (%s); nothing published",
                utt.id,
                final.audio_seconds,
                reason,
            )
            self._close_deltas(utt, "no_text")
        self._set_state(self._resting_state())

    def _make_final(
        self, utt: _Utterance, reason: EndReason, end: _When, wait: _Wait
    ) -> TranscriptFinal:
        stats = self._stream.stats()
        audio_s = utt.samples / SAMPLE_RATE
        engine_ms = _engine_ms(stats) - _engine_ms(utt.start_stats)
        engine = {
            "mel_ms": stats.mel_ms - utt.start_stats.mel_ms,
            "encoder_ms": stats.encoder_ms - utt.start_stats.encoder_ms,
            "decoder_ms": stats.decoder_ms - utt.start_stats.decoder_ms,
            "real_time_factor": engine_ms / 1000.0 / audio_s if audio_s > 0 else 0.0,
        }
        return TranscriptFinal(
            utterance_id=utt.id,
            text="".join(utt.pieces).strip(),
            started_at=utt.started_at,
            ended_at=max(end.wall, utt.started_at),
            audio_seconds=audio_s,
            latency_s=wait.total_s,
            reason=reason,
            token_ids=tuple(utt.token_ids),
            engine=engine,
            hangover_s=wait.hangover_s,
            lag_s=wait.lag_s,
            flush_s=wait.flush_s,
        )

    def _drop_utterance(self, reason: DropReason) -> None:
        utt = self._utt
        self._utt = None
        if utt is not None:
            log.info("utterance %s: dropped (%s)", utt.id, reason)
            self._close_deltas(utt, reason)
        try:
            self._stream.reset()
        except EngineError as err:
            log.error("engine stream reset failed (%s); starting a new stream", err)
            self._replace_stream()

    def _close_deltas(self, utt: _Utterance, reason: DropReason) -> None:
        """Tell delta consumers that this utterance ends without a final (if it had deltas)."""
        if utt.seq == 0:
            return  # nothing was published for it: nothing to close
        log.debug("utterance %s: closing its %d delta(s) (%s)", utt.id, utt.seq, reason)
        self._emit(TranscriptDelta.closing(utt.id, utt.seq, utt.samples / SAMPLE_RATE, reason))
        utt.seq += 1

    def _engine_failed(self, err: EngineError, during: str) -> None:
        utt_id = self._utt.id if self._utt is not None else "-"
        log.error(
            "engine error during %s of utterance %s (status %d): %s; dropping the utterance",
            during,
            utt_id,
            err.status,
            err,
        )
        self._drop_utterance("engine_error")
        self._discarding = self._in_speech
        self._set_state(self._resting_state())

    def _new_stream(self) -> Stream:
        s = self._settings.engine
        return self._engine.stream(delay_ms=s.delay_ms, interval_ms=s.interval_ms)

    def _replace_stream(self) -> None:
        try:
            self._stream.close()
        finally:
            self._stream = self._new_stream()
        self._stream_ms = 0.0  # a fresh stream counts from zero

    def _count_engine_time(self) -> None:
        """Add the engine time since the last look to the total (for the stats)."""
        ms = _engine_ms(self._stream.stats())
        self._engine_ms_total += max(ms - self._stream_ms, 0.0)
        self._stream_ms = ms

    # -- state, commands, microphone (in the engine thread, in audio order) -------------

    def _resting_state(self) -> PipelineState:
        """The state when nothing is being processed."""
        if self._mic_lost:
            return "mic_lost"
        if self._muted:
            return "muted"
        if self._utt is not None or (self._in_speech and not self._discarding):
            return "speaking"
        return "idle"

    def _set_state(self, state: PipelineState) -> None:
        if state == self._state:
            return
        log.debug("state: %s -> %s", self._state, state)
        self._state = state
        self._emit(StateChanged(state))

    def _apply_command(self, name: str, decided: float) -> None:
        if name == "mute":
            self._mute()
        elif name == "unmute":
            self._muted = False
        elif name == "flush":
            if self._utt is not None:
                self._finish("command", decided)
            else:
                log.info("flush: no utterance in progress")
        elif name == "reset":
            if self._utt is not None:
                self._drop_utterance("reset")
            self._discarding = self._in_speech
        self._set_state(self._resting_state())

    def _mute(self) -> None:
        if self._muted:
            return
        self._muted = True
        if self._utt is not None:
            self._drop_utterance("mute")
        self._in_speech = False  # the reader reset the endpointer
        self._discarding = False

    def _apply_mic(self, status: MicStatus, decided: float) -> None:
        if status == "mic_lost":
            self._mic_lost = True
            # The reader already sent the endpointer's end of the speech in progress;
            # an utterance still open (a continuation after EOS) ends here.
            if self._utt is not None:
                self._finish("mic_lost", decided)
            self._discarding = False
            self._in_speech = False
        elif status == "ok":
            self._mic_lost = False
        self._set_state(self._resting_state())

    def _emit(self, event: Event) -> None:
        for sink in self._sinks:
            sink.offer(event)
