"""bench/pi5_projection.py: its simulation of the engine's schedule and pad speculation
(checked against the real engine), the synthetic outputs and the Pi 5 cost model."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from speech import SENTENCES, have_espeak, synth

from bench import pi5_projection as pp
from bench.pad_speculation import pad_variant
from voxd.config import EndpointSettings, EngineSettings
from voxd.engine import Engine, TokenEvent, UtteranceEnd
from voxd.events import DELAY_MS_DEFAULT

EXAMPLE = Path(__file__).resolve().parent.parent / "bench" / "pi5_inputs.example.json"


def test_defaults_are_the_daemons() -> None:
    assert EngineSettings().interval_ms == pp.INTERVAL_MS_DEFAULT
    assert pp.DELAY_MS_DEFAULT == DELAY_MS_DEFAULT == EngineSettings().delay_ms
    assert EndpointSettings().hangover_ms == pp.HANGOVER_MS_DEFAULT


# ---------------------------------------------------------------- against the engine


@pytest.fixture(scope="module")
def pad_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Copies of the tiny model whose PAD embedding is alpha x its most frequent token's
    (bench/pad_speculation.py): the larger alpha, the larger the share of PAD outputs."""
    utterances = _utterances()
    with Engine(tiny_model_dir) as e:
        pad = e.info.pad_id
    ids = [t for ut in _engine_run(tiny_model_dir, utterances, 480, 1)[0] for t in ut]
    common = max(set(ids) - {pad}, key=ids.count)
    work = tmp_path_factory.mktemp("pi5_pad")
    out = {}
    for alpha in (1.0, 1.25, 1.5):
        out[alpha] = work / f"pad-x{alpha:g}"
        pad_variant(tiny_model_dir, out[alpha], alpha, common, pad)
    return out


def _utterances() -> list[np.ndarray]:
    """Two spoken utterances (the second ends with silence), each flushed on its own."""
    silence = np.zeros(9600, np.float32)
    return [synth(SENTENCES["hello"]), np.concatenate([synth(SENTENCES["numbers"]), silence])]


def _engine_run(
    model: Path, utterances: list[np.ndarray], interval_ms: int, spec: int, silence: int = 0
) -> tuple[list[list[int]], int, int, int, int]:
    """(token ids per utterance, step positions, step passes, guesses, accepted guesses)
    of one stream fed 80 ms chunks, flushed after each utterance (its last `silence`
    samples counted as padding)."""
    with Engine(model) as engine:
        s = engine.stream(interval_ms=interval_ms, max_speculation=spec)
        per_utt: list[list[int]] = []
        for audio in utterances:
            events = []
            for i in range(0, audio.size, pp.POS_SAMPLES):
                events += s.feed(audio[i : i + pp.POS_SAMPLES])
            events += s.flush(silence=silence)
            assert isinstance(events[-1], UtteranceEnd)
            per_utt.append([e.token_id for e in events if isinstance(e, TokenEvent)])
        st = s.stats()
        s.close()
    return (
        per_utt,
        st.positions - st.prompt_positions,
        st.decoder_passes - st.prompt_passes,
        st.spec_guesses,
        st.spec_accepted,
    )


def _kinds(ids: list[int], pad: int, eos: int) -> Iterator[int]:
    return iter([pp.PAD if t == pad else pp.EOS if t == eos else pp.TEXT for t in ids])


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")
@pytest.mark.parametrize(
    ("alpha", "interval_ms", "spec", "silence"),
    [
        (1.5, 480, 8, 0),
        (1.5, 480, 8, 9600),  # the second utterance's closing zeros counted as padding
        (1.5, 80, 8, 0),
        (1.5, 800, 16, 7000),
        (1.5, 480, 3, 0),
        (1.25, 480, 8, 9600),
        (1.0, 480, 8, 0),
    ],
)
def test_simulated_passes_are_the_engines(
    pad_models: dict[float, Path], alpha: float, interval_ms: int, spec: int, silence: int
) -> None:
    """The engine's own token sequence through the simulator, chunked as the engine was
    fed: the same step passes, positions and speculation guesses as the engine counted."""
    model = pad_models[alpha]
    utterances = _utterances()
    ids, positions, passes, guesses, accepted = _engine_run(
        model, utterances, interval_ms, spec, silence
    )
    with Engine(model) as e:
        pad, eos = e.info.pad_id, e.info.eos_id
    sim = pp.run_utterances(
        [(a.size, _kinds(u, pad, eos)) for a, u in zip(utterances, ids, strict=True)],
        interval_ms=interval_ms,
        max_speculation=spec,
        silence=silence,
    )
    all_ids = [t for u in ids for t in u]
    share = all_ids.count(pad) / len(all_ids)
    print(
        f"alpha {alpha} interval {interval_ms} ms spec {spec}: pads {share:.1%}, positions "
        f"{positions}, passes engine {passes} simulator {sim.passes}, widths "
        f"{dict(sorted(sim.widths.items()))}"
    )
    assert sim.positions == positions == len(all_ids)
    assert sim.passes == passes
    assert sim.rows - sim.passes == guesses
    assert sim.positions - sim.passes == accepted
    if alpha == 1.5:
        # PAD-heavy: speculation really batched, so the check covers multi-row passes
        assert share > 0.6
        assert passes < positions and max(sim.widths) > 2


# ---------------------------------------------------------------- the simulator's rules


def _pads() -> Iterator[int]:
    while True:
        yield pp.PAD


def _doubling(positions: int, spec: int = 8) -> list[int]:
    """Pass widths over all-pad outputs that are all there at once, from a pad run of 0."""
    widths, run = [], 0
    while positions:
        k = min(run + 1, spec, positions)
        widths.append(k)
        positions, run = positions - k, run + k
    return widths


def test_a_flush_of_pads_doubles_the_rows_up_to_max_speculation() -> None:
    """One 80 ms feed (no encoder run yet) then a flush: every step waits, so all-pad
    outputs run 1, 2, 4, 4, ... rows (after r pads, r + 1, at most 4), the last what is left."""
    c = pp.run_utterances([(pp.POS_SAMPLES, _pads())], max_speculation=4)
    # left padding + 1 position of audio + the flush's delay + 1 + 10, less the prompt's 38
    assert c.positions == 32 + 1 + 6 + 11 - 38
    assert sorted(c.widths.elements()) == sorted(_doubling(c.positions, 4)) == [1, 1, 2, 4, 4]
    assert pp.run_utterances([(pp.POS_SAMPLES, _pads())], max_speculation=1).widths == {
        1: c.positions
    }


def test_text_ends_a_pass_and_the_next_runs_one_row() -> None:
    """All positions at the flush: P P P T P T T then pads."""
    outputs = [pp.PAD, pp.PAD, pp.PAD, pp.TEXT, pp.PAD, pp.TEXT, pp.TEXT] + [pp.PAD] * 200
    c = pp.run_utterances([(pp.POS_SAMPLES, iter(outputs))], max_speculation=8)
    # 1 row (P), 2 (P P), 4 guessed but the 1st is T, 1 (P), 2 guessed but the 1st is T,
    # 1 (T), then the pads double again
    widths = [1, 2, 4, 1, 2, 1] + _doubling(c.positions - 7)
    assert sorted(c.widths.elements()) == sorted(widths)
    assert c.positions - c.passes == 1 + sum(k - 1 for k in _doubling(c.positions - 7))
    plain = pp.run_utterances([(pp.POS_SAMPLES, iter(outputs))], max_speculation=1)
    assert plain.positions == c.positions and plain.passes == c.positions


def test_eos_stops_the_utterance_until_the_flush() -> None:
    """After EOS the feeds are ignored and the flush adds no padding (reading outputs
    beyond EOS would raise); the next utterance starts again after the prompt."""
    seconds = 3 * pp.SAMPLE_RATE
    c = pp.run_utterances([(seconds, iter([pp.PAD, pp.TEXT, pp.EOS])), (seconds, iter([pp.EOS]))])
    # P: 1 row; T after one pad: 2 rows (1 kept); EOS after text: 1; the second utterance: 1
    assert c.positions == 4
    assert c.widths == {1: 3, 2: 1}


def test_running_out_of_outputs_says_so() -> None:
    with pytest.raises(ValueError, match="outputs ran out"):
        pp.run_utterances([(pp.SAMPLE_RATE, iter([pp.PAD] * 3))])


@pytest.mark.parametrize("spec", [2, 8, 32])
def test_every_output_is_kept_once_whatever_the_speculation(spec: int) -> None:
    sizes = [int(n) for n in np.random.default_rng(spec).integers(1, 80_000, 20)]

    def utts() -> list[tuple[int, Iterator[int]]]:
        rng = np.random.default_rng(7)  # the same outputs for both runs
        return [(n, pp.speech_like(rng, 0.8)) for n in sizes]

    c = pp.run_utterances(utts(), max_speculation=spec)
    plain = pp.run_utterances(utts(), max_speculation=1)
    assert c.positions == plain.positions == plain.passes
    assert max(c.widths) <= spec
    assert c.passes < plain.passes


# ---------------------------------------------------------------- synthetic outputs


@pytest.mark.parametrize("share", [0.7, 0.86, 0.9])
@pytest.mark.parametrize("shape", [1.0, 0.5])
def test_speech_like_outputs_have_the_share_and_words_of_1_to_3(share: float, shape: float) -> None:
    gen = pp.speech_like(np.random.default_rng(1), share, shape)
    outs = [next(gen) for _ in range(200_000)]
    assert abs(outs.count(pp.PAD) / len(outs) - share) < 0.01
    words = "".join("p" if o == pp.PAD else "t" for o in outs).split("p")
    lengths = {len(w) for w in words if w}
    assert lengths == {1, 2, 3}
    assert outs[0] == pp.PAD


def test_speculation_saves_more_passes_at_higher_pad_shares() -> None:
    r = [
        pp.simulate_share(
            share,
            utterances=30,
            utterance_s=4.0,
            interval_ms=480,
            delay_ms=480,
            max_speculation=8,
            run_shape=1.0,
            seed=3,
        )
        for share in (0.7, 0.9)
    ]
    # 4 s fed in 80 ms chunks (50 positions) and the flush's 11 more, per utterance
    assert r[0].on.positions == r[1].on.positions == 30 * (50 + 11)
    assert r[0].off.passes == r[0].on.positions
    assert r[1].on.passes < r[0].on.passes < r[0].off.passes


# ---------------------------------------------------------------- the Pi 5 model


def _inputs(**over: float) -> pp.FormatInputs:
    base = dict(
        weight_bytes_per_pass=1e9,
        kv_bytes_per_step=0.0,
        bandwidth_fraction=0.5,
        instr_per_byte=0.1,
        instr_per_byte_extra=0.05,
        encoder_gop_per_audio_s=8.0,
        encoder_ops_per_cycle_per_core=4.0,
        encoder_fraction=1.0,
    )
    base.update(over)
    return pp.FormatInputs(**base)


def test_pass_cost_is_the_larger_roof() -> None:
    board = pp.Board(cores=1, ghz=1.0, simd_pipes=1, bandwidth_gbs=10.0)
    f = _inputs()
    # memory: 1 GB at 5 GB/s = 0.2 s; instructions: 1e9 B x (0.1 + 0.05 (k-1)) at 1e9/s
    for k, instr in ((1, 0.1), (3, 0.2), (5, 0.3)):
        mem, ins = pp.pass_seconds(f, board, k)
        assert mem == pytest.approx(0.2) and ins == pytest.approx(instr)
    kv = pp.pass_seconds(_inputs(kv_bytes_per_step=1e8), board, 3)[0]
    assert kv == pytest.approx((1e9 + 3e8) / 5e9)
    counts = pp.PassCounts(positions=10)
    counts.widths.update({1: 2, 5: 1})
    assert pp.decoder_seconds(f, board, counts) == pytest.approx(2 * 0.2 + 0.3)
    # encoder: 8 GOP / (4 ops/cycle x 1 core x 1 GHz)
    assert pp.encoder_s_per_audio_s(f, board) == pytest.approx(2.0)
    # a stage that keeps a quarter of its kernel's rate takes four times as long
    assert pp.encoder_s_per_audio_s(_inputs(encoder_fraction=0.25), board) == pytest.approx(8.0)


def test_projection_row_adds_encoder_and_decoder() -> None:
    board = pp.Board()
    f = _inputs(encoder_gop_per_audio_s=1.0)
    on = pp.PassCounts(positions=100)
    on.widths.update({1: 30, 4: 20})
    off = pp.PassCounts(positions=100)
    off.widths.update({1: 100})
    # 100 positions for 6.4 s of audio: 80 of them audio, 20 the flushes' padding
    row = pp.project(f, board, pp.ShareResult(0.9, 0.9, on, off, audio_s=6.4))
    dec = pp.decoder_seconds(f, board, on) / 6.4
    enc = 1.0 / (4.0 * 4 * 2.4)
    assert row["decoder_s_per_audio_s"] == pytest.approx(dec)
    assert row["rtf"] == pytest.approx(dec + enc)
    assert row["real_time"] == (dec + enc < 1)
    assert row["positions_per_s"] > row["positions_per_s_no_speculation"]


def test_example_inputs_parse_and_are_marked_as_placeholders() -> None:
    doc = json.loads(EXAMPLE.read_text())
    assert "PLACEHOLDER" in doc["note"]
    inputs = pp.load_inputs(EXAMPLE)
    assert set(inputs) == set(pp.FORMATS)
    for name, f in inputs.items():
        # no Pi fractions given: the x86 ones stand in
        assert f.bandwidth_fraction == doc["formats"][name]["bandwidth_fraction_x86"]
        assert f.encoder_fraction == doc["formats"][name]["encoder_fraction_x86"]


def test_a_fraction_measured_on_a_pi_replaces_the_x86_one(tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE.read_text())
    doc["formats"]["q4"].update(bandwidth_fraction=0.6, encoder_fraction=0.7)
    path = tmp_path / "in.json"
    path.write_text(json.dumps(doc))
    inputs = pp.load_inputs(path)
    assert (inputs["q4"].bandwidth_fraction, inputs["q4"].encoder_fraction) == (0.6, 0.7)
    x86 = doc["formats"]["q8"]
    assert inputs["q8"].encoder_fraction == x86["encoder_fraction_x86"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["formats"]["q8"].pop("kv_bytes_per_step"), "formats.q8.kv_bytes_per_step"),
        (lambda d: d["formats"]["q4"].update(neon_instr_per_byte="x"), "must be a number"),
        (lambda d: d["formats"]["bf16"].update(bandwidth_fraction=1.5), "at most 1"),
        (lambda d: d["formats"]["q4"].update(encoder_fraction_x86=1.2), "fraction_x86 is 1.2"),
        (lambda d: d["formats"]["q8"].pop("encoder_fraction_x86"), "q8.encoder_fraction_x86"),
        (lambda d: d["formats"].update(f16=d["formats"]["q8"]), "unknown format"),
        (lambda d: d.pop("formats"), 'no "formats"'),
    ],
)
def test_bad_inputs_name_the_key(edit: object, message: str, tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE.read_text())
    edit(doc)  # type: ignore[operator]
    path = tmp_path / "in.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(pp.InputsError, match=message) as e:
        pp.load_inputs(path)
    assert str(path) in str(e.value)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert pp.main(["--inputs", str(path), "--utterances", "2"]) == 2
    assert message.strip('"') in err.getvalue().replace('\\"', '"')


def test_cli_prints_tables_and_json() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert pp.main(["--inputs", str(EXAMPLE), "--utterances", "10", "--json"]) == 0
    report = json.loads(out.getvalue())
    assert [s["pad_share"] for s in report["simulation"]["shares"]] == [0.7, 0.86, 0.9]
    assert set(report["projection"]) == set(pp.FORMATS)
    assert report["board"] == {"cores": 4, "ghz": 2.4, "simd_pipes": 2, "bandwidth_gbs": 11.0}
    for rows in report["projection"].values():
        for row in rows:
            assert row["rtf"] == pytest.approx(
                row["decoder_s_per_audio_s"] + row["encoder_s_per_audio_s"]
            )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert pp.main(["--inputs", str(EXAMPLE), "--utterances", "10", "--cores", "2"]) == 0
    text = out.getvalue()
    assert "| q4 | 90% |" in text and "PLACEHOLDER" in text and "2 cores" in text
