"""Capture from real ALSA devices (file- and FIFO-backed PCMs through PortAudio) and WAV reading."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_audio import AlsaFifoDevice, AlsaSandbox
from speech import have_espeak, synth

from voxd.audio import (
    PACE_WINDOW_S,
    Capture,
    DeviceInfo,
    DeviceNotFoundError,
    MicStatus,
    list_input_devices,
    read_wav,
    select_device,
)
from voxd.config import AudioSettings
from voxd.resample import resample

RATE = 16000
REPO = Path(__file__).resolve().parent.parent

# The file devices' null slave paces nothing: they "record" at CPU speed, which
# Capture's pace check rightly calls a lying device. Tests that use them as a
# working microphone turn the check off (pace_check=False); the tests of the
# check itself keep it on.


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll until cond() holds; False after timeout (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def read_samples(cap: Capture, n: int, timeout: float = 20.0) -> np.ndarray:
    """The first n samples the capture yields."""
    got: list[np.ndarray] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total < n and time.monotonic() < deadline:
        block = cap.read(timeout=0.5)
        if block is not None:
            got.append(block)
            total += len(block)
    assert total >= n, f"only {total} of {n} samples arrived"
    return np.concatenate(got)[:n]


class StatusLog:
    """Collects on_status calls (they come from the capture thread)."""

    def __init__(self) -> None:
        self.seen: list[MicStatus] = []
        self._lock = threading.Lock()

    def __call__(self, status: MicStatus) -> None:
        with self._lock:
            self.seen.append(status)

    def has(self, *expected: MicStatus) -> bool:
        with self._lock:
            return self.seen[: len(expected)] == list(expected)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    from fixtures_audio import trim_silence

    return trim_silence(synth("Capture test: the microphone hears this sentence."))


@pytest.fixture(scope="module")
def other_speech() -> np.ndarray:
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return synth("A different voice on the other channel.", voice="en-gb")


# -- devices ------------------------------------------------------------------------


def test_file_devices_are_listed_as_inputs(alsa_sandbox: AlsaSandbox, speech: np.ndarray) -> None:
    alsa_sandbox.add_file_device("voxtest_mono16k", speech, 16000)
    alsa_sandbox.add_file_device("voxtest_stereo48k", np.stack([speech, speech], 1), 48000)
    devices = {d.name: d for d in list_input_devices()}
    assert {"voxtest_mono16k", "voxtest_stereo48k"} <= devices.keys()
    for d in devices.values():
        # The null slave takes any layout: PortAudio reports its probe results.
        assert d.max_input_channels >= 2
        assert d.default_rate > 0
    assert sum(d.is_default for d in devices.values()) == 1


def test_select_device_by_substring_index_or_default() -> None:
    devs = [
        DeviceInfo(0, "USB Audio Device: mic (hw:1,0)", 1, 48000),
        DeviceInfo(2, "ReSpeaker 4 Mic Array", 4, 16000),
        DeviceInfo(3, "default", 128, 44100, is_default=True),
        DeviceInfo(5, "usb", 2, 44100),
    ]
    assert select_device(devs, "respeaker").index == 2
    assert select_device(devs, "USB").index == 5  # exact name beats substring
    assert select_device(devs, "audio device").index == 0
    assert select_device(devs, 2).index == 2
    assert select_device(devs, "2").index == 2
    assert select_device(devs, None).index == 3
    assert select_device([d for d in devs if not d.is_default], None).index == 0
    with pytest.raises(DeviceNotFoundError, match="no input device matches 'blue yeti'.*ReSpeaker"):
        select_device(devs, "blue yeti")
    with pytest.raises(DeviceNotFoundError, match="index 9"):
        select_device(devs, 9)
    with pytest.raises(DeviceNotFoundError, match="no audio input devices"):
        select_device([], None)


# -- capture ------------------------------------------------------------------------


def test_capture_16k_mono_gives_the_spoken_audio(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray
) -> None:
    dev = alsa_sandbox.add_file_device("voxtest_mono16k", speech, 16000)
    status = StatusLog()
    settings = AudioSettings(device="mono16k", sample_rate=16000, channels=1)
    with Capture(settings, on_status=status, pace_check=False) as cap:
        got = read_samples(cap, len(speech))
        assert wait_for(lambda: status.has("ok"))
        assert cap.device is not None and cap.device.name == "voxtest_mono16k"
    # 16 kHz mono in, 16 kHz mono out, no gain: exactly the samples in the file.
    assert np.array_equal(got, dev.samples[:, 0])
    assert cap.read(timeout=0.1) is None  # stopped


def test_capture_48k_stereo_is_resampled_and_channels_handled(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray, other_speech: np.ndarray
) -> None:
    left = synth_48k(speech)
    right = synth_48k(other_speech)[: len(left)]
    right = np.pad(right, (0, len(left) - len(right)))
    dev = alsa_sandbox.add_file_device("voxtest_stereo48k", np.stack([left, right], 1), 48000)
    alsa_sandbox.add_file_device("voxtest_mono16k", speech, 16000)  # a decoy
    for channel, expected in ((0, speech), (1, resample(right, 48000)), ("mix", None)):
        settings = AudioSettings(device="stereo48", sample_rate=48000, channels=2, channel=channel)
        with Capture(settings, pace_check=False) as cap:
            got = read_samples(cap, len(speech))
            assert cap.device is not None and cap.device.name == "voxtest_stereo48k"
        if expected is None:
            expected = resample(dev.samples.mean(axis=1), 48000)
        assert correlation(got, expected) > 0.99
    # The right channel really is another signal.
    assert correlation(resample(right, 48000), speech) < 0.5


def synth_48k(x16: np.ndarray) -> np.ndarray:
    """A 16 kHz signal brought to 48 kHz (the device 'records' at 48 kHz)."""
    return resample(x16, 16000, 48000)


def test_gain_is_applied_and_clipped(alsa_sandbox: AlsaSandbox) -> None:
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    dev = alsa_sandbox.add_file_device("voxtest_tone", x, 16000)
    settings = AudioSettings(device="voxtest_tone", sample_rate=16000, channels=1, gain_db=12.0)
    with Capture(settings, pace_check=False) as cap:
        got = read_samples(cap, RATE)
    expected = np.clip(dev.samples[:, 0] * 10 ** (12 / 20), -1, 1)
    assert np.allclose(got, expected, atol=1e-6)
    assert got.max() == pytest.approx(1.0)


def test_overruns_are_counted_and_early_audio_kept(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray
) -> None:
    """The file device runs far faster than real time, so a small queue overflows."""
    dev = alsa_sandbox.add_file_device("voxtest_fast", speech[: RATE // 2], 16000)
    settings = AudioSettings(
        device="voxtest_fast", sample_rate=16000, channels=1, queue_seconds=0.5
    )
    with Capture(settings, pace_check=False) as cap:
        assert wait_for(lambda: cap.overruns > 0)
        # Dropping happens at the tail: the first queue_seconds stay whole and in order.
        got = read_samples(cap, RATE // 2)
        assert cap.queue_depth <= 25
    assert np.array_equal(got, dev.samples[:, 0])


def test_default_device_when_none_configured(alsa_sandbox: AlsaSandbox) -> None:
    with Capture(AudioSettings(sample_rate=16000, channels=1), pace_check=False) as cap:
        block = read_samples(cap, 1600)
        assert cap.device is not None and cap.device.name == "default"
    # (the null device's capture data is whatever its buffer holds: not checked)
    assert block.dtype == np.float32


def test_missing_device_is_reported_retried_and_recovered(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray
) -> None:
    dev = alsa_sandbox.add_file_device("voxtest_usb", speech, 16000)
    dev.remove()  # unplugged before the daemon starts
    status = StatusLog()
    settings = AudioSettings(
        device="voxtest_usb",
        sample_rate=16000,
        channels=1,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    with Capture(settings, on_status=status, pace_check=False) as cap:
        assert wait_for(lambda: status.has("mic_lost"))
        assert wait_for(lambda: cap.attempts >= 4)  # keeps trying, never gives up
        assert cap.read(timeout=0.2) is None
        assert cap.status == "mic_lost"
        dev.restore()  # plugged back in
        got = read_samples(cap, len(speech))
        assert wait_for(lambda: status.has("mic_lost", "ok"))
        assert cap.reconnects == 1
    assert np.array_equal(got, dev.samples[:, 0])


def test_stalled_device_is_reported_and_recovered(alsa_sandbox: AlsaSandbox) -> None:
    """A device that stops delivering (a FIFO nobody writes) is lost, then found again."""
    fifo = alsa_sandbox.add_fifo_device("voxtest_fifo")
    tone = (0.25 * np.sin(2 * np.pi * 300 * np.arange(RATE // 2) / RATE)).astype(np.float32)
    status = StatusLog()
    settings = AudioSettings(
        device="voxtest_fifo",
        sample_rate=16000,
        channels=1,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    cap = Capture(settings, on_status=status, stall_timeout_s=0.5, close_timeout_s=0.2)
    cap.start()
    try:
        fifo.write(tone)
        got = read_samples(cap, RATE // 4)
        assert np.abs(got).max() > 0.2
        assert wait_for(lambda: status.has("ok"))
        # Nothing more is written: the stream stalls and is declared lost.
        assert wait_for(lambda: status.has("ok", "mic_lost"))
        # The stuck close (blocked in read) completes once the writer hangs up;
        # the reopen then waits for a writer, as for a device not yet back.
        fifo.hang_up()
        fifo.reconnect()
        assert wait_for(lambda: cap.attempts >= 2)
        fifo.write(tone)
        assert wait_for(lambda: status.has("ok", "mic_lost", "ok"))
        assert cap.reconnects >= 1
    finally:
        fifo.hang_up()  # end-of-file unblocks any read, so the stream can close
        cap.stop()


def test_broken_status_listener_does_not_stop_capture(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray
) -> None:
    alsa_sandbox.add_file_device("voxtest_mono16k", speech, 16000)

    def listener(status: MicStatus) -> None:
        raise RuntimeError("listener bug")

    settings = AudioSettings(device="mono16k", sample_rate=16000, channels=1)
    with Capture(settings, on_status=listener, pace_check=False) as cap:
        assert wait_for(lambda: cap.status == "ok")
        assert len(read_samples(cap, 1600)) == 1600


def test_channel_beyond_device_is_a_clear_error(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    alsa_sandbox.add_file_device("voxtest_mono16k", speech, 16000)
    settings = AudioSettings(
        device="mono16k", sample_rate=16000, channels=1, channel=1, reconnect_min_s=0.05
    )
    status = StatusLog()
    with caplog.at_level("WARNING", logger="voxd.audio"), Capture(settings, on_status=status):
        assert wait_for(lambda: status.has("mic_lost"))
    assert "audio.channel = 1 but the stream has only 1 channel(s)" in caplog.text


def add_mono_device(box: AlsaSandbox, name: str, source: str) -> None:
    """A device with exactly one input channel: ALSA's multi plugin binding one
    channel of ``source`` (file devices themselves take any channel count)."""
    box.append_config(
        f'pcm.{name} {{\n    type multi\n    slaves.a.pcm "{source}"\n'
        "    slaves.a.channels 1\n    bindings.0.slave a\n    bindings.0.channel 0\n}\n"
    )


def capture_thread_alive() -> bool:
    return any(t.name == "voxd-capture" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channel": 3}, "audio.channel = 3 but the stream has only 1 channel(s) ("),
        ({"channel": 3, "channels": 1}, "audio.channel = 3 but the stream has only 1 channel(s)"),
        ({"channels": 2}, "audio.channels = 2 but 'voxtest_mono' has only 1 input channel(s)"),
    ],
)
def test_channel_beyond_a_mono_device_is_reported_as_mic_lost_and_retried(
    alsa_sandbox: AlsaSandbox,
    speech: np.ndarray,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
    message: str,
) -> None:
    alsa_sandbox.add_file_device("voxtest_any", speech, 16000)
    add_mono_device(alsa_sandbox, "voxtest_mono", "voxtest_any")
    assert {d.name: d.max_input_channels for d in list_input_devices()}["voxtest_mono"] == 1
    settings = AudioSettings(
        device="voxtest_mono", sample_rate=16000, reconnect_min_s=0.05, reconnect_max_s=0.1,
        **options,
    )  # fmt: skip
    status = StatusLog()
    with caplog.at_level("INFO", logger="voxd.audio"), Capture(settings, on_status=status) as cap:
        assert wait_for(lambda: status.has("mic_lost"))
        assert wait_for(lambda: cap.attempts >= 3)  # retried with backoff, thread still alive
        assert capture_thread_alive()
        assert cap.read(timeout=0.1) is None
    assert message in caplog.text
    assert "'voxtest_mono' offers 1" in caplog.text or "has only 1 input channel" in caplog.text
    assert status.seen == ["mic_lost"]


class PacedWriter:
    """Feeds a FIFO device a signal at real-time pace (20 ms chunks, looped), as a
    live microphone would deliver it, until stopped."""

    CHUNK = RATE // 50

    def __init__(self, fifo: AlsaFifoDevice, signal: np.ndarray) -> None:
        self.fifo = fifo
        self.signal = signal
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-writer", daemon=True)

    def __enter__(self) -> PacedWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        assert self.fifo.fd is not None
        os.set_blocking(self.fifo.fd, False)  # a full pipe drops audio, as a room would
        start, sent = time.monotonic(), 0
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * RATE / self.CHUNK) + 1
            while sent < due:
                at = sent * self.CHUNK % len(self.signal)
                chunk = np.resize(self.signal[at:], self.CHUNK)
                try:
                    self.fifo.write(chunk)
                    self.written += len(chunk)
                except BlockingIOError:
                    pass
                sent += 1
            time.sleep(0.005)


def tone(seconds: float, hz: float = 300.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.25 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_device_faster_than_real_time_is_lost_until_a_live_one_appears(
    alsa_sandbox: AlsaSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A file device runs past its end at CPU speed (zeros); it is no microphone."""
    alsa_sandbox.add_file_device("voxtest_mic", tone(0.5), 16000)
    status = StatusLog()
    settings = AudioSettings(
        device="voxtest_mic", sample_rate=16000, channels=1,
        reconnect_min_s=0.05, reconnect_max_s=0.5,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="voxd.audio"), Capture(settings, on_status=status) as cap:
        assert wait_for(lambda: status.has("mic_lost"))
        assert wait_for(lambda: cap.attempts >= 3)  # reopened with backoff, found lying again
        assert "faster than real time" in caplog.text
        assert cap.status == "mic_lost"
        # A live device takes its place: same name, paced by its writer.
        fifo = alsa_sandbox.add_fifo_device("voxtest_mic")
        with PacedWriter(fifo, tone(1.0, hz=440.0)):
            assert wait_for(lambda: status.has("mic_lost", "ok"))
            # Longer than a pace window of live audio: a real-time stream is never lost.
            got = read_samples(cap, int(RATE * (PACE_WINDOW_S + 2)), timeout=60.0)
            assert status.seen == ["mic_lost", "ok"]
        fifo.hang_up()  # end-of-file unblocks the read, so the stream closes at once
    assert np.abs(got[-RATE:]).max() > 0.2  # the tone, not the file device's zeros


def test_blocked_open_is_abandoned_reported_and_recovered(
    alsa_sandbox: AlsaSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO-backed device with no writer blocks open() (PortAudio's probe included)."""
    fifo = alsa_sandbox.add_fifo_device("voxtest_fifo")
    fifo.hang_up()  # no writer: opening the FIFO for reading blocks
    status = StatusLog()
    settings = AudioSettings(
        device="voxtest_fifo", sample_rate=16000, channels=1,
        reconnect_min_s=0.05, reconnect_max_s=0.2,
    )  # fmt: skip
    cap = Capture(settings, on_status=status, open_timeout_s=1.0)
    openers: list[int] = []

    def openers_alive() -> int:
        n = sum(t.name == "voxd-capture-open" and t.is_alive() for t in threading.enumerate())
        openers.append(n)
        return n

    with caplog.at_level("INFO", logger="voxd.audio"):
        cap.start()
        try:
            assert wait_for(lambda: status.has("mic_lost"))
            assert "did not finish within 1 s" in caplog.text
            # Retries while the open stays blocked start no second open.
            assert wait_for(lambda: openers_alive() >= 0 and len(openers) > 5 and cap.attempts >= 5)
            assert max(openers) == 1
            assert "still blocked" in caplog.text
            fifo.reconnect()  # a writer appears: the blocked open completes
            fifo.write(tone(0.5))
            assert wait_for(lambda: status.has("mic_lost", "ok"))
            got = read_samples(cap, RATE // 4)
            assert np.abs(got).max() > 0.2
        finally:
            fifo.reconnect()  # a writer unblocks an open still waiting (if the test failed)
            fifo.hang_up()  # end-of-file unblocks any read, so the stream can close
            cap.stop()
    assert openers_alive() == 0 or wait_for(lambda: openers_alive() == 0)


def test_probe_noise_goes_to_the_log_not_stderr(
    alsa_sandbox: AlsaSandbox, speech: np.ndarray
) -> None:
    """PortAudio's start makes ALSA and JACK print device-probe complaints to stderr."""
    alsa_sandbox.add_file_device("voxtest_mono16k", speech, 16000)
    # A config naming a card that does not exist: ALSA complains while PortAudio probes it.
    alsa_sandbox.append_config("pcm.voxtest_nocard {\n    type hw\n    card 7\n}\n")
    plain = "import pyaudio; pyaudio.PyAudio().terminate()"
    ours = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stdout);"
        "from voxd.audio import list_input_devices, _library_messages;"
        "print([d.name for d in list_input_devices()]);"
        "print('probe', _library_messages.probe_messages)"
    )
    noisy = run_python(plain)
    if not noisy.stderr.strip():
        pytest.skip("PortAudio prints nothing at start here: no noise to silence")
    quiet = run_python(ours)
    assert quiet.returncode == 0, quiet.stderr
    assert "voxtest_mono16k" in quiet.stdout
    assert quiet.stderr.strip() == ""  # nothing printed past voxd's logging
    assert "DEBUG:voxd.audio:" in quiet.stdout  # the messages are in the log, at debug level
    assert "probe 0" not in quiet.stdout


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# -- WAV files ---------------------------------------------------------------------------


def write_wav(
    path: Path,
    frames: np.ndarray,
    rate: int,
    *,
    bits: int,
    is_float: bool = False,
    extensible: bool = False,
) -> None:
    """A WAV file written by hand (the wave module cannot write float or extensible)."""
    x = np.asarray(frames, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    ch = x.shape[1]
    if is_float:
        data = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = np.clip(np.round(x * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        v = np.clip(np.round(x * (2**23 - 1)), -(2**23), 2**23 - 1).astype("<i4")
        data = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = 2 ** (bits - 1) - 1
        data = np.clip(np.round(x * scale), -scale - 1, scale).astype(f"<i{bits // 8}").tobytes()
    tag = 3 if is_float else 1
    align = ch * bits // 8
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, ch, rate, rate * align, align, bits, 22, bits, 0)
        fmt += struct.pack("<H", tag) + guid_tail
    else:
        fmt = struct.pack("<HHIIHH", tag, ch, rate, rate * align, align, bits)
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"LIST", b"INFOjunk!") + chunk(b"data", data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def chunk(cid: bytes, payload: bytes) -> bytes:
    return cid + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def sweep_tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * 500 * t) + 0.2 * np.sin(2 * np.pi * 1500 * t)


@pytest.mark.parametrize(
    ("bits", "is_float", "extensible", "tol"),
    [
        (8, False, False, 2e-2),
        (16, False, False, 1e-4),
        (24, False, False, 1e-5),
        (32, False, False, 1e-5),
        (32, True, False, 1e-5),
        (64, True, False, 1e-5),
        (16, False, True, 1e-4),
        (32, True, True, 1e-5),
    ],
)
@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_read_wav_formats(
    tmp_path: Path, bits: int, is_float: bool, extensible: bool, tol: float, rate: int
) -> None:
    path = tmp_path / "x.wav"
    write_wav(path, sweep_tone(rate), rate, bits=bits, is_float=is_float, extensible=extensible)
    got = read_wav(path)
    expected = sweep_tone(RATE)
    assert len(got) == len(expected)
    assert got.dtype == np.float32
    mid = slice(200, -200)  # the band-limited edges differ a little
    assert np.max(np.abs(got[mid] - expected[mid])) < tol + (2e-4 if rate != RATE else 0)


def test_read_wav_stereo_mix_and_pick(tmp_path: Path) -> None:
    t = np.arange(48000) / 48000
    left, right = 0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 700 * t)
    path = tmp_path / "st.wav"
    write_wav(path, np.stack([left, right], 1), 48000, bits=16)
    mix = read_wav(path)
    assert np.allclose(mix, resample(((left + right) / 2).astype(np.float32), 48000), atol=1e-4)
    right16 = read_wav(path, channel=1)
    assert np.allclose(right16, resample(right.astype(np.float32), 48000), atol=1e-4)
    with pytest.raises(ValueError, match="channel 2 does not exist"):
        read_wav(path, channel=2)


def test_read_wav_matches_the_wave_module(tmp_path: Path) -> None:
    x = (np.random.default_rng(0).standard_normal(RATE) * 3000).astype("<i2")
    path = tmp_path / "w.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.tobytes())
    assert np.array_equal(read_wav(path), x.astype(np.float32) / 32768)


PCM16_FMT = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a WAV file"),
        (b"ID3\x03 this is an mp3", "not a WAV file"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no 'fmt ' chunk"),
        (b"RIFF\x1c\x00\x00\x00WAVE" + chunk(b"fmt ", PCM16_FMT), "no 'data' chunk"),
        (b"RIFF\x0c\x00\x00\x00WAVE" + chunk(b"fmt ", b"\x01\x00"), "too short"),
    ],
)
def test_read_wav_rejects_broken_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_wav(path)


@pytest.mark.parametrize(
    ("tag", "bits", "message"),
    [
        (2, 4, "encoding 0x0002 is not supported"),
        (1, 12, "12-bit integer"),
        (3, 16, "16-bit float"),
    ],
)
def test_read_wav_rejects_unsupported_encodings(
    tmp_path: Path, tag: int, bits: int, message: str
) -> None:
    fmt = struct.pack("<HHIIHH", tag, 1, 8000, 8000 * 2, max(bits // 8, 1), bits)
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"data", b"\x00" * 64)
    path = tmp_path / "enc.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(ValueError, match=message):
        read_wav(path)


def test_read_wav_tolerates_streamed_size_fields(tmp_path: Path) -> None:
    """WAVs written by a stream (arecord to a pipe) carry 0xFFFFFFFF sizes."""
    x = (np.arange(1000) % 100 * 100).astype("<i2")
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16)
    data = b"data" + struct.pack("<I", 0xFFFFFFFF) + x.tobytes()
    path = tmp_path / "stream.wav"
    path.write_bytes(b"RIFF\xff\xff\xff\xffWAVE" + chunk(b"fmt ", fmt) + data)
    assert np.array_equal(read_wav(path), x.astype(np.float32) / 32768)
