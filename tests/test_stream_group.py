"""Streams stepped together (Engine.group / StreamGroup) against each stream alone.

2 to 4 streams on the tiny models, fed espeak speech and random noise in
seeded random interleavings (random piece sizes, random subsets per call,
streams joining late and leaving early, flushes mid-way), must give each
stream exactly the token ids, positions and utterance ends it gives alone.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from speech import SENTENCES, silence, synth

from voxd.engine import Engine, EngineError, Stream, StreamEvent, TokenEvent, UtteranceEnd

Key = tuple[str, int, int]  # ("tok", id, position) or ("end", 0, position)


@pytest.fixture(scope="module")
def engine_tiny(tiny_model_dir: Path) -> Engine:
    return Engine(tiny_model_dir)


@pytest.fixture(scope="module")
def engine_tiny2(tiny2_model_dir: Path) -> Engine:
    return Engine(tiny2_model_dir)


@pytest.fixture(scope="module")
def sources() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    speech = [synth(SENTENCES[k]) for k in ("hello", "numbers")]
    noise = [
        (0.1 * rng.standard_normal(24000)).astype(np.float32),
        np.concatenate([silence(0.5), (0.3 * rng.uniform(-1, 1, 16000)).astype(np.float32)]),
    ]
    return [speech[0], noise[0], speech[1], noise[1]]


def keys(events: list[StreamEvent]) -> list[Key]:
    out: list[Key] = []
    for e in events:
        if isinstance(e, TokenEvent):
            out.append(("tok", e.token_id, e.position))
        elif isinstance(e, UtteranceEnd):
            out.append(("end", 0, e.position))
    return out


def plan(audio: np.ndarray, rng: random.Random) -> list[int]:
    """Flush points: one or two mid-way, and the end."""
    cuts = sorted(rng.sample(range(2000, audio.size - 2000), rng.randint(1, 2)))
    return [*cuts, audio.size]


def quiet_ends(flushes: list[int], rng: random.Random) -> list[int]:
    """Each flush's count of closing silence: none, part of the padding, or more."""
    return [rng.choice([0, 3000, 12000, 40000]) for _ in flushes]


def solo(
    engine: Engine, audio: np.ndarray, flushes: list[int], quiet: list[int], delay: int
) -> list[Key]:
    s = engine.stream(delay_ms=delay)
    events: list[StreamEvent] = []
    at = 0
    for f, q in zip(flushes, quiet, strict=True):
        events += s.feed(audio[at:f])
        events += s.flush(silence=q)
        at = f
    s.close()
    return keys(events)


def grouped(
    engine: Engine,
    audio: list[np.ndarray],
    flushes: list[list[int]],
    quiet: list[list[int]],
    delays: list[int],
    rng: random.Random,
) -> tuple[list[list[Key]], int]:
    n = len(audio)
    join = [0] + [rng.randint(0, 10) for _ in range(n - 1)]
    streams: list[Stream | None] = [None] * n
    at, nxt = [0] * n, [0] * n
    out: list[list[Key]] = [[] for _ in range(n)]
    most = 0
    with engine.group() as group:
        call = 0
        while any(nxt[i] < len(flushes[i]) for i in range(n)):
            feeds: dict[Stream, np.ndarray] = {}
            to_flush: set[Stream] = set()
            silence: dict[Stream, int] = {}
            index: dict[Stream, int] = {}
            for i in range(n):
                if nxt[i] == len(flushes[i]) or call < join[i] or rng.random() < 0.25:
                    continue
                s = streams[i] = streams[i] or engine.stream(delay_ms=delays[i])
                lim = flushes[i][nxt[i]]
                k = min(rng.choice([0, 320, 1280, 2500, 4000]), lim - at[i])
                feeds[s] = audio[i][at[i] : at[i] + k]
                at[i] += k
                index[s] = i
                if at[i] == lim and rng.random() < 0.7:
                    to_flush.add(s)
                    silence[s] = quiet[i][nxt[i]]
            call += 1
            if not feeds:
                continue
            for s, res in group.feed(feeds, flush=to_flush, silence=silence).items():
                assert not isinstance(res, EngineError), res
                i = index[s]
                out[i] += keys(res)
                if s in to_flush:
                    nxt[i] += 1
                    if nxt[i] == len(flushes[i]):  # leaves the group
                        s.close()
                        streams[i] = None
        st = group.stats()
        most = st.max_streams
        assert st.passes < st.stream_passes  # some passes did stack several streams
    return out, most


@pytest.mark.parametrize("model", ["tiny", "tiny2"])
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("seed", [1, 2])
def test_group_gives_each_stream_its_solo_tokens(
    request: pytest.FixtureRequest, sources: list[np.ndarray], model: str, n: int, seed: int
) -> None:
    engine: Engine = request.getfixturevalue(f"engine_{model}")
    rng = random.Random(seed * 100 + n)
    order = rng.sample(range(len(sources)), n)
    audio = [sources[k] for k in order]
    delays = [rng.choice([160, 480, 240]) for _ in range(n)]
    flushes = [plan(a, rng) for a in audio]
    quiet = [quiet_ends(f, rng) for f in flushes]
    want = [
        solo(engine, a, f, q, d) for a, f, q, d in zip(audio, flushes, quiet, delays, strict=True)
    ]
    got, most = grouped(engine, audio, flushes, quiet, delays, rng)
    for i in range(n):
        assert got[i] == want[i], f"stream {i} ({delays[i]} ms delay)"
        assert sum(k[0] == "end" for k in got[i]) == len(flushes[i])
    assert most >= 2


def test_group_reports_a_bad_stream_and_runs_the_others(
    engine_tiny: Engine, sources: list[np.ndarray]
) -> None:
    a, b = engine_tiny.stream(), engine_tiny.stream()
    bad = np.array([0.0, np.nan], dtype=np.float32)
    with engine_tiny.group() as group:
        res = group.feed({a: bad, b: sources[0][:8000]})
        assert isinstance(res[a], EngineError) and "NaN" in str(res[a])
        assert not isinstance(res[b], EngineError)
        # nothing of the bad call was used: a still gives its solo tokens
        res = group.feed({a: sources[0][:8000]}, flush={a, b})
        want = solo(engine_tiny, sources[0][:8000], [8000], [0], 480)
        got_a, got_b = res[a], res[b]
        assert not isinstance(got_a, EngineError) and not isinstance(got_b, EngineError)
        assert keys(got_a) == want
    a.close()
    b.close()


def test_group_refuses_other_engines_and_closed_streams(
    engine_tiny: Engine, engine_tiny2: Engine
) -> None:
    a, foreign = engine_tiny.stream(), engine_tiny2.stream()
    x = np.zeros(1600, dtype=np.float32)
    with engine_tiny.group() as group:
        with pytest.raises(EngineError, match="refused"):
            group.feed({a: x, foreign: x})
        a.close()
        with pytest.raises(EngineError, match="closed"):
            group.feed({a: x})
    foreign.close()


def test_group_refuses_a_negative_silence_and_feeds_nothing(
    engine_tiny: Engine, sources: list[np.ndarray]
) -> None:
    a = engine_tiny.stream()
    audio = sources[0][:8000]
    with engine_tiny.group() as group:
        with pytest.raises(ValueError, match="silence must be 0 or more"):
            group.feed({a: audio}, flush={a}, silence={a: -1})
        # the refused call fed nothing: the stream still gives its solo tokens
        res = group.feed({a: audio}, flush={a}, silence={a: 3000})
        got = res[a]
        assert not isinstance(got, EngineError)
        assert keys(got) == solo(engine_tiny, audio, [8000], [3000], 480)
    a.close()
