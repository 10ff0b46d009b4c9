"""Energy endpointer (and its Silero second opinion) on real espeak speech."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fixtures_audio import trim_silence
from speech import have_espeak, silence, synth

from voxd.config import EndpointSettings
from voxd.endpoint import Audio, Endpointer, EndpointEvent, SpeechEnd, SpeechStart

RATE = 16000
SENTENCES = [
    "Turn on the kitchen lights.",
    "What is the weather like tomorrow?",
    "Set a timer for ten minutes.",
]

needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")


@dataclass
class Utterance:
    start: float
    audio_t: float
    end: float | None = None
    reason: str | None = None
    audio: np.ndarray | None = None


def utterances(events: list[EndpointEvent]) -> list[Utterance]:
    """Events grouped per utterance, checking they come in a valid order."""
    out: list[Utterance] = []
    current: Utterance | None = None
    parts: list[np.ndarray] = []
    for e in events:
        if isinstance(e, SpeechStart):
            assert current is None, "start inside an utterance"
            current, parts = Utterance(e.t, e.audio_t), []
        elif isinstance(e, Audio):
            assert current is not None, "audio outside an utterance"
            assert e.t == pytest.approx(current.audio_t + sum(len(p) for p in parts) / RATE)
            parts.append(e.samples)
        else:
            assert current is not None, "end without a start"
            current.end, current.reason = e.t, e.reason
            current.audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            assert e.audio_t == pytest.approx(current.audio_t + len(current.audio) / RATE)
            out.append(current)
            current = None
    assert current is None, "utterance left open"
    return out


def run(ep: Endpointer, x: np.ndarray, chunk: int | None = None) -> list[EndpointEvent]:
    if chunk is None:
        return ep.process(x) + ep.flush()
    events: list[EndpointEvent] = []
    for i in range(0, len(x), chunk):
        events += ep.process(x[i : i + chunk])
    return events + ep.flush()


def noise(n: int, rms: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * rms).astype(np.float32)


@dataclass
class Scene:
    signal: np.ndarray
    spans: list[tuple[float, float]]  # where each sentence really is


def build_scene(texts: list[str], gap_s: float = 1.5, lead_s: float = 1.0) -> Scene:
    parts, spans, pos = [silence(lead_s)], [], int(lead_s * RATE)
    for text in texts:
        x = trim_silence(synth(text))
        spans.append((pos / RATE, (pos + len(x)) / RATE))
        parts += [x, silence(gap_s)]
        pos += len(x) + int(gap_s * RATE)
    signal = np.concatenate(parts)
    return Scene(signal + noise(len(signal), 0.001), spans)  # -60 dBFS room noise


@pytest.fixture(scope="module")
def three_sentences() -> Scene:
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return build_scene(SENTENCES)


def test_three_sentences_give_three_utterances(three_sentences: Scene) -> None:
    s = EndpointSettings()
    utts = utterances(run(Endpointer(s), three_sentences.signal))
    assert len(utts) == 3
    for u, (start, end) in zip(utts, three_sentences.spans, strict=True):
        assert u.start == pytest.approx(start, abs=0.2)
        assert u.end == pytest.approx(end, abs=0.2)
        assert u.reason == "silence"
        assert u.audio_t == pytest.approx(u.start - s.preroll_ms / 1000)
        # The audio is exactly the stream from pre-roll to the end of the hangover.
        assert u.audio is not None
        i = round(u.audio_t * RATE)
        assert np.array_equal(u.audio, three_sentences.signal[i : i + len(u.audio)])
        assert len(u.audio) / RATE == pytest.approx(
            u.end - u.audio_t + s.hangover_ms / 1000, abs=0.03
        )


@pytest.mark.parametrize("chunk", [1, 7, 160, 320, 333, 4096])
def test_chunking_does_not_change_anything(three_sentences: Scene, chunk: int) -> None:
    whole = utterances(run(Endpointer(), three_sentences.signal))
    split = utterances(run(Endpointer(), three_sentences.signal, chunk))
    assert len(split) == len(whole)
    for a, b in zip(whole, split, strict=True):
        assert (a.start, a.audio_t, a.end, a.reason) == (b.start, b.audio_t, b.end, b.reason)
        assert a.audio is not None and b.audio is not None
        assert np.array_equal(a.audio, b.audio)


def test_random_chunks_give_the_same_events(three_sentences: Scene) -> None:
    x = three_sentences.signal
    cuts = np.sort(np.random.default_rng(3).choice(len(x), size=300, replace=False))
    ep = Endpointer()
    events: list[EndpointEvent] = []
    for piece in np.split(x, cuts):
        events += ep.process(piece)
    events += ep.flush()
    whole = run(Endpointer(), x)

    def key(evs: list[EndpointEvent]) -> list[object]:
        return [e for e in evs if not isinstance(e, Audio)]

    assert key(events) == key(whole)
    audio = np.concatenate([e.samples for e in events if isinstance(e, Audio)])
    assert np.array_equal(audio, np.concatenate([e.samples for e in whole if isinstance(e, Audio)]))


@pytest.mark.parametrize("ms", [5, 60, 120, 200])
def test_blip_shorter_than_min_speech_is_dropped(ms: int) -> None:
    blip = noise(RATE * ms // 1000, 0.3, seed=ms)  # loud: -10 dBFS
    x = np.concatenate([silence(1.0), blip, silence(2.0)])
    x += noise(len(x), 0.001)
    assert run(Endpointer(), x) == []


def test_clicks_in_a_row_are_not_speech() -> None:
    """Single-frame clicks never make start_frames consecutive loud frames."""
    x = silence(4.0) + noise(4 * RATE, 0.001)
    x[RATE::8000] = 0.9
    assert run(Endpointer(), x) == []


@needs_espeak
def test_long_speech_is_split_at_max_length() -> None:
    # Sentences with 0.3 s pauses (shorter than the hangover): one long utterance.
    scene = build_scene(SENTENCES * 3, gap_s=0.3)
    x = np.concatenate([scene.signal, silence(1.5)])
    s = EndpointSettings(max_utterance_s=4.0)
    events = run(Endpointer(s), x)
    utts = utterances(events)
    assert len(utts) >= 3
    assert [u.reason for u in utts[:-1]] == ["max_length"] * (len(utts) - 1)
    assert utts[-1].reason == "silence"
    for u in utts:
        assert u.audio is not None
        assert len(u.audio) <= s.max_utterance_s * RATE
    # No audio lost or sent twice across the cuts while speech went on.
    for a, b in zip(utts, utts[1:], strict=False):
        assert a.audio is not None
        a_end = a.audio_t + len(a.audio) / RATE
        assert b.audio_t >= a_end - 1e-9
        if b.start == a.end:  # continued at once
            assert b.audio_t == pytest.approx(a_end)
    assert sum(b.start == a.end for a, b in zip(utts, utts[1:], strict=False)) >= 1


def test_preroll_never_repeats_sent_audio() -> None:
    """A new start just after an utterance ends takes only unsent audio as pre-roll."""
    s = EndpointSettings(hangover_ms=100, preroll_ms=500, min_speech_ms=100)
    burst = noise(RATE // 2, 0.2, seed=1)
    x = np.concatenate([silence(1.0), burst, silence(0.15), burst, silence(1.0)])
    utts = utterances(run(Endpointer(s), x + noise(len(x), 0.001, seed=2)))
    assert len(utts) == 2
    first = utts[0]
    assert first.audio is not None
    assert utts[1].audio_t >= first.audio_t + len(first.audio) / RATE - 1e-9


def test_flush_ends_speech_with_shutdown() -> None:
    x = np.concatenate([silence(1.0), noise(RATE, 0.2)]) + noise(2 * RATE, 0.001, seed=1)
    ep = Endpointer()
    events = ep.process(x[:-100])  # leave a partial frame pending
    assert any(isinstance(e, SpeechStart) for e in events)
    events += ep.flush()
    utts = utterances(events)
    assert [u.reason for u in utts] == ["shutdown"]
    assert utts[0].audio is not None
    assert round(utts[0].audio_t * RATE) + len(utts[0].audio) == len(x) - 100
    assert ep.flush() == []  # reset: nothing left


def test_noise_floor_tracks_down_fast_and_up_slowly() -> None:
    s = EndpointSettings(floor_adapt_s=2.0)
    ep = Endpointer(s)
    ep.process(noise(2 * RATE, 0.01))  # -40 dBFS
    ep.process(noise(RATE // 2, 0.001, seed=1))  # drops to -60 dBFS
    floor = ep.floor_dbfs
    assert floor is not None and floor == pytest.approx(-60, abs=1.5)
    # +10 dB is under start_db: no speech, and after one time constant the
    # floor has come about 1 - 1/e of the way up.
    events = ep.process(noise(2 * RATE, 0.00316, seed=2))  # -50 dBFS
    floor = ep.floor_dbfs
    assert events == []
    assert floor is not None and -55 < floor < -52


def test_floor_never_below_minimum() -> None:
    ep = Endpointer(EndpointSettings(min_floor_dbfs=-70))
    ep.process(silence(2.0))
    assert ep.floor_dbfs == -70


# -- with Silero VAD as second opinion ------------------------------------------------


@pytest.fixture(scope="module")
def silero(silero_model: Path) -> object:
    pytest.importorskip("onnxruntime")
    from voxd.vad import SileroVad

    return SileroVad(silero_model)


def loud_noise_then_speech(kind: str) -> tuple[np.ndarray, tuple[float, float]]:
    rng = np.random.default_rng(7)
    n = int(1.5 * RATE)
    if kind == "white":
        burst = rng.standard_normal(n)
    else:
        burst = np.cumsum(rng.standard_normal(n))
        burst -= np.convolve(burst, np.ones(1600) / 1600, mode="same")
    burst = (burst / burst.std() * 0.1).astype(np.float32)  # -20 dBFS: far above the floor
    speech = trim_silence(synth(SENTENCES[0]))
    x = np.concatenate([silence(1.0), burst, silence(1.5), speech, silence(1.5)])
    start = (RATE + n + int(1.5 * RATE)) / RATE
    return x + noise(len(x), 0.001), (start, start + len(speech) / RATE)


@needs_espeak
@pytest.mark.parametrize("kind", ["white", "brown"])
def test_vad_rejects_loud_noise_energy_alone_takes(silero: object, kind: str) -> None:
    from voxd.vad import SileroVad

    assert isinstance(silero, SileroVad)
    x, (start, end) = loud_noise_then_speech(kind)
    energy_only = utterances(run(Endpointer(), x))
    assert len(energy_only) == 2  # the noise burst is taken as speech
    assert energy_only[0].start == pytest.approx(1.0, abs=0.1)

    silero.reset()
    with_vad = utterances(run(Endpointer(judge=silero, judge_threshold=0.5), x))
    assert len(with_vad) == 1
    assert with_vad[0].start == pytest.approx(start, abs=0.2)
    assert with_vad[0].end == pytest.approx(end, abs=0.3)


def test_vad_endpointer_finds_the_three_sentences(three_sentences: Scene, silero: object) -> None:
    from voxd.vad import SileroVad

    assert isinstance(silero, SileroVad)
    silero.reset()
    utts = utterances(run(Endpointer(judge=silero), three_sentences.signal))
    assert len(utts) == 3
    for u, (start, end) in zip(utts, three_sentences.spans, strict=True):
        assert u.start == pytest.approx(start, abs=0.2)
        assert u.end == pytest.approx(end, abs=0.3)


def test_judge_is_called_once_per_frame_in_order() -> None:
    seen: list[float] = []

    def judge(frame: np.ndarray) -> float:
        assert len(frame) == 320
        seen.append(float(frame[0]))
        return 1.0

    x = np.arange(320 * 10, dtype=np.float32)
    ep = Endpointer(judge=judge)
    ep.process(x[:500])
    ep.process(x[500:])
    assert seen == [float(i * 320) for i in range(10)]


def test_end_event_types() -> None:
    e = SpeechEnd(1.0, "silence", 1.7)
    assert (e.t, e.reason, e.audio_t, e.silence) == (1.0, "silence", 1.7, 0)


def test_an_end_counts_the_hangover_it_carries() -> None:
    """An end after silence carries the samples fed after its speech (the
    hangover); a cut at the maximum length and a shutdown carry none."""
    s = EndpointSettings(max_utterance_s=2.0)
    burst = noise(RATE * 2, 0.2, seed=9)  # cut once, then 0.3 s of it and the hangover
    x = np.concatenate([silence(1.0), burst, silence(2.0)]) + noise(RATE * 5, 0.001, seed=10)
    ends = [e for e in run(Endpointer(s), x) if isinstance(e, SpeechEnd)]
    assert [e.reason for e in ends] == ["max_length", "silence"]
    assert ends[0].silence == 0
    assert ends[1].silence == round((ends[1].audio_t - ends[1].t) * RATE)
    assert ends[1].silence >= s.hangover_ms * RATE // 1000
    ep = Endpointer()
    events = ep.process(np.concatenate([silence(1.0), burst]) + noise(RATE * 3, 0.001))
    ends = [e for e in events + ep.flush() if isinstance(e, SpeechEnd)]
    assert [(e.reason, e.silence) for e in ends] == [("shutdown", 0)]


def test_trailing_silence_counts_what_follows_the_last_voiced_frame() -> None:
    """A request ended by someone else: the silence after its speech, in samples."""
    burst = noise(RATE, 0.2, seed=3)  # a second of -14 dBFS "speech"
    ep = Endpointer()
    lead = silence(1.0) + noise(RATE, 0.001, seed=4)
    ep.process(lead)
    assert ep.trailing_silence == 0  # no speech yet
    ep.process(burst[: RATE // 10])
    assert ep.trailing_silence == 0  # a candidate: it may become speech
    ep.process(burst[RATE // 10 :])
    assert ep.in_speech and ep.trailing_silence == 0
    quiet = noise(RATE * 4 // 10 + 37, 0.001, seed=5)  # shorter than the hangover
    ep.process(quiet)
    # the burst ends on a frame boundary, so exactly the quiet samples count
    assert ep.in_speech and ep.trailing_silence == len(quiet)
    more = noise(RATE, 0.001, seed=6)  # past the hangover: the utterance ended
    ep.process(more)
    assert not ep.in_speech and ep.trailing_silence == len(quiet) + len(more)
    # a loud frame after it is sound (the filler puts it on a frame of its own)
    given = len(lead) + len(burst) + len(quiet) + len(more)
    filler = noise(-given % ep.frame_len, 0.001, seed=8)
    click = noise(ep.frame_len, 0.2, seed=7)
    ep.process(np.concatenate([filler, click, quiet]))
    assert ep.trailing_silence == len(quiet)
    ep.reset()
    assert ep.trailing_silence == 0
