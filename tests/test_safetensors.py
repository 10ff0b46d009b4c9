"""voxd.tools.safetensors: the one Python reader and writer of the model files.

The reader must accept exactly what the engine's C reader accepts
(native/src/safetensors.c): every damaged file below is refused by both, with
the cause named, and the files voxd writes are accepted by both.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from st_files import read_st, write_st

from voxd.engine import Engine, EngineError
from voxd.tools import devmodel as dm
from voxd.tools import safetensors as st
from voxd.tools.quantize import Options, quantize_model

NORM = "norm.weight"
WK = "layers.0.attention.wk.weight"

# ---------------------------------------------------------------------------
# safetensors + BF16
# ---------------------------------------------------------------------------


def _bf16_nearest_even(x: np.ndarray) -> np.ndarray:
    """Independent BF16 rounding: pick the nearer of the two neighbours in float64."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.int64)
    lo = bits & 0xFFFF0000
    hi = lo + 0x10000
    as_f = lambda b: (b.astype(np.uint32)).view(np.float32).astype(np.float64)  # noqa: E731
    xd = x.astype(np.float32).astype(np.float64)
    d_lo, d_hi = np.abs(xd - as_f(lo)), np.abs(as_f(hi) - xd)
    lo_even = ((lo >> 16) & 1) == 0
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & ~lo_even)
    return np.where(pick_hi, hi, lo) >> 16


def test_bf16_rounding_nearest_even() -> None:
    ties = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 2.0 + 2**-7], np.float32)
    out = st.bf16_bits_to_f32(st.f32_to_bf16_bits(ties))
    np.testing.assert_array_equal(out, np.array([1.0, 1.0 + 4 * 2**-8, -1.0, 2.0], np.float32))

    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32)
    bits[:1000] = (bits[:1000] & 0xFFFF0000) | 0x8000  # exact ties
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) < 3e38)]
    got = st.f32_to_bf16_bits(x).astype(np.int64)
    np.testing.assert_array_equal(got, _bf16_nearest_even(x))

    special = np.array([np.inf, -np.inf, np.nan, 3.4e38, 0.0, -0.0], np.float32)
    back = st.bf16_bits_to_f32(st.f32_to_bf16_bits(special))
    assert back[0] == np.inf and back[1] == -np.inf and np.isnan(back[2])
    assert back[3] == np.inf  # beyond the largest BF16: rounds to infinity
    assert np.signbit(back[5]) and back[4] == 0.0


def test_safetensors_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    a = rng.standard_normal((5, 3, 2)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)

    def two_chunks() -> Iterator[np.ndarray]:
        yield a[:2]
        yield a[2:]

    plans = [
        dm.TensorPlan("x.a", a.shape, two_chunks),
        dm.TensorPlan("y", b.shape, lambda: iter([b])),
    ]
    path = tmp_path / "t.safetensors"
    dm.write_safetensors(path, plans)

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert (8 + n) % 8 == 0
    assert header["x.a"] == {"dtype": "BF16", "shape": [5, 3, 2], "data_offsets": [0, 60]}
    assert header["y"] == {"dtype": "BF16", "shape": [7], "data_offsets": [60, 74]}
    assert len(raw) == 8 + n + 74

    back = st.read_tensors(path)
    for name, src in (("x.a", a), ("y", b)):
        assert back[name].dtype == np.float32 and back[name].shape == src.shape
        np.testing.assert_array_equal(back[name], st.bf16_bits_to_f32(st.f32_to_bf16_bits(src)))
        np.testing.assert_allclose(back[name], src, rtol=2**-8)

    bad = [dm.TensorPlan("z", (4,), lambda: iter([b[:3]]))]
    with pytest.raises(ValueError):
        dm.write_safetensors(tmp_path / "bad.safetensors", bad)


# ---------------------------------------------------------------------------
# the reader's rules are the engine's
# ---------------------------------------------------------------------------


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("params.json", "tekken.json", "consolidated.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        header, data = read_st(path)
        change(header)
        write_st(path, header, data)

    return apply


def _raw(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        path.write_bytes(change(path.read_bytes()))

    return apply


def _set(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        header[name][key] = value

    return change


def _shift_by_one(path: Path) -> None:
    """NORM one byte later, in a data area one byte longer: BF16 at an odd offset."""
    header, data = read_st(path)
    b, e = header[NORM]["data_offsets"]
    header[NORM]["data_offsets"] = [b + 1, e + 1]
    write_st(path, header, data + b"\0")


def _overlap(header: dict[str, Any]) -> None:
    """NORM's entry pointed into WK's bytes: two tensors share bytes."""
    nb, ne = header[NORM]["data_offsets"]
    b, e = header[WK]["data_offsets"]
    assert ne - nb < e - b
    header[NORM]["data_offsets"] = [b, b + (ne - nb)]


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "too_short": (_raw(lambda b: b[:5]), "too short"),
    "header_past_eof": (
        _raw(lambda b: struct.pack("<Q", len(b) * 10) + b[8:]),
        "header length",
    ),
    "not_json": (_raw(lambda b: b[:8] + b"x" + b[9:]), "not valid JSON"),
    "not_an_object": (
        _raw(lambda b: struct.pack("<Q", 8) + b"[1,2,3] " + b[8 + struct.unpack("<Q", b[:8])[0] :]),
        "not a JSON object",
    ),
    "entry_not_object": (_edit(lambda h: h.__setitem__(NORM, [1])), "not a JSON object"),
    "unknown_dtype": (_edit(_set(NORM, "dtype", "I16")), "unknown dtype"),
    "lowercase_dtype": (_edit(_set(NORM, "dtype", "bf16")), "unknown dtype"),
    "dtype_not_string": (_edit(_set(NORM, "dtype", 2)), "dtype is not a string"),
    "no_shape": (_edit(lambda h: h[NORM].pop("shape")), "missing shape"),
    "negative_dim": (_edit(_set(NORM, "shape", [-64])), "shape[0]"),
    "fractional_dim": (_edit(_set(NORM, "shape", [64.5])), "shape[0]"),
    "huge_dim": (_edit(_set(NORM, "shape", [2**53 + 2])), "shape[0]"),
    "five_dims": (_edit(_set(NORM, "shape", [1, 1, 1, 1, 64])), "dims"),
    "offsets_not_pair": (_edit(_set(NORM, "data_offsets", [0])), "data_offsets"),
    "offsets_reversed": (_edit(_set(NORM, "data_offsets", [10, 2])), "after end"),
    "past_the_data": (_raw(lambda b: b[:-100]), "outside the data"),
    "size_vs_shape": (_edit(_set(NORM, "shape", [32])), "needs"),
    "q8_last_dim": (_edit(lambda h: h[NORM].update(dtype="Q8", shape=[48])), "multiple of 32"),
    "odd_offset": (_shift_by_one, "odd offset"),
    "overlap": (_edit(_overlap), "overlap"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_reader_refuses_what_the_engine_refuses(
    tiny_model_dir: Path, tmp_path: Path, case: str
) -> None:
    d = _copy_model(tiny_model_dir, tmp_path / case)
    path = d / "consolidated.safetensors"
    damage, cause = DAMAGE[case]
    damage(path)
    with pytest.raises(st.SafetensorsError) as python:
        st.read_header(path)
    assert cause in str(python.value) and str(path) in str(python.value)
    with pytest.raises(EngineError):
        Engine(d)


def test_what_voxd_writes_passes_both_readers(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q4"
    quantize_model(tiny_model_dir, out, Options(fmt="Q4"))
    for d in (tiny_model_dir, out):
        header = st.read_header(d / "consolidated.safetensors")
        assert header.data_end == header.data_size and header.data_start % 8 == 0
        assert {t.dtype for t in header.tensors.values()} <= set(st.DTYPES)
        with Engine(d) as engine:
            assert engine.info.vocab_size > 0
    q4 = st.read_header(out / "consolidated.safetensors")
    assert "Q4" in {t.dtype for t in q4.tensors.values()}
    assert q4.string_metadata()["voxd_quantize"] == "q4"


def test_writer_refuses_data_that_does_not_match_its_header(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    entries = [st.Entry("a", "BF16", (4,)), st.Entry("b", "Q8", (1, 32))]
    with pytest.raises(ValueError, match="promises"), st.writing(path, entries, {}) as f:
        f.write(b"\0" * 8)  # a's bytes only: b's 34 are missing
    assert not path.exists() and not path.with_name(path.name + ".partial").exists()
    with st.writing(path, entries, {"k": "v"}) as f:
        f.write(b"\0" * (8 + 34))
    header = st.read_header(path)
    assert [(t.name, t.begin, t.end) for t in header.tensors.values()] == [
        ("a", 0, 8),
        ("b", 8, 42),
    ]
    assert header.metadata == {"k": "v"}
    with pytest.raises(ValueError, match="duplicate"):
        st.header_bytes([entries[0], entries[0]])


def test_integral_floats_are_integers_as_for_the_engine(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The engine reads 64.0 as 64 (json_as_int), so the reader does too."""
    d = _copy_model(tiny_model_dir, tmp_path / "m")
    path = d / "consolidated.safetensors"
    size = st.read_header(path).tensors[NORM].shape[0]
    _edit(_set(NORM, "shape", [float(size)]))(path)
    assert st.read_header(path).tensors[NORM].shape == (size,)
    with Engine(d) as engine:
        assert engine.info.dim == size


def test_header_json_is_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    header = {"__metadata__": {}, "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    write_st(path, header, b"\0" * 8)
    assert st.read_header(path).json() == header
    raw = path.read_bytes()
    assert json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]) == header
