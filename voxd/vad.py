"""Silero VAD (ONNX) as a second opinion for the endpointer.

The energy endpointer is fooled by loud non-speech (fans, music, clatter);
Silero VAD is a small recurrent network that tells speech from other sound.
It runs on fixed windows (512 samples at 16 kHz) and carries a recurrent
state from one window to the next, so it must see the audio in order.

Two model layouts are understood, found by their input names:

* v5 and later: inputs ``input`` [batch, samples], ``state`` [2, batch, 128]
  and (optionally) ``sr``; outputs probability and new state. These models
  expect the last 64 samples of the previous window (32 at 8 kHz) prepended
  to each window as context.
* v4 and earlier: inputs ``input``, ``sr``, ``h`` and ``c`` [2, batch, 64];
  outputs probability, ``hn``, ``cn``. No context.

onnxruntime is imported when a model is loaded, so voxd imports without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voxd.events import SAMPLE_RATE

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

_WINDOW = {16000: 512, 8000: 256}
_CONTEXT = {16000: 64, 8000: 32}


class VadModelError(ValueError):
    """The file is not a Silero VAD model this module can drive."""


@dataclass(frozen=True)
class _Layout:
    """Names and shapes of one Silero model generation's inputs and outputs."""

    state_inputs: tuple[str, ...]  # recurrent state tensors, fed back each window
    state_shapes: tuple[tuple[int, ...], ...]
    has_sr: bool
    uses_context: bool


def _fixed_shape(shape: list[Any], name: str) -> tuple[int, ...]:
    """A state shape with the batch axis (symbolic in the model) set to 1."""
    dims = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 1:
            dims.append(1)  # [2, batch, hidden]: batch of one
        else:
            dims.append(128 if name == "state" else 64)
    return tuple(dims)


def _detect_layout(session: Any, path: Path) -> _Layout:
    inputs = {i.name: i for i in session.get_inputs()}
    names = sorted(inputs)
    if "input" not in inputs:
        raise VadModelError(f"{path} is not a Silero VAD model: it has inputs {names}, no 'input'")
    if "state" in inputs:
        state: tuple[str, ...] = ("state",)
        context = True
    elif "h" in inputs and "c" in inputs:
        state = ("h", "c")
        context = False
    else:
        raise VadModelError(
            f"{path} is not a Silero VAD model: it has inputs {names}; expected 'input' with "
            "'state' (Silero v5+) or 'h' and 'c' (Silero v4)"
        )
    if len(session.get_outputs()) != 1 + len(state):
        outs = [o.name for o in session.get_outputs()]
        raise VadModelError(f"{path} is not a Silero VAD model: unexpected outputs {outs}")
    shapes = tuple(_fixed_shape(list(inputs[n].shape), n) for n in state)
    return _Layout(state, shapes, "sr" in inputs, context)


def _open_session(path: Path, threads: int) -> Any:
    """An onnxruntime InferenceSession (untyped library, hence Any)."""
    try:
        import onnxruntime as ort  # type: ignore[import-untyped]
    except ImportError as e:  # optional dependency
        raise ImportError("Silero VAD needs onnxruntime: pip install 'voxd[vad]'") from e
    opts = ort.SessionOptions()
    # The model is tiny: one thread is fastest and leaves the cores to the engine.
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the exported graphs trigger harmless warnings
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise VadModelError(f"{path} is not a loadable ONNX model: {e}") from e


class SileroVad:
    """Speech probability for 16 kHz (or 8 kHz) audio from a Silero VAD ONNX model.

    ``probability(window)`` scores exactly one window (``window_size``
    samples). Calling the object with samples of any length (``vad(frame)``)
    buffers them, scores every complete window, and returns the latest
    probability: that is the ``SpeechJudge`` the endpointer wants.
    """

    def __init__(self, model_path: Path | str, *, sample_rate: int = SAMPLE_RATE, threads: int = 1):
        path = Path(model_path)
        if sample_rate not in _WINDOW:
            raise ValueError(f"Silero VAD runs at 16000 or 8000 Hz, not {sample_rate}")
        if not path.is_file():
            raise FileNotFoundError(
                f"Silero VAD model not found: {path} (set vad.model_path to silero_vad.onnx)"
            )
        self.model_path = path
        self.sample_rate = sample_rate
        self.window_size = _WINDOW[sample_rate]
        self._session = _open_session(path, threads)
        self._layout = _detect_layout(self._session, path)
        self._context_size = _CONTEXT[sample_rate] if self._layout.uses_context else 0
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.reset()
        self._check_runs()
        log.info(
            "silero vad loaded: %s (%s layout, %d-sample windows)",
            path,
            "state" if self._layout.uses_context else "h/c",
            self.window_size,
        )

    def reset(self) -> None:
        """Forget the recurrent state, context, pending samples and last probability."""
        self._states = [np.zeros(s, dtype=np.float32) for s in self._layout.state_shapes]
        self._context: FloatArray = np.zeros(self._context_size, dtype=np.float32)
        self._pending: FloatArray = np.zeros(0, dtype=np.float32)
        self._last = 0.0

    def _check_runs(self) -> None:
        """Run one silent window, so a wrong model fails at load, not mid-stream."""
        try:
            p = self.probability(np.zeros(self.window_size, dtype=np.float32))
        except Exception as e:  # onnxruntime raises its own exception types
            raise VadModelError(f"{self.model_path} does not run as a Silero VAD model: {e}") from e
        if not 0.0 <= p <= 1.0:
            raise VadModelError(
                f"{self.model_path} is not a Silero VAD model: output {p} is not a probability"
            )
        self.reset()

    def probability(self, window: npt.NDArray[np.floating[Any]]) -> float:
        """Speech probability of the next window of exactly ``window_size`` samples."""
        x = np.asarray(window, dtype=np.float32).reshape(-1)
        if len(x) != self.window_size:
            raise ValueError(
                f"Silero VAD needs windows of {self.window_size} samples at "
                f"{self.sample_rate} Hz, got {len(x)}"
            )
        if self._context_size:
            model_in = np.concatenate([self._context, x])
            self._context = x[-self._context_size :].copy()
        else:
            model_in = x
        feeds: dict[str, npt.NDArray[Any]] = {"input": model_in[None, :]}
        feeds.update(zip(self._layout.state_inputs, self._states, strict=True))
        if self._layout.has_sr:
            feeds["sr"] = self._sr
        outs = self._session.run(None, feeds)
        self._states = [np.asarray(o, dtype=np.float32) for o in outs[1:]]
        self._last = float(np.asarray(outs[0]).reshape(-1)[0])
        return self._last

    def __call__(self, samples: npt.NDArray[np.floating[Any]]) -> float:
        """Feed samples of any length; the probability of the latest complete window."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = len(buf) // self.window_size
        for i in range(n):
            self.probability(buf[i * self.window_size : (i + 1) * self.window_size])
        self._pending = buf[n * self.window_size :].copy()
        return self._last
