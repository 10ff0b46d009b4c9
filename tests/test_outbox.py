"""The disk-backed outbox of final transcripts: order, durability, bound, threads."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from voxd.outbox import Outbox


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


def test_unreadable_entries_and_unfinished_writes_are_discarded(tmp_path: Path) -> None:
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
    ]


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
