"""Energy endpointer: finds utterances in a 16 kHz stream and cuts out their audio.

Audio is judged in frames of ``frame_ms``. Each frame's energy (dBFS, RMS
relative to full scale) is compared with an adaptive noise floor:

* the floor follows the energy down quickly and up slowly (time constant
  ``floor_adapt_s``), only outside speech, never below ``min_floor_dbfs``;
* ``start_frames`` consecutive frames above floor + ``start_db`` start a
  *candidate*; frames above floor + ``stop_db`` keep it going (hysteresis),
  and ``hangover_ms`` below that level end it;
* a candidate becomes an utterance once it holds ``min_speech_ms`` of voiced
  frames. Until then nothing is emitted, so clicks and blips never reach the
  engine; a candidate that ends sooner is dropped;
* an utterance's audio is ``preroll_ms`` before the start (soft onsets are
  quieter than the start threshold), the speech, and the hangover;
* ``max_utterance_s`` of audio forces an end ("max_length"); if speech goes
  on, the next utterance starts on the very next frame, so nothing is lost
  and nothing is sent twice.

An optional :class:`SpeechJudge` (Silero VAD) sees every frame. With one, a
start also needs the mean speech probability of the start frames to reach
the threshold, and a frame only counts as voiced while its probability is
above ``threshold - 0.15`` (Silero's own exit hysteresis), so loud
non-speech neither starts nor prolongs an utterance.

Everything is frame-synchronous from the first sample of the stream: how the
stream is cut into ``process`` calls changes neither the events nor the audio.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from voxd.config import EndpointSettings
from voxd.events import SAMPLE_RATE, EndReason

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# The floor falls with this time constant: fast enough to find the noise
# level again within a few frames after a loud stretch, slow enough that a
# single dropout frame does not drag the floor to the bottom.
FLOOR_DOWN_S = 0.1
# A frame stays voiced while the VAD says at least threshold - this.
VAD_EXIT_MARGIN = 0.15
_SILENT_DBFS = -120.0  # energy of digital silence (log of zero guarded)


class SpeechJudge(Protocol):
    """Second opinion on a frame: probability (0..1) that it is speech.

    Called once per frame, in stream order (recurrent models keep state).
    """

    def __call__(self, frame: FloatArray, /) -> float: ...


@dataclass(frozen=True)
class SpeechStart:
    t: float  # seconds from the stream start to the speech onset
    audio_t: float  # where the utterance audio begins (t minus the pre-roll)


@dataclass(frozen=True, eq=False)
class Audio:
    samples: FloatArray  # audio for the engine, continuing the utterance
    t: float  # stream time of samples[0]


@dataclass(frozen=True)
class SpeechEnd:
    t: float  # end of the last voiced frame ("silence"), or the cut ("max_length")
    reason: EndReason
    audio_t: float  # where the utterance audio ends (includes the hangover)
    silence: int = 0  # samples of the utterance's audio after t (the hangover)


EndpointEvent = SpeechStart | Audio | SpeechEnd


class _Mode(enum.Enum):
    SILENCE = "silence"
    CANDIDATE = "candidate"  # started, not yet long enough to be speech
    SPEECH = "speech"


def frame_energy_dbfs(frames: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """RMS level of each row in dB relative to a full-scale square wave."""
    ms = np.mean(np.square(frames, dtype=np.float64), axis=-1)
    return np.asarray(10.0 * np.log10(np.maximum(ms, 10.0 ** (_SILENT_DBFS / 10.0))))


@dataclass
class _Utterance:
    """Bookkeeping for the candidate or utterance in progress."""

    onset: int  # frame index of the first start frame
    audio_start: int  # sample index where its audio begins
    # (frame index, frame) held back while a candidate: pre-roll, start frames, more
    frames: list[tuple[int, FloatArray]] = field(default_factory=list)
    voiced: int = 0  # voiced frames so far
    silence_run: int = 0  # consecutive unvoiced frames
    last_voiced_end: int = 0  # frame index just after the last voiced frame
    samples: int = 0  # audio samples given to the engine


class Endpointer:
    """Cuts a stream of float32 mono samples into utterances.

    ``process(samples)`` returns the events completed by these samples:
    ``SpeechStart``, then ``Audio`` blocks, then ``SpeechEnd`` for each
    utterance. ``flush()`` ends the stream (an utterance in progress ends
    with reason "shutdown").
    """

    def __init__(
        self,
        settings: EndpointSettings | None = None,
        *,
        judge: SpeechJudge | None = None,
        judge_threshold: float = 0.5,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        s = settings or EndpointSettings()
        self.settings = s
        self.judge = judge
        self.judge_threshold = judge_threshold
        self.sample_rate = sample_rate
        self.frame_len = sample_rate * s.frame_ms // 1000
        frame_s = self.frame_len / sample_rate
        self._preroll_frames = math.ceil(s.preroll_ms / s.frame_ms)
        self._min_speech_frames = max(math.ceil(s.min_speech_ms / s.frame_ms), s.start_frames)
        self._hangover_frames = max(math.ceil(s.hangover_ms / s.frame_ms), 1)
        self._max_samples = max(int(round(s.max_utterance_s * sample_rate)), self.frame_len)
        self._alpha_up = 1.0 - math.exp(-frame_s / s.floor_adapt_s)
        self._alpha_down = 1.0 - math.exp(-frame_s / min(FLOOR_DOWN_S, s.floor_adapt_s))
        self.reset()

    def reset(self) -> None:
        """Start a new stream: time 0, no floor, no utterance."""
        self._pending: FloatArray = np.zeros(0, dtype=np.float32)
        self._frame_index = 0  # index of the next frame to judge
        self._floor: float | None = None
        self._mode = _Mode.SILENCE
        self._utt: _Utterance | None = None
        self._loud_run = 0
        self._emitted_upto = 0  # sample index: audio before it was already sent
        keep = self._preroll_frames + self.settings.start_frames
        self._history: deque[tuple[int, FloatArray]] = deque(maxlen=keep)
        self._probs: deque[float] = deque(maxlen=self.settings.start_frames)
        self._heard_speech = False  # an utterance was confirmed since the reset
        self._sound_end = 0  # sample just after the last voiced (or loud) frame

    @property
    def floor_dbfs(self) -> float | None:
        """Current noise floor estimate (None before the first frame)."""
        return self._floor

    @property
    def in_speech(self) -> bool:
        """True while a confirmed utterance is in progress."""
        return self._mode is _Mode.SPEECH

    @property
    def trailing_silence(self) -> int:
        """Samples given since the last voiced frame of confirmed speech.

        What a flush may count as padding (``Stream.flush(silence=...)``) when
        someone else decided the end, e.g. a Wyoming client's own voice
        activity detection. 0 while no utterance was confirmed and while a
        candidate is open; a loud frame after the speech counts as sound,
        so the figure errs toward a plain flush.
        """
        if not self._heard_speech or self._mode is _Mode.CANDIDATE:
            return 0
        given = self._frame_index * self.frame_len + len(self._pending)
        return max(given - self._sound_end, 0)

    def process(self, samples: npt.NDArray[np.floating[Any]]) -> list[EndpointEvent]:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = len(buf) // self.frame_len
        frames = buf[: n * self.frame_len].reshape(n, self.frame_len)
        self._pending = buf[n * self.frame_len :].copy()
        energies = frame_energy_dbfs(frames)
        events: list[EndpointEvent] = []
        for frame, energy in zip(frames, energies, strict=True):
            self._step(frame.copy(), float(energy), events)
        return _merge_audio(events)

    def flush(self) -> list[EndpointEvent]:
        """End of stream: finish (or drop) the utterance in progress; then reset."""
        events: list[EndpointEvent] = []
        utt = self._utt
        if (
            utt is not None
            and self._mode is _Mode.CANDIDATE
            and utt.voiced >= self._min_speech_frames
        ):
            self._confirm(events)
        if utt is not None and self._mode is _Mode.SPEECH:
            if len(self._pending):
                self._emit_audio(self._pending, self._frame_index * self.frame_len, events)
            self._end(self._emitted_upto, "shutdown", events)
        elif utt is not None:
            log.debug(
                "endpoint: candidate at %.2fs dropped at end of stream", self._time_f(utt.onset)
            )
        self.reset()
        return _merge_audio(events)

    # -- per-frame state machine -------------------------------------------------

    def _step(self, frame: FloatArray, energy: float, events: list[EndpointEvent]) -> None:
        i = self._frame_index
        self._frame_index += 1
        prob = self.judge(frame) if self.judge is not None else 1.0
        self._probs.append(prob)
        if self._floor is None:
            self._floor = max(energy, self.settings.min_floor_dbfs)
        if self._mode is _Mode.SILENCE:
            self._step_silence(i, frame, energy, events)
        else:
            self._step_active(i, frame, energy, prob, events)

    def _step_silence(
        self, i: int, frame: FloatArray, energy: float, ev: list[EndpointEvent]
    ) -> None:
        assert self._floor is not None
        self._history.append((i, frame))
        loud = energy > self._floor + self.settings.start_db
        self._loud_run = self._loud_run + 1 if loud else 0
        if loud:
            self._sound_end = (i + 1) * self.frame_len
        self._track_floor(energy)
        if self._loud_run < self.settings.start_frames:
            return
        if self.judge is not None:
            agree = float(np.mean(self._probs)) >= self.judge_threshold
            if not agree:
                return  # loud but not speech; the next frame is judged afresh
        self._begin(i - self.settings.start_frames + 1, ev)

    def _step_active(
        self, i: int, frame: FloatArray, energy: float, prob: float, ev: list[EndpointEvent]
    ) -> None:
        assert self._floor is not None and self._utt is not None
        utt = self._utt
        voiced = energy > self._floor + self.settings.stop_db and (
            self.judge is None or prob >= self.judge_threshold - VAD_EXIT_MARGIN
        )
        if voiced:
            utt.voiced += 1
            utt.silence_run = 0
            utt.last_voiced_end = i + 1
            self._sound_end = (i + 1) * self.frame_len
        else:
            utt.silence_run += 1
        if self._mode is _Mode.CANDIDATE:
            utt.frames.append((i, frame))
            if utt.voiced >= self._min_speech_frames:
                self._confirm(ev)
            elif utt.silence_run >= self._hangover_frames:
                self._drop_candidate()
            return
        self._emit_audio(frame, i * self.frame_len, ev)
        if utt.silence_run >= self._hangover_frames:
            self._end(utt.last_voiced_end * self.frame_len, "silence", ev)
        elif utt.samples >= self._max_samples:
            self._split(i, voiced, ev)

    def _track_floor(self, energy: float) -> None:
        assert self._floor is not None
        alpha = self._alpha_down if energy < self._floor else self._alpha_up
        self._floor = max(
            self._floor + alpha * (energy - self._floor), self.settings.min_floor_dbfs
        )

    # -- transitions ---------------------------------------------------------------

    def _begin(self, onset: int, ev: list[EndpointEvent]) -> None:
        """Start frames seen: open a candidate holding the pre-roll and start frames."""
        # Sent audio ends on a frame boundary, so whole frames are kept or left out.
        first = max(onset - self._preroll_frames, self._emitted_upto // self.frame_len)
        held = [(j, f) for j, f in self._history if j >= first]
        n = self.settings.start_frames
        self._utt = _Utterance(
            onset=onset,
            audio_start=held[0][0] * self.frame_len,
            frames=held,
            voiced=n,
            last_voiced_end=onset + n,
        )
        self._history.clear()
        self._loud_run = 0
        self._mode = _Mode.CANDIDATE
        log.debug("endpoint: candidate at %.2fs", self._time_f(onset))
        if self._utt.voiced >= self._min_speech_frames:
            self._confirm(ev)

    def _confirm(self, ev: list[EndpointEvent]) -> None:
        """The candidate is long enough: announce it and release the held audio."""
        utt = self._utt
        assert utt is not None
        ev.append(SpeechStart(self._time_f(utt.onset), self._time(utt.audio_start)))
        self._heard_speech = True
        held, utt.frames = utt.frames, []
        self._emit_audio(np.concatenate([f for _, f in held]), utt.audio_start, ev)
        self._mode = _Mode.SPEECH
        log.debug("endpoint: speech from %.2fs", self._time_f(utt.onset))

    def _drop_candidate(self) -> None:
        """Too short to be speech: forget it, but keep its tail as possible pre-roll."""
        utt = self._utt
        assert utt is not None
        log.debug("endpoint: dropped %d-frame blip at %.2fs", utt.voiced, self._time_f(utt.onset))
        self._history.extend(utt.frames)  # the deque keeps only the newest
        self._utt = None
        self._mode = _Mode.SILENCE

    def _end(self, end: int, reason: EndReason, ev: list[EndpointEvent]) -> None:
        """End the utterance; its speech ends at sample ``end``."""
        t, audio_t = self._time(end), self._time(self._emitted_upto)
        ev.append(SpeechEnd(t, reason, audio_t, max(self._emitted_upto - end, 0)))
        log.debug("endpoint: speech ended at %.2fs (%s)", t, reason)
        self._utt = None
        self._mode = _Mode.SILENCE
        self._history.clear()
        self._loud_run = 0

    def _split(self, i: int, voiced: bool, ev: list[EndpointEvent]) -> None:
        """Utterance at its maximum length: end it; if speech goes on, go on with a new one."""
        cut = i + 1
        self._end(cut * self.frame_len, "max_length", ev)
        if not voiced:
            return  # already in the hangover: a new start must be earned
        t = self._time_f(cut)
        ev.append(SpeechStart(t, t))
        self._utt = _Utterance(onset=cut, audio_start=cut * self.frame_len, last_voiced_end=cut)
        self._mode = _Mode.SPEECH

    def _emit_audio(self, samples: FloatArray, start: int, ev: list[EndpointEvent]) -> None:
        assert self._utt is not None
        ev.append(Audio(samples, self._time(start)))
        self._utt.samples += len(samples)
        self._emitted_upto = start + len(samples)

    def _time(self, sample: int) -> float:
        return sample / self.sample_rate

    def _time_f(self, frame: int) -> float:
        return frame * self.frame_len / self.sample_rate


def trailing_silence(
    samples: npt.NDArray[np.floating[Any]], settings: EndpointSettings | None = None
) -> int:
    """Samples of silence after the last speech of a whole recording (16 kHz).

    What the daemon's flush counts as padding when it transcribes this audio
    as a Wyoming request (see :attr:`Endpointer.trailing_silence`).
    """
    endpointer = Endpointer(settings)
    endpointer.process(samples)
    return endpointer.trailing_silence


def _merge_audio(events: list[EndpointEvent]) -> list[EndpointEvent]:
    """Join consecutive Audio events into one (fewer, larger blocks for the engine)."""
    out: list[EndpointEvent] = []
    run: list[Audio] = []
    for e in [*events, None]:
        if isinstance(e, Audio):
            run.append(e)
            continue
        if run:
            samples = run[0].samples if len(run) == 1 else np.concatenate([a.samples for a in run])
            out.append(Audio(samples, run[0].t))
            run = []
        if e is not None:
            out.append(e)
    return out
