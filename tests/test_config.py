"""Configuration loading: TOML + environment, error messages, the shipped file."""

from __future__ import annotations

import os
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
