"""Bounds on what a Wyoming client may send, checked before it is read.

The ``wyoming`` package decodes events (:func:`wyoming.event.async_read_event`)
but trusts the lengths a header announces: ``data_length`` and
``payload_length`` go straight to ``readexactly``, so one bad header could make
the server buffer gigabytes, and anything that is not an event ends the
connection as silently as a normal hang-up. :class:`BoundedReader` sits between
that decoder and the socket: it reads the header line first, checks it (a JSON
object with a string ``type``, lengths that are whole numbers within the
limits, ``data`` an object) and raises :class:`WireError` with the reason
before a byte of the announced body is read. The decoding itself stays the
package's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from wyoming.event import Event, async_read_event

# asyncio's StreamReader limit, which also bounds a header line (asyncio.start_server's default).
LINE_MAX = 64 * 1024
# The JSON data block of one event: transcribe requests may carry names and
# terms to bias the transcript, a few kB even in a large home.
DATA_MAX = 1024 * 1024
# The payload of one event: an audio chunk (Home Assistant sends a few kB at a time).
PAYLOAD_MAX = 1024 * 1024


class WireError(Exception):
    """The client sent something that is not a well-formed, acceptable Wyoming event."""


def _length(header: dict[str, Any], key: str, limit: int, event_type: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireError(f"event {event_type!r} has an invalid {key} {value!r}")
    if value > limit:
        raise WireError(
            f"event {event_type!r} announces {key} = {value} bytes; at most {limit} are accepted"
        )
    return value


class BoundedReader:
    """The two StreamReader calls ``async_read_event`` makes, with the checks above."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        data_max: int = DATA_MAX,
        payload_max: int = PAYLOAD_MAX,
    ) -> None:
        self._reader = reader
        self._data_max = data_max
        self._payload_max = payload_max
        self._expect_data = False  # the next readexactly() is the event's data block

    async def readline(self) -> bytes:
        try:
            line = await self._reader.readline()
        except ValueError:  # asyncio's limit: the line is longer than the buffer
            raise WireError(f"an event header line is longer than {LINE_MAX} bytes") from None
        if not line:
            return line  # end of stream: the client hung up between events
        if not line.endswith(b"\n"):
            raise WireError("the connection ended in the middle of an event header")
        self._check_header(line)
        return line

    def _check_header(self, line: bytes) -> None:
        try:
            header = json.loads(line)
        except ValueError:
            raise WireError(f"not a Wyoming event header: {line[:60]!r}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise WireError(f"not a Wyoming event header (no type): {line[:60]!r}")
        event_type: str = header["type"]
        if not isinstance(header.get("data", {}), dict):
            raise WireError(f"event {event_type!r} has data that is not a JSON object")
        data_length = _length(header, "data_length", self._data_max, event_type)
        _length(header, "payload_length", self._payload_max, event_type)
        self._expect_data = data_length > 0

    async def readexactly(self, n: int) -> bytes:
        try:
            block = await self._reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise WireError("the connection ended in the middle of an event") from None
        if self._expect_data:
            self._expect_data = False
            try:
                data = json.loads(block)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise WireError("an event's data block is not a JSON object")
        return block

    async def read_event(self) -> Event | None:
        """The next event, or None when the client hung up between events.

        Raises WireError for anything else that ends the connection.
        """
        # async_read_event only calls readline() and readexactly(), both provided here.
        event = await async_read_event(cast(asyncio.StreamReader, self))
        if event is None and not self._reader.at_eof():
            raise WireError("an event could not be decoded")
        return event
