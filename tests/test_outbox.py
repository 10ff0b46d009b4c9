"""The disk-backed outbox of final transcripts: order, durability, bound, threads,
damaged entries moved aside, and disk failures that lose nothing."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from voxd.outbox import DAMAGED_KEEP, DamagedEntry, Outbox, entry_name, parse_entry


def payload(n: int) -> str:
    return json.dumps({"utterance_id": f"u{n}", "text": f"text {n}"})


def test_fifo_order_and_remove(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", max_entries=10)
    entries = [box.put("t/final", payload(n)) for n in range(3)]
    assert [e.seq for e in entries] == [1, 2, 3]
    assert box.peek() == entries[0]
    assert box.remove(entries[0].seq)
    assert not box.remove(entries[0].seq)  # already gone
    assert box.peek() == entries[1]
    assert [e.payload for e in box.entries()] == [payload(1), payload(2)]
    assert len(box) == 2


def test_survives_restart_in_order(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    first = Outbox(directory, max_entries=10)
    for n in range(4):
        first.put("t/final", payload(n))
    first.remove(1)

    again = Outbox(directory, max_entries=10)
    assert [e.seq for e in again.entries()] == [2, 3, 4]
    assert [e.payload for e in again.entries()] == [payload(n) for n in (1, 2, 3)]
    assert all(e.topic == "t/final" for e in again.entries())
    assert again.put("t/final", payload(9)).seq == 5  # numbering continues


def test_sequence_does_not_restart_when_emptied(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    box.remove(box.put("t", payload(0)).seq)
    box.put("t", payload(1))
    assert Outbox(directory, max_entries=10).put("t", payload(2)).seq == 3


def test_bound_drops_oldest_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "outbox", max_entries=3)
    with caplog.at_level(logging.WARNING, logger="voxd.outbox"):
        for n in range(5):
            box.put("t/final", payload(n))
    assert [e.payload for e in box.entries()] == [payload(n) for n in (2, 3, 4)]
    assert box.dropped == 2
    assert sum("outbox full" in r.getMessage() for r in caplog.records) == 2
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 3


def test_smaller_bound_after_restart_drops_oldest(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    for n in range(5):
        box.put("t", payload(n))
    smaller = Outbox(directory, max_entries=2)
    assert [e.payload for e in smaller.entries()] == [payload(3), payload(4)]


def test_unreadable_entries_are_moved_aside_and_unfinished_writes_discarded(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    for n in range(3):
        box.put("t", payload(n))
    (directory / "00000000000000000002.json").write_text("{not json")
    (directory / "00000000000000000009.json.tmp").write_text('{"seq": 9')

    again = Outbox(directory, max_entries=10)
    assert [e.seq for e in again.entries()] == [1, 3]
    assert sorted(p.name for p in directory.iterdir()) == [
        "00000000000000000001.json",
        "00000000000000000003.json",
        "damaged",
    ]
    [moved] = [p for p in (directory / "damaged").iterdir() if p.suffix == ".json"]
    assert moved.read_text() == "{not json"


def test_entry_files_are_complete_json(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    entry = box.put("voxd/x/transcript/final", payload(7))
    data = json.loads((directory / "00000000000000000001.json").read_text())
    assert data["topic"] == entry.topic
    assert json.loads(data["payload"]) == json.loads(payload(7))
    assert not list(directory.glob("*.tmp"))


def test_concurrent_puts_and_removes(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10_000)
    per_thread = 25

    def producer(k: int) -> None:
        for n in range(per_thread):
            box.put(f"t/{k}", payload(n))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    entries = box.entries()
    assert [e.seq for e in entries] == list(range(1, 4 * per_thread + 1))
    # Each producer's entries keep their own order.
    for k in range(4):
        mine = [e.payload for e in entries if e.topic == f"t/{k}"]
        assert mine == [payload(n) for n in range(per_thread)]

    removers = [
        threading.Thread(target=lambda part=part: [box.remove(e.seq) for e in part])
        for part in (entries[0::2], entries[1::2])
    ]
    for t in removers:
        t.start()
    for t in removers:
        t.join()
    assert len(box) == 0
    assert not list(directory.iterdir())


def test_rejects_zero_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path, max_entries=0)


# --------------------------------------------------------------------------- damaged entries


def entry_text(seq: int, /, **changes: object) -> str:
    """The JSON text of a stored entry, with keys changed (or removed when given as MISSING)."""
    data: dict[str, object] = {
        "seq": seq,
        "topic": "t/final",
        "payload": payload(seq),
        "created_at": 1_700_000_000.5,
    }
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not MISSING})


MISSING = object()
SLOT = entry_name(3)  # the damaged file takes the place of entry 3 of 4

# Each: the file's bytes and a word the reason must contain.
DAMAGED: dict[str, tuple[bytes, str]] = {
    "empty file": (b"", "not JSON"),
    "not JSON": (b"{not json", "not JSON"),
    "truncated": (entry_text(3)[:30].encode(), "not JSON"),
    "bad UTF-8": (entry_text(3).replace("t/final", "t/\xff").encode("latin-1"), "not UTF-8"),
    "nested too deep": (b"[" * 200_000, "not JSON"),
    "JSON array": (b"[1, 2]", "not an object"),
    "no seq": (entry_text(3, seq=MISSING).encode(), "missing key(s): seq"),
    "no topic": (entry_text(3, topic=MISSING).encode(), "missing key(s): topic"),
    "no payload": (entry_text(3, payload=MISSING).encode(), "missing key(s): payload"),
    "no created_at": (entry_text(3, created_at=MISSING).encode(), "created_at"),
    "seq 1e400": (entry_text(3).replace('"seq": 3', '"seq": 1e400').encode(), "seq inf"),
    "seq -1": (entry_text(3, seq=-1).encode(), "seq -1"),
    "seq 0": (entry_text(3, seq=0).encode(), "seq 0"),
    "seq 1.5": (entry_text(3, seq=1.5).encode(), "seq 1.5"),
    "seq 3.0": (entry_text(3, seq=3.0).encode(), "seq 3.0"),
    "seq true": (entry_text(3, seq=True).encode(), "seq True"),
    "seq text": (entry_text(3, seq="3").encode(), "seq '3'"),
    "seq 2**63": (entry_text(3, seq=2**63).encode(), "seq 9223372036854775808"),
    "seq of another name": (entry_text(7).encode(), "does not match"),
    "created_at NaN": (entry_text(3).replace("1700000000.5", "NaN").encode(), "not JSON"),
    "created_at 1e400": (entry_text(3).replace("1700000000.5", "1e400").encode(), "created_at"),
    "created_at -1": (entry_text(3, created_at=-1).encode(), "created_at"),
    "created_at 10**30": (entry_text(3, created_at=10**30).encode(), "created_at"),
    "created_at text": (entry_text(3, created_at="now").encode(), "created_at"),
    "created_at null": (entry_text(3, created_at=None).encode(), "created_at"),
    "topic number": (entry_text(3, topic=5).encode(), "topic"),
    "topic empty": (entry_text(3, topic="").encode(), "topic"),
    "topic wildcard": (entry_text(3, topic="t/#").encode(), "wildcard"),
    "payload not JSON": (entry_text(3, payload="hello").encode(), "payload is not JSON"),
    "payload JSON list": (entry_text(3, payload="[1]").encode(), "payload is not the text"),
    "payload object": (entry_text(3, payload={"a": 1}).encode(), "not a string"),
    "payload lone surrogate": (
        entry_text(3).replace('"payload": "{', '"payload": "\\ud800{').encode(),
        "cannot be encoded",
    ),
}


def four_entries(directory: Path) -> None:
    box = Outbox(directory, max_entries=10)
    for n in range(1, 5):
        box.put("t/final", payload(n))


@pytest.mark.parametrize("kind", DAMAGED)
def test_damaged_entry_is_moved_aside_with_its_reason(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw, why = DAMAGED[kind]
    directory = tmp_path / "outbox"
    four_entries(directory)
    (directory / SLOT).write_bytes(raw)

    with caplog.at_level(logging.ERROR, logger="voxd.outbox"):
        box = Outbox(directory, max_entries=10)
    assert [e.seq for e in box.entries()] == [1, 2, 4]
    assert [e.payload for e in box.entries()] == [payload(n) for n in (1, 2, 4)]
    assert box.damaged == 1
    assert not (directory / SLOT).exists()
    [moved] = [p for p in box.damaged_directory.iterdir() if p.suffix == ".json"]
    assert moved.name.endswith(f"-{SLOT}")
    assert moved.read_bytes() == raw  # content intact
    reason = moved.with_name(moved.name + ".reason").read_text()
    assert why in reason, reason
    [record] = caplog.records
    assert str(directory / SLOT) in record.getMessage()
    assert str(moved) in record.getMessage() and why in record.getMessage()
    assert box.put("t/final", payload(5)).seq == 5  # numbering goes on


def test_seq_1e400_does_not_stop_start_up(tmp_path: Path) -> None:
    # json reads 1e400 as float inf, and int(inf) raises OverflowError.
    directory = tmp_path / "outbox"
    four_entries(directory)
    text = (
        '{"seq": 1e400, "topic": "t/final", "payload": "{\\"text\\": \\"x\\"}", '
        '"created_at": 1700000000.0}'
    )
    (directory / entry_name(2)).write_text(text)
    box = Outbox(directory, max_entries=10)
    assert [e.seq for e in box.entries()] == [1, 3, 4]
    [moved] = [p for p in box.damaged_directory.iterdir() if p.suffix == ".json"]
    assert moved.read_text() == text
    assert "seq inf is not an integer" in moved.with_name(moved.name + ".reason").read_text()


def test_parse_entry_accepts_what_put_writes(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_entries=10)
    entry = box.put("voxd/x/transcript/final", json.dumps({"text": "Grüße \u2603"}))
    assert parse_entry(entry_name(1), (tmp_path / entry_name(1)).read_bytes()) == entry
    with pytest.raises(DamagedEntry, match="does not match"):
        parse_entry(entry_name(2), (tmp_path / entry_name(1)).read_bytes())


def test_fifo_and_directory_named_like_entries_are_moved_aside(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    four_entries(directory)
    (directory / entry_name(2)).unlink()
    os.mkfifo(directory / entry_name(2))  # reading it would block start-up for ever
    (directory / entry_name(3)).unlink()
    (directory / entry_name(3)).mkdir()
    box = Outbox(directory, max_entries=10)
    assert [e.seq for e in box.entries()] == [1, 4]
    moved = sorted(p.name for p in box.damaged_directory.iterdir() if p.suffix == ".json")
    assert [name.split("-")[1] for name in moved] == [entry_name(2), entry_name(3)]
    assert box.damaged == 2


def test_damaged_entry_that_cannot_be_moved_stays_and_its_number_is_not_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    four_entries(directory)
    (directory / entry_name(4)).write_text("{broken")
    (directory / "damaged").write_text("a file where the folder should be")  # real mkdir error

    with caplog.at_level(logging.ERROR, logger="voxd.outbox"):
        box = Outbox(directory, max_entries=10)
    assert [e.seq for e in box.entries()] == [1, 2, 3]
    assert (directory / entry_name(4)).read_text() == "{broken"
    assert any(
        "cannot be moved" in r.getMessage() and str(directory / entry_name(4)) in r.getMessage()
        for r in caplog.records
    )
    assert box.put("t/final", payload(5)).seq == 5  # 4 is still taken by the damaged file
    assert (directory / entry_name(4)).read_text() == "{broken"
    assert [e.seq for e in Outbox(directory, max_entries=10).entries()] == [1, 2, 3, 5]


def test_damaged_folder_keeps_only_the_newest(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    for start in (0, 60):  # two starts, 60 damaged entries each
        for n in range(start + 1, start + 61):
            (directory / entry_name(n)).write_text(f"damaged {n}")
        box = Outbox(directory, max_entries=10)
        assert box.damaged == 60
    moved = [p for p in box.damaged_directory.iterdir() if p.suffix == ".json"]
    assert len(moved) == DAMAGED_KEEP == 100
    assert sorted(int(p.read_text().split()[1]) for p in moved) == list(range(21, 121))
    reasons = [p for p in box.damaged_directory.iterdir() if p.name.endswith(".reason")]
    assert len(reasons) == 100
    assert len(box) == 0


# --------------------------------------------------------------------------- disk failures


def fail_next_writes(directory: Path, seqs: range) -> None:
    """Real write failures: each entry's temporary file is a link to /dev/full, where
    the kernel answers every write with ENOSPC, as on a full disk (also for root)."""
    for seq in seqs:
        (directory / f"{entry_name(seq)}.tmp").symlink_to("/dev/full")


def test_write_failure_keeps_the_entry_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    fail_next_writes(directory, range(1, 4))
    with caplog.at_level(logging.DEBUG, logger="voxd.outbox"):
        entries = [box.put("t/final", payload(n)) for n in range(1, 4)]

    assert [e.durable for e in entries] == [False, False, False]
    assert box.entries() == entries and box.peek() == entries[0]
    assert (box.write_failures, box.memory_only, box.degraded) == (3, 3, True)
    assert box.last_error is not None and "No space left on device" in box.last_error
    assert entry_name(3) in box.last_error
    assert not list(directory.iterdir())  # neither the entries nor the unfinished writes
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # the repeats are held back
    assert str(directory / entry_name(1)) in errors[0] and "No space left" in errors[0]

    assert box.remove(1) and not box.remove(1)
    assert box.peek() == entries[1]


def test_writes_that_work_again_persist_the_entries_held_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    fail_next_writes(directory, range(1, 4))
    for n in range(1, 4):
        box.put("t/final", payload(n))
    box.remove(1)
    with caplog.at_level(logging.WARNING, logger="voxd.outbox"):
        fourth = box.put("t/final", payload(4))
    assert fourth.durable
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert [(e.seq, e.durable) for e in box.entries()] == [(2, True), (3, True), (4, True)]
    assert (box.memory_only, box.degraded, box.write_failures) == (0, False, 3)

    again = Outbox(directory, max_entries=10)
    assert [e.payload for e in again.entries()] == [payload(n) for n in (2, 3, 4)]


def test_rename_failure_keeps_the_entry_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)

    # Injected: a read-only file system refuses the rename with EROFS; making one
    # needs a mount, which tests cannot do, and root ignores permission bits.
    def read_only(src: object, dst: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    entry = box.put("t/final", payload(1))
    assert not entry.durable and box.peek() == entry
    assert box.last_error is not None and "Read-only file system" in box.last_error
    assert not list(directory.iterdir())  # the temporary file was removed
    assert box.remove(1)
    monkeypatch.undo()
    assert box.put("t/final", payload(2)).durable
    assert not box.degraded


def test_directory_fsync_failure_leaves_no_duplicate_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    real_fsync = os.fsync

    # Injected: the kernel answers EIO for a directory fsync only on a failing device.
    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    entry = box.put("t/final", payload(1))
    assert not entry.durable  # its file was renamed into place, but is it on disk?
    assert (directory / entry_name(1)).exists()
    assert box.remove(1)  # delivered: its file goes too, despite the fsync failing again
    assert not (directory / entry_name(1)).exists()
    monkeypatch.undo()
    assert len(Outbox(directory, max_entries=10)) == 0


def test_remove_on_a_read_only_disk_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10)
    for n in range(1, 4):
        box.put("t/final", payload(n))
    real_unlink = os.unlink

    # Injected for the same reason as above: a read-only mount needs privileges.
    def unlink(path: object, *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(directory)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    with caplog.at_level(logging.ERROR, logger="voxd.outbox"):
        assert all(box.remove(n) for n in range(1, 4))
    assert len(box) == 0
    [error] = [r.getMessage() for r in caplog.records]  # logged once, not per entry
    assert "cannot remove" in error and "sent again after a restart" in error
    monkeypatch.undo()
    # At least once: the files left behind are sent again after a restart.
    assert [e.seq for e in Outbox(directory, max_entries=10).entries()] == [1, 2, 3]


def test_unusable_directory_runs_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with caplog.at_level(logging.ERROR, logger="voxd.outbox"):
        box = Outbox(blocker / "outbox", max_entries=2)  # real error: not a directory
    assert any(str(blocker / "outbox") in r.getMessage() for r in caplog.records)
    assert box.degraded and box.last_error is not None
    entries = [box.put("t/final", payload(n)) for n in range(1, 4)]
    assert not any(e.durable for e in entries)
    assert [e.seq for e in box.entries()] == [2, 3] and box.dropped == 1
    assert box.write_failures == 3
    assert box.remove(2) and box.remove(3) and len(box) == 0
    assert blocker.read_text() == "a file where the state directory should be"


def test_repeated_write_errors_are_summarised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("voxd.outbox._REPEAT_LOG_S", 0.05)  # a short interval for the test
    directory = tmp_path / "outbox"
    box = Outbox(directory, max_entries=10_000)

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    with caplog.at_level(logging.ERROR, logger="voxd.outbox"):
        seq = 0
        # Keep failing until the interval is over: the next ERROR counts the held-back ones.
        while len(errors()) < 2:
            seq += 1
            assert seq < 100_000, errors()
            fail_next_writes(directory, range(seq, seq + 1))
            box.put("t/final", payload(seq))
    assert box.write_failures == seq
    assert "were not logged" not in errors()[0]
    assert f"{seq - 2} more outbox write errors in the last" in errors()[1]


def test_oversized_file_is_moved_aside_unread(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    four_entries(directory)
    os.truncate(directory / SLOT, 17 * 1024 * 1024)  # sparse: cheap to make and to move
    box = Outbox(directory, max_entries=10)
    assert [e.seq for e in box.entries()] == [1, 2, 4]
    [moved] = [p for p in box.damaged_directory.iterdir() if p.suffix == ".json"]
    assert moved.stat().st_size == 17 * 1024 * 1024
    assert "larger than any entry" in moved.with_name(moved.name + ".reason").read_text()
