"""Finals survive a failing outbox disk, and a damaged outbox never stops start-up:
the real MQTT sink against a real mosquitto, and the daemon as a real process.

The disk failures are real: a directory made immutable (``chattr +i``: even root
cannot create, rename or delete in it), or, where the file system or the
capabilities do not allow that, temporary files that are links to /dev/full,
where the kernel answers every write with ENOSPC. No timing is asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_mqtt import CollectorFactory, Mosquitto, wait_until
from test_daemon import Daemon, NotifySocket, start_daemon, write_config

# The daemon tests' fixtures, re-exported (``x as x``) so that pytest finds them here.
from test_daemon import daemons as daemons
from test_daemon import fifo_mic as fifo_mic
from test_daemon import notify_socket as notify_socket
from test_mqtt import Sinks, final, final_ids, settings_for
from test_pipeline import WAIT_S

from voxd.outbox import entry_name
from voxd.sdnotify import Notifier, Watchdog
from voxd.sinks.mqtt import OUTBOX_DIRNAME
from voxd.sinks.mqtt_protocol import Topics
from voxd.sinks.systemd import WATCHDOG_MQTT, MqttHealthCheck, SystemdStatusSink


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Sinks]:
    made = Sinks(tmp_path / "state")
    yield made
    made.close_all()


def fill_with_dev_full(directory: Path, seqs: range) -> None:
    """Every write of entries ``seqs`` fails with a real ENOSPC from the kernel."""
    for seq in seqs:
        (directory / f"{entry_name(seq)}.tmp").symlink_to("/dev/full")


class Unwritable:
    """Makes a directory unwritable for real; undone by ``restore``."""

    def __init__(self) -> None:
        self._immutable: list[Path] = []

    def make(self, directory: Path, seqs: range) -> str:
        chattr = shutil.which("chattr")
        if chattr is not None:
            done = subprocess.run([chattr, "+i", str(directory)], capture_output=True)
            if done.returncode == 0:
                self._immutable.append(directory)
                return "immutable"
        fill_with_dev_full(directory, seqs)
        return "/dev/full"

    def restore(self) -> None:
        for directory in self._immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        self._immutable.clear()


@pytest.fixture
def unwritable() -> Iterator[Unwritable]:
    made = Unwritable()
    yield made
    made.restore()  # or pytest cannot delete tmp_path


def test_24_finals_while_the_outbox_cannot_be_written_all_arrive_in_order(
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    sinks: Sinks,
    unwritable: Unwritable,
) -> None:
    settings = settings_for(mqtt_broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(mqtt_broker, [topics.final])
    sink = sinks.make(settings)
    how = unwritable.make(sink.outbox.directory, range(1, 26))

    for n in range(24):
        sink.handle(final(n))
    collector.wait_count(topics.final, 24)
    wait_until(lambda: len(sink.outbox) == 0, what="all 24 acknowledged")
    sink.handle(final(24))  # a marker: anything sent twice would arrive before it
    collector.wait_count(topics.final, 25)
    wait_until(lambda: len(sink.outbox) == 0, what="the marker acknowledged")

    assert final_ids(collector, topics) == [f"utt-{n}" for n in range(25)], how
    assert sink.outbox.write_failures == 25, how
    assert sink.outbox.last_error is not None
    assert not any(p.suffix == ".json" for p in sink.outbox.directory.iterdir()), how


def test_broker_down_while_writes_fail_delivers_the_finals_held_in_memory(
    persistent_mqtt_broker: Mosquitto, mqtt_collector: CollectorFactory, sinks: Sinks
) -> None:
    broker = persistent_mqtt_broker
    settings = settings_for(broker)
    topics = Topics.from_settings(settings)
    collector = mqtt_collector(broker, [topics.final], persistent=True)
    sink = sinks.make(settings)
    sink.handle(final(0))
    collector.wait_count(topics.final, 1)
    wait_until(lambda: len(sink.outbox) == 0, what="first final acknowledged")

    broker.stop()
    wait_until(lambda: not sink.connected, what="sink noticed the broker is gone")
    fill_with_dev_full(sink.outbox.directory, range(2, 8))
    for n in range(1, 7):
        sink.handle(final(n))
    wait_until(lambda: sink.outbox.memory_only == 6, what="six finals held in memory")
    assert sink.outbox.degraded and sink.outbox.write_failures == 6
    assert "No space left on device" in str(sink.outbox.last_error)

    broker.start()
    collector.wait_count(topics.final, 7)
    wait_until(lambda: len(sink.outbox) == 0, what="outbox emptied")
    sink.handle(final(7))  # written to disk again: the outbox is healthy
    collector.wait_count(topics.final, 8)
    wait_until(lambda: len(sink.outbox) == 0, what="the marker acknowledged")
    assert final_ids(collector, topics) == [f"utt-{n}" for n in range(8)]
    assert not sink.outbox.degraded


def test_daemon_starts_with_a_damaged_outbox_and_sends_the_good_entries(
    fifo_mic: object,
    notify_socket: NotifySocket,
    daemons: list[Daemon],
    mqtt_broker: Mosquitto,
    mqtt_collector: CollectorFactory,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    topics = Topics("voxd/daemon")
    outbox = tmp_path / "state" / OUTBOX_DIRNAME
    outbox.mkdir(parents=True)

    def good(seq: int) -> str:
        text = json.dumps({"utterance_id": f"old-{seq}", "text": f"left over {seq}"})
        return json.dumps(
            {"seq": seq, "topic": topics.final, "payload": text, "created_at": 1.7e9 + seq}
        )

    damaged = {
        3: good(3).replace('"seq": 3', '"seq": 1e400'),
        4: good(4).replace(json.dumps(json.loads(good(4))["payload"]), '"not json"'),
        6: '{"seq": 6, "topic": ',
    }
    for seq in (1, 2, 5):
        (outbox / entry_name(seq)).write_text(good(seq))
    for seq, text in damaged.items():
        (outbox / entry_name(seq)).write_text(text)
    assert '"payload": "not json"' in damaged[4]

    collector = mqtt_collector(mqtt_broker, [topics.final])
    config = write_config(tmp_path, model_dir=tiny_model_dir, broker=mqtt_broker)
    d = start_daemon(daemons, config, tmp_path, notify_socket)

    collector.wait_count(topics.final, 3, WAIT_S)
    assert [p["utterance_id"] for p in collector.payloads(topics.final)] == [
        "old-1",
        "old-2",
        "old-5",
    ]
    wait_until(
        lambda: not any(p.suffix == ".json" for p in outbox.iterdir()), WAIT_S, "outbox emptied"
    )
    moved = {p.name.split("-", 1)[1]: p for p in (outbox / "damaged").glob("*.json")}
    assert sorted(moved) == [entry_name(seq) for seq in damaged]
    for seq, text in damaged.items():
        assert moved[entry_name(seq)].read_text() == text
    assert d.terminate() == 0
    err = d.stderr()
    assert err.count("damaged entry") == 3 and "seq inf is not an integer" in err
    assert len(collector.messages(topics.final)) == 3


def test_unwritable_outbox_is_named_in_status_and_the_watchdog_stays_fed(
    mqtt_broker: Mosquitto,
    sinks: Sinks,
    unwritable: Unwritable,
    notify_socket: NotifySocket,
) -> None:
    """Finals held in memory still go out and a restart cannot mend a disk: STATUS
    says so, the "mqtt" watchdog source keeps beating, and the problem clears."""
    sink = sinks.make(settings_for(mqtt_broker))
    wait_until(lambda: sink.health().subscribed, what="the sink connected")
    notifier = Notifier(str(notify_socket.path))
    watchdog = Watchdog(notifier, interval=60.0, sources=(WATCHDOG_MQTT,))
    check = MqttHealthCheck(sink, watchdog, SystemdStatusSink(notifier))
    how = unwritable.make(sink.outbox.directory, range(1, 2))  # seq 1 fails, seq 2 not

    sink.handle(final(0))
    wait_until(lambda: sink.outbox.write_failures == 1, what="the failed write")
    check.check()
    status = notify_socket.wait_for("STATUS=")
    assert "PROBLEM: outbox" in status and str(sink.outbox.directory) in status, how
    assert watchdog.stale_sources() == [], how  # still fed: not a reason to restart

    wait_until(lambda: len(sink.outbox) == 0, what="the final held in memory acknowledged")
    unwritable.restore()
    sink.handle(final(1))  # written to disk: the outbox is healthy again
    wait_until(lambda: not sink.outbox.degraded, what="the outbox healthy again")
    check.check()
    wait_until(
        lambda: any(
            line.startswith("STATUS=") and "PROBLEM" not in line for line in notify_socket.lines
        ),
        what="a STATUS without the problem",
    )
