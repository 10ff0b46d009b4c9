"""Configuration loading: TOML + environment, error messages, the shipped file."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import pytest
import tomllib
from pydantic import BaseModel, ValidationError

import voxd.config as config
from voxd.config import (
    ConfigError,
    EngineSettings,
    MqttSettings,
    Settings,
    effective_config_toml,
    load_settings,
)
from voxd.preflight import preflight, refusal
from voxd.resample import Resampler

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "voxd.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No VOXD_* variable from the outside, and no /etc/voxd/voxd.toml."""
    for name in list(os.environ):
        if name.upper().startswith("VOXD_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "voxd.toml")


def write(tmp_path: Path, text: str, name: str = "voxd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def defaults() -> dict[str, object]:
    """The model defaults, section by section, without reading any source."""
    return {
        name: field.default.model_dump()
        for name, field in Settings.model_fields.items()
        if isinstance(field.default, BaseModel)
    }


def problems_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# --------------------------------------------------------------------------- bad files

BAD_FILES = [
    pytest.param(
        "[mqtt]\nport = 70000\n",
        ["mqtt.port: 70000 is not allowed: must be between 1 and 65535 (in "],
        id="port-range",
    ),
    pytest.param(
        '[mqtt]\nport = "abc"\n',
        ['mqtt.port: "abc" is not allowed: must be an integer, between 1 and 65535'],
        id="port-type",
    ),
    pytest.param(
        "[engine]\ndelay_ms = 500\n",
        ["engine.delay_ms: 500", "between 80 and 2400 and a multiple of 80"],
        id="delay-multiple",
    ),
    pytest.param(
        "[engine]\ndelay_ms = 4000\n",
        ["engine.delay_ms: 4000", "between 80 and 2400"],
        id="delay-range",
    ),
    pytest.param(
        "[mqtt]\nkeepalive_s = 2\n",
        ["mqtt.keepalive_s: 2 is not allowed: must be at least 5"],
        id="keepalive-min",
    ),
    pytest.param(
        "[vad]\nthreshold = 1.5\n",
        ["vad.threshold: 1.5 is not allowed: must be greater than 0 and less than 1"],
        id="threshold",
    ),
    pytest.param(
        '[service]\nlog_level = "loud"\n',
        ['service.log_level: "loud" is not allowed: must be one of "debug", "info"'],
        id="log-level",
    ),
    pytest.param(
        '[audio]\nchannel = "both"\n',
        ['audio.channel: "both" is not allowed: must be an integer or "mix"'],
        id="channel",
    ),
    pytest.param(
        '[mqtt.tls]\nenabled = "maybe"\n',
        ['mqtt.tls.enabled: "maybe" is not allowed: must be true or false'],
        id="bool",
    ),
    pytest.param(
        '[mqtt]\nsite = "living/room"\n',
        ['mqtt.site: "living/room" is not allowed: must not contain'],
        id="site-slash",
    ),
    pytest.param(
        '[mqtt]\nbase_topic = "home/#"\n',
        ['mqtt.base_topic: "home/#" is not allowed', "wildcards"],
        id="base-topic-wildcard",
    ),
    pytest.param(
        "mqtt = 5\n",
        ["mqtt: 5 is not allowed: must be a table"],
        id="section-not-table",
    ),
    pytest.param(
        '[mqtt.tls]\ncert_file = "/etc/voxd/c.crt"\n',
        ["mqtt.tls: cert_file and key_file go together"],
        id="tls-cert-without-key",
    ),
    pytest.param(
        '[mqtt]\nusername = "u"\npassword = "p"\npassword_file = "/etc/voxd/pw"\n',
        ["mqtt: password and password_file are both set"],
        id="password-twice",
    ),
    pytest.param(
        '[mqtt]\npassword = "p"\n',
        ["mqtt: a password (or password_file) needs a username"],
        id="password-without-user",
    ),
    pytest.param(
        "[vad]\nenabled = true\n",
        ["vad: enabled = true needs model_path"],
        id="vad-without-model",
    ),
    pytest.param(
        "[endpoint]\nstart_db = 6.0\nstop_db = 9.0\n",
        ["endpoint: stop_db (9) must not be greater than start_db (6)"],
        id="stop-above-start",
    ),
    pytest.param(
        "[mqtt]\nreconnect_min_s = 90.0\n",
        ["mqtt: reconnect_min_s (90) must not be greater than reconnect_max_s (60)"],
        id="reconnect-order",
    ),
    pytest.param(
        '[mqtt]\nhots = "broker"\n',
        ["mqtt.hots: unknown key; did you mean 'host'?"],
        id="unknown-key",
    ),
    pytest.param(
        "[mqtt.tsl]\nenabled = true\n",
        ["mqtt.tsl: unknown key; did you mean 'tls'?"],
        id="unknown-subsection",
    ),
    pytest.param(
        "[endpiont]\nhangover_ms = 500\n",
        ["endpiont: unknown key; did you mean 'endpoint'?"],
        id="unknown-section",
    ),
    pytest.param(
        "[engine]\nzzz = 1\n",
        ["engine.zzz: unknown key; valid keys here: model_dir, delay_ms"],
        id="unknown-key-no-match",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_file_messages(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    message = problems_of(path)
    for part in expected:
        assert part in message
    assert f"(in {path})" in message


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mqtt]\nport = 0\nhots = "x"\n[engine]\ndelay_ms = 81\n[audoi]\ndevice = 1\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    keys = sorted(p.split(":")[0] for p in info.value.problems)
    assert keys == ["audoi", "engine.delay_ms", "mqtt.hots", "mqtt.port"]
    assert "did you mean 'audio'?" in str(info.value)


def test_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nhost = "broker"\nport = = 1883\n')
    message = problems_of(path)
    assert "line 3" in message
    assert "port = = 1883" in message


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    message = problems_of(tmp_path / "nope.toml")
    assert "config file not found" in message
    assert "nope.toml" in message


def test_missing_default_file_means_defaults() -> None:
    assert load_settings().model_dump() == defaults()


# --------------------------------------------------------------------------- sources


def test_values_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nhost = "broker.lan"\n[mqtt.tls]\nenabled = true\n')
    settings = load_settings(path)
    assert settings.mqtt.host == "broker.lan"
    assert settings.mqtt.tls.enabled is True
    assert settings.mqtt.port == 1883  # untouched keys keep their defaults


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[mqtt]\nhost = "from-file"\nport = 1884\n')
    monkeypatch.setenv("VOXD_MQTT__HOST", "from-env")
    monkeypatch.setenv("VOXD_MQTT__TLS__ENABLED", "true")
    monkeypatch.setenv("VOXD_ENGINE__DELAY_MS", "960")
    settings = load_settings(path)
    assert settings.mqtt.host == "from-env"
    assert settings.mqtt.port == 1884  # from the file, merged with the environment
    assert settings.mqtt.tls.enabled is True
    assert settings.engine.delay_ms == 960


def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXD_MQTT__PORT", "70000")
    message = problems_of(write(tmp_path, ""))
    assert "mqtt.port: " in message
    assert "70000" in message
    assert "must be between 1 and 65535" in message
    assert "from environment VOXD_MQTT__PORT" in message


def test_unknown_environment_key_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXD_MQTT__HOTS", "broker")
    message = problems_of(write(tmp_path, ""))
    assert "mqtt.hots: unknown key; did you mean 'host'?" in message


def test_voxd_config_variable_selects_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[mqtt]\nsite = "kitchen"\n', name="other.toml")
    monkeypatch.setenv("VOXD_CONFIG", str(path))
    assert load_settings().mqtt.site == "kitchen"
    assert Settings().mqtt.site == "kitchen"


def test_voxd_config_pointing_nowhere_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings()


def test_init_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXD_MQTT__HOST", "from-env")
    settings = Settings(mqtt=MqttSettings(host="from-code"))
    assert settings.mqtt.host == "from-code"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.mqtt = MqttSettings()  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.mqtt.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        EngineSettings(speed=2)  # type: ignore[call-arg]


def test_topic_root() -> None:
    assert MqttSettings(site="kitchen").topic_root == "voxd/kitchen"
    assert MqttSettings(site="kitchen", base_topic="home/stt").topic_root == "home/stt"


# --------------------------------------------------------------------------- shipped file


def test_shipped_config_equals_the_defaults() -> None:
    assert load_settings(SHIPPED).model_dump() == defaults()


def test_shipped_config_documents_every_key() -> None:
    """Every key appears (set, or commented out when its default is "not set")."""
    sections = _sections_of(SHIPPED.read_text())
    for key, model in _all_sections():
        assert key in sections, f"[{key}] missing from {SHIPPED.name}"
        body = sections[key]
        for name, field in model.model_fields.items():
            if isinstance(field.default, BaseModel):
                continue
            pattern = rf"^#?{name} = " if field.default is None else rf"^{name} = "
            assert re.search(pattern, body, re.MULTILINE), f"{key}.{name} not documented"


def _sections_of(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        header = re.match(r"^\[([a-z_.]+)\]\s*$", line)
        if header:
            current = header.group(1)
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    return sections


def _all_sections() -> list[tuple[str, type[BaseModel]]]:
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            if isinstance(field.default, BaseModel):
                key = f"{prefix}.{name}" if prefix else name
                found.append((key, type(field.default)))
                walk(key, type(field.default))

    walk("", Settings)
    return found


# --------------------------------------------------------------------------- effective config


def test_effective_config_masks_secrets_and_round_trips(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mqtt]\nhost = "b"\nusername = "u"\npassword = "hunter2"\n'
        '[audio]\ndevice = "USB"\n[vad]\nenabled = true\nmodel_path = "/m/vad.onnx"\n',
    )
    settings = load_settings(path)
    text = effective_config_toml(settings)
    assert "hunter2" not in text
    assert 'password = "********"' in text

    reloaded = load_settings(write(tmp_path, text, name="effective.toml"))
    expected = settings.model_dump()
    expected["mqtt"]["password"] = config.MASK
    assert reloaded.model_dump() == expected


def test_effective_config_of_defaults_parses() -> None:
    data = tomllib.loads(effective_config_toml(load_settings()))
    assert data["mqtt"]["port"] == 1883
    assert data["mqtt"]["discovery"]["prefix"] == "homeassistant"
    assert "device" not in data["audio"]  # not set -> commented out


# --------------------------------------------------------------------------- what the daemon runs

# Each of these was accepted by `voxd config check` and then crashed or stalled
# `voxd run` (the comment says how); each message names the key, the value
# and what is allowed.
REPRODUCED = [
    pytest.param(
        '[mqtt]\nhost = "broker..lan"\n',
        ['mqtt.host: "broker..lan" is not allowed', "labels have 1 to 63 characters"],
        id="host-empty-label",  # IDNA UnicodeError in paho's network thread
    ),
    pytest.param(
        f'[mqtt]\nhost = "{"a" * 64}.lan"\n',
        ["mqtt.host: ", "labels have 1 to 63 characters"],
        id="host-label-64",
    ),
    pytest.param(
        f'[mqtt]\nhost = "{"a." * 127}lan"\n',
        ["mqtt.host: ", "at most 253 characters"],
        id="host-too-long",
    ),
    pytest.param(
        '[mqtt]\nhost = ""\n',
        ['mqtt.host: "" is not allowed: must not be empty'],
        id="host-empty",  # ValueError from connect_async
    ),
    pytest.param(
        '[mqtt]\nhost = "bro ker"\n',
        ['mqtt.host: "bro ker" is not allowed: must be a host name'],
        id="host-space",
    ),
    pytest.param(
        "[mqtt]\nkeepalive_s = 999999\n",
        ["mqtt.keepalive_s: 999999 is not allowed: must be between 5 and 65535"],
        id="keepalive-16-bit",  # struct.error packing CONNECT
    ),
    pytest.param(
        f'[mqtt]\nclient_id = "{"x" * 70000}"\n',
        ["mqtt.client_id: ", "(70000 characters) is not allowed", "at most 65535 bytes"],
        id="client-id-65535",  # struct.error packing CONNECT
    ),
    pytest.param(
        f'[mqtt]\nusername = "{"é" * 40000}"\n',
        ["mqtt.username: ", "at most 65535 bytes in UTF-8", "not 80000"],
        id="username-utf8-bytes",
    ),
    pytest.param(
        '[mqtt]\nclient_id = ""\n',
        ['mqtt.client_id: "" is not allowed: must not be empty: leave client_id out'],
        id="client-id-empty",
    ),
    pytest.param(
        '[mqtt]\nclient_id = "a\\u0000b"\n',
        ["mqtt.client_id: ", "U+0000"],
        id="client-id-nul",
    ),
    pytest.param(
        "[audio]\nqueue_seconds = inf\n",
        ["audio.queue_seconds: inf is not allowed: must be a finite number"],
        id="queue-inf",  # OverflowError sizing the queue
    ),
    pytest.param(
        "[audio]\nqueue_seconds = 601.0\n",
        ["audio.queue_seconds: 601.0 is not allowed: must be greater than 0 and at most 600"],
        id="queue-max",
    ),
    pytest.param(
        "[audio]\ngain_db = 1e308\n",
        ["audio.gain_db: 1e+308 is not allowed: must be between -60.0 and 60.0"],
        id="gain-huge",  # OverflowError in 10 ** (gain / 20)
    ),
    pytest.param(
        "[audio]\ngain_db = nan\n",
        ["audio.gain_db: nan is not allowed: must be a finite number"],
        id="gain-nan",
    ),
    pytest.param(
        "[engine]\ninterval_ms = 99999999\n",
        ["engine.interval_ms: 99999999 is not allowed: must be greater than 0 and at most 60000"],
        id="interval-engine-limit",  # vx_stream_new refuses it
    ),
    pytest.param(
        "[audio]\nchannel = -1\n",
        ['audio.channel: -1 is not allowed: must be "mix" or a channel number from 0 to 31'],
        id="channel-negative",  # ValueError in the capture thread: restart loop
    ),
    pytest.param(
        '[audio]\nblock_ms = "20"\n',
        [
            'audio.block_ms: "20" is not allowed: must be an integer, between 5 and 200',
            "write numbers and true/false without quotes",
        ],
        id="string-not-coerced",
    ),
    pytest.param(
        "[mqtt]\nenabled = 1\n",
        ["mqtt.enabled: 1 is not allowed: must be true or false", "true and false"],
        id="int-not-bool",
    ),
    pytest.param(
        "[audio]\ngain_db = true\n",
        ["audio.gain_db: true is not allowed: must be a number"],
        id="bool-not-number",
    ),
    pytest.param(
        '[mqtt]\nusername = "u"\npassword = true\n',
        ["mqtt.password: true is not allowed: must be a string (in "],
        id="password-not-string",  # the message showed typing.Annotated[...]
    ),
    pytest.param(
        "[audio]\nblock_ms = 1" + "0" * 400 + "\n",
        ["audio.block_ms: an integer of 401 digits is not allowed: must be between 5 and 200"],
        id="huge-integer",
    ),
    pytest.param(
        "[audio]\nchannels = 0\n",
        ["audio.channels: 0 is not allowed: must be at least 1 and at most 32"],
        id="channels-zero",
    ),
    pytest.param(
        "[audio]\nsample_rate = -16000\n",
        ["audio.sample_rate: -16000 is not allowed: must be at least 8000 and at most 192000"],
        id="rate-negative",
    ),
    pytest.param(
        "[audio]\nsample_rate = 44101\n",
        ["audio.sample_rate: 44101 is not allowed", "at most 100000 taps", "44100"],
        id="rate-huge-filter",  # a 2.2 million tap resampling filter
    ),
    pytest.param(
        "[engine]\nthreads = 100000\n",
        ["engine.threads: 100000 is not allowed: must be between 0 and 256"],
        id="threads",
    ),
    pytest.param(
        '[engine]\nbackend = "cpu"\n',
        [
            'engine.backend: "cpu" is not allowed: must be one of "auto", "cuda", "portable", '
            '"avx2", "neon"'
        ],
        id="backend-unknown",  # the engine refuses it at load
    ),
    pytest.param(
        "[mqtt]\nstats_interval_s = 1e-9\n",
        ["mqtt.stats_interval_s: 1e-09 is not allowed: must be at least 0.5"],
        id="stats-interval",
    ),
    pytest.param(
        "[mqtt]\noutbox_max = 10000000\n",
        ["mqtt.outbox_max: 10000000 is not allowed: must be between 1 and 100000"],
        id="outbox-max",
    ),
    pytest.param(
        "[audio]\nreconnect_max_s = 1e10\n",
        ["audio.reconnect_max_s: 10000000000.0 is not allowed: must be between 0.01 and 3600"],
        id="audio-reconnect-max",  # Event.wait overflows
    ),
    pytest.param(
        "[audio]\ndevice = -2\n",
        ["audio.device: -2 is not allowed: must be a device name, or a device index from 0"],
        id="device-index",
    ),
    pytest.param(
        "[endpoint]\nstart_db = 1e300\n",
        ["endpoint.start_db: 1e+300 is not allowed: must be between 0 and 60"],
        id="endpoint-db",
    ),
    pytest.param(
        '[vad]\nenabled = true\nmodel_path = ""\n',
        ['vad.model_path: "" is not allowed: must not be empty'],
        id="empty-path",  # Path("") would be the current directory
    ),
]


@pytest.mark.parametrize(("text", "expected"), REPRODUCED)
def test_what_the_daemon_cannot_run_is_refused(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    message = problems_of(path)
    for part in expected:
        assert part in message
    assert f"(in {path})" in message


@pytest.mark.parametrize(
    "host", ["broker.lan", "broker.lan.", "10.0.0.2", "::1", "fe80::1%eth0", "brökér.lan", "a_b"]
)
def test_good_hosts_are_accepted(tmp_path: Path, host: str) -> None:
    assert load_settings(write(tmp_path, f'[mqtt]\nhost = "{host}"\n')).mqtt.host == host


@pytest.mark.parametrize("depth", [40, 5000])
def test_deep_toml_nesting_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    path = write(tmp_path, "[audio]\nx = " + "[" * depth + "]" * depth + "\n")
    message = problems_of(path)
    assert f"TOML nesting too deep in {path}" in message
    # Settings() reads the file itself when called directly: the same error, no RecursionError.
    monkeypatch.setenv("VOXD_CONFIG", str(path))
    with pytest.raises(ConfigError, match="TOML nesting too deep"):
        Settings()


def test_deep_tables_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[" + ".".join(f"t{i}" for i in range(40)) + "]\nx = 1\n")
    assert f"TOML nesting too deep in {path} under t0.t1.t2..." in problems_of(path)


def test_environment_is_converted_from_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXD_MQTT__PORT", "1884")
    monkeypatch.setenv("VOXD_MQTT__ENABLED", "false")
    monkeypatch.setenv("VOXD_AUDIO__CHANNEL", "1")
    monkeypatch.setenv("VOXD_AUDIO__GAIN_DB", "-6.5")
    monkeypatch.setenv("VOXD_AUDIO__DEVICE", "2")
    monkeypatch.setenv("VOXD_VAD__MODEL_PATH", "/m/vad.onnx")
    settings = load_settings(write(tmp_path, ""))
    assert settings.mqtt.port == 1884 and settings.mqtt.enabled is False
    assert settings.audio.channel == 1 and settings.audio.gain_db == -6.5
    assert settings.audio.device == "2"  # a name or an index: text stays text
    assert settings.vad.model_path == Path("/m/vad.onnx")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("VOXD_MQTT__ENABLED", "maybe", 'mqtt.enabled: "maybe" is not allowed: must be true'),
        ("VOXD_AUDIO__GAIN_DB", "inf", "audio.gain_db: inf is not allowed: must be a finite"),
        ("VOXD_MQTT__KEEPALIVE_S", "70000", "mqtt.keepalive_s: 70000 is not allowed"),
        ("VOXD_MQTT__HOST", "", 'mqtt.host: "" is not allowed: must not be empty'),
        ("VOXD_VAD__MODEL_PATH", "", 'vad.model_path: "" is not allowed: must not be empty'),
    ],
)
def test_bad_environment_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    message = problems_of(write(tmp_path, ""))
    assert expected in message
    assert f"from environment {name}" in message
    assert "without quotes" not in message  # that hint is for the file only


def test_file_types_are_strict_but_the_environment_may_fix_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong type in the file is reported even where the environment overrides it:
    the file itself is wrong, and would be used as soon as the variable goes."""
    path = write(tmp_path, '[mqtt]\nport = "1884"\n')
    monkeypatch.setenv("VOXD_MQTT__PORT", "1885")
    assert load_settings(path).mqtt.port == 1885
    monkeypatch.delenv("VOXD_MQTT__PORT")
    assert 'mqtt.port: "1884" is not allowed: must be an integer' in problems_of(path)


def test_effective_config_round_trips_odd_strings(tmp_path: Path) -> None:
    path = write(tmp_path, '[audio]\ndevice = "USB \\u007f \\u0001 \\"mic\\""\n')
    settings = load_settings(path)
    text = effective_config_toml(settings)
    reloaded = load_settings(write(tmp_path, text, name="effective.toml"))
    assert reloaded.model_dump() == settings.model_dump()


# --------------------------------------------------------------------------- preflight

PREFLIGHT_REFUSED = [
    pytest.param(
        "[audio]\nchannels = 2\nchannel = 2\n",
        ["audio.channel: 2 is not allowed: must be less than audio.channels (2)"],
        id="channel-beyond-channels",
    ),
    pytest.param(
        '[mqtt]\nusername = "u"\npassword_file = "{tmp}/missing"\n',
        ["mqtt.password_file: cannot read {tmp}/missing"],
        id="password-file-missing",
    ),
    pytest.param(
        '[mqtt.tls]\nenabled = true\nca_file = "{tmp}/no-ca.crt"\n',
        ["mqtt.tls: cannot load certificates"],
        id="tls-ca-missing",
    ),
    pytest.param(
        '[mqtt.tls]\nenabled = true\ncert_file = "{tmp}/c.crt"\nkey_file = "{tmp}/c.key"\n',
        ["mqtt.tls: cannot load certificates"],
        id="tls-cert-missing",
    ),
    pytest.param(
        '[vad]\nenabled = true\nmodel_path = "{tmp}/none.onnx"\n',
        ["vad.model_path: cannot read {tmp}/none.onnx"],
        id="vad-model-missing",
    ),
    pytest.param(
        f'[mqtt]\nbase_topic = "{"t" * 65530}"\n',
        ["mqtt.base_topic is too long: the topic ", "at most 65535 bytes"],
        id="topic-length",
    ),
    pytest.param(
        f'[mqtt]\nsite = "{"s" * 65530}"\n',
        ["mqtt.site is too long: the topic "],
        id="site-length",
    ),
    pytest.param(
        f'[mqtt.discovery]\nprefix = "{"p" * 65530}"\n',
        ["mqtt.discovery.prefix is too long: the topic "],
        id="discovery-prefix-length",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PREFLIGHT_REFUSED)
def test_preflight_refuses_what_run_cannot_start(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    settings = load_settings(write(tmp_path, text.replace("{tmp}", str(tmp_path))))
    with pytest.raises(ConfigError) as info:
        preflight(settings)
    for part in expected:
        assert part.replace("{tmp}", str(tmp_path)) in str(info.value)
    assert refusal(settings) == str(info.value)  # what `voxd run` exits with


def test_preflight_passes_the_shipped_config_and_reads_the_password(tmp_path: Path) -> None:
    assert preflight(load_settings(SHIPPED)) == []
    (tmp_path / "pw").write_text("secret\n")
    text = f'[mqtt]\nusername = "u"\npassword_file = "{tmp_path}/pw"\n'
    assert preflight(load_settings(write(tmp_path, text))) == []
    (tmp_path / "pw").write_text("x" * 70000)
    with pytest.raises(ConfigError, match="the password in .* at most 65535 bytes"):
        preflight(load_settings(write(tmp_path, text)))


def test_preflight_skips_mqtt_when_disabled(tmp_path: Path) -> None:
    text = f'[mqtt]\nenabled = false\nusername = "u"\npassword_file = "{tmp_path}/missing"\n'
    assert preflight(load_settings(write(tmp_path, text))) == []


def test_long_client_id_warns(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f'[mqtt]\nclient_id = "{"c" * 24}"\n'))
    assert preflight(settings) == [
        "mqtt.client_id: 24 bytes; MQTT 3.1.1 only guarantees 23, so some brokers may refuse it"
    ]
    assert preflight(load_settings(write(tmp_path, '[mqtt]\nclient_id = "short"\n'))) == []


def test_backend_of_another_cpu_is_refused(tmp_path: Path) -> None:
    other = "neon" if platform.machine().lower() in ("x86_64", "amd64") else "avx2"
    settings = load_settings(write(tmp_path, f'[engine]\nbackend = "{other}"\n'))
    with pytest.raises(ConfigError, match=f'engine.backend: "{other}" is not allowed'):
        preflight(settings)
    assert preflight(load_settings(write(tmp_path, '[engine]\nbackend = "portable"\n'))) == []


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 12345])
def test_resampler_taps_match_the_resampler(rate: int) -> None:
    """The sample_rate limit counts the taps the Resampler really designs."""
    assert config.resampler_taps(rate) == Resampler(rate, 16000).taps
