"""Events as JSON lines on stdout (``voxd run --stdout``, service.stdout_sink)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

from voxd.events import (
    Event,
    StateChanged,
    Stats,
    TranscriptDelta,
    TranscriptFinal,
    WakeWordDetected,
    to_json_text,
)

log = logging.getLogger(__name__)


def event_type(event: Event) -> str:
    """Short name of an event kind, as used by the stdout sink."""
    if isinstance(event, TranscriptDelta):
        return "delta"
    if isinstance(event, TranscriptFinal):
        return "final"
    if isinstance(event, StateChanged):
        return "state"
    if isinstance(event, WakeWordDetected):
        return "wake"
    if isinstance(event, Stats):
        return "stats"
    raise TypeError(f"unknown event {type(event).__name__}")


class StdoutSink:
    """Events as JSON lines on stdout: ``{"type": "final", "utterance_id": ...}``.

    ``type`` is delta, final, state, stats or wake; the other keys are the event's
    payload, exactly as published on MQTT. Each line is flushed at once so a
    pipe reader sees it immediately. If the reader goes away (broken pipe)
    the sink says so once and stops writing; the daemon goes on.
    """

    def __init__(self, stream: TextIO | None = None, *, types: Iterable[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._types = frozenset(types) if types is not None else None
        self._broken = False

    def handle(self, event: Event) -> None:
        kind = event_type(event)
        if self._broken or (self._types is not None and kind not in self._types):
            return
        line = to_json_text({"type": kind, **event.to_json()})
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as err:  # broken pipe, closed file
            self._broken = True
            log.warning("stdout sink: cannot write (%s); JSON output stopped", err)
