"""bench/openblas_baseline.py computes the real decoder step, not a stand-in workload.

The baseline's timed step is checked against the float64 reference decoder on
the tiny model (its logits, past the sliding window), its weights against the
file (float32, decoder only), its byte count against ``voxd bench``'s, and the
script end to end. No timing is compared with anything.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import reference
from st_files import read_header

from bench import openblas_baseline as ob
from voxd.tools import quantize as qz
from voxd.tools.bench import summarize_weights

DELAY = 6  # positions: the daemon's 480 ms
KV = 52  # past the tiny decoder's sliding window of 48
STEPS = 4


@pytest.fixture(scope="module")
def baseline_model(tiny_model_dir: Path) -> reference.RefModel:
    return ob.load_baseline(tiny_model_dir)


@pytest.fixture(scope="module")
def q4_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baseline_q4") / "q4"
    assert qz.main(["quantize", str(tiny_model_dir), str(out), "--quiet", "--format", "q4"]) == 0
    return out


def test_baseline_holds_the_decoder_in_float32(
    baseline_model: reference.RefModel, ref_tiny: reference.RefModel
) -> None:
    w = baseline_model.w
    assert set(w) == {k for k in ref_tiny.w if reference.is_decoder_tensor(k)}
    assert not any("whisper_encoder" in k for k in w)
    for name, arr in w.items():
        assert arr.dtype == np.float32, name
        # BF16 widens to float32 exactly
        np.testing.assert_array_equal(arr, ref_tiny.w[name].astype(np.float32), err_msg=name)


def test_baseline_steps_give_the_reference_logits(
    baseline_model: reference.RefModel, ref_tiny: reference.RefModel
) -> None:
    dec, token = ob.start_baseline(baseline_model, KV, DELAY)
    assert dec.pos == KV - 1
    ref = reference.Decoder(ref_tiny, float(DELAY))
    prompt = ob.prompt_tokens(ref_tiny, KV - 1)
    assert token == int(np.argmax(ref.forward(ref.embed(prompt))[-1]))
    for _ in range(STEPS):
        got = ob.baseline_step(dec, token)
        want = ref.forward(ref.embed([token]))[0]
        assert got.dtype == np.float32 and got.shape == (ref_tiny.vocab_size,)
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-6 * scale)
        assert int(np.argmax(got)) == int(np.argmax(want))
        token = int(np.argmax(want))
    assert dec.keys[0].shape[0] == KV + STEPS - 1  # the cache the steps attended over


def test_baseline_refuses_weights_that_are_not_bf16(q4_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="BF16"):
        ob.load_baseline(q4_model_dir)


def test_step_bytes_are_float32_matrices_head_and_kv(
    baseline_model: reference.RefModel, tiny_model_dir: Path
) -> None:
    c = baseline_model.dec
    ws = summarize_weights(tiny_model_dir)  # BF16: half the float32 bytes
    kv = KV * c.n_layers * 2 * c.n_kv_heads * c.head_dim * 4
    assert ob.step_bytes(baseline_model, KV) == 2 * (ws.decoder_pass_bytes + ws.head_bytes) + kv
    assert len(ob.layer_matrices(baseline_model)) == 7 * c.n_layers + 1


def test_encoder_shapes_are_the_encoder_layer_matrices(
    ref_tiny: reference.RefModel, tiny_model_dir: Path
) -> None:
    shapes = ob.encoder_matrix_shapes(read_header(tiny_model_dir / ob.MODEL_FILE))
    want = [
        tuple(v.shape)
        for k, v in ref_tiny.w.items()
        if k.startswith(reference.WHISPER + "transformer.layers.")
        and v.ndim == 2
        and k.rsplit(".", 2)[-2] in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    ]
    assert sorted(shapes) == sorted(want) and len(shapes) == 7 * ref_tiny.enc.n_layers
    assert ob.encoder_flop_per_frame(shapes) == 2 * sum(o * i for o, i in want)


def test_encoder_products_count_their_flops() -> None:
    shapes = [(6, 4), (4, 6), (5, 4)]
    r = ob.time_encoder_products(shapes, rows=3, reps=2)
    assert r.rows == 3 and r.ms > 0
    assert r.gflops == pytest.approx(2 * (24 + 24 + 20) * 3 / r.ms / 1e6)


def test_script_reports_baseline_and_voxd(tiny_model_dir: Path, q4_model_dir: Path) -> None:
    argv = ["--bf16-dir", str(tiny_model_dir), "--voxd-dir", str(tiny_model_dir)]
    argv += ["--voxd-dir", str(q4_model_dir), "--steps", "2", "--kv-positions", "40"]
    argv += ["--membw-mb", "64", "--threads", "1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert ob.main([*argv, "--json"]) == 0
    r = json.loads(out.getvalue())
    assert "openblas" in r["blas"]["name"].lower()
    assert r["read_bandwidth_gbs"] > 0
    b = r["baseline"]
    assert len(b["step_ms"]) == 2 and b["ms_per_step"] > 0 and b["kv_positions"] == 40
    assert [v["decoder_format"] for v in r["voxd"]] == ["bf16", "q4"]
    for v in r["voxd"]:
        assert v["positions"] >= 2 and v["kv_first"] >= 40 and v["ms_per_step"] > 0
        assert v["speedup"] == pytest.approx(b["ms_per_step"] / v["ms_per_step"])
    assert [v["target"] for v in r["voxd"]] == [3.0, 10.0]
    e = r["encoder"]
    assert e["fma_peak_gflops"] > 0 and e["matrices"] > 0
    assert [b["rows"] for b in e["openblas"]][1] == max(v["frames"] for v in e["voxd"])
    for v, vx in zip(e["voxd"], r["voxd"], strict=True):
        assert v["passes"] >= 1 and v["frames"] > 0 and v["ms"] > 0
        # the same FLOPs per frame on both sides
        want = e["gflop_per_frame"] * v["frames"] / (v["ms"] / 1e3)
        assert v["gflops"] == pytest.approx(want) and v["dir"] == vx["dir"]
    text = ob.format_report(r)
    for label in (
        "memory read bandwidth",
        "baseline decoder step",
        "ratio bf16",
        "ratio q4",
        "OpenBLAS products",
        "voxd q4 model's encoder",
    ):
        assert label in text
