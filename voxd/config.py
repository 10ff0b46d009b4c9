"""voxd configuration: one TOML file, environment overrides, clear errors.

The section models below are the contract between modules: audio capture,
endpointing, VAD, engine, MQTT and the service each read their own section.
Loading (TOML + VOXD_* environment, error messages naming the key and the
fix) lives further down in this module.

Sources, highest priority first:

1. keyword arguments given to ``Settings(...)``;
2. environment variables ``VOXD_<SECTION>__<KEY>`` (``VOXD_MQTT__HOST``,
   ``VOXD_MQTT__TLS__ENABLED``);
3. the TOML file: the ``path`` given to :func:`load_settings`, else
   ``$VOXD_CONFIG``, else ``/etc/voxd/voxd.toml`` (a missing default file
   means "all defaults"; a missing file that was asked for is an error).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Jetson, Ubuntu 22.04): the same parser, as a package
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/voxd/voxd.toml")
CONFIG_ENV_VAR = "VOXD_CONFIG"
ENV_PREFIX = "VOXD_"
ENV_NESTED_DELIMITER = "__"
MASK = "********"
_SECRET_KEYS = frozenset({"password"})
_TOPIC_FORBIDDEN = ("+", "#")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_order(low: float, high: float, low_name: str, high_name: str) -> None:
    if low > high:
        raise ValueError(f"{low_name} ({low:g}) must not be greater than {high_name} ({high:g})")


def _check_topic_level(value: str) -> str:
    """A string used as one MQTT topic level (site) or an id."""
    if not value:
        raise ValueError("must not be empty")
    if any(c in value for c in ("/", *_TOPIC_FORBIDDEN)) or any(c.isspace() for c in value):
        raise ValueError("must not contain '/', '+', '#' or spaces")
    return value


def _check_topic_prefix(value: str) -> str:
    """A string used as the start of MQTT topics (may contain '/')."""
    if not value:
        raise ValueError("must not be empty")
    if any(c in value for c in _TOPIC_FORBIDDEN):
        raise ValueError("must not contain the MQTT wildcards '+' or '#'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("must not start or end with '/' or contain '//'")
    return value


class AudioSettings(_Section):
    device: str | int | None = None  # name substring, index, or None = default input
    sample_rate: int | None = None  # None = the device's default rate
    channels: int | None = None  # None = the device's channel count (capped at 2)
    channel: int | Literal["mix"] = "mix"  # which channel to keep, or mix them
    gain_db: float = 0.0
    block_ms: int = Field(default=20, ge=5, le=200)
    queue_seconds: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _reconnect_order(self) -> AudioSettings:
        _check_order(
            self.reconnect_min_s, self.reconnect_max_s, "reconnect_min_s", "reconnect_max_s"
        )
        return self


class EndpointSettings(_Section):
    frame_ms: int = Field(default=20, ge=10, le=100)
    start_db: float = 12.0  # speech starts this far above the noise floor
    stop_db: float = 6.0  # and continues while above floor + stop_db
    min_floor_dbfs: float = -70.0
    start_frames: int = Field(default=3, ge=1)  # consecutive loud frames to start
    min_speech_ms: int = Field(default=250, ge=0)
    hangover_ms: int = Field(default=700, ge=0)  # trailing silence before the end
    preroll_ms: int = Field(default=300, ge=0)
    max_utterance_s: float = Field(default=30.0, gt=0)
    floor_adapt_s: float = Field(default=2.0, gt=0)  # noise floor time constant

    @model_validator(mode="after")
    def _thresholds(self) -> EndpointSettings:
        _check_order(self.stop_db, self.start_db, "stop_db", "start_db")
        return self


class VadSettings(_Section):
    enabled: bool = False
    model_path: Path | None = None  # Silero VAD .onnx
    threshold: float = Field(default=0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _model_needed(self) -> VadSettings:
        if self.enabled and self.model_path is None:
            raise ValueError("enabled = true needs model_path (the Silero VAD .onnx file)")
        return self


class EngineSettings(_Section):
    model_dir: Path = Path("/var/lib/voxd/model")
    # Voxtral Realtime works in 80 ms audio frames: the delay is a whole number of them.
    delay_ms: int = Field(default=480, ge=80, le=2400, multiple_of=80)
    interval_ms: int = Field(default=480, gt=0)
    threads: int = Field(default=0, ge=0)
    backend: str | None = None
    # Weight format `voxd model download` installs: "auto" picks q8 or q4 from
    # the machine's memory (voxd.modelsize.choose_format).
    format: Literal["auto", "bf16", "q8", "q4"] = "auto"

    @field_validator("format", mode="before")
    @classmethod
    def _format_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class TlsSettings(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class DiscoverySettings(_Section):
    enabled: bool = True
    prefix: str = "homeassistant"

    _prefix = field_validator("prefix")(_check_topic_prefix)


class HermesSettings(_Section):
    enabled: bool = False
    site_id: str = "default"

    _site_id = field_validator("site_id")(_check_topic_level)


class MqttSettings(_Section):
    enabled: bool = True
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    site: str = "default"
    base_topic: str | None = None  # None = "voxd/<site>"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    stats_interval_s: float = Field(default=60.0, gt=0)
    outbox_max: int = Field(default=1000, ge=1)
    tls: TlsSettings = TlsSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    hermes: HermesSettings = HermesSettings()

    _site = field_validator("site")(_check_topic_level)

    @field_validator("base_topic")
    @classmethod
    def _base_topic(cls, value: str | None) -> str | None:
        return None if value is None else _check_topic_prefix(value)

    @model_validator(mode="after")
    def _credentials(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file are both set: keep only one")
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None:
            raise ValueError("a password (or password_file) needs a username")
        _check_order(
            self.reconnect_min_s, self.reconnect_max_s, "reconnect_min_s", "reconnect_max_s"
        )
        return self

    @property
    def topic_root(self) -> str:
        """The base of every voxd topic: base_topic, or ``voxd/<site>``."""
        return self.base_topic if self.base_topic is not None else f"voxd/{self.site}"


class ServiceSettings(_Section):
    state_dir: Path = Path("/var/lib/voxd")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stdout_sink: bool = False  # JSON lines on stdout (foreground use)


class WyomingSettings(_Section):
    """The Wyoming speech-to-text server for Home Assistant Assist (voxd/wyoming_server.py)."""

    enabled: bool = False
    host: str = "0.0.0.0"  # all interfaces: Home Assistant usually runs on another machine
    port: int = Field(default=10300, ge=1, le=65535)
    zeroconf: bool = True  # advertise _wyoming._tcp so Home Assistant discovers voxd
    zeroconf_name: str | None = None  # None = "voxd-<hostname>"
    max_clients: int = Field(default=4, ge=1, le=64)
    max_audio_s: float = Field(default=30.0, gt=0, le=3600)  # per request
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("zeroconf_name")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None and not (0 < len(value.encode()) <= 63 and "." not in value):
            raise ValueError("must be 1 to 63 bytes long and contain no '.'")
        return value


# --------------------------------------------------------------------------- loading

# The TOML file read by Settings(). A context variable rather than a class
# attribute so that concurrent load_settings() calls (tests) do not interfere.
_toml_path: ContextVar[Path | None] = ContextVar("voxd_toml_path", default=None)


def default_config_path() -> Path:
    """The file read when no path is given: $VOXD_CONFIG, else /etc/voxd/voxd.toml."""
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


class Settings(BaseSettings):
    """The whole configuration. Prefer :func:`load_settings` for error messages."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    audio: AudioSettings = AudioSettings()
    endpoint: EndpointSettings = EndpointSettings()
    vad: VadSettings = VadSettings()
    engine: EngineSettings = EngineSettings()
    mqtt: MqttSettings = MqttSettings()
    service: ServiceSettings = ServiceSettings()
    wyoming: WyomingSettings = WyomingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _toml_path.get() or default_config_path()
        toml_settings = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
        return init_settings, env_settings, toml_settings


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` has one line per problem."""

    def __init__(self, problems: Sequence[str], path: Path | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        where = f" ({path})" if path is not None else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    token = _toml_path.set(path)
    try:
        yield
    finally:
        _toml_path.reset(token)


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file (see module doc) with environment overrides.

    Raises :class:`ConfigError` listing every problem: the dotted key, the bad
    value, what is allowed, and where the value came from.
    """
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV_VAR))
    toml_path = path if path is not None else default_config_path()
    toml_data = _read_toml(toml_path, required=explicit)
    try:
        with _reading(toml_path):
            return Settings()
    except ValidationError as err:
        problems = describe_errors(err.errors(), toml_data, toml_path, os.environ)
        raise ConfigError(problems, toml_path) from None


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """Parse the file only to report syntax errors well and to know what it sets."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError([f"config file not found: {path}"], path) from None
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"cannot read config file {path}: {err}"], path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([_syntax_problem(err, text, path)], path) from None


def _syntax_problem(err: tomllib.TOMLDecodeError, text: str, path: Path) -> str:
    match = re.search(r"line (\d+)", str(err))
    if match is None:
        return f"TOML syntax error in {path}: {err}"
    line_no = int(match.group(1))
    lines = text.splitlines()
    line = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else ""
    return f"TOML syntax error in {path} line {line_no}: {err} -> {line!r}"


# --------------------------------------------------------------------------- error messages


def describe_errors(
    errors: Sequence[ErrorDetails],
    toml_data: Mapping[str, Any],
    toml_path: Path,
    environ: Mapping[str, str],
) -> list[str]:
    """One readable line per bad key, from pydantic's error list."""
    grouped: dict[tuple[str, ...], list[ErrorDetails]] = {}
    for error in errors:
        grouped.setdefault(_key_path(error), []).append(error)
    sources = _Sources(toml_data, toml_path, environ)
    return [_describe_key(key, errs, sources) for key, errs in grouped.items()]


def _key_path(error: ErrorDetails) -> tuple[str, ...]:
    """The configuration key of an error: its loc without union branch tags."""
    model: type[BaseModel] | None = Settings
    path: list[str] = []
    for part in error["loc"]:
        if model is None or not isinstance(part, str):
            break
        if part not in model.model_fields:
            if error["type"] == "extra_forbidden":
                path.append(part)
            break
        path.append(part)
        model = _model_of(model.model_fields[part])
    return tuple(path)


def _model_of(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _field_at(key: tuple[str, ...]) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model holding the last part of ``key``, and that field if it exists."""
    model: type[BaseModel] = Settings
    for part in key[:-1]:
        inner = _model_of(model.model_fields[part])
        if inner is None:
            break
        model = inner
    return model, model.model_fields.get(key[-1]) if key else None


_CONSTRAINT_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
)


def _describe_key(key: tuple[str, ...], errors: list[ErrorDetails], sources: _Sources) -> str:
    dotted = ".".join(key) if key else "(top level)"
    where = sources.where(key)
    first = errors[0]
    model, field = _field_at(key)
    if first["type"] == "extra_forbidden":
        return f"{dotted}: unknown key{_suggestion(key[-1], model)}{where}"
    if field is None:
        return f"{dotted}: {first['msg']}{where}"
    section = _model_of(field)
    if section is not None and first["type"] == "value_error":
        return f"{dotted}: {_clean_msg(first)}{where}"
    shown = _show(first.get("input"))
    if first["type"] == "value_error":
        return f"{dotted}: {shown} is not allowed: {_clean_msg(first)}{where}"
    constraint = _describe_constraints(field)
    if any(e["type"] in _CONSTRAINT_ERRORS for e in errors):
        return f"{dotted}: {shown} is not allowed: must be {constraint}{where}"
    allowed = f"must be {_describe_type(field.annotation)}"
    if constraint:
        allowed += f", {constraint}"
    return f"{dotted}: {shown} is not allowed: {allowed}{where}"


def _clean_msg(error: ErrorDetails) -> str:
    return error["msg"].removeprefix("Value error, ")


def _suggestion(unknown: str, model: type[BaseModel]) -> str:
    valid = list(model.model_fields)
    close = difflib.get_close_matches(unknown, valid, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(unknown.lower(), valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys here: {', '.join(valid)}"


def _show(value: Any) -> str:
    """A value the way it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _describe_constraints(field: FieldInfo) -> str:
    bounds: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "multiple_of"):
            value = getattr(item, name, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                bounds[name] = value
    parts: list[str] = []
    if "ge" in bounds and "le" in bounds:
        parts.append(f"between {bounds['ge']} and {bounds['le']}")
    else:
        parts.extend(_one_sided(bounds))
    if "multiple_of" in bounds:
        parts.append(f"a multiple of {bounds['multiple_of']}")
    return " and ".join(parts)


def _one_sided(bounds: Mapping[str, Any]) -> list[str]:
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    return [f"{words[name]} {bounds[name]}" for name in ("ge", "gt", "le", "lt") if name in bounds]


def _describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_describe_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(options)
    if origin is Literal:
        choices = [_show(a) for a in typing.get_args(annotation)]
        return choices[0] if len(choices) == 1 else f"one of {', '.join(choices)}"
    names: dict[Any, str] = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path (string)",
    }
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a table"
    return str(annotation)


class _Sources:
    """Says where a key's value came from, for error messages."""

    def __init__(self, toml_data: Mapping[str, Any], toml_path: Path, environ: Mapping[str, str]):
        self._toml = toml_data
        self._path = toml_path
        self._env = {name.upper(): name for name in environ if name.upper().startswith(ENV_PREFIX)}

    def where(self, key: tuple[str, ...]) -> str:
        found = self._env_names(key)
        if self._in_toml(key):
            found.insert(0, f"in {self._path}")
        if not found:
            return ""
        return f" ({'; '.join(found)})"

    def _env_names(self, key: tuple[str, ...]) -> list[str]:
        names: list[str] = []
        for depth in range(1, len(key) + 1):
            name = env_var_name(key[:depth])
            if name in self._env:
                names.append(f"from environment {self._env[name]}")
        nested = env_var_name(key) + ENV_NESTED_DELIMITER
        names.extend(
            f"from environment {original}"
            for upper, original in sorted(self._env.items())
            if upper.startswith(nested)
        )
        return names

    def _in_toml(self, key: tuple[str, ...]) -> bool:
        node: Any = self._toml
        for part in key:
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True


def env_var_name(key: Sequence[str]) -> str:
    """``("mqtt", "host")`` -> ``VOXD_MQTT__HOST``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in key)


# --------------------------------------------------------------------------- effective config


def effective_config_toml(settings: Settings) -> str:
    """The configuration in use, as TOML (``voxd config check``); secrets masked."""
    lines: list[str] = ["# voxd effective configuration (secrets masked)"]
    for name in Settings.model_fields:
        _emit_table(lines, (name,), getattr(settings, name))
    return "\n".join(lines) + "\n"


def _emit_table(lines: list[str], key: tuple[str, ...], section: BaseModel) -> None:
    lines.append("")
    lines.append(f"[{'.'.join(key)}]")
    nested: list[tuple[str, BaseModel]] = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            nested.append((name, value))
        elif value is None:
            lines.append(f"# {name} = (not set)")
        elif name in _SECRET_KEYS:
            lines.append(f"{name} = {_toml_value(MASK)}")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    for name, value in nested:
        _emit_table(lines, (*key, name), value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _non_finite(value)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"
