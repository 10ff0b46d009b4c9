"""What systemd sees of the daemon: the unit's STATUS= and the MQTT link's watchdog source."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from voxd.events import Event, StateChanged, TranscriptFinal
from voxd.sdnotify import Notifier, Watchdog

if TYPE_CHECKING:  # the MQTT client is loaded only when MQTT is enabled
    from voxd.sinks.mqtt import MqttHealth, MqttSink

log = logging.getLogger(__name__)

# The watchdog source fed while the MQTT link works (voxd.sdnotify.Watchdog).
WATCHDOG_MQTT = "mqtt"


class SystemdStatusSink:
    """Keeps the unit's STATUS= (``systemctl status voxd``) up to date."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._state = "idle"
        self._finals = 0
        self._problem: str | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            if event.state in ("speaking", "processing"):
                self._state = event.state
                return  # too frequent to be worth a datagram each
            self._state = event.state
        elif isinstance(event, TranscriptFinal):
            self._finals += 1
        else:
            return
        self._send()

    def set_problem(self, problem: str | None) -> None:
        """A problem named in every STATUS until it is cleared with None."""
        self._problem = problem
        self._send()

    def _send(self) -> None:
        text = f"{self._state}; {self._finals} transcripts"
        if self._problem is not None:
            text += f"; PROBLEM: {self._problem}"
        self._notifier.status(text)


class MqttHealthCheck:
    """The daemon's view of the MQTT link, checked from the supervise loop.

    While the link works the watchdog's "mqtt" source is fed; when it has
    failed (a thread that keeps dying, a connect path that keeps raising)
    the feeding stops, so systemd's watchdog restarts voxd, and STATUS names
    the problem. A broker that is merely down is not a failure: finals wait
    in the outbox and the link reconnects by itself.
    """

    def __init__(self, mqtt: MqttSink, watchdog: Watchdog, status: SystemdStatusSink) -> None:
        self._mqtt = mqtt
        self._watchdog = watchdog
        self._status = status
        self._problem: str | None = None

    def check(self) -> MqttHealth | None:
        """Feed the watchdog or report the problem; the health read (None: unreadable)."""
        health: MqttHealth | None = None
        try:
            health = self._mqtt.health()
        except Exception as err:  # a bug in health(): the link cannot be vouched for
            log.exception("cannot read the MQTT link's health")
            problem: str | None = f"MQTT link health unknown: {err}"
        else:
            problem = None if health.ok else f"MQTT link failed: {health.failed}"
        if problem is None:
            self._watchdog.beat(WATCHDOG_MQTT)
            # Finals held in memory still go out, and a restart cannot mend a
            # disk: say so in STATUS, but keep feeding the watchdog.
            problem = self._outbox_problem()
        elif problem != self._problem:
            log.error("%s; no longer feeding the watchdog", problem)
        if problem != self._problem:
            if problem is None:
                log.info("MQTT delivery works normally again")
            self._problem = problem
            self._status.set_problem(problem)
        return health

    def _outbox_problem(self) -> str | None:
        outbox = self._mqtt.outbox
        if not outbox.degraded:
            return None
        held = outbox.memory_only
        return (
            f"outbox {outbox.directory} cannot be written ({outbox.last_error}); "
            f"{held} final(s) held in memory only"
        )
