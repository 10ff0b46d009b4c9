"""Home Assistant MQTT discovery for voxd.

Device-based discovery: one retained config message on
``<prefix>/device/<node_id>/config`` announces the device (``dev``), the
software that announces it (``o``, origin) and all its entities (``cmps``,
each with its platform ``p``). ``node_id`` is ``voxd_<site>``.

Entities (unique ids ``voxd_<site>_<key>``):

- ``transcript``: event, event type ``transcript``, fired by each final (a
  value template turns the final's JSON into the event payload);
- ``last_transcript``: sensor, state = text of the last final (HA limits
  states to 255 characters), attributes = the final's details incl. full text;
- ``speaking``: binary_sensor, on while the pipeline state is ``speaking``;
- ``mute``: switch, on while ``muted``; commands ``ON``/``OFF`` on
  ``<root>/cmd/mute-set``;
- ``real_time_factor``, ``overruns``, ``uptime``, ``mic_reconnects``:
  diagnostic sensors from ``<root>/stats``.

Every entity names the availability topic. The message is published at each
connect and again when Home Assistant announces itself (``<prefix>/status``
= ``online``), as its documentation asks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxd.config import MqttSettings
    from voxd.mqtt import Topics

MANUFACTURER = "voxd"
MODEL = "Voxtral Realtime speech-to-text"
STATE_MAX_CHARS = 255  # Home Assistant's limit for a state

_EVENT_TEMPLATE = (
    "{{ {'event_type': 'transcript', 'text': value_json.text, "
    "'utterance_id': value_json.utterance_id, 'audio_seconds': value_json.audio_seconds, "
    "'reason': value_json.reason} | to_json }}"
)
_LAST_TEXT_TEMPLATE = f"{{{{ value_json.text[:{STATE_MAX_CHARS}] }}}}"
_FINAL_ATTRIBUTES_TEMPLATE = (
    "{{ {'text': value_json.text, 'utterance_id': value_json.utterance_id, "
    "'started_at': value_json.started_at, 'ended_at': value_json.ended_at, "
    "'audio_seconds': value_json.audio_seconds, 'latency_s': value_json.latency_s, "
    "'reason': value_json.reason} | to_json }}"
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
    return {
        "dev": {
            "identifiers": [node],
            "name": f"voxd {settings.site}",
            "manufacturer": MANUFACTURER,
            "model": MODEL,
            "sw_version": sw_version,
        },
        "o": {"name": "voxd", "sw_version": sw_version},
        "qos": 1,
        "cmps": components,
    }


def _components(topics: Topics) -> dict[str, dict[str, Any]]:
    return {
        "transcript": _transcript_event(topics),
        "last_transcript": _last_transcript_sensor(topics),
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
