"""The `voxd` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from speech import synth

from voxd.audio import read_wav
from voxd.endpoint import trailing_silence
from voxd.engine import Engine, transcribe

ROOT = Path(__file__).resolve().parents[1]


def voxd(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LD_PRELOAD", None)
    return subprocess.run(
        [sys.executable, "-m", "voxd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=300,
    )


def write_wav(path: Path, x: np.ndarray, rate: int, channels: int) -> None:
    pcm = np.clip(x * 32767, -32768, 32767).astype("<i2")
    if channels == 2:
        pcm = np.stack([pcm, (pcm * 0.5).astype("<i2")], axis=1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.fixture(scope="module")
def wav_44k_stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("wav") / "speech.wav"
    write_wav(p, synth("turn on the kitchen lights", rate=44100), 44100, 2)
    return p


def test_transcribe_json_matches_the_api(tiny_model_dir: Path, wav_44k_stereo: Path) -> None:
    r = voxd("transcribe", str(wav_44k_stereo), "--model-dir", str(tiny_model_dir), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    with Engine(tiny_model_dir) as e:
        text, ids = transcribe(e, read_wav(wav_44k_stereo))
    assert out["token_ids"] == ids and out["text"] == text
    assert len(ids) > 10


def test_transcribe_pad_after_speech_is_what_the_daemon_makes_of_it(
    tiny_model_dir: Path, wav_44k_stereo: Path
) -> None:
    """--pad-after-speech counts the file's closing silence as the padding."""
    r = voxd(
        "transcribe",
        str(wav_44k_stereo),
        "--model-dir",
        str(tiny_model_dir),
        "--json",
        "--pad-after-speech",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    audio = read_wav(wav_44k_stereo)
    quiet = trailing_silence(audio)
    assert quiet > 1280  # espeak-ng ends with silence: more than a position of it
    with Engine(tiny_model_dir) as e:
        text, ids = transcribe(e, audio, silence=quiet)
        _, padded_after_the_file = transcribe(e, audio)
    assert out["token_ids"] == ids and out["text"] == text
    # fewer decoder positions than the offline recipe's
    assert len(ids) < len(padded_after_the_file)


def test_transcribe_plain_text_and_delay(tiny_model_dir: Path, wav_44k_stereo: Path) -> None:
    r = voxd(
        "transcribe", str(wav_44k_stereo), "--model-dir", str(tiny_model_dir), "--delay-ms", "960"
    )
    assert r.returncode == 0, r.stderr
    with Engine(tiny_model_dir) as e:
        text, _ = transcribe(e, read_wav(wav_44k_stereo), delay_ms=960)
    assert r.stdout.strip() == text


def test_transcribe_dump(tiny_model_dir: Path, wav_44k_stereo: Path, tmp_path: Path) -> None:
    r = voxd(
        "transcribe",
        str(wav_44k_stereo),
        "--model-dir",
        str(tiny_model_dir),
        "--dump",
        str(tmp_path / "d"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout)["token_ids"]
    mel = np.load(tmp_path / "d" / "mel.npy")
    enc = np.load(tmp_path / "d" / "encoder.npy")
    ada = np.load(tmp_path / "d" / "adapter.npy")
    logits = np.load(tmp_path / "d" / "logits.npy")
    assert mel.shape[1] == 128 and enc.shape[0] * 2 == mel.shape[0]
    assert ada.shape[0] * 8 == mel.shape[0]
    assert logits.shape[0] == len(ids)
    assert list(np.argmax(logits, axis=1)) == ids


@pytest.mark.parametrize(
    "content,expect",
    [(b"", "cannot read"), (b"RIFF\x00\x00\x00\x00WAVEjunk", "cannot read"), (None, "cannot read")],
)
def test_transcribe_bad_input(
    tiny_model_dir: Path, tmp_path: Path, content: bytes | None, expect: str
) -> None:
    p = tmp_path / "bad.wav"
    if content is not None:
        p.write_bytes(content)
    r = voxd("transcribe", str(p), "--model-dir", str(tiny_model_dir))
    assert r.returncode != 0
    assert expect in r.stderr and "Traceback" not in r.stderr


def test_transcribe_missing_model(wav_44k_stereo: Path, tmp_path: Path) -> None:
    r = voxd("transcribe", str(wav_44k_stereo), "--model-dir", str(tmp_path / "none"))
    assert r.returncode == 2
    assert "params.json: missing (is" in r.stderr and "Traceback" not in r.stderr


def test_config_check(tmp_path: Path) -> None:
    good = voxd("config", "check", "--config", str(ROOT / "config" / "voxd.toml"))
    assert good.returncode == 0, good.stderr
    assert "[mqtt]" in good.stdout
    assert "configuration OK" in good.stderr  # a verdict, not only the values
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 70000\n")
    r = voxd("config", "check", "--config", str(bad))
    assert r.returncode == 2
    assert "mqtt.port" in r.stderr and "65535" in r.stderr


def test_dev_make_model(tmp_path: Path) -> None:
    r = voxd("dev", "make-model", str(tmp_path / "m"), "--preset", "tiny", "--seed", "3")
    assert r.returncode == 0, r.stderr
    with Engine(tmp_path / "m") as e:
        assert e.info.dim == 64


def test_help_lists_every_command() -> None:
    r = voxd("--help")
    for cmd in ("run", "transcribe", "devices", "config", "model", "quantize", "bench", "dev"):
        assert cmd in r.stdout


def test_transcribe_defaults_to_the_configured_model(
    tiny_model_dir: Path, wav_44k_stereo: Path, tmp_path: Path
) -> None:
    config = tmp_path / "voxd.toml"
    config.write_text(f'[engine]\nmodel_dir = "{tiny_model_dir}"\n')
    r = voxd("transcribe", str(wav_44k_stereo), "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    explicit = voxd("transcribe", str(wav_44k_stereo), "--model-dir", str(tiny_model_dir), "--json")
    assert json.loads(r.stdout)["token_ids"] == json.loads(explicit.stdout)["token_ids"]


def test_bench_without_model_dir_reads_the_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[engine]\nmodel_dir = 5\nformat = "q5"\n')
    r = voxd("bench", "--config", str(bad), "--seconds", "1")
    assert r.returncode == 2
    assert "no --model-dir" in r.stderr and "engine.format" in r.stderr
    # the way out it names is this command's option (download's is --dir)
    assert "pass --model-dir to skip it" in r.stderr
    r = voxd("transcribe", "x.wav", "--config", str(bad))
    assert r.returncode != 0 and "pass --model-dir to skip it" in r.stderr
    r = voxd("model", "download", "--config", str(bad))
    assert r.returncode != 0 and "pass --dir and --format to skip it" in r.stderr
    r = voxd("model", "check", "--config", str(bad))
    assert r.returncode != 0 and "pass --dir to skip it" in r.stderr


def test_config_check_warns_when_the_model_does_not_fit(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    with (model / "consolidated.safetensors").open("wb") as f:
        f.truncate(1 << 40)  # sparse: 1.1 TB of size, no disk space
    config = tmp_path / "voxd.toml"
    config.write_text(f'[engine]\nmodel_dir = "{model}"\n')
    r = voxd("config", "check", "--config", str(config))
    assert r.returncode == 0, r.stderr  # a warning, the config itself is fine
    assert "1099.5 GB of files" in r.stderr and "does not fit in this machine's" in r.stderr
    assert "--format q4" in r.stderr


# What `voxd run` loads, printed by the process itself: the daemon's import path
# (the command line, the daemon, the pipeline, the sinks in use), up to the model
# load, which fails here on a broken model directory (exit 2) after every module
# the daemon needs at start is imported.
RUN_AND_LIST_MODULES = """
import json, sys
from voxd import cli
rc = cli.main(["run", "--config", sys.argv[1]])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def test_voxd_run_loads_no_tools_and_no_mqtt_client_without_mqtt(tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "params.json").write_text("{not json")
    config = tmp_path / "voxd.toml"
    config.write_text(
        f'[engine]\nmodel_dir = "{broken}"\n[mqtt]\nenabled = false\n'
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    modules: list[str] = report["modules"]
    assert report["rc"] == 2, proc.stderr  # refused at the model load, as intended
    assert str(broken) in proc.stderr
    assert {"voxd.daemon", "voxd.pipeline", "voxd.sinks.systemd"} <= set(modules)
    assert [m for m in modules if m == "voxd.tools" or m.startswith("voxd.tools.")] == []
    assert [m for m in modules if m == "paho" or m.startswith("paho.")] == []
    assert "voxd.sinks.mqtt" not in modules


def test_tool_commands_still_parse_with_their_modules() -> None:
    from voxd import cli

    args = cli.parse_args(["quantize", "in", "out", "--format", "q4"])
    assert (args.command, args.format) == ("quantize", "q4")
    assert "voxd.tools.quantize" in sys.modules
    core = cli.parse_args(["run", "--stdout"])
    assert (core.command, core.stdout) == ("run", True)


def test_python_dash_m_voxd_is_the_command() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "voxd", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().startswith("voxd "), proc


def test_core_command_errors_read_as_the_whole_command_lines() -> None:
    """A core command's error goes through the whole parser: the same usage and message."""
    bad = voxd("run", "--no-such-option")
    assert bad.returncode == 2
    assert "unrecognized arguments: --no-such-option" in bad.stderr
    assert "quantize" in bad.stderr  # the usage line lists every command, tools included
