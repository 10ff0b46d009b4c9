"""The C engine against the NumPy reference, on tiny random models.

Tolerances (relative to the largest magnitude of the compared tensor):
  mel 1e-6, encoder / adapter 5e-5, logits 5e-5.
The engine computes in float32 (double for the DFT and norms) on BF16 weights
that both sides read exactly; the reference computes in float64. Float32 sums
of a few thousand terms are off by ~1e-6 relative, so these bounds leave 10x
headroom, while the plausible mistakes the spec warns about (tanh GELU, a
symmetric Hann window, a window one position too wide, un-rotated bias) move
the same tensors by 1e-3 or more (test_tolerance_catches_plausible_mistakes).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import reference
from parity import agreeing_steps, rel_err
from speech import SENTENCES, silence, synth
from st_files import read_st, write_st

from voxd.engine import (
    DEBUG_ADAPTER,
    DEBUG_ENCODER,
    DEBUG_LOGITS,
    DEBUG_MEL,
    Engine,
    EngineError,
    TokenEvent,
    UtteranceEnd,
    transcribe,
)

TOL = {"mel": 1e-6, "encoder": 5e-5, "adapter": 5e-5, "logits": 5e-5}

CLIPS = {k: SENTENCES[k] for k in ("hello", "numbers")}


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {k: synth(v) for k, v in CLIPS.items()}


@pytest.fixture(scope="module")
def engine_tiny(tiny_model_dir: Path) -> Engine:
    return Engine(tiny_model_dir)


@pytest.fixture(scope="module")
def engine_tiny2(tiny2_model_dir: Path) -> Engine:
    return Engine(tiny2_model_dir)


def run_debug(
    engine: Engine, audio: np.ndarray, delay_ms: int = 480, kv_f32: bool = False
) -> tuple[dict[str, np.ndarray], list[int]]:
    s = engine.stream(delay_ms=delay_ms, kv_f32=kv_f32)
    s.enable_debug(DEBUG_MEL | DEBUG_ENCODER | DEBUG_ADAPTER | DEBUG_LOGITS)
    events = s.feed(audio) + s.finish()
    ids = [e.token_id for e in events if isinstance(e, TokenEvent)]
    out = {
        "mel": s.debug_tensor(DEBUG_MEL),
        "encoder": s.debug_tensor(DEBUG_ENCODER),
        "adapter": s.debug_tensor(DEBUG_ADAPTER),
        "logits": s.debug_tensor(DEBUG_LOGITS),
    }
    s.close()
    return out, ids


@pytest.mark.parametrize("model", ["tiny", "tiny2"])
@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("delay_ms", [480, 160])
def test_matches_reference(
    request: pytest.FixtureRequest,
    model: str,
    clip: str,
    delay_ms: int,
    clips: dict[str, np.ndarray],
) -> None:
    engine: Engine = request.getfixturevalue(f"engine_{model}")
    ref_model: reference.RefModel = request.getfixturevalue(f"ref_{model}")
    audio = clips[clip]
    ref = reference.transcribe(ref_model, audio, delay_ms=delay_ms)
    got, ids = run_debug(engine, audio, delay_ms, kv_f32=True)  # the reference is float64
    expected = {
        "mel": ref.mel,
        "encoder": ref.encoder_out,
        "adapter": ref.adapter_out,
        "logits": ref.logits,
    }
    for name, tol in TOL.items():
        err = rel_err(got[name], expected[name])
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"
    assert ids == ref.token_ids
    # an id match at a near-tie proves little: every step's top-2 margin must
    # be far above the logit error, or the match is luck
    logit_err = np.abs(got["logits"] - ref.logits).max()
    top2 = np.sort(ref.logits, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]).min()
    assert margin > 10 * logit_err, f"near-tie: margin {margin:.2e} vs error {logit_err:.2e}"
    assert len(ids) > 20  # the clip produced a real token sequence


# fp16 KV cache (the default) against the reference rounding its cache the
# same way. The two sides round slightly different float values (float32 vs
# float64 keys), so a few elements land one fp16 step apart; measured max
# relative errors: encoder 2.9e-4, adapter 2.4e-4, logits 9.8e-4.
TOL_KV_F16 = {"encoder": 1e-3, "adapter": 1e-3, "logits": 3e-3}


@pytest.mark.parametrize("model", ["tiny", "tiny2"])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_fp16_kv_cache_matches_reference_rounding_its_cache(
    request: pytest.FixtureRequest, model: str, clip: str, clips: dict[str, np.ndarray]
) -> None:
    engine: Engine = request.getfixturevalue(f"engine_{model}")
    ref_model: reference.RefModel = request.getfixturevalue(f"ref_{model}")
    audio = clips[clip]
    ref16 = reference.transcribe(ref_model, audio, kv_f16=True)
    ref32 = reference.transcribe(ref_model, audio)
    got, ids = run_debug(engine, audio)
    for name, attr in (("encoder", "encoder_out"), ("adapter", "adapter_out")):
        err = rel_err(got[name], getattr(ref16, attr))
        assert err < TOL_KV_F16[name], f"{name}: relative error {err:.2e}"
        # the cache really is fp16: the engine sits far closer to the fp16-cache
        # reference than to the exact one (measured 14-73x on the mean error)
        near = np.abs(got[name] - getattr(ref16, attr)).mean()
        far = np.abs(got[name] - getattr(ref32, attr)).mean()
        assert near * 5 < far, f"{name}: {near:.1e} vs fp16 reference, {far:.1e} vs exact"
    # past a near-tie two float implementations may take different greedy paths
    split = agreeing_steps(ids, ref16.token_ids, got["logits"], ref16.logits)
    assert split >= 20, f"tokens part after only {split} steps"
    err = rel_err(got["logits"][:split], ref16.logits[:split])
    assert err < TOL_KV_F16["logits"], f"logits: relative error {err:.2e}"


def test_tolerance_catches_plausible_mistakes(
    ref_tiny: reference.RefModel, clips: dict[str, np.ndarray]
) -> None:
    """The tolerances above are tight enough to see the mistakes they guard against."""
    audio = reference.pad_offline(clips["hello"], 6)
    mel = reference.log_mel(audio)
    # symmetric instead of periodic Hann
    n = reference.N_FFT
    sym = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))
    orig = reference.hann_periodic
    try:
        reference.hann_periodic = lambda _n: sym  # type: ignore[assignment]
        mel_sym = reference.log_mel(audio)
    finally:
        reference.hann_periodic = orig
    assert rel_err(mel_sym, mel) > 100 * TOL["mel"]
    # tanh GELU instead of the exact one, in the encoder
    enc = reference.encoder(ref_tiny, mel)
    orig_gelu = reference.gelu
    try:
        reference.gelu = lambda x: (
            0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
        )  # type: ignore[assignment]
        enc_tanh = reference.encoder(ref_tiny, mel)
    finally:
        reference.gelu = orig_gelu
    assert rel_err(enc_tanh, enc) > 10 * TOL["encoder"]


@pytest.mark.parametrize("chunk", [1, 37, 160, 1280, 4000, 0])
def test_chunking_does_not_change_tokens(
    engine_tiny: Engine, clips: dict[str, np.ndarray], chunk: int
) -> None:
    audio = clips["hello"][: 16000 * 2]  # 2 s keeps chunk=1 (32000 calls) quick
    _, whole = transcribe(engine_tiny, audio)
    _, chunked = transcribe(engine_tiny, audio, chunk=chunk)
    assert chunked == whole


@pytest.mark.parametrize("interval_ms", [80, 400, 2000])
def test_processing_interval_does_not_change_tokens(
    engine_tiny: Engine, clips: dict[str, np.ndarray], interval_ms: int
) -> None:
    audio = clips["numbers"]
    _, base = transcribe(engine_tiny, audio)
    s = engine_tiny.stream(interval_ms=interval_ms)
    events = []
    for i in range(0, audio.size, 700):
        events += s.feed(audio[i : i + 700])
    events += s.finish()
    s.close()
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == base


def test_prepare_runs_the_prompt_prefill_ahead_and_changes_no_token(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    audio = clips["hello"]
    _, fresh = transcribe(engine_tiny, audio)
    s = engine_tiny.stream()
    assert s.stats().positions == 0
    s.prepare()
    prefilled = s.stats().positions
    assert prefilled > 0  # BOS and the left padding, before any audio
    s.prepare()  # nothing left to do
    assert s.stats().positions == prefilled
    events = s.feed(audio) + s.finish()
    s.close()
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == fresh


def test_streaming_emits_tokens_before_the_flush(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    """The decoder keeps pace with the audio: tokens come out while feeding."""
    audio = clips["hello"]
    s = engine_tiny.stream()
    during = []
    for i in range(0, audio.size, 1600):
        during += s.feed(audio[i : i + 1600])
    after = s.flush()
    s.close()
    n_pos = -(-audio.size // 1280)
    assert len(during) >= n_pos - 8  # all positions but the delay's worth
    assert isinstance(after[-1], UtteranceEnd)
    assert not any(isinstance(e, UtteranceEnd) for e in during)


def test_flush_gives_full_text_and_next_utterance_is_fresh(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    a, b = clips["hello"], clips["numbers"]
    text_a, ids_a = transcribe(engine_tiny, a)
    text_b, ids_b = transcribe(engine_tiny, b)
    s = engine_tiny.stream()
    ev_a = s.feed(a) + s.flush()
    ev_b = s.feed(b[:5000]) + s.feed(b[5000:]) + s.flush()
    s.close()
    for events, ids, text in ((ev_a, ids_a, text_a), (ev_b, ids_b, text_b)):
        assert isinstance(events[-1], UtteranceEnd)
        assert sum(isinstance(e, UtteranceEnd) for e in events) == 1
        assert [e.token_id for e in events if isinstance(e, TokenEvent)] == ids
        assert "".join(e.text for e in events).strip() == text


@pytest.mark.parametrize("silent_positions", [1.5, 8.75, 17.0])
def test_silence_after_the_speech_counts_as_the_flush_padding(
    engine_tiny: Engine, clips: dict[str, np.ndarray], silent_positions: float
) -> None:
    """Zeros fed after the speech and named as silence give the speech's own
    tokens, in fewer decoder positions than a plain flush of the same audio."""
    speech = clips["hello"]
    _, solo_ids = transcribe(engine_tiny, speech)
    zeros = np.zeros(round(silent_positions * 1280), np.float32)
    audio = np.concatenate([speech, zeros])
    ids: dict[int, list[int]] = {}
    positions: dict[int, int] = {}
    for quiet in (0, zeros.size):
        s = engine_tiny.stream()
        before = s.stats().positions
        events = s.feed(audio) + s.flush(silence=quiet)
        positions[quiet] = s.stats().positions - before
        ids[quiet] = [e.token_id for e in events if isinstance(e, TokenEvent)]
        assert isinstance(events[-1], UtteranceEnd)
        s.close()
    assert ids[zeros.size] == solo_ids
    # a plain flush decodes the silence and then the whole padding after it
    assert positions[0] - positions[zeros.size] == (
        -(-(speech.size + zeros.size) // 1280) - -(-speech.size // 1280)
    )


def test_silence_longer_than_the_padding_is_decoded_not_dropped(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    """Audio fed is never taken back: past the padding's length, the flush
    only completes the last position, and the utterance's end is its audio's."""
    speech = clips["hello"][:20000]
    quiet = np.full(30 * 1280 + 100, 1e-4, np.float32)  # longer than 17 positions
    audio = np.concatenate([speech, quiet])
    decoded: dict[int, int] = {}
    for named in (0, 10**9):
        s = engine_tiny.stream()
        events = s.feed(audio) + s.flush(silence=named)
        decoded[named] = s.stats().positions
        s.close()
        assert isinstance(events[-1], UtteranceEnd)
        assert not any(isinstance(e, TokenEvent) and e.token_id == 2 for e in events)
    # every position of the audio; the plain flush adds delay + 1 + 10 more
    assert decoded[0] - decoded[10**9] == 6 + 1 + 10
    with pytest.raises(ValueError, match="silence"):
        engine_tiny.stream().flush(silence=-1)


def test_flush_without_audio_only_ends(engine_tiny: Engine) -> None:
    s = engine_tiny.stream()
    for _ in range(2):  # also right after another flush
        events = s.flush()
        assert len(events) == 1 and isinstance(events[0], UtteranceEnd)
        assert events[0].text == "" and events[0].audio_time == 0.0
    s.close()


def test_reset_drops_the_utterance(engine_tiny: Engine, clips: dict[str, np.ndarray]) -> None:
    a, b = clips["hello"], clips["numbers"]
    _, ids_b = transcribe(engine_tiny, b)
    s = engine_tiny.stream()
    s.feed(a[:20000])
    s.reset()
    events = s.feed(b) + s.flush()
    s.close()
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == ids_b


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_fifty_utterances_keep_memory_flat(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    utt = np.concatenate([clips["hello"], silence(0.3)])
    s = engine_tiny.stream()
    texts = []
    for i in range(50):
        events = s.feed(utt) + s.flush()
        texts.append("".join(e.text for e in events).strip())
        if i == 9:
            rss_10 = _rss_kib()
    rss_50 = _rss_kib()
    s.close()
    assert len(set(texts)) == 1  # every utterance transcribed as a fresh stream would
    assert rss_50 - rss_10 < 2048, f"RSS grew {rss_50 - rss_10} KiB over 40 utterances"


def test_model_info_reads_dims_from_params(engine_tiny2: Engine, tiny2_model_dir: Path) -> None:
    params = json.loads((tiny2_model_dir / "params.json").read_text())
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    info = engine_tiny2.info
    assert (info.dim, info.n_layers, info.n_heads, info.n_kv_heads) == (
        params["dim"],
        params["n_layers"],
        params["n_heads"],
        params["n_kv_heads"],
    )
    assert (info.enc_dim, info.enc_layers, info.enc_window) == (
        enc["dim"],
        enc["n_layers"],
        enc["sliding_window"],
    )
    assert info.vocab_size == params["vocab_size"]


def test_the_weights_are_copied_into_memory_and_the_info_says_so(
    engine_tiny2: Engine, tiny2_model_dir: Path
) -> None:
    # a tiny model always fits: the CPU device reads it from anonymous memory
    # (huge pages where the kernel has them), not from the file's page cache
    note = engine_tiny2.info.weights_note
    assert note.startswith("weights copied into memory ("), note
    maps = Path("/proc/self/maps").read_text()
    weights_file = str(tiny2_model_dir / "consolidated.safetensors")
    assert weights_file not in maps  # the file's mapping was replaced


def test_portable_backend_gives_the_same_tokens(
    tiny_model_dir: Path, engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    with Engine(tiny_model_dir, backend="portable", threads=1) as portable:
        assert portable.info.backend == "portable"
        assert transcribe(portable, clips["hello"])[1] == transcribe(engine_tiny, clips["hello"])[1]


# ---------------------------------------------------------------------------
# bad input: a clear error each, no crash
# ---------------------------------------------------------------------------


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("params.json", "tekken.json", "consolidated.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def load_error(model_dir: Path) -> str:
    with pytest.raises(EngineError) as e:
        Engine(model_dir)
    return str(e.value)


NORM = "norm.weight"


def test_missing_directory(tmp_path: Path) -> None:
    msg = load_error(tmp_path / "nope")
    assert "params.json" in msg and "missing" in msg


@pytest.mark.parametrize(
    "case,expect",
    [
        ("truncated", "past"),
        ("header_past_eof", "header length"),
        ("bad_json", "JSON"),
        ("wrong_dtype", "dtype"),
        ("missing_tensor", "missing tensor 'norm.weight'"),
        ("shape_mismatch", "params.json implies"),
        ("no_params", "params.json"),
        ("bad_params", "params.json"),
        ("params_dim_disagrees", "params.json implies"),
        ("no_tekken", "tekken.json"),
        ("empty_file", "safetensors"),
    ],
)
def test_bad_model_files(tiny_model_dir: Path, tmp_path: Path, case: str, expect: str) -> None:
    d = copy_model(tiny_model_dir, tmp_path / case)
    st = d / "consolidated.safetensors"
    header, data = read_st(st)
    if case == "truncated":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif case == "header_past_eof":
        raw = st.read_bytes()
        st.write_bytes(struct.pack("<Q", len(raw) * 10) + raw[8:])
    elif case == "bad_json":
        raw = st.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        st.write_bytes(raw[:8] + b"{" + b" " * (n - 1) + raw[8 + n :])
    elif case == "wrong_dtype":
        header[NORM]["dtype"] = "I16"
        write_st(st, header, data)
    elif case == "missing_tensor":
        del header[NORM]
        write_st(st, header, data)
    elif case == "shape_mismatch":
        name = "layers.0.attention.wk.weight"
        rows, cols = header[name]["shape"]
        header[name]["shape"] = [cols, rows]
        write_st(st, header, data)
    elif case == "no_params":
        (d / "params.json").unlink()
    elif case == "bad_params":
        (d / "params.json").write_text('{"dim": 64,')
    elif case == "params_dim_disagrees":
        p = json.loads((d / "params.json").read_text())
        p["hidden_dim"] += 32
        (d / "params.json").write_text(json.dumps(p))
    elif case == "no_tekken":
        (d / "tekken.json").unlink()
    elif case == "empty_file":
        st.write_bytes(b"")
    msg = load_error(d)
    assert expect in msg, msg


def test_empty_audio(engine_tiny: Engine) -> None:
    text, ids = transcribe(engine_tiny, np.zeros(0, dtype=np.float32))
    assert text == "" and ids == []


def test_nan_samples_rejected_and_nothing_lost(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    a = clips["hello"]
    _, ids = transcribe(engine_tiny, a)
    s = engine_tiny.stream()
    events = s.feed(a[:8000])
    bad = a[8000:9000].copy()
    bad[10] = np.nan
    with pytest.raises(EngineError, match="NaN"):
        s.feed(bad)
    bad[10] = np.inf
    with pytest.raises(EngineError, match="infinite"):
        s.feed(bad)
    events += s.feed(a[8000:]) + s.flush()  # the stream is still usable
    s.close()
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == ids


def test_feed_after_finish_is_an_error_until_reset(
    engine_tiny: Engine, clips: dict[str, np.ndarray]
) -> None:
    s = engine_tiny.stream()
    s.feed(clips["hello"][:4000])
    s.finish()
    with pytest.raises(EngineError, match="after finish"):
        s.feed(clips["hello"][:100])
    with pytest.raises(EngineError, match="after finish"):
        s.flush()
    s.reset()
    s.feed(clips["hello"][:100])
    s.close()


def test_bad_stream_options(engine_tiny: Engine) -> None:
    with pytest.raises(EngineError, match="delay_ms"):
        engine_tiny.stream(delay_ms=100)
    with pytest.raises(EngineError, match="delay_ms"):
        engine_tiny.stream(delay_ms=4000)


def test_unknown_backend(tiny_model_dir: Path) -> None:
    with pytest.raises(EngineError, match="unknown backend"):
        Engine(tiny_model_dir, backend="cuda9000")


def test_closed_stream_is_an_error(engine_tiny: Engine) -> None:
    s = engine_tiny.stream()
    s.close()
    with pytest.raises(EngineError, match="closed"):
        s.feed(np.zeros(10, dtype=np.float32))
    with pytest.raises(EngineError, match="closed"):
        s.prepare()


def test_library_env_override_is_respected() -> None:
    # the suite runs against whatever library VOXD_ENGINE_LIB or the install provides
    from voxd import engine as eng

    lib = eng.library()
    assert lib is not None
    if "VOXD_ENGINE_LIB" in os.environ:
        assert Path(os.environ["VOXD_ENGINE_LIB"]).is_file()


@pytest.mark.parametrize("delay_ms", [80, 480, 2400])
def test_prompt_prefill_counted_apart(
    engine_tiny: Engine, clips: dict[str, np.ndarray], delay_ms: int
) -> None:
    """The prompt's prefill passes (BOS, 32 left-padding positions, the delay; no
    logits) are counted in the stats apart from the steps that make tokens."""
    s = engine_tiny.stream(delay_ms=delay_ms, max_speculation=1)
    audio = np.concatenate([clips["hello"], silence(1.0)])
    s.feed(np.zeros(0, dtype=np.float32))
    for i in range(0, audio.size, 1280):
        s.feed(audio[i : i + 1280])
    s.flush()
    st = s.stats()
    s.close()
    prompt = 1 + 32 + delay_ms // 80 - 1  # the last prompt position makes the first logits
    assert st.prompt_positions == prompt
    assert -(-prompt // 32) <= st.prompt_passes <= prompt
    # one position per pass after the prompt (speculation off)
    assert st.decoder_passes - st.prompt_passes == st.positions - st.prompt_positions > 0
    assert 0 < st.prompt_ms < st.decoder_ms


def test_encoder_passes_counted(engine_tiny: Engine, clips: dict[str, np.ndarray]) -> None:
    """Each encoder call runs its frames in transformer passes of at most 64."""
    s = engine_tiny.stream()
    s.feed(np.zeros(0, dtype=np.float32))  # the left padding: one batched call
    st0 = s.stats()
    assert st0.encoder_passes == -(-st0.encoder_frames // 64)
    audio = clips["hello"]
    for i in range(0, audio.size, 1280):
        s.feed(audio[i : i + 1280])
    st = s.stats()
    s.close()
    frames = st.encoder_frames - st0.encoder_frames
    assert -(-frames // 64) <= st.encoder_passes - st0.encoder_passes <= frames


# ---------------------------------------------------------------------------
# pad speculation: fewer weight passes, exactly the same output
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_pad_heavy(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, clips: dict[str, np.ndarray]
) -> Engine:
    """The tiny model with STREAMING_PAD's embedding row set equal to the row
    of its most frequent output token: where that token would win, PAD ties
    and wins (lower id), so most steps output PAD, as the real model's do."""
    d = copy_model(tiny_model_dir, tmp_path_factory.mktemp("pad_heavy") / "m")
    with Engine(tiny_model_dir) as e:
        _, ids = transcribe(e, clips["hello"])
        pad = e.info.pad_id
    common = max(set(ids), key=ids.count)
    st = d / "consolidated.safetensors"
    header, data = read_st(st)
    t = header["mm_streams_embeddings.embedding_module.tok_embeddings.weight"]
    begin = t["data_offsets"][0]
    row = t["shape"][1] * 2  # BF16
    buf = bytearray(data)
    src = begin + common * row
    buf[begin + pad * row : begin + (pad + 1) * row] = buf[src : src + row]
    write_st(st, header, bytes(buf))
    return Engine(d)


@pytest.mark.parametrize("model", ["tiny", "tiny2", "pad_heavy"])
@pytest.mark.parametrize("interval_ms", [80, 800])
def test_pad_speculation_is_exact(
    request: pytest.FixtureRequest, model: str, interval_ms: int, clips: dict[str, np.ndarray]
) -> None:
    engine: Engine = request.getfixturevalue(f"engine_{model}")
    audio = np.concatenate([clips["hello"], silence(1.0), clips["numbers"]])
    runs = {}
    for spec in (1, 4, 16):
        s = engine.stream(interval_ms=interval_ms, max_speculation=spec)
        s.enable_debug(DEBUG_LOGITS)
        events = []
        for i in range(0, audio.size, 1280):
            events += s.feed(audio[i : i + 1280])
        events += s.flush()
        runs[spec] = (
            [e.token_id for e in events if isinstance(e, TokenEvent)],
            s.debug_tensor(DEBUG_LOGITS),
            s.stats(),
        )
        s.close()
    ids_plain, logits_plain, st_plain = runs[1]
    assert st_plain.spec_guesses == 0
    for spec in (4, 16):
        ids, logits, st = runs[spec]
        assert ids == ids_plain
        assert np.array_equal(logits, logits_plain)  # bitwise: rows never mix
        assert st.positions == st_plain.positions
        assert st.decoder_passes <= st_plain.decoder_passes
        assert 0 <= st.spec_accepted <= st.spec_guesses
    if model == "pad_heavy":
        # mostly PAD: the flush (17+ positions at once) and, with an 800 ms
        # interval, the speech itself need far fewer passes than positions
        ids, _, st = runs[16]
        assert ids.count(engine.info.pad_id) > len(ids) / 3
        assert st.spec_accepted > 0
        assert st.decoder_passes < st_plain.decoder_passes


def test_status_mirrors_the_c_header() -> None:
    """Status has exactly the names and values of vx_status in voxd_engine.h."""
    import re

    from voxd.engine import Status

    header = (Path(__file__).resolve().parent.parent / "native/include/voxd_engine.h").read_text()
    body = re.search(r"typedef enum \{(.*?)\} vx_status;", header, re.S)
    assert body is not None, "vx_status not found in voxd_engine.h"
    in_c = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"\bVX_([A-Z_]+)\s*=\s*(\d+)", re.sub(r"/\*.*?\*/", "", body.group(1)))
    }
    assert in_c == {s.name: int(s) for s in Status}
    assert len(in_c) >= 7


def test_delay_rule_is_the_engines() -> None:
    """The one Python delay rule agrees with the config's bounds and the engine's check."""
    from voxd.config import EngineSettings
    from voxd.events import DELAY_MS_DEFAULT, delay_ms_valid

    assert EngineSettings().delay_ms == DELAY_MS_DEFAULT
    for ms in (0, 40, 80, 120, 160, 480, 2400, 2480):
        try:
            EngineSettings(delay_ms=ms)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == delay_ms_valid(ms), ms
    assert [ms for ms in range(0, 2600, 40) if delay_ms_valid(ms)] == list(range(80, 2401, 80))
