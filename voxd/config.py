"""voxd configuration: one TOML file, environment overrides, clear errors.

The section models below are the contract between modules: audio capture,
endpointing, VAD, engine, MQTT and the service each read their own section.
Loading (TOML + VOXD_* environment, error messages naming the key and the
fix) lives further down in this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class VadSettings(_Section):
    enabled: bool = False
    model_path: Path | None = None  # Silero VAD .onnx
    threshold: float = Field(default=0.5, gt=0, lt=1)


class EngineSettings(_Section):
    model_dir: Path = Path("/var/lib/voxd/model")
    delay_ms: int = 480
    interval_ms: int = 80
    threads: int = Field(default=0, ge=0)
    backend: str | None = None


class TlsSettings(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class DiscoverySettings(_Section):
    enabled: bool = True
    prefix: str = "homeassistant"


class HermesSettings(_Section):
    enabled: bool = False
    site_id: str = "default"


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


class ServiceSettings(_Section):
    state_dir: Path = Path("/var/lib/voxd")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stdout_sink: bool = False  # JSON lines on stdout (foreground use)
