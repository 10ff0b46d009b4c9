"""The MQTT sink's contract on the wire, without paho: topics, commands, payloads.

The topic table is in :mod:`voxd.sinks.mqtt`. What is here is what the
preflight checks (``voxd config check``, the start of ``voxd run``) and Home
Assistant's discovery need as well as the sink, so they can use it without
loading the MQTT client.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any

from voxd.config import ConfigError, MqttSettings
from voxd.events import COMMANDS, TranscriptFinal

log = logging.getLogger(__name__)

MUTE_SWITCH = "mute-set"  # Home Assistant switch: payload ON = mute, OFF = unmute
_SWITCH_PAYLOADS = {"ON": "mute", "OFF": "unmute"}
MAX_COMMAND_BYTES = 4096
# Deeper JSON is refused before json.loads sees it: its parser recurses, and a
# few thousand brackets would raise RecursionError in paho's network thread.
MAX_COMMAND_DEPTH = 32
HERMES_TEXT_CAPTURED = "hermes/asr/textCaptured"
ONLINE = "online"
OFFLINE = "offline"


class InvalidCommand(ValueError):
    """A command message voxd does not obey; the text says why."""


@dataclass(frozen=True)
class Topics:
    """Every topic voxd uses, derived from the root."""

    root: str

    @classmethod
    def from_settings(cls, settings: MqttSettings) -> Topics:
        return cls(settings.topic_root)

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    @property
    def delta(self) -> str:
        return f"{self.root}/transcript/delta"

    @property
    def final(self) -> str:
        return f"{self.root}/transcript/final"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def stats(self) -> str:
        return f"{self.root}/stats"

    @property
    def wake(self) -> str:
        return f"{self.root}/wake"

    @property
    def command_prefix(self) -> str:
        return f"{self.root}/cmd/"

    @property
    def commands(self) -> str:
        """Subscription filter for all commands."""
        return f"{self.root}/cmd/+"

    @property
    def mute_switch(self) -> str:
        return f"{self.root}/cmd/{MUTE_SWITCH}"


def hermes_text_captured(final: TranscriptFinal, site_id: str) -> dict[str, Any]:
    """Rhasspy Hermes ``hermes/asr/textCaptured`` payload for a final transcript."""
    return {
        "text": final.text.strip(),
        "likelihood": 1.0,  # the engine gives no confidence score
        "seconds": final.audio_seconds,
        "siteId": site_id,
        "sessionId": final.utterance_id,
        "wakewordId": None,
        "asrTokens": None,
    }


def check_command(name: str, payload: bytes) -> str:
    """The command to run for a message on ``cmd/<name>``; InvalidCommand if none.

    Payload: empty, or a JSON object (reserved for arguments) of at most
    MAX_COMMAND_BYTES nested at most MAX_COMMAND_DEPTH deep; for
    ``cmd/mute-set`` exactly ``ON`` or ``OFF``.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise InvalidCommand(
            f"payload of {len(payload)} bytes is too large (at most {MAX_COMMAND_BYTES})"
        )
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidCommand("payload is not UTF-8") from None
    if name == MUTE_SWITCH:
        command = _SWITCH_PAYLOADS.get(text.upper())
        if command is None:
            raise InvalidCommand(f"payload {text[:80]!r} is not ON or OFF")
        return command
    if name not in COMMANDS:
        raise InvalidCommand(f"unknown command (known: {', '.join(sorted(COMMANDS))})")
    if text and not _is_json_object(text):
        raise InvalidCommand(
            f"payload {text[:80]!r} is not empty or a JSON object "
            f"(nested at most {MAX_COMMAND_DEPTH} deep)"
        )
    return name


def parse_command(name: str, payload: bytes) -> str | None:
    """:func:`check_command`, or None (logged) for a message that is no command."""
    try:
        return check_command(name, payload)
    except InvalidCommand as err:
        log.warning("ignoring command %r: %s", name, err)
        return None


def json_depth_within(text: str, max_depth: int) -> bool:
    """False when brackets outside strings nest deeper than ``max_depth``.

    A plain scan, no recursion: it runs before json.loads so that the parser
    never sees deep input. Brackets are only counted, not matched; json.loads
    rejects what is malformed.
    """
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _is_json_object(text: str) -> bool:
    if not json_depth_within(text, MAX_COMMAND_DEPTH):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):  # RecursionError: cannot happen after the check
        return False


def default_client_id(site: str) -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
    return f"voxd-{site}-{host}"


def read_password(settings: MqttSettings) -> str | None:
    """The password from the settings or from password_file (trailing newline removed)."""
    if settings.password_file is None:
        return settings.password
    try:
        return settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            [f"mqtt.password_file: cannot read {settings.password_file}: {err}"]
        ) from None
