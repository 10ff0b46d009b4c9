"""Minimal sd_notify(3) client and a health-gated watchdog, with no dependency.

systemd passes the address of its notification socket in NOTIFY_SOCKET: a
filesystem path, or an abstract socket written with a leading '@'. Each
notification is one datagram of newline-separated KEY=VALUE assignments.
When NOTIFY_SOCKET is unset (a foreground run, tests) every call is a no-op.

Failures to notify never raise: losing a STATUS update must not take the
daemon down. A lost WATCHDOG=1 is logged, and systemd restarts the service if
they keep being lost, which is the right outcome for a broken socket too.

Usage from the daemon::

    sdnotify.extend_timeout(120)        # while loading a large model
    sdnotify.ready("listening on hw:1")
    dog = sdnotify.Watchdog()           # reads WATCHDOG_USEC
    while running:
        ...                             # one pass of the pipeline loop
        dog.beat()                      # pings systemd at most every interval/2
    sdnotify.stopping()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "Notifier",
    "Watchdog",
    "default_notifier",
    "extend_timeout",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)


def _socket_address(raw: str | None) -> str | None:
    """Translate NOTIFY_SOCKET into an address for AF_UNIX sendto, or None.

    '@name' is Linux's abstract namespace, spelled with a leading NUL byte.
    Other schemes (e.g. 'vsock:' for VMs) are not supported: treat as unset.
    """
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    log.debug("unsupported NOTIFY_SOCKET address %r; notifications disabled", raw)
    return None


def _one_line(text: str) -> str:
    # A newline would start a new assignment and could forge e.g. READY=1.
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify datagrams to one socket address (or nowhere)."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the pipeline and MQTT threads may both notify
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send KEY=VALUE assignments in one datagram; True when delivered."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                self._report_failure(exc)
                return False
        return True

    def _report_failure(self, exc: OSError) -> None:
        # Warn once, then stay quiet: a dead socket would otherwise flood the
        # journal at watchdog rate.
        if not self._warned:
            log.warning("sd_notify to %r failed: %s", self._address, exc)
            self._warned = True
        else:
            log.debug("sd_notify failed again: %s", exc)

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd that start-up is finished (Type=notify)."""
        lines = ["READY=1"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """Free-form status shown by `systemctl status`."""
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        """Reset the service watchdog timer (WatchdogSec=)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd that shutdown has begun, so it does not expect pings."""
        lines = ["STOPPING=1"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start/stop timeout fires."""
        usec = max(1, int(seconds * 1_000_000))
        return self.notify(f"EXTEND_TIMEOUT_USEC={usec}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds that systemd expects, or None if off.

    Like sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive integer,
    and when WATCHDOG_PID is set it must name this process (otherwise the
    variables were inherited from a parent and are not meant for us).
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Watchdog:
    """Pings systemd's watchdog only while the pipeline proves it is alive.

    There is deliberately no timer thread: a thread that pings on its own
    keeps pinging while the pipeline is deadlocked, which defeats the point.
    Instead the pipeline calls beat() from its loop; a beat sends WATCHDOG=1
    when half the interval has passed since the last ping (systemd's advice),
    so the loop must make a pass at least that often.

    With several `sources` (e.g. "audio" and "engine", beaten from different
    threads) a ping is sent only when every source has beaten within
    `max_age` seconds (default: half the interval), so one stuck stage is
    enough to let the watchdog fire.
    """

    def __init__(
        self,
        notifier: Notifier | None = None,
        interval: float | None = None,
        *,
        sources: Iterable[str] = ("main",),
        max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier if notifier is not None else default_notifier()
        self.interval = interval if interval is not None else watchdog_interval()
        self._clock = clock
        self._sources = tuple(sources)
        if not self._sources:
            raise ValueError("Watchdog needs at least one source")
        half = self.interval / 2 if self.interval else 0.0
        self._max_age = max_age if max_age is not None else half
        self._ping_every = half
        self._last_beat: dict[str, float] = {}
        self._last_ping: float | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.interval) and self._notifier.enabled

    def beat(self, source: str = "main") -> bool:
        """Record that `source` made progress; ping if due. True when pinged."""
        # Checked even when disabled, so a typo fails in tests, not in production.
        if source not in self._sources:
            raise ValueError(f"unknown watchdog source {source!r}; known: {self._sources}")
        if not self.enabled:
            return False
        now = self._clock()
        with self._lock:
            self._last_beat[source] = now
            if not self._due(now) or not self._all_fresh(now):
                return False
            self._last_ping = now
        return self._notifier.watchdog()

    def _due(self, now: float) -> bool:
        return self._last_ping is None or now - self._last_ping >= self._ping_every

    def _all_fresh(self, now: float) -> bool:
        for name in self._sources:
            seen = self._last_beat.get(name)
            if seen is None or now - seen > self._max_age:
                return False
        return True

    def stale_sources(self) -> list[str]:
        """Sources that have not beaten within max_age (for status/logging)."""
        now = self._clock()
        with self._lock:
            return [
                name
                for name in self._sources
                if (seen := self._last_beat.get(name)) is None or now - seen > self._max_age
            ]


_default: Notifier | None = None
_default_lock = threading.Lock()


def default_notifier() -> Notifier:
    """The process-wide Notifier for NOTIFY_SOCKET, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Notifier.from_env()
        return _default


def _reset_default() -> None:
    """Forget the cached Notifier (tests change NOTIFY_SOCKET between cases)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = None


def notify(*assignments: str) -> bool:
    return default_notifier().notify(*assignments)


def ready(status: str | None = None) -> bool:
    return default_notifier().ready(status)


def status(text: str) -> bool:
    return default_notifier().status(text)


def watchdog() -> bool:
    return default_notifier().watchdog()


def stopping(status: str | None = None) -> bool:
    return default_notifier().stopping(status)


def extend_timeout(seconds: float) -> bool:
    return default_notifier().extend_timeout(seconds)
