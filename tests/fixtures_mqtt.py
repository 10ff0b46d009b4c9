"""A real mosquitto broker for tests, and a subscriber that records what it receives.

``mqtt_broker`` starts ``mosquitto`` on a free loopback port (persistence off)
and yields a :class:`Mosquitto` with ``host``, ``port``, ``stop()`` and
``start()`` (restart on the same port). ``persistent_mqtt_broker`` is the
same with persistence on, so that a subscriber's session (and the QoS 1
messages queued for it) survives a broker restart. ``mosquitto_factory``
starts brokers with extra configuration lines (TLS, passwords).
``mqtt_collector`` is a factory of :class:`MqttCollector` clients, closed
after the test.

Tests are skipped only when mosquitto is not installed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
WAIT_S = 30.0  # generous: tests poll for conditions, never assert durations


def find_mosquitto() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("mosquitto")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition"
) -> Any:
    """Poll until ``condition()`` is truthy and return it; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Mosquitto:
    """One mosquitto process on 127.0.0.1:<port>, restartable on the same port."""

    host = "127.0.0.1"

    def __init__(
        self,
        executable: str,
        workdir: Path,
        *,
        persistence: bool = False,
        extra_conf: Sequence[str] = (),
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.persistence = persistence
        self.extra_conf = list(extra_conf)  # more lines (TLS, password_file ...)
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_conf(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # Started as root, mosquitto would switch to user "mosquitto" and could
            # not write its persistence file here: stay the user running the tests.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
        lines.extend(self.extra_conf)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        if self.running:
            return
        conf = self._write_conf()
        for _attempt in range(50):  # the port may still be held by the previous run
            with open(self.log_path, "ab") as log_file:
                self._proc = subprocess.Popen(
                    [self.executable, "-c", str(conf)], stdout=log_file, stderr=log_file
                )
            if self._wait_listening():
                return
            time.sleep(0.1)
        raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_tail()}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it closes all connections, saves if persistent)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"Mosquitto({self.host}:{self.port}, running={self.running})"


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttCollector:
    """A subscriber that keeps every message it receives, per topic, in order.

    A message the broker delivers again with the DUP flag after a broker
    restart goes to ``redelivered`` instead: duplicates made by the publisher
    (sent twice) reach subscribers without DUP and are kept, so tests see them.

    ``persistent=True`` uses a fixed client id and clean_session=False, so the
    broker queues QoS 1 messages for it while it is disconnected.
    """

    def __init__(
        self, host: str, port: int, topics: list[str], *, persistent: bool = False
    ) -> None:
        self.topics = topics
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self.redelivered: list[Received] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:12]}",
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, *args: Any) -> None:
        self._subscribed.clear()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        received = Received(msg.topic, bytes(msg.payload), msg.qos, msg.retain)
        with self._lock:
            if msg.dup and received in self._messages:
                # The broker re-sent a message whose PUBACK it had not processed
                # (e.g. it was stopped): a duplicate on the broker -> collector hop,
                # not something the publisher sent twice.
                self.redelivered.append(received)
                return
            self._messages.append(received)

    def wait_subscribed(self, timeout: float = WAIT_S) -> None:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"collector not subscribed to {self.topics}")

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def payloads(self, topic: str) -> list[Any]:
        return [m.json() for m in self.messages(topic)]

    def wait_count(self, topic: str, count: int, timeout: float = WAIT_S) -> list[Received]:
        wait_until(
            lambda: len(self.messages(topic)) >= count,
            timeout,
            f"{count} messages on {topic} (have {len(self.messages(topic))})",
        )
        return self.messages(topic)

    def publish(self, topic: str, payload: str | bytes = b"", *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _mosquitto_or_skip() -> str:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto): MQTT tests need a broker")
    return executable


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Mosquitto(_mosquitto_or_skip(), workdir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def persistent_mqtt_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosquitto-persistent"
    workdir.mkdir()
    broker = Mosquitto(_mosquitto_or_skip(), workdir, persistence=True)
    broker.start()
    yield broker
    broker.stop()


BrokerFactory = Callable[..., Mosquitto]


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """``mosquitto_factory(extra_conf=[...], persistence=False)`` -> a started broker."""
    made: list[Mosquitto] = []

    def make(*, extra_conf: Sequence[str] = (), persistence: bool = False) -> Mosquitto:
        workdir = tmp_path / f"mosquitto-{len(made)}"
        workdir.mkdir()
        broker = Mosquitto(
            _mosquitto_or_skip(), workdir, persistence=persistence, extra_conf=extra_conf
        )
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


CollectorFactory = Callable[..., MqttCollector]


@pytest.fixture
def mqtt_collector() -> Iterator[CollectorFactory]:
    """``mqtt_collector(broker, ["voxd/#"], persistent=False)`` -> subscribed collector."""
    made: list[MqttCollector] = []

    def make(broker: Mosquitto, topics: list[str], *, persistent: bool = False) -> MqttCollector:
        collector = MqttCollector(broker.host, broker.port, topics, persistent=persistent)
        made.append(collector)
        collector.wait_subscribed()
        return collector

    yield make
    for collector in made:
        collector.close()
