"""`voxd config check` accepts exactly what `voxd run` can run, over generated configs.

Each generated configuration mixes valid and invalid values (right and wrong
TOML types, out-of-range and non-finite numbers, bad host names, over-long
MQTT strings, missing files) and sometimes environment overrides. For each
one, either the check refuses it (load_settings + preflight, what both
commands call), or the daemon's start path, built for real from the
settings, accepts it:

- MQTT: the paho client with client id, will, credentials and TLS files as
  voxd.sinks.mqtt builds it, connect_async(host, port, keepalive), the host encoded
  as socket.getaddrinfo encodes it (IDNA), and one real connection (CONNECT
  packed and sent, CONNACK received) to the test Mosquitto;
- the VAD as the daemon loads it (load_judge), when enabled;
- the engine: the tiny model loaded with the threads and backend, a stream
  opened with the delay and interval;
- audio: Capture's queue and gain, the Resampler for the rate and channels,
  one block converted; the endpointer fed one block.

Then a few generated configurations run the real daemon (`python -m voxd
run`): accepted ones reach READY=1, refused ones exit 2 with the
message `voxd config check` prints.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from fixtures_mqtt import Mosquitto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from test_daemon import Daemon, NotifySocket, fifo_mic, notify_socket  # noqa: F401

from voxd.audio import Capture
from voxd.config import ConfigError, Settings, load_settings
from voxd.daemon import load_judge
from voxd.endpoint import Endpointer
from voxd.engine import Engine
from voxd.preflight import preflight
from voxd.resample import Resampler
from voxd.sinks.mqtt_protocol import OFFLINE, Topics, default_client_id, read_password

REPO = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT_S = 30.0
INF, NAN = math.inf, math.nan

# Values of the wrong type or out of any range, tried on every key.
JUNK: list[Any] = ["20", "true", "", True, 1, 0, -1, 1.5, INF, -INF, NAN, 1e308, 2**40, "x" * 300]

# Per key: values that are right, borderline or wrong.
KEYS: dict[tuple[str, ...], list[Any]] = {
    ("audio", "sample_rate"): [8000, 11025, 16000, 44100, 48000, 192000, 7999, 44101, 192001],
    ("audio", "channels"): [1, 2, 4, 32, 0, 33],
    ("audio", "channel"): ["mix", 0, 1, 3, 31, 32, -1, "both"],
    ("audio", "gain_db"): [0.0, -60.0, 60.0, 12.5, 60.5, -61],
    ("audio", "block_ms"): [5, 20, 200, 4, 201],
    ("audio", "queue_seconds"): [0.01, 10.0, 600, 600.5, 0.0],
    ("audio", "reconnect_min_s"): [0.01, 0.5, 3600, 0.001, 4000],
    ("audio", "reconnect_max_s"): [0.01, 30.0, 3600, 1e10],
    ("audio", "device"): [0, 3, 999, 1000, "USB"],
    ("endpoint", "frame_ms"): [10, 20, 100, 9, 101],
    ("endpoint", "start_db"): [0.0, 12.0, 60.0, -1.0, 61.0],
    ("endpoint", "stop_db"): [0.0, 6.0, 60.0, -0.5],
    ("endpoint", "min_floor_dbfs"): [-120, -70.0, 0, -121, 1],
    ("endpoint", "start_frames"): [1, 3, 100, 0, 101],
    ("endpoint", "min_speech_ms"): [0, 250, 10000, -1, 10001],
    ("endpoint", "hangover_ms"): [0, 700, 10000, 10001],
    ("endpoint", "preroll_ms"): [0, 300, 5000, 5001],
    ("endpoint", "max_utterance_s"): [0.5, 30.0, 600, 601, 0],
    ("endpoint", "floor_adapt_s"): [0.01, 2.0, 600, 601],
    ("vad", "threshold"): [0.01, 0.5, 0.99, 0, 1],
    ("engine", "delay_ms"): [80, 480, 2400, 500, 2480, 0],
    ("engine", "interval_ms"): [1, 80, 480, 60000, 60001, 0, 99999999],
    ("engine", "threads"): [0, 1, 2, 256, 257, 100000],
    ("engine", "backend"): ["portable", "avx2", "neon", "cpu", "AVX2"],
    ("mqtt", "enabled"): [True, False],
    ("mqtt", "host"): [
        "localhost",
        "broker.lan",
        "broker.lan.",
        "10.1.2.3",
        "::1",
        "brökér.lan",
        "",
        "broker..lan",
        ".lan",
        "a" * 64 + ".lan",
        "a." * 127 + "lan",
        "bro ker",
        "[::1]",
    ],
    ("mqtt", "port"): [1, 1883, 65535, 0, 65536],
    ("mqtt", "keepalive_s"): [5, 30, 65535, 4, 65536, 999999],
    ("mqtt", "client_id"): ["voxd", "c" * 23, "c" * 24, "é" * 32767, "c" * 65536, "", "a\x00b"],
    ("mqtt", "username"): ["voxd", "", "u" * 65535, "é" * 40000],
    ("mqtt", "password"): ["secret", "p" * 65535, "p" * 65536],
    ("mqtt", "site"): ["kitchen", "s" * 200, "s" * 65530, "a/b", "", "a b"],
    ("mqtt", "base_topic"): ["home/stt", "t" * 65515, "t" * 65530, "a/#", "/x"],
    ("mqtt", "reconnect_min_s"): [0.1, 1.0, 3600, 0, 3601],
    ("mqtt", "reconnect_max_s"): [1.0, 60.0, 3600, 1e12],
    ("mqtt", "stats_interval_s"): [0.5, 60.0, 86400, 1e-9, 86401],
    ("mqtt", "outbox_max"): [1, 1000, 100000, 0, 100001],
    ("mqtt", "discovery", "prefix"): ["homeassistant", "p" * 65500, "p" * 65535, "ha/+"],
    ("mqtt", "hermes", "site_id"): ["default", "x/y"],
    ("service", "log_level"): ["debug", "info", "loud"],
}
# Files: created by the test in its directory; "{dir}" is that directory.
FILE_KEYS: dict[tuple[str, ...], list[str]] = {
    ("mqtt", "password_file"): ["pw-short", "pw-long", "missing", "{dir}"],
    ("mqtt", "tls", "ca_file"): ["garbage", "missing"],
    ("vad", "model_path"): ["missing", "{dir}"],
}
# What makes each file matter to `voxd run`.
NEEDED_BY: dict[tuple[str, ...], dict[tuple[str, ...], Any]] = {
    ("mqtt", "password_file"): {("mqtt", "username"): "voxd", ("mqtt", "enabled"): True},
    ("mqtt", "tls", "ca_file"): {("mqtt", "tls", "enabled"): True, ("mqtt", "enabled"): True},
    ("vad", "model_path"): {("vad", "enabled"): True},
}
FLAGS: list[tuple[str, ...]] = [
    ("vad", "enabled"),
    ("mqtt", "tls", "enabled"),
    ("mqtt", "discovery", "enabled"),
    ("mqtt", "hermes", "enabled"),
]


@functools.cache
def valid_values(key: tuple[str, ...]) -> list[Any]:
    """The values of KEYS[key] that `voxd config check` accepts on their own."""
    # A password needs a user name: the one key that is never valid alone.
    base = {("mqtt", "username"): "voxd"} if key == ("mqtt", "password") else {}
    with tempfile.TemporaryDirectory() as tmp:
        found = [v for v in KEYS[key] if check(write_config(Path(tmp), {key: v}, base))[0]]
    assert found, f"no value of {key} is valid on its own"
    return found


MODES = ("valid", "one-wrong", "any")


@st.composite
def configs(
    draw: st.DrawFn, junk: bool = True, modes: tuple[str, ...] = MODES
) -> tuple[dict[tuple[str, ...], Any], dict[str, str]]:
    """(key -> value for the file, environment overrides), in one of three modes.

    "valid": only values accepted one by one (their combinations are tried);
    "one-wrong": the same but one key takes any value, the sharpest test of
    that key's check; "any": any value of KEYS (with ``junk``, of any type),
    files, flags and environment overrides.
    """
    mode = draw(st.sampled_from(modes))
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=7, unique=True))
    chosen: dict[tuple[str, ...], Any] = {}
    anything = st.sampled_from(KEYS[keys[0]])
    anything = anything | st.sampled_from(JUNK) if junk else anything
    if mode != "any":
        for key in keys:
            chosen[key] = draw(st.sampled_from(valid_values(key)))
        if mode == "one-wrong" and draw(st.booleans()):
            file_key = draw(st.sampled_from(sorted(FILE_KEYS)))
            chosen[file_key] = ("file", draw(st.sampled_from(FILE_KEYS[file_key])))
            chosen.update(NEEDED_BY[file_key])  # so that only the file can be wrong
        elif mode == "one-wrong":
            chosen[keys[0]] = draw(anything)
        if ("mqtt", "password") in chosen:
            chosen[("mqtt", "username")] = "voxd"
        return chosen, {}
    for key in keys:
        values = st.sampled_from(KEYS[key])
        chosen[key] = draw(values | st.sampled_from(JUNK) if junk else values)
    for key in draw(st.lists(st.sampled_from(sorted(FILE_KEYS)), max_size=2, unique=True)):
        chosen[key] = ("file", draw(st.sampled_from(FILE_KEYS[key])))
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True)):
        chosen[flag] = draw(st.sampled_from([True, False, 1, "yes"]))
    has_password = ("mqtt", "password") in chosen or ("mqtt", "password_file") in chosen
    if has_password and draw(st.booleans()):
        chosen[("mqtt", "username")] = "voxd"
    env: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=2, unique=True)):
        value = draw(st.sampled_from(KEYS[key]) | st.sampled_from(JUNK))
        env["VOXD_" + "__".join(k.upper() for k in key)] = _as_env_text(value)
    return chosen, env


def _as_env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\u0000")
    return f'"{text}"'


def write_config(
    directory: Path, chosen: dict[tuple[str, ...], Any], base: dict[tuple[str, ...], Any]
) -> Path:
    """The TOML file: ``base`` keys (model, state, broker) first, then the generated ones."""
    tables: dict[tuple[str, ...], list[str]] = {}
    for key, value in {**base, **chosen}.items():
        if isinstance(value, tuple) and value[0] == "file":
            value = _file_value(directory, value[1])
        tables.setdefault(key[:-1], []).append(f"{key[-1]} = {_toml_scalar(value)}")
    text = "".join(
        f"[{'.'.join(table)}]\n" + "\n".join(lines) + "\n" for table, lines in tables.items()
    )
    path = directory / "voxd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _file_value(directory: Path, kind: str) -> str:
    if kind == "{dir}":
        return str(directory)
    path = directory / kind
    contents = {"pw-short": "secret\n", "pw-long": "p" * 70000, "garbage": "not a certificate"}
    if kind in contents:
        path.write_text(contents[kind])
    return str(path)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("VOXD_"):
            monkeypatch.delenv(name)


class _Environ:
    """Sets VOXD_* variables for one example (hypothesis reuses the test's fixtures)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env

    def __enter__(self) -> None:
        os.environ.update(self._env)

    def __exit__(self, *exc: object) -> None:
        for name in self._env:
            os.environ.pop(name, None)


def check(path: Path) -> tuple[Settings | None, str | None]:
    """What `voxd config check` decides: the settings, or the error message."""
    try:
        loaded = load_settings(path)
        preflight(loaded)
    except ConfigError as err:
        return None, str(err)
    return loaded, None


# --------------------------------------------------------------------------- the start path


class StartPath:
    """Builds from the settings what `voxd run` builds, without a microphone."""

    def __init__(self, broker: Mosquitto, model_dir: Path) -> None:
        self._broker = broker
        self._model_dir = model_dir
        self._engines: dict[tuple[int, str | None], Engine] = {}

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()

    def run(self, s: Settings) -> None:
        judge = load_judge(s)  # the daemon's own VAD loading
        assert not isinstance(judge, str), judge
        self._engine(s)
        self._audio(s)
        if s.mqtt.enabled:
            self._mqtt(s)

    def _engine(self, s: Settings) -> None:
        key = (s.engine.threads, s.engine.backend)
        if key not in self._engines:
            self._engines[key] = Engine(self._model_dir, threads=key[0], backend=key[1])
        stream = self._engines[key].stream(
            delay_ms=s.engine.delay_ms, interval_ms=s.engine.interval_ms
        )
        stream.close()

    def _audio(self, s: Settings) -> None:
        a = s.audio
        Capture(a)  # queue size and gain (not started: no device here)
        # What Capture._open picks on a device offering 32 channels at 48 kHz.
        channels = a.channels or 2
        if a.channel != "mix" and a.channels is None and a.channel >= channels:
            channels = a.channel + 1
        rate = a.sample_rate or 48000
        frames = max(rate * a.block_ms // 1000, 1)
        resampler = Resampler(rate, 16000, channels=channels, channel=a.channel)
        block = resampler.process(np.zeros(frames * channels, dtype=np.int16))
        gain = np.float32(10.0 ** (a.gain_db / 20.0))
        block = np.clip(block * gain, -1.0, 1.0).astype(np.float32)
        Endpointer(s.endpoint).process(np.zeros(16000, dtype=np.float32))

    def _mqtt(self, s: Settings) -> None:
        m = s.mqtt
        client = self._client(s)
        if m.tls.enabled:
            client.tls_set(
                ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                keyfile=str(m.tls.key_file) if m.tls.key_file else None,
            )
        # The configured address, as paho takes it and socket.getaddrinfo encodes it.
        client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        if not _is_ip(m.host):
            m.host.encode("idna")
        # The same CONNECT, for real, to the test broker (a plain one: no TLS).
        plain = self._client(s)
        self._connect_once(plain, m.keepalive_s)

    def _client(self, s: Settings) -> paho.Client:
        m = s.mqtt
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or default_client_id(m.site),
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        client.will_set(Topics.from_settings(m).availability, OFFLINE, qos=1, retain=True)
        if m.username is not None:
            client.username_pw_set(m.username, read_password(m))
        client.reconnect_delay_set(
            max(1, math.ceil(m.reconnect_min_s)), max(1, math.ceil(m.reconnect_max_s))
        )
        return client

    def _connect_once(self, client: paho.Client, keepalive: int) -> None:
        answered = threading.Event()
        codes: list[Any] = []

        def on_connect(c: paho.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
            codes.append(reason)
            answered.set()

        client.on_connect = on_connect
        client.connect(self._broker.host, self._broker.port, keepalive=keepalive)
        client.loop_start()
        try:
            assert answered.wait(CONNECT_TIMEOUT_S), "no CONNACK from the broker"
            assert not codes[0].is_failure, f"the broker refused the connection: {codes[0]}"
        finally:
            client.disconnect()
            client.loop_stop()


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%")[0])
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the property

COUNTS = {"accepted": 0, "refused": 0}


@pytest.fixture
def start_path(mqtt_broker: Mosquitto, tiny_model_dir: Path) -> Iterator[StartPath]:
    path = StartPath(mqtt_broker, tiny_model_dir)
    yield path
    path.close()


@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generated=configs())
def test_check_refuses_or_the_start_path_accepts(
    generated: tuple[dict[tuple[str, ...], Any], dict[str, str]],
    start_path: StartPath,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    chosen, env = generated
    directory = tmp_path_factory.mktemp("generated")
    base = {
        ("engine", "model_dir"): str(tiny_model_dir),
        ("service", "state_dir"): str(directory / "state"),
    }
    path = write_config(directory, chosen, base)
    with _Environ(env):
        accepted, message = check(path)
    if accepted is None:
        COUNTS["refused"] += 1
        assert message and "invalid configuration" in message
        assert "typing." not in message and "function" not in message  # no Python internals
        return
    COUNTS["accepted"] += 1
    start_path.run(accepted)  # must not raise: the daemon would have crashed


def test_generated_configs_cover_both_verdicts() -> None:
    """Runs after the property (file order): the mix must not be one-sided."""
    if COUNTS["accepted"] + COUNTS["refused"] == 0:
        pytest.skip("the property test did not run")
    print(f"generated configs: {COUNTS}")
    assert COUNTS["accepted"] >= 20 and COUNTS["refused"] >= 20, COUNTS


# --------------------------------------------------------------------------- the real daemon


def cli_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "voxd.cli", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


DAEMON_RUNS = 8
DAEMON_COUNTS = {"ready": 0, "exit 2": 0}


@settings(
    max_examples=DAEMON_RUNS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Mostly combinations of valid values: what reaches READY is the point here.
@given(generated=configs(junk=False, modes=("valid", "valid", "one-wrong")))
def test_generated_configs_run_the_real_daemon(
    generated: tuple[dict[tuple[str, ...], Any], dict[str, str]],
    fifo_mic: Any,  # noqa: F811
    notify_socket: NotifySocket,  # noqa: F811
    mqtt_broker: Mosquitto,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    chosen, _ = generated
    directory = tmp_path_factory.mktemp("daemon")
    # Where the daemon can really get to: the test microphone and broker.
    chosen = {k: v for k, v in chosen.items() if k[:2] not in (("mqtt", "host"), ("mqtt", "port"))}
    chosen.pop(("audio", "device"), None)
    base = {
        ("audio", "device"): "voxtest_mic",
        ("engine", "model_dir"): str(tiny_model_dir),
        ("service", "state_dir"): str(directory / "state"),
        ("mqtt", "host"): mqtt_broker.host,
        ("mqtt", "port"): mqtt_broker.port,
    }
    path = write_config(directory, chosen, base)
    checked = cli_check(path)
    daemon = Daemon(path, directory, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    DAEMON_COUNTS["ready" if checked.returncode == 0 else "exit 2"] += 1
    try:
        if checked.returncode == 0:
            ready = notify_socket.lines.count("READY=1")
            _wait(lambda: notify_socket.lines.count("READY=1") > ready or daemon.proc.poll())
            assert daemon.proc.poll() is None, daemon.stderr()[-3000:]
            assert daemon.terminate() == 0
        else:
            assert checked.returncode == 2, checked.stderr
            assert daemon.wait() == 2
            problems = [line for line in checked.stderr.splitlines() if line.startswith("  - ")]
            assert problems, checked.stderr
            for line in problems:
                assert line in daemon.stderr()
    finally:
        daemon.kill()


def test_daemon_runs_cover_both_verdicts() -> None:
    """Runs after the daemon runs (file order): some started, some were refused."""
    if sum(DAEMON_COUNTS.values()) == 0:
        pytest.skip("the daemon runs did not run")
    print(f"real daemon runs: {DAEMON_COUNTS}")
    assert DAEMON_COUNTS["ready"] >= 2 and DAEMON_COUNTS["exit 2"] >= 1, DAEMON_COUNTS


def _wait(condition: Any) -> None:
    from fixtures_mqtt import wait_until

    wait_until(condition, 60.0, "READY=1 or the daemon's exit")


def test_tls_files_check_matches_paho(tmp_path: Path) -> None:
    """The preflight TLS check and paho's tls_set agree on a garbage CA file."""
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        paho.Client(CallbackAPIVersion.VERSION2).tls_set(ca_certs=str(bad))
    config = write_config(
        tmp_path, {("mqtt", "tls", "enabled"): True, ("mqtt", "tls", "ca_file"): str(bad)}, {}
    )
    assert "mqtt.tls: cannot load certificates" in (check(config)[1] or "")


def test_check_and_run_refuse_with_the_same_lines(
    tmp_path: Path,
    tiny_model_dir: Path,
    notify_socket: NotifySocket,  # noqa: F811
) -> None:
    """A load error and a preflight refusal: `config check` and the daemon say the same."""
    for name, chosen in {
        "load": {("mqtt", "keepalive_s"): 999999, ("audio", "gain_db"): INF},
        "preflight": {("audio", "channels"): 2, ("audio", "channel"): 2},
    }.items():
        directory = tmp_path / name
        directory.mkdir()
        base = {("engine", "model_dir"): str(tiny_model_dir), ("mqtt", "enabled"): False}
        path = write_config(directory, chosen, base)
        checked = cli_check(path)
        assert checked.returncode == 2 and checked.stdout == ""
        problems = [line for line in checked.stderr.splitlines() if line.startswith("  - ")]
        assert len(problems) == len(chosen) if name == "load" else len(problems) == 1
        daemon = Daemon(path, directory, env={"NOTIFY_SOCKET": str(notify_socket.path)})
        try:
            assert daemon.wait() == 2
            for line in problems:
                assert line in daemon.stderr()
        finally:
            daemon.kill()
        if name == "preflight":  # also the unit's STATUS, as for every start failure
            assert "audio.channel: 2" in notify_socket.wait_for("STATUS=failed")


def test_check_warns_and_notes_but_accepts(tmp_path: Path) -> None:
    chosen = {
        ("mqtt", "client_id"): "c" * 30,
        ("engine", "model_dir"): str(tmp_path / "no-model"),
    }
    checked = cli_check(write_config(tmp_path, chosen, {}))
    assert checked.returncode == 0, checked.stderr
    assert "voxd: warning: mqtt.client_id: 30 bytes; MQTT 3.1.1 only guarantees 23" in (
        checked.stderr
    )
    assert f"note: engine.model_dir {tmp_path / 'no-model'} does not exist yet" in checked.stderr
    assert 'client_id = "' + "c" * 30 + '"' in checked.stdout
