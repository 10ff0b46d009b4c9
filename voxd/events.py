"""Events that flow from the pipeline to the sinks (MQTT, stdout).

Data flows one way: audio -> endpointer -> engine -> these events -> sinks.
Every event is an immutable dataclass with a ``to_json`` that gives the
payload published on MQTT / printed by the stdout sink.

An utterance's deltas are closed by exactly one message with its
``utterance_id``: its final (the normal end: the final's text is the whole
text, so no closing delta follows it), or, when the utterance is dropped
without a published final, a closing delta (``end`` = ``"dropped"``). An
utterance that published no delta gets no closing delta.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# The engine's sample rate: capture, WAV files and Wyoming audio are converted
# to 16 kHz mono float32 before they reach it.
SAMPLE_RATE = 16000

# The decoder delay (engine.delay_ms, `voxd transcribe --delay-ms`): 80..2400 ms
# in steps of one 80 ms position. The C engine checks the same rule when a
# stream is made (vx_stream_new in native/src/stream.c answers VX_ERR_ARG).
DELAY_MS_STEP = 80
DELAY_MS_MIN = 80
DELAY_MS_MAX = 2400
DELAY_MS_DEFAULT = 480
DELAY_MS_RULE = f"{DELAY_MS_MIN}..{DELAY_MS_MAX} in steps of {DELAY_MS_STEP}"


def delay_ms_valid(delay_ms: int) -> bool:
    """Whether ``delay_ms`` follows the rule (:data:`DELAY_MS_RULE`)."""
    return DELAY_MS_MIN <= delay_ms <= DELAY_MS_MAX and delay_ms % DELAY_MS_STEP == 0


# Commands a consumer can give (MQTT ``cmd/<name>``); the pipeline applies them.
COMMANDS = frozenset({"mute", "unmute", "flush", "reset"})

PipelineState = Literal["idle", "speaking", "processing", "muted", "mic_lost"]

# Why an utterance ended (TranscriptFinal.reason). The endpointer decides
# silence, max_length and shutdown; the pipeline the others (backlog: the
# engine fell a whole backlog behind, the rest of that speech is lost).
EndReason = Literal[
    "silence", "max_length", "command", "shutdown", "model_eos", "mic_lost", "backlog"
]

DropReason = Literal["reset", "mute", "engine_error", "shutdown", "no_text"]


def to_json_text(data: dict[str, Any]) -> str:
    """Compact JSON, as published and printed; NaN and infinities (invalid JSON) become null."""
    return json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class TranscriptDelta:
    """A new piece of text of the utterance in progress, or the close of a dropped one.

    A normal delta's JSON is ``{utterance_id, seq, text, audio_time}``.

    A closing delta says the utterance was dropped and no final will come:
    its JSON adds ``end`` = ``"dropped"`` and ``reason``, with ``text`` = ""
    and ``seq`` one past the utterance's last delta. ``reason`` is ``reset``
    or ``mute`` (the command), ``engine_error``, ``shutdown`` (stopped
    without finishing it) or ``no_text`` (it ended, e.g. by silence or
    microphone loss, with only whitespace: empty finals are not published).
    ``audio_time`` is then the audio the utterance had, in seconds.
    Consumers that assemble deltas discard the text gathered for it.
    """

    utterance_id: str
    seq: int  # 0, 1, 2 ... within the utterance
    text: str  # only complete characters; may start with a space
    # Where in the utterance's audio this piece came out, in seconds from its
    # first sample (pre-roll included): the end of the 80 ms position the
    # decoder was at, so its words were spoken up to the decoder delay
    # (engine.delay_ms) before that. A place in the audio, not a time of day
    # and not a wait: a lagging engine publishes the piece later, same value.
    audio_time: float
    end: Literal["dropped"] | None = None  # set only on a closing delta
    reason: DropReason | None = None  # why it was dropped (closing delta only)

    @classmethod
    def closing(
        cls, utterance_id: str, seq: int, audio_time: float, reason: DropReason
    ) -> TranscriptDelta:
        return cls(utterance_id, seq, "", audio_time, end="dropped", reason=reason)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.end is None:  # a normal delta keeps its four keys
            del d["end"], d["reason"]
        return d


@dataclass(frozen=True)
class TranscriptFinal:
    """The whole text of one utterance, published once at its end.

    It also closes the utterance's deltas (same ``utterance_id``).
    ``started_at`` and ``ended_at`` date the speech itself (unix seconds),
    whenever the final is delivered. The MQTT sink adds two keys to the
    published JSON when it publishes it (this class does not have them):
    ``replayed`` (bool: true when the final waited in the disk outbox, e.g.
    while the broker was away, instead of going out at once) and ``age_s``
    (float: seconds from the final's creation to that publish). A consumer
    acting on commands can ignore finals that are too old.

    ``latency_s`` is the wait a speaker has: from the end of speech
    (``ended_at``) to the final being ready, in three parts that add up to
    it: ``hangover_s`` (end of speech -> the end was decided: the
    endpointer's silence hangover, or ~0 for a command, a cut or the model's
    EOS), ``lag_s`` (decided -> the engine had been fed all of the
    utterance's audio: how far the engine was behind) and ``flush_s`` (the
    engine's flush, which decodes the audio still held back, and the final's
    assembly).
    """

    utterance_id: str
    text: str
    started_at: float  # wall clock (unix seconds) of the first speech sample
    ended_at: float  # wall clock of the end of speech (of the last voiced frame)
    audio_seconds: float  # seconds of audio fed for this utterance
    latency_s: float  # end of speech -> final ready: hangover_s + lag_s + flush_s
    reason: EndReason = "silence"
    token_ids: tuple[int, ...] = ()
    engine: dict[str, float] = field(default_factory=dict)
    hangover_s: float = 0.0  # end of speech -> end decided
    lag_s: float = 0.0  # end decided -> engine caught up with the audio
    flush_s: float = 0.0  # engine caught up -> final ready

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return d


@dataclass(frozen=True)
class StateChanged:
    state: PipelineState

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stats:
    uptime_s: float
    real_time_factor: float  # engine seconds per audio second (lower is faster)
    queue_depth: int  # capture blocks waiting to be read
    overruns: int  # capture blocks dropped because nobody read them in time
    utterances: int
    mic_reconnects: int
    # Seconds of audio read from the microphone that the engine has not taken
    # in yet (waiting in the backlog, or in the feed call under way): how far
    # transcription is behind the speaker.
    engine_lag_s: float = 0.0
    wake_detections: int = 0  # wake words detected (``[wakeword]``) since the start

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WakeWordDetected:
    """The wake-word detector heard its phrase (``[wakeword]``): speech may follow.

    ``wake_word`` is the model's name (``okay_nabu``), ``probability`` the
    detector's averaged probability that crossed the cutoff, ``at`` when the
    phrase was heard (unix seconds).
    """

    wake_word: str
    probability: float
    at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Event = TranscriptDelta | TranscriptFinal | StateChanged | Stats | WakeWordDetected
