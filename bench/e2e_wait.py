"""What a user waits for, end to end: from the end of a spoken command to its final on MQTT.

Everything is real and runs as it would on a board: a mosquitto broker on a
free loopback port, the daemon as a subprocess (``python -m voxd run``), and
a microphone made of an ALSA ``file`` PCM whose ``infile`` is a FIFO that a
writer thread feeds at 16 kHz by the clock (20 ms blocks paced with
time.monotonic, silence whenever nothing is said), so the daemon reads audio
exactly as fast as a microphone would deliver it.

After the daemon's READY=1 (a stand-in for systemd's notification socket),
the script plays ``--lead-s`` of silence, then the commands (espeak-ng,
silence trimmed) in turn. After each command the microphone keeps sending
silence until the command is done (its final arrived, or the daemon went
from ``processing`` back to ``idle``) and then ``--gap-s`` more, as a user
who waits for the answer before the next command; ``--timeout-s`` bounds the
wait. The default, four commands, plays the two commands twice: the first
pair shows the cold start, the second the warm figures.

For each command it reports:

* ``wait_s``: the wall-clock time the final arrived at a subscriber of
  ``<root>/transcript/final`` minus the wall-clock time the writer wrote the
  last speech sample of the command into the FIFO (the end of speech as the
  microphone saw it). This is what the user waits.
* the final's own account: ``latency_s`` = ``hangover_s`` + ``lag_s`` +
  ``flush_s``, ``audio_seconds``, ``reason``, its text;
* ``processing_s`` and ``idle_s``: when the ``<root>/state`` topic said
  ``processing`` (the engine caught up with the utterance and flushes it) and
  then ``idle`` again, from the end of speech. A final with no text is not
  published; ``idle_s`` still says when the daemon was done with it.
* ``max_engine_lag_s``: the largest ``engine_lag_s`` of ``<root>/stats``
  seen while the command was under way (the engine's backlog of audio).

The load average of the machine (1 minute) is sampled during the run.

    PYTHONPATH=. python bench/e2e_wait.py --model-dir /path/to/model [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures_mqtt import Mosquitto, find_mosquitto
from tests.speech import have_espeak, synth, trim_silence

REPO = Path(__file__).resolve().parent.parent
RATE = 16000
BLOCK = RATE // 50  # 20 ms: 640 bytes, below PIPE_BUF, so a FIFO write is all or nothing
COMMANDS = ("turn on the kitchen light", "set the timer for ten minutes")
DEVICE = "e2e_mic"
SITE = "e2e"
COVER_TOL_S = 0.5  # a final "covers" a command when it ends at most this before its end
Audio = npt.NDArray[np.float32]


# -- speech --------------------------------------------------------------------------------


def speech(text: str) -> Audio:
    """espeak-ng speech of ``text``, 16 kHz float32, its leading and trailing silence cut,
    so that its last sample is the end of speech."""
    return trim_silence(synth(text, RATE))


# -- the microphone ---------------------------------------------------------------------------


@dataclass
class Spoken:
    """When the microphone played one command (wall clock, unix seconds)."""

    start_wall: float = math.nan
    end_wall: float = math.nan
    done: threading.Event = field(default_factory=threading.Event)


class ClockMic:
    """Writes 20 ms blocks into the FIFO at real time by the clock: speech when queued,
    silence otherwise. Writes never block: when the daemon does not read, the pipe fills
    and audio is dropped (counted), as a real microphone's would be."""

    def __init__(self, fifo: Path) -> None:
        # O_RDWR never blocks on a FIFO and keeps a reader, so writes never get EPIPE.
        self._fd = os.open(fifo, os.O_RDWR)
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._queue: deque[tuple[Audio, Spoken, bool, int]] = deque()
        self._stop = threading.Event()
        self.dropped_blocks = 0
        self.late_blocks = 0  # written more than 100 ms after their time (a busy machine)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="clock-mic", daemon=True)
        self._thread.start()

    def say(self, x: Audio) -> Spoken:
        """Queue speech; the returned record gets its start and end times as it is played."""
        spoken = Spoken()
        n = len(x)
        padded = np.pad(x, (0, -n % BLOCK)).reshape(-1, BLOCK)
        with self._lock:
            for i, block in enumerate(padded):
                last = i == len(padded) - 1
                # samples of padding after the last speech sample in the last block
                pad = (-n % BLOCK) if last else 0
                self._queue.append((block, spoken, i == 0, pad if last else -1))
        return spoken

    def _next(self) -> tuple[Audio, Spoken | None, bool, int]:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return np.zeros(BLOCK, np.float32), None, False, -1

    def _run(self) -> None:
        start = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            # Block k holds the audio of [k, k+1) * 20 ms: a microphone delivers it at its end.
            due = int((time.monotonic() - start) / 0.02)
            while sent < due and not self._stop.is_set():
                if time.monotonic() - (start + (sent + 1) * 0.02) > 0.1:
                    self.late_blocks += 1
                block, spoken, first, pad = self._next()
                self._write(block)
                now = time.time()
                if spoken is not None and first:
                    spoken.start_wall = now - BLOCK / RATE
                if spoken is not None and pad >= 0:
                    spoken.end_wall = now - pad / RATE  # when its last speech sample was heard
                    spoken.done.set()
                sent += 1
            time.sleep(0.005)

    def _write(self, block: Audio) -> None:
        data = np.clip(np.round(block * 32767.0), -32768, 32767).astype("<i2").tobytes()
        try:
            os.write(self._fd, data)
        except BlockingIOError:
            self.dropped_blocks += 1

    def unread_bytes(self) -> int:
        """Bytes written to the FIFO that nobody has read yet."""
        buf = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder, signed=True)

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until the reader has taken what piled up (less than two blocks left)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.unread_bytes() < 2 * BLOCK * 2:  # two blocks of int16
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        os.close(self._fd)


def alsa_config(root: Path, fifo: Path) -> Path:
    """A private ALSA configuration: DEVICE reads the FIFO (through a null slave, which
    paces nothing: the FIFO's writer sets the pace). PortAudio needs a pcm.default."""
    conf = root / "asound.conf"
    conf.write_text(
        f"pcm.{DEVICE} {{\n    type file\n    slave.pcm {{ type null }}\n"
        f'    file "/dev/null"\n    infile "{fifo}"\n    format "raw"\n}}\n'
        "pcm.default {\n    type null\n}\n"
    )
    return conf


# -- what the daemon says ---------------------------------------------------------------------


@dataclass(frozen=True)
class Heard:
    at: float  # wall clock of arrival
    payload: dict[str, Any]


class Listener:
    """Subscribes to the daemon's final, state and stats topics and keeps what arrives."""

    def __init__(self, host: str, port: int, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self.finals: list[Heard] = []
        self.states: list[Heard] = []
        self.stats: list[Heard] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"e2e-wait-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        topics = ("transcript/final", "state", "stats")
        client.subscribe([(f"{self.root}/{t}", 1) for t in topics])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        heard = Heard(now, payload)
        with self._lock:
            if msg.topic.endswith("/transcript/final"):
                self.finals.append(heard)
            elif msg.topic.endswith("/state"):
                self.states.append(heard)
            elif msg.topic.endswith("/stats"):
                self.stats.append(heard)

    def wait_subscribed(self, timeout: float) -> None:
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"could not subscribe to {self.root}/# on the broker")

    def snapshot(self) -> tuple[list[Heard], list[Heard], list[Heard]]:
        with self._lock:
            return list(self.finals), list(self.states), list(self.stats)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class NotifySocket:
    """Stands in for systemd's notification socket: the daemon sends READY=1 to it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """True on READY=1; False when the daemon exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            if "READY=1" in data.decode(errors="replace").splitlines():
                return True
        return False

    def close(self) -> None:
        self._sock.close()


def write_config(work: Path, args: argparse.Namespace, broker: Mosquitto) -> Path:
    threads = f"threads = {args.threads}\n" if args.threads is not None else ""
    text = (
        f'[audio]\ndevice = "{DEVICE}"\nsample_rate = {RATE}\nchannels = 1\n'
        f'[engine]\nmodel_dir = "{Path(args.model_dir).resolve()}"\n{threads}'
        f'[service]\nstate_dir = "{work / "state"}"\nlog_level = "{args.log_level}"\n'
        f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'site = "{SITE}"\nstats_interval_s = {args.stats_interval_s}\n'
        "[mqtt.discovery]\nenabled = false\n"
    )
    path = work / "voxd.toml"
    path.write_text(text)
    return path


@contextmanager
def daemon(config: Path, work: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m voxd run --config`` importing this checkout's voxd; stopped on exit."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environ.pop("JOURNAL_STREAM", None)
    environ.update(env)
    args = [sys.executable, "-m", "voxd", "run", "--config", str(config)]
    with open(work / "daemon.out", "wb") as out, open(work / "daemon.err", "wb") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=environ, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stderr_tail(work: Path, lines: int = 30) -> str:
    try:
        text = (work / "daemon.err").read_text(errors="replace")
    except OSError:
        return "(no daemon log)"
    return "\n".join(text.splitlines()[-lines:])


# -- one command ---------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    command: str
    speech_s: float
    status: str = "ok"  # ok | no_final (the daemon finished it without a final) | timeout
    wait_s: float | None = None
    latency_s: float | None = None
    hangover_s: float | None = None
    lag_s: float | None = None
    flush_s: float | None = None
    audio_seconds: float | None = None
    reason: str | None = None
    text: str | None = None
    tokens: int | None = None  # token ids in the final (the decoder steps it took)
    finals: int = 0  # finals that arrived while this command was under way
    processing_s: float | None = None
    idle_s: float | None = None
    max_engine_lag_s: float | None = None
    load1: float | None = None  # the largest 1-minute load average seen meanwhile


def covering_final(finals: list[Heard], spoken: Spoken) -> Heard | None:
    """The final of the utterance that ends with the command (the last one if several)."""
    mine = [
        f for f in finals if float(f.payload.get("ended_at", 0.0)) >= spoken.end_wall - COVER_TOL_S
    ]
    return mine[-1] if mine else None


def processing_then_idle(states: list[Heard], after: float) -> tuple[float | None, float | None]:
    """Arrival of the first ``processing`` after ``after``, and of the ``idle`` that follows."""
    processing = next(
        (s.at for s in states if s.at >= after and s.payload.get("state") == "processing"), None
    )
    if processing is None:
        return None, None
    idle = next(
        (s.at for s in states if s.at >= processing and s.payload.get("state") == "idle"), None
    )
    return processing, idle


def play_command(
    n: int,
    text: str,
    audio: Audio,
    mic: ClockMic,
    listener: Listener,
    proc: subprocess.Popen[bytes],
    args: argparse.Namespace,
) -> Result:
    result = Result(n, text, round(len(audio) / RATE, 3))
    began = time.time()
    spoken = mic.say(audio)
    load = os.getloadavg()[0]
    while not spoken.done.wait(0.2):
        load = max(load, os.getloadavg()[0])
        if proc.poll() is not None:
            result.status = "daemon_exit"
            return result
    deadline = time.monotonic() + args.timeout_s
    done_at: float | None = None  # monotonic time the command was done
    while True:
        load = max(load, os.getloadavg()[0])
        finals, states, _ = listener.snapshot()
        finals = [f for f in finals if f.at >= began]
        processing, idle = processing_then_idle(states, spoken.end_wall)
        if done_at is None and (covering_final(finals, spoken) is not None or idle is not None):
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at >= args.gap_s:
            break
        if proc.poll() is not None:
            result.status = "daemon_exit"
            break
        if done_at is None and time.monotonic() > deadline:
            result.status = "timeout"
            break
        time.sleep(0.05)
    finals, states, stats = listener.snapshot()
    finals = [f for f in finals if f.at >= began]
    fill(result, spoken, finals, states, stats, began)
    result.load1 = round(load, 2)
    return result


def fill(
    result: Result,
    spoken: Spoken,
    finals: list[Heard],
    states: list[Heard],
    stats: list[Heard],
    began: float,
) -> None:
    end = spoken.end_wall
    result.finals = len(finals)
    processing, idle = processing_then_idle(states, end)
    result.processing_s = None if processing is None else round(processing - end, 3)
    result.idle_s = None if idle is None else round(idle - end, 3)
    lags = [float(s.payload.get("engine_lag_s", 0.0)) for s in stats if s.at >= began]
    result.max_engine_lag_s = round(max(lags), 3) if lags else None
    final = covering_final(finals, spoken)
    if final is None:
        if result.status == "ok":
            result.status = "no_final"
        return
    p = final.payload
    result.wait_s = round(final.at - end, 3)
    for key in ("latency_s", "hangover_s", "lag_s", "flush_s", "audio_seconds"):
        setattr(result, key, round(float(p.get(key, math.nan)), 3))
    result.reason = str(p.get("reason"))
    result.text = str(p.get("text"))
    result.tokens = len(p.get("token_ids", []))


# -- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SystemExit("mosquitto is not installed (apt install mosquitto)")
    if not have_espeak():
        raise SystemExit("espeak-ng is not installed (apt install espeak-ng)")
    clips = [(c, speech(c)) for c in COMMANDS]
    # AF_UNIX socket paths are limited to 108 bytes: keep the work directory short.
    work = Path(tempfile.mkdtemp(prefix="voxd-e2e-", dir="/tmp"))
    (work / "broker").mkdir()
    fifo = work / f"{DEVICE}.fifo"
    os.mkfifo(fifo)
    broker = Mosquitto(mosquitto, work / "broker")
    broker.start()
    mic = ClockMic(fifo)  # a writer holds the FIFO before the daemon opens the device
    notify = NotifySocket(work)
    listener = Listener(broker.host, broker.port, f"voxd/{SITE}")
    report: dict[str, Any] = {"model_dir": str(args.model_dir), "threads": args.threads}
    results: list[Result] = []
    try:
        listener.wait_subscribed(30.0)
        env = {
            "ALSA_CONFIG_PATH": str(alsa_config(work, fifo)),
            "JACK_NO_START_SERVER": "1",
            "NOTIFY_SOCKET": str(notify.path),
        }
        started = time.monotonic()
        with daemon(write_config(work, args, broker), work, env) as proc:
            mic.start()  # silence from now on, read when capture starts
            if not notify.wait_ready(proc, args.ready_timeout_s):
                why = "exited" if proc.poll() is not None else "sent no READY=1"
                raise SystemExit(f"the daemon {why}; its log:\n{stderr_tail(work)}")
            report["ready_s"] = round(time.monotonic() - started, 2)
            # READY=1 comes once capture is started, not yet reading: the silence that
            # piled up in the FIFO (and what did not fit) is not counted
            if not mic.wait_drained(args.ready_timeout_s):
                log_tail = stderr_tail(work)
                raise SystemExit(f"the daemon never read the microphone; its log:\n{log_tail}")
            mic.dropped_blocks = mic.late_blocks = 0
            time.sleep(args.lead_s)
            for n in range(args.commands):
                text, audio = clips[n % len(clips)]
                result = play_command(n + 1, text, audio, mic, listener, proc, args)
                results.append(result)
                print_progress(result)
                if result.status == "daemon_exit":
                    print(f"the daemon exited; its log:\n{stderr_tail(work)}", file=sys.stderr)
                    break
                if result.status == "timeout" and not args.keep_going:
                    print("a final did not arrive in time; stopping (--keep-going goes on)",
                          file=sys.stderr)  # fmt: skip
                    break
        report["daemon_exit_code"] = proc.returncode
    finally:
        mic.close()
        listener.close()
        notify.close()
        broker.stop()
        report["dropped_blocks"] = mic.dropped_blocks
        report["late_blocks"] = mic.late_blocks
        if args.keep_work:
            report["work_dir"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["results"] = [asdict(r) for r in results]
    return report


COLUMNS = (
    ("n", "#", 2),
    ("speech_s", "speech", 6),
    ("status", "status", 9),
    ("wait_s", "WAIT", 7),
    ("latency_s", "latency", 7),
    ("hangover_s", "hang", 6),
    ("lag_s", "lag", 6),
    ("flush_s", "flush", 6),
    ("audio_seconds", "audio", 6),
    ("reason", "reason", 8),
    ("tokens", "tok", 4),
    ("processing_s", "proc@", 6),
    ("idle_s", "idle@", 6),
    ("max_engine_lag_s", "eng_lag", 7),
    ("load1", "load1", 5),
    ("finals", "fin", 3),
)


def cell(value: Any, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:{width}.2f}"
    return str(value).rjust(width)


def print_progress(r: Result) -> None:
    print(f"command {r.n} ({r.command!r}): {r.status}, wait {cell(r.wait_s, 0)} s, "
          f"idle after {cell(r.idle_s, 0)} s", file=sys.stderr, flush=True)  # fmt: skip


def print_table(report: dict[str, Any]) -> None:
    print(" ".join(title.rjust(width) for _, title, width in COLUMNS) + "  text")
    for r in report["results"]:
        row = " ".join(cell(r[key], width) for key, _, width in COLUMNS)
        text = r["text"]
        if text is not None and len(text) > 40:
            text = text[:37] + "..."
        print(f"{row}  {text!r}" if text is not None else row)
    waits = [r["wait_s"] for r in report["results"] if r["wait_s"] is not None]
    if len(waits) > 1:
        warm = sorted(waits[1:])
        print(
            f"wait: first command {waits[0]:.2f} s; later ones (warm) min {warm[0]:.2f}, "
            f"median {warm[len(warm) // 2]:.2f}, max {warm[-1]:.2f} s"
        )
    print(
        f"daemon ready after {report.get('ready_s')} s; mic blocks dropped "
        f"{report['dropped_blocks']}, late {report['late_blocks']}. WAIT = final on MQTT - end "
        "of speech at the mic; latency = hang + lag + flush (the daemon's account); proc@/idle@ "
        "= state processing/idle, from the end of speech; all in seconds."
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--threads", type=int, default=None, help="engine.threads (default: config's)")
    p.add_argument("--commands", type=int, default=4, help="commands to play (they alternate)")
    p.add_argument("--keep-going", action="store_true", help="go on after a command's timeout")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per command")
    p.add_argument("--ready-timeout-s", type=float, default=300.0)
    p.add_argument("--lead-s", type=float, default=3.0, help="silence before the first command")
    p.add_argument("--gap-s", type=float, default=6.0, help="silence after a command is done")
    p.add_argument("--stats-interval-s", type=float, default=1.0, help="mqtt.stats_interval_s")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--keep-work", action="store_true", help="keep the temp dir (daemon logs)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.commands < 1:
        p.error("--commands must be at least 1")
    if not (args.model_dir / "params.json").is_file():
        p.error(f"--model-dir {args.model_dir}: no params.json there (a model directory?)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    statuses = {r["status"] for r in report["results"]}
    return 0 if report["results"] and statuses <= {"ok", "no_final"} else 1


if __name__ == "__main__":
    sys.exit(main())
