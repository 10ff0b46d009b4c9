"""The MQTT link under attack and under faults, against a real mosquitto.

Hostile and fuzzed command payloads, callbacks that raise, threads that die,
settings paho cannot use, a long broker outage. After each, the link must
still obey commands and deliver finals, or say in ``health()`` that it cannot.

Killing a thread cannot be done for real from outside it: those tests put an
exception where a bug would raise one (the narrowest seam: the callback paho
calls, the worker's pump, the link's step), and say so. No timing assertions;
the outage test prints how long the reconnect took.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import WAIT_S, CollectorFactory, Mosquitto, MqttCollector, wait_until
from test_mqtt import final, final_ids, settings_for

from voxd.events import COMMANDS
from voxd.logs import LogLimiter
from voxd.outbox import OutboxEntry
from voxd.sinks import mqtt
from voxd.sinks.mqtt import MqttHealth, MqttSink, final_payload
from voxd.sinks.mqtt_protocol import (
    MAX_COMMAND_BYTES,
    MAX_COMMAND_DEPTH,
    InvalidCommand,
    Topics,
    check_command,
    json_depth_within,
)

BRACKETS = b"[" * 2000 + b"]" * 2000  # the payload that killed paho's thread


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


HOSTILE: list[bytes] = [  # each must be ignored
    BRACKETS,
    nested_objects(600),  # 4000 bytes of {"a":{"a":...}}
    nested_objects(MAX_COMMAND_DEPTH + 1),  # just too deep
    b'{"a":' + b"[" * 500 + b"]" * 500 + b"}",
    b"\xff\xfe\x00\x80" * 100,  # not UTF-8
    b"[" * 4096,  # unbalanced
    b"{" + b" " * MAX_COMMAND_BYTES + b"}",  # over the size limit
    bytes(range(256)) * 16,
]
ODD_BUT_VALID: list[bytes] = [  # each is a JSON object: the command is obeyed
    b'{"n": ' + b"9" * 4000 + b"}",  # a huge integer
    b'{"n": 1e999999, "m": -1e999999}',  # floats that overflow
    b'{"s": "' + b"[" * 3000 + b'"}',  # brackets inside a string are text
    nested_objects(MAX_COMMAND_DEPTH),
]


class Sinks:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.commands: list[str] = []
        self.made: list[MqttSink] = []

    def make(
        self, settings: Any, *, cls: type[MqttSink] = MqttSink, wait_connected: bool = True
    ) -> MqttSink:
        sink = cls(settings, self.state_dir, on_command=self.commands.append)
        self.made.append(sink)
        if wait_connected:
            # Subscribed too: a command published before would not reach it.
            wait_until(lambda: sink.health().subscribed, what="sink connected and subscribed")
        return sink


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Sinks]:
    made = Sinks(tmp_path / "state")
    yield made
    for sink in made.made:
        sink.close()


def still_works(
    sink: MqttSink, sinks: Sinks, collector: MqttCollector, command: str, n: int
) -> None:
    """A later valid command is obeyed and a new final reaches the broker."""
    topics = sink.topics
    before = len(collector.messages(topics.final))
    sinks.commands.clear()
    collector.publish(f"{topics.command_prefix}{command}")
    wait_until(lambda: sinks.commands == [command], what=f"command {command} obeyed")
    sink.handle(final(n))
    collector.wait_count(topics.final, before + 1)
    assert final_ids(collector, topics)[-1] == f"utt-{n}"


# --------------------------------------------------------------------------- parsing


def test_depth_check_is_iterative_and_ignores_strings() -> None:
    assert json_depth_within("[" * 100_000, MAX_COMMAND_DEPTH) is False  # no RecursionError
    assert json_depth_within('{"a": "[[[[[[[["}', 2) is True
    assert json_depth_within('{"a": "\\"[[[["}', 1) is True  # escaped quote stays in the string
    assert json_depth_within('{"a": [[1]]}', 2) is False
    for payload in ODD_BUT_VALID:
        assert check_command("flush", payload) == "flush"
    for payload in HOSTILE:
        with pytest.raises(InvalidCommand):
            check_command("flush", payload)
    with pytest.raises(InvalidCommand, match="nested at most 32 deep"):
        check_command("reset", nested_objects(MAX_COMMAND_DEPTH + 1))


def test_log_limiter_logs_a_burst_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(
        logging.getLogger("voxd.test"), "bad things", burst=3, interval_s=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="voxd.test"):
        for n in range(1000):
            limiter.log(logging.WARNING, "bad thing %d", n)
        limiter.flush()
        assert [r.getMessage() for r in caplog.records] == [f"bad thing {n}" for n in range(3)]
        now[0] = 61.0
        limiter.flush()
    assert caplog.records[-1].getMessage() == "997 more bad things in the last 61 s were not logged"


# --------------------------------------------------------------------------- hostile commands


def test_hostile_payloads_leave_commands_and_finals_working(
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    sinks: Sinks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    sink = sinks.make(settings)
    with caplog.at_level(logging.WARNING, logger="voxd.sinks"):
        for _ in range(5):  # more than the log's burst
            for payload in HOSTILE:
                collector.publish(f"{topics.command_prefix}flush", payload)
        for payload in ODD_BUT_VALID:
            collector.publish(f"{topics.command_prefix}reset", payload)
        sent = 5 * len(HOSTILE) + len(ODD_BUT_VALID)
        wait_until(
            lambda: sink.health().commands_received == sent,
            what="every hostile message received",
        )
    health = sink.health()
    assert health.commands_rejected == 5 * len(HOSTILE)
    assert (health.callback_errors, health.restarts, health.ok) == (0, 0, True)
    assert health.network_alive and health.worker_alive and health.link_alive
    assert sinks.commands == ["reset"] * len(ODD_BUT_VALID)
    ignored = [r for r in caplog.records if r.getMessage().startswith("ignoring")]
    assert 1 <= len(ignored) <= 5  # rate-limited: a flood cannot fill the journal
    still_works(sink, sinks, collector, "mute", 1)
    still_works(sink, sinks, collector, "flush", 2)


# --------------------------------------------------------------------------- fuzz

FUZZ_COUNT = 10_000
FUZZ_NAMES = [*sorted(COMMANDS), "mute-set", "explode", "MUTE", "flush2", "mute-set-x"]


def fuzz_payload(rng: random.Random, name: str) -> tuple[bytes, str | None]:
    """A payload for cmd/<name> and the command it must give (None: ignored)."""
    kind = rng.randrange(9)
    valid_name = name in COMMANDS
    if kind == 0:
        return b"", name if valid_name else None
    if kind == 1:
        obj = {
            f"k{i}": rng.choice([1, "x", None, [1, 2], {"a": 1}]) for i in range(rng.randrange(5))
        }
        return json.dumps(obj).encode(), name if valid_name else None
    if kind == 2:
        depth = rng.randrange(1, 3 * MAX_COMMAND_DEPTH)
        valid = valid_name and depth <= MAX_COMMAND_DEPTH
        return nested_objects(depth), name if valid else None
    if kind == 3:
        opener = rng.choice([b"[", b"{", b'{"a":['])
        return opener * rng.randrange(1, 2000) + b"]" * rng.randrange(2000), None
    if kind == 4:
        return b"\xff" + rng.randbytes(rng.randrange(300)), None  # never UTF-8
    if kind == 5:
        return b"{" + b" " * rng.randrange(MAX_COMMAND_BYTES - 1, 6000) + b"}", None
    if kind == 6:
        number = rng.choice([b"9" * rng.randrange(300, 4000), b"1e99999", b"-0.0e-99999"])
        return b'{"n":' + number + b"}", name if valid_name else None
    if kind == 7:
        word = rng.choice(["ON", "OFF", "on", " off\n", "maybe", " ", "1"])
        if name == "mute-set":
            return word.encode(), {"ON": "mute", "OFF": "unmute"}.get(word.strip().upper())
        return word.encode(), name if valid_name and not word.strip() else None
    text = rng.choice(['{"a": 1', "[]", "null", "true", '"s"', "{'a': 1}", "{}}", "{}{}"])
    return text.encode(), None


def fuzz_cases(seed: int, count: int) -> list[tuple[str, bytes, str | None]]:
    rng = random.Random(seed)
    cases: list[tuple[str, bytes, str | None]] = []
    for _ in range(count):
        name = rng.choice(FUZZ_NAMES)
        payload, expected = fuzz_payload(rng, name)
        cases.append((name, payload, expected))
    return cases


def test_fuzzed_commands_on_every_topic(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    sink = sinks.make(settings)
    cases = fuzz_cases(seed=20261201, count=FUZZ_COUNT)
    expected = [command for _, _, command in cases if command is not None]
    assert 0 < len(expected) < FUZZ_COUNT // 2  # both kinds in good numbers

    started = time.monotonic()
    batch = 500  # then wait: the broker drops what a slow client cannot take
    for first in range(0, FUZZ_COUNT, batch):
        infos = [
            collector.client.publish(f"{topics.command_prefix}{name}", payload, qos=1)
            for name, payload, _ in cases[first : first + batch]
        ]
        for info in infos:
            info.wait_for_publish(30)
        wait_until(
            lambda n=first + batch: sink.health().commands_received >= n,
            what=f"{first + batch} fuzzed commands received",
        )
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {FUZZ_COUNT} command payloads handled in {elapsed:.1f} s")

    health = sink.health()
    assert health.commands_received == FUZZ_COUNT
    assert health.commands_rejected == FUZZ_COUNT - len(expected)
    assert sinks.commands == expected  # every valid one obeyed, in order, nothing else
    assert (health.callback_errors, health.restarts, health.ok) == (0, 0, True)
    still_works(sink, sinks, collector, "reset", 1)


# --------------------------------------------------------------------------- raising callbacks


class RaisingSink(MqttSink):
    """Its message and publish callbacks raise now and then, as a bug would."""

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.payload == b'{"raise": true}':
            raise RuntimeError("a bug in on_message")
        super()._on_message(client, userdata, message)

    def _on_publish(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        super()._on_publish(client, userdata, mid, *args)
        if mid % 2:
            raise RuntimeError("a bug in on_publish")


def test_callbacks_that_raise_do_not_stop_the_link(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    sink = sinks.make(settings, cls=RaisingSink)
    for _ in range(3):
        collector.publish(f"{topics.command_prefix}flush", b'{"raise": true}')
    wait_until(lambda: sink.health().callback_errors >= 3, what="errors caught")
    for n in range(4):
        still_works(sink, sinks, collector, "mute", n)
    health = sink.health()
    assert health.ok and health.restarts == 0
    assert health.last_error is not None and "callback failed" in health.last_error


def test_a_blocking_command_handler_is_reported(
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mqtt, "CALLBACK_STUCK_S", 0.5)  # 30 s in production
    release = threading.Event()
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    with MqttSink(settings, tmp_path, on_command=lambda name: release.wait(WAIT_S)) as sink:
        wait_until(lambda: sink.health().subscribed, what="connected and subscribed")
        collector.publish(f"{topics.command_prefix}mute")
        wait_until(lambda: not sink.health().ok, what="the blocked thread reported")
        failed = sink.health().failed
        assert failed is not None and "on_message callback has blocked" in failed
        release.set()
        wait_until(lambda: sink.health().ok, what="healthy once the handler returned")
        sink.handle(final(1))
        collector.wait_count(topics.final, 1)


# --------------------------------------------------------------------------- dying threads


def raising_once(error: BaseException, then: Callable[..., Any]) -> Callable[..., Any]:
    raised: list[bool] = []

    def fault(*args: Any) -> Any:
        if not raised:
            raised.append(True)
            raise error
        return then(*args)

    return fault


def always_raising(error: BaseException) -> Callable[..., Any]:
    def fault(*args: Any) -> Any:
        raise error

    return fault


def availability(collector: MqttCollector, topics: Topics) -> list[str]:
    return [m.text for m in collector.messages(topics.availability)]


def test_dead_network_thread_is_restarted_and_reported(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final, topics.availability])
    sink = sinks.make(settings)
    wait_until(lambda: availability(collector, topics) == ["online"], what="online")
    # Fault injection: paho calls on_message from its loop; an exception raised
    # there unguarded ends paho's network thread, as a bug in paho would.
    client = sink._client
    client.on_message = raising_once(RuntimeError("paho bug"), client.on_message)
    collector.publish(f"{topics.command_prefix}mute")

    wait_until(lambda: sink.health().restarts == 1, what="network thread restarted")
    wait_until(lambda: sink.health().subscribed, what="reconnected")
    health = sink.health()
    assert health.ok and health.network_alive
    assert health.last_error is not None and "network thread died" in health.last_error
    assert "paho bug" in health.last_error
    # The dead client's socket was closed: the broker published the will, then
    # the new connection said online again.
    wait_until(
        lambda: availability(collector, topics) == ["online", "offline", "online"],
        what="will, then online",
    )
    still_works(sink, sinks, collector, "unmute", 1)


def test_network_thread_that_keeps_dying_fails_health_and_goes_offline(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.availability])
    sink = sinks.make(settings)
    # Fault injection as above, on every message.
    sink._client.on_message = always_raising(RuntimeError("paho bug"))

    def kill_again() -> bool:
        if sink.health().ok and sink.connected:
            collector.publish(f"{topics.command_prefix}mute")
        return not sink.health().ok

    wait_until(kill_again, what="the link gives up")
    health = sink.health()
    assert health.failed is not None and "keeps dying" in health.failed
    assert not health.connected and not health.network_alive
    wait_until(lambda: availability(collector, topics)[-1] == "offline", what="offline")
    late = mqtt_collector(mqtt_broker, [topics.availability])
    assert late.wait_count(topics.availability, 1)[0].text == "offline"  # retained


def test_dead_worker_is_restarted_then_reported(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final, topics.availability])
    sink = sinks.make(settings)
    # Fault injection: the worker's pump raises what no except clause catches.
    sink._pump = raising_once(SystemExit("worker bug"), sink._pump)  # type: ignore[method-assign]
    sink.handle(final(1))
    wait_until(lambda: sink.health().restarts == 1, what="worker restarted")
    collector.wait_count(topics.final, 1)  # the restarted worker sent what was waiting
    health = sink.health()
    assert health.ok and health.worker_alive
    assert health.last_error is not None and "outbox worker died" in health.last_error
    still_works(sink, sinks, collector, "flush", 2)

    # A worker that dies each time it starts: the sink gives up and says so.
    sink._work_loop = always_raising(SystemExit("worker bug"))  # type: ignore[method-assign]
    sink._pump = always_raising(SystemExit("worker bug"))  # type: ignore[method-assign]
    sink.handle(final(3))
    wait_until(lambda: not sink.health().ok, what="the link gives up")
    failed = sink.health().failed
    assert failed is not None and "outbox worker keeps dying" in failed
    wait_until(lambda: availability(collector, topics)[-1] == "offline", what="offline")


def test_dead_link_thread_is_restarted_by_health(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    sink = sinks.make(settings)
    # Fault injection: the link's step raises what no except clause catches.
    sink._link_step = raising_once(SystemExit("link bug"), sink._link_step)  # type: ignore[method-assign]
    wait_until(lambda: sink.health().restarts == 1, what="link thread restarted")
    health = sink.health()
    assert health.ok and health.link_alive
    assert health.last_error is not None and "link thread died" in health.last_error
    still_works(sink, sinks, collector, "mute", 1)


# --------------------------------------------------------------------------- the connect path


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"host": "broker..lan"}, "UnicodeError"),  # IDNA cannot encode it
        ({"host": ""}, "ValueError"),
        ({"keepalive_s": 70_000}, "format requires"),  # struct.error: too large for a packet
        ({"client_id": "x" * 70_000}, "format requires"),
    ],
)
def test_connect_path_errors_are_reported_not_raised(
    mqtt_broker: Mosquitto,
    sinks: Sinks,
    caplog: pytest.LogCaptureFixture,
    override: dict[str, Any],
    error: str,
) -> None:
    # model_copy skips validation: these are values validation may let through.
    settings = settings_for(mqtt_broker).model_copy(update=override)
    with caplog.at_level(logging.ERROR, logger="voxd.sinks"):
        sink = sinks.make(settings, wait_connected=False)
        wait_until(lambda: not sink.health().ok, what="the problem reported")
    health = sink.health()
    assert health.failed is not None and "cannot connect" in health.failed
    assert error in health.failed
    assert health.link_alive and not health.connected
    assert any("connecting to" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- finals


def test_final_payload_adds_replayed_and_age() -> None:
    entry = OutboxEntry(7, "voxd/x/transcript/final", '{"text":"hi","age_s":"old"}', 100.0)
    data = json.loads(final_payload(entry, replayed=True, now=112.34567))
    assert data == {"text": "hi", "replayed": True, "age_s": 12.346}
    clock_went_back = json.loads(final_payload(entry, replayed=False, now=99.0))
    assert clock_went_back["age_s"] == 0.0 and clock_went_back["replayed"] is False
    for stored in ("[1, 2]", "not json", '"text"', "[" * 5000):
        odd = OutboxEntry(8, entry.topic, stored, 100.0)
        assert final_payload(odd, replayed=True) == stored  # published as stored


# --------------------------------------------------------------------------- long outage


def test_reconnects_soon_after_a_long_outage(
    persistent_mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    broker = persistent_mqtt_broker
    # The default back-off (1 .. 60 s) would have grown to 32 s by now.
    settings = settings_for(broker, reconnect_min_s=1.0, reconnect_max_s=60.0)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(broker, [topics.final], persistent=True)
    sink = sinks.make(settings)
    sink.handle(final(0))
    collector.wait_count(topics.final, 1)

    broker.stop()
    wait_until(lambda: not sink.connected, what="sink noticed the outage")
    for n in range(1, 4):
        sink.handle(final(n))
    time.sleep(45)  # the outage itself: long enough for the old back-off to reach 32 s
    broker.start()
    back = time.monotonic()
    wait_until(lambda: sink.connected, timeout=120, what="reconnected")
    reconnected = time.monotonic() - back
    collector.wait_count(topics.final, 4, timeout=120)
    delivered = time.monotonic() - back
    print(
        f"\nreconnected {reconnected:.2f} s, outage finals delivered {delivered:.2f} s "
        "after the broker came back"
    )
    sink.handle(final(4))
    collector.wait_count(topics.final, 5)

    payloads = collector.payloads(topics.final)
    assert [p["utterance_id"] for p in payloads] == [f"utt-{n}" for n in range(5)]
    assert [p["replayed"] for p in payloads] == [False, True, True, True, False]
    assert all(p["age_s"] >= 0 for p in payloads)
    assert min(p["age_s"] for p in payloads[1:4]) > payloads[0]["age_s"]  # they waited


def test_health_of_a_closed_sink_is_not_a_failure(mqtt_broker: Mosquitto, sinks: Sinks) -> None:
    sink = sinks.make(settings_for(mqtt_broker))
    sink.close()
    health = sink.health()
    assert isinstance(health, MqttHealth) and health.ok and not health.connected
