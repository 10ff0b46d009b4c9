"""Home Assistant discovery: QoS on every component (as a real mosquitto keeps the
retained message), and the transcript templates rendered as Home Assistant would.

The template tests need Jinja2, Home Assistant's template engine; they are
skipped where it is not installed (voxd itself does not depend on it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import CollectorFactory, Mosquitto, wait_until

from voxd import __version__
from voxd.config import MqttSettings
from voxd.events import TranscriptFinal, WakeWordDetected
from voxd.sinks import hass
from voxd.sinks.mqtt import MqttSink
from voxd.sinks.mqtt_protocol import Topics

# Keys the final's JSON carries for Home Assistant, and the sink's publish-time keys.
EVENT_KEYS = {
    "event_type",
    "text",
    "utterance_id",
    "audio_seconds",
    "reason",
    "started_at",
    "ended_at",
    "replayed",
    "age_s",
}
ATTRIBUTE_KEYS = EVENT_KEYS - {"event_type"} | {"latency_s"}


def settings_for(broker: Mosquitto, site: str) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        site=site,
        reconnect_min_s=1.0,
        reconnect_max_s=1.0,
        keepalive_s=5,
    )


def a_final(text: str = "turn on the kitchen light") -> TranscriptFinal:
    return TranscriptFinal(
        utterance_id="kitchen-1764600000000-7",
        text=text,
        started_at=1_764_600_000.25,
        ended_at=1_764_600_001.75,
        audio_seconds=2.5,
        latency_s=0.3,
        reason="silence",
        token_ids=(11, 12, 13),
        engine={"real_time_factor": 0.4},
    )


@pytest.fixture
def sink(mqtt_broker: Mosquitto, tmp_path: Path) -> Iterator[MqttSink]:
    made = MqttSink(settings_for(mqtt_broker, "living_room"), tmp_path / "state")
    wait_until(lambda: made.connected, what="sink connected")
    yield made
    made.close()


# --------------------------------------------------------------------------- QoS


def test_every_component_has_qos_in_the_retained_discovery_message(
    mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sink: MqttSink
) -> None:
    settings = settings_for(mqtt_broker, "living_room")
    topic = hass.discovery_topic("homeassistant", "living_room")
    # Subscribed after the publish: what it gets is the broker's retained copy.
    late = mqtt_collector(mqtt_broker, [topic])
    message = late.wait_count(topic, 1)[0]
    assert message.retain
    payload = message.json()
    assert payload == hass.discovery_payload(sink.topics, settings, __version__)

    assert payload["qos"] == 1  # the shared option, for Home Assistant versions that read it
    components = payload["cmps"]
    assert len(components) == 9
    missing = [key for key, c in components.items() if "qos" not in c]
    assert missing == [], f"components without their own qos: {missing}"
    assert {key: c["qos"] for key, c in components.items()} == dict.fromkeys(components, 1)
    # The topics that matter most are among them.
    assert components["transcript"]["state_topic"] == sink.topics.final
    assert components["last_transcript"]["state_topic"] == sink.topics.final
    assert components["speaking"]["state_topic"] == sink.topics.state
    assert components["mute"]["command_topic"] == sink.topics.mute_switch
    assert components["wake_word"]["state_topic"] == sink.topics.wake


def test_templates_read_the_time_keys_with_defaults() -> None:
    """The text of the templates (rendered for real in the Jinja tests below)."""
    payload = hass.discovery_payload(Topics("voxd/x"), MqttSettings(site="x"), "1")
    event = payload["cmps"]["transcript"]["value_template"]
    attributes = payload["cmps"]["last_transcript"]["json_attributes_template"]
    for template in (event, attributes):
        assert "value_json.started_at" in template and "value_json.ended_at" in template
        assert "value_json.replayed | default(false)" in template
        assert "value_json.age_s | default(0)" in template


# --------------------------------------------------------------------------- templates


def ha_render(template: str, payload: str) -> str:
    """Render an MQTT value template roughly as Home Assistant does.

    Home Assistant renders ``value_template`` / ``json_attributes_template``
    with Jinja2 in a sandbox, with ``value`` (the payload text) and
    ``value_json`` (the payload parsed as JSON). Its ``to_json`` filter is
    Home Assistant's own, emulated here by a filter registered as ``to_json``
    that serialises with json.dumps. Undefined values are strict here (Home
    Assistant only logs them), so a key read without a default fails the test.
    """
    jinja2 = pytest.importorskip("jinja2")
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    rendered: str = env.from_string(template).render(value=payload, value_json=json.loads(payload))
    return rendered


def published(final: TranscriptFinal, **sink_keys: Any) -> str:
    """The final's JSON as the MQTT sink publishes it (with its publish-time keys)."""
    return json.dumps({**final.to_json(), **sink_keys})


@pytest.fixture
def components() -> dict[str, dict[str, Any]]:
    settings = MqttSettings(site="kitchen")
    cmps: dict[str, dict[str, Any]] = hass.discovery_payload(
        Topics.from_settings(settings), settings, "test"
    )["cmps"]
    return cmps


@pytest.mark.parametrize(
    ("sink_keys", "replayed", "age_s"),
    [
        ({"replayed": True, "age_s": 27.4}, True, 27.4),  # waited in the outbox
        ({"replayed": False, "age_s": 0.012}, False, 0.012),  # published at once
        ({}, False, 0),  # a final from a sink that does not add them
    ],
    ids=["replayed", "fresh", "without-keys"],
)
def test_event_template_carries_the_times(
    components: dict[str, dict[str, Any]], sink_keys: dict[str, Any], replayed: bool, age_s: float
) -> None:
    final = a_final()
    event_entity = components["transcript"]
    event = json.loads(ha_render(event_entity["value_template"], published(final, **sink_keys)))
    assert set(event) == EVENT_KEYS
    assert event["event_type"] in event_entity["event_types"]
    assert (event["text"], event["utterance_id"]) == (final.text, final.utterance_id)
    assert (event["started_at"], event["ended_at"]) == (final.started_at, final.ended_at)
    assert (event["replayed"], event["age_s"]) == (replayed, age_s)
    assert (event["audio_seconds"], event["reason"]) == (final.audio_seconds, final.reason)


@pytest.mark.parametrize(
    ("sink_keys", "replayed", "age_s"),
    [({"replayed": True, "age_s": 27.4}, True, 27.4), ({}, False, 0)],
    ids=["replayed", "without-keys"],
)
def test_last_transcript_sensor_state_and_attributes(
    components: dict[str, dict[str, Any]], sink_keys: dict[str, Any], replayed: bool, age_s: float
) -> None:
    long_text = "word " * 80  # 400 characters: more than a state may hold
    final = a_final(long_text.strip())
    sensor = components["last_transcript"]
    payload = published(final, **sink_keys)
    assert ha_render(sensor["value_template"], payload) == final.text[: hass.STATE_MAX_CHARS]
    attributes = json.loads(ha_render(sensor["json_attributes_template"], payload))
    assert set(attributes) == ATTRIBUTE_KEYS
    assert attributes["text"] == final.text  # the full text
    assert (attributes["started_at"], attributes["ended_at"]) == (
        final.started_at,
        final.ended_at,
    )
    assert (attributes["replayed"], attributes["age_s"]) == (replayed, age_s)
    assert attributes["latency_s"] == final.latency_s


def test_wake_word_event_entity_fires_detected_with_the_detection(
    components: dict[str, dict[str, Any]],
) -> None:
    entity = components["wake_word"]
    assert entity["p"] == "event"
    assert entity["event_types"] == ["detected"]
    assert entity["state_topic"] == "voxd/kitchen/wake"
    assert entity["qos"] == 1 and entity["unique_id"] == "voxd_kitchen_wake_word"
    wake = WakeWordDetected("okay_nabu", 0.93, 1_764_600_002.5)
    event = json.loads(ha_render(entity["value_template"], json.dumps(wake.to_json())))
    assert event == {
        "event_type": "detected",
        "wake_word": "okay_nabu",
        "probability": 0.93,
        "at": 1_764_600_002.5,
    }
    assert event["event_type"] in entity["event_types"]
