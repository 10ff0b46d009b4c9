"""Wake-word detection for the pipeline's gate (``[wakeword]``), with microWakeWord.

pymicro-wakeword runs microWakeWord's small streaming TFLite models (about
50-80 kB each, a 4.8 MB TFLite runtime) on 16 kHz 16-bit audio in 10 ms
steps: each step gives one feature window, every ``stride`` windows (three,
30 ms) the model gives a probability, and the mean of the last
``sliding_window_size`` probabilities is compared with the cutoff. This
module feeds it exactly that way and says where in the audio the cutoff was
crossed, so the pipeline can cut there.

A detection is followed by a refractory time (``refractory_s``, in audio
samples) during which the probability staying high over the same phrase is
not a second detection.

The package is imported only when the gate is enabled: voxd without
``[wakeword]`` never loads the TFLite runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from voxd.config import BUILTIN_WAKE_WORDS, ConfigError, WakewordSettings
from voxd.events import SAMPLE_RATE

if TYPE_CHECKING:
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

log = logging.getLogger(__name__)

STEP = 160  # samples: the 10 ms step microWakeWord's front end takes

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Detection:
    """The cutoff was crossed at the end of the 10 ms step ending at ``offset``."""

    probability: float
    offset: int  # samples into the block given to ``process`` (0..len(block))


def load_model(model: str) -> tuple[MicroWakeWord, MicroWakeWordFeatures]:
    try:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
    except ImportError as err:
        raise ConfigError(
            [f"wakeword.enabled: the pymicro-wakeword package is missing ({err}); install it"]
        ) from None
    try:
        if model in BUILTIN_WAKE_WORDS:
            mww = MicroWakeWord.from_builtin(Model(model))
        else:
            mww = MicroWakeWord.from_config(Path(model))
    except (OSError, ValueError, KeyError, TypeError) as err:
        # A missing or malformed .json/.tflite (the runtime itself raises ValueError).
        raise ConfigError(
            [f"wakeword.model: cannot load {model!r}: {type(err).__name__}: {err}"]
        ) from None
    return mww, MicroWakeWordFeatures()


class WakeWordDetector:
    """A streaming detector: float32 16 kHz blocks in, detections out (one thread only)."""

    def __init__(self, settings: WakewordSettings) -> None:
        self._model, self._features = load_model(settings.model)
        if settings.threshold is not None:
            self._model.probability_cutoff = settings.threshold
        self.name: str = self._model.id
        self.phrase: str = self._model.wake_word
        self.cutoff: float = float(self._model.probability_cutoff)
        self._refractory = int(round(settings.refractory_s * SAMPLE_RATE))
        self._pending = np.zeros(0, dtype=np.int16)  # under one step, carried to the next block
        self._since = self._refractory  # samples since the last detection
        self.max_probability = 0.0  # highest probability so far (diagnostics)
        log.info(
            "wake word %s (%r): cutoff %.2f, window of %d probabilities",
            self.name,
            self.phrase,
            self.cutoff,
            self._model.sliding_window_size,
        )

    def process(self, block: FloatArray) -> list[Detection]:
        """Detections whose 10 ms step ended in this block, in order."""
        pcm = (np.clip(block, -1.0, 1.0) * 32767.0).astype(np.int16)
        carried = len(self._pending)
        buf = np.concatenate([self._pending, pcm]) if carried else pcm
        whole = len(buf) // STEP * STEP
        found: list[Detection] = []
        for start in range(0, whole, STEP):
            self._since += STEP
            prob = self._step(buf[start : start + STEP].tobytes())
            if prob is None or prob <= self.cutoff or self._since < self._refractory:
                continue
            self._since = 0
            found.append(Detection(prob, max(start + STEP - carried, 0)))
        self._pending = buf[whole:].copy()
        return found

    def _step(self, pcm: bytes) -> float | None:
        prob: float | None = None
        for features in self._features.process_streaming(pcm):
            p = self._model.process_streaming_prob(features)
            if p is not None:
                prob = p if prob is None else max(prob, p)
        if prob is not None:
            self.max_probability = max(self.max_probability, prob)
        return prob

    def reset(self) -> None:
        """Forget the audio heard so far (after mute: the next phrase starts afresh)."""
        self._model.reset()
        self._features.reset()
        self._pending = np.zeros(0, dtype=np.int16)
        self._since = self._refractory

    def close(self) -> None:
        self._model.close()
