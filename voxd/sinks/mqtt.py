"""MQTT sink: publishes pipeline events for Home Assistant, Node-RED and friends.

Topics, under ``<root>`` = ``mqtt.base_topic`` or ``voxd/<site>``:

=========================  =====  ======  =========================================
topic                      QoS    retain  payload
=========================  =====  ======  =========================================
<root>/availability        1      yes     ``online`` / ``offline`` (also the last will)
<root>/transcript/delta    0      no      TranscriptDelta JSON; dropped while offline
<root>/transcript/final    1      no      TranscriptFinal JSON plus ``replayed`` and
                                          ``age_s``; via the disk outbox
<root>/state               1      yes     StateChanged JSON ``{"state": "idle"}``
<root>/stats               0      yes     Stats JSON; dropped while offline
<root>/wake                1      no      WakeWordDetected JSON ``{"wake_word", "probability",
                                          "at"}`` (``[wakeword]``); dropped while offline
<root>/cmd/<name>          in             commands: mute, unmute, flush, reset
<root>/cmd/mute-set        in             ``ON`` / ``OFF`` (Home Assistant switch)
hermes/asr/textCaptured    0      no      Rhasspy Hermes, when mqtt.hermes.enabled
=========================  =====  ======  =========================================

Final transcripts are never lost to a broker outage or a restart: each one is
first written to the :class:`~voxd.outbox.Outbox`, then published, and removed
from the outbox when the broker's PUBACK for it arrives. Exactly one final is
handed to paho at a time, so they reach the broker strictly in order (paho
itself re-sends the one in flight after a reconnect). At publish time two
fields are added to the final's JSON: ``replayed`` (true when it was not
handed to the broker as soon as it was made: loaded from the outbox at start,
or it waited while the link was down) and ``age_s`` (seconds from its creation
to this publish).

A command payload is empty or a JSON object of at most 4096 bytes nested at
most 32 deep (checked without recursion before it is parsed); anything else is
ignored and logged, at most a few lines a minute however many arrive.

Threads: ``handle`` runs in the caller's thread and never waits for the
network or the disk; paho's network thread runs the callbacks (each guarded:
an exception is logged and counted, never kills the thread); a small worker
thread owns the outbox and the in-flight final; the link thread connects,
reconnects and restarts the other two if they die. Connection attempts back
off from ``reconnect_min_s`` to ``reconnect_max_s``; while the broker does not
answer, the link thread also tries a plain TCP connection every second and
reconnects as soon as one succeeds. ``health()`` says how all this is going,
and names a failure: a thread that keeps dying, a connect path that raises, a
callback that has blocked paho's thread for CALLBACK_STUCK_S.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from voxd import __version__
from voxd.config import ConfigError, MqttSettings
from voxd.events import (
    Event,
    StateChanged,
    Stats,
    TranscriptDelta,
    TranscriptFinal,
    WakeWordDetected,
    to_json_text,
)
from voxd.logs import LogLimiter
from voxd.outbox import Outbox, OutboxEntry
from voxd.sinks import hass
from voxd.sinks.mqtt_protocol import (
    HERMES_TEXT_CAPTURED,
    OFFLINE,
    ONLINE,
    InvalidCommand,
    Topics,
    check_command,
    default_client_id,
    hermes_text_captured,
    read_password,
)

log = logging.getLogger(__name__)

CommandCallback = Callable[[str], None]

OUTBOX_DIRNAME = "outbox"
_CLOSE_PUBLISH_TIMEOUT_S = 2.0
# The link thread looks at paho's network thread and the worker this often.
_SUPERVISE_EVERY_S = 0.25
# While the broker does not answer, a plain TCP connection is tried this often
# (cheap on a LAN): when one succeeds, voxd reconnects without waiting for the
# rest of the back-off.
PROBE_EVERY_S = 1.0
_PROBE_TIMEOUT_S = 1.0
# A thread that dies is restarted at most this many times in this window;
# after that the link gives up and health() reports it.
_MAX_RESTARTS = 3
_RESTART_WINDOW_S = 600.0
# The link thread may be inside a connection attempt (paho's 5 s timeout).
_LINK_JOIN_S = 8.0
# A paho callback running longer than this blocks the network thread (no
# keepalive, no acks): health() reports the link as failed.
CALLBACK_STUCK_S = 30.0


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


class _Client(paho.Client):
    """paho's client, telling whether its network thread runs and why it ended.

    paho runs its loop in ``_thread_main`` on the thread ``loop_start`` made.
    An exception that escapes the loop (callbacks are guarded, paho's own
    code is not) would end that thread with nothing but a traceback on
    stderr: the override keeps the exception for the link thread, which logs
    it and restarts the loop, and marks the end only after keeping it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop_error: BaseException | None = None
        self._loop_ended = threading.Event()
        self._loop_ended.set()  # no loop yet

    def loop_start(self) -> MQTTErrorCode:
        self.loop_error = None
        self._loop_ended.clear()
        try:
            rc = super().loop_start()
        except BaseException:
            self._loop_ended.set()
            raise
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._loop_ended.set()
        return rc

    def _thread_main(self) -> None:
        try:
            super()._thread_main()
        except BaseException as err:  # noqa: BLE001 - reported by the link thread
            self.loop_error = err
        finally:
            self._loop_ended.set()

    @property
    def loop_alive(self) -> bool:
        """Whether the network thread started by loop_start() still runs."""
        return not self._loop_ended.is_set()


@dataclass(frozen=True)
class MqttHealth:
    """How the MQTT link is doing (see :meth:`MqttSink.health`)."""

    connected: bool
    subscribed: bool  # commands can arrive: the broker granted <root>/cmd/+
    link_alive: bool  # voxd's link thread: connects, reconnects, restarts the others
    network_alive: bool  # paho's network thread (runs while connected or connecting)
    worker_alive: bool  # the outbox worker
    restarts: int  # threads restarted after they died
    callback_errors: int  # exceptions caught in paho callbacks
    commands_received: int  # messages on cmd/ topics
    commands_rejected: int  # of those, ignored as invalid
    last_error: str | None  # the latest unexpected error, for diagnosis
    failed: str | None  # what stops the link from working; None while it can work

    @property
    def ok(self) -> bool:
        return self.failed is None


class _Restarts:
    """Allows _MAX_RESTARTS restarts of one thread per _RESTART_WINDOW_S."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()
        self.total = 0

    def allow(self) -> bool:
        now = time.monotonic()
        while self._times and now - self._times[0] > _RESTART_WINDOW_S:
            self._times.popleft()
        if len(self._times) >= _MAX_RESTARTS:
            return False
        self._times.append(now)
        self.total += 1
        return True


class _Backoff:
    """Waits between connection attempts: from ``low`` doubling up to ``high``."""

    def __init__(self, low: float, high: float) -> None:
        self._low = low
        self._high = max(low, high)
        self._next = low

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self._high)
        return delay

    def reset(self) -> None:
        self._next = self._low


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
    each valid command, ``health()`` tells how the link is doing,
    ``close()`` says goodbye and stops.
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
        self._subscribed = False  # the broker granted the command subscription
        self._commands_mid: int | None = None
        self._closed = False
        self._stop = threading.Event()  # ends the link thread
        self._revive_lock = threading.Lock()
        self._connected_since = 0.0
        self._connect_failures = 0
        self._backoff = _Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        # Health, written by any thread (plain assignments and counters):
        self._errors = LogLimiter(log, "MQTT errors")
        self._rejects = LogLimiter(log, "ignored MQTT commands")
        self._last_error: str | None = None
        self._connect_problem: str | None = None  # the connect path raised unexpectedly
        self._failed: str | None = None  # gave up: a thread keeps dying
        self._callback_errors = 0
        self._callback_running: tuple[str, float] | None = None  # name, since
        self._commands_received = 0
        self._commands_rejected = 0
        self._restarts = {"link": _Restarts(), "network": _Restarts(), "worker": _Restarts()}
        self._worker_error: BaseException | None = None
        self._link_error: BaseException | None = None
        # Owned by the link thread only:
        self._loop_running = False  # loop_start() was called and its end not yet handled
        self._saw_disconnect = False  # on_disconnect ran since (a normal end of the loop)
        self._socket_abandoned = False  # closed without DISCONNECT when giving up
        # Owned by the worker thread only:
        self._link_up = False
        self._in_flight: _InFlight | None = None
        self._fresh: set[int] = set()  # outbox seqs made while the link was up, still up

        self._client = self._make_client()
        self._worker = self._start_thread("voxd-mqtt-outbox", self._work)
        s = settings
        log.info(
            "MQTT: connecting to %s:%d as %s, topics under %s/ (%d finals waiting in the outbox)",
            s.host,
            s.port,
            s.client_id or default_client_id(s.site),
            self._topics.root,
            len(self._outbox),
        )
        self._link = self._start_thread("voxd-mqtt-link", self._run_link)

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
        elif isinstance(event, WakeWordDetected):
            self._publish_wake(event)
        else:
            log.warning("MQTT sink: ignoring unknown event %r", event)

    def health(self) -> MqttHealth:
        """How the link is doing; ``failed`` names what keeps it from working.

        Also restarts the link thread if it died (the link thread restarts
        the network thread and the worker), so call it now and then: the
        daemon's supervise loop does.
        """
        self._revive_link()
        closed = self._closed
        return MqttHealth(
            connected=self._connected,
            subscribed=self._connected and self._subscribed,
            link_alive=self._link.is_alive(),
            network_alive=self._client.loop_alive,
            worker_alive=self._worker.is_alive(),
            restarts=sum(r.total for r in self._restarts.values()),
            callback_errors=self._callback_errors,
            commands_received=self._commands_received,
            commands_rejected=self._commands_rejected,
            last_error=self._last_error,
            failed=None if closed else self._failed or self._connect_problem or self._stuck(),
        )

    def _stuck(self) -> str | None:
        """What blocks paho's network thread, if a callback has run too long."""
        running = self._callback_running
        if running is None:
            return None
        name, since = running
        blocked = time.monotonic() - since
        if blocked <= CALLBACK_STUCK_S:
            return None
        return f"the {name} callback has blocked paho's network thread for {blocked:.0f} s"

    def close(self, timeout: float = 5.0) -> None:
        """Persist queued finals, publish ``offline``, disconnect, stop threads."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("MQTT outbox worker did not stop within %.1f s", timeout)
        self._stop.set()
        self._link.join(_LINK_JOIN_S)
        if self._link.is_alive():
            log.warning("MQTT link thread did not stop within %.1f s", _LINK_JOIN_S)
        if self._connected:
            self._publish_offline()
        if not self._socket_abandoned:  # closed on purpose: the will stays
            self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT sink closed (%d finals waiting in the outbox)", len(self._outbox))

    def __enter__(self) -> MqttSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ setup

    def _make_client(self) -> _Client:
        s = self._settings
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id or default_client_id(s.site),
            clean_session=True,
            protocol=paho.MQTTv311,
            # The link thread reconnects (with back-off and probing): paho's
            # loop ends at a disconnect instead of sleeping up to its own
            # back-off, which cannot be cut short when the broker returns.
            reconnect_on_failure=False,
        )
        client.enable_logger(_paho_log)
        client.will_set(self._topics.availability, OFFLINE, qos=1, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, read_password(s))
        if s.tls.enabled:
            self._set_tls(client)
        # No exception may escape a callback: it would end paho's network thread.
        client.on_connect = self._guard("on_connect", self._on_connect)
        client.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        client.on_subscribe = self._guard("on_subscribe", self._on_subscribe)
        client.on_publish = self._guard("on_publish", self._on_publish)
        client.on_message = self._guard("on_message", self._on_message)
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

    def _start_thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _guard(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` for paho, logging (rate-limited) any exception instead of raising."""

        def guarded(*args: Any) -> None:
            self._callback_running = (name, time.monotonic())
            try:
                callback(*args)
            except Exception as err:
                self._callback_errors += 1
                self._note_error(f"{name} callback failed", err)
            finally:
                self._callback_running = None

        return guarded

    def _note_error(self, context: str, err: BaseException) -> None:
        self._last_error = f"{context}: {type(err).__name__}: {err}"
        self._errors.log(logging.ERROR, "MQTT: %s: %r", context, err, exc_info=err)

    # ------------------------------------------------------------------ the link thread

    def _run_link(self) -> None:
        try:
            self._link_loop()
        except BaseException as err:  # noqa: BLE001 - health() reports and restarts
            self._link_error = err

    def _link_loop(self) -> None:
        """Connect, watch paho's loop and the worker, reconnect; until close()."""
        wait = False  # the first attempt is made at once
        while not self._stop.is_set():
            try:
                wait = self._link_step(wait)
                self._supervise_worker()
                self._errors.flush()
                self._rejects.flush()
            except Exception as err:
                self._note_error("link thread", err)
                self._stop.wait(_SUPERVISE_EVERY_S)

    def _link_step(self, wait: bool) -> bool:
        """Watch, or (re)connect; whether the next attempt waits for the back-off."""
        running = self._loop_running and self._client.loop_alive
        if self._failed is not None or running:
            self._stop.wait(_SUPERVISE_EVERY_S)
            return wait
        if self._loop_running:
            wait = self._loop_ended()
            if self._failed is not None:
                return wait
        if wait:
            self._wait_before_connect()
        if not self._stop.is_set():
            self._connect()
        return True

    def _connect(self) -> None:
        """One connection attempt; on success paho's network thread takes over."""
        s = self._settings
        try:
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
            self._client.reconnect()  # blocking: name lookup, TCP, TLS, CONNECT sent
        except OSError as err:
            self._connect_failed(err)
            return
        except Exception as err:
            # Not the network: a setting paho cannot use (a host name IDNA
            # cannot encode, a keepalive or client id too large for the packet)
            # or a bug. Retrying is cheap, and health() says what is wrong.
            self._note_error(f"connecting to {s.host}:{s.port}", err)
            self._connect_problem = (
                f"cannot connect to {s.host}:{s.port}: {type(err).__name__}: {err}"
            )
            return
        self._saw_disconnect = False
        try:
            self._client.loop_start()
        except Exception as err:  # e.g. RuntimeError: no thread can be started
            self._note_error("starting paho's network thread", err)
            self._connect_problem = f"cannot start paho's network thread: {err}"
            return
        self._connect_problem = None
        self._loop_running = True

    def _connect_failed(self, err: OSError) -> None:
        self._connect_failures += 1
        s = self._settings
        level = logging.WARNING if self._connect_failures == 1 else logging.DEBUG
        log.log(
            level,
            "MQTT: cannot connect to %s:%d (attempt %d: %s; retrying after %g..%g s, or "
            "as soon as it answers; %d finals waiting in the outbox)",
            s.host,
            s.port,
            self._connect_failures,
            err,
            s.reconnect_min_s,
            s.reconnect_max_s,
            len(self._outbox),
        )

    def _wait_before_connect(self) -> None:
        """The back-off delay, cut short when the broker starts answering again.

        A TCP probe every PROBE_EVERY_S: once one has failed, the first that
        succeeds ends the wait (the broker is back). When the first probe
        succeeds the broker is up and refused voxd (password, TLS): no more
        probes then, the back-off alone paces the attempts.
        """
        deadline = time.monotonic() + self._backoff.next()
        saw_down = False
        probing = True
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(left, PROBE_EVERY_S)):
                return
            if not probing:
                continue
            if not self._probe():
                saw_down = True
            elif saw_down:
                log.info("MQTT: %s:%d answers again: reconnecting", *self._address())
                return
            else:
                probing = False

    def _address(self) -> tuple[str, int]:
        return self._settings.host, self._settings.port

    def _probe(self) -> bool:
        """Whether a TCP connection to the broker's port can be opened."""
        try:
            with socket.create_connection(self._address(), timeout=_PROBE_TIMEOUT_S):
                return True
        except (OSError, ValueError):  # ValueError: UnicodeError from IDNA
            return False

    def _loop_ended(self) -> bool:
        """paho's network thread has ended; True when the next attempt must wait."""
        self._loop_running = False
        err = self._client.loop_error
        if err is None:  # the normal end: the connection was lost or refused
            if not self._saw_disconnect:  # (paho ends some ways without on_disconnect)
                log.warning("MQTT: the connection to %s:%d ended; reconnecting", *self._address())
                self._mark_down()
            return True
        # It died: its socket may still be open, keeping "online" up at the
        # broker with nobody reading. Reconnecting closes that socket without
        # a DISCONNECT, so the broker publishes the last will; then "online"
        # again once connected.
        self._mark_down()
        if self._restarts["network"].allow():
            self._note_error("paho's network thread died; restarting it", err)
            return False
        self._give_up(f"paho's network thread keeps dying: {type(err).__name__}: {err}")
        with contextlib.suppress(OSError):
            sock = self._client.socket()
            if sock is not None:
                sock.close()  # no DISCONNECT: the broker publishes the last will
                self._socket_abandoned = True
        return False

    def _mark_down(self) -> None:
        self._connected = False
        self._subscribed = False
        self._queue.put(_Link(up=False))

    def _supervise_worker(self) -> None:
        if self._closed or self._worker.is_alive() or self._failed is not None:
            return
        err = self._worker_error or RuntimeError("the outbox worker ended")
        if not self._restarts["worker"].allow():
            self._give_up(f"the outbox worker keeps dying: {type(err).__name__}: {err}")
            self._say_offline()
            return
        self._note_error("the outbox worker died; restarting it", err)
        self._worker_error = None
        self._worker = self._start_thread("voxd-mqtt-outbox", self._work)

    def _revive_link(self) -> None:
        with self._revive_lock:  # health() may be called from several threads
            if self._closed or self._link.is_alive() or self._failed is not None:
                return
            self._restart_link()

    def _restart_link(self) -> None:
        err = self._link_error or RuntimeError("the link thread ended")
        if not self._restarts["link"].allow():
            self._give_up(f"the MQTT link thread keeps dying: {type(err).__name__}: {err}")
            self._say_offline()
            return
        self._note_error("the MQTT link thread died; restarting it", err)
        self._link_error = None
        self._link = self._start_thread("voxd-mqtt-link", self._run_link)

    def _give_up(self, reason: str) -> None:
        self._failed = reason
        log.error(
            "MQTT: giving up: %s (%d finals waiting in the outbox); restart voxd "
            "(systemd's watchdog does)",
            reason,
            len(self._outbox),
        )

    def _say_offline(self) -> None:
        """Leave ``offline`` at the broker and disconnect: nothing delivers any more."""
        if self._connected:
            self._publish_offline()
        self._connected = False
        self._client.disconnect()

    # ------------------------------------------------------------------ publishing

    def _publish_live(self, topic: str, data: dict[str, Any], *, retain: bool) -> None:
        """QoS 0, best effort: dropped while disconnected."""
        if self._connected:
            self._client.publish(topic, to_json_text(data), qos=0, retain=retain)

    def _publish_wake(self, event: WakeWordDetected) -> None:
        """QoS 1, not retained, dropped while disconnected.

        QoS 1 because a detection is rare and something may answer it (a
        chime, an LED): a lost one is noticed, a duplicate is harmless (``at``
        tells them apart). Not retained and not kept while offline: a wake
        word is stale seconds later, and a retained one would fire again for
        every new subscriber.
        """
        if self._connected:
            self._client.publish(self._topics.wake, to_json_text(event.to_json()), 1, False)

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
        self._backoff.reset()
        self._connected_since = time.monotonic()
        self._commands_mid = client.subscribe(self._topics.commands, qos=1)[1]
        if s.discovery.enabled:
            client.subscribe(hass.status_topic(s.discovery.prefix), qos=1)
        self._publish_discovery()
        client.publish(self._topics.availability, ONLINE, qos=1, retain=True)
        with self._state_lock:
            self._connected = True
            if self._state is not None:
                client.publish(self._topics.state, to_json_text(self._state.to_json()), 1, True)
        self._queue.put(_Link(up=True))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._saw_disconnect = True
        self._subscribed = False
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

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        if mid != self._commands_mid:
            return
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.error(
                "MQTT: the broker refused the subscription to %s (%s): commands cannot "
                "reach voxd; check the broker's access control for this user",
                self._topics.commands,
                refused[0],
            )
        self._subscribed = not refused

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
        self._commands_received += 1
        if message.retain:
            self._commands_rejected += 1
            self._rejects.log(
                logging.WARNING,
                "ignoring retained command on %s (clear it with an empty retained message)",
                message.topic,
            )
            return
        try:
            command = check_command(name, bytes(message.payload))
        except InvalidCommand as err:
            self._commands_rejected += 1
            self._rejects.log(logging.WARNING, "ignoring command %r: %s", name[:80], err)
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
        try:
            self._work_loop()
        except BaseException as err:  # noqa: BLE001 - the link thread reports and restarts
            self._worker_error = err

    def _work_loop(self) -> None:
        try:
            self._pump()  # a restarted worker resumes what its predecessor left
        except Exception as err:
            self._note_error("outbox worker failed to resume", err)
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._process(item)
            except Exception as err:
                self._note_error(f"outbox worker failed on {type(item).__name__}", err)

    def _process(self, item: TranscriptFinal | _Ack | _Link) -> None:
        if isinstance(item, TranscriptFinal):
            self._queue_final(item)
        elif isinstance(item, _Ack):
            self._acknowledged(item.mid)
        else:
            self._link_up = item.up
            if not item.up:
                self._fresh.clear()  # whatever is waiting now waited for the link
        self._pump()

    def _queue_final(self, final: TranscriptFinal) -> None:
        entry = self._outbox.put(self._topics.final, to_json_text(final.to_json()))
        if self._link_up:
            self._fresh.add(entry.seq)
        hermes = self._settings.hermes
        if hermes.enabled and self._connected:
            payload = hermes_text_captured(final, hermes.site_id)
            self._client.publish(HERMES_TEXT_CAPTURED, to_json_text(payload), qos=0)

    def _acknowledged(self, mid: int) -> None:
        if self._in_flight is None or self._in_flight.mid != mid:
            return  # the ack of some other message
        self._outbox.remove(self._in_flight.seq)
        self._fresh.discard(self._in_flight.seq)
        self._in_flight = None

    def _pump(self) -> None:
        """Hand the oldest final to paho, if none is in flight and the link is up."""
        while self._in_flight is None and self._link_up:
            entry = self._outbox.peek()
            if entry is None:
                return
            payload = final_payload(entry, replayed=entry.seq not in self._fresh)
            try:
                info = self._client.publish(entry.topic, payload, qos=1, retain=False)
            except ValueError as err:
                log.error(
                    "MQTT: dropping outbox entry %d that cannot be published: %s", entry.seq, err
                )
                self._outbox.remove(entry.seq)
                continue
            self._in_flight = _InFlight(info.mid, entry.seq)


def final_payload(entry: OutboxEntry, *, replayed: bool, now: float | None = None) -> str:
    """The stored final with ``replayed`` and ``age_s`` added, as published.

    A stored payload that is not a JSON object is published as it is.
    """
    try:
        data = json.loads(entry.payload)
    except (ValueError, RecursionError):
        return entry.payload
    if not isinstance(data, dict):
        return entry.payload
    age = (time.time() if now is None else now) - entry.created_at
    data["replayed"] = replayed
    data["age_s"] = round(max(0.0, age), 3)
    return to_json_text(data)
