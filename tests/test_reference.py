"""Self-checks of the NumPy reference and the random-model writer (no C engine needed).

The reference is what the engine is judged against, so its own pieces are
checked here against independent derivations: hand-computed spectra, a
second construction of the mel filters, the other RoPE formulation, causality
and window edges, and the BF16 rounding rule.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import reference as R
from speech import have_espeak, synth

from voxd.tools import devmodel as dm

# ---------------------------------------------------------------------------
# Mel front end
# ---------------------------------------------------------------------------


def _slaney_mel_scalar(f: float) -> float:
    # written out again on purpose: the test must not reuse the reference's code
    return 3.0 * f / 200.0 if f < 1000.0 else 15.0 + math.log(f / 1000.0) * 27.0 / math.log(6.4)


def _slaney_hz_scalar(m: float) -> float:
    return 200.0 * m / 3.0 if m < 15.0 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)


def _filter_value(i: int, f: float, n_mels: int = 128) -> float:
    """Weight of frequency f in mel filter i, from a scalar triangle."""
    step = _slaney_mel_scalar(8000.0) / (n_mels + 1)
    left, center, right = (_slaney_hz_scalar(step * k) for k in (i, i + 1, i + 2))
    height = 2.0 / (right - left)
    return float(np.interp(f, [left, center, right], [0.0, height, 0.0]))


def test_mel_filters_match_scalar_construction() -> None:
    filters = R.mel_filters(128)
    assert filters.shape == (201, 128)
    bins = np.linspace(0.0, 8000.0, 201)
    expected = np.array([[_filter_value(i, f) for i in range(128)] for f in bins])
    np.testing.assert_allclose(filters, expected, rtol=1e-10, atol=1e-14)


def test_mel_filters_have_unit_area() -> None:
    # area normalisation: each triangle integrates to 1 over frequency; the
    # 40 Hz sampling is only accurate for triangles that span many bins
    filters = R.mel_filters(128)
    edges = [_slaney_hz_scalar(_slaney_mel_scalar(8000.0) / 129 * k) for k in range(130)]
    wide = [i for i in range(128) if edges[i + 2] - edges[i] > 200.0]
    assert len(wide) > 20
    areas = filters[:, wide].sum(axis=0) * 40.0
    np.testing.assert_allclose(areas, 1.0, atol=0.03)


def test_mel_of_1khz_sine_is_exact() -> None:
    # 1 kHz is exactly FFT bin 25 (40 Hz bins) and 25 periods fit in a 400-sample
    # frame, so with a periodic Hann window the power spectrum is known in closed
    # form: (A N/4)^2 at bin 25, (A N/8)^2 at bins 24 and 26, zero elsewhere.
    amp = 0.5
    t = np.arange(16000)
    x = amp * np.sin(2 * np.pi * 1000.0 * t / 16000.0)
    mel = R.log_mel(x)
    assert mel.shape == (100, 128)
    inner = mel[3:97]  # frames whose window lies inside the signal
    np.testing.assert_allclose(inner, inner[0:1].repeat(len(inner), 0), atol=1e-9)

    side = (amp * 400 / 8) ** 2
    power = {1000.0: (amp * 400 / 4) ** 2, 960.0: side, 1040.0: side}
    expected = np.empty(128)
    for i in range(128):
        e = sum(p * _filter_value(i, f) for f, p in power.items())
        expected[i] = (max(math.log10(max(e, 1e-10)), 1.5 - 8.0) + 4.0) / 4.0
    np.testing.assert_allclose(inner[0], expected, atol=1e-9)

    # the loudest bin is the triangle whose centre is nearest 1 kHz (mel 15)
    step = _slaney_mel_scalar(8000.0) / 129
    assert int(np.argmax(inner[0])) == round(15.0 / step) - 1


def test_mel_of_silence_is_the_floor() -> None:
    mel = R.log_mel(np.zeros(1280 * 3))
    assert mel.shape == (24, 128)
    np.testing.assert_array_equal(mel, (1.5 - 8.0 + 4.0) / 4.0)


def test_mel_frame_needs_only_its_window() -> None:
    # frame t uses samples up to 160 t + 199: extending the signal changes
    # nothing before the last old frame (the reflect padding only touches it)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1280 * 4) * 0.1
    longer = np.concatenate([x, rng.standard_normal(1280) * 0.1])
    a, b = R.log_mel(x), R.log_mel(longer)
    np.testing.assert_allclose(a[:-1], b[: len(a) - 1], atol=1e-12)


# ---------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------


def _rotate_halves(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """The other convention: rotate (x[j], x[j + hd/2]) pairs. x: [T, H, hd]."""
    hd = x.shape[-1]
    freqs = theta ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None, None] * freqs[None, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate(
        [a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1
    )


def _head_permutation(n_heads: int, hd: int) -> np.ndarray:
    """Row order that moves each head's even rows to its first half, odd to the second."""
    within = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    return np.concatenate([h * hd + within for h in range(n_heads)])


def test_rope_interleaved_equals_permuted_halves() -> None:
    rng = np.random.default_rng(7)
    n_heads, hd, dim, t = 3, 20, 48, 9
    wq, wk = rng.standard_normal((2, n_heads * hd, dim))
    bq = rng.standard_normal(n_heads * hd)
    x = rng.standard_normal((t, dim))
    pos = np.array([0, 1, 2, 5, 17, 100, 749, 750, 4000])
    theta = 1e4

    def scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.einsum("thd,shd->hts", q, k)

    q = R.rope_interleaved((x @ wq.T + bq).reshape(t, n_heads, hd), pos, theta)
    k = R.rope_interleaved((x @ wk.T).reshape(t, n_heads, hd), pos, theta)

    perm = _head_permutation(n_heads, hd)
    q2 = _rotate_halves((x @ wq[perm].T + bq[perm]).reshape(t, n_heads, hd), pos, theta)
    k2 = _rotate_halves((x @ wk[perm].T).reshape(t, n_heads, hd), pos, theta)
    np.testing.assert_allclose(scores(q, k), scores(q2, k2), rtol=1e-10, atol=1e-9)

    # permuting the weights but forgetting the bias is a real, visible mistake
    q_bad = _rotate_halves((x @ wq[perm].T + bq).reshape(t, n_heads, hd), pos, theta)
    assert not np.allclose(scores(q, k), scores(q_bad, k2), atol=1e-3)


def test_rope_position_zero_is_identity_and_pairs_rotate() -> None:
    x = np.arange(8, dtype=np.float64).reshape(1, 1, 8)
    np.testing.assert_array_equal(R.rope_interleaved(x, [0], 1e6), x)
    # pair 0 rotates by exactly `pos` radians (theta^0 = 1)
    y = R.rope_interleaved(np.array([[[1.0, 0.0, 0.0, 0.0]]]), [2], 1e6)
    np.testing.assert_allclose(y[0, 0, :2], [math.cos(2.0), math.sin(2.0)], atol=1e-15)


# ---------------------------------------------------------------------------
# Encoder / decoder structure
# ---------------------------------------------------------------------------


def _random_mel(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.6, 1.2, size=(frames, 128))


def test_gelu_is_exact_erf_form() -> None:
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    want = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(R.gelu(x), want, rtol=1e-15, atol=1e-15)


def test_encoder_is_causal(ref_tiny: R.RefModel) -> None:
    mel = _random_mel(96, 1)
    more = np.concatenate([mel, _random_mel(41, 2)])  # also an odd total count
    a, b = R.encoder(ref_tiny, mel), R.encoder(ref_tiny, more)
    assert a.shape == (48, ref_tiny.enc.dim) and b.shape == (68, ref_tiny.enc.dim)
    np.testing.assert_allclose(a, b[:48], atol=1e-12)


def test_encoder_window_edge(ref_tiny: R.RefModel) -> None:
    # Changing mel frames 0..9 reaches conv frames 0..6 (frame s reads mel up to
    # 2s + 1 and back to 2s - 3); each layer then reaches window - 1 frames further.
    w, n_layers = ref_tiny.enc.window, ref_tiny.enc.n_layers
    last_hit = 6 + n_layers * (w - 1)
    mel = _random_mel(2 * (last_hit + 20), 4)
    changed = mel.copy()
    changed[:10] = _random_mel(10, 5)
    a, b = R.encoder(ref_tiny, mel), R.encoder(ref_tiny, changed)
    np.testing.assert_allclose(a[last_hit + 1 :], b[last_hit + 1 :], atol=1e-12)
    assert np.abs(a[last_hit] - b[last_hit]).max() > 1e-9


def test_decoder_window_edge_and_cache(ref_tiny: R.RefModel) -> None:
    c = ref_tiny.dec
    n = c.n_layers * (c.window - 1) + 10
    x = np.random.default_rng(6).standard_normal((n, c.dim)) * 0.5
    y = x.copy()
    y[0] += 1.0
    full_x = R.Decoder(ref_tiny, 6.0).forward(x)
    full_y = R.Decoder(ref_tiny, 6.0).forward(y)
    edge = c.n_layers * (c.window - 1)  # the last position position 0 can reach
    np.testing.assert_allclose(full_x[edge + 1 :], full_y[edge + 1 :], atol=1e-12)
    assert np.abs(full_x[edge] - full_y[edge]).max() > 1e-9

    # one position at a time through the KV cache == all at once
    dec = R.Decoder(ref_tiny, 6.0)
    head = dec.forward(x[:7])
    steps = [dec.forward(x[p : p + 1]) for p in range(7, n)]
    np.testing.assert_allclose(np.concatenate([head, *steps]), full_x, rtol=1e-10, atol=1e-10)


def test_gqa_groups_consecutive_heads() -> None:
    # 6 query heads over 2 KV heads: heads 0-2 read KV head 0, heads 3-5 KV head 1
    rng = np.random.default_rng(8)
    q = rng.standard_normal((4, 6, 8))
    k, v = rng.standard_normal((2, 4, 2, 8))
    pos = np.arange(4)
    out = R.attention(q, k, v, pos, pos, window=100)
    for h in range(6):
        solo = R.attention(q[:, h : h + 1], k[:, h // 3 : h // 3 + 1], v[:, h // 3 : h // 3 + 1],
                           pos, pos, window=100)  # fmt: skip
        np.testing.assert_allclose(out[:, h], solo[:, 0], atol=1e-14)


def test_t_cond_and_ada_scales(ref_tiny: R.RefModel) -> None:
    tc = R.t_cond(8, 6.0)
    want = [math.cos(6.0 * 10000 ** (-i / 4)) for i in range(4)]
    want += [math.sin(6.0 * 10000 ** (-i / 4)) for i in range(4)]
    np.testing.assert_allclose(tc, want, atol=1e-15)
    s6, s12 = R.ada_scales(ref_tiny, 6), R.ada_scales(ref_tiny, 12)
    assert s6.shape == (ref_tiny.dec.n_layers, ref_tiny.dec.dim)
    assert not np.allclose(s6, s12)


# ---------------------------------------------------------------------------
# Model directories
# ---------------------------------------------------------------------------


def test_model_dir_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    again = tmp_path / "again"
    dm.make_model(again, dm.TINY, seed=1)
    for name in ("consolidated.safetensors", "params.json", "tekken.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    other = tmp_path / "other"
    dm.make_model(other, dm.TINY, seed=5)
    assert (other / "consolidated.safetensors").read_bytes() != (
        tiny_model_dir / "consolidated.safetensors"
    ).read_bytes()


def test_params_json_layout(tiny_model_dir: Path) -> None:
    p = json.loads((tiny_model_dir / "params.json").read_text())
    d = dm.TINY
    top = (p["dim"], p["n_layers"], p["head_dim"], p["hidden_dim"], p["n_heads"], p["n_kv_heads"])
    assert top == (d.dim, d.n_layers, d.head_dim, d.hidden_dim, d.n_heads, d.n_kv_heads)
    assert p["vocab_size"] == 1300 and p["sliding_window"] == 48
    assert p["ada_rms_norm_t_cond_dim"] == d.ada_t_cond_dim
    w = p["multimodal"]["whisper_model_args"]
    e = w["encoder_args"]
    enc = (e["dim"], e["n_layers"], e["head_dim"], e["n_heads"], e["n_kv_heads"])
    assert enc == (48, 2, 20, 3, 3)
    assert e["hidden_dim"] == 80 and e["sliding_window"] == 40
    assert w["downsample_args"] == {"downsample_factor": 4}
    a = e["audio_encoding_args"]
    assert (a["sampling_rate"], a["num_mel_bins"], a["hop_length"], a["window_size"]) == (
        16000, 128, 160, 400,
    )  # fmt: skip
    assert a["global_log_mel_max"] == 1.5


def test_tekken_specials_and_split_pieces(ref_tiny: R.RefModel, tiny_model_dir: Path) -> None:
    tek = json.loads((tiny_model_dir / "tekken.json").read_text(encoding="utf-8"))
    assert tek["config"]["default_num_special_tokens"] == 1000
    names = {s["rank"]: s["token_str"] for s in tek["special_tokens"]}
    assert len(names) == 1000
    assert (names[0], names[1], names[2]) == ("<unk>", "<s>", "</s>")
    assert names[32] == "[STREAMING_PAD]" and names[33] == "[STREAMING_WORD]"
    assert (ref_tiny.bos, ref_tiny.eos, ref_tiny.streaming_pad) == (1, 2, 32)

    pieces = [base64.b64decode(v["token_bytes"]) for v in tek["vocab"]]
    assert len(pieces) == 300 and len(set(pieces)) == 300
    lead, cont = 1000 + pieces.index(b"\xc3"), 1000 + pieces.index(b"\xa9")
    assert R.decode_text(ref_tiny, [32, lead, 33, cont, 2]) == "é"
    assert R.decode_text(ref_tiny, [lead]) == "\ufffd"


def test_tiny2_uses_only_its_vocab_size(ref_tiny2: R.RefModel, tiny2_model_dir: Path) -> None:
    tek = json.loads((tiny2_model_dir / "tekken.json").read_text(encoding="utf-8"))
    assert len(tek["vocab"]) == 300
    assert len(ref_tiny2.vocab) == ref_tiny2.vocab_size - 1000 == 280


def test_full_preset_matches_released_sizes() -> None:
    specs = dm.tensor_specs(dm.FULL)
    assert len(specs) == 711
    total = sum(int(np.prod(shape)) for _, shape, _, _ in specs)
    assert abs(total - 4.43e9) < 0.01e9
    shapes = {name: shape for name, shape, _, _ in specs}
    assert shapes["layers.0.attention.wk.weight"] == (1024, 3072)
    assert shapes["layers.25.ada_rms_norm_t_cond.0.weight"] == (32, 3072)
    assert shapes[dm.ENC_PREFIX + "audio_language_projection.0.weight"] == (3072, 5120)


def test_reference_load_checks_shapes(tmp_path: Path) -> None:
    d = tmp_path / "m"
    dm.make_model(d, dm.TINY, seed=3)
    p = json.loads((d / "params.json").read_text())
    p["hidden_dim"] = 100
    (d / "params.json").write_text(json.dumps(p))
    with pytest.raises(ValueError, match="differ"):
        R.load(d)


# ---------------------------------------------------------------------------
# Offline transcription
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")
@pytest.mark.parametrize("which", ["ref_tiny", "ref_tiny2"])
def test_transcribe_speech(which: str, request: pytest.FixtureRequest) -> None:
    m: R.RefModel = request.getfixturevalue(which)
    audio = synth("the quick brown fox jumps over the lazy dog")
    r = R.transcribe(m, audio, delay_ms=480)

    n_pos = (32 * 1280 + len(audio) + (-len(audio) % 1280) + 17 * 1280) // 1280
    assert r.padded_audio.shape == (n_pos * 1280,)
    assert r.mel.shape == (n_pos * 8, 128)
    assert r.encoder_out.shape == (n_pos * 4, m.enc.dim)
    assert r.adapter_out.shape == (n_pos, m.dec.dim)
    assert r.first_position == 38

    assert len(r.token_ids) > 0
    assert r.logits.shape == (len(r.token_ids), m.vocab_size)
    assert np.isfinite(r.logits).all()
    assert r.token_ids == [int(np.argmax(row)) for row in r.logits]
    if m.eos in r.token_ids:
        assert r.token_ids.index(m.eos) == len(r.token_ids) - 1
    else:
        assert len(r.token_ids) == n_pos - 38
    assert isinstance(r.text, str) and r.text == r.text.strip()

    # teacher forcing all positions in one pass reproduces the stepped logits
    prompt = [m.bos] + [m.streaming_pad] * 38
    tokens = prompt + r.token_ids[:-1]
    dec = R.Decoder(m, 6.0)
    n = len(tokens)
    all_logits = dec.forward(r.adapter_out[:n] + dec.embed(tokens))
    np.testing.assert_allclose(all_logits[38:], r.logits, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")
def test_transcribe_delay_changes_prompt(ref_tiny: R.RefModel) -> None:
    audio = synth("hello")
    r = R.transcribe(ref_tiny, audio, delay_ms=960)
    assert r.first_position == 33 + 12 - 1
    with pytest.raises(ValueError):
        R.transcribe(ref_tiny, audio, delay_ms=500)
