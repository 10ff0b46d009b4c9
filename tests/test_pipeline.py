"""The pipeline end to end with real parts: ALSA capture devices through PortAudio,
the tiny model in the native engine, a real mosquitto, espeak speech.

The tiny model's text is gibberish but deterministic; the tests check what the
pipeline owes its consumers: how many finals, their order, non-empty text,
deltas that add up to each final, utterance ids, audio lengths that fit the
spoken sentences, the state sequence, and commands. Nothing here asserts a
duration: every wait polls with a generous deadline.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from array_source import ArraySource
from fixtures_audio import AlsaFifoDevice, AlsaSandbox, to_s16le, trim_silence
from fixtures_mqtt import CollectorFactory, Mosquitto, MqttCollector, wait_until
from speech import have_espeak, silence, synth

from voxd.audio import Capture
from voxd.config import (
    AudioSettings,
    DiscoverySettings,
    EndpointSettings,
    EngineSettings,
    MqttSettings,
    ServiceSettings,
    Settings,
    WakewordSettings,
)
from voxd.endpoint import Audio, Endpointer, SpeechEnd, SpeechJudge
from voxd.engine import Engine, TokenEvent, transcribe
from voxd.events import StateChanged, Stats, TranscriptDelta, TranscriptFinal, WakeWordDetected
from voxd.pipeline import Pipeline
from voxd.resample import resample
from voxd.sinks.mqtt import MqttSink
from voxd.sinks.mqtt_protocol import Topics
from voxd.sinks.stdout import StdoutSink
from voxd.tools.devmodel import (
    ENC_PREFIX,
    TINY,
    TensorPlan,
    make_model,
    write_safetensors,
)
from voxd.tools.safetensors import read_tensors
from voxd.vad import SileroVad

RATE = 16000
WAIT_S = 60.0

# Distinct lengths (about 0.8, 2.1 and 4.1 s), so a final's audio_seconds says
# which sentence it is.
SENTENCES = (
    "Lights on.",
    "What is the weather like tomorrow morning?",
    "Please set a timer for twenty minutes and remind me to call my mother.",
)
LEAD_S = 1.0  # silence before the first sentence: the endpointer learns the floor
GAP_S = 1.5  # silence between sentences: twice the hangover
# audio_seconds = pre-roll (0.3 s) + speech + hangover (0.7 s), give or take the
# endpointer's view of where quiet syllables start and end.
AUDIO_SLACK_BELOW_S = 0.3
AUDIO_SLACK_ABOVE_S = 1.5


# -- speech -------------------------------------------------------------------------


def make_sentences() -> list[np.ndarray]:
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return [trim_silence(synth(text)) for text in SENTENCES]


@pytest.fixture(scope="module")
def sentences() -> list[np.ndarray]:
    return make_sentences()


def program(parts: list[np.ndarray], lead_s: float = LEAD_S, gap_s: float = GAP_S) -> np.ndarray:
    """Sentences separated by silence, with silence before and after."""
    pieces = [silence(lead_s)]
    for x in parts:
        pieces += [x, silence(gap_s)]
    pieces.append(silence(2.0))
    return np.concatenate(pieces)


def seconds(x: np.ndarray) -> float:
    return len(x) / RATE


# -- real-time microphone on a FIFO device -------------------------------------------------


class FifoMic:
    """Plays into an ALSA FIFO device at real-time pace, like a microphone in a quiet room.

    Silence (zeros) is written whenever nothing is being said, so capture never
    stalls. Writes never block: when nobody reads the FIFO (the daemon is
    restarting) the pipe fills and further audio is dropped, as a real
    microphone's would be. ``written`` counts the samples that went in.
    """

    CHUNK = RATE // 50  # 20 ms: 640 bytes, below PIPE_BUF, so a write is all or nothing

    def __init__(self, device: AlsaFifoDevice) -> None:
        assert device.fd is not None and device.rate == RATE and device.channels == 1
        self._fd = device.fd
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._chunks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="fifo-mic", daemon=True)
        self._thread.start()

    def say(self, x: np.ndarray) -> None:
        """Queue speech; it is played after what is already queued."""
        padded = np.pad(x, (0, -len(x) % self.CHUNK))
        with self._lock:
            self._chunks.extend(padded.reshape(-1, self.CHUNK))

    def wait_said(self, timeout: float = WAIT_S) -> int:
        """Wait until everything queued was written; the sample count written by then."""
        wait_until(lambda: self.pending == 0, timeout, "the microphone to play its speech")
        return self.written

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._chunks)

    def _next(self) -> np.ndarray:
        with self._lock:
            return self._chunks.popleft() if self._chunks else np.zeros(self.CHUNK, np.float32)

    def pause(self) -> None:
        """Stop writing, and forget queued speech: the device stalls like a dead microphone."""
        self._paused.set()
        with self._lock:
            self._chunks.clear()

    def resume(self) -> None:
        self._paused.clear()

    def _run(self) -> None:
        start = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            if self._paused.is_set():
                start, sent = time.monotonic(), 0  # no catching up after the pause
                time.sleep(0.005)
                continue
            due = int((time.monotonic() - start) * RATE / self.CHUNK) + 1
            while sent < due:
                chunk = self._next()
                try:
                    os.write(self._fd, to_s16le(chunk))
                    self.written += len(chunk)
                except BlockingIOError:
                    pass  # nobody is reading: the audio is lost, as in a room
                sent += 1
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


@contextmanager
def playing_mic(alsa_sandbox: AlsaSandbox, name: str = "voxtest_mic") -> Iterator[FifoMic]:
    mic = FifoMic(alsa_sandbox.add_fifo_device(name))
    try:
        yield mic
    finally:
        mic.close()


@pytest.fixture
def fifo_mic(alsa_sandbox: AlsaSandbox) -> Iterator[FifoMic]:
    with playing_mic(alsa_sandbox) as mic:
        yield mic


# -- settings and a running pipeline ---------------------------------------------------


def make_settings(
    *,
    broker: Mosquitto,
    model_dir: Path,
    state_dir: Path,
    device: str,
    rate: int = RATE,
    channels: int = 1,
    site: str = "pipe",
    queue_seconds: float = 10.0,
    stats_interval_s: float = 60.0,
) -> Settings:
    return Settings(
        audio=AudioSettings(
            device=device, sample_rate=rate, channels=channels, queue_seconds=queue_seconds
        ),
        engine=EngineSettings(model_dir=model_dir),
        mqtt=MqttSettings(
            host=broker.host,
            port=broker.port,
            site=site,
            reconnect_min_s=1.0,
            reconnect_max_s=1.0,
            keepalive_s=5,
            stats_interval_s=stats_interval_s,
            discovery=DiscoverySettings(enabled=False),
        ),
        service=ServiceSettings(state_dir=state_dir),
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    with Engine(tiny_model_dir) as e:
        yield e


@dataclass
class Running:
    pipeline: Pipeline
    capture: Capture
    mqtt: MqttSink


@contextmanager
def running(
    settings: Settings, engine: Engine, *extra_sinks: Any, judge: SpeechJudge | None = None
) -> Iterator[Running]:
    """Capture -> Pipeline -> MqttSink (+ extra sinks), wired as the daemon does."""
    capture = Capture(settings.audio, pace_check=False)  # file devices run at CPU speed
    pipeline = Pipeline(capture, engine, extra_sinks, settings=settings, judge=judge)
    capture.on_status = pipeline.on_mic_status
    mqtt = MqttSink(settings.mqtt, settings.service.state_dir, on_command=pipeline.command)
    pipeline.add_sink(mqtt)
    try:
        # Deltas are dropped while MQTT is offline: connect before any audio flows.
        wait_until(lambda: mqtt.connected, WAIT_S, "MQTT connected")
        pipeline.start()
        yield Running(pipeline, capture, mqtt)
    finally:
        pipeline.stop(flush=True)
        mqtt.close()


# -- checks ------------------------------------------------------------------------------


def states(collector: MqttCollector, topics: Topics) -> list[str]:
    return [p["state"] for p in collector.payloads(topics.state)]


def deltas_of(collector: MqttCollector, topics: Topics, utterance_id: str) -> list[dict[str, Any]]:
    mine = [p for p in collector.payloads(topics.delta) if p["utterance_id"] == utterance_id]
    return sorted(mine, key=lambda d: d["seq"])


def deltas_add_up(collector: MqttCollector, topics: Topics, final: dict[str, Any]) -> bool:
    mine = deltas_of(collector, topics, final["utterance_id"])
    joined = "".join(d["text"] for d in mine).strip()
    return [d["seq"] for d in mine] == list(range(len(mine))) and joined == final["text"]


def check_final(final: dict[str, Any], spoken_s: float, site: str, reason: str = "silence") -> None:
    assert final["utterance_id"].startswith(f"{site}-")
    assert final["text"] and final["text"] == final["text"].strip()
    assert final["reason"] == reason
    assert (
        spoken_s - AUDIO_SLACK_BELOW_S <= final["audio_seconds"] <= spoken_s + AUDIO_SLACK_ABOVE_S
    )
    assert final["ended_at"] >= final["started_at"] > 1e9
    assert final["latency_s"] >= final["hangover_s"] >= 0
    parts = final["hangover_s"] + final["lag_s"] + final["flush_s"]
    assert final["latency_s"] == pytest.approx(parts, abs=1e-9)
    assert final["token_ids"]
    assert {"encoder_ms", "decoder_ms", "real_time_factor"} <= final["engine"].keys()
    assert final["engine"]["real_time_factor"] > 0


def check_three_sentences(
    collector: MqttCollector, topics: Topics, sentences: list[np.ndarray], site: str
) -> list[dict[str, Any]]:
    collector.wait_count(topics.final, 3, WAIT_S)
    # Each utterance ends with processing -> idle; wait for the last idle.
    expected_states = ["idle"] + ["speaking", "processing", "idle"] * 3
    wait_until(lambda: len(states(collector, topics)) >= len(expected_states), WAIT_S, "states")
    finals = collector.payloads(topics.final)
    assert len(finals) == 3
    for final, spoken in zip(finals, sentences, strict=True):
        check_final(final, seconds(spoken), site)
        wait_until(partial(deltas_add_up, collector, topics, final), WAIT_S, "deltas")
    ids = [f["utterance_id"] for f in finals]
    assert len(set(ids)) == 3
    assert {d["utterance_id"] for d in collector.payloads(topics.delta)} <= set(ids)
    assert [f["started_at"] for f in finals] == sorted(f["started_at"] for f in finals)
    assert states(collector, topics) == expected_states
    online = collector.messages(topics.availability)
    assert online and online[0].text == "online"
    return finals


# -- tests ---------------------------------------------------------------------------------


def test_three_sentences_from_a_16k_mono_device(
    alsa_sandbox: AlsaSandbox,
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    engine: Engine,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    audio = program(sentences)
    alsa_sandbox.add_file_device("voxtest_mono16k", audio, RATE)
    # The file device runs far faster than real time: the queue must hold it all.
    settings = make_settings(
        broker=mqtt_broker,
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        device="voxtest_mono16k",
        queue_seconds=seconds(audio) + 10,
        stats_interval_s=0.5,
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    out = io.StringIO()
    with running(settings, engine, StdoutSink(out)) as run:
        check_three_sentences(collector, topics, sentences, "pipe")
        assert run.pipeline.utterances == 3
        stats = collector.wait_count(topics.stats, 1, WAIT_S)[-1].json()
        assert stats["uptime_s"] > 0 and stats["queue_depth"] >= 0 and stats["overruns"] >= 0
        assert stats["mic_reconnects"] == 0

    # The stdout sink saw the same finals, as JSON lines.
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    stdout_finals = [d for d in lines if d["type"] == "final"]
    mqtt_finals = collector.payloads(topics.final)
    # MQTT adds when it was published: replayed and age_s (see voxd.sinks.mqtt).
    assert all(d.pop("replayed") is False and d.pop("age_s") >= 0 for d in mqtt_finals)
    assert [{k: v for k, v in d.items() if k != "type"} for d in stdout_finals] == mqtt_finals
    assert {d["type"] for d in lines} >= {"state", "delta", "final", "stats"}


def test_three_sentences_with_silero_vad_as_judge(
    alsa_sandbox: AlsaSandbox,
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    engine: Engine,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    silero_model: Path,
    tmp_path: Path,
) -> None:
    audio = program(sentences)
    alsa_sandbox.add_file_device("voxtest_vad", audio, RATE)
    settings = make_settings(
        broker=mqtt_broker,
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        device="voxtest_vad",
        site="vad",
        queue_seconds=seconds(audio) + 10,
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    with running(settings, engine, judge=SileroVad(silero_model)):
        check_three_sentences(collector, topics, sentences, "vad")


def test_three_sentences_from_a_48k_stereo_device(
    alsa_sandbox: AlsaSandbox,
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    engine: Engine,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    audio = resample(program(sentences), RATE, 48000)
    alsa_sandbox.add_file_device("voxtest_stereo48k", np.stack([audio, audio], axis=1), 48000)
    settings = make_settings(
        broker=mqtt_broker,
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        device="voxtest_stereo48k",
        rate=48000,
        channels=2,
        site="stereo",
        queue_seconds=len(audio) / 48000 + 10,
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    with running(settings, engine):
        check_three_sentences(collector, topics, sentences, "stereo")


def test_mute_unmute_and_flush_commands(
    fifo_mic: FifoMic,
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    engine: Engine,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    short, _, long = sentences
    settings = make_settings(
        broker=mqtt_broker,
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        device="voxtest_mic",
        site="cmd",
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    with running(settings, engine) as run:
        wait_until(lambda: states(collector, topics) == ["idle"], WAIT_S, "idle")

        # Muted: the speech is read from the device and thrown away.
        collector.publish(f"{topics.root}/cmd/mute")
        wait_until(lambda: states(collector, topics)[-1:] == ["muted"], WAIT_S, "muted")
        fifo_mic.say(long)
        fifo_mic.say(silence(1.5))
        said = fifo_mic.wait_said()
        wait_until(lambda: run.pipeline.samples_read >= said, WAIT_S, "muted speech read")
        collector.publish(f"{topics.root}/cmd/unmute")
        wait_until(lambda: states(collector, topics)[-1:] == ["idle"], WAIT_S, "unmuted")
        assert collector.payloads(topics.final) == []
        assert collector.payloads(topics.delta) == []

        # Unmuted: the next sentence is transcribed, and only that one.
        fifo_mic.say(short)
        fifo_mic.say(silence(1.5))
        first = collector.wait_count(topics.final, 1, WAIT_S)[0].json()
        check_final(first, seconds(short), "cmd")
        assert states(collector, topics) == ["idle", "muted", "idle"] + [
            "speaking",
            "processing",
            "idle",
        ]

        # flush ends the utterance now; the speech that follows is a new utterance.
        n_states = len(states(collector, topics))
        fifo_mic.say(long)
        fifo_mic.say(silence(1.5))
        wait_until(lambda: "speaking" in states(collector, topics)[n_states:], WAIT_S, "speech")
        time.sleep(1.0)  # let it say a few words first (not a timing check)
        collector.publish(f"{topics.root}/cmd/flush")
        flushed = collector.wait_count(topics.final, 2, WAIT_S)[1].json()
        assert flushed["reason"] == "command"
        assert flushed["text"]
        assert flushed["audio_seconds"] < seconds(long)
        fifo_mic.wait_said()
        wait_until(lambda: states(collector, topics)[-1] == "idle", WAIT_S, "idle again")
        wait_until(lambda: run.pipeline.state == "idle", WAIT_S, "pipeline idle")

    finals = collector.payloads(topics.final)
    rest = finals[2:]
    assert all(f["reason"] == "silence" for f in rest)
    assert len({f["utterance_id"] for f in finals}) == len(finals)
    for final in finals:
        wait_until(partial(deltas_add_up, collector, topics, final), WAIT_S, "deltas")


def test_mic_lost_mid_utterance_finishes_it_and_capture_recovers(
    fifo_mic: FifoMic,
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    engine: Engine,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    short, _, long = sentences
    settings = make_settings(
        broker=mqtt_broker,
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        device="voxtest_mic",
        site="lost",
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    with running(settings, engine) as run:
        fifo_mic.say(long)
        wait_until(lambda: "speaking" in states(collector, topics), WAIT_S, "speaking")
        time.sleep(1.5)  # a few words before the microphone dies (not a timing check)
        fifo_mic.pause()
        wait_until(lambda: states(collector, topics)[-1] == "mic_lost", WAIT_S, "mic_lost")
        lost = collector.wait_count(topics.final, 1, WAIT_S)[0].json()
        assert lost["reason"] == "mic_lost" and lost["text"]
        assert lost["audio_seconds"] < seconds(long)

        fifo_mic.resume()
        wait_until(lambda: states(collector, topics)[-1] == "idle", WAIT_S, "recovered")
        assert run.capture.reconnects >= 1
        fifo_mic.say(silence(0.5))
        fifo_mic.say(short)
        fifo_mic.say(silence(1.5))
        after = collector.wait_count(topics.final, 2, WAIT_S)[1].json()
        check_final(after, seconds(short), "lost")
    assert states(collector, topics)[:4] == ["idle", "speaking", "processing", "mic_lost"]


# -- without ALSA: the same pipeline fed by arrays ---------------------------------------------


class Recorder:
    """A sink that keeps every event (the pipeline calls it from its own thread)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._lock = threading.Lock()

    def handle(self, event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


def test_array_source_shutdown_flushes_the_utterance_in_progress(
    engine: Engine, sentences: list[np.ndarray]
) -> None:
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, engine, [recorder], settings=Settings())
    pipeline.start()
    source.push(silence(LEAD_S))
    source.push(sentences[2])  # no silence after it: still speaking at stop
    wait_until(lambda: source.pending == 0, WAIT_S, "audio consumed")
    wait_until(lambda: pipeline.state == "speaking", WAIT_S, "speaking")
    pipeline.stop(flush=True)
    (final,) = recorder.of(TranscriptFinal)
    assert final.reason == "shutdown" and final.text
    deltas = [d for d in recorder.of(TranscriptDelta) if d.utterance_id == final.utterance_id]
    assert "".join(d.text for d in deltas).strip() == final.text
    assert [s.state for s in recorder.of(StateChanged)][-2:] == ["processing", "idle"]
    assert not pipeline.alive


def test_array_source_reset_drops_the_utterance(
    engine: Engine, sentences: list[np.ndarray]
) -> None:
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, engine, [recorder], settings=Settings())
    pipeline.start()
    try:
        source.push(silence(LEAD_S))
        source.push(sentences[2][: len(sentences[2]) // 2])
        wait_until(lambda: source.pending == 0, WAIT_S, "audio consumed")
        wait_until(lambda: pipeline.state == "speaking", WAIT_S, "speaking")
        pipeline.command("reset")
        wait_until(lambda: pipeline.state == "idle", WAIT_S, "idle after reset")
        # The rest of that speech is dropped too; the next sentence is transcribed.
        source.push(sentences[2][len(sentences[2]) // 2 :])
        source.push(silence(GAP_S))
        source.push(sentences[0])
        source.push(silence(GAP_S))
        wait_until(lambda: recorder.of(TranscriptFinal), WAIT_S, "a final")
        wait_until(lambda: source.pending == 0 and pipeline.state == "idle", WAIT_S, "idle")
    finally:
        pipeline.stop(flush=False)
    (final,) = recorder.of(TranscriptFinal)
    check_final(final.to_json(), seconds(sentences[0]), "default")


NORMAL_DELTA_KEYS = {"utterance_id", "seq", "text", "audio_time"}


def deltas_by_seq(recorder: Recorder, utterance_id: str) -> list[TranscriptDelta]:
    mine = [d for d in recorder.of(TranscriptDelta) if d.utterance_id == utterance_id]
    return sorted(mine, key=lambda d: d.seq)


def speaking_with_deltas(pipeline: Pipeline, recorder: Recorder, known: set[str]) -> str:
    """Wait until a new utterance is in progress and has published deltas; its id."""

    def new_id() -> str | None:
        ids = {d.utterance_id for d in recorder.of(TranscriptDelta)} - known
        return next(iter(ids), None) if pipeline.state == "speaking" else None

    wait_until(lambda: new_id() is not None, WAIT_S, "an utterance with deltas in progress")
    utterance_id = new_id()
    assert utterance_id is not None
    return utterance_id


def check_closed(recorder: Recorder, utterance_id: str, reason: str) -> TranscriptDelta:
    """The utterance's deltas run 0..n and end with one closing delta for ``reason``."""
    # The recorder gets events on its own thread, after the pipeline moved on.
    wait_until(
        lambda: any(d.end for d in deltas_by_seq(recorder, utterance_id)),
        WAIT_S,
        f"a closing delta for {utterance_id}",
    )
    deltas = deltas_by_seq(recorder, utterance_id)
    assert [d.seq for d in deltas] == list(range(len(deltas)))
    *pieces, closing = deltas
    assert pieces and all(d.end is None and d.reason is None for d in pieces)
    assert (closing.end, closing.reason, closing.text) == ("dropped", reason, "")
    assert closing.audio_time > 0
    assert utterance_id not in {f.utterance_id for f in recorder.of(TranscriptFinal)}
    return closing


def test_dropped_utterances_close_their_deltas(
    engine: Engine,
    sentences: list[np.ndarray],
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tmp_path: Path,
) -> None:
    """reset, mute and stop without flush, each in the middle of an utterance with deltas.

    The closing deltas go through the real MQTT sink like any delta.
    """
    source = ArraySource()
    recorder = Recorder()
    settings = Settings(
        mqtt=MqttSettings(
            host=mqtt_broker.host,
            port=mqtt_broker.port,
            site="drop",
            discovery=DiscoverySettings(enabled=False),
        ),
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [topics.delta, topics.final])
    mqtt = MqttSink(settings.mqtt, tmp_path / "state")
    pipeline = Pipeline(source, engine, [recorder, mqtt], settings=settings)
    half = sentences[2][: len(sentences[2]) // 2]
    seen: set[str] = set()
    closings: dict[str, TranscriptDelta] = {}
    try:
        wait_until(lambda: mqtt.connected, WAIT_S, "MQTT connected")
        pipeline.start()

        # reset in the middle of an utterance that has published deltas
        source.push(silence(LEAD_S))
        source.push(half)
        reset_id = speaking_with_deltas(pipeline, recorder, seen)
        seen.add(reset_id)
        pipeline.command("reset")
        wait_until(lambda: pipeline.state == "idle", WAIT_S, "idle after reset")
        closings[reset_id] = check_closed(recorder, reset_id, "reset")

        # mute in the middle of the next one (silence first ends the discarded speech)
        source.push(silence(GAP_S))
        source.push(half)
        mute_id = speaking_with_deltas(pipeline, recorder, seen)
        seen.add(mute_id)
        pipeline.command("mute")
        wait_until(lambda: pipeline.state == "muted", WAIT_S, "muted")
        closings[mute_id] = check_closed(recorder, mute_id, "mute")

        # a normal utterance after unmute: a final, and no closing delta
        pipeline.command("unmute")
        wait_until(lambda: pipeline.state == "idle", WAIT_S, "unmuted")
        source.push(silence(LEAD_S))
        source.push(sentences[0])
        source.push(silence(GAP_S))
        wait_until(lambda: recorder.of(TranscriptFinal), WAIT_S, "a final")
        (final,) = recorder.of(TranscriptFinal)
        seen.add(final.utterance_id)

        # stop without flush in the middle of one more
        source.push(half)
        stop_id = speaking_with_deltas(pipeline, recorder, seen)
    finally:
        pipeline.stop(flush=False)
    try:
        closings[stop_id] = check_closed(recorder, stop_id, "shutdown")
        expected = [c.to_json() for c in closings.values()]
        wait_until(
            lambda: all(c in collector.payloads(topics.delta) for c in expected),
            WAIT_S,
            "the closing deltas on MQTT",
        )
    finally:
        mqtt.close()

    # On MQTT a closing delta has two more keys than a normal delta.
    on_mqtt = collector.payloads(topics.delta)
    for utterance_id, closing in closings.items():
        mine = [d for d in on_mqtt if d["utterance_id"] == utterance_id]
        assert mine[-1] == {
            "utterance_id": utterance_id,
            "seq": closing.seq,
            "text": "",
            "audio_time": closing.audio_time,
            "end": "dropped",
            "reason": closing.reason,
        }
    assert all(set(d) == NORMAL_DELTA_KEYS for d in on_mqtt if "end" not in d)
    # The final closes its own deltas: none closing, and they add up to its text.
    deltas = deltas_by_seq(recorder, final.utterance_id)
    assert all(d.end is None for d in deltas)
    assert "".join(d.text for d in deltas).strip() == final.text
    assert [d.seq for d in deltas] == list(range(len(deltas)))
    assert collector.payloads(topics.final)[0]["utterance_id"] == final.utterance_id
    assert [d for d in on_mqtt if d["utterance_id"] == final.utterance_id] == [
        d.to_json() for d in deltas
    ]
    assert all(set(d.to_json()) == NORMAL_DELTA_KEYS for d in deltas)


def test_dropped_utterance_without_deltas_gets_no_closing_delta(
    engine: Engine, sentences: list[np.ndarray]
) -> None:
    # With the longest delay the engine has no token yet for a short sentence.
    settings = Settings(engine=EngineSettings(delay_ms=2400, interval_ms=2400))
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, engine, [recorder], settings=settings)
    pipeline.start()
    try:
        source.push(silence(LEAD_S))
        source.push(sentences[0])  # no silence after it: still speaking
        wait_until(lambda: source.pending == 0, WAIT_S, "audio consumed")
        wait_until(lambda: pipeline.state == "speaking", WAIT_S, "speaking")
        pipeline.command("reset")
        wait_until(lambda: pipeline.state == "idle", WAIT_S, "idle after reset")
        source.push(silence(GAP_S))
        source.push(sentences[0])
        wait_until(lambda: source.pending == 0, WAIT_S, "audio consumed")
        wait_until(lambda: pipeline.state == "speaking", WAIT_S, "speaking again")
    finally:
        pipeline.stop(flush=False)
    assert [s.state for s in recorder.of(StateChanged)] == ["idle", "speaking", "idle", "speaking"]
    deltas = recorder.of(TranscriptDelta)
    assert [d for d in deltas if d.end is None] == [], "setup: the engine produced text"
    assert deltas == []  # two utterances dropped, neither with a delta: nothing to close
    assert recorder.of(TranscriptFinal) == []


@pytest.fixture(scope="module")
def eos_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, with EOS where it would say " still" (a real model, edited).

    The output head is the token embedding: giving EOS a larger copy of the
    embedding of " still" makes EOS win wherever " still" would, so the model
    ends utterances on its own, mid-speech.
    """
    out = tmp_path_factory.mktemp("eos_model")
    for name in ("params.json", "tekken.json"):
        shutil.copy(tiny_model_dir / name, out / name)
    tensors = read_tensors(tiny_model_dir / "consolidated.safetensors")
    embedding = ENC_PREFIX + "tok_embeddings.weight"
    table = tensors[embedding].copy()
    with Engine(tiny_model_dir) as tiny:
        eos = tiny.info.eos_id
        still = next(i for i in range(tiny.info.vocab_size) if tiny.token_bytes(i) == b" still")
    table[eos] = 1.5 * table[still]
    tensors[embedding] = table
    plans = [TensorPlan(n, a.shape, partial(iter, [a])) for n, a in tensors.items()]
    write_safetensors(out / "consolidated.safetensors", plans)
    return out


def test_model_eos_ends_the_utterance_and_the_speech_goes_on(
    eos_model_dir: Path, sentences: list[np.ndarray]
) -> None:
    source = ArraySource()
    recorder = Recorder()
    with Engine(eos_model_dir) as engine:
        pipeline = Pipeline(source, engine, [recorder], settings=Settings())
        pipeline.start()
        try:
            source.push(silence(LEAD_S))
            source.push(sentences[2])
            source.push(silence(GAP_S))
            wait_until(lambda: source.pending == 0, WAIT_S, "audio consumed")
            wait_until(lambda: pipeline.state == "idle", WAIT_S, "idle")
        finally:
            pipeline.stop()
    finals = recorder.of(TranscriptFinal)
    assert finals and finals[0].reason == "model_eos" and finals[0].text
    assert finals[0].token_ids[-1] == engine.info.eos_id
    # The model decided on the audio it had: no hangover, all of its wait is lag and flush.
    check_wait(finals[0])
    assert finals[0].hangover_s == 0
    assert len({f.utterance_id for f in finals}) == len(finals)
    # After the EOS the speech goes on as a new utterance, without a pass through idle.
    seen = [s.state for s in recorder.of(StateChanged)]
    assert seen[:4] == ["idle", "speaking", "processing", "speaking"]
    assert seen[-1] == "idle"
    for final in finals:
        deltas = [d for d in recorder.of(TranscriptDelta) if d.utterance_id == final.utterance_id]
        assert "".join(d.text for d in deltas).strip() == final.text


# -- an engine slower than the audio: the backlog ----------------------------------------------

# A random model about 20 times the tiny one's work per second of audio (a real
# model, run on one thread): a few times faster than real time here, but far
# slower than a source that plays audio at FLOOD_SPEED times real time.
SLOW = dataclasses.replace(
    TINY,
    name="slow",
    dim=384,
    n_layers=4,
    head_dim=64,
    hidden_dim=1024,
    n_heads=6,
    n_kv_heads=2,
    sliding_window=200,
    enc_dim=384,
    enc_layers=6,
    enc_head_dim=64,
    enc_hidden_dim=1024,
    enc_heads=6,
    enc_kv_heads=6,
    enc_window=200,
)
FLOOD_SPEED = 20.0


@pytest.fixture(scope="module")
def slow_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    out = tmp_path_factory.mktemp("slow_model")
    make_model(out, SLOW, seed=3)
    with Engine(out, threads=1) as e:
        yield e


class FloodSource:
    """Capture's contract with a microphone that plays ``speed`` times faster than real time.

    A producer thread puts 20 ms blocks on a schedule into a queue of
    ``queue_seconds``, as Capture's PortAudio callback does: a block that finds
    the queue full is dropped and counted as an overrun. A reader that falls
    behind by more than the queue loses audio, as on a board whose pipeline
    does not keep up.
    """

    BLOCK = RATE // 50

    def __init__(self, audio: np.ndarray, queue_seconds: float, speed: float) -> None:
        self._blocks = [audio[i : i + self.BLOCK] for i in range(0, len(audio), self.BLOCK)]
        self.capacity = math.ceil(queue_seconds * RATE / self.BLOCK)
        self._queue: queue.Queue[np.ndarray] = queue.Queue(self.capacity)
        self._speed = speed
        self._overruns = 0
        self._stop = threading.Event()
        self.played = threading.Event()
        self._thread = threading.Thread(target=self._play, name="flood-mic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _play(self) -> None:
        t0 = time.monotonic()
        for k, block in enumerate(self._blocks):
            due = t0 + k * self.BLOCK / RATE / self._speed
            if self._stop.wait(max(due - time.monotonic(), 0.0)):
                return
            try:
                self._queue.put_nowait(block)
            except queue.Full:
                self._overruns += 1
        self.played.set()

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def overruns(self) -> int:
        return self._overruns

    @property
    def reconnects(self) -> int:
        return 0


def utterances_of(audio: np.ndarray, settings: Settings) -> list[tuple[np.ndarray, str, int]]:
    """The endpointer's utterances in ``audio``, offline: (their audio, end
    reason, samples of it after the end of speech: the hangover)."""
    endpointer = Endpointer(settings.endpoint)
    found: list[tuple[np.ndarray, str, int]] = []
    pieces: list[np.ndarray] = []
    for event in endpointer.process(audio) + endpointer.flush():
        if isinstance(event, Audio):
            pieces.append(event.samples)
        elif isinstance(event, SpeechEnd):
            found.append((np.concatenate(pieces), event.reason, event.silence))
            pieces = []
    return found


def transcribe_utterance(
    engine: Engine, audio: np.ndarray, hangover: int, settings: Settings
) -> tuple[str, list[int]]:
    """What the pipeline makes of one utterance: its audio, then a flush that
    counts the hangover as padding."""
    stream = engine.stream(delay_ms=settings.engine.delay_ms)
    try:
        events = stream.feed(audio) + stream.flush(silence=hangover)
    finally:
        stream.close()
    ids = [e.token_id for e in events if isinstance(e, TokenEvent)]
    return "".join(e.text for e in events).strip(), ids


def check_wait(final: TranscriptFinal) -> None:
    """latency_s is the whole wait from the end of speech; its parts add up to it."""
    parts = (final.hangover_s, final.lag_s, final.flush_s)
    assert all(p >= 0 for p in parts)
    assert final.latency_s >= final.hangover_s
    assert final.latency_s == pytest.approx(sum(parts), abs=1e-9)
    json_keys = final.to_json().keys()
    assert {"latency_s", "hangover_s", "lag_s", "flush_s"} <= json_keys


def test_a_lagging_engine_gets_every_sample_of_the_utterance(
    slow_engine: Engine, sentences: list[np.ndarray]
) -> None:
    long = sentences[2]
    audio = np.concatenate([silence(LEAD_S), long, silence(GAP_S)])
    settings = Settings(mqtt=MqttSettings(stats_interval_s=0.5))  # the shortest allowed
    ((spoken, reason, hangover),) = utterances_of(audio, settings)
    assert reason == "silence" and hangover > 0
    # Capture's queue holds much less than the utterance: a reader that waits
    # for the engine would have to drop audio in the middle of it.
    source = FloodSource(audio, queue_seconds=0.5, speed=FLOOD_SPEED)
    assert source.capacity * FloodSource.BLOCK < len(spoken) / 2
    recorder = Recorder()
    pipeline = Pipeline(source, slow_engine, [recorder], settings=settings)
    pipeline.start()
    try:
        wait_until(source.played.is_set, WAIT_S, "the source to play everything")
        wait_until(lambda: recorder.of(TranscriptFinal), WAIT_S, "the final")
        wait_until(lambda: pipeline.engine_lag_s == 0, WAIT_S, "the engine to catch up")
        wait_until(
            lambda: [s for s in recorder.of(Stats) if s.engine_lag_s == 0 and s.utterances],
            WAIT_S,
            "stats after the final",
        )
    finally:
        pipeline.stop()
    assert source.overruns == 0
    (final,) = recorder.of(TranscriptFinal)
    assert final.reason == "silence"
    # Every sample reached the engine: the same audio and tokens as offline.
    assert round(final.audio_seconds * RATE) == len(spoken)
    text, token_ids = transcribe_utterance(slow_engine, spoken, hangover, settings)
    assert list(final.token_ids) == token_ids
    assert final.text == text
    check_wait(final)
    stats = recorder.of(Stats)
    assert all(s.engine_lag_s >= 0 and "engine_lag_s" in s.to_json() for s in stats)
    print(f"most engine lag in the stats: {max(s.engine_lag_s for s in stats):.2f} s")


def test_b_an_engine_a_whole_backlog_behind_ends_the_utterance_early(
    slow_engine: Engine, sentences: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    # A sentence, then continuous speech twice the utterance limit, all at
    # once: the engine is still on the first utterance when the second one
    # fills the backlog (the limit plus a second). The first utterance is
    # longer than that second, so the cut comes before the limit would split.
    settings = Settings(endpoint=EndpointSettings(max_utterance_s=5.0))
    speech = np.concatenate([sentences[2], sentences[1], sentences[2]])
    audio = np.concatenate([silence(LEAD_S), sentences[1], silence(GAP_S), speech, silence(GAP_S)])
    cut = utterances_of(audio, settings)[1][0]  # the second utterance, the one cut short
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, slow_engine, [recorder], settings=settings)
    pipeline.start()
    try:
        source.push(audio)
        wait_until(lambda: source.pending == 0, WAIT_S, "audio read")
        wait_until(lambda: pipeline.engine_lag_s == 0, WAIT_S, "the engine to catch up")
        wait_until(lambda: pipeline.state == "idle", WAIT_S, "idle")
        before = len(recorder.of(TranscriptFinal))
        # The next utterance is transcribed as usual.
        source.push(sentences[1])
        source.push(silence(GAP_S))
        wait_until(lambda: len(recorder.of(TranscriptFinal)) > before, WAIT_S, "the next final")
    finally:
        pipeline.stop()
    finals = recorder.of(TranscriptFinal)
    assert finals[0].reason == "silence"
    assert finals[1].reason == "backlog" and finals[1].text
    # Cut where its queued audio stopped, without a hole: the start of the utterance.
    n = round(finals[1].audio_seconds * RATE)
    assert 0 < n < len(cut)
    text, token_ids = transcribe(slow_engine, cut[:n], delay_ms=settings.engine.delay_ms)
    assert list(finals[1].token_ids) == token_ids and finals[1].text == text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("backlog" in w for w in warnings)
    check_final(finals[-1].to_json(), seconds(sentences[1]), "default")
    for final in finals:
        check_wait(final)
    assert [f.started_at for f in finals] == sorted(f.started_at for f in finals)
    assert len({f.utterance_id for f in finals}) == len(finals)


# -- the wake-word gate ([wakeword], the real okay_nabu model) -----------------------------

WAKE_PAUSE_S = 0.4  # a short pause after the wake phrase, shorter than the hangover


@pytest.fixture(scope="module")
def wake_phrase() -> np.ndarray:
    pytest.importorskip("pymicro_wakeword")
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return trim_silence(synth("okay nabu", voice="en-us", wpm=160))  # measured: p = 0.988


def wake_settings(open_s: float = 5.0, **mqtt: Any) -> Settings:
    return Settings(
        wakeword=WakewordSettings(enabled=True, open_s=open_s),
        **({"mqtt": MqttSettings(**mqtt)} if mqtt else {}),
    )


def all_read(source: ArraySource, pipeline: Pipeline, total: int) -> None:
    wait_until(lambda: pipeline.samples_read >= total, WAIT_S, "audio read")


def test_wake_word_gate_transcribes_only_the_speech_after_the_wake_word(
    engine: Engine, sentences: list[np.ndarray], wake_phrase: np.ndarray
) -> None:
    short, medium, long = sentences
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, engine, [recorder], settings=wake_settings())
    pipeline.start()
    pushed = 0

    def push(x: np.ndarray) -> None:
        nonlocal pushed
        source.push(x)
        pushed += len(x)

    try:
        # Speech without the wake word: not fed to the engine at all.
        push(silence(LEAD_S))
        push(medium)
        push(silence(GAP_S))
        all_read(source, pipeline, pushed)
        assert recorder.of(WakeWordDetected) == []
        assert [s.state for s in recorder.of(StateChanged)] == ["idle"]

        # The wake word, a short pause, the command: transcribed, without the phrase.
        push(wake_phrase)
        push(silence(WAKE_PAUSE_S))
        push(short)
        push(silence(GAP_S))
        wait_until(lambda: recorder.of(TranscriptFinal), WAIT_S, "a final")

        # The next speech needs the wake word again.
        push(long)
        push(silence(GAP_S))
        all_read(source, pipeline, pushed)
        wait_until(lambda: pipeline.state == "idle", WAIT_S, "idle")
    finally:
        pipeline.stop(flush=True)
    (wake,) = recorder.of(WakeWordDetected)
    assert wake.wake_word == "okay_nabu" and 0.85 < wake.probability <= 1.0
    assert pipeline.wake_detections == 1
    (final,) = recorder.of(TranscriptFinal)
    check_final(final.to_json(), seconds(short), "default")
    # The utterance starts at the detection (after the phrase): its audio is the
    # rest of the pause, the command and the hangover, never the phrase too.
    hangover_s = Settings().endpoint.hangover_ms / 1000
    assert final.audio_seconds < WAKE_PAUSE_S + seconds(short) + hangover_s + 0.2
    assert final.audio_seconds < seconds(wake_phrase) + seconds(short) + hangover_s
    # The detection goes out before anything of the utterance it admits.
    events = recorder.events
    first_speaking = next(
        i for i, e in enumerate(events) if isinstance(e, StateChanged) and e.state == "speaking"
    )
    assert events.index(wake) < first_speaking
    assert [s.state for s in recorder.of(StateChanged)] == [
        "idle",
        "speaking",
        "processing",
        "idle",
    ]


def test_wake_word_gate_shuts_after_open_s_and_ignores_muted_audio(
    engine: Engine, sentences: list[np.ndarray], wake_phrase: np.ndarray
) -> None:
    short = sentences[0]
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, engine, [recorder], settings=wake_settings(open_s=1.0))
    pipeline.start()
    try:
        # Speech later than open_s after the wake word: not transcribed.
        source.push(silence(LEAD_S))
        source.push(wake_phrase)
        source.push(silence(2.5))
        source.push(short)
        source.push(silence(GAP_S))
        wait_until(lambda: pipeline.wake_detections == 1, WAIT_S, "a detection")
        wait_until(lambda: source.pending == 0, WAIT_S, "audio consumed")
        # Muted: the detector hears nothing either.
        pipeline.command("mute")
        wait_until(lambda: pipeline.state == "muted", WAIT_S, "muted")
        read = pipeline.samples_read
        source.push(wake_phrase)
        source.push(silence(WAKE_PAUSE_S))
        source.push(short)
        source.push(silence(GAP_S))
        all_read(source, pipeline, read + len(wake_phrase) + len(short))
        wait_until(lambda: source.pending == 0, WAIT_S, "muted audio consumed")
    finally:
        pipeline.stop(flush=True)
    assert pipeline.wake_detections == 1
    assert recorder.of(TranscriptFinal) == []
    assert "speaking" not in [s.state for s in recorder.of(StateChanged)]


def test_wake_word_on_mqtt_before_its_final(
    engine: Engine,
    sentences: list[np.ndarray],
    wake_phrase: np.ndarray,
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tmp_path: Path,
) -> None:
    settings = wake_settings(
        host=mqtt_broker.host,
        port=mqtt_broker.port,
        site="wake",
        reconnect_min_s=1.0,
        reconnect_max_s=1.0,
        stats_interval_s=0.5,
        discovery=DiscoverySettings(enabled=False),
    )
    topics = Topics.from_settings(settings.mqtt)
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    collector.wait_subscribed()
    source = ArraySource()
    pipeline = Pipeline(source, engine, settings=settings)
    sink = MqttSink(settings.mqtt, tmp_path / "state", on_command=pipeline.command)
    pipeline.add_sink(sink)
    try:
        wait_until(lambda: sink.connected, WAIT_S, "MQTT connected")
        pipeline.start()
        before = time.time()
        source.push(silence(LEAD_S))
        source.push(wake_phrase)
        source.push(silence(WAKE_PAUSE_S))
        source.push(sentences[0])
        source.push(silence(GAP_S))
        (wake,) = collector.wait_count(topics.wake, 1, WAIT_S)
        final = collector.wait_count(topics.final, 1, WAIT_S)[0].json()
        wait_until(
            lambda: any(p.get("wake_detections") == 1 for p in collector.payloads(topics.stats)),
            WAIT_S,
            "stats counting the detection",
        )
    finally:
        pipeline.stop(flush=True)
        sink.close()
    assert topics.wake == "voxd/wake/wake"
    assert (wake.qos, wake.retain) == (1, False)
    payload = wake.json()
    assert set(payload) == {"wake_word", "probability", "at"}
    assert payload["wake_word"] == "okay_nabu" and 0.85 < payload["probability"] <= 1.0
    assert before <= payload["at"] <= time.time()
    check_final(final, seconds(sentences[0]), "wake")
    topics_in_order = [m.topic for m in collector.messages() if m.topic != topics.stats]
    assert topics_in_order.index(topics.wake) < topics_in_order.index(topics.final)


def test_wake_word_then_command_without_a_pause(
    engine: Engine, sentences: list[np.ndarray], wake_phrase: np.ndarray
) -> None:
    """The endpointer restarts at the detection, so speech running on from the
    wake phrase still becomes an utterance (its first moments may be cut while
    the endpointer learns the level again), and the phrase is not in it."""
    short = sentences[0]
    source = ArraySource()
    recorder = Recorder()
    pipeline = Pipeline(source, engine, [recorder], settings=wake_settings())
    pipeline.start()
    try:
        source.push(silence(LEAD_S))
        source.push(np.concatenate([wake_phrase, short]))
        source.push(silence(GAP_S))
        wait_until(lambda: recorder.of(TranscriptFinal), WAIT_S, "a final")
    finally:
        pipeline.stop(flush=True)
    assert pipeline.wake_detections == 1
    (final,) = recorder.of(TranscriptFinal)
    assert final.text and final.reason == "silence"
    hangover_s = Settings().endpoint.hangover_ms / 1000
    assert final.audio_seconds < seconds(short) + hangover_s + 0.2
