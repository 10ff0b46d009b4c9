"""NaN/Inf weights: the quick check at load warns naming the tensor, `voxd model check`
scans every value and fails. Tiny random models with values poked into their bytes."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from st_files import read_header, read_st, write_tensors

from voxd.engine import Engine, NonFinite, find_nonfinite_weights
from voxd.tools import modelfetch
from voxd.tools import quantize as qz

WEIGHTS = "consolidated.safetensors"
WQ = "layers.0.attention.wq.weight"  # decoder matrix, BF16 [heads * head_dim, dim]
EMBED = "mm_streams_embeddings.embedding_module.tok_embeddings.weight"  # BF16 [1300, 64]
NORM = "norm.weight"  # the decoder's final norm, a vector

BF16_NAN = b"\xc0\x7f"  # 0x7fc0
BF16_NEG_INF = b"\x80\xff"  # 0xff80
F16_INF = b"\x00\x7c"  # 0x7c00, a Q8/Q4 block scale
F32_INF = struct.pack("<f", float("inf"))

Edit = Callable[[str, list[int], bytes], tuple[str, list[int], bytes]]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_tensors(model: Path, edits: dict[str, Edit]) -> None:
    """Rewrite the weights with some tensors changed (dtype, shape and bytes)."""
    path = model / WEIGHTS
    header, data = read_st(path)
    meta = header.pop("__metadata__", None)
    blobs = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = info["data_offsets"]
        entry = (info["dtype"], list(info["shape"]), data[b:e])
        if name in edits:
            entry = edits.pop(name)(*entry)
        blobs.append((name, *entry))
    assert not edits, f"no such tensors: {list(edits)}"
    write_tensors(path, blobs, meta)


def poke(index: int, value: bytes) -> Edit:
    """Put the bytes of one value at flat element ``index`` (same dtype as ``value``)."""

    def edit(dtype: str, shape: list[int], raw: bytes) -> tuple[str, list[int], bytes]:
        at = index * len(value)
        assert at + len(value) <= len(raw)
        return dtype, shape, raw[:at] + value + raw[at + len(value) :]

    return edit


def poke_many(*edits: Edit) -> Edit:
    def edit(dtype: str, shape: list[int], raw: bytes) -> tuple[str, list[int], bytes]:
        for e in edits:
            dtype, shape, raw = e(dtype, shape, raw)
        return dtype, shape, raw

    return edit


def bf16_to_f32(dtype: str, shape: list[int], raw: bytes) -> tuple[str, list[int], bytes]:
    assert dtype == "BF16"
    bits = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
    return "F32", shape, bits.tobytes()


def model_check(model: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = modelfetch.main(["model", "check", "--dir", str(model)])
    return rc, capsys.readouterr().err


def nonfinite_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "voxd.engine" and r.levelname == "WARNING"
    ]


# -- tests ------------------------------------------------------------------------------


def test_a_clean_model_gives_no_warning(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level("WARNING", logger="voxd.engine"), Engine(tiny_model_dir) as e:
        assert e.nonfinite.total == 0
        assert e.find_nonfinite(full=True).total == 0
    assert nonfinite_warnings(caplog) == []
    assert find_nonfinite_weights(tiny_model_dir / WEIGHTS).total == 0
    rc, err = model_check(tiny_model_dir, capsys)
    assert rc == 0, err


def test_nan_in_a_checked_matrix_row_warns_at_load_naming_the_tensor(
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    rows, cols = read_header(model / WEIGHTS)[WQ]["shape"]
    # Row 0 and the last row are always among the rows the quick check reads.
    last = (rows - 1) * cols + 3
    edit_tensors(model, {WQ: poke_many(poke(5, BF16_NAN), poke(last, BF16_NEG_INF))})
    with caplog.at_level("WARNING", logger="voxd.engine"), Engine(model) as e:  # loads
        assert e.nonfinite.tensors == (NonFinite(WQ, 2, 5),)
        assert e.nonfinite.total == 1
    warnings = "\n".join(nonfinite_warnings(caplog))
    assert f"tensor '{WQ}': 2 non-finite value(s), first at element 5" in warnings
    assert "voxd model check" in warnings
    rc, err = model_check(model, capsys)
    assert rc == 1
    assert f"{WEIGHTS}: tensor '{WQ}': 2 non-finite value(s), first at element 5" in err


def test_inf_in_an_f32_norm_vector_warns_at_load(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Vectors are checked in full; F32 tensors by their own bit pattern."""
    model = copy_model(tiny_model_dir, tmp_path / "m")
    edit_tensors(model, {NORM: poke_many(bf16_to_f32, poke(7, F32_INF))})
    assert read_header(model / WEIGHTS)[NORM]["dtype"] == "F32"
    with caplog.at_level("WARNING", logger="voxd.engine"), Engine(model) as e:
        assert e.nonfinite.tensors == (NonFinite(NORM, 1, 7),)
    assert any(f"'{NORM}'" in w for w in nonfinite_warnings(caplog))


def test_model_check_scans_every_value_the_quick_check_skips(
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rows between the sampled ones are read only by the full scan."""
    model = copy_model(tiny_model_dir, tmp_path / "m")
    rows, cols = read_header(model / WEIGHTS)[EMBED]["shape"]
    assert rows > 4 * 2  # row 1 is not one of the 4 evenly spread rows
    edit_tensors(
        model,
        {
            EMBED: poke_many(poke(cols + 9, BF16_NAN), poke(cols + 10, BF16_NAN)),
            NORM: poke(0, BF16_NAN),
        },
    )
    with caplog.at_level("WARNING", logger="voxd.engine"), Engine(model) as e:
        assert e.nonfinite.tensors == (NonFinite(NORM, 1, 0),)  # the quick check
        full = e.find_nonfinite(full=True)
    assert full.total == 2
    assert set(full.tensors) == {NonFinite(EMBED, 2, cols + 9), NonFinite(NORM, 1, 0)}
    rc, err = model_check(model, capsys)
    assert rc == 1
    assert f"tensor '{EMBED}': 2 non-finite value(s), first at element {cols + 9}" in err
    assert f"tensor '{NORM}': 1 non-finite value(s), first at element 0" in err
    assert "looks complete" not in err


@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_non_finite_block_scale_of_a_quantized_matrix_warns(
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    model = tmp_path / fmt
    assert qz.main(["quantize", str(tiny_model_dir), str(model), "--quiet", "--format", fmt]) == 0
    assert read_header(model / WEIGHTS)[WQ]["dtype"] == fmt.upper()
    # Row groups of 8 rows: the group's first bytes are block 0's scales, row 0 first.
    edit_tensors(model, {WQ: poke(0, F16_INF)})
    with caplog.at_level("WARNING", logger="voxd.engine"), Engine(model) as e:
        assert e.nonfinite.tensors == (NonFinite(WQ, 32, 0),)  # the block's 32 values
    assert any(f"'{WQ}'" in w for w in nonfinite_warnings(caplog))
    rc, err = model_check(model, capsys)
    assert rc == 1 and f"tensor '{WQ}': 32 non-finite value(s), first at element 0" in err
