"""Where the pipeline's events go: each sink in its own module, none loaded until used.

``stdout`` (JSON lines), ``systemd`` (the unit's STATUS and the MQTT link's
watchdog source), ``mqtt`` (the broker, with the disk outbox; paho), beside it
``mqtt_protocol`` (topics, commands, payloads; no paho) and ``hass`` (Home
Assistant's MQTT discovery). The pipeline hands every event to every sink on
the sink's own thread (:class:`voxd.pipeline.Pipeline`).
"""

from __future__ import annotations

from typing import Protocol

from voxd.events import Event


class Sink(Protocol):
    """Receives every event, in order, on its own dispatcher thread."""

    def handle(self, event: Event) -> None: ...
