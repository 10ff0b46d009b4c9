"""Rate-limited logging: one home for the daemon's "say it, but not a thousand times".

A flood of bad MQTT commands, a disk that fails every write, a device that
repeats the same complaint: each must be logged, but must not fill the
journal of a board that runs for months.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

BURST = 5
INTERVAL_S = 60.0


class LogLimiter:
    """Logs at most ``burst`` lines per ``interval_s``; the rest go to DEBUG and
    are counted, and the count is logged when the interval is over (at the
    next line, ``flush`` or ``reset``). Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        burst: int = BURST,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._suppressed = 0

    def log(
        self, level: int, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        with self._lock:
            self._roll(self._clock(), level)
            held_back = self._logged >= self._burst
            if held_back:
                self._suppressed += 1
            else:
                self._logged += 1
        self._logger.log(logging.DEBUG if held_back else level, msg, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Log the count of held-back lines if their interval is over."""
        with self._lock:
            self._roll(self._clock(), logging.WARNING)

    def reset(self) -> None:
        """The trouble is over: log what was held back, report the next line at once."""
        with self._lock:
            self._roll(self._clock(), logging.WARNING, force=True)

    def _roll(self, now: float, level: int, *, force: bool = False) -> None:
        if not force and now - self._window_start < self._interval_s:
            return
        if self._suppressed:
            self._logger.log(
                max(level, logging.WARNING),
                "%d more %s in the last %.0f s were not logged",
                self._suppressed,
                self._what,
                now - self._window_start,
            )
        self._window_start = now
        self._logged = 0
        self._suppressed = 0
