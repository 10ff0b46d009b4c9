"""The pipeline: audio -> endpointer -> engine -> events -> sinks.

Data flows one way, through one thread per blocking stage and bounded
queues between them::

    capture (PortAudio callback -> Capture's bounded queue)
        -> worker thread "voxd-pipeline": endpointer + engine stream
            -> one dispatcher thread per sink "voxd-sink-<name>" (bounded queue)
                -> sink.handle(event)

The worker owns the endpointer and the engine stream: nothing else touches
them, so neither needs a lock. Commands (MQTT, paho's thread) and microphone
status changes (Capture's supervisor thread) only put a message in the
worker's control queue; the worker applies them between audio blocks.

A sink that is slow or stuck never blocks the worker: each sink has its own
queue and thread, and when a sink's queue is full the event is dropped for
that sink (and logged). MqttSink.handle itself never blocks, and keeps finals
on disk, so it only loses anything here if its thread is wedged.

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
  dated when they were spoken. Re-anchoring on every block means dropped
  blocks, reconnect gaps and device clock drift never accumulate; the
  price is that backlog in the capture queue (normally under one block)
  makes the times that much late. Audio faster than real time (a file)
  squeezes the timeline, so ``ended_at`` is kept no earlier than
  ``started_at``.
* ``latency_s`` runs from the moment the end was decided (the endpointer
  returned SpeechEnd, a command or EOS arrived, shutdown began) to the
  final being ready.
* When the model ends an utterance on its own (EOS token) or a ``flush``
  command arrives while speech goes on, the utterance is finished and the
  rest of the speech becomes a new utterance. After ``reset`` or an engine
  error, the rest of that speech is dropped instead.
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
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TextIO

import numpy as np
import numpy.typing as npt

from voxd.audio import MicStatus
from voxd.config import Settings
from voxd.endpoint import Audio, Endpointer, EndpointEvent, SpeechEnd, SpeechJudge, SpeechStart
from voxd.engine import Engine, EngineError, Stream, StreamEvent, StreamStats, TokenEvent
from voxd.events import (
    DropReason,
    Event,
    PipelineState,
    StateChanged,
    Stats,
    TranscriptDelta,
    TranscriptFinal,
)
from voxd.mqtt import to_json_text
from voxd.sdnotify import Watchdog

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE = 16000
# The worker waits at most this long for audio, so it applies commands and
# beats the watchdog even in silence or while the microphone is gone.
READ_TIMEOUT_S = 0.25
SINK_QUEUE_MAX = 1000  # events per sink; minutes of deltas at any real speaking rate
WATCHDOG_SOURCES = ("engine", "capture")
COMMANDS = frozenset({"mute", "unmute", "flush", "reset"})

EndReason = Literal["silence", "max_length", "command", "shutdown", "model_eos", "mic_lost"]


# -- stage interfaces -------------------------------------------------------------


class AudioSource(Protocol):
    """Where the pipeline's audio comes from: 16 kHz mono float32 blocks.

    :class:`voxd.audio.Capture` is one; :class:`ArraySource` is another.
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


class Sink(Protocol):
    """Receives every event, in order, on its own dispatcher thread."""

    def handle(self, event: Event) -> None: ...


class ArraySource:
    """An AudioSource fed by the program: ``push`` arrays, the pipeline reads them.

    For offline use and tests. Pushed audio is cut into ``block_ms`` blocks
    so that the worker stays responsive to commands between them.
    """

    def __init__(self, block_ms: int = 20, sample_rate: int = SAMPLE_RATE) -> None:
        self._block = max(sample_rate * block_ms // 1000, 1)
        self._queue: queue.Queue[FloatArray] = queue.Queue()
        self._stopped = threading.Event()

    def push(self, samples: npt.ArrayLike) -> None:
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        for i in range(0, len(x), self._block):
            self._queue.put(x[i : i + self._block].copy())

    def start(self) -> None:
        self._stopped.clear()

    def stop(self) -> None:
        self._stopped.set()

    def read(self, timeout: float | None = None) -> FloatArray | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.is_set():
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                continue
        return None

    @property
    def pending(self) -> int:
        """Blocks pushed and not read yet."""
        return self._queue.qsize()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def overruns(self) -> int:
        return 0

    @property
    def reconnects(self) -> int:
        return 0


# -- sinks ------------------------------------------------------------------------------


def event_type(event: Event) -> str:
    """Short name of an event kind, as used by the stdout sink."""
    if isinstance(event, TranscriptDelta):
        return "delta"
    if isinstance(event, TranscriptFinal):
        return "final"
    if isinstance(event, StateChanged):
        return "state"
    return "stats"


class StdoutSink:
    """Events as JSON lines on stdout: ``{"type": "final", "utterance_id": ...}``.

    ``type`` is delta, final, state or stats; the other keys are the event's
    payload, exactly as published on MQTT. Each line is flushed at once so a
    pipe reader sees it immediately. If the reader goes away (broken pipe)
    the sink says so once and stops writing; the daemon goes on.
    """

    def __init__(self, stream: TextIO | None = None, *, types: Iterable[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._types = frozenset(types) if types is not None else None
        self._broken = False

    def handle(self, event: Event) -> None:
        kind = event_type(event)
        if self._broken or (self._types is not None and kind not in self._types):
            return
        line = to_json_text({"type": kind, **event.to_json()})
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as err:  # broken pipe, closed file
            self._broken = True
            log.warning("stdout sink: cannot write (%s); JSON output stopped", err)


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


# -- worker bookkeeping -----------------------------------------------------------------


@dataclass(frozen=True)
class _Command:
    name: str


@dataclass(frozen=True)
class _Mic:
    status: MicStatus


_Control = _Command | _Mic


class _AudioClock:
    """Maps the endpointer's timeline (seconds since its reset) to the wall clock.

    Anchored anew by every block read: see the module doc.
    """

    def __init__(self) -> None:
        self._t = 0.0
        self._wall = time.time()

    def anchor(self, t: float) -> None:
        """The audio up to ``t`` has just been read."""
        self._t = t
        self._wall = time.time()

    def wall(self, t: float) -> float:
        return self._wall - (self._t - t)


@dataclass
class _Utterance:
    id: str
    started_at: float  # wall clock
    start_stats: StreamStats
    end_t: float  # endpointer time just after the last sample fed
    samples: int = 0
    seq: int = 0  # next delta's seq
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


def _engine_ms(stats: StreamStats) -> float:
    return stats.mel_ms + stats.encoder_ms + stats.decoder_ms


# -- the pipeline -------------------------------------------------------------------------


class Pipeline:
    """Runs the audio -> endpointer -> engine -> sinks chain in background threads.

    ``start()`` starts the sink threads, the worker and the source;
    ``stop(flush=True)`` finishes the utterance in progress (its final has
    reason "shutdown"), delivers what the sinks have queued, and stops.
    ``command(name)`` and ``on_mic_status(status)`` may be called from any
    thread. ``settings`` supplies the endpoint, engine (delay, interval),
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
        self._source = source
        self._engine = engine
        self._settings = settings
        self._watchdog = watchdog
        self._site = settings.mqtt.site
        self._stats_interval = settings.mqtt.stats_interval_s
        self._stream: Stream = self._new_stream()
        self._endpointer = Endpointer(
            settings.endpoint, judge=judge, judge_threshold=settings.vad.threshold
        )
        self._sinks = [_SinkThread(s) for s in sinks]
        self._controls: queue.SimpleQueue[_Control] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._flush_on_stop = True
        self._worker: threading.Thread | None = None
        self._started = False
        self._stopped = False
        # Owned by the worker thread once started:
        self._state: PipelineState | None = None
        self._utt: _Utterance | None = None
        self._muted = False
        self._mic_lost = False
        self._discarding = False  # dropping the rest of the current speech
        self._ep_samples = 0  # samples given to the endpointer since its reset
        self._clock = _AudioClock()
        self._counter = 0
        self._utterances = 0
        self._samples_read = 0
        self._started_mono = time.monotonic()
        self._next_stats = 0.0
        self._window_audio_s = 0.0
        self._window_engine_ms = 0.0

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
        self._worker.start()
        self._source.start()
        log.info(
            "pipeline started (site %s, engine delay %d ms, %d sink(s))",
            self._site,
            self._settings.engine.delay_ms,
            len(self._sinks),
        )

    def stop(self, flush: bool = True, timeout: float = 20.0) -> None:
        """Stop: finish (flush=True) or drop the utterance in progress, drain sinks, end threads."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self._flush_on_stop = flush
        self._stopping.set()
        worker = self._worker
        if worker is not None:
            worker.join(max(deadline - time.monotonic(), 0.0))
            if worker.is_alive():
                log.error("pipeline worker did not stop within %.1fs", timeout)
        self._source.stop()
        for sink in self._sinks:
            sink.close(max(deadline - time.monotonic(), 1.0))
        if worker is None or not worker.is_alive():
            self._stream.close()  # the worker is done with it
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
        """False once the worker has ended (stopped, or died of a bug)."""
        return self._worker is not None and self._worker.is_alive()

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
    def dropped_events(self) -> int:
        """Events dropped because a sink fell behind, over all sinks."""
        return sum(s.dropped for s in self._sinks)

    # -- worker loop -----------------------------------------------------------------

    def _run(self) -> None:
        self._set_state("idle")
        try:
            while not self._stopping.is_set():
                self._apply_controls()
                block = self._source.read(timeout=READ_TIMEOUT_S)
                self._beat(block is not None)
                if block is not None:
                    self._on_block(block)
                self._maybe_stats()
            self._apply_controls()
            self._wind_down()
        except Exception:
            # A bug, not an audio or engine problem (those are handled where
            # they happen). The watchdog stops; the daemon sees alive == False.
            log.exception("pipeline worker failed")

    def _beat(self, got_audio: bool) -> None:
        if self._watchdog is None:
            return
        self._watchdog.beat("engine")
        # A capture that delivers, or that has reported the mic lost, is
        # healthy; one that does neither (a hung supervisor) lets the watchdog fire.
        if got_audio or self._mic_lost:
            self._watchdog.beat("capture")

    def _wind_down(self) -> None:
        if not self._flush_on_stop:
            if self._utt is not None:
                self._drop_utterance("shutdown")
            return
        now = time.monotonic()
        self._handle_endpoint_events(self._endpointer.flush(), now)
        self._ep_samples = 0
        if self._utt is not None:  # e.g. a continuation the endpointer never confirmed
            self._finish("shutdown", now)

    def _on_block(self, block: FloatArray) -> None:
        self._samples_read += len(block)
        if self._muted:
            return  # muted audio goes nowhere, not even to the endpointer
        events = self._endpointer.process(block)
        self._ep_samples += len(block)
        self._clock.anchor(self._ep_samples / SAMPLE_RATE)
        self._handle_endpoint_events(events, time.monotonic())

    def _handle_endpoint_events(self, events: list[EndpointEvent], detected: float) -> None:
        for event in events:
            if isinstance(event, SpeechStart):
                self._on_speech_start(event)
            elif isinstance(event, Audio):
                self._on_audio(event)
            elif isinstance(event, SpeechEnd):
                self._on_speech_end(event, detected)

    # -- endpoint events ---------------------------------------------------------------

    def _on_speech_start(self, event: SpeechStart) -> None:
        self._discarding = False
        if self._utt is not None:  # cannot happen: every start follows an end
            log.warning("utterance %s: new speech before its end; finishing it", self._utt.id)
            self._finish("silence", time.monotonic())
        self._utt = self._new_utterance(event.t)
        self._set_state("speaking")

    def _on_audio(self, event: Audio) -> None:
        if self._utt is None:
            if self._discarding:
                return
            # Speech goes on after an EOS or a flush command: a new utterance.
            self._utt = self._new_utterance(event.t)
            self._set_state("speaking")
        utt = self._utt
        try:
            stream_events = self._stream.feed(event.samples)
        except EngineError as err:
            self._engine_failed(err, "feed")
            return
        utt.samples += len(event.samples)
        utt.end_t = event.t + len(event.samples) / SAMPLE_RATE
        self._window_audio_s += len(event.samples) / SAMPLE_RATE
        if self._take_tokens(utt, stream_events):
            log.info("utterance %s: the model ended it (EOS)", utt.id)
            self._finish("model_eos", time.monotonic())

    def _on_speech_end(self, event: SpeechEnd, detected: float) -> None:
        if self._utt is None:  # already finished (EOS, command) or dropped (reset)
            self._discarding = False
            self._set_state(self._resting_state())
            return
        reason: EndReason = event.reason
        self._finish(reason, detected, end_t=event.t)

    # -- utterances ------------------------------------------------------------------------

    def _new_utterance(self, t: float) -> _Utterance:
        self._counter += 1
        started_at = self._clock.wall(t)
        utt_id = f"{self._site}-{int(started_at * 1000)}-{self._counter}"
        log.debug("utterance %s: speech started", utt_id)
        return _Utterance(utt_id, started_at, self._stream.stats(), end_t=t)

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

    def _finish(self, reason: EndReason, decided: float, end_t: float | None = None) -> None:
        """Flush the engine for the utterance in progress and publish its final."""
        utt = self._utt
        assert utt is not None
        self._set_state("processing")
        try:
            events = self._stream.flush()
        except EngineError as err:
            self._engine_failed(err, "flush")
            return
        self._utt = None
        self._take_tokens(utt, events)
        final = self._make_final(utt, reason, decided, utt.end_t if end_t is None else end_t)
        if final.text:
            self._utterances += 1
            self._emit(final)
            log.info(
                "utterance %s: %r (%.2f s of audio, %s, final after %.2f s)",
                utt.id,
                final.text,
                final.audio_seconds,
                reason,
                final.latency_s,
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
        self, utt: _Utterance, reason: EndReason, decided: float, end_t: float
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
            ended_at=max(self._clock.wall(end_t), utt.started_at),
            audio_seconds=audio_s,
            latency_s=time.monotonic() - decided,
            reason=reason,
            token_ids=tuple(utt.token_ids),
            engine=engine,
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
        self._discarding = self._endpointer.in_speech
        self._set_state(self._resting_state())

    def _new_stream(self) -> Stream:
        s = self._settings.engine
        return self._engine.stream(delay_ms=s.delay_ms, interval_ms=s.interval_ms)

    def _replace_stream(self) -> None:
        try:
            self._stream.close()
        finally:
            self._stream = self._new_stream()
        self._window_engine_ms = 0.0  # a fresh stream counts from zero

    # -- state, commands, microphone ------------------------------------------------

    def _resting_state(self) -> PipelineState:
        """The state when nothing is being processed."""
        if self._mic_lost:
            return "mic_lost"
        if self._muted:
            return "muted"
        if self._utt is not None or (self._endpointer.in_speech and not self._discarding):
            return "speaking"
        return "idle"

    def _set_state(self, state: PipelineState) -> None:
        if state == self._state:
            return
        log.debug("state: %s -> %s", self._state, state)
        self._state = state
        self._emit(StateChanged(state))

    def _apply_controls(self) -> None:
        while True:
            try:
                control = self._controls.get_nowait()
            except queue.Empty:
                return
            if isinstance(control, _Command):
                self._apply_command(control.name)
            else:
                self._apply_mic(control.status)

    def _apply_command(self, name: str) -> None:
        log.info("command: %s", name)
        if name == "mute":
            self._mute()
        elif name == "unmute":
            self._muted = False
        elif name == "flush":
            if self._utt is not None:
                self._finish("command", time.monotonic())
            else:
                log.info("flush: no utterance in progress")
        elif name == "reset":
            if self._utt is not None:
                self._drop_utterance("reset")
            self._discarding = self._endpointer.in_speech
        self._set_state(self._resting_state())

    def _mute(self) -> None:
        if self._muted:
            return
        self._muted = True
        if self._utt is not None:
            self._drop_utterance("mute")
        # Forget the speech in progress; the floor is re-learnt after unmute.
        self._endpointer.reset()
        self._ep_samples = 0
        self._discarding = False

    def _apply_mic(self, status: MicStatus) -> None:
        if status == "mic_lost" and not self._mic_lost:
            self._mic_lost = True
            self._finish_on_mic_loss()
        elif status == "ok":
            self._mic_lost = False
        self._set_state(self._resting_state())

    def _finish_on_mic_loss(self) -> None:
        now = time.monotonic()
        for event in self._endpointer.flush():  # the audio it held back, then its end
            if isinstance(event, SpeechEnd):
                if self._utt is not None:
                    self._finish("mic_lost", now, end_t=event.t)
            else:
                self._handle_endpoint_events([event], now)
        self._ep_samples = 0
        if self._utt is not None:
            self._finish("mic_lost", now)
        self._discarding = False

    # -- stats -------------------------------------------------------------------------

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self._stats_interval
        engine_ms = _engine_ms(self._stream.stats())
        engine_s = max(engine_ms - self._window_engine_ms, 0.0) / 1000.0
        audio_s = self._window_audio_s
        self._window_engine_ms = engine_ms
        self._window_audio_s = 0.0
        self._emit(
            Stats(
                uptime_s=now - self._started_mono,
                real_time_factor=engine_s / audio_s if audio_s > 0 else 0.0,
                queue_depth=self._source.queue_depth,
                overruns=self._source.overruns,
                utterances=self._utterances,
                mic_reconnects=self._source.reconnects,
            )
        )

    def _emit(self, event: Event) -> None:
        for sink in self._sinks:
            sink.offer(event)
