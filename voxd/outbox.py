"""A bounded, disk-backed FIFO of messages waiting for the broker's acknowledgement.

Final transcripts must survive a broker outage and a daemon restart, so each
one is written to disk before it is published and removed only once the
broker acknowledged it (QoS 1 PUBACK). Delivery is at least once: a crash
between the PUBACK and the removal, or a removal the disk refuses, sends the
entry again after the restart.

Layout: one file per entry in the outbox directory, named by a sequence
number that only grows (``00000000000000000042.json``). A file is written to
a temporary name, fsynced, renamed into place, and the directory fsynced: a
crash leaves either the whole entry or none of it. Order = sequence order.
Over ``max_entries`` the oldest entry is dropped, with a warning.

A failing disk loses nothing this process holds. When writing an entry fails
(read-only or full file system, I/O error), ``put`` still keeps it, in its
place in the FIFO, in memory only (``OutboxEntry.durable`` is False): it is
published and removed like any other, but a restart before its PUBACK loses
it. The failure is logged at ERROR with the path and the OS error (repeats
are summarised once a minute), counted in ``write_failures``, and
``degraded`` / ``last_error`` report it for health checks. Once a write works
again, new entries are durable again and each ``put`` also writes up to
``RETRY_PER_PUT`` of the in-memory ones, oldest first. Removing an entry and
fsyncing the directory never raise either (logged the same way).

Nothing in the outbox stops start-up:

* an unusable entry file (unreadable, not UTF-8, not JSON, a missing or
  ill-typed key, ``seq`` not an integer from 1 to 2**63-1, ``created_at`` not
  a finite time between 1970 and 9999, a name that does not match its
  ``seq``, a ``payload`` that is not JSON object text, not a regular file,
  over 16 MiB) is moved aside, its content untouched, into
  ``<outbox>/damaged/<UTC time>-<name>`` with a ``.reason`` file beside it;
  the ERROR log line names both paths. Only the newest ``DAMAGED_KEEP`` are
  kept there. If even the move fails, the file is logged and left where it is:
  it is not sent and its number is not reused;
* a directory that cannot be created or listed makes the outbox run in memory
  only until the next start (logged at ERROR, ``degraded``): nothing is
  written there, so entries that could not be read are never overwritten.

All methods are thread-safe.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from voxd.logs import LogLimiter

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
_NAME_DIGITS = 20
_NAME_RE = re.compile(rf"^(\d{{{_NAME_DIGITS}}}){re.escape(_SUFFIX)}$")
_KEYS = ("seq", "topic", "payload", "created_at")
MAX_SEQ = 2**63 - 1  # what a signed 64-bit integer holds; names have room for it
# 9999-12-31 23:59:59 UTC: the latest time time.localtime() and strftime() handle everywhere.
_MAX_CREATED_AT = 253_402_300_799.0
_MAX_ENTRY_BYTES = 16 * 1024 * 1024  # a final is a few kB: more is not an entry
_MAX_TOPIC_BYTES = 65_535  # MQTT's limit
DAMAGED_DIRNAME = "damaged"
DAMAGED_KEEP = 100  # newest damaged entries kept; a failing disk must not fill itself
_REASON_SUFFIX = ".reason"
RETRY_PER_PUT = 16  # in-memory entries written per successful put: bounds its latency
_REPEAT_LOG_S = 60.0  # one ERROR a minute at most for a failure that repeats per entry


@dataclass(frozen=True)
class OutboxEntry:
    seq: int  # position in the FIFO; grows by one per entry, survives restarts
    topic: str
    payload: str  # the exact text to publish (JSON)
    created_at: float  # unix seconds when it was queued
    # False while the entry is only in memory because writing it failed.
    durable: bool = field(default=True, compare=False)


class DamagedEntry(ValueError):
    """An entry file that cannot be used; the message says why."""


def entry_name(seq: int) -> str:
    """The file name of entry ``seq``."""
    return f"{seq:0{_NAME_DIGITS}d}{_SUFFIX}"


def parse_entry(name: str, raw: bytes) -> OutboxEntry:
    """The entry stored as ``raw`` in the file called ``name``.

    Raises :class:`DamagedEntry` naming the first problem found.
    """
    data = _json_or_damaged(raw, "the file")
    if not isinstance(data, dict):
        raise DamagedEntry(f"the file holds JSON {type(data).__name__}, not an object")
    missing = [key for key in _KEYS if key not in data]
    if missing:
        raise DamagedEntry(f"missing key(s): {', '.join(missing)}")
    seq, topic, payload, created_at = (data[key] for key in _KEYS)
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise DamagedEntry(f"seq {_short(seq)} is not an integer from 1 to {MAX_SEQ}")
    if name != entry_name(seq):
        raise DamagedEntry(f"its name does not match its seq {seq} ({entry_name(seq)})")
    # Range first: math.isfinite() overflows on a huge int, comparisons do not.
    if type(created_at) not in (int, float) or not (
        0 <= created_at <= _MAX_CREATED_AT and math.isfinite(created_at)
    ):
        raise DamagedEntry(f"created_at {_short(created_at)} is not a unix time from 0 to 9999")
    _check_topic(topic)
    if not isinstance(payload, str):
        raise DamagedEntry(f"payload is JSON {type(payload).__name__}, not a string")
    _utf8_or_damaged(payload, "payload")
    if not isinstance(_json_or_damaged(payload, "payload"), dict):
        raise DamagedEntry("payload is not the text of a JSON object")
    return OutboxEntry(seq, topic, payload, float(created_at))


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str) or not topic:
        raise DamagedEntry(f"topic {_short(topic)} is not a non-empty string")
    if any(c in topic for c in "+#\0"):
        raise DamagedEntry(f"topic {_short(topic)} holds a wildcard or NUL: not publishable")
    if len(_utf8_or_damaged(topic, "topic")) > _MAX_TOPIC_BYTES:
        raise DamagedEntry(f"topic is longer than MQTT's {_MAX_TOPIC_BYTES} bytes")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_or_damaged(text: str | bytes, what: str) -> Any:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise DamagedEntry(f"{what} is not UTF-8: {err}") from None
    except (ValueError, RecursionError) as err:
        raise DamagedEntry(f"{what} is not JSON: {err}") from None


def _utf8_or_damaged(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate from a \\udxxx escape
        raise DamagedEntry(f"{what} cannot be encoded as UTF-8: {err}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Outbox:
    """FIFO of :class:`OutboxEntry`, persisted in ``directory`` when the disk allows."""

    def __init__(self, directory: Path, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._dir = directory
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, OutboxEntry] = OrderedDict()
        self._next_seq = 1
        self.dropped = 0  # entries dropped because the outbox was full, since start
        self.damaged = 0  # unusable entry files found at start (moved aside if possible)
        self.write_failures = 0  # entries put() could not write (kept in memory), since start
        self._last_error: str | None = None
        self._write_failing = False
        # One limiter per kind of disk failure, each repeated with every entry.
        self._complaints = {
            kind: LogLimiter(log, f"outbox {kind} errors", burst=1, interval_s=_REPEAT_LOG_S)
            for kind in ("write", "remove", "sync")
        }
        names = self._open_directory()
        self._on_disk = names is not None
        if names is not None:
            self._load(names)

    # -- public API

    def put(self, topic: str, payload: str) -> OutboxEntry:
        """Append an entry; drop the oldest if full. Never raises for a disk problem.

        The entry is durable when this returns, unless writing it failed: then
        it is kept in memory only (``durable`` False; logged and counted).
        """
        with self._lock:
            entry = self._store(OutboxEntry(self._next_seq, topic, payload, time.time()))
            self._next_seq += 1
            self._entries[entry.seq] = entry
            if entry.durable:
                self._retry_memory_only()
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
        """Forget an entry (it was delivered). False if it was not there. Never raises
        for a disk problem (a file left behind is sent again after a restart)."""
        with self._lock:
            entry = self._entries.pop(seq, None)
            if entry is None:
                return False
            self._delete_file(entry)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def damaged_directory(self) -> Path:
        """Where unusable entry files are moved at start."""
        return self._dir / DAMAGED_DIRNAME

    @property
    def memory_only(self) -> int:
        """How many entries are held in memory only (their write failed)."""
        with self._lock:
            return sum(not e.durable for e in self._entries.values())

    @property
    def degraded(self) -> bool:
        """True while finals are not durable: the directory is unusable, the last
        write failed, or entries are held in memory only."""
        with self._lock:
            return (
                not self._on_disk
                or self._write_failing
                or any(not e.durable for e in self._entries.values())
            )

    @property
    def last_error(self) -> str | None:
        """The latest disk problem (kept after recovery, for diagnostics), or None."""
        return self._last_error

    # -- writing

    def _path(self, seq: int) -> Path:
        return self._dir / entry_name(seq)

    def _store(self, entry: OutboxEntry) -> OutboxEntry:
        """``entry``, written to disk, or marked not durable if that failed."""
        if not self._on_disk:
            self.write_failures += 1
            self._complaints["write"].log(
                logging.ERROR,
                "outbox: directory %s is unusable (%s): entry %d is kept in memory only "
                "and lost if voxd stops before the broker acknowledges it",
                self._dir,
                self._last_error,
                entry.seq,
            )
            return replace(entry, durable=False)
        try:
            self._write(entry)
        except OSError as err:
            self._write_failed(entry, err)
            return replace(entry, durable=False)
        if self._write_failing:
            self._write_failing = False
            self._complaints["write"].reset()
            log.warning(
                "outbox: writing to %s works again (%d entries could not be written since "
                "start; those still waiting are written as the next finals come)",
                self._dir,
                self.write_failures,
            )
        return entry

    def _write_failed(self, entry: OutboxEntry, err: OSError) -> None:
        self.write_failures += 1
        self._write_failing = True
        self._last_error = f"cannot write {self._path(entry.seq)}: {err}"
        self._complaints["write"].log(
            logging.ERROR,
            "outbox: cannot write entry %d to %s: %s; keeping it in memory only: it is still "
            "sent, but lost if voxd stops before the broker acknowledges it "
            "(%d failed writes since start)",
            entry.seq,
            self._path(entry.seq),
            err,
            self.write_failures,
        )

    def _write(self, entry: OutboxEntry) -> None:
        final = self._path(entry.seq)
        tmp = final.with_name(final.name + _TMP_SUFFIX)
        data = {
            "seq": entry.seq,
            "topic": entry.topic,
            "payload": entry.payload,
            "created_at": entry.created_at,
        }
        blob = json.dumps(data, ensure_ascii=False).encode("utf-8")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError:
            self._discard_tmp(tmp)
            raise
        self._fsync_dir()

    def _discard_tmp(self, tmp: Path) -> None:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as err:  # the next start removes it
            log.debug("outbox: cannot remove the unfinished write %s: %s", tmp, err)

    def _retry_memory_only(self) -> None:
        """Writes work (again): write the oldest in-memory entries too."""
        pending = [e for e in self._entries.values() if not e.durable][:RETRY_PER_PUT]
        for entry in pending:
            try:
                self._write(entry)
            except OSError as err:
                self._write_failing = True
                self._last_error = f"cannot write {self._path(entry.seq)}: {err}"
                self._complaints["write"].log(
                    logging.ERROR,
                    "outbox: writing entry %d (held in memory) to %s failed again: %s",
                    entry.seq,
                    self._path(entry.seq),
                    err,
                )
                return
            self._entries[entry.seq] = replace(entry, durable=True)  # keeps its place
            log.info("outbox: entry %d, held in memory, is now written to disk", entry.seq)

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- removing

    def _delete_file(self, entry: OutboxEntry) -> None:
        if not self._on_disk:
            return
        path = self._path(entry.seq)
        # An entry held in memory has a file only if its write failed after the
        # rename (at the directory fsync): remove that one, or a restart sends it again.
        if not entry.durable and not os.path.lexists(path):
            return
        try:
            path.unlink()
        except FileNotFoundError:
            log.warning("outbox entry %d was already gone from %s", entry.seq, self._dir)
            return
        except OSError as err:
            self._last_error = f"cannot remove {path}: {err}"
            self._complaints["remove"].log(
                logging.ERROR,
                "outbox: cannot remove delivered entry %s: %s; it is sent again after a restart",
                path,
                err,
            )
            return
        try:
            self._fsync_dir()
        except OSError as err:
            self._last_error = f"cannot fsync {self._dir}: {err}"
            self._complaints["sync"].log(
                logging.ERROR, "outbox: cannot fsync %s: %s", self._dir, err
            )

    def _drop_oldest(self) -> None:
        seq, entry = self._entries.popitem(last=False)
        self._delete_file(entry)
        self.dropped += 1
        log.warning(
            "outbox full (%d entries): dropped the oldest, seq %d on %s queued at %s",
            self._max,
            seq,
            entry.topic,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created_at)),
        )

    # -- start-up

    def _open_directory(self) -> list[str] | None:
        """The names in the outbox directory (created if missing), or None if unusable."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            return os.listdir(self._dir)
        except OSError as err:
            self._last_error = f"cannot use {self._dir}: {err}"
            log.error(
                "outbox: cannot use directory %s: %s; finals are kept in memory only until "
                "the next start (lost if voxd stops before the broker acknowledges them): "
                "make it a writable directory (service.state_dir)",
                self._dir,
                err,
            )
            return None

    def _load(self, names: list[str]) -> None:
        loaded: list[OutboxEntry] = []
        left: list[int] = []  # numbers of damaged files that stay in place
        moved = 0
        for name in sorted(names):
            path = self._dir / name
            if name.endswith(_SUFFIX + _TMP_SUFFIX):
                self._remove_unfinished(path)
            elif name.endswith(_SUFFIX):
                try:
                    loaded.append(self._read(path))
                except DamagedEntry as err:
                    self.damaged += 1
                    if self._move_aside(path, str(err)):
                        moved += 1
                    elif match := _NAME_RE.match(name):
                        left.append(int(match[1]))
        if moved:
            self._prune_damaged()
        for entry in sorted(loaded, key=lambda e: e.seq):
            self._entries[entry.seq] = entry
        # Never reuse the number of a file left in place: a new entry would replace it.
        in_use = [*self._entries, *(n for n in left if n < MAX_SEQ)]
        self._next_seq = max(in_use, default=0) + 1
        while len(self._entries) > self._max:
            self._drop_oldest()
        if self._entries:
            log.info("outbox: %d undelivered entries in %s", len(self._entries), self._dir)

    def _remove_unfinished(self, path: Path) -> None:
        log.info("outbox: removing unfinished write %s", path.name)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            self._last_error = f"cannot remove {path}: {err}"
            log.error("outbox: cannot remove unfinished write %s: %s", path, err)

    def _read(self, path: Path) -> OutboxEntry:
        try:
            info = path.lstat()
            # Opening a FIFO or a device could block start-up: only regular files are read.
            if not stat.S_ISREG(info.st_mode):
                raise DamagedEntry("not a regular file")
            if info.st_size > _MAX_ENTRY_BYTES:
                raise DamagedEntry(f"{info.st_size} bytes: larger than any entry")
            raw = path.read_bytes()
        except OSError as err:
            raise DamagedEntry(f"cannot read it: {err}") from None
        return parse_entry(path.name, raw)

    def _move_aside(self, path: Path, reason: str) -> bool:
        """Move a damaged entry into damaged/ with a note of why; False if that failed."""
        folder = self.damaged_directory
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            folder.mkdir(exist_ok=True)
            target = _unused_path(folder, f"{stamp}-{path.name}")
            os.rename(path, target)
        except OSError as err:
            self._last_error = f"cannot move {path} to {folder}: {err}"
            log.error(
                "outbox: damaged entry %s (%s) cannot be moved to %s: %s; it stays there "
                "and is not sent",
                path,
                reason,
                folder,
                err,
            )
            return False
        log.error("outbox: damaged entry %s moved to %s: %s", path, target, reason)
        note = target.with_name(target.name + _REASON_SUFFIX)
        try:
            note.write_text(f"{path}: {reason}\n", encoding="utf-8")
        except OSError as err:
            log.warning("outbox: cannot write %s: %s", note, err)
        return True

    def _prune_damaged(self) -> None:
        """Keep the newest DAMAGED_KEEP entries in damaged/ (names start with the time)."""
        folder = self.damaged_directory
        try:
            kept = sorted(n for n in os.listdir(folder) if not n.endswith(_REASON_SUFFIX))
            for name in kept[:-DAMAGED_KEEP]:
                _remove_any(folder / name)
                (folder / (name + _REASON_SUFFIX)).unlink(missing_ok=True)
        except OSError as err:
            log.error("outbox: cannot prune %s: %s", folder, err)
            return
        if len(kept) > DAMAGED_KEEP:
            log.warning(
                "outbox: deleted the %d oldest damaged entries in %s (only the newest %d are kept)",
                len(kept) - DAMAGED_KEEP,
                folder,
                DAMAGED_KEEP,
            )


def _unused_path(folder: Path, name: str) -> Path:
    path = folder / name
    n = 1
    while os.path.lexists(path):
        path = folder / f"{name}.{n}"
        n += 1
    return path


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
