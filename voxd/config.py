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
import ipaddress
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
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from voxd.events import (
    DELAY_MS_DEFAULT,
    DELAY_MS_MAX,
    DELAY_MS_MIN,
    DELAY_MS_STEP,
    SAMPLE_RATE,
)
from voxd.resample import CUTOFF_FRACTION, STOPBAND_DB

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

# MQTT strings (client id, user name, password, topics) carry a 16-bit length.
MQTT_STRING_MAX = 65535
# MQTT 3.1.1 (3.1.3.1) only promises client ids of up to 23 bytes; most brokers take more.
MQTT_PORTABLE_CLIENT_ID = 23
HOST_NAME_MAX = 253  # RFC 1035, without the trailing dot
_HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
MAX_DEVICE_INDEX = 999  # PortAudio numbers devices from 0; real systems have dozens
MAX_CHANNELS = 32
# Every common rate from 8 to 192 kHz needs at most 32119 taps (11025 Hz); a rate
# like 44101 Hz would need 2.2 million, hundreds of MB while the filter is designed.
MAX_RESAMPLER_TAPS = 100_000
# voxd's keys are at most three tables deep; anything far deeper is a broken file
# (and deep enough nesting exhausts Python's recursion limit while reading it).
MAX_TOML_DEPTH = 32


class _Section(BaseModel):
    # strict: a TOML file has real types, so "20" is not an integer and 1 is not
    # true (environment variables, always strings, are converted before this:
    # see _LaxEnvSource). allow_inf_nan: no key means anything at nan or inf.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _check_order(low: float, high: float, low_name: str, high_name: str) -> None:
    if low > high:
        raise ValueError(f"{low_name} ({low:g}) must not be greater than {high_name} ({high:g})")


def utf8_size(value: str) -> int:
    """Bytes of ``value`` on the wire (MQTT strings are UTF-8)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None


def check_mqtt_string(value: str) -> str:
    """A string MQTT sends as a length-prefixed UTF-8 string (MQTT 3.1.1, 1.5.3)."""
    if "\x00" in value:
        raise ValueError("must not contain the character U+0000 (MQTT forbids it)")
    size = utf8_size(value)
    if size > MQTT_STRING_MAX:
        raise ValueError(
            f"must be at most {MQTT_STRING_MAX} bytes in UTF-8 (MQTT's limit), not {size}"
        )
    return value


def _check_topic_level(value: str) -> str:
    """A string used as one MQTT topic level (site) or an id."""
    if not value:
        raise ValueError("must not be empty")
    if any(c in value for c in ("/", *_TOPIC_FORBIDDEN)) or any(c.isspace() for c in value):
        raise ValueError("must not contain '/', '+', '#' or spaces")
    return check_mqtt_string(value)


def _check_topic_prefix(value: str) -> str:
    """A string used as the start of MQTT topics (may contain '/')."""
    if not value:
        raise ValueError("must not be empty")
    if any(c in value for c in _TOPIC_FORBIDDEN):
        raise ValueError("must not contain the MQTT wildcards '+' or '#'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("must not start or end with '/' or contain '//'")
    return check_mqtt_string(value)


def _check_host(value: str) -> str:
    """An IP address, or a host name the resolver accepts as paho passes it.

    socket.getaddrinfo (called in paho's network thread) encodes the name with
    the ``idna`` codec: an empty or over-long label raises UnicodeError there,
    far from the configuration. The same codec is used here.
    """
    if not value:
        raise ValueError("must not be empty: a host name or an IP address")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value.removesuffix(".")  # "broker.lan." is a fully qualified name
    try:
        encoded = name.encode("idna")
    except UnicodeError:
        raise ValueError(
            "must be a host name whose dot-separated labels have 1 to 63 characters, "
            "or an IP address"
        ) from None
    if len(encoded) > HOST_NAME_MAX:
        raise ValueError(f"must be at most {HOST_NAME_MAX} characters as a host name")
    for label in encoded.split(b"."):
        if not label or not _HOST_LABEL.fullmatch(label.decode("ascii")):
            raise ValueError(
                "must be a host name (labels of letters, digits, '-' or '_', separated "
                "by single dots) or an IP address"
            )
    return value


def _check_path(value: Any) -> Any:
    """Before Path conversion: Path("") would silently mean the current directory."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be empty")
        if "\x00" in value:
            raise ValueError("must not contain the character U+0000")
    return value


def resampler_taps(rate: int, out_rate: int = SAMPLE_RATE) -> int:
    """Taps of the filter voxd.resample.Resampler designs for ``rate`` -> ``out_rate``.

    The same formula as resample.design_lowpass, without building the filter:
    rates with a small common divisor with 16 kHz need millions of taps.
    """
    up = out_rate // math.gcd(rate, out_rate)
    nyquist = min(rate, out_rate) / 2.0
    transition = 2.0 * (1.0 - CUTOFF_FRACTION) * nyquist
    fs = rate * up
    n = math.ceil((STOPBAND_DB - 7.95) / (2.285 * 2.0 * math.pi * transition / fs)) + 1
    return n + 1 - n % 2  # odd, as design_lowpass makes it


# Paths come as TOML strings: Path conversion stays lax; no empty or NUL-containing path.
ConfigPath = Annotated[Path, Strict(False), BeforeValidator(_check_path)]
OptionalPath = Annotated[Path | None, Strict(False), BeforeValidator(_check_path)]
MqttString = Annotated[str, AfterValidator(check_mqtt_string)]


class AudioSettings(_Section):
    device: str | int | None = None  # name substring, index, or None = default input
    # None = the device's default rate. 8 kHz (telephone) to 192 kHz (studio).
    sample_rate: int | None = Field(default=None, ge=8000, le=192000)
    # None = the device's channel count (capped at 2); 32 covers mic arrays.
    channels: int | None = Field(default=None, ge=1, le=32)
    channel: int | Literal["mix"] = "mix"  # which channel to keep, or mix them
    # Beyond +-60 dB the signal is all clipping or all silence.
    gain_db: float = Field(default=0.0, ge=-60.0, le=60.0)
    block_ms: int = Field(default=20, ge=5, le=200)
    # 10 minutes of 16-bit audio at 192 kHz x 32 channels is already 7 GB.
    queue_seconds: float = Field(default=10.0, gt=0, le=600)
    # Retry delays: 10 ms keeps a loop from spinning, an hour is the longest useful wait.
    reconnect_min_s: float = Field(default=0.5, ge=0.01, le=3600)
    reconnect_max_s: float = Field(default=30.0, ge=0.01, le=3600)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and not 0 <= value <= MAX_DEVICE_INDEX:
            raise ValueError(
                f"must be a device name, or a device index from 0 to {MAX_DEVICE_INDEX} "
                "(`voxd devices` lists them)"
            )
        return value

    @field_validator("sample_rate")
    @classmethod
    def _sample_rate(cls, value: int | None) -> int | None:
        if value is not None and resampler_taps(value) > MAX_RESAMPLER_TAPS:
            raise ValueError(
                f"must be a rate voxd can convert to {SAMPLE_RATE} Hz with a filter of at most "
                f"{MAX_RESAMPLER_TAPS} taps (it would need {resampler_taps(value)}); "
                "8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000 are fine"
            )
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value < MAX_CHANNELS:
            raise ValueError(f'must be "mix" or a channel number from 0 to {MAX_CHANNELS - 1}')
        return value

    @model_validator(mode="after")
    def _reconnect_order(self) -> AudioSettings:
        _check_order(
            self.reconnect_min_s, self.reconnect_max_s, "reconnect_min_s", "reconnect_max_s"
        )
        return self


class EndpointSettings(_Section):
    frame_ms: int = Field(default=20, ge=10, le=100)
    # Levels relative to the noise floor: more than 60 dB above it is never reached.
    start_db: float = Field(default=12.0, ge=0, le=60)  # speech starts this far above the floor
    stop_db: float = Field(default=6.0, ge=0, le=60)  # and continues while above floor + stop_db
    # 16-bit audio has a floor near -96 dBFS; a level is never above 0 dBFS.
    min_floor_dbfs: float = Field(default=-70.0, ge=-120, le=0)
    start_frames: int = Field(default=3, ge=1, le=100)  # consecutive loud frames to start
    min_speech_ms: int = Field(default=250, ge=0, le=10000)
    hangover_ms: int = Field(default=700, ge=0, le=10000)  # trailing silence before the end
    preroll_ms: int = Field(default=300, ge=0, le=5000)
    max_utterance_s: float = Field(default=30.0, gt=0, le=600)
    floor_adapt_s: float = Field(default=2.0, gt=0, le=600)  # noise floor time constant

    @model_validator(mode="after")
    def _thresholds(self) -> EndpointSettings:
        _check_order(self.stop_db, self.start_db, "stop_db", "start_db")
        return self


class VadSettings(_Section):
    enabled: bool = False
    model_path: OptionalPath = None  # Silero VAD .onnx
    threshold: float = Field(default=0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _model_needed(self) -> VadSettings:
        if self.enabled and self.model_path is None:
            raise ValueError("enabled = true needs model_path (the Silero VAD .onnx file)")
        return self


# The microWakeWord models pymicro-wakeword ships (voxd.wakeword loads them).
BUILTIN_WAKE_WORDS = ("alexa", "hey_jarvis", "hey_mycroft", "okay_nabu")


def _check_wake_model(value: str) -> str:
    """A shipped model's name, or the path of a microWakeWord .json (it names its .tflite)."""
    if value in BUILTIN_WAKE_WORDS:
        return value
    _check_path(value)
    if not value.endswith(".json"):
        raise ValueError(
            f"must be one of {', '.join(BUILTIN_WAKE_WORDS)} or the path of a microWakeWord "
            ".json file (next to its .tflite)"
        )
    return value


class WakewordSettings(_Section):
    """The wake-word gate: only speech that follows the wake word is transcribed."""

    enabled: bool = False
    model: str = "okay_nabu"
    # The probability cutoff (0..1); not set = the model's own (its .json, 0.85 for okay_nabu).
    threshold: float | None = Field(default=None, gt=0, lt=1)
    # After a detection, speech must start within this time to be transcribed.
    open_s: float = Field(default=5.0, gt=0, le=60)
    # Detections this soon after the last one are ignored (one phrase, one detection).
    refractory_s: float = Field(default=2.0, ge=0, le=60)

    _model = field_validator("model")(_check_wake_model)


class EngineSettings(_Section):
    model_dir: ConfigPath = Path("/var/lib/voxd/model")
    # Voxtral Realtime works in 80 ms audio frames: the delay is a whole number of them.
    delay_ms: int = Field(
        default=DELAY_MS_DEFAULT, ge=DELAY_MS_MIN, le=DELAY_MS_MAX, multiple_of=DELAY_MS_STEP
    )
    # The engine (native/src/stream.c vx_stream_new) accepts up to 60 s.
    interval_ms: int = Field(default=480, gt=0, le=60000)
    # The engine's thread pool never uses more than 256 threads.
    threads: int = Field(default=0, ge=0, le=256)
    # None (not set) = "auto": the CUDA device when one is usable and the model fits
    # its free memory, else the best CPU backend. "cuda" is a request: the model
    # load fails, naming the cause, when there is no usable device.
    backend: Literal["auto", "cuda", "portable", "avx2", "neon"] | None = None
    # Weight format `voxd model download` installs: "auto" picks q8 or q4 from
    # the machine's memory (voxd.modelsize.choose_format).
    format: Literal["auto", "bf16", "q8", "q4"] = "auto"

    @field_validator("format", mode="before")
    @classmethod
    def _format_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class TlsSettings(_Section):
    enabled: bool = False
    ca_file: OptionalPath = None
    cert_file: OptionalPath = None
    key_file: OptionalPath = None
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
    client_id: MqttString | None = None
    username: MqttString | None = None
    password: MqttString | None = None
    password_file: OptionalPath = None
    # MQTT sends the keepalive as a 16-bit number of seconds.
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    # paho waits whole seconds between reconnects; an hour is the longest useful wait.
    reconnect_min_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    # More often than twice a second floods the broker; a day is the longest useful period.
    stats_interval_s: float = Field(default=60.0, ge=0.5, le=86400)
    # One file per final in the outbox directory, all read at start.
    outbox_max: int = Field(default=1000, ge=1, le=100000)
    tls: TlsSettings = TlsSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    hermes: HermesSettings = HermesSettings()

    _site = field_validator("site")(_check_topic_level)
    _host = field_validator("host")(_check_host)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("must not be empty: leave client_id out for voxd-<site>-<hostname>")
        return value

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
    state_dir: ConfigPath = Path("/var/lib/voxd")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stdout_sink: bool = False  # JSON lines on stdout (foreground use)


class WyomingSettings(_Section):
    """The Wyoming speech-to-text server for Home Assistant Assist (voxd/wyoming/server.py)."""

    enabled: bool = False
    host: str = "0.0.0.0"  # all interfaces: Home Assistant usually runs on another machine
    port: int = Field(default=10300, ge=1, le=65535)
    zeroconf: bool = True  # advertise _wyoming._tcp so Home Assistant discovers voxd
    zeroconf_name: str | None = None  # None = "voxd-<hostname>"
    max_clients: int = Field(default=4, ge=1, le=64)
    max_audio_s: float = Field(default=30.0, gt=0, le=3600)  # per request
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    _host = field_validator("host")(_check_host)

    @field_validator("zeroconf_name")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None and not (0 < len(value.encode()) <= 63 and "." not in value):
            raise ValueError("must be 1 to 63 bytes long and contain no '.'")
        return value


# --------------------------------------------------------------------------- loading

# The TOML file read by Settings(), and its contents once load_settings() has
# parsed it. Context variables rather than class attributes so that
# concurrent load_settings() calls (tests) do not interfere.
_toml_path: ContextVar[Path | None] = ContextVar("voxd_toml_path", default=None)
_toml_data: ContextVar[dict[str, Any] | None] = ContextVar("voxd_toml_data", default=None)


def default_config_path() -> Path:
    """The file read when no path is given: $VOXD_CONFIG, else /etc/voxd/voxd.toml."""
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file's tables, exactly as the file types them (validated strictly).

    Uses what load_settings() already parsed (one parse, one set of error
    messages); a bare ``Settings()`` reads the file itself, the same way.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        parsed = _toml_data.get()
        if parsed is not None:
            return parsed
        return _read_toml(_toml_path.get() or default_config_path(), required=False)


class _LaxEnvSource(PydanticBaseSettingsSource):
    """VOXD_* variables, converted from text to each key's type before validation.

    Environment values are always strings, so ``VOXD_MQTT__PORT=1884`` and
    ``VOXD_MQTT__ENABLED=false`` are converted here, leniently (pydantic's lax
    mode). Whatever does not convert is left as text and then fails the strict
    validation with the usual message naming the variable.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        return _from_text(self.settings_cls, self._env())


def _from_text(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        section = _model_of(field) if field is not None else None
        if section is not None and isinstance(value, dict):
            converted[name] = _from_text(section, value)
        elif field is not None and isinstance(value, str):
            converted[name] = _text_to_type(field, value)
        else:
            converted[name] = value
    return converted


def _text_to_type(field: FieldInfo | None, text: str) -> Any:
    if field is None or field.annotation is None:
        return text
    try:
        value = TypeAdapter(field.annotation).validate_python(text, strict=False)
    except ValidationError:
        return text  # reported by the strict validation, naming the variable
    # Text stays text: a Path is made (and checked) by the model itself.
    return text if isinstance(value, (str, Path)) else value


class Settings(BaseSettings):
    """The whole configuration. Prefer :func:`load_settings` for error messages."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        # Not strict here: the sections are. pydantic-settings converts environment
        # values itself for a strict settings class, but turns "" into Path(".");
        # _LaxEnvSource does the conversion instead.
    )

    audio: AudioSettings = AudioSettings()
    endpoint: EndpointSettings = EndpointSettings()
    vad: VadSettings = VadSettings()
    engine: EngineSettings = EngineSettings()
    mqtt: MqttSettings = MqttSettings()
    service: ServiceSettings = ServiceSettings()
    wyoming: WyomingSettings = WyomingSettings()
    wakeword: WakewordSettings = WakewordSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        return init_settings, _LaxEnvSource(settings_cls, env_settings), _TomlSource(settings_cls)


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` has one line per problem."""

    def __init__(self, problems: Sequence[str], path: Path | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        where = f" ({path})" if path is not None else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


@contextmanager
def _reading(path: Path, data: dict[str, Any]) -> Iterator[None]:
    path_token = _toml_path.set(path)
    data_token = _toml_data.set(data)
    try:
        yield
    finally:
        _toml_data.reset(data_token)
        _toml_path.reset(path_token)


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file (see module doc) with environment overrides.

    Raises :class:`ConfigError` listing every problem: the dotted key, the bad
    value, what is allowed, and where the value came from.
    """
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV_VAR))
    toml_path = path if path is not None else default_config_path()
    toml_data = _read_toml(toml_path, required=explicit)
    try:
        with _reading(toml_path, toml_data):
            return Settings()
    except ValidationError as err:
        problems = describe_errors(err.errors(), toml_data, toml_path, os.environ)
        raise ConfigError(problems, toml_path) from None


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """The file's contents; syntax errors and absurd nesting as a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError([f"config file not found: {path}"], path) from None
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"cannot read config file {path}: {err}"], path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([_syntax_problem(err, text, path)], path) from None
    except RecursionError:  # the parser recurses once per level of [[[...]]]
        raise ConfigError([_too_deep(path, None)], path) from None
    too_deep = _too_deep_key(data)
    if too_deep is not None:
        raise ConfigError([_too_deep(path, too_deep)], path)
    return data


def _too_deep_key(data: dict[str, Any]) -> str | None:
    """The dotted key under which ``data`` nests deeper than MAX_TOML_DEPTH, if any.

    Iterative: the point is to never recurse as deep as the file does.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, key, depth = stack.pop()
        if depth > MAX_TOML_DEPTH:
            return key
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for name, child in children:
            if isinstance(child, (dict, list)):
                where = f"{key}.{name}" if isinstance(name, str) else f"{key}[{name}]"
                stack.append((child, where.removeprefix("."), depth + 1))
    return None


def _too_deep(path: Path, key: str | None) -> str:
    where = f" under {_short_key(key)}" if key else ""
    return (
        f"TOML nesting too deep in {path}{where}: more than {MAX_TOML_DEPTH} levels of "
        "tables or arrays (voxd's keys are at most 3 tables deep); fix the file"
    )


def _short_key(key: str) -> str:
    """The first three parts of a dotted key: enough to find the spot in the file."""
    head = re.split(r"(?=[.\[])", key)
    return "".join(head[:3]) + ("..." if len(head) > 3 else "")


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
_SHOWN_CHARS = 60  # of a string value in a message
_LOWER_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal"})
# Strict type errors: the value has the wrong TOML type.
_TYPED_ERRORS = frozenset({"int_type", "float_type", "bool_type"})


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
    shown = show_value(first.get("input"))
    if first["type"] == "value_error":
        return f"{dotted}: {shown} is not allowed: {_clean_msg(first)}{where}"
    too_low = any(e["type"] in _LOWER_BOUND_ERRORS for e in errors)
    constraint = _describe_constraints(field, lower_first=too_low)
    if any(e["type"] in _CONSTRAINT_ERRORS for e in errors):
        return f"{dotted}: {shown} is not allowed: must be {constraint}{where}"
    if first["type"] == "finite_number":
        allowed = "must be a finite number (not nan or inf)"
    else:
        allowed = f"must be {_describe_type(field.annotation)}"
    if constraint:
        allowed += f", {constraint}"
    return f"{dotted}: {shown} is not allowed: {allowed}{_type_hint(first, field)}{where}"


def _type_hint(error: ErrorDetails, field: FieldInfo | None) -> str:
    """Why a value of the wrong TOML type is refused, and how to write it."""
    value = error.get("input")
    # Text that reads as the right type can only come from the file:
    # environment values have been converted already (_LaxEnvSource).
    typed = error["type"] in _TYPED_ERRORS and field is not None
    if typed and isinstance(value, str) and _text_to_type(field, value) is not value:
        return "; TOML values are typed: write numbers and true/false without quotes"
    if isinstance(value, (int, float)) and error["type"] == "bool_type":
        return "; TOML writes booleans as true and false"
    return ""


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


def show_value(value: Any) -> str:
    """A value the way it would be written in TOML (long strings shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > _SHOWN_CHARS:
            shown = json.dumps(value[:_SHOWN_CHARS], ensure_ascii=False)
            return f'{shown[:-1]}..." ({len(value)} characters)'
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and abs(value) >= 10**_SHOWN_CHARS:
        return f"an integer of {len(str(abs(value)))} digits"
    return str(value)


def _describe_constraints(field: FieldInfo, *, lower_first: bool = False) -> str:
    bounds: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "multiple_of"):
            value = getattr(item, name, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                bounds[name] = value
    parts: list[str] = []
    if "ge" in bounds and "le" in bounds and lower_first:  # the bound that was missed first
        parts.append(f"at least {bounds['ge']} and at most {bounds['le']}")
    elif "ge" in bounds and "le" in bounds:
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
    if origin is Annotated:  # a type with validators: describe the type
        return _describe_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [_describe_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(options)
    if origin is Literal:
        choices = [show_value(a) for a in typing.get_args(annotation)]
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
    if isinstance(value, (str, Path)):
        # JSON escapes the control characters TOML forbids, except DEL.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"
