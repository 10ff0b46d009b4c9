"""The checks ``voxd run`` makes before it starts, shared with ``voxd config check``.

:mod:`voxd.config` validates each key on its own (types, ranges, formats).
What is left needs several keys at once or the machine the daemon runs on:
a channel that must exist among the configured channels, every MQTT topic
and the default client id within MQTT's 65535-byte strings, the password
file, the TLS files, the VAD model file, the engine backend on this CPU.

Both commands call :func:`preflight`, so a configuration ``voxd config
check`` accepts is one ``voxd run`` starts with, and a refused one gets the
same message from both (exit code 2). Loading the model itself is not a
configuration check: a missing ``engine.model_dir`` is reported by ``voxd
run`` (and noted by ``voxd config check``).
"""

from __future__ import annotations

import logging
import platform
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from voxd.config import (
    MQTT_PORTABLE_CLIENT_ID,
    ConfigError,
    MqttSettings,
    Settings,
    check_mqtt_string,
    show_value,
    utf8_size,
)
from voxd.sinks import hass
from voxd.sinks.mqtt_protocol import Topics, default_client_id, read_password

log = logging.getLogger(__name__)

# Which CPUs each engine backend needs (native/src/kernels.c vx_backend_select).
_BACKEND_MACHINES = {
    "avx2": frozenset({"x86_64", "amd64", "i386", "i686"}),
    "neon": frozenset({"aarch64", "arm64", "armv7l", "armv8l"}),
}

Check = Callable[[Settings], Iterable[str]]


def preflight(settings: Settings) -> list[str]:
    """Warnings (may be ignored); raises :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    for check in _CHECKS:
        problems.extend(check(settings))
    if problems:
        raise ConfigError(problems)
    return warnings(settings)


def refusal(settings: Settings) -> str | None:
    """For ``voxd run``: why it must not start (the ConfigError text), or None.

    Warnings are logged.
    """
    try:
        found = preflight(settings)
    except ConfigError as err:
        return str(err)
    for warning in found:
        log.warning("%s", warning)
    return None


def warnings(settings: Settings) -> list[str]:
    found: list[str] = []
    client_id = settings.mqtt.client_id
    if settings.mqtt.enabled and client_id is not None:
        size = utf8_size(client_id)
        if size > MQTT_PORTABLE_CLIENT_ID:
            found.append(
                f"mqtt.client_id: {size} bytes; MQTT 3.1.1 only guarantees "
                f"{MQTT_PORTABLE_CLIENT_ID}, so some brokers may refuse it"
            )
    return found


# --------------------------------------------------------------------------- audio


def _audio_channel(settings: Settings) -> Iterable[str]:
    audio = settings.audio
    channel, channels = audio.channel, audio.channels
    if isinstance(channel, int) and channels is not None and channel >= channels:
        yield (
            f"audio.channel: {channel} is not allowed: must be less than "
            f"audio.channels ({channels}); channels are numbered from 0"
        )


# --------------------------------------------------------------------------- engine


def _engine_backend(settings: Settings) -> Iterable[str]:
    backend = settings.engine.backend
    machines = _BACKEND_MACHINES.get(backend or "")
    machine = platform.machine().lower()
    if machines is not None and machine not in machines:
        yield (
            f"engine.backend: {show_value(backend)} is not allowed: this machine is "
            f'{machine}; leave backend out for the best one, or use "portable"'
        )


# --------------------------------------------------------------------------- vad


def _vad_model(settings: Settings) -> Iterable[str]:
    vad = settings.vad
    if vad.enabled and vad.model_path is not None:
        yield from _readable_file("vad.model_path", vad.model_path)


def _readable_file(key: str, path: Path) -> Iterable[str]:
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        yield f"{key}: cannot read {path}: {err.strerror or err}"


# --------------------------------------------------------------------------- mqtt


def _mqtt(settings: Settings) -> Iterable[str]:
    s = settings.mqtt
    if not s.enabled:
        return  # voxd run builds no MQTT client: nothing of it can fail
    yield from _client_id(s)
    yield from _topics(s)
    yield from _password(s)
    if s.tls.enabled:
        yield from _tls(s)


def _client_id(s: MqttSettings) -> Iterable[str]:
    if s.client_id is not None:
        return  # checked as a key
    default = default_client_id(s.site)
    try:
        check_mqtt_string(default)
    except ValueError as err:
        yield (
            f"mqtt.site is too long: the default client id voxd-<site>-<hostname> {err}; "
            "set mqtt.client_id"
        )


def topics_of(s: MqttSettings) -> list[tuple[str, str]]:
    """Every topic voxd publishes or subscribes to, with the key that shapes it."""
    root_key = "mqtt.base_topic" if s.base_topic is not None else "mqtt.site"
    t = Topics.from_settings(s)
    found = [
        (root_key, topic)
        for topic in (t.availability, t.delta, t.final, t.state, t.stats, t.commands)
    ]
    found.append((root_key, t.mute_switch))
    if s.discovery.enabled:
        prefix = s.discovery.prefix
        found.append(("mqtt.discovery.prefix", hass.discovery_topic(prefix, s.site)))
        found.append(("mqtt.discovery.prefix", hass.status_topic(prefix)))
    return found


def _topics(s: MqttSettings) -> Iterable[str]:
    reported: set[str] = set()
    for key, topic in topics_of(s):
        if key in reported:
            continue
        try:
            check_mqtt_string(topic)
        except ValueError as err:
            reported.add(key)
            yield f"{key} is too long: the topic {show_value(topic)} {err}"


def _password(s: MqttSettings) -> Iterable[str]:
    if s.password_file is None:
        return
    try:
        password = read_password(s)
    except ConfigError as err:
        yield from err.problems
        return
    try:
        check_mqtt_string(password or "")
    except ValueError as err:
        yield f"mqtt.password_file: the password in {s.password_file} {err}"


def _refuse_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal (and fail
    # under systemd): voxd has no key password setting.
    raise ValueError("the key file is encrypted; voxd needs an unencrypted key")


def _tls(s: MqttSettings) -> Iterable[str]:
    """Load the files the way paho's tls_set does, without a terminal prompt."""
    tls = s.tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_password)
        if tls.ca_file is not None:
            context.load_verify_locations(tls.ca_file)
        else:
            context.load_default_certs()
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        yield f"mqtt.tls: cannot load certificates: {err}"


def _wake_model(settings: Settings) -> Iterable[str]:
    """The wake-word model loads (it is small: tens of kB) as the pipeline will load it."""
    if not settings.wakeword.enabled:
        return
    from voxd.wakeword import load_model  # imports the TFLite runtime only when enabled

    try:
        load_model(settings.wakeword.model)
    except ConfigError as err:
        yield from err.problems


_CHECKS: tuple[Check, ...] = (_audio_channel, _engine_backend, _vad_model, _wake_model, _mqtt)
