"""The daemon as a real process (``python -m voxd run``): sd_notify, signals,
restarts with the broker down, and start-up failures.

Everything is real: the ALSA FIFO device played at real-time pace by a
FifoMic, the tiny model, mosquitto, an AF_UNIX datagram socket standing in
for systemd's notification socket. Waits poll with generous deadlines; no
durations are asserted.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_audio import AlsaSandbox
from fixtures_mqtt import CollectorFactory, Mosquitto, wait_until
from speech import silence
from test_mqtt import final as mqtt_final
from test_pipeline import (  # the same microphone, speech and checks as the pipeline tests
    WAIT_S,
    FifoMic,
    check_final,
    deltas_add_up,
    make_sentences,
    playing_mic,
    seconds,
    states,
)

from voxd import daemon
from voxd.config import EngineSettings, MqttSettings, ServiceSettings, Settings
from voxd.sdnotify import Notifier, Watchdog
from voxd.sinks.mqtt import MqttSink
from voxd.sinks.mqtt_protocol import Topics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sentences() -> list[np.ndarray]:
    return make_sentences()


@pytest.fixture
def fifo_mic(alsa_sandbox: AlsaSandbox) -> Iterator[FifoMic]:
    with playing_mic(alsa_sandbox) as mic:
        yield mic


# -- a stand-in for systemd's notification socket ----------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket that records every sd_notify assignment it receives."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path may be longer.
        self._dir = Path(tempfile.mkdtemp(prefix="voxd-notify-", dir="/tmp"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._lines.extend(data.decode().splitlines())

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def wait_for(self, prefix: str, timeout: float = WAIT_S) -> str:
        found: str = wait_until(
            lambda: next((line for line in self.lines if line.startswith(prefix)), None),
            timeout,
            f"{prefix!r} on the notify socket (have {self.lines})",
        )
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


# -- the daemon process -----------------------------------------------------------------


def write_config(
    tmp_path: Path,
    *,
    model_dir: Path,
    broker: Mosquitto | None,
    site: str = "daemon",
    device: str = "voxtest_mic",
) -> Path:
    mqtt = (
        f'enabled = true\nhost = "{broker.host}"\nport = {broker.port}\nsite = "{site}"\n'
        "reconnect_min_s = 1.0\nreconnect_max_s = 1.0\nkeepalive_s = 5\n"
        "[mqtt.discovery]\nenabled = false\n"
        if broker is not None
        else "enabled = false\n"
    )
    text = (
        f'[audio]\ndevice = "{device}"\nsample_rate = 16000\nchannels = 1\n'
        f'[engine]\nmodel_dir = "{model_dir}"\n'
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[mqtt]\n{mqtt}"
    )
    path = tmp_path / "voxd.toml"
    path.write_text(text)
    return path


class Daemon:
    """``python -m voxd run --config PATH`` with its output in files."""

    def __init__(
        self, config: Path, logdir: Path, *, env: dict[str, str] | None = None, stdout: bool = False
    ) -> None:
        n = len(list(logdir.glob("daemon-*.err")))
        self.stdout_path = logdir / f"daemon-{n}.out"
        self.stderr_path = logdir / f"daemon-{n}.err"
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [environ.get("PYTHONPATH")])]
        )
        environ.pop("NOTIFY_SOCKET", None)
        environ.pop("JOURNAL_STREAM", None)
        environ.update(env or {})
        args = [sys.executable, "-m", "voxd", "run", "--config", str(config)]
        if stdout:
            args.append("--stdout")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=environ, cwd=REPO)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def terminate(self) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit:\n{self.stderr()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Daemons started by a test (append them); killed if still running, logs shown."""
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                sys.stderr.write(f"--- daemon ignored SIGTERM; its log:\n{d.stderr()[-3000:]}\n")
        d.kill()


def start_daemon(
    daemons: list[Daemon],
    config: Path,
    tmp_path: Path,
    sock: NotifySocket,
    **kwargs: Any,
) -> Daemon:
    """Start one and wait for its READY=1 (the model is loaded, capture started)."""
    ready_before = sock.lines.count("READY=1")
    env = {"NOTIFY_SOCKET": str(sock.path), **kwargs.pop("env", {})}
    d = Daemon(config, tmp_path, env=env, **kwargs)
    daemons.append(d)
    wait_until(
        lambda: sock.lines.count("READY=1") > ready_before or d.proc.poll() is not None,
        WAIT_S,
        "READY=1",
    )
    assert d.proc.poll() is None, f"the daemon exited:\n{d.stderr()[-3000:]}"
    return d


def outbox_size(tmp_path: Path) -> int:
    return len(list((tmp_path / "state" / "outbox").glob("*.json")))


# -- tests ----------------------------------------------------------------------------------


def test_sd_notify_ready_status_watchdog_and_stopping(
    fifo_mic: FifoMic,
    notify_socket: NotifySocket,
    daemons: list[Daemon],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=None)
    d = start_daemon(
        daemons,
        config,
        tmp_path,
        notify_socket,
        env={"WATCHDOG_USEC": "2000000"},
        stdout=True,
    )
    notify_socket.wait_for("EXTEND_TIMEOUT_USEC=")  # asked for time to load the model
    notify_socket.wait_for("STATUS=listening")
    # Pinged only while both the engine loop and the capture are alive.
    notify_socket.wait_for("WATCHDOG=1")
    assert d.terminate() == 0
    notify_socket.wait_for("STOPPING=1")
    lines = notify_socket.lines
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    assert '{"type":"state","state":"idle"}' in d.stdout().splitlines()
    assert "voxd stopped" in d.stderr()


def test_sigterm_during_an_utterance_publishes_its_final(
    fifo_mic: FifoMic,
    notify_socket: NotifySocket,
    daemons: list[Daemon],
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=mqtt_broker)
    topics = Topics("voxd/daemon")
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    d = start_daemon(daemons, config, tmp_path, notify_socket)
    wait_until(lambda: states(collector, topics) == ["idle"], WAIT_S, "idle")

    fifo_mic.say(sentences[2])
    wait_until(lambda: "speaking" in states(collector, topics), WAIT_S, "speaking")
    assert d.terminate() == 0

    final = collector.wait_count(topics.final, 1, WAIT_S)[0].json()
    assert final["reason"] == "shutdown"
    assert final["text"]
    assert 0 < final["audio_seconds"] < seconds(sentences[2]) + 1.0
    wait_until(lambda: deltas_add_up(collector, topics, final), WAIT_S, "deltas")
    availability = collector.wait_count(topics.availability, 2, WAIT_S)
    assert [m.text for m in availability] == ["online", "offline"]
    assert len(collector.messages(topics.final)) == 1


def test_broker_outage_and_daemon_restart_lose_and_repeat_nothing(
    fifo_mic: FifoMic,
    notify_socket: NotifySocket,
    daemons: list[Daemon],
    persistent_mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    broker = persistent_mqtt_broker
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=broker)
    topics = Topics("voxd/daemon")
    # A persistent session: the broker keeps QoS 1 messages for it across restarts.
    collector = mqtt_collector(broker, [topics.final, topics.availability], persistent=True)
    short, medium, long = sentences
    spoken = [short, long, medium, short]

    def say(x: np.ndarray) -> None:
        fifo_mic.say(x)
        fifo_mic.say(silence(1.5))

    first = start_daemon(daemons, config, tmp_path, notify_socket)
    say(spoken[0])
    collector.wait_count(topics.final, 1, WAIT_S)
    wait_until(lambda: outbox_size(tmp_path) == 0, WAIT_S, "first final acknowledged")

    broker.stop()  # the broker goes away in the middle ...
    say(spoken[1])
    wait_until(lambda: outbox_size(tmp_path) == 1, WAIT_S, "second final kept in the outbox")
    assert first.terminate() == 0  # ... the daemon restarts while it is down ...
    assert outbox_size(tmp_path) == 1

    second = start_daemon(daemons, config, tmp_path, notify_socket)
    say(spoken[2])
    wait_until(lambda: outbox_size(tmp_path) == 2, WAIT_S, "third final behind the second")

    broker.start()  # ... and comes back: the backlog goes out, in order
    collector.wait_count(topics.final, 3, WAIT_S)
    wait_until(lambda: outbox_size(tmp_path) == 0, WAIT_S, "outbox emptied")
    say(spoken[3])  # a marker: whatever was sent before it has arrived by now
    collector.wait_count(topics.final, 4, WAIT_S)
    assert second.terminate() == 0

    finals = collector.payloads(topics.final)
    assert len(finals) == 4
    assert len({f["utterance_id"] for f in finals}) == 4
    for final, x in zip(finals, spoken, strict=True):
        check_final(final, seconds(x), "daemon")


def test_hostile_commands_leave_the_daemon_obeying_and_delivering(
    fifo_mic: FifoMic,
    notify_socket: NotifySocket,
    daemons: list[Daemon],
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tiny_model_dir: Path,
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=mqtt_broker)
    topics = Topics("voxd/daemon")
    collector = mqtt_collector(mqtt_broker, [f"{topics.root}/#"])
    d = start_daemon(daemons, config, tmp_path, notify_socket, env={"WATCHDOG_USEC": "4000000"})
    wait_until(lambda: states(collector, topics) == ["idle"], WAIT_S, "idle")
    hostile = [
        b"[" * 2000 + b"]" * 2000,  # raised RecursionError in paho's thread
        b'{"a":' * 600 + b"1" + b"}" * 600,
        b"\xff\xfe" * 100,
        b'{"n": ' + b"9" * 4000 + b"}",
        b"{" + b" " * 5000 + b"}",
    ]
    for payload in hostile:
        collector.publish(f"{topics.command_prefix}flush", payload)
    # Commands are still obeyed ...
    collector.publish(f"{topics.command_prefix}mute")
    wait_until(lambda: states(collector, topics)[-1:] == ["muted"], WAIT_S, "muted")
    collector.publish(f"{topics.command_prefix}unmute")
    wait_until(lambda: states(collector, topics)[-1:] == ["idle"], WAIT_S, "unmuted")
    # ... and finals delivered, while the link stays online and healthy.
    fifo_mic.say(sentences[0])
    fifo_mic.say(silence(1.5))
    final = collector.wait_count(topics.final, 1, WAIT_S)[0].json()
    check_final(final, seconds(sentences[0]), "daemon")
    assert final["replayed"] is False
    assert [m.text for m in collector.messages(topics.availability)] == ["online"]
    watchdog_pings = notify_socket.lines.count("WATCHDOG=1")
    wait_until(
        lambda: notify_socket.lines.count("WATCHDOG=1") > watchdog_pings, WAIT_S, "still pinged"
    )
    assert not any("PROBLEM" in line for line in notify_socket.lines)
    assert d.terminate() == 0
    assert "ignoring command 'flush'" in d.stderr()
    assert "Traceback" not in d.stderr()


def test_failed_mqtt_link_starves_the_watchdog_and_is_named_in_status(
    notify_socket: NotifySocket, mqtt_broker: Mosquitto, tmp_path: Path
) -> None:
    """The daemon's check of the MQTT link, in process, with a real sink and socket."""
    notifier = Notifier(str(notify_socket.path))
    watchdog = Watchdog(notifier, interval=2.0, sources=(daemon.WATCHDOG_MQTT,))
    status = daemon.SystemdStatusSink(notifier)
    settings = MqttSettings(
        host=mqtt_broker.host, port=mqtt_broker.port, site="health", keepalive_s=5
    )
    sink = MqttSink(settings, tmp_path / "state")
    try:
        check = daemon.MqttHealthCheck(sink, watchdog, status)

        def pinged() -> bool:
            check.check()
            return "WATCHDOG=1" in notify_socket.lines

        wait_until(pinged, WAIT_S, "watchdog fed while the link works")
        # Fault injection (as in test_mqtt_faults): the outbox worker dies each
        # time it starts, so the sink gives up after its restarts.
        sink._work_loop = _always_raise  # type: ignore[method-assign]
        sink._pump = _always_raise  # type: ignore[method-assign]
        sink.handle(mqtt_final(1))

        def reported() -> str | None:
            check.check()
            return next((ln for ln in notify_socket.lines if "PROBLEM" in ln), None)

        line = wait_until(reported, WAIT_S, "the problem in STATUS")
        assert line.startswith("STATUS=idle; 0 transcripts; PROBLEM: MQTT link failed: ")
        assert "outbox worker keeps dying" in line
        pings = notify_socket.lines.count("WATCHDOG=1")
        deadline = time.monotonic() + 3 * watchdog.interval  # pings were due every 1 s
        while time.monotonic() < deadline:
            assert check.check() is not None
            time.sleep(0.1)
        assert notify_socket.lines.count("WATCHDOG=1") == pings
    finally:
        sink.close()
        notifier.close()


def _always_raise(*args: Any) -> None:
    raise SystemExit("worker bug")


def test_missing_model_directory_exits_2_naming_it(
    notify_socket: NotifySocket, daemons: list[Daemon], tmp_path: Path
) -> None:
    missing = tmp_path / "no-model-here"
    config = write_config(tmp_path, model_dir=missing, broker=None)
    d = Daemon(config, tmp_path, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(d)
    assert d.wait() == 2
    err = d.stderr()
    assert str(missing) in err and "voxd model download" in err
    status = notify_socket.wait_for("STATUS=")
    assert str(missing) in status and "voxd model download" in status
    assert "READY=1" not in notify_socket.lines


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """daemon.run() and setup_logging() install a stderr handler: undo that afterwards."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_unloadable_model_exits_2_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "params.json").write_text("{not json")
    settings = Settings(
        engine=EngineSettings(model_dir=broken),
        mqtt=MqttSettings(enabled=False),
        service=ServiceSettings(state_dir=tmp_path / "state"),
    )
    with caplog.at_level(logging.ERROR, logger="voxd.daemon"):
        assert daemon.run(settings) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "voxd.daemon"]
    assert any(str(broken) in m and "voxd model download" in m for m in messages), messages


def test_invalid_config_exits_2(daemons: list[Daemon], tmp_path: Path) -> None:
    config = tmp_path / "voxd.toml"
    config.write_text("[engine]\ndelay_ms = 100\n")
    d = Daemon(config, tmp_path)
    daemons.append(d)
    assert d.wait() == 2
    assert "engine.delay_ms" in d.stderr()


def test_unusable_vad_model_exits_2(
    daemons: list[Daemon], tiny_model_dir: Path, tmp_path: Path
) -> None:
    not_onnx = tmp_path / "silero_vad.onnx"
    not_onnx.write_bytes(b"this is not an ONNX model")
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=None)
    with open(config, "a") as f:
        f.write(f'[vad]\nenabled = true\nmodel_path = "{not_onnx}"\n')
    d = Daemon(config, tmp_path)
    daemons.append(d)
    assert d.wait() == 2
    assert "vad.enabled" in d.stderr() and str(not_onnx) in d.stderr()


def test_journal_logging_has_priorities_and_no_timestamps(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    daemon.setup_logging("info", environ={"JOURNAL_STREAM": "8:12345"})
    logging.getLogger("voxd.test").warning("first line\nsecond line")
    logging.getLogger("voxd.test").debug("not shown at info")
    assert capsys.readouterr().err == "<4>voxd.test: first line\n<4>second line\n"

    daemon.setup_logging("debug", environ={})  # replaces the handler: one line each
    logging.getLogger("voxd.test").debug("shown")
    err = capsys.readouterr().err
    assert err.count("shown") == 1
    assert err.endswith(" DEBUG voxd.test: shown\n") and err[:4].isdigit()
