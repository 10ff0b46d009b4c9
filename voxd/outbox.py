"""A bounded, disk-backed FIFO of messages waiting for the broker's acknowledgement.

Final transcripts must survive a broker outage and a daemon restart, so each
one is written to disk before it is published and removed only once the
broker acknowledged it (QoS 1 PUBACK).

Layout: one file per entry in the outbox directory, named by a sequence
number that only grows (``00000000000000000042.json``). A file is written to
a temporary name, fsynced, renamed into place, and the directory fsynced: a
crash leaves either the whole entry or none of it. Order = sequence order.
Over ``max_entries`` the oldest entry is dropped, with a warning.

All methods are thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
_NAME_DIGITS = 20


@dataclass(frozen=True)
class OutboxEntry:
    seq: int  # position in the FIFO; grows by one per entry, survives restarts
    topic: str
    payload: str  # the exact text to publish (JSON)
    created_at: float  # unix seconds when it was queued


class Outbox:
    """FIFO of :class:`OutboxEntry`, persisted in ``directory``."""

    def __init__(self, directory: Path, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._dir = directory
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, OutboxEntry] = OrderedDict()
        self._next_seq = 1
        self.dropped = 0  # entries dropped because the outbox was full, since start
        self._dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- public API

    def put(self, topic: str, payload: str) -> OutboxEntry:
        """Append an entry (durable when this returns); drop the oldest if full."""
        with self._lock:
            entry = OutboxEntry(self._next_seq, topic, payload, time.time())
            self._next_seq += 1
            self._write(entry)
            self._entries[entry.seq] = entry
            while len(self._entries) > self._max:
                self._drop_oldest()
            return entry

    def peek(self) -> OutboxEntry | None:
        """The oldest entry, or None when empty."""
        with self._lock:
            return next(iter(self._entries.values()), None)

    def entries(self) -> list[OutboxEntry]:
        """All entries, oldest first."""
        with self._lock:
            return list(self._entries.values())

    def remove(self, seq: int) -> bool:
        """Forget an entry (it was delivered). False if it was not there."""
        with self._lock:
            if self._entries.pop(seq, None) is None:
                return False
            self._unlink(seq)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def directory(self) -> Path:
        return self._dir

    # -- disk

    def _path(self, seq: int) -> Path:
        return self._dir / f"{seq:0{_NAME_DIGITS}d}{_SUFFIX}"

    def _write(self, entry: OutboxEntry) -> None:
        final = self._path(entry.seq)
        tmp = final.with_name(final.name + _TMP_SUFFIX)
        data = {
            "seq": entry.seq,
            "topic": entry.topic,
            "payload": entry.payload,
            "created_at": entry.created_at,
        }
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._sync_dir()

    def _unlink(self, seq: int) -> None:
        try:
            self._path(seq).unlink()
        except FileNotFoundError:
            log.warning("outbox entry %d was already gone from %s", seq, self._dir)
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_oldest(self) -> None:
        seq, entry = self._entries.popitem(last=False)
        self._unlink(seq)
        self.dropped += 1
        log.warning(
            "outbox full (%d entries): dropped the oldest, seq %d on %s queued at %s",
            self._max,
            seq,
            entry.topic,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created_at)),
        )

    def _load(self) -> None:
        for leftover in self._dir.glob(f"*{_SUFFIX}{_TMP_SUFFIX}"):
            log.info("outbox: removing unfinished write %s", leftover.name)
            leftover.unlink(missing_ok=True)
        loaded = [e for e in map(self._read, sorted(self._dir.glob(f"*{_SUFFIX}"))) if e]
        for entry in sorted(loaded, key=lambda e: e.seq):
            self._entries[entry.seq] = entry
        self._next_seq = max(self._entries, default=0) + 1
        while len(self._entries) > self._max:
            self._drop_oldest()
        if self._entries:
            log.info("outbox: %d undelivered entries in %s", len(self._entries), self._dir)

    def _read(self, path: Path) -> OutboxEntry | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = OutboxEntry(
                seq=int(data["seq"]),
                topic=str(data["topic"]),
                payload=str(data["payload"]),
                created_at=float(data["created_at"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("outbox: discarding unreadable entry %s: %s", path, err)
            path.unlink(missing_ok=True)
            return None
        if path != self._path(entry.seq):
            log.error("outbox: discarding %s: its seq %d does not match its name", path, entry.seq)
            path.unlink(missing_ok=True)
            return None
        return entry
