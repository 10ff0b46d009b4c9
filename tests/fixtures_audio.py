"""Fixtures for the audio side: real ALSA capture devices fed from files, and the real Silero model.

ALSA file-backed capture devices
================================

alsa-lib's ``file`` PCM plugin (pcm_file.c) passes a stream through to a
slave PCM and, for capture, can replace what the slave delivered with the
bytes of ``infile``. With the ``null`` plugin as slave this makes a capture
device that "records" a raw file::

    pcm.voxtest_16k {
        type file
        slave.pcm { type null }   # accepts any rate/format/channels, delivers zeros
        file "/dev/null"          # where the plugin copies the stream (required)
        infile "/path/speech.raw" # capture data: raw interleaved S16_LE, no header
        format "raw"              # output file format: raw (no WAV header)
    }
    pcm.default { type null }

What we found (alsa-lib 1.2.8, PortAudio 19.6, PyAudio 0.2.14):

* ``ALSA_CONFIG_PATH`` pointing at this file replaces the whole ALSA
  configuration for the process; PortAudio enumerates the ``pcm.*``
  entries when it is initialised (``PyAudio()``), and a later
  ``PyAudio()`` after ``terminate()`` sees a changed file or variable.
* The config must define ``pcm.default``: without it PortAudio 19.6 aborts
  the process in BuildDeviceList (assertion ``devIdx < numDeviceNames``).
  Including ``</usr/share/alsa/alsa.conf>`` first also works, but drags in
  the host's sound cards and ~/.asoundrc; this private config is hermetic.
* ``infile`` is read as is: its layout must match the rate and channel
  count the stream is opened with, so tests set ``AudioSettings.sample_rate``
  and ``channels``. The null slave accepts anything, so PortAudio reports
  128 channels and 44100 Hz as the device defaults.
* The null slave does not pace anything: the device "records" as fast as
  the CPU allows (about 1500x real time). Capture's queue fills in
  milliseconds and later blocks are dropped (counted as overruns); the first
  ``queue_seconds`` of audio always arrive intact and in order. After the
  end of ``infile`` the device delivers zeros.
* A device whose ``infile`` does not exist fails to open for capture; it is
  still listed, with 0 input channels (playback does not need the infile).
  This is a device that vanished; creating the file brings it back on the
  next PortAudio initialisation.
* With a FIFO as ``infile`` the capture thread blocks in read() while the
  FIFO is empty: a device that stops delivering. Closing the last writer
  gives end-of-file, which unblocks it (Pa_CloseStream waits until then).
  The FIFO must have a writer before PortAudio opens the device, or open()
  blocks; the fixture holds it open O_RDWR so it never blocks on open and
  writes never get EPIPE.

Silero VAD
==========

``silero_model`` downloads the silero-vad wheel with pip (``pip download
--no-deps``, nothing is installed), unpacks the ONNX files under
.cache/silero (git-ignored) and returns the opset 16 full-precision model
``silero_vad/data/silero_vad.onnx``. Tests that need it are skipped when the
download is impossible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from speech import have_espeak, synth, trim_silence

REPO = Path(__file__).resolve().parent.parent
SILERO_CACHE = REPO / ".cache" / "silero"
SILERO_MODEL = "silero_vad/data/silero_vad.onnx"

__all__ = [
    "AlsaFifoDevice",
    "AlsaFileDevice",
    "AlsaSandbox",
    "alsa_sandbox",
    "fetch_silero_model",
    "silero_model",
    "speech_16k",
    "to_s16le",
    "trim_silence",
]


# -- Silero model -----------------------------------------------------------------


def _pick_onnx(names: list[str]) -> str | None:
    """The opset 16, full-precision model: silero_vad.onnx; else any non-half one."""
    onnx = [n for n in names if n.startswith("silero_vad/data/") and n.endswith(".onnx")]
    if SILERO_MODEL in onnx:
        return SILERO_MODEL
    plain = [n for n in onnx if "half" not in n and "sequence" not in n]
    return sorted(plain)[0] if plain else None


def fetch_silero_model(cache: Path = SILERO_CACHE) -> Path:
    """Path of silero_vad.onnx, downloading the silero-vad wheel into ``cache`` once."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("silero_vad-*.whl"))
    if not wheels:
        # Only the wheel file: --no-deps keeps torch and friends away, and
        # `download` installs nothing.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "silero-vad", "-d", str(cache)],
            check=True,
            capture_output=True,
            timeout=600,
        )  # fmt: skip
        wheels = sorted(cache.glob("silero_vad-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no silero_vad wheel in {cache}")
    wheel = wheels[-1]
    out = cache / wheel.stem
    with zipfile.ZipFile(wheel) as z:
        member = _pick_onnx(z.namelist())
        if member is None:
            raise FileNotFoundError(f"{wheel} holds no silero_vad/data/*.onnx")
        target = out / member
        if not target.is_file():
            z.extract(member, out)
    return target


@pytest.fixture(scope="session")
def silero_model() -> Path:
    try:
        return fetch_silero_model()
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile) as e:
        detail = getattr(e, "stderr", b"") or b""
        pytest.skip(f"cannot fetch the Silero VAD model: {e} {detail[-300:]!r}")


# -- speech -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    """About 2.5 s of espeak speech, 16 kHz float32, silence trimmed."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return trim_silence(synth("Please turn on the lights in the kitchen and close the door."))


# -- ALSA devices -------------------------------------------------------------------


def to_s16le(x: np.ndarray) -> bytes:
    """Float samples (frames,) or (frames, channels) as interleaved S16_LE bytes."""
    q = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767)
    return q.astype("<i2").tobytes()


@dataclass
class AlsaFileDevice:
    """A capture PCM that plays back ``path`` (raw S16_LE, interleaved)."""

    name: str
    path: Path
    rate: int
    channels: int
    samples: np.ndarray  # float32 (frames, channels): exactly what the file holds
    data: bytes = field(default=b"", repr=False)  # the file's bytes, for restore()

    def remove(self) -> None:
        """Make the device vanish: its capture side cannot open without the file."""
        self.path.unlink()

    def restore(self) -> None:
        """Bring it back (seen at the next PortAudio initialisation)."""
        self.path.write_bytes(self.data)


@dataclass
class AlsaFifoDevice:
    """A capture PCM reading a FIFO: it delivers exactly what the test writes, when it writes.

    ``write`` feeds audio; when the FIFO is empty the device stalls (the
    capture thread blocks in read). ``hang_up`` closes the writer: the device
    sees end-of-file and delivers zeros from then on; ``reconnect`` opens a
    writer again.
    """

    name: str
    path: Path
    rate: int
    channels: int
    fd: int | None = field(default=None)

    def reconnect(self) -> None:
        if self.fd is None:
            # O_RDWR never blocks on a FIFO, and holding a read end means
            # writes never fail with EPIPE while the device is closed.
            self.fd = os.open(self.path, os.O_RDWR)

    def write(self, x: np.ndarray) -> None:
        data = to_s16le(x)
        if len(data) > 60000:
            raise ValueError("keep FIFO writes under the 64 KiB pipe buffer (they would block)")
        assert self.fd is not None, "reconnect() first"
        os.write(self.fd, data)

    def hang_up(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class AlsaSandbox:
    """A private ALSA configuration for one test, made of file-backed capture PCMs."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.config_path = root / "asound.conf"
        self._extra = ""  # configuration appended by tests, kept across device changes
        self.devices: dict[str, AlsaFileDevice | AlsaFifoDevice] = {}
        monkeypatch.setenv("ALSA_CONFIG_PATH", str(self.config_path))
        monkeypatch.setenv("JACK_NO_START_SERVER", "1")  # PortAudio also probes JACK
        self._write_config()

    def add_file_device(self, name: str, audio: np.ndarray, rate: int) -> AlsaFileDevice:
        """A device 'recording' ``audio`` ((frames,) or (frames, channels) floats) at ``rate``."""
        x = np.asarray(audio, dtype=np.float32)
        x = x[:, None] if x.ndim == 1 else x
        path = self.root / f"{name}.raw"
        data = to_s16le(x)
        path.write_bytes(data)
        stored = np.frombuffer(data, dtype="<i2").reshape(-1, x.shape[1])
        samples = stored.astype(np.float32) / 32768.0  # what capture must give back
        dev = AlsaFileDevice(name, path, rate, x.shape[1], samples, data)
        self.devices[name] = dev
        self._write_config()
        return dev

    def add_fifo_device(self, name: str, rate: int = 16000, channels: int = 1) -> AlsaFifoDevice:
        path = self.root / f"{name}.fifo"
        os.mkfifo(path)
        dev = AlsaFifoDevice(name, path, rate, channels)
        dev.reconnect()
        self.devices[name] = dev
        self._write_config()
        return dev

    def _write_config(self) -> None:
        pcms = [_file_pcm(name, d.path) for name, d in self.devices.items()]
        # PortAudio 19.6 aborts while enumerating if there is no pcm.default.
        pcms.append("pcm.default {\n    type null\n}\n")
        self._replace_config("\n".join(pcms) + self._extra)

    def append_config(self, text: str) -> None:
        """More ALSA configuration (kept when devices are added later)."""
        self._extra += text
        self._replace_config(self.config_path.read_text() + text)

    def _replace_config(self, text: str) -> None:
        # Atomically: a capture reopening in the background (PortAudio enumerates
        # devices then) must never read a half-written file, which aborts alsa-lib.
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def close(self) -> None:
        for d in self.devices.values():
            if isinstance(d, AlsaFifoDevice):
                d.hang_up()


def _file_pcm(name: str, infile: Path) -> str:
    return (
        f"pcm.{name} {{\n"
        "    type file\n"
        "    slave.pcm { type null }\n"
        '    file "/dev/null"\n'
        f'    infile "{infile}"\n'
        '    format "raw"\n'
        "}\n"
    )


@pytest.fixture
def alsa_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlsaSandbox]:
    """ALSA for this test only: ALSA_CONFIG_PATH points at a config the test fills."""
    pytest.importorskip("pyaudio")
    root = tmp_path / "alsa"
    root.mkdir()
    box = AlsaSandbox(root, monkeypatch)
    yield box
    box.close()
