"""The voxd daemon: configuration in, a running pipeline out, until SIGTERM.

``run(settings)`` is what ``voxd run`` calls (and systemd runs that):

1. logging to stderr; under systemd (JOURNAL_STREAM set) without
   timestamps and with ``<N>`` priority prefixes, which journald turns into
   message priorities;
2. the engine is loaded while systemd is asked for more start-up time; a
   missing or unreadable model ends the daemon with exit code 2 and a
   message saying to run ``voxd model download`` or set engine.model_dir
   (also sent as the unit's STATUS);
3. sinks (MQTT, JSON lines on stdout), the optional Silero VAD, the
   microphone capture and the pipeline are built and started; READY=1;
   the watchdog is fed while the engine loop, the capture and (when
   enabled) the MQTT link are healthy; a failed MQTT link is named in STATUS;
4. SIGTERM/SIGINT: the utterance in progress is finished (its final has
   reason "shutdown"), MQTT gets a moment to deliver what is queued, then
   the daemon exits 0. SIGHUP only logs: the configuration is read at start.

Exit codes: 0 after a signal, 1 when the pipeline died of a bug, 2 for a
configuration or model problem (systemd's StartLimitBurst stops retrying).

``python -m voxd run`` is the same command before the ``voxd`` script is
installed (voxd/__main__.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from voxd import sdnotify
from voxd.audio import Capture
from voxd.config import ConfigError, Settings
from voxd.endpoint import SpeechJudge
from voxd.engine import Engine, EngineError
from voxd.modelsize import fit_warning
from voxd.pipeline import WATCHDOG_SOURCES, Pipeline
from voxd.preflight import refusal
from voxd.sdnotify import Notifier, Watchdog
from voxd.sinks.systemd import WATCHDOG_MQTT, MqttHealthCheck, SystemdStatusSink

if TYPE_CHECKING:  # paho is loaded only when MQTT is enabled
    from voxd.sinks.mqtt import MqttSink

log = logging.getLogger("voxd.daemon")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# Loading an 8.9 GB model from an SD card can take minutes; systemd's
# TimeoutStartSec (300 s in the unit) is extended to this while loading.
LOAD_TIMEOUT_S = 600.0
# How often the main thread looks at the pipeline while waiting for a signal.
MAIN_POLL_S = 0.5
# At shutdown, how long MQTT may take to get queued finals acknowledged.
MQTT_DRAIN_S = 5.0
# MqttSink.handle passes a final to its own thread, which writes it to the
# outbox: give that hand-off this long before reading the outbox size.
MQTT_HANDOFF_S = 0.2
PIPELINE_STOP_S = 20.0

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# syslog priorities for the <N> prefix journald understands (sd-daemon(3))
_PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


# -- logging --------------------------------------------------------------------------


class _JournalFormatter(logging.Formatter):
    """``<6>voxd.pipeline: message``: journald adds the time and keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        # Each line of a traceback would otherwise be logged at the default level.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


class _VoxdHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second setup replaces it."""


def setup_logging(level: str, *, environ: dict[str, str] | None = None) -> None:
    """Log to stderr at ``level``; journald-friendly when JOURNAL_STREAM is set."""
    env = os.environ if environ is None else environ
    handler = _VoxdHandler(sys.stderr)
    # On the handler too: some libraries' filters lower a record's level after
    # the logger has let it through (mqtt's paho noise filter does).
    handler.setLevel(_LEVELS.get(level, logging.INFO))
    if env.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _VoxdHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))


# -- signals ----------------------------------------------------------------------------


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; SIGHUP logs. Only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # in-process callers (tests) stop us through the event
        return

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    def hangup(signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP received: the configuration is read at start; restart voxd to reload it")

    handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: request_stop,
        signal.SIGINT: request_stop,
        signal.SIGHUP: hangup,
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- start-up steps -----------------------------------------------------------------------


def _fail(notifier: Notifier, message: str) -> int:
    log.error("%s", message)
    notifier.status(f"failed: {message}")
    return EXIT_CONFIG


def load_engine(settings: Settings, notifier: Notifier) -> Engine | str:
    """The loaded engine, or the error message to report."""
    s = settings.engine
    model_dir = s.model_dir
    if not model_dir.is_dir():
        return (
            f"model directory {model_dir} does not exist: run `voxd model download` "
            "or set engine.model_dir in the configuration"
        )
    if (too_big := fit_warning(model_dir)) is not None:
        log.warning("%s", too_big)
    notifier.extend_timeout(LOAD_TIMEOUT_S)
    notifier.status(f"loading the model from {model_dir}")
    started = time.monotonic()
    try:
        engine = Engine(model_dir, threads=s.threads, backend=s.backend or "auto")
    except EngineError as err:
        return (
            f"cannot load the model in {model_dir}: {err}. Check it with `voxd model check`, "
            "fetch it again with `voxd model download`, or set engine.model_dir"
        )
    info = engine.info
    log.info(
        "model loaded from %s in %.1f s (%.0f MB of weights, %s backend, %d threads, "
        "stacks on %s: %s; %s)",
        model_dir,
        time.monotonic() - started,
        info.weight_bytes / 1e6,
        info.backend,
        info.n_threads,
        info.device,
        info.device_note or "as configured",
        info.weights_note,
    )
    return engine


def load_judge(settings: Settings) -> SpeechJudge | None | str:
    """The Silero VAD if enabled, None if not, or the error message to report."""
    vad = settings.vad
    if not vad.enabled or vad.model_path is None:
        return None
    from voxd.vad import SileroVad  # imports onnxruntime lazily

    try:
        return SileroVad(vad.model_path)
    except (OSError, ImportError, ValueError) as err:  # VadModelError is a ValueError
        return f"vad.enabled = true but the Silero VAD cannot be used: {err}"


# -- run --------------------------------------------------------------------------------


def run(
    settings: Settings,
    *,
    stdout_sink: bool | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT (or ``stop_event``); the exit code.

    ``stdout_sink`` None follows service.stdout_sink; True/False overrides it.
    """
    setup_logging(settings.service.log_level)
    notifier = sdnotify.default_notifier()
    refused = refusal(settings)  # the same checks and message as `voxd config check`
    if refused is not None:
        return _fail(notifier, refused)
    stop = stop_event if stop_event is not None else threading.Event()
    with _signals(stop):
        loaded = load_engine(settings, notifier)
        if isinstance(loaded, str):
            return _fail(notifier, loaded)
        if stop.is_set():  # SIGTERM while the model was loading
            loaded.close()
            return EXIT_OK
        try:
            return _serve(settings, loaded, notifier, stop, stdout_sink)
        finally:
            loaded.close()


def _serve(
    settings: Settings,
    engine: Engine,
    notifier: Notifier,
    stop: threading.Event,
    stdout_sink: bool | None,
) -> int:
    judge = load_judge(settings)
    if isinstance(judge, str):
        return _fail(notifier, judge)
    capture = Capture(settings.audio)
    sources = (*WATCHDOG_SOURCES, WATCHDOG_MQTT) if settings.mqtt.enabled else WATCHDOG_SOURCES
    watchdog = Watchdog(notifier, sources=sources)
    try:
        pipeline = Pipeline(capture, engine, settings=settings, judge=judge, watchdog=watchdog)
    except ConfigError as err:  # e.g. the wake-word model, if it changed since preflight
        return _fail(notifier, str(err))
    capture.on_status = pipeline.on_mic_status
    mqtt: MqttSink | None = None
    if settings.mqtt.enabled:
        from voxd.sinks.mqtt import MqttSink

        try:
            mqtt = MqttSink(settings.mqtt, settings.service.state_dir, on_command=pipeline.command)
        except (ConfigError, OSError) as err:
            return _fail(notifier, f"cannot start MQTT: {err}")
        pipeline.add_sink(mqtt)
    if settings.service.stdout_sink if stdout_sink is None else stdout_sink:
        from voxd.sinks.stdout import StdoutSink

        pipeline.add_sink(StdoutSink())
    status = SystemdStatusSink(notifier)
    pipeline.add_sink(status)
    health = MqttHealthCheck(mqtt, watchdog, status) if mqtt is not None else None
    wyoming = None
    try:
        if settings.wyoming.enabled:  # Home Assistant Assist's STT, beside the microphone
            from voxd.wyoming.server import WyomingServer, WyomingStartError

            wyoming = WyomingServer(settings.wyoming, engine, settings.engine, settings.endpoint)
            try:
                wyoming.start()
            except WyomingStartError as err:
                return _fail(notifier, str(err))
        return _supervise(settings, pipeline, mqtt, health, notifier, stop)
    finally:
        if wyoming is not None:
            wyoming.stop()  # its streams are closed before run() closes the engine
        if mqtt is not None:
            mqtt.close()


def _supervise(
    settings: Settings,
    pipeline: Pipeline,
    mqtt: MqttSink | None,
    mqtt_health: MqttHealthCheck | None,
    notifier: Notifier,
    stop: threading.Event,
) -> int:
    pipeline.start()
    device = settings.audio.device if settings.audio.device is not None else "default input"
    where = f"; MQTT {settings.mqtt.host}:{settings.mqtt.port}" if mqtt is not None else ""
    notifier.ready(f"listening on {device}{where}")
    log.info("voxd ready: listening on %s%s", device, where)
    code = EXIT_OK
    while not stop.wait(MAIN_POLL_S):
        if not pipeline.alive:
            log.error("the pipeline stopped unexpectedly; exiting so that systemd restarts voxd")
            code = EXIT_FAILED
            break
        if mqtt_health is not None:
            mqtt_health.check()
    notifier.stopping("stopping: finishing the utterance in progress")
    pipeline.stop(flush=True, timeout=PIPELINE_STOP_S)
    if mqtt is not None:
        _drain_mqtt(mqtt, MQTT_DRAIN_S)
    log.info("voxd stopped")
    return code


def _drain_mqtt(mqtt: MqttSink, timeout: float) -> None:
    """Give the broker a moment to acknowledge queued finals.

    Whatever is not acknowledged stays in the outbox and is sent after the
    next start; waiting here only avoids sending the last final twice.
    """
    time.sleep(MQTT_HANDOFF_S)
    deadline = time.monotonic() + timeout
    while mqtt.connected and len(mqtt.outbox) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    held = mqtt.outbox.memory_only
    if held:
        log.error(
            "%d final(s) held in memory only (the outbox %s could not be written) are lost "
            "at this stop: the broker did not acknowledge them in time",
            held,
            mqtt.outbox.directory,
        )
    on_disk = len(mqtt.outbox) - held
    if on_disk:
        log.info("%d final(s) left in the outbox for the next start", on_disk)
