"""The MQTT sink against a real mosquitto: topics, payloads, commands, discovery,
the last will, and delivery of finals across broker and sink restarts.

No mocks and no timing assertions: every wait polls for a condition.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import BrokerFactory, CollectorFactory, Mosquitto, MqttCollector, wait_until

from voxd.config import ConfigError, MqttSettings
from voxd.events import StateChanged, Stats, TranscriptDelta, TranscriptFinal
from voxd.sinks import hass
from voxd.sinks.mqtt import MqttSink
from voxd.sinks.mqtt_protocol import Topics, parse_command

REPO = Path(__file__).resolve().parent.parent


def settings_for(broker: Mosquitto, site: str = "test", **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "site": site,
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 1.0,
        "keepalive_s": 5,
    }
    values.update(overrides)
    return MqttSettings(**values)


def final(n: int, text: str | None = None) -> TranscriptFinal:
    return TranscriptFinal(
        utterance_id=f"utt-{n}",
        text=text if text is not None else f"sentence number {n}",
        started_at=1_700_000_000.0 + n,
        ended_at=1_700_000_001.5 + n,
        audio_seconds=1.5,
        latency_s=0.2,
        token_ids=(1, 2, 3),
        engine={"rtf": 0.4},
    )


class Sinks:
    """Makes sinks and closes them all after the test."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.commands: list[str] = []
        self._made: list[MqttSink] = []

    def make(self, settings: MqttSettings, *, wait_connected: bool = True) -> MqttSink:
        sink = MqttSink(settings, self.state_dir, on_command=self.commands.append)
        self._made.append(sink)
        if wait_connected:
            # Subscribed too: a command published before would not reach it.
            wait_until(lambda: sink.health().subscribed, what="sink connected and subscribed")
        return sink

    def close_all(self) -> None:
        for sink in self._made:
            sink.close()


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Sinks]:
    made = Sinks(tmp_path / "state")
    yield made
    made.close_all()


def final_ids(collector: MqttCollector, topics: Topics) -> list[str]:
    return [p["utterance_id"] for p in collector.payloads(topics.final)]


# --------------------------------------------------------------------------- availability


def test_online_retained_and_offline_on_clean_close(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    sink = sinks.make(settings)

    late = mqtt_collector(mqtt_broker, [topics.availability])
    first = late.wait_count(topics.availability, 1)[0]
    assert (first.text, first.retain) == ("online", True)

    sink.close()
    messages = late.wait_count(topics.availability, 2)
    assert messages[-1].text == "offline"
    after = mqtt_collector(mqtt_broker, [topics.availability])
    retained = after.wait_count(topics.availability, 1)[0]
    assert (retained.text, retained.retain) == ("offline", True)


_CHILD = """
import sys, time
from pathlib import Path
from voxd.config import ConfigError, MqttSettings
from voxd.sinks.mqtt import MqttSink

settings = MqttSettings(host=sys.argv[1], port=int(sys.argv[2]), site="lwt", keepalive_s=5)
sink = MqttSink(settings, Path(sys.argv[3]))
while not sink.connected:
    time.sleep(0.05)
print("connected", flush=True)
time.sleep(3600)
"""


def test_last_will_offline_when_the_process_dies(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, tmp_path: Path
) -> None:
    topics = Topics("voxd/lwt")
    watcher = mqtt_collector(mqtt_broker, [topics.availability])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mqtt_broker.host, str(mqtt_broker.port), str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"connected"
        wait_until(
            lambda: [m.text for m in watcher.messages(topics.availability)] == ["online"],
            what="online",
        )
        child.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    watcher.wait_count(topics.availability, 2)
    assert watcher.messages(topics.availability)[-1].text == "offline"
    after = mqtt_collector(mqtt_broker, [topics.availability])
    retained = after.wait_count(topics.availability, 1)[0]
    assert (retained.text, retained.retain) == ("offline", True)


# --------------------------------------------------------------------------- events


def test_event_topics_and_payloads(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    started = time.time()
    settings = settings_for(mqtt_broker, site="kitchen")
    topics = Topics.from_settings(settings)
    assert topics.root == "voxd/kitchen"
    collector = mqtt_collector(mqtt_broker, ["voxd/kitchen/#"])
    sink = sinks.make(settings)

    delta = TranscriptDelta("utt-1", 0, " Hello", 0.48)
    stats = Stats(12.5, 0.37, 0, 2, 4, 1)
    sink.handle(StateChanged("speaking"))
    sink.handle(delta)
    sink.handle(final(1, "Hello world"))
    sink.handle(StateChanged("idle"))
    sink.handle(stats)

    got_delta = collector.wait_count(topics.delta, 1)[0]
    assert got_delta.json() == delta.to_json()
    assert (got_delta.qos, got_delta.retain) == (0, False)

    got_final = collector.wait_count(topics.final, 1)[0]
    published = got_final.json()
    # Added at publish time: handed over as soon as it was made, moments ago.
    assert published.pop("replayed") is False
    assert 0 <= published.pop("age_s") <= time.time() - started + 0.001
    assert published == final(1, "Hello world").to_json()
    assert (got_final.qos, got_final.retain) == (1, False)

    states = collector.wait_count(topics.state, 2)
    assert [m.json() for m in states] == [{"state": "speaking"}, {"state": "idle"}]

    got_stats = collector.wait_count(topics.stats, 1)[0]
    assert got_stats.json() == stats.to_json()

    wait_until(lambda: len(sink.outbox) == 0, what="outbox emptied by the PUBACK")
    # State and stats are retained: a late subscriber gets the latest.
    late = mqtt_collector(mqtt_broker, [topics.state, topics.stats])
    assert late.wait_count(topics.state, 1)[0].json() == {"state": "idle"}
    assert late.wait_count(topics.stats, 1)[0].retain


def test_custom_base_topic_and_non_finite_numbers(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker, base_topic="home/stt/hall")
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, ["home/stt/hall/#"])
    sink = sinks.make(settings)
    sink.handle(Stats(1.0, float("nan"), 0, 0, 0, 0))
    got = collector.wait_count("home/stt/hall/stats", 1)[0]
    assert got.json()["real_time_factor"] is None  # valid JSON, not NaN
    assert topics.final == "home/stt/hall/transcript/final"


def test_hermes_text_captured(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker, hermes={"enabled": True, "site_id": "livingroom"})
    collector = mqtt_collector(mqtt_broker, ["hermes/asr/textCaptured"])
    sink = sinks.make(settings)
    sink.handle(final(7, " Turn on the lights"))
    got = collector.wait_count("hermes/asr/textCaptured", 1)[0].json()
    assert got == {
        "text": "Turn on the lights",
        "likelihood": 1.0,
        "seconds": 1.5,
        "siteId": "livingroom",
        "sessionId": "utt-7",
        "wakewordId": None,
        "asrTokens": None,
    }


# --------------------------------------------------------------------------- commands


def test_commands_valid_and_invalid(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    publisher = mqtt_collector(mqtt_broker, ["unused/topic"])
    # A retained command must not act at every (re)connect.
    publisher.publish(f"{topics.command_prefix}flush", b"", retain=True)
    sinks.make(settings)

    cmd = topics.command_prefix
    sent: list[tuple[str, bytes]] = [
        (f"{cmd}mute", b""),
        (f"{cmd}unmute", b"{}"),
        (f"{cmd}flush", b'{"reason": "button"}'),
        (f"{cmd}mute", b"please"),  # not JSON
        (f"{cmd}mute", b"[1, 2]"),  # JSON, not an object
        (f"{cmd}explode", b""),  # unknown command
        (f"{cmd}reset", b"\xff\xfe"),  # not UTF-8
        (f"{cmd}mute-set", b"ON"),
        (f"{cmd}mute-set", b"maybe"),
        (f"{cmd}mute-set", b"off"),
        (f"{cmd}reset", b" "),
    ]
    for topic, payload in sent:
        publisher.publish(topic, payload)
    expected = ["mute", "unmute", "flush", "mute", "unmute", "reset"]
    wait_until(lambda: sinks.commands == expected, what=f"commands {expected}")
    publisher.publish(f"{topics.command_prefix}flush", b"", retain=True)  # leave it clean


def test_parse_command_rules() -> None:
    assert parse_command("mute", b"") == "mute"
    assert parse_command("reset", b'{"hard": true}') == "reset"
    assert parse_command("reset", b"null") is None
    assert parse_command("mute-set", b" on\n") == "mute"
    assert parse_command("flush", b"{" + b" " * 5000 + b"}") is None
    assert parse_command("MUTE", b"") is None


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), RecursionError("the handler recursed")], ids=type
)
def test_command_handler_errors_do_not_break_the_sink(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, tmp_path: Path, error: Exception
) -> None:
    calls: list[str] = []

    def handler(name: str) -> None:
        calls.append(name)
        raise error

    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    sink = MqttSink(settings, tmp_path, on_command=handler)
    try:
        wait_until(lambda: sink.health().subscribed, what="connected and subscribed")
        publisher = mqtt_collector(mqtt_broker, [topics.final])
        for name in ("mute", "unmute", "flush"):
            publisher.publish(f"{topics.command_prefix}{name}")
        wait_until(lambda: calls == ["mute", "unmute", "flush"], what="every command")
        sink.handle(final(1))
        publisher.wait_count(topics.final, 1)
        assert sink.health().ok
    finally:
        sink.close()


# --------------------------------------------------------------------------- discovery


def test_home_assistant_discovery(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker, site="living_room")
    topics = Topics.from_settings(settings)
    config_topic = "homeassistant/device/voxd_living_room/config"
    assert hass.discovery_topic("homeassistant", "living_room") == config_topic
    collector = mqtt_collector(mqtt_broker, ["homeassistant/#"])
    sinks.make(settings)

    message = collector.wait_count(config_topic, 1)[0]
    payload = message.json()
    assert payload["dev"]["identifiers"] == ["voxd_living_room"]
    for key in ("name", "model", "sw_version", "manufacturer"):
        assert payload["dev"][key]
    assert payload["o"]["name"] == "voxd"

    components = payload["cmps"]
    platforms = {key: c["p"] for key, c in components.items()}
    assert platforms == {
        "transcript": "event",
        "last_transcript": "sensor",
        "wake_word": "event",
        "speaking": "binary_sensor",
        "mute": "switch",
        "real_time_factor": "sensor",
        "overruns": "sensor",
        "uptime": "sensor",
        "mic_reconnects": "sensor",
    }
    unique_ids = [c["unique_id"] for c in components.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    assert all(uid.startswith("voxd_living_room_") for uid in unique_ids)
    assert all(c["availability_topic"] == topics.availability for c in components.values())

    assert components["transcript"]["event_types"] == ["transcript"]
    assert components["transcript"]["state_topic"] == topics.final
    assert "'event_type': 'transcript'" in components["transcript"]["value_template"]
    assert components["wake_word"]["event_types"] == ["detected"]
    assert components["wake_word"]["state_topic"] == topics.wake == "voxd/living_room/wake"
    assert "[:255]" in components["last_transcript"]["value_template"]
    assert components["last_transcript"]["json_attributes_topic"] == topics.final
    assert components["speaking"]["state_topic"] == topics.state
    assert components["mute"]["command_topic"] == topics.mute_switch
    for key in ("real_time_factor", "overruns", "uptime", "mic_reconnects"):
        assert components[key]["entity_category"] == "diagnostic"
        assert components[key]["state_topic"] == topics.stats

    # Home Assistant restarts: it announces itself and voxd announces again.
    collector.publish("homeassistant/status", b"online")
    collector.wait_count(config_topic, 2)
    assert collector.messages(config_topic)[-1].json() == payload
    collector.publish("homeassistant/status", b"offline")  # no re-publish for offline
    late = mqtt_collector(mqtt_broker, [config_topic])
    assert late.wait_count(config_topic, 1)[0].retain


def test_discovery_disabled(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker, site="quiet", discovery={"enabled": False})
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, ["homeassistant/#", topics.availability])
    sinks.make(settings)
    collector.publish("homeassistant/status", b"online")
    collector.wait_count(topics.availability, 1)
    sinks.make(settings_for(mqtt_broker, site="marker"))  # discovery on: a later message
    collector.wait_count("homeassistant/device/voxd_marker/config", 1)
    assert not collector.messages("homeassistant/device/voxd_quiet/config")


# --------------------------------------------------------------------------- outages


def test_broker_restart_delivers_finals_in_order_exactly_once(
    persistent_mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    broker = persistent_mqtt_broker
    settings = settings_for(broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(broker, [topics.final, topics.delta], persistent=True)
    sink = sinks.make(settings)

    for n in range(3):
        sink.handle(final(n))
    collector.wait_count(topics.final, 3)
    wait_until(lambda: len(sink.outbox) == 0, what="first finals acknowledged")

    broker.stop()
    wait_until(lambda: not sink.connected, what="sink noticed the broker is gone")
    for n in range(3, 8):
        sink.handle(final(n))
    sink.handle(TranscriptDelta("utt-7", 0, "lost", 0.1))  # deltas are not kept
    wait_until(lambda: len(sink.outbox) == 5, what="finals kept in the outbox")

    broker.start()
    wait_until(lambda: sink.connected, what="sink reconnected")
    sink.handle(final(8))  # after the backlog
    collector.wait_count(topics.final, 9)
    wait_until(lambda: len(sink.outbox) == 0, what="outbox emptied")
    sink.handle(final(9))  # a marker: anything sent before it has arrived
    collector.wait_count(topics.final, 10)

    assert final_ids(collector, topics) == [f"utt-{n}" for n in range(10)]
    assert not any(p["text"] == "lost" for p in collector.payloads(topics.delta))


def test_sink_restart_while_broker_down_loses_nothing(
    persistent_mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    broker = persistent_mqtt_broker
    settings = settings_for(broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(broker, [topics.final], persistent=True)
    first = sinks.make(settings)
    first.handle(final(0))
    collector.wait_count(topics.final, 1)
    wait_until(lambda: len(first.outbox) == 0, what="first final acknowledged")

    broker.stop()
    wait_until(lambda: not first.connected, what="sink noticed the broker is gone")
    for n in range(1, 4):
        first.handle(final(n))
    first.close()  # the daemon stops while the broker is down ...
    assert len(first.outbox) == 3

    second = sinks.make(settings, wait_connected=False)  # ... and starts again
    assert [json.loads(e.payload)["utterance_id"] for e in second.outbox.entries()] == [
        "utt-1",
        "utt-2",
        "utt-3",
    ]
    second.handle(final(4))
    wait_until(lambda: len(second.outbox) == 4, what="new final queued behind the old ones")

    broker.start()
    collector.wait_count(topics.final, 5)
    wait_until(lambda: len(second.outbox) == 0, what="outbox emptied")
    second.handle(final(5))
    collector.wait_count(topics.final, 6)
    assert final_ids(collector, topics) == [f"utt-{n}" for n in range(6)]
    # Only the first and the last went out as soon as they were made.
    replayed = [p["replayed"] for p in collector.payloads(topics.final)]
    assert replayed == [False, True, True, True, True, False]


def test_broker_down_at_start_and_outbox_bound(
    persistent_mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    broker = persistent_mqtt_broker
    settings = settings_for(broker, outbox_max=3)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(broker, [topics.final], persistent=True)
    broker.stop()

    sink = sinks.make(settings, wait_connected=False)  # must not fail or block
    for n in range(5):
        sink.handle(final(n))
    wait_until(lambda: sink.outbox.dropped == 2, what="two oldest dropped")
    assert len(sink.outbox) == 3

    broker.start()
    collector.wait_count(topics.final, 3)
    wait_until(lambda: len(sink.outbox) == 0, what="outbox emptied")
    sink.handle(final(5))
    collector.wait_count(topics.final, 4)
    assert final_ids(collector, topics) == ["utt-2", "utt-3", "utt-4", "utt-5"]


def test_handle_from_many_threads_keeps_each_threads_order(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    sink = sinks.make(settings)

    def produce(k: int) -> None:
        for n in range(10):
            sink.handle(final(k * 100 + n))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    collector.wait_count(topics.final, 30)
    ids = final_ids(collector, topics)
    assert sorted(ids) == sorted(f"utt-{k * 100 + n}" for k in range(3) for n in range(10))
    for k in range(3):
        mine = [i for i in ids if int(i.split("-")[1]) // 100 == k]
        assert mine == [f"utt-{k * 100 + n}" for n in range(10)]


# --------------------------------------------------------------------------- TLS and login


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed_cert(ca_dir: Path, name: str, extensions: str) -> None:
    """``name.key`` + ``name.crt`` signed by the CA in ``ca_dir``."""
    (ca_dir / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=ca_dir,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=ca_dir,
    )  # fmt: skip


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A test CA, a server certificate for 127.0.0.1, one for another host, a client one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    ca_dir = tmp_path / "pki"
    ca_dir.mkdir()
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=voxd test CA",
        cwd=ca_dir,
    )  # fmt: skip
    _signed_cert(ca_dir, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    _signed_cert(ca_dir, "elsewhere", "subjectAltName=DNS:elsewhere.example")
    _signed_cert(ca_dir, "client", "extendedKeyUsage=clientAuth")
    return ca_dir


def _tls_broker(factory: BrokerFactory, pki: Path, server: str) -> Mosquitto:
    return factory(
        extra_conf=[
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / server}.crt",
            f"keyfile {pki / server}.key",
            "require_certificate true",
        ]
    )


def _delivers_a_final(sink: MqttSink) -> None:
    wait_until(lambda: sink.connected, what="connected")
    sink.handle(final(1))
    wait_until(lambda: len(sink.outbox) == 0, what="final acknowledged by the broker")


def test_tls_with_client_certificate(
    mosquitto_factory: BrokerFactory, certificates: Path, sinks: Sinks
) -> None:
    broker = _tls_broker(mosquitto_factory, certificates, "server")
    tls = {
        "enabled": True,
        "ca_file": certificates / "ca.crt",
        "cert_file": certificates / "client.crt",
        "key_file": certificates / "client.key",
    }
    sink = sinks.make(settings_for(broker, tls=tls), wait_connected=False)
    _delivers_a_final(sink)


def test_tls_host_name_check_and_insecure(
    mosquitto_factory: BrokerFactory,
    certificates: Path,
    sinks: Sinks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = _tls_broker(mosquitto_factory, certificates, "elsewhere")
    tls: dict[str, Any] = {
        "enabled": True,
        "ca_file": certificates / "ca.crt",
        "cert_file": certificates / "client.crt",
        "key_file": certificates / "client.key",
    }
    with caplog.at_level(logging.WARNING, logger="voxd.sinks"):
        strict = sinks.make(settings_for(broker, site="strict", tls=tls), wait_connected=False)
        wait_until(
            lambda: any("cannot connect" in r.getMessage() for r in caplog.records),
            what="certificate for another host refused",
        )
    assert not strict.connected

    insecure = sinks.make(
        settings_for(broker, site="insecure", tls={**tls, "insecure": True}),
        wait_connected=False,
    )
    _delivers_a_final(insecure)


def test_password_file(
    mosquitto_factory: BrokerFactory,
    tmp_path: Path,
    sinks: Sinks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mosquitto_passwd = shutil.which("mosquitto_passwd")
    if mosquitto_passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    passwords = tmp_path / "passwords"
    subprocess.run([mosquitto_passwd, "-b", "-c", str(passwords), "voxd", "s3cret"], check=True)
    broker = mosquitto_factory(extra_conf=["allow_anonymous false", f"password_file {passwords}"])
    good = tmp_path / "good-password"
    good.write_text("s3cret\n")  # the trailing newline is not part of the password
    bad = tmp_path / "bad-password"
    bad.write_text("guess\n")

    with caplog.at_level(logging.ERROR, logger="voxd.sinks"):
        refused = sinks.make(
            settings_for(broker, site="bad", username="voxd", password_file=bad),
            wait_connected=False,
        )
        wait_until(
            lambda: any("refused the connection" in r.getMessage() for r in caplog.records),
            what="wrong password refused",
        )
    assert not refused.connected

    sink = sinks.make(
        settings_for(broker, site="good", username="voxd", password_file=good),
        wait_connected=False,
    )
    _delivers_a_final(sink)


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    settings = MqttSettings(username="voxd", password_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match="mqtt.password_file: cannot read"):
        MqttSink(settings, tmp_path)
