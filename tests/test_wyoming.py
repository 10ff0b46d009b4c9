"""voxd's Wyoming speech-to-text server, driven the way Home Assistant drives it.

Real parts only: the client is the ``wyoming`` package's AsyncTcpClient on
loopback (connect, transcribe, audio-start, chunks, audio-stop, read until the
transcript, as homeassistant/components/wyoming/stt.py does), the engine runs
the tiny random model, the speech comes from espeak-ng, the zeroconf browser is
zeroconf's own, bound to 127.0.0.1 so nothing leaves the machine. Expected
texts come from :func:`voxd.engine.transcribe` (and ``voxd transcribe``) on the
same audio converted by voxd's resampler. Waits poll with generous deadlines;
no durations are asserted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_mqtt import free_port, wait_until
from speech import SENTENCES, have_espeak, synth
from test_daemon import (  # noqa: F401 (fixtures)
    Daemon,
    FifoMic,
    NotifySocket,
    daemons,
    fifo_mic,
    notify_socket,
    start_daemon,
    write_config,
)
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

from voxd import cli
from voxd.config import ConfigError, EngineSettings, WyomingSettings, load_settings
from voxd.endpoint import trailing_silence
from voxd.engine import Engine, transcribe
from voxd.resample import resample
from voxd.wyoming.server import (
    LANGUAGES,
    ROUND_SAMPLES,
    AsrSession,
    EngineWorker,
    PcmFormat,
    WyomingServer,
    WyomingStartError,
)
from voxd.wyoming.zeroconf import Advertisement

WAIT_S = 60.0
HOST = "127.0.0.1"
_DTYPES = {1: "u1", 2: "<i2", 4: "<i4"}

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")


# -- audio --------------------------------------------------------------------------------


def to_pcm(x: np.ndarray, width: int) -> bytes:
    """Float samples (frames,) or (frames, channels) as interleaved PCM of ``width`` bytes."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    if width == 1:
        return (np.round(x * 127.0) + 128).astype("u1").tobytes()
    if width == 2:
        return np.round(x * 32767.0).astype("<i2").tobytes()
    return np.round(x * 2147483647.0).astype("<i4").tobytes()


def heard(pcm: bytes, rate: int, width: int, channels: int) -> np.ndarray:
    """What the engine gets from this PCM: voxd's resampler, in one go."""
    samples = np.frombuffer(pcm, dtype=_DTYPES[width])
    return resample(samples, rate, 16000, channels=channels)


@pytest.fixture(scope="module")
def voices() -> dict[str, np.ndarray]:
    """The test sentences at 48 kHz (espeak-ng, resampled by the test's own FFT)."""
    return {name: synth(text, rate=48000) for name, text in SENTENCES.items()}


@pytest.fixture(scope="module")
def speech16() -> dict[str, np.ndarray]:
    return {name: synth(text) for name, text in SENTENCES.items()}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    with Engine(tiny_model_dir) as e:
        yield e


def offline(engine: Engine, pcm: bytes, rate: int = 16000, width: int = 2, ch: int = 1) -> str:
    """`voxd transcribe --pad-after-speech` of the audio the server hears."""
    audio = heard(pcm, rate, width, ch)
    text, _ = transcribe(engine, audio, silence=trailing_silence(audio))
    assert text, "the tiny model says nothing for this audio: the comparison would be empty"
    return text


# -- the server ---------------------------------------------------------------------------


ServerFactory = Callable[..., WyomingServer]


@pytest.fixture
def wyoming_server(engine: Engine, tiny_model_dir: Path) -> Iterator[ServerFactory]:
    """Start servers on loopback with the given [wyoming] settings; stopped afterwards."""
    started: list[WyomingServer] = []

    def start(**overrides: Any) -> WyomingServer:
        values: dict[str, Any] = {"enabled": True, "host": HOST, "port": free_port()}
        values["zeroconf"] = False
        values.update(overrides)
        server = WyomingServer(
            WyomingSettings(**values), engine, EngineSettings(model_dir=tiny_model_dir)
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- a client, as Home Assistant's Wyoming integration -------------------------------------


async def read(client: AsyncTcpClient) -> Event | None:
    return await asyncio.wait_for(client.read_event(), WAIT_S)


async def send_audio(
    client: AsyncTcpClient, pcm: bytes, rate: int, width: int, ch: int, chunk: int = 1024
) -> None:
    step = chunk * width * ch
    for i in range(0, len(pcm), step):
        piece = pcm[i : i + step]
        event = AudioChunk(rate=rate, width=width, channels=ch, audio=piece).event()
        await client.write_event(event)


async def request(
    client: AsyncTcpClient, pcm: bytes, rate: int = 16000, width: int = 2, ch: int = 1
) -> list[Event]:
    """One transcription on an open connection: every event it got, up to transcript-stop."""
    await client.write_event(Transcribe(language="en").event())
    await client.write_event(AudioStart(rate=rate, width=width, channels=ch).event())
    await send_audio(client, pcm, rate, width, ch)
    await client.write_event(AudioStop().event())
    return await replies(client)


async def replies(client: AsyncTcpClient) -> list[Event]:
    events: list[Event] = []
    while True:
        event = await read(client)
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
        if TranscriptStop.is_type(event.type):
            return events


async def ha_transcribe(
    port: int, pcm: bytes, rate: int = 16000, width: int = 2, ch: int = 1
) -> list[Event]:
    async with AsyncTcpClient(HOST, port) as client:
        return await request(client, pcm, rate, width, ch)


def final_of(events: list[Event]) -> str:
    """The final text, after checking the reply's shape: start, chunks, final, stop."""
    types = [e.type for e in events]
    assert types[0] == "transcript-start", types
    assert types[-2:] == ["transcript", "transcript-stop"], types
    assert set(types[1:-2]) <= {"transcript-chunk"}, types
    final = Transcript.from_event(events[-2]).text
    chunks = [TranscriptChunk.from_event(e).text for e in events[1:-2]]
    assert chunks, "no transcript-chunk before the final"
    assert "".join(chunks).strip() == final
    return final


# -- describe, one request, two requests ---------------------------------------------------


def test_describe_answers_info(wyoming_server: ServerFactory) -> None:
    server = wyoming_server()

    async def go() -> Info:
        async with AsyncTcpClient(HOST, server.settings.port) as client:
            await client.write_event(Describe().event())
            event = await read(client)
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    info = asyncio.run(go())
    (asr,) = info.asr
    assert asr.name == "voxd" and asr.installed and asr.supports_transcript_streaming
    assert "Mistral AI" in asr.attribution.name
    assert asr.attribution.url.startswith("https://huggingface.co/mistralai/")
    (model,) = asr.models
    assert model.installed and sorted(model.languages) == sorted(LANGUAGES)
    assert len(model.languages) == 13


def test_request_like_home_assistant_matches_offline(
    wyoming_server: ServerFactory, engine: Engine, speech16: dict[str, np.ndarray]
) -> None:
    server = wyoming_server()
    pcm = to_pcm(speech16["hello"], 2)
    events = asyncio.run(ha_transcribe(server.settings.port, pcm))
    assert final_of(events) == offline(engine, pcm)


def test_next_connections_stream_is_readied_between_requests(
    wyoming_server: ServerFactory, engine: Engine, speech16: dict[str, np.ndarray]
) -> None:
    """The worker prepares a stream ahead; a request on it reads as on a fresh one."""
    server = wyoming_server()
    wait_until(server.stream_ready, what="a stream readied at start")
    pcm = to_pcm(speech16["numbers"], 2)
    assert final_of(asyncio.run(ha_transcribe(server.settings.port, pcm))) == offline(engine, pcm)
    wait_until(server.stream_ready, what="a stream readied again after the request")
    assert final_of(asyncio.run(ha_transcribe(server.settings.port, pcm))) == offline(engine, pcm)


def test_two_utterances_on_one_connection(
    wyoming_server: ServerFactory, engine: Engine, speech16: dict[str, np.ndarray]
) -> None:
    server = wyoming_server()
    first, second = to_pcm(speech16["numbers"], 2), to_pcm(speech16["weather"], 2)

    async def go() -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient(HOST, server.settings.port) as client:
            return await request(client, first), await request(client, second)

    a, b = asyncio.run(go())
    # audio-stop is a non-terminal flush: the second utterance reads as a fresh stream would
    assert final_of(a) == offline(engine, first)
    assert final_of(b) == offline(engine, second)


@pytest.mark.parametrize(("rate", "width", "ch"), [(48000, 2, 2), (8000, 1, 1), (44100, 4, 1)])
def test_any_rate_width_and_channels_are_converted(
    wyoming_server: ServerFactory,
    engine: Engine,
    voices: dict[str, np.ndarray],
    rate: int,
    width: int,
    ch: int,
) -> None:
    x48 = voices["hello"]
    x = x48 if rate == 48000 else resample(x48, 48000, rate)
    if ch == 2:  # the other channel quieter: the mix is not just one of them
        x = np.stack([x, 0.3 * x], axis=1)
    pcm = to_pcm(x, width)
    server = wyoming_server()
    events = asyncio.run(ha_transcribe(server.settings.port, pcm, rate, width, ch))
    assert final_of(events) == offline(engine, pcm, rate, width, ch)


def test_four_clients_at_once_each_get_their_own_text(
    wyoming_server: ServerFactory, engine: Engine, speech16: dict[str, np.ndarray]
) -> None:
    server = wyoming_server(max_clients=4)
    audios = [to_pcm(speech16[n], 2) for n in ("hello", "numbers", "weather")]
    audios.append(to_pcm(0.5 * speech16["hello"], 2))
    expected = [offline(engine, pcm) for pcm in audios]

    async def go() -> list[list[Event]]:
        return list(await asyncio.gather(*(ha_transcribe(server.settings.port, a) for a in audios)))

    results = asyncio.run(go())
    assert [final_of(events) for events in results] == expected
    wait_until(lambda: server.clients == 0, WAIT_S, "every connection closed")


def test_clients_at_once_share_decoder_passes_and_keep_their_own_text(
    wyoming_server: ServerFactory, engine: Engine, speech16: dict[str, np.ndarray]
) -> None:
    """The engine worker steps the connections' streams together (StreamGroup), bit for bit."""
    server = wyoming_server(max_clients=4)
    port = server.settings.port
    audios = [to_pcm(speech16[n], 2) for n in ("numbers", "weather", "hello")]
    audios.append(to_pcm(0.5 * speech16["numbers"], 2))
    expected = [offline(engine, pcm) for pcm in audios]
    assert server.group_stats() is None  # no round yet
    step = 1024 * 2

    async def go() -> list[list[Event]]:
        clients = [AsyncTcpClient(HOST, port) for _ in audios]
        for client in clients:
            await client.connect()
        try:
            for client in clients:
                await client.write_event(Transcribe(language="en").event())
                await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            # chunk by chunk, client after client: all four have audio queued at once
            for at in range(0, max(len(pcm) for pcm in audios), step):
                for client, pcm in zip(clients, audios, strict=True):
                    if at < len(pcm):
                        await send_audio(client, pcm[at : at + step], 16000, 2, 1)
            for client in clients:
                await client.write_event(AudioStop().event())
            return list(await asyncio.gather(*(replies(c) for c in clients)))
        finally:
            for client in clients:
                await client.disconnect()

    results = asyncio.run(go())
    assert [final_of(events) for events in results] == expected
    stats = server.group_stats()
    assert stats is not None
    assert stats.max_streams >= 2, stats  # some decoder passes stacked several connections
    assert stats.passes < stats.stream_passes, stats
    logging.getLogger(__name__).info("4 clients: %s", stats)


def test_engine_worker_takes_a_bounded_slice_of_each_client_per_round(
    engine: Engine, tiny_model_dir: Path, speech16: dict[str, np.ndarray]
) -> None:
    """A client that sent a long request at once does not hold up the others' rounds."""
    # The worker is not started: its rounds are taken here, one by one (private, read only).
    worker = EngineWorker(engine, EngineSettings(model_dir=tiny_model_dir))
    loop = asyncio.new_event_loop()
    try:
        long, short = AsrSession(worker, "long", loop), AsrSession(worker, "short", loop)
        for session, seconds in ((long, 3.0), (short, 0.2)):
            session.begin(PcmFormat(16000, 2, 1))
            session.feed(to_pcm(np.resize(speech16["numbers"], int(seconds * 16000)), 2))
            session.end()
        taken: dict[str, list[int]] = {"long": [], "short": []}
        flushed: dict[str, list[bool]] = {"long": [], "short": []}
        while any(s.ops for s in (long, short)):
            for w in worker._take() or []:
                taken[w.session.name].append(sum(a.size for a in w.audio))
                flushed[w.session.name].append(w.flush)
    finally:
        loop.close()
    assert taken["short"] == [3200] and flushed["short"] == [True]  # all of it, in round one
    assert taken["long"][0] == ROUND_SAMPLES and max(taken["long"]) == ROUND_SAMPLES
    assert sum(taken["long"]) >= 3 * 16000
    assert len(taken["long"]) == -(-sum(taken["long"]) // ROUND_SAMPLES)
    assert flushed["long"] == [False] * (len(flushed["long"]) - 1) + [True]


# -- limits and bad input -----------------------------------------------------------------------


async def expect_error_then_close(reader: asyncio.StreamReader) -> Error:
    """The server's answer to bad input: an error event, then the end of the connection."""
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(async_read_event(reader), WAIT_S)
        if event is None:
            break
        events.append(event)
    errors = [Error.from_event(e) for e in events if Error.is_type(e.type)]
    assert errors, f"no error event, got {[e.type for e in events]}"
    return errors[-1]


def test_more_clients_than_the_limit_are_refused_with_the_reason(
    wyoming_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = wyoming_server(max_clients=2)
    port = server.settings.port

    async def describe(client: AsyncTcpClient) -> None:
        await client.write_event(Describe().event())
        event = await read(client)
        assert event is not None and Info.is_type(event.type)

    async def go() -> Error:
        async with AsyncTcpClient(HOST, port) as one, AsyncTcpClient(HOST, port) as two:
            await describe(one)
            await describe(two)
            reader, writer = await asyncio.open_connection(HOST, port)
            error = await expect_error_then_close(reader)
            writer.close()
        return error

    with caplog.at_level(logging.WARNING, logger="voxd.wyoming.server"):
        error = asyncio.run(go())
    assert error.code == "too-many-clients"
    assert "wyoming.max_clients = 2" in error.text
    assert any("refused" in r.getMessage() for r in caplog.records)

    # The two closed: a slot is free again.
    wait_until(lambda: server.clients == 0, WAIT_S, "the two connections to be closed")

    async def again() -> None:
        async with AsyncTcpClient(HOST, port) as client:
            await describe(client)

    asyncio.run(again())


def header(event_type: str, data: dict[str, Any] | None = None, **lengths: int) -> bytes:
    """A raw event header line, for what AsyncTcpClient would never send."""
    head: dict[str, Any] = {"type": event_type, **lengths}
    if data is not None:
        head["data"] = data
    return json.dumps(head).encode() + b"\n"


def chunk_header(payload_length: int, **data: Any) -> bytes:
    fmt = {"rate": 16000, "width": 2, "channels": 1, **data}
    return header("audio-chunk", fmt, payload_length=payload_length)


_START = header("transcribe") + header("audio-start", {"rate": 16000, "width": 2, "channels": 1})

# What a broken client sends, the error code it gets, and words of the reason.
BAD_INPUT = {
    "garbage": (b"GET / HTTP/1.1\r\nHost: voxd\r\n\r\n", "bad-event", "not a Wyoming event"),
    "json_not_an_object": (b"[1, 2, 3]\n", "bad-event", "no type"),
    "huge_payload": (_START + chunk_header(2**40), "bad-event", "payload_length"),
    "huge_data": (header("transcribe", data_length=2**31), "bad-event", "data_length"),
    "data_not_json": (header("transcribe", data_length=5) + b"hello", "bad-event", "data block"),
    "width_3": (
        header("audio-start", {"rate": 16000, "width": 3, "channels": 1}),
        "bad-audio",
        "width 3",
    ),
    "rate_0": (
        header("audio-start", {"rate": 0, "width": 2, "channels": 1}),
        "bad-audio",
        "rate 0",
    ),
    "odd_rate": (
        header("audio-start", {"rate": 44101, "width": 2, "channels": 1}),
        "bad-audio",
        "rate 44101",
    ),
    "no_audio_start": (chunk_header(4) + b"\0\0\0\0", "no-audio-start", "without audio-start"),
    "stop_without_start": (header("audio-stop"), "no-audio-start", "without audio-start"),
    "half_frame": (_START + chunk_header(3) + b"\0\0\0", "bad-audio", "whole number"),
    "format_change": (
        _START + chunk_header(4, rate=48000) + b"\0\0\0\0",
        "bad-audio",
        "its audio-start said",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_an_error_and_loses_no_other_clients_work(
    case: str,
    wyoming_server: ServerFactory,
    engine: Engine,
    speech16: dict[str, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent, code, words = BAD_INPUT[case]
    server = wyoming_server()
    port = server.settings.port
    good = to_pcm(speech16["weather"], 2)

    async def bad_client() -> Error:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(sent)
        await writer.drain()
        try:
            return await expect_error_then_close(reader)
        finally:
            writer.close()

    async def go() -> tuple[list[Event], Error]:
        async with AsyncTcpClient(HOST, port) as client:
            # a request in progress while the broken client comes and goes
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            half = len(good) // 2 // 2 * 2
            await send_audio(client, good[:half], 16000, 2, 1)
            error = await bad_client()
            await send_audio(client, good[half:], 16000, 2, 1)
            await client.write_event(AudioStop().event())
            return await replies(client), error

    with caplog.at_level(logging.WARNING, logger="voxd.wyoming.server"):
        events, error = asyncio.run(go())
    assert error.code == code
    assert words in error.text
    logged = [r.getMessage() for r in caplog.records if "closing the connection" in r.getMessage()]
    assert any(words in m for m in logged), logged
    assert final_of(events) == offline(engine, good)


def test_client_that_disconnects_mid_utterance_is_dropped(
    wyoming_server: ServerFactory,
    engine: Engine,
    speech16: dict[str, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = wyoming_server()
    port = server.settings.port
    pcm = to_pcm(speech16["numbers"], 2)
    # Counted once the worker has readied the next connection's stream, as it
    # will have again after the drop: the count is then the same, or a stream leaked.
    wait_until(server.stream_ready, WAIT_S, "a stream readied at start")
    streams_before = len(engine._streams)  # the engine's open streams (private, read only)

    async def go() -> None:
        async with AsyncTcpClient(HOST, port) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await send_audio(client, pcm[: len(pcm) // 2 // 2 * 2], 16000, 2, 1)
            # gone without audio-stop

    with caplog.at_level(logging.WARNING, logger="voxd.wyoming.server"):
        asyncio.run(go())
        wait_until(
            lambda: any("middle of a request" in r.getMessage() for r in caplog.records),
            WAIT_S,
            "the log line about the dropped request",
        )
    wait_until(lambda: server.clients == 0, WAIT_S, "the connection to be released")
    wait_until(
        lambda: server.stream_ready() and len(engine._streams) == streams_before,
        WAIT_S,
        "its stream closed and the next one readied",
    )
    # The server goes on serving, from a fresh stream.
    events = asyncio.run(ha_transcribe(port, pcm))
    assert final_of(events) == offline(engine, pcm)


def test_silent_client_is_closed_by_the_idle_timeout(
    wyoming_server: ServerFactory, speech16: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    server = wyoming_server(idle_timeout_s=0.5)
    pcm = to_pcm(speech16["hello"], 2)

    async def go() -> Error:
        reader, writer = await asyncio.open_connection(HOST, server.settings.port)
        writer.write(_START + chunk_header(3200) + pcm[:3200])  # then nothing, no audio-stop
        await writer.drain()
        try:
            return await expect_error_then_close(reader)
        finally:
            writer.close()

    with caplog.at_level(logging.WARNING, logger="voxd.wyoming.server"):
        error = asyncio.run(go())
    assert error.code == "idle-timeout" and "wyoming.idle_timeout_s" in error.text
    assert any("request" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    wait_until(lambda: server.clients == 0, WAIT_S, "the connection to be released")


def test_request_longer_than_the_limit_is_cut_there(
    wyoming_server: ServerFactory,
    engine: Engine,
    speech16: dict[str, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = wyoming_server(max_audio_s=1.0)
    pcm = to_pcm(speech16["hello"], 2)
    assert len(pcm) > 2 * 16000 * 2  # longer than the limit
    second = to_pcm(speech16["numbers"], 2)[: 16000 * 2]  # one second: within it

    async def go() -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient(HOST, server.settings.port) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await send_audio(client, pcm, 16000, 2, 1)
            cut = await replies(client)  # the answer comes without audio-stop
            await client.write_event(AudioStop().event())
            return cut, await request(client, second)  # and the connection goes on

    with caplog.at_level(logging.WARNING, logger="voxd.wyoming.server"):
        cut, after = asyncio.run(go())
    assert final_of(cut) == offline(engine, pcm[: 16000 * 2])
    assert final_of(after) == offline(engine, second)
    assert any("wyoming.max_audio_s" in r.getMessage() for r in caplog.records)


def test_stream_the_engine_refuses_is_an_engine_error_for_that_client(
    engine: Engine, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A delay the engine refuses, past the config check (which would reject it first):
    # the engine worker's Engine.stream fails, and only that connection is told.
    bad = EngineSettings.model_construct(
        **{**EngineSettings(model_dir=tiny_model_dir).model_dump(), "delay_ms": 1}
    )
    port = free_port()
    server = WyomingServer(
        WyomingSettings(enabled=True, host=HOST, port=port, zeroconf=False), engine, bad
    )
    server.start()
    try:

        async def go() -> Error:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(_START + chunk_header(3200) + bytes(3200))
            await writer.drain()
            try:
                return await expect_error_then_close(reader)
            finally:
                writer.close()

        async def describe() -> None:
            async with AsyncTcpClient(HOST, port) as client:
                await client.write_event(Describe().event())
                event = await read(client)
                assert event is not None and Info.is_type(event.type)

        with caplog.at_level(logging.WARNING, logger="voxd.wyoming.server"):
            error = asyncio.run(go())
        assert error.code == "engine-error" and "delay_ms 1" in error.text
        assert any("delay_ms 1" in r.getMessage() for r in caplog.records)
        # the stream it readies ahead fails the same way, and it says so once
        def ahead() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "cannot ready a stream ahead" in r.getMessage()]

        wait_until(ahead, what="the warning about the stream readied ahead")
        assert len(ahead()) == 1 and not server.stream_ready()
        asyncio.run(describe())  # the server goes on
    finally:
        server.stop()


def test_port_in_use_is_a_clear_start_error(
    wyoming_server: ServerFactory, engine: Engine, tiny_model_dir: Path
) -> None:
    first = wyoming_server()
    second = WyomingServer(
        WyomingSettings(enabled=True, host=HOST, port=first.settings.port, zeroconf=False),
        engine,
        EngineSettings(model_dir=tiny_model_dir),
    )
    with pytest.raises(WyomingStartError, match=rf"{HOST}:{first.settings.port}.*wyoming\.port"):
        second.start()
    second.stop()


# -- zeroconf -----------------------------------------------------------------------------------


def test_zeroconf_advertisement_is_seen_by_a_browser(wyoming_server: ServerFactory) -> None:
    name = f"voxd-test-{os.getpid()}"  # unique among test runs on this machine
    server = wyoming_server(zeroconf=True, zeroconf_name=name)
    port = server.settings.port
    seen: list[tuple[str, ServiceStateChange]] = []

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        seen.append((name, state_change))

    full = f"{name}._wyoming._tcp.local."
    zc = Zeroconf(interfaces=[HOST], ip_version=IPVersion.V4Only)  # loopback only
    try:
        browser = ServiceBrowser(zc, "_wyoming._tcp.local.", handlers=[on_change])
        wait_until(lambda: (full, ServiceStateChange.Added) in seen, WAIT_S, f"{full} browsed")
        info = zc.get_service_info("_wyoming._tcp.local.", full, timeout=int(WAIT_S * 1000))
        assert info is not None
        assert info.port == port and info.parsed_addresses() == [HOST]

        async def describe() -> Info:  # what Home Assistant does with a discovered service
            async with AsyncTcpClient(info.parsed_addresses()[0], info.port or 0) as client:
                await client.write_event(Describe().event())
                event = await read(client)
                assert event is not None
                return Info.from_event(event)

        assert asyncio.run(describe()).asr[0].name == "voxd"
        server.stop()  # withdraws the service
        wait_until(lambda: (full, ServiceStateChange.Removed) in seen, WAIT_S, "goodbye")
        browser.cancel()
    finally:
        zc.close()


def test_advertisement_withdrawn_at_once_leaves_no_announcement_running() -> None:
    """A server stopped within a second of starting (a restart, a failed start)
    cancels its pending announcements: nothing is left on the loop to be
    destroyed when it closes ("Task was destroyed but it is pending")."""

    async def go() -> list[str]:
        advert = Advertisement(f"voxd-test-{os.getpid()}-quick", HOST, free_port())
        await advert.start()
        await advert.stop()  # before its announcements (about a second apart) are sent
        me = asyncio.current_task()
        return [repr(t.get_coro()) for t in asyncio.all_tasks() if t is not me and not t.done()]

    left = asyncio.run(go())
    assert not [c for c in left if "broadcast" in c], left


# -- configuration ------------------------------------------------------------------------------


def test_wyoming_settings_defaults_and_bad_values(tmp_path: Path) -> None:
    w = WyomingSettings()
    assert (w.enabled, w.host, w.port, w.zeroconf) == (False, "0.0.0.0", 10300, True)
    path = tmp_path / "voxd.toml"
    path.write_text('[wyoming]\nport = 0\nzeroconf_name = "a.b"\nmax_clients = 0\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = str(err.value)
    assert "wyoming.port: 0 is not allowed: must be at least 1 and at most 65535" in text
    assert "wyoming.zeroconf_name" in text and "no '.'" in text
    assert "wyoming.max_clients: 0" in text


# -- the daemon ---------------------------------------------------------------------------------


def test_daemon_serves_wyoming_beside_its_microphone(
    fifo_mic: FifoMic,  # noqa: F811
    notify_socket: NotifySocket,  # noqa: F811
    daemons: list[Daemon],  # noqa: F811
    tiny_model_dir: Path,
    speech16: dict[str, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=None)
    config.write_text(
        config.read_text() + f'[wyoming]\nenabled = true\nhost = "{HOST}"\nport = {port}\n'
        "zeroconf = false\n"
    )
    pcm = to_pcm(speech16["hello"], 2)
    wav = tmp_path / "hello.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    assert cli.main(["transcribe", str(wav), "--model-dir", str(tiny_model_dir), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["text"]
    assert expected

    d = start_daemon(daemons, config, tmp_path, notify_socket)
    events = asyncio.run(ha_transcribe(port, pcm))
    assert final_of(events) == expected
    assert d.terminate() == 0
    err = d.stderr()
    assert f"Wyoming speech-to-text server listening on {HOST}:{port}" in err
    assert "Wyoming server stopped" in err and "voxd stopped" in err
