"""Silero VAD through onnxruntime, with the real model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from voxd.vad import SileroVad, VadModelError  # noqa: E402


def window_probs(vad: SileroVad, x: np.ndarray) -> np.ndarray:
    vad.reset()
    n = vad.window_size
    return np.array([vad.probability(x[i : i + n]) for i in range(0, len(x) - n + 1, n)])


def white_noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * rms).astype(np.float32)


def brown_noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal(int(16000 * seconds)))
    walk -= np.convolve(walk, np.ones(1600) / 1600, mode="same")  # keep it centred
    return (walk / walk.std() * rms).astype(np.float32)


@pytest.fixture(scope="module")
def vad(silero_model: Path) -> SileroVad:
    return SileroVad(silero_model)


def test_speech_scores_high(vad: SileroVad, speech_16k: np.ndarray) -> None:
    p = window_probs(vad, speech_16k)
    assert np.median(p) > 0.9
    assert np.mean(p > 0.5) > 0.7


def test_silence_scores_low(vad: SileroVad) -> None:
    assert window_probs(vad, np.zeros(32000, dtype=np.float32)).max() < 0.1


@pytest.mark.parametrize("rms", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("make", [white_noise, brown_noise])
def test_noise_scores_low(
    vad: SileroVad, make: Callable[[float, float], np.ndarray], rms: float
) -> None:
    p = window_probs(vad, make(3.0, rms))
    assert p.max() < 0.3
    assert p.mean() < 0.1


def test_streaming_call_matches_windows(vad: SileroVad, speech_16k: np.ndarray) -> None:
    """Feeding 20 ms frames through __call__ runs the same windows in the same order."""
    expected = window_probs(vad, speech_16k)
    vad.reset()
    latest = []
    for i in range(0, len(speech_16k) - 319, 320):
        latest.append(vad(speech_16k[i : i + 320]))
    # After frame k, (k+1)*320 samples were fed: the latest complete window is
    # number (k+1)*320 // 512 - 1.
    for k, p in enumerate(latest):
        w = (k + 1) * 320 // 512 - 1
        if w >= 0:
            assert p == pytest.approx(expected[w], abs=1e-6)


def test_reset_gives_repeatable_results(vad: SileroVad, speech_16k: np.ndarray) -> None:
    a = window_probs(vad, speech_16k[:8192])
    b = window_probs(vad, speech_16k[:8192])
    assert np.array_equal(a, b)


def test_window_size_is_enforced(vad: SileroVad) -> None:
    with pytest.raises(ValueError, match="512 samples"):
        vad.probability(np.zeros(320, dtype=np.float32))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Silero VAD model not found"):
        SileroVad(tmp_path / "nope.onnx")


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"this is not a model")
    with pytest.raises(VadModelError, match="not a loadable ONNX model"):
        SileroVad(p)


def test_onnx_model_that_is_not_silero(tmp_path: Path) -> None:
    p = tmp_path / "identity.onnx"
    p.write_bytes(identity_onnx())
    with pytest.raises(VadModelError, match="not a Silero VAD model"):
        SileroVad(p)


# A minimal valid ONNX model (one Identity node, input "x" -> output "y"),
# protobuf-encoded by hand so the test needs no `onnx` package.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(num << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _float_vector(name: str) -> bytes:
    dim = _field(1, _field(1, 4))  # TensorShapeProto.dim { dim_value: 4 }
    tensor = _field(1, 1) + _field(2, dim)  # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor))  # ValueInfoProto


def identity_onnx() -> bytes:
    node = _field(1, "x") + _field(2, "y") + _field(4, "Identity")
    graph = _field(1, node) + _field(2, "g") + _field(11, _float_vector("x"))
    graph += _field(12, _float_vector("y"))
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 8) + _field(7, graph) + _field(8, opset)  # ir_version 8
