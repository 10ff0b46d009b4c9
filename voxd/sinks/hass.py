"""Home Assistant MQTT discovery for voxd.

Device-based discovery: one retained config message on
``<prefix>/device/<node_id>/config`` announces the device (``dev``), the
software that announces it (``o``, origin) and all its entities (``cmps``,
each with its platform ``p``). ``node_id`` is ``voxd_<site>``.

Entities (unique ids ``voxd_<site>_<key>``):

- ``transcript``: event, event type ``transcript``, fired by each final (a
  value template turns the final's JSON into the event payload, see below);
- ``last_transcript``: sensor, state = text of the last final (HA limits
  states to 255 characters), attributes = the final's details incl. full text
  and the same time keys as the event;
- ``wake_word``: event, event type ``detected``, fired by each wake-word
  detection on ``<root>/wake`` (only with ``[wakeword]`` enabled; the event
  carries ``wake_word``, ``probability`` and ``at``);
- ``speaking``: binary_sensor, on while the pipeline state is ``speaking``;
- ``mute``: switch, on while ``muted``; commands ``ON``/``OFF`` on
  ``<root>/cmd/mute-set``;
- ``real_time_factor``, ``overruns``, ``uptime``, ``mic_reconnects``:
  diagnostic sensors from ``<root>/stats``.

The ``transcript`` event carries ``text``, ``utterance_id``,
``audio_seconds``, ``reason`` and the time keys an automation needs to tell
an old command from a new one:

- ``started_at``, ``ended_at``: when the speech began and ended (unix
  seconds, e.g. ``now().timestamp() - trigger.to_state.attributes.ended_at``);
- ``replayed``: true when the final waited in the disk outbox (broker or
  link down) and is delivered late; false for one published at once;
- ``age_s``: seconds from the final's creation to its publish.

The MQTT sink adds ``replayed`` and ``age_s`` to the final's JSON when it
publishes it; the templates read them with ``default(false)`` /
``default(0)``, so a final without them (an older voxd) still fires the
event, as a fresh one.

QoS: Home Assistant subscribes to each entity's topics at that entity's
``qos``. The root ``qos`` of the device message is a shared option that
only recent Home Assistant versions apply to the components (2025.4 and
2026.2 ignore it and subscribe at QoS 0), so every component also sets
``qos`` itself (a component's option overrides the shared one). It is 1
everywhere: the finals (event and sensor), the wake-word detections and
the retained state are published at QoS 1 and must not be lost on the
broker -> Home Assistant leg; the mute switch publishes its commands at its ``qos``, so 1 makes a
command arrive at least once. The diagnostic sensors also get 1: their
stats are published at QoS 0 and so still arrive at 0 (MQTT delivers at the
lower of the publish and subscription QoS: nothing gained, nothing paid),
but Home Assistant subscribes to the availability topic, published at QoS 1,
at the entity's ``qos``, and ``offline`` should reach every entity.

Every entity names the availability topic. The message is published at each
connect and again when Home Assistant announces itself (``<prefix>/status``
= ``online``), as its documentation asks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxd.config import MqttSettings
    from voxd.sinks.mqtt_protocol import Topics

MANUFACTURER = "voxd"
MODEL = "Voxtral Realtime speech-to-text"
STATE_MAX_CHARS = 255  # Home Assistant's limit for a state
QOS = 1  # root and per component: see the module doc

# The time keys of a final, as Jinja dict items; the MQTT sink adds replayed
# and age_s at publish time, and a final without them is a fresh one.
_FINAL_TIMES = (
    "'started_at': value_json.started_at, 'ended_at': value_json.ended_at, "
    "'replayed': value_json.replayed | default(false), "
    "'age_s': value_json.age_s | default(0)"
)
_EVENT_TEMPLATE = (
    "{{ {'event_type': 'transcript', 'text': value_json.text, "
    "'utterance_id': value_json.utterance_id, 'audio_seconds': value_json.audio_seconds, "
    f"'reason': value_json.reason, {_FINAL_TIMES}}} | to_json }}}}"
)
_WAKE_TEMPLATE = (
    "{{ {'event_type': 'detected', 'wake_word': value_json.wake_word, "
    "'probability': value_json.probability, 'at': value_json.at} | to_json }}"
)
_LAST_TEXT_TEMPLATE = f"{{{{ value_json.text[:{STATE_MAX_CHARS}] }}}}"
_FINAL_ATTRIBUTES_TEMPLATE = (
    "{{ {'text': value_json.text, 'utterance_id': value_json.utterance_id, "
    "'audio_seconds': value_json.audio_seconds, 'latency_s': value_json.latency_s, "
    f"'reason': value_json.reason, {_FINAL_TIMES}}} | to_json }}}}"
)


def _state_is(state: str) -> str:
    return f"{{{{ 'ON' if value_json.state == '{state}' else 'OFF' }}}}"


def _stat(key: str) -> str:
    return f"{{{{ value_json.{key} }}}}"


def node_id(site: str) -> str:
    """Discovery node id: ``voxd_<site>`` with only the characters HA allows."""
    return "voxd_" + re.sub(r"[^A-Za-z0-9_-]", "_", site)


def discovery_topic(prefix: str, site: str) -> str:
    return f"{prefix}/device/{node_id(site)}/config"


def status_topic(prefix: str) -> str:
    """Where Home Assistant publishes ``online`` when it (re)starts."""
    return f"{prefix}/status"


def discovery_payload(topics: Topics, settings: MqttSettings, sw_version: str) -> dict[str, Any]:
    """The device discovery message (a dict, to be sent as JSON, retained)."""
    node = node_id(settings.site)
    components = _components(topics)
    for key, component in components.items():
        component["unique_id"] = f"{node}_{key}"
        component["availability_topic"] = topics.availability
        component["qos"] = QOS  # older Home Assistant versions ignore the root one
    return {
        "dev": {
            "identifiers": [node],
            "name": f"voxd {settings.site}",
            "manufacturer": MANUFACTURER,
            "model": MODEL,
            "sw_version": sw_version,
        },
        "o": {"name": "voxd", "sw_version": sw_version},
        "qos": QOS,  # shared option: read by recent Home Assistant versions
        "cmps": components,
    }


def _components(topics: Topics) -> dict[str, dict[str, Any]]:
    return {
        "transcript": _transcript_event(topics),
        "last_transcript": _last_transcript_sensor(topics),
        "wake_word": _wake_word_event(topics),
        "speaking": _speaking_binary_sensor(topics),
        "mute": _mute_switch(topics),
        **_diagnostic_sensors(topics),
    }


def _transcript_event(topics: Topics) -> dict[str, Any]:
    return {
        "p": "event",
        "name": "Transcript",
        "icon": "mdi:account-voice",
        "state_topic": topics.final,
        "event_types": ["transcript"],
        "value_template": _EVENT_TEMPLATE,
    }


def _wake_word_event(topics: Topics) -> dict[str, Any]:
    return {
        "p": "event",
        "name": "Wake word",
        "icon": "mdi:account-voice",
        "state_topic": topics.wake,
        "event_types": ["detected"],
        "value_template": _WAKE_TEMPLATE,
    }


def _last_transcript_sensor(topics: Topics) -> dict[str, Any]:
    return {
        "p": "sensor",
        "name": "Last transcript",
        "icon": "mdi:text-box-outline",
        "state_topic": topics.final,
        "value_template": _LAST_TEXT_TEMPLATE,
        "json_attributes_topic": topics.final,
        "json_attributes_template": _FINAL_ATTRIBUTES_TEMPLATE,
    }


def _speaking_binary_sensor(topics: Topics) -> dict[str, Any]:
    return {
        "p": "binary_sensor",
        "name": "Speaking",
        "device_class": "sound",
        "state_topic": topics.state,
        "value_template": _state_is("speaking"),
        "payload_on": "ON",
        "payload_off": "OFF",
    }


def _mute_switch(topics: Topics) -> dict[str, Any]:
    return {
        "p": "switch",
        "name": "Mute",
        "icon": "mdi:microphone-off",
        "state_topic": topics.state,
        "value_template": _state_is("muted"),
        "state_on": "ON",
        "state_off": "OFF",
        "command_topic": topics.mute_switch,
        "payload_on": "ON",
        "payload_off": "OFF",
    }


def _diagnostic_sensors(topics: Topics) -> dict[str, dict[str, Any]]:
    def sensor(name: str, key: str, **extra: Any) -> dict[str, Any]:
        return {
            "p": "sensor",
            "name": name,
            "entity_category": "diagnostic",
            "state_topic": topics.stats,
            "value_template": _stat(key),
            **extra,
        }

    return {
        "real_time_factor": sensor(
            "Real-time factor",
            "real_time_factor",
            icon="mdi:speedometer",
            state_class="measurement",
            suggested_display_precision=2,
        ),
        "overruns": sensor(
            "Audio overruns", "overruns", icon="mdi:alert-circle", state_class="total_increasing"
        ),
        "uptime": sensor(
            "Uptime",
            "uptime_s",
            device_class="duration",
            unit_of_measurement="s",
            suggested_display_precision=0,
        ),
        "mic_reconnects": sensor(
            "Microphone reconnects",
            "mic_reconnects",
            icon="mdi:microphone-message",
            state_class="total_increasing",
        ),
    }
