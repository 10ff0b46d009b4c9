"""The systemd side: sd_notify over real sockets, the watchdog gate, the unit
file (verify + security score) and the install scripts."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxd import sdnotify
from voxd.sdnotify import Notifier, Watchdog, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "voxd.service"
MAX_EXPOSURE = 2.0

# --- sd_notify ---------------------------------------------------------------------


class Listener:
    """A bound AF_UNIX datagram socket standing in for systemd."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Everything already sent, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(2.0)


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # Not tmp_path: a sun_path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="voxd-") as d:
        address = os.path.join(d, "notify")
        listener = Listener(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        sdnotify._reset_default()
        yield listener
        listener.sock.close()
        sdnotify._reset_default()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"voxd-test-{uuid.uuid4().hex}"
    listener = Listener("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sdnotify._reset_default()
    yield listener
    listener.sock.close()
    sdnotify._reset_default()


def test_messages_over_a_path_socket(path_socket: Listener) -> None:
    assert sdnotify.ready("listening")
    assert path_socket.recv() == "READY=1\nSTATUS=listening"
    assert sdnotify.status("2 utterances")
    assert path_socket.recv() == "STATUS=2 utterances"
    assert sdnotify.watchdog()
    assert path_socket.recv() == "WATCHDOG=1"
    assert sdnotify.extend_timeout(1.5)
    assert path_socket.recv() == "EXTEND_TIMEOUT_USEC=1500000"
    assert sdnotify.stopping()
    assert path_socket.recv() == "STOPPING=1"


def test_messages_over_an_abstract_socket(abstract_socket: Listener) -> None:
    assert sdnotify.ready()
    assert abstract_socket.recv() == "READY=1"
    assert sdnotify.stopping("flushing")
    assert abstract_socket.recv() == "STOPPING=1\nSTATUS=flushing"


def test_status_cannot_inject_assignments(path_socket: Listener) -> None:
    sdnotify.status("bad\nREADY=1")
    assert path_socket.recv() == "STATUS=bad READY=1"


def test_no_socket_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sdnotify._reset_default()
    assert not sdnotify.default_notifier().enabled
    assert not sdnotify.ready("x")
    assert not sdnotify.watchdog()
    assert not Notifier("vsock:2:1234").enabled  # not supported: treated as unset


def test_dead_socket_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier("/nonexistent/voxd/notify")
    assert n.enabled
    assert not n.status("x")
    assert not n.status("y")
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


# --- watchdog ------------------------------------------------------------------------


def test_watchdog_interval_from_environment() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    # Inherited from a parent: not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_at_half_interval_while_beating(path_socket: Listener) -> None:
    clock = Clock()
    dog = Watchdog(interval=10.0, clock=clock)
    assert dog.beat()  # the first beat pings at once
    for t in (1.0, 2.0, 4.9):
        clock.now = 1000.0 + t
        assert not dog.beat()
    clock.now = 1005.0
    assert dog.beat()
    assert path_socket.pending() == ["WATCHDOG=1", "WATCHDOG=1"]


def test_watchdog_is_silent_without_beats(path_socket: Listener) -> None:
    # No thread pings on its own: a stalled pipeline stops the pings.
    clock = Clock()
    dog = Watchdog(interval=0.2, clock=clock)
    dog.beat()
    path_socket.recv()
    clock.now += 60
    assert path_socket.pending() == []


def test_watchdog_waits_for_every_source(path_socket: Listener) -> None:
    clock = Clock()
    dog = Watchdog(interval=10.0, sources=("audio", "engine"), clock=clock)
    assert not dog.beat("audio")  # the engine has not shown life yet
    assert dog.stale_sources() == ["engine"]
    assert dog.beat("engine")
    clock.now += 6  # the engine is stuck from here on; audio keeps going
    assert not dog.beat("audio")
    clock.now += 6
    assert not dog.beat("audio")
    assert dog.stale_sources() == ["engine"]
    assert path_socket.pending() == ["WATCHDOG=1"]
    assert dog.beat("engine")  # recovered


def test_watchdog_rejects_unknown_source() -> None:
    dog = Watchdog(Notifier(None), interval=None)
    with pytest.raises(ValueError, match="unknown watchdog source 'engin'"):
        dog.beat("engin")


def test_watchdog_reads_environment(path_socket: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    dog = Watchdog()
    assert dog.enabled and dog.interval == 30.0
    assert dog.beat()
    assert path_socket.recv() == "WATCHDOG=1"
    monkeypatch.delenv("WATCHDOG_USEC")
    assert not Watchdog().enabled
    assert not Watchdog().beat()


# --- the unit file --------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values across all sections (keys may repeat in unit files)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_what_the_daemon_needs() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/opt/voxd/venv/bin/voxd run --config /etc/voxd/voxd.toml"]
    assert s["WatchdogSec"] == ["30"]
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["voxd"] and s["SupplementaryGroups"] == ["audio"]
    assert s["StateDirectory"] == ["voxd"] and s["ConfigurationDirectory"] == ["voxd"]
    assert "char-alsa rw" in s["DeviceAllow"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert s["KillSignal"] == ["SIGTERM"]


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    return exe


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify checks that ExecStart exists, and /opt/voxd/venv is not
    # installed here: check a copy whose ExecStart is an existing program.
    exe = systemd_analyze()
    true = shutil.which("true") or "/bin/true"
    text = UNIT.read_text().replace("/opt/voxd/venv/bin/voxd", true)
    assert true in text
    copy = tmp_path / "voxd.service"
    copy.write_text(text)
    res = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


def test_unit_security_exposure() -> None:
    exe = systemd_analyze()
    res = subprocess.run(
        [exe, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in res.stderr and "unrecognized" in res.stderr:
        pytest.skip("systemd-analyze too old for --offline (needs systemd >= 250)")
    match = re.search(r"Overall exposure level for voxd\.service: ([0-9.]+)", res.stdout)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, res.stdout


# --- the NVIDIA GPU drop-ins ---------------------------------------------------------------

DROPIN_DIR = ROOT / "systemd" / "voxd.service.d"
GPU_DROPINS = ["gpu.conf", "jetson.conf"]


def unit_with_dropins(root: Path, *extra: str) -> Path:
    """The unit (ExecStart an existing program, for verify) and its GPU drop-ins
    as installed: root/voxd.service and root/voxd.service.d/. `extra` lines
    are appended to gpu.conf."""
    true = shutil.which("true") or "/bin/true"
    (root / "voxd.service").write_text(UNIT.read_text().replace("/opt/voxd/venv/bin/voxd", true))
    (root / "voxd.service.d").mkdir()
    for name in GPU_DROPINS:
        text = (DROPIN_DIR / name).read_text()
        if name == "gpu.conf":
            text += "".join(f"{line}\n" for line in extra)
        (root / "voxd.service.d" / name).write_text(text)
    return root / "voxd.service"


def verify_with_dropins(root: Path) -> tuple[int, str]:
    # systemd looks for drop-ins beside the unit on its search path; a trailing
    # ":" keeps the built-in directories (for the targets the unit names).
    exe = systemd_analyze()
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{root}:")
    res = subprocess.run(
        [exe, "verify", "voxd.service"], capture_output=True, text=True, timeout=60, env=env
    )
    return res.returncode, res.stdout + res.stderr


def test_unit_with_gpu_dropins_verifies_cleanly(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    unit_with_dropins(tmp_path / "good")
    assert verify_with_dropins(tmp_path / "good") == (0, "")
    # The drop-ins are read: a mistake in one is reported.
    (tmp_path / "bad").mkdir()
    unit_with_dropins(tmp_path / "bad", "PrivateDevice=no")
    rc, out = verify_with_dropins(tmp_path / "bad")
    assert "gpu.conf" in out and "Unknown key 'PrivateDevice'" in out, (rc, out)


def test_gpu_dropins_relax_only_what_the_gpu_needs() -> None:
    gpu = unit_settings((DROPIN_DIR / "gpu.conf").read_text())
    jetson = unit_settings((DROPIN_DIR / "jetson.conf").read_text())
    assert gpu["PrivateDevices"] == ["no"]
    assert gpu["DevicePolicy"] == ["closed"]
    assert gpu["MemoryDenyWriteExecute"] == ["no"]
    assert gpu["SupplementaryGroups"] == ["video"]
    assert gpu["ProcSubset"] == ["all"]
    # The NVIDIA groups, by /proc/devices name; nothing that would reset the list
    # (an empty DeviceAllow= would drop ALSA) or open all devices.
    assert gpu["DeviceAllow"] == [
        "char-nvidia-frontend rw",
        "char-nvidia rw",
        "char-nvidia-uvm rw",
        "char-nvidia-caps r",
    ]
    assert "char-nvhost* rw" in jetson["DeviceAllow"] and "/dev/nvmap rw" in jetson["DeviceAllow"]
    for entry in gpu["DeviceAllow"] + jetson["DeviceAllow"]:
        assert entry.split()[0] not in ("", "char-*", "char-misc", "/dev", "*"), entry
    assert set(gpu) == {
        "PrivateDevices",
        "DevicePolicy",
        "DeviceAllow",
        "ExecStartPre",
        "SupplementaryGroups",
        "ProcSubset",
        "MemoryDenyWriteExecute",
    }
    assert set(jetson) == {"DeviceAllow"}
    # The rest of the sandbox stays as voxd.service has it.
    unit = unit_settings(UNIT.read_text())
    assert unit["DevicePolicy"] == ["closed"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["NoNewPrivileges"] == ["yes"]


@pytest.mark.parametrize("name", GPU_DROPINS)
def test_gpu_dropin_settings_are_explained(name: str) -> None:
    # Every setting sits under a comment saying why (or follows one of its kind).
    lines = [line.strip() for line in (DROPIN_DIR / name).read_text().splitlines()]
    for i, line in enumerate(lines):
        if not line or line.startswith(("#", "[")):
            continue
        above = lines[i - 1]
        key = line.partition("=")[0]
        assert above.startswith("#") or above.startswith(key + "="), f"{name}: {line}"


def test_unit_security_exposure_with_gpu_dropins(tmp_path: Path) -> None:
    exe = systemd_analyze()
    system = tmp_path / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    unit_with_dropins(system)
    res = subprocess.run(
        [exe, "security", "--offline=true", f"--root={tmp_path}", "--no-pager", "voxd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in res.stderr and "unrecognized" in res.stderr:
        pytest.skip("systemd-analyze too old for --offline (needs systemd >= 250)")
    match = re.search(r"Overall exposure level for voxd\.service: ([0-9.]+)", res.stdout)
    assert match, res.stdout + res.stderr
    # The drop-ins took effect, and added to the unit's device list.
    allow = next(line for line in res.stdout.splitlines() if "DeviceAllow=" in line)
    assert "char-alsa:rw" in allow and "char-nvidia-uvm:rw" in allow and "/dev/nvmap:rw" in allow
    assert float(match.group(1)) <= MAX_EXPOSURE, res.stdout


# --- install scripts ---------------------------------------------------------------------

SCRIPTS = ["install.sh", "uninstall.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script: str) -> None:
    res = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_scripts_pass_shellcheck() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    files = [*SCRIPTS, "scripts/install-common.sh"]  # the helpers both of them source
    res = subprocess.run(
        [exe, "-x", *(str(ROOT / s) for s in files)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_usage(script: str) -> None:
    assert run_script(script, "--help").returncode == 0
    bad = run_script(script, "--bogus")
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    res = run_script("install.sh", "--dry-run", "--no-model", "--prefix", str(prefix))
    assert res.returncode == 0, res.stderr
    assert "dry run, nothing changed" in res.stdout
    assert f"{prefix}/venv/bin/pip install" in res.stdout
    assert not prefix.exists()


def test_uninstall_dry_run_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "venv").mkdir(parents=True)
    res = run_script("uninstall.sh", "--dry-run", "--prefix", str(prefix))
    assert res.returncode == 0, res.stderr
    assert f"+ rm -rf -- {prefix}/venv" in res.stdout
    assert (prefix / "venv").is_dir()


def test_scripts_refuse_a_root_prefix() -> None:
    for script in SCRIPTS:
        res = run_script(script, "--dry-run", "--prefix", "/")
        assert res.returncode == 1 and "absolute directory other than /" in res.stderr
