"""What a Home Assistant voice request waits for its text from voxd's Wyoming server.

A Wyoming client (the `wyoming` package's AsyncTcpClient, driven as Home
Assistant drives it) sends espeak-ng commands to voxd's Wyoming server at the
pace a satellite streams them (real time, 80 ms chunks), and times
``audio-stop`` -> ``transcript``: the engine's remaining lag plus its flush,
the same parts as the MQTT path's ``lag_s + flush_s`` (bench/e2e_wait.py).
Each request is the command (espeak-ng's own silence trimmed) and then
``--trailing-silence-s`` of -60 dBFS room noise: Home Assistant sends
``audio-stop`` once its voice activity detection heard that much silence
(0.7 s at its default sensitivity, 0.25 s aggressive, 1.25 s relaxed), which
is the client's hangover; ``speech_end_s`` adds it to the wait. Each request
starts once the server is idle with the next connection's stream readied
(its prompt prefill done, as between two voice commands a user speaks);
``ready_s`` is how long that took after the previous request's transcript.

    PYTHONPATH=. python bench/wyoming_latency.py --model-dir DIR [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from tests.fixtures_mqtt import free_port
from tests.speech import synth, trim_silence
from voxd.config import EngineSettings, WyomingSettings
from voxd.engine import Engine
from voxd.events import SAMPLE_RATE
from voxd.tools.bench import hangover_noise
from voxd.wyoming.server import WyomingServer

HOST = "127.0.0.1"
CHUNK_S = 0.08
COMMANDS = ("turn on the kitchen light", "set the timer for ten minutes")
REPLY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Request:
    command: str
    speech_s: float
    trailing_s: float  # silence sent after the speech, before audio-stop
    wait_s: float  # audio-stop sent -> transcript received
    speech_end_s: float  # end of the speech -> transcript (trailing_s + wait_s)
    text_chars: int
    ready_s: float = 0.0  # previous transcript -> the server's next stream readied


def _pcm(x: np.ndarray) -> bytes:
    return bytes((np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


async def _one(port: int, command: str, speech: np.ndarray, trailing_s: float) -> Request:
    pcm = _pcm(np.concatenate([speech, hangover_noise(round(trailing_s * 1000))]))
    step = int(CHUNK_S * SAMPLE_RATE) * 2
    async with AsyncTcpClient(HOST, port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
        start = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            chunk = AudioChunk(rate=SAMPLE_RATE, width=2, channels=1, audio=pcm[i : i + step])
            await client.write_event(chunk.event())
            await asyncio.sleep(max(0.0, start + (n + 1) * CHUNK_S - time.monotonic()))
        await client.write_event(AudioStop().event())
        stopped = time.monotonic()
        while True:
            event = await asyncio.wait_for(client.read_event(), REPLY_TIMEOUT_S)
            if event is None:
                raise RuntimeError("the server closed the connection before the transcript")
            if Transcript.is_type(event.type):
                waited = time.monotonic() - stopped
                text = Transcript.from_event(event).text
                speech_s = len(speech) / SAMPLE_RATE
                total = trailing_s + waited
                return Request(command, speech_s, trailing_s, waited, total, len(text))


def _wait_ready(server: WyomingServer) -> float:
    """Seconds until the server has the next connection's stream ready."""
    start = time.monotonic()
    while not server.stream_ready():
        if time.monotonic() - start > REPLY_TIMEOUT_S:
            raise RuntimeError("the server readied no stream (see its log)")
        time.sleep(0.05)
    return time.monotonic() - start


def run(model_dir: Path, threads: int, rounds: int, trailing_s: float) -> list[Request]:
    engine = Engine(model_dir, threads=threads)
    settings = WyomingSettings(enabled=True, host=HOST, port=free_port(), zeroconf=False)
    server = WyomingServer(settings, engine, EngineSettings(model_dir=model_dir, threads=threads))
    server.start()
    try:
        speech = {c: trim_silence(synth(c)) for c in COMMANDS}
        results: list[Request] = []
        for _ in range(rounds):
            for c in COMMANDS:
                ready_s = _wait_ready(server)
                r = asyncio.run(_one(settings.port, c, speech[c], trailing_s))
                results.append(replace(r, ready_s=ready_s))
        return results
    finally:
        server.stop()
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--rounds", type=int, default=2, help="times each command is sent")
    parser.add_argument(
        "--trailing-silence-s",
        type=float,
        default=0.7,
        help="silence after each command before audio-stop (Home Assistant's default: 0.7)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.model_dir, args.threads, args.rounds, args.trailing_silence_s)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    print(
        f"{'#':>2} {'ready s':>7} {'speech s':>8} {'silence s':>9} {'wait s':>7} "
        f"{'from speech s':>13}  command"
    )
    for n, r in enumerate(results, 1):
        print(
            f"{n:>2} {r.ready_s:7.2f} {r.speech_s:8.2f} {r.trailing_s:9.2f} {r.wait_s:7.2f} "
            f"{r.speech_end_s:13.2f}  {r.command}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
