"""bench/e2e_wait.py on the tiny model: the daemon, mosquitto and the clock-paced ALSA
microphone all real. Checks the report's shape and consistency, never its speed."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import find_mosquitto
from speech import have_espeak

from bench import e2e_wait

pytestmark = [
    pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed"),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]


def run_json(*argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = e2e_wait.main([*argv, "--json"])
    return code, json.loads(out.getvalue())


def test_each_command_gets_its_final_and_the_parts_add_up(tiny_model_dir: Path) -> None:
    pytest.importorskip("pyaudio")
    args = ("--model-dir", str(tiny_model_dir), "--commands", "3", "--lead-s", "1", "--gap-s", "1")
    code, report = run_json(*args)
    assert code == 0, report
    results = report["results"]
    # three commands, alternating between the two texts
    assert [r["command"] for r in results] == [*e2e_wait.COMMANDS, e2e_wait.COMMANDS[0]]
    for r in results:
        assert r["status"] == "ok", r
        assert r["finals"] == 1 and r["text"] and r["tokens"] > 0  # the tiny model speaks
        assert r["wait_s"] > 0 and r["latency_s"] > 0
        parts = r["hangover_s"] + r["lag_s"] + r["flush_s"]
        assert math.isclose(parts, r["latency_s"], abs_tol=0.005)  # each rounded to 1 ms
        # the daemon saw at least the speech, and ended the utterance on its own
        assert r["audio_seconds"] >= r["speech_s"] - 0.1
        assert r["reason"] == "silence"
        # state went processing -> idle around the final (the final is published first)
        assert 0 < r["processing_s"] <= r["idle_s"]
        assert r["max_engine_lag_s"] is not None and r["max_engine_lag_s"] >= 0
        assert r["load1"] is not None


def test_a_final_late_beyond_the_timeout_is_reported_and_stops_the_run(
    tiny_model_dir: Path,
) -> None:
    """With a zero timeout no final can be in time: the endpointer needs its hangover of
    silence, played by the clock, before it ends an utterance."""
    pytest.importorskip("pyaudio")
    args = ("--model-dir", str(tiny_model_dir), "--lead-s", "0.5", "--timeout-s", "0")
    code, report = run_json(*args)
    assert code == 1
    assert [r["status"] for r in report["results"]] == ["timeout"]
    assert report["results"][0]["wait_s"] is None


def test_a_daemon_that_cannot_start_is_reported_with_its_log(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pyaudio")
    broken = tmp_path / "model"
    broken.mkdir()
    shutil.copy(tiny_model_dir / "params.json", broken)  # no weights, no tokenizer
    with pytest.raises(SystemExit) as info:
        e2e_wait.main(["--model-dir", str(broken), "--ready-timeout-s", "60"])
    message = str(info.value)
    assert "the daemon exited" in message and "its log" in message


def test_bad_arguments_are_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        e2e_wait.main(["--model-dir", str(tmp_path)])
    assert "--model-dir" in err.getvalue() and "params.json" in err.getvalue()
