"""MQTT sink: publishes pipeline events for Home Assistant, Node-RED and friends.

Topics, under ``<root>`` = ``mqtt.base_topic`` or ``voxd/<site>``:

=========================  =====  ======  =========================================
topic                      QoS    retain  payload
=========================  =====  ======  =========================================
<root>/availability        1      yes     ``online`` / ``offline`` (also the last will)
<root>/transcript/delta    0      no      TranscriptDelta JSON; dropped while offline
<root>/transcript/final    1      no      TranscriptFinal JSON; via the disk outbox
<root>/state               1      yes     StateChanged JSON ``{"state": "idle"}``
<root>/stats               0      yes     Stats JSON; dropped while offline
<root>/cmd/<name>          in             commands: mute, unmute, flush, reset
<root>/cmd/mute-set        in             ``ON`` / ``OFF`` (Home Assistant switch)
hermes/asr/textCaptured    0      no      Rhasspy Hermes, when mqtt.hermes.enabled
=========================  =====  ======  =========================================

Final transcripts are never lost to a broker outage or a restart: each one is
first written to the :class:`~voxd.outbox.Outbox`, then published, and removed
from the outbox when the broker's PUBACK for it arrives. Exactly one final is
handed to paho at a time, so they reach the broker strictly in order (paho
itself re-sends the one in flight after a reconnect).

Threads: ``handle`` runs in the caller's thread and never waits for the
network or the disk; paho's network thread runs the callbacks; a small worker
thread owns the outbox and the in-flight final.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from voxd import __version__, hass
from voxd.config import ConfigError, MqttSettings
from voxd.events import Event, StateChanged, Stats, TranscriptDelta, TranscriptFinal
from voxd.outbox import Outbox

log = logging.getLogger(__name__)

CommandCallback = Callable[[str], None]

COMMANDS = frozenset({"mute", "unmute", "flush", "reset"})
MUTE_SWITCH = "mute-set"  # Home Assistant switch: payload ON = mute, OFF = unmute
_SWITCH_PAYLOADS = {"ON": "mute", "OFF": "unmute"}
MAX_COMMAND_BYTES = 4096
HERMES_TEXT_CAPTURED = "hermes/asr/textCaptured"
OUTBOX_DIRNAME = "outbox"
ONLINE = "online"
OFFLINE = "offline"
_CLOSE_PUBLISH_TIMEOUT_S = 2.0


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
    def command_prefix(self) -> str:
        return f"{self.root}/cmd/"

    @property
    def commands(self) -> str:
        """Subscription filter for all commands."""
        return f"{self.root}/cmd/+"

    @property
    def mute_switch(self) -> str:
        return f"{self.root}/cmd/{MUTE_SWITCH}"


def to_json_text(data: dict[str, Any]) -> str:
    """Compact JSON; NaN and infinities (invalid JSON) become null."""
    return json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


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


def parse_command(name: str, payload: bytes) -> str | None:
    """The command to run for a message on ``cmd/<name>``, or None (logged) if invalid.

    Payload: empty, or a JSON object (reserved for arguments); for
    ``cmd/mute-set`` exactly ``ON`` or ``OFF``.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        log.warning("ignoring command %r: payload of %d bytes is too large", name, len(payload))
        return None
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        log.warning("ignoring command %r: payload is not UTF-8", name)
        return None
    if name == MUTE_SWITCH:
        command = _SWITCH_PAYLOADS.get(text.upper())
        if command is None:
            log.warning("ignoring command %r: payload %r is not ON or OFF", name, text[:80])
        return command
    if name not in COMMANDS:
        log.warning("ignoring unknown command %r (known: %s)", name, ", ".join(sorted(COMMANDS)))
        return None
    if text and not _is_json_object(text):
        log.warning(
            "ignoring command %r: payload %r is not empty or a JSON object", name, text[:80]
        )
        return None
    return name


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
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


class _QuietPahoNoise(logging.Filter):
    """paho logs "Client is not connected" as an error while its loop winds down
    after a disconnect; that is expected, so it becomes a debug message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(
            "Client is not connected"
        ):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
        return True


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_QuietPahoNoise())


# Items for the worker thread's queue.
@dataclass(frozen=True)
class _Ack:
    mid: int


@dataclass(frozen=True)
class _Link:
    up: bool


@dataclass(frozen=True)
class _InFlight:
    mid: int
    seq: int


_WorkItem = TranscriptFinal | _Ack | _Link | None  # None = stop


class MqttSink:
    """Publishes events to an MQTT broker; receives commands from it.

    Starts connecting at once (in the background: a broker that is down only
    delays delivery). ``handle(event)`` is the sink entry point,
    ``on_command(name)`` is called (from paho's thread; keep it short) for
    each valid command, ``close()`` says goodbye and stops.
    """

    def __init__(
        self,
        settings: MqttSettings,
        state_dir: Path,
        on_command: CommandCallback | None = None,
        *,
        sw_version: str = __version__,
    ) -> None:
        self._settings = settings
        self._topics = Topics.from_settings(settings)
        self._on_command = on_command
        self._sw_version = sw_version
        self._outbox = Outbox(state_dir / OUTBOX_DIRNAME, settings.outbox_max)
        self._queue: queue.SimpleQueue[_WorkItem] = queue.SimpleQueue()
        self._state_lock = threading.Lock()  # orders state publishes with (re)connects
        self._state: StateChanged | None = None
        self._connected = False
        self._closed = False
        self._connected_since = 0.0
        self._connect_failures = 0
        # Owned by the worker thread only:
        self._link_up = False
        self._in_flight: _InFlight | None = None

        self._client = self._make_client()
        self._worker = threading.Thread(target=self._work, name="voxd-mqtt-outbox", daemon=True)
        self._worker.start()
        self._start()

    # ------------------------------------------------------------------ public API

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def connected(self) -> bool:
        return self._connected

    def handle(self, event: Event) -> None:
        """Publish one pipeline event. Never blocks on the network or the disk."""
        if self._closed:
            log.debug("MQTT sink closed: dropping %s", type(event).__name__)
            return
        if isinstance(event, TranscriptFinal):
            self._queue.put(event)
        elif isinstance(event, TranscriptDelta):
            self._publish_live(self._topics.delta, event.to_json(), retain=False)
        elif isinstance(event, StateChanged):
            self._publish_state(event)
        elif isinstance(event, Stats):
            self._publish_live(self._topics.stats, event.to_json(), retain=True)
        else:
            log.warning("MQTT sink: ignoring unknown event %r", event)

    def close(self, timeout: float = 5.0) -> None:
        """Persist queued finals, publish ``offline``, disconnect, stop threads."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("MQTT outbox worker did not stop within %.1f s", timeout)
        if self._connected:
            self._publish_offline()
        self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT sink closed (%d finals waiting in the outbox)", len(self._outbox))

    def __enter__(self) -> MqttSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ setup

    def _make_client(self) -> paho.Client:
        s = self._settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id or default_client_id(s.site),
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        client.enable_logger(_paho_log)
        client.will_set(self._topics.availability, OFFLINE, qos=1, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, read_password(s))
        if s.tls.enabled:
            self._set_tls(client)
        client.reconnect_delay_set(
            max(1, math.ceil(s.reconnect_min_s)), max(1, math.ceil(s.reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _set_tls(self, client: paho.Client) -> None:
        tls = self._settings.tls
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
        except (OSError, ValueError) as err:
            raise ConfigError([f"mqtt.tls: cannot load certificates: {err}"]) from None
        if tls.insecure:
            log.warning("mqtt.tls.insecure = true: the broker's host name is not verified")
            client.tls_insecure_set(True)

    def _start(self) -> None:
        s = self._settings
        log.info(
            "MQTT: connecting to %s:%d as %s, topics under %s/ (%d finals waiting in the outbox)",
            s.host,
            s.port,
            s.client_id or default_client_id(s.site),
            self._topics.root,
            len(self._outbox),
        )
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()

    # ------------------------------------------------------------------ publishing

    def _publish_live(self, topic: str, data: dict[str, Any], *, retain: bool) -> None:
        """QoS 0, best effort: dropped while disconnected."""
        if self._connected:
            self._client.publish(topic, to_json_text(data), qos=0, retain=retain)

    def _publish_state(self, event: StateChanged) -> None:
        with self._state_lock:
            self._state = event
            if self._connected:
                self._client.publish(self._topics.state, to_json_text(event.to_json()), 1, True)

    def _publish_offline(self) -> None:
        info = self._client.publish(self._topics.availability, OFFLINE, qos=1, retain=True)
        try:
            info.wait_for_publish(_CLOSE_PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as err:
            log.debug("MQTT: offline message not confirmed: %s", err)

    def _publish_discovery(self) -> None:
        discovery = self._settings.discovery
        if not discovery.enabled:
            return
        topic = hass.discovery_topic(discovery.prefix, self._settings.site)
        payload = hass.discovery_payload(self._topics, self._settings, self._sw_version)
        self._client.publish(topic, json.dumps(payload), qos=1, retain=True)
        log.debug("MQTT: published Home Assistant discovery on %s", topic)

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        s = self._settings
        if reason_code.is_failure:
            log.error("MQTT: broker %s:%d refused the connection: %s", s.host, s.port, reason_code)
            return
        log.info(
            "MQTT: connected to %s:%d (%d finals waiting in the outbox)",
            s.host,
            s.port,
            len(self._outbox),
        )
        self._connect_failures = 0
        self._connected_since = time.monotonic()
        client.subscribe(self._topics.commands, qos=1)
        if s.discovery.enabled:
            client.subscribe(hass.status_topic(s.discovery.prefix), qos=1)
        self._publish_discovery()
        client.publish(self._topics.availability, ONLINE, qos=1, retain=True)
        with self._state_lock:
            self._connected = True
            if self._state is not None:
                client.publish(self._topics.state, to_json_text(self._state.to_json()), 1, True)
        self._queue.put(_Link(up=True))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._connect_failures += 1
        s = self._settings
        level = logging.WARNING if self._connect_failures == 1 else logging.DEBUG
        log.log(
            level,
            "MQTT: cannot connect to %s:%d (attempt %d; retrying every %g..%g s; "
            "%d finals waiting in the outbox)",
            s.host,
            s.port,
            self._connect_failures,
            s.reconnect_min_s,
            s.reconnect_max_s,
            len(self._outbox),
        )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        # No lock here: paho may call this while holding its own message lock,
        # which a thread in _publish_state could be waiting for.
        self._connected = False
        self._queue.put(_Link(up=False))
        if self._closed:
            log.debug("MQTT: disconnected (closing)")
            return
        if was_connected:
            s = self._settings
            log.warning(
                "MQTT: lost connection to %s:%d after %.1f s: %s; reconnecting "
                "(deltas and stats are dropped meanwhile, finals kept: %d waiting)",
                s.host,
                s.port,
                time.monotonic() - self._connected_since,
                reason_code,
                len(self._outbox),
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._queue.put(_Ack(mid))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if topic.startswith(self._topics.command_prefix):
            self._handle_command(topic.removeprefix(self._topics.command_prefix), message)
        elif self._is_ha_status(topic):
            self._handle_ha_status(bytes(message.payload))
        else:
            log.debug("MQTT: ignoring message on %s", topic)

    # ------------------------------------------------------------------ incoming

    def _handle_command(self, name: str, message: paho.MQTTMessage) -> None:
        if message.retain:
            log.warning(
                "ignoring retained command on %s (clear it with an empty retained message)",
                message.topic,
            )
            return
        command = parse_command(name, bytes(message.payload))
        if command is None:
            return
        log.info("MQTT: command %s (from %s)", command, message.topic)
        if self._on_command is None:
            return
        try:
            self._on_command(command)
        except Exception:
            log.exception("MQTT: command handler failed for %s", command)

    def _is_ha_status(self, topic: str) -> bool:
        discovery = self._settings.discovery
        return discovery.enabled and topic == hass.status_topic(discovery.prefix)

    def _handle_ha_status(self, payload: bytes) -> None:
        if payload.strip() != b"online":
            return
        log.info("MQTT: Home Assistant is online: re-publishing discovery")
        self._publish_discovery()
        if self._connected:
            self._client.publish(self._topics.availability, ONLINE, qos=1, retain=True)

    # ------------------------------------------------------------------ outbox worker

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._process(item)
            except Exception:
                log.exception("MQTT outbox worker: failed on %r", item)

    def _process(self, item: TranscriptFinal | _Ack | _Link) -> None:
        if isinstance(item, TranscriptFinal):
            self._queue_final(item)
        elif isinstance(item, _Ack):
            self._acknowledged(item.mid)
        else:
            self._link_up = item.up
        self._pump()

    def _queue_final(self, final: TranscriptFinal) -> None:
        self._outbox.put(self._topics.final, to_json_text(final.to_json()))
        hermes = self._settings.hermes
        if hermes.enabled and self._connected:
            payload = hermes_text_captured(final, hermes.site_id)
            self._client.publish(HERMES_TEXT_CAPTURED, to_json_text(payload), qos=0)

    def _acknowledged(self, mid: int) -> None:
        if self._in_flight is None or self._in_flight.mid != mid:
            return  # the ack of some other message
        self._outbox.remove(self._in_flight.seq)
        self._in_flight = None

    def _pump(self) -> None:
        """Hand the oldest final to paho, if none is in flight and the link is up."""
        while self._in_flight is None and self._link_up:
            entry = self._outbox.peek()
            if entry is None:
                return
            try:
                info = self._client.publish(entry.topic, entry.payload, qos=1, retain=False)
            except ValueError as err:
                log.error(
                    "MQTT: dropping outbox entry %d that cannot be published: %s", entry.seq, err
                )
                self._outbox.remove(entry.seq)
                continue
            self._in_flight = _InFlight(info.mid, entry.seq)
