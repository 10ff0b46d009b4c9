"""Events that flow from the pipeline to the sinks (MQTT, stdout).

Data flows one way: audio -> endpointer -> engine -> these events -> sinks.
Every event is an immutable dataclass with a ``to_json`` that gives the
payload published on MQTT / printed by the stdout sink.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PipelineState = Literal["idle", "speaking", "processing", "muted", "mic_lost"]


@dataclass(frozen=True)
class TranscriptDelta:
    """A new piece of text of the utterance in progress."""

    utterance_id: str
    seq: int  # 0, 1, 2 ... within the utterance
    text: str  # only complete characters; may start with a space
    audio_time: float  # seconds from the utterance start this piece stands for

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TranscriptFinal:
    """The whole text of one utterance, published once at its end."""

    utterance_id: str
    text: str
    started_at: float  # wall clock (unix seconds) of the first speech sample
    ended_at: float  # wall clock of the end of speech
    audio_seconds: float  # seconds of audio fed for this utterance
    latency_s: float  # end of speech -> final ready
    reason: str = "silence"  # silence | max_length | command | shutdown | model_eos
    token_ids: tuple[int, ...] = ()
    engine: dict[str, float] = field(default_factory=dict)

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
    queue_depth: int
    overruns: int
    utterances: int
    mic_reconnects: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Event = TranscriptDelta | TranscriptFinal | StateChanged | Stats
