"""Speech for tests, made with espeak-ng (real synthesized speech, no files shipped)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

# The sentences the engine and quantization tests speak (and bench/token_agreement.py).
SENTENCES = {
    "hello": "hello world, this is a test of the engine",
    "numbers": "set the timer for twenty five minutes please",
    "weather": "what is the weather going to be like tomorrow morning",
}


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def synth(text: str, rate: int = 16000, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
    """Speak text with espeak-ng; float32 mono at `rate` Hz in [-1, 1]."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        # a sanitizer preloaded for the engine (scripts/test-all.sh) is not for espeak
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text],
            check=True,
            capture_output=True,
            env=env,
        )
        with wave.open(str(wav)) as w:
            src_rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = pcm.astype(np.float64) / 32768.0
    if src_rate != rate:
        # band-limited resampling via FFT is plenty for test audio
        n_out = int(round(len(x) * rate / src_rate))
        spec = np.fft.rfft(x)
        keep = min(len(spec), n_out // 2 + 1)
        out_spec = np.zeros(n_out // 2 + 1, dtype=complex)
        out_spec[:keep] = spec[:keep]
        x = np.fft.irfft(out_spec, n_out) * (n_out / len(x))
    return x.astype(np.float32)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), dtype=np.float32)


def trim_silence(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading and trailing samples quieter than threshold (espeak pads with silence)."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    return x[loud[0] : loud[-1] + 1] if len(loud) else x[:0]
