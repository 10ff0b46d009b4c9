"""The `voxd` command line.

    voxd run [--config PATH] [--stdout]     the daemon (systemd runs this)
    voxd transcribe FILE [--model-dir DIR]  one file, offline
    voxd devices                            audio inputs PortAudio sees
    voxd config check [--config PATH]       the effective config, or what is wrong
    voxd model download|check               fetch / verify the model
    voxd quantize IN OUT --format q8|q4     8- and 4-bit weights
    voxd bench [--model-dir DIR]            speed figures of this machine
    voxd dev make-model DIR --preset tiny   random models for tests and benches
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from voxd import __version__
from voxd.events import DELAY_MS_DEFAULT, DELAY_MS_RULE, SAMPLE_RATE

if TYPE_CHECKING:
    from voxd.engine import Stream

# Feed long files in 1 s pieces so progress can be shown.
PROGRESS_CHUNK = SAMPLE_RATE
PROGRESS_MIN_SECONDS = 30.0


def _err(msg: str) -> None:
    print(f"voxd: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------
# transcribe
# ---------------------------------------------------------------------------


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from voxd.audio import read_wav
    from voxd.endpoint import trailing_silence
    from voxd.engine import DEBUG_ALL, Engine, EngineError, StreamStats, transcribe

    model_dir = _model_dir(args)
    if model_dir is None:
        return 2
    try:
        audio = read_wav(args.file)
    except (OSError, ValueError) as e:
        _err(f"cannot read {args.file}: {e}")
        return 1
    try:
        engine = Engine(model_dir, threads=args.threads, backend=args.backend)
    except EngineError as e:
        _err(str(e))
        return 2
    seconds = audio.size / SAMPLE_RATE
    show_progress = seconds >= PROGRESS_MIN_SECONDS
    t0 = [0.0]  # set when the stream is open: the time to transcribe, not to load
    elapsed = [0.0]
    stats: list[StreamStats] = []

    def progress(fed: int) -> None:
        if fed == 0:
            t0[0] = time.monotonic()
        elif show_progress:
            print(f"\r{fed / SAMPLE_RATE:.0f}/{seconds:.0f} s", end="", file=sys.stderr, flush=True)

    def finished(stream: Stream) -> None:
        elapsed[0] = time.monotonic() - t0[0]
        if args.dump:
            _dump(stream, Path(args.dump))
        stats.append(stream.stats())

    debug = DEBUG_ALL if args.dump else 0
    try:
        text, ids = transcribe(
            engine,
            audio,
            delay_ms=args.delay_ms,
            chunk=PROGRESS_CHUNK,
            silence=trailing_silence(audio) if args.pad_after_speech else 0,
            debug=debug,
            on_progress=progress,
            before_close=finished,
        )
    except EngineError as e:
        # before the first progress call the stream could not be made (a bad --delay-ms)
        _err(f"{args.file}: {e}" if t0[0] else str(e))
        return 1 if t0[0] else 2
    if show_progress:
        print(file=sys.stderr)
    if args.dump:
        np.save(Path(args.dump) / "token_ids.npy", np.asarray(ids, dtype=np.int64))
    engine.close()
    if args.json:
        out = {
            "text": text,
            "token_ids": ids,
            "audio_seconds": round(seconds, 3),
            "elapsed_seconds": round(elapsed[0], 3),
            "decoder_positions": stats[0].positions,
            "encoder_ms": round(stats[0].encoder_ms, 1),
            "decoder_ms": round(stats[0].decoder_ms, 1),
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(text)
    return 0


def _model_dir(args: argparse.Namespace) -> Path | None:
    """--model-dir, else engine.model_dir of the configuration (None: error shown)."""
    if args.model_dir is not None:
        return Path(args.model_dir)
    from voxd.tools.modelfetch import ModelFetchError, configured_engine

    try:
        return Path(configured_engine(args.config, "--model-dir").model_dir)
    except ModelFetchError as e:
        _err(f"no --model-dir, and {e}")
        return None


def _dump(stream: Stream, out: Path) -> None:
    """The stream's debug tensors as .npy files (token_ids.npy is written beside them)."""
    from voxd.engine import DEBUG_NAMES

    out.mkdir(parents=True, exist_ok=True)
    for kind, name in DEBUG_NAMES.items():
        np.save(out / f"{name}.npy", stream.debug_tensor(kind))


def _add_transcribe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("transcribe", help="transcribe a WAV file (any rate / channels)")
    p.add_argument("file", type=Path)
    p.add_argument("--model-dir", type=Path, help="default: engine.model_dir of the config")
    p.add_argument("--config", type=Path, default=None, help="default: /etc/voxd/voxd.toml")
    p.add_argument("--delay-ms", type=int, default=DELAY_MS_DEFAULT, help=DELAY_MS_RULE)
    p.add_argument("--json", action="store_true", help="print text and token_ids as JSON")
    p.add_argument("--dump", metavar="DIR", help="write mel/encoder/adapter/logits as .npy")
    p.add_argument(
        "--pad-after-speech",
        action="store_true",
        help="pad after the speech, not after the file: the silence that ends it counts as "
        "padding, as the daemon's flush and Wyoming server do (default endpoint settings)",
    )
    p.add_argument("--threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--backend", default=None, help="portable, avx2, neon (default: best)")
    p.set_defaults(func=_cmd_transcribe)


# ---------------------------------------------------------------------------
# run, config, devices
# ---------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> object:
    from voxd.config import ConfigError, load_settings

    try:
        return load_settings(args.config)
    except ConfigError as e:
        _err(f"configuration error:\n{e}")
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from voxd import daemon
    from voxd.config import Settings

    settings = _load(args)
    if not isinstance(settings, Settings):
        return 2
    return daemon.run(settings, stdout_sink=True if args.stdout else None)


def _cmd_config_check(args: argparse.Namespace) -> int:
    """The verdict `voxd run` would reach before loading the model, and its message."""
    from voxd.config import ConfigError, Settings, effective_config_toml
    from voxd.preflight import preflight

    settings = _load(args)
    if not isinstance(settings, Settings):
        return 2
    try:
        warnings = preflight(settings)
    except ConfigError as e:
        _err(f"configuration error:\n{e}")
        return 2
    for warning in warnings:
        _err(f"warning: {warning}")
    model_dir = settings.engine.model_dir
    try:  # installation state, not configuration: notes only
        if not model_dir.is_dir():
            _err(
                f"note: engine.model_dir {model_dir} does not exist yet; `voxd run` needs the "
                "model there (`voxd model download`)"
            )
    except OSError as e:
        _err(f"note: cannot look into engine.model_dir {model_dir} ({e.strerror}) as this user")
    print(effective_config_toml(settings), end="")
    from voxd.modelsize import fit_warning

    if (fit := fit_warning(settings.engine.model_dir)) is not None:
        _err(f"warning: {fit}")
    _err("configuration OK: `voxd run` accepts it (the effective values are above)")
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from voxd.audio import list_input_devices

    try:
        devices = list_input_devices()
    except Exception as e:  # PortAudio missing or failing to initialise
        _err(f"cannot list audio devices: {e}")
        return 1
    if not devices:
        print("no audio input devices found")
        return 1
    for d in devices:
        mark = "*" if getattr(d, "is_default", False) else " "
        print(
            f"{mark}{d.index:3d}  {d.name}  ({d.max_input_channels} ch, {d.default_rate:.0f} Hz)"
        )
    return 0


def _add_service(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", type=Path, default=None, help="default: /etc/voxd/voxd.toml")
    p.add_argument("--stdout", action="store_true", help="also print events as JSON lines")
    p.set_defaults(func=_cmd_run)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    chk = csub.add_parser("check", help="print the effective config or the errors")
    chk.add_argument("--config", type=Path, default=None)
    chk.set_defaults(func=_cmd_config_check)

    d = sub.add_parser("devices", help="list audio input devices")
    d.set_defaults(func=_cmd_devices)


def _cmd_dev_make_model(args: argparse.Namespace) -> int:
    from voxd.tools import devmodel

    return devmodel.main([str(args.out_dir), "--preset", args.preset, "--seed", str(args.seed)])


def _add_dev(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from voxd.tools.devmodel import PRESETS

    p = sub.add_parser("dev", help="developer tools")
    dsub = p.add_subparsers(dest="dev_cmd", required=True)
    mk = dsub.add_parser("make-model", help="write a random model (tiny, tiny2, full 8.9 GB)")
    mk.add_argument("out_dir", type=Path)
    mk.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    mk.add_argument("--seed", type=int, default=1)
    mk.set_defaults(func=_cmd_dev_make_model)


# The commands whose code is outside voxd.tools: parsed without loading the tools.
CORE_COMMANDS = frozenset({"run", "config", "devices", "transcribe"})


class _NotCore(Exception):
    """The core parser met something it cannot judge alone (an error, say)."""


class _CoreParser(argparse.ArgumentParser):
    """Parses the core commands; hands any error to the whole parser, which words it."""

    def error(self, message: str) -> NoReturn:
        raise _NotCore(message)


def build_parser(
    *, tools: bool = True, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The `voxd` parser; without ``tools``, only the core commands (no voxd.tools import)."""
    ap = parser_class(prog="voxd", description="Local streaming speech-to-text daemon.")
    ap.add_argument("--version", action="version", version=f"voxd {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_service(sub)
    _add_transcribe(sub)
    if tools:
        from voxd.tools import bench, modelfetch, quantize

        modelfetch.add_cli(sub)
        quantize.add_cli(sub)
        bench.add_cli(sub)
        _add_dev(sub)
    return ap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; the offline tools are loaded only for their own commands.

    A core command (``voxd run``: what systemd starts) is parsed by the core
    parser alone. Everything else, and any error, goes to the whole parser,
    so help, usage and error messages are always the whole command line's.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in CORE_COMMANDS:
        try:
            return build_parser(tools=False, parser_class=_CoreParser).parse_args(args)
        except _NotCore:
            pass
    return build_parser().parse_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
