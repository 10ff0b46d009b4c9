"""The safetensors files of voxd's models, read and written in Python.

Layout: an 8-byte little-endian header length N, N bytes of JSON (tensor name
-> ``{"dtype", "shape", "data_offsets": [begin, end]}``, and an optional
``__metadata__`` object), then the data area; offsets count from its start.

:func:`read_header` accepts exactly what the engine's reader accepts
(native/src/safetensors.c, ``vx_st_open``), so a file the tools pass is one the
daemon loads: the header length within the file and at most 100 MB, a JSON
object, known dtype names (Q8/Q4 are voxd's block formats: 34- and 18-byte
blocks of 32 values along the last dimension), at most 4 non-negative
dimensions, ``data_offsets`` inside the data area holding exactly the bytes the
dtype and shape need, 2-byte types at even file offsets, and no two tensors
overlapping. What the engine does with ``__metadata__`` beyond that (the Q8/Q4
row-group layout key) is checked where it is used.

The writers (:func:`header_bytes`, :func:`writing`) lay tensors out in the
order given, back to back, after a header padded with spaces so the data area
starts 8-byte aligned, and write under a temporary name renamed at the end, so
an interrupted run never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

# The reference implementation's cap, and the engine's (VX_ST_MAX_HEADER).
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 4  # VX_MAX_DIMS
METADATA = "__metadata__"
Q_BLOCK_ELEMS = 32  # values per Q8/Q4 block, along the last dimension
BLOCK_BYTES = {"Q8": 34, "Q4": 18}  # one fp16 scale + 32 int8 / 32 int4 values
ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8}
# The engine's dtype names, in its order (vx_dtype).
DTYPES = ("F32", "F16", "BF16", "Q8", "Q4", "I8", "U8", "I32", "I64", "F64")
# Types whose elements (or block scales) the engine loads as 16-bit words.
_TWO_BYTE = frozenset({"F16", "BF16", "Q8", "Q4"})
_EXACT_MAX = 2**53  # the largest integer JSON numbers are read as exactly
_FLOAT_VIEWS = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8"}


class SafetensorsError(ValueError):
    """A file that is not a safetensors file the engine would load; the text says where."""


@dataclass(frozen=True)
class Tensor:
    """One header entry, checked."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # data_offsets, from the start of the data area
    end: int
    data_start: int  # file offset of the data area

    @property
    def offset(self) -> int:
        """File offset of the tensor's first byte."""
        return self.data_start + self.begin

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def entry(self) -> dict[str, Any]:
        """The header entry as JSON data."""
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "data_offsets": [self.begin, self.end],
        }


@dataclass(frozen=True)
class Header:
    """A file's checked header: tensors in header order, metadata, where the data is."""

    tensors: dict[str, Tensor]
    metadata: dict[str, Any]  # {} when the file has none (or one that is not an object)
    data_start: int
    data_size: int
    has_metadata: bool = False  # whether the header has a __metadata__ key

    @property
    def data_end(self) -> int:
        """The end of the last tensor in the data area (== data_size when nothing trails)."""
        return max((t.end for t in self.tensors.values()), default=0)

    def entries(self) -> dict[str, dict[str, Any]]:
        """Tensor entries as JSON data (no ``__metadata__``)."""
        return {name: t.entry() for name, t in self.tensors.items()}

    def json(self) -> dict[str, Any]:
        """The whole header as JSON data, ``__metadata__`` first when the file has one."""
        head: dict[str, Any] = {METADATA: self.metadata} if self.has_metadata else {}
        return {**head, **self.entries()}

    def string_metadata(self) -> dict[str, str]:
        """``__metadata__`` with its values as strings (the format's convention)."""
        return {str(k): str(v) for k, v in self.metadata.items()}


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of this dtype and shape; ValueError when there is no such tensor."""
    count = 1
    for d in shape:
        count *= d
    if dtype in BLOCK_BYTES:
        if not shape or shape[-1] % Q_BLOCK_ELEMS:
            raise ValueError(f"{dtype} needs a last dim that is a multiple of {Q_BLOCK_ELEMS}")
        return count // Q_BLOCK_ELEMS * BLOCK_BYTES[dtype]
    return count * ELEMENT_BYTES[dtype]


# --------------------------------------------------------------------------- reading


def read_header(path: str | os.PathLike[str]) -> Header:
    """The checked header of ``path``: SafetensorsError says what is wrong, OSError if unread."""
    path = Path(path)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise SafetensorsError(
                f"{path}: {size} bytes, too short to be a safetensors file (8-byte header length)"
            )
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise SafetensorsError(
                f"{path}: implausible header length {n}: past the end of the {size}-byte file"
            )
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(
                f"{path}: implausible header length {n}: over the {MAX_HEADER_BYTES}-byte limit"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    has_metadata = METADATA in header
    meta = header.pop(METADATA, None)
    tensors = {
        name: _tensor(path, name, entry, data_start, data_size) for name, entry in header.items()
    }
    _check_overlaps(path, list(tensors.values()))
    metadata = meta if isinstance(meta, dict) else {}
    return Header(tensors, metadata, data_start, data_size, has_metadata)


def _tensor(path: Path, name: str, e: Any, data_start: int, data_size: int) -> Tensor:
    def fail(what: str) -> SafetensorsError:
        return SafetensorsError(f"{path}: tensor '{name}': {what}")

    if not isinstance(e, dict):
        raise fail("header entry is not a JSON object")
    dtype = e.get("dtype")
    if dtype is None:
        raise fail("missing dtype")
    if not isinstance(dtype, str):
        raise fail("dtype is not a string")
    if dtype not in DTYPES:
        raise fail(f"unknown dtype '{dtype[:32]}' (supported: {' '.join(DTYPES)})")
    shape = e.get("shape")
    if shape is None:
        raise fail("missing shape")
    if not isinstance(shape, list):
        raise fail("shape is not an array")
    if len(shape) > MAX_DIMS:
        raise fail(f"shape has {len(shape)} dims (at most {MAX_DIMS} supported)")
    for i, d in enumerate(shape):
        if not _natural(d):
            raise fail(f"shape[{i}] is not a non-negative integer")
    shape = [int(d) for d in shape]
    offsets = e.get("data_offsets")
    if offsets is None:
        raise fail("missing data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))):
        raise fail("data_offsets must be [begin, end] with two non-negative integers")
    begin, end = (int(o) for o in offsets)
    if begin > end:
        raise fail(f"data_offsets begin {begin} is after end {end}")
    if end > data_size:
        raise fail(
            f"data_offsets [{begin}, {end}] lie outside the data ({data_size} bytes); "
            "the file is truncated or corrupt"
        )
    try:
        want = tensor_nbytes(dtype, shape)
    except ValueError as err:
        raise fail(f"{err} (shape {shape})") from None
    if end - begin != want:
        raise fail(
            f"data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {shape} "
            f"of {dtype} needs {want}"
        )
    if dtype in _TWO_BYTE and want > 0 and (data_start + begin) % 2:
        raise fail(
            f"{dtype} data at odd offset (data_offsets begin {begin}, file offset "
            f"{data_start + begin}); 2-byte elements must be 2-byte aligned"
        )
    return Tensor(name, dtype, tuple(shape), begin, end, data_start)


def _natural(x: Any) -> bool:
    """A JSON number the engine reads as a non-negative integer (json_as_int in
    native/src/json.c): integral, 64.0 included, and at most 2**53, which a
    double holds exactly."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return 0 <= x <= _EXACT_MAX and (isinstance(x, int) or x.is_integer())


def _check_overlaps(path: Path, tensors: list[Tensor]) -> None:
    """No two non-empty tensors share a byte (empty ones occupy nothing)."""
    far: Tensor | None = None  # the tensor reaching furthest so far
    for t in sorted((t for t in tensors if t.nbytes), key=lambda t: (t.begin, t.end)):
        if far is not None and t.begin < far.end:
            raise SafetensorsError(
                f"{path}: tensor '{t.name}': data_offsets [{t.begin}, {t.end}] overlap tensor "
                f"'{far.name}' [{far.begin}, {far.end}]"
            )
        if far is None or t.end > far.end:
            far = t


def read_tensors(
    path: str | os.PathLike[str], names: Sequence[str] | None = None
) -> dict[str, F32]:
    """Float tensors (all, or just ``names``) as float32 arrays; BF16 widened exactly."""
    header = read_header(path)
    wanted = list(header.tensors) if names is None else list(names)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, F32] = {}
    for name in wanted:
        t = header.tensors[name]
        if t.dtype not in _FLOAT_VIEWS:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        raw = np.frombuffer(mapped[t.offset : t.offset + t.nbytes], dtype=_FLOAT_VIEWS[t.dtype])
        arr = bf16_bits_to_f32(raw) if t.dtype == "BF16" else raw.astype(np.float32)
        out[name] = arr.reshape(t.shape).copy()
    del mapped
    return out


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Entry:
    """A tensor to write: its name, dtype, shape; its bytes follow from them."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


def encode_header(header: Mapping[str, Any]) -> bytes:
    """The length prefix and the JSON header, padded so the data starts 8-byte aligned."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    # Spaces, as other writers pad: readers that map the file can view tensors in place.
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def header_bytes(entries: Sequence[Entry], metadata: Mapping[str, str] | None = None) -> bytes:
    """The header of ``entries`` laid out back to back, in this order.

    With every tensor size even (BF16, Q8/Q4 blocks) every tensor starts 2-byte
    aligned, as the engine requires, and the data area has no holes.
    """
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    header: dict[str, Any] = {} if metadata is None else {METADATA: dict(metadata)}
    offset = 0
    for e in entries:
        header[e.name] = Tensor(e.name, e.dtype, e.shape, offset, offset + e.nbytes, 0).entry()
        offset += e.nbytes
    return encode_header(header)


@contextmanager
def writing(
    path: Path, entries: Sequence[Entry], metadata: Mapping[str, str] | None = None
) -> Iterator[BinaryIO]:
    """A file to write the data of ``entries`` into, in order, after their header.

    The data goes to ``path.partial``, renamed to ``path`` when the block ends
    with exactly the bytes the header promises (ValueError otherwise, and the
    partial file is removed).
    """
    header = header_bytes(entries, metadata)
    expected = len(header) + sum(e.nbytes for e in entries)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.write(header)
            yield f
            if f.tell() != expected:
                raise ValueError(f"{path}: wrote {f.tell()} bytes, the header promises {expected}")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


# --------------------------------------------------------------------------- BF16


def f32_to_bf16_bits(x: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Round float32 values to BF16 (round to nearest, ties to even); raw bits.

    BF16 is the top half of a float32. Adding 0x7FFF plus the lowest kept bit
    before truncating rounds to nearest with ties going to the even mantissa.
    NaNs are mapped to a quiet NaN so rounding cannot turn them into infinity.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + (np.uint32(0x7FFF) + lsb)) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(bits.view(np.float32))
    if nan.any():
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def bf16_bits_to_f32(bits: npt.NDArray[np.uint16]) -> F32:
    """Widen raw BF16 bits to float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
