"""Quantize a Voxtral model directory to voxd's Q8 or Q4 block formats.

``voxd quantize IN_DIR OUT_DIR --format q8|q4`` reads ``consolidated.safetensors``
(BF16) and writes a model directory the engine loads unchanged: the same tensor
names and *logical* shapes, with dtype ``"Q8"`` or ``"Q4"`` for the quantized
matrices (``params.json`` and ``tekken.json`` are copied).

Formats (native/src/quant.h; blocks of 32 consecutive elements of a row)::

    Q8: fp16 scale d, 32 x int8 q                       value = d * q
    Q4: fp16 scale d, 16 bytes; byte j = element j in the low nibble and
        element j + 16 in the high nibble               value = d * (nibble - 8)

The rounding rules are those of quant.c, so this writes the bytes the C
quantizer would: Q8 takes ``d = fp16(amax / 127)`` and ``q = clamp(rint(v / d),
-127, 127)``; Q4 takes the element of largest magnitude (the first one on a
tie), ``d = fp16(extreme / -8)`` so that the extreme maps exactly to level 0
(all 16 levels are used), and ``nibble = clamp(rint(v / d) + 8, 0, 15)``. All
arithmetic is float32, ``rint`` rounds half to even like C's ``lrintf``, and
the scale conversion rounds to nearest even like ``vx_f32_to_f16``.

Layout (``"voxd_q_layout": "rowgroup8"`` in the file's ``__metadata__``; the
engine refuses Q8/Q4 files without it). A Q8/Q4 tensor ``[rows, cols]`` is
stored in groups of 8 rows (the last group holds what is left, ``n`` rows).
Group ``g`` starts at byte ``8 * g * nblk * BB`` (``nblk = cols / 32``,
``BB`` = 34 or 18) and holds, block column by block column, the ``n`` rows'
fp16 scales and then their ``n`` payloads, each in row order::

    group g: [d(r0,b0) .. d(rn-1,b0)][q(r0,b0) .. q(rn-1,b0)][d(r0,b1) ..] ...

A matrix-vector kernel then reads one contiguous stream per 8 rows and a
block's 8 scales with one load. The size is that of row-major blocks, and a
one-row tensor is one row of blocks.

What is quantized:

* 2-D weight matrices whose rows are a whole number of blocks (last dim a
  multiple of 32) - every linear layer of the real model.
* 3-D weights (the conv stem, which the engine views as ``[out, in * 3]``) keep
  their source dtype: the engine takes Q8/Q4 only for 2-D matrices, and the
  conv weights are 0.1 % of the model.
* 1-D tensors (norms, biases) are copied as they are (BF16): they are tiny and
  every value matters.
* The token embedding stays Q8 under ``--format q4`` unless ``--embedding``
  says otherwise: it is also the output head, so its error goes straight into
  every logit - a 4-bit head moves the top-2 margins of every step - while the
  Q8 copy costs only ~0.2 GB more reads per step than Q4 (427 vs 226 MB for
  the real [131072, 3072] table); as the input embedding only one row per step
  is read.
* ``--keep-encoder q8|bf16`` gives the audio side (``whisper_encoder.*`` and the
  adapter ``audio_language_projection.*``) its own format: the encoder is
  compute bound (its matmuls are batched), so a smaller format saves it little
  time but does cost accuracy.
* ``--keep PATTERN`` (fnmatch on tensor names, repeatable) keeps tensors as
  they are.

The input is read through a NumPy memmap one row chunk at a time (a few MB),
and the output is streamed the same way, so peak memory stays far below 1 GB
even for the 8.9 GB model. The output file is written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np
import numpy.typing as npt

from voxd.tools import safetensors as st

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

QBLOCK = st.Q_BLOCK_ELEMS
Q8_BLOCK_BYTES = st.BLOCK_BYTES["Q8"]
Q4_BLOCK_BYTES = st.BLOCK_BYTES["Q4"]
BLOCK_BYTES = st.BLOCK_BYTES
SCALE_BYTES = 2  # the fp16 scale that starts every block

ROW_GROUP = 8  # rows per group of the on-disk layout
LAYOUT_KEY = "voxd_q_layout"  # __metadata__ key naming the layout ...
LAYOUT = "rowgroup8"  # ... and its value (native/src/quant.h VX_Q_LAYOUT)

MODEL_FILE = "consolidated.safetensors"
COPIED_FILES = ("params.json", "tekken.json")

ENCODER_MARKERS = ("whisper_encoder.", "audio_language_projection.")
EMBEDDING_SUFFIX = "tok_embeddings.weight"

# Elements converted per step: 2 Mi float32 = 8 MB, plus a handful of
# temporaries of that size, keeps the whole run well under 200 MB.
_CHUNK_ELEMS = 1 << 21

_ELEM_BYTES = st.ELEMENT_BYTES
_FLOAT_DTYPES = ("BF16", "F16", "F32")


class QuantizeError(RuntimeError):
    """A model directory that cannot be quantized (message says why)."""


# ---------------------------------------------------------------------------
# block formats
# ---------------------------------------------------------------------------


def _blocks(x: npt.ArrayLike) -> F32:
    v = np.ascontiguousarray(x, dtype=np.float32)
    if v.size % QBLOCK:
        raise ValueError(f"{v.size} values are not a whole number of {QBLOCK}-blocks")
    if not np.isfinite(v).all():
        raise ValueError("cannot quantize NaN or infinite values")
    return v.reshape(-1, QBLOCK)


def _inverse(d: F32) -> F32:
    """1/d in float32 where the test of quant.c passes, else 0."""
    inv = np.zeros_like(d)
    np.divide(np.float32(1.0), d, out=inv, where=d != 0)
    return inv


def quantize_q8(x: npt.ArrayLike) -> U8:
    """Q8 blocks of x (C order, a multiple of 32 values): bytes as quant.c writes them."""
    v = _blocks(x)
    amax = np.abs(v).max(axis=1)
    dh = (amax / np.float32(127.0)).astype(np.float16)
    inv = _inverse(dh.astype(np.float32))
    q = np.clip(np.rint(v * inv[:, None]), -127, 127).astype(np.int8)
    out = np.empty((v.shape[0], Q8_BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = dh.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(-1)


def quantize_q4(x: npt.ArrayLike) -> U8:
    """Q4 blocks of x (C order, a multiple of 32 values): bytes as quant.c writes them."""
    v = _blocks(x)
    mag = np.abs(v)
    first = np.argmax(mag, axis=1)  # the first element of largest magnitude, as in C
    ext = v[np.arange(v.shape[0]), first]
    # an all-zero block keeps C's starting value +0.0 (so d = -0.0, bits 0x8000)
    ext = np.where(mag.max(axis=1) > 0, ext, np.float32(0.0)).astype(np.float32)
    dh = (ext / np.float32(-8.0)).astype(np.float16)
    inv = _inverse(dh.astype(np.float32))
    n = np.clip(np.rint(v * inv[:, None]) + 8, 0, 15).astype(np.uint8)
    out = np.empty((v.shape[0], Q4_BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = dh.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = n[:, :16] | (n[:, 16:] << np.uint8(4))
    return out.reshape(-1)


def _scales(blocks: U8) -> F32:
    return blocks[:, :2].copy().view("<f2").astype(np.float32)


def dequantize_q8(raw: npt.ArrayLike) -> F32:
    """Values of Q8 blocks (flat, block order) as float32: d * q, exact."""
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, Q8_BLOCK_BYTES)
    q = b[:, 2:].view(np.int8).astype(np.float32)
    out: F32 = (q * _scales(b)).reshape(-1)
    return out


def dequantize_q4(raw: npt.ArrayLike) -> F32:
    """Values of Q4 blocks (flat, block order) as float32: d * (nibble - 8), exact."""
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)
    packed = b[:, 2:]
    n = np.concatenate([packed & np.uint8(0x0F), packed >> np.uint8(4)], axis=1)
    out: F32 = ((n.astype(np.float32) - np.float32(8.0)) * _scales(b)).reshape(-1)
    return out


# flat block order (row-major blocks) per format; callers check the dtype first
_QUANTIZE_FLAT: dict[str, Callable[[npt.ArrayLike], U8]] = {"Q8": quantize_q8, "Q4": quantize_q4}
_DEQUANTIZE_FLAT: dict[str, Callable[[npt.ArrayLike], F32]] = {
    "Q8": dequantize_q8,
    "Q4": dequantize_q4,
}


# ---------------------------------------------------------------------------
# the row-group layout of a tensor
# ---------------------------------------------------------------------------


def _matrix_dims(dtype: str, shape: Sequence[int]) -> tuple[int, int]:
    """(rows, blocks per row) of a Q8/Q4 tensor; it must be 2-D of whole blocks."""
    if dtype not in BLOCK_BYTES:
        raise ValueError(f"not a block format: {dtype}")
    if len(shape) != 2 or shape[1] % QBLOCK:
        raise ValueError(
            f"{dtype} needs a 2-D shape whose last dim is a multiple of {QBLOCK}: {list(shape)}"
        )
    return int(shape[0]), int(shape[1]) // QBLOCK


def _group_slices(rows: int) -> Iterator[tuple[int, int, int]]:
    """(first row, groups, rows per group): the whole groups, then the tail group."""
    full = rows // ROW_GROUP
    if full:
        yield 0, full, ROW_GROUP
    if rows % ROW_GROUP:
        yield full * ROW_GROUP, 1, rows % ROW_GROUP


def to_rowgroups(blocks: npt.ArrayLike, rows: int, block_bytes: int) -> U8:
    """Row-major blocks of ``rows`` rows (each row a run of blocks, as
    quantize_q8/q4 write them) reordered into the row-group layout. A chunk of
    rows starting at a multiple of 8 maps to the same bytes as in the whole
    tensor, so a tensor may be converted chunk by chunk."""
    b = np.asarray(blocks, dtype=np.uint8)
    if b.size == 0:
        return b.reshape(-1)
    b = b.reshape(rows, -1, block_bytes)
    nblk = b.shape[1]
    out = np.empty(b.size, dtype=np.uint8)
    for r0, ng, n in _group_slices(rows):
        # [groups, n, nblk, BB] -> [groups, nblk, n, BB]: one group block per (g, b)
        g = b[r0 : r0 + ng * n].reshape(ng, n, nblk, block_bytes).transpose(0, 2, 1, 3)
        dst = out[r0 * nblk * block_bytes : (r0 + ng * n) * nblk * block_bytes]
        dst = dst.reshape(ng, nblk, n * block_bytes)
        dst[:, :, : SCALE_BYTES * n] = g[..., :SCALE_BYTES].reshape(ng, nblk, -1)
        dst[:, :, SCALE_BYTES * n :] = g[..., SCALE_BYTES:].reshape(ng, nblk, -1)
    return out


def from_rowgroups(raw: npt.ArrayLike, rows: int, block_bytes: int) -> U8:
    """The inverse of to_rowgroups: row-major blocks, flat."""
    flat = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if flat.size == 0:
        return flat
    if rows <= 0 or flat.size % (rows * block_bytes):
        raise ValueError(f"{flat.size} bytes are not {rows} rows of {block_bytes}-byte blocks")
    nblk = flat.size // (rows * block_bytes)
    out = np.empty((rows, nblk, block_bytes), dtype=np.uint8)
    for r0, ng, n in _group_slices(rows):
        src = flat[r0 * nblk * block_bytes : (r0 + ng * n) * nblk * block_bytes]
        src = src.reshape(ng, nblk, n * block_bytes)
        g = out[r0 : r0 + ng * n].reshape(ng, n, nblk, block_bytes).transpose(0, 2, 1, 3)
        g[..., :SCALE_BYTES] = src[:, :, : SCALE_BYTES * n].reshape(ng, nblk, n, SCALE_BYTES)
        g[..., SCALE_BYTES:] = src[:, :, SCALE_BYTES * n :].reshape(ng, nblk, n, -1)
    return out.reshape(-1)


def quantize(dtype: str, x: npt.ArrayLike) -> U8:
    """A whole Q8/Q4 tensor: the bytes of the 2-D x ``[rows, cols]`` in the
    row-group layout, as a model file holds them."""
    v = np.asarray(x, dtype=np.float32)
    rows, _ = _matrix_dims(dtype, v.shape)
    return to_rowgroups(_QUANTIZE_FLAT[dtype](v), rows, BLOCK_BYTES[dtype])


def dequantize(dtype: str, raw: npt.ArrayLike, shape: Sequence[int]) -> F32:
    """Values of a whole Q8/Q4 tensor of this 2-D shape (row-group layout) as
    float32 ``shape``, exact."""
    rows, nblk = _matrix_dims(dtype, shape)
    flat = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if flat.size != rows * nblk * BLOCK_BYTES[dtype]:
        raise ValueError(f"{flat.size} bytes do not fit {dtype} {list(shape)}")
    blocks = from_rowgroups(flat, rows, BLOCK_BYTES[dtype])
    return _DEQUANTIZE_FLAT[dtype](blocks).reshape(rows, nblk * QBLOCK)


def quantized_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a Q8/Q4 tensor of this logical shape (2-D, last dim a multiple of 32)."""
    rows, nblk = _matrix_dims(dtype, shape)
    return rows * nblk * BLOCK_BYTES[dtype]


# ---------------------------------------------------------------------------
# safetensors I/O
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the data
    nbytes: int


def read_header(path: Path) -> tuple[list[SourceTensor], dict[str, str]]:
    """Tensors of a safetensors file in data order, and its ``__metadata__``.

    The file is checked as the engine checks it (voxd.tools.safetensors).
    """
    try:
        header = st.read_header(path)
    except st.SafetensorsError as e:
        raise QuantizeError(str(e)) from None
    tensors = [
        SourceTensor(t.name, t.dtype, t.shape, t.offset, t.nbytes) for t in header.tensors.values()
    ]
    tensors.sort(key=lambda t: t.offset)
    return tensors, header.string_metadata()


def _read_rows(path: Path, t: SourceTensor, cols: int) -> Iterator[F32]:
    """The tensor as float32 [rows, cols] chunks, each from its own small memmap.
    Every chunk but the last is a whole number of row groups, so each one's
    row-group bytes are the next bytes of the output."""
    rows = t.nbytes // (_ELEM_BYTES[t.dtype] * cols) if cols else 0
    step = max(ROW_GROUP, _CHUNK_ELEMS // max(cols, 1) // ROW_GROUP * ROW_GROUP)
    np_dtype = {"BF16": "<u2", "F16": "<f2", "F32": "<f4"}[t.dtype]
    row_bytes = cols * _ELEM_BYTES[t.dtype]
    for r0 in range(0, rows, step):
        nr = min(step, rows - r0)
        m = np.memmap(
            path, dtype=np_dtype, mode="r", offset=t.offset + r0 * row_bytes, shape=(nr, cols)
        )
        if t.dtype == "BF16":
            chunk = (m.astype(np.uint32) << np.uint32(16)).view(np.float32)
        else:
            chunk = m.astype(np.float32)
        del m  # unmap now: only this chunk's pages were ever resident
        yield chunk


def _copy_bytes(src: BinaryIO, dst: BinaryIO, offset: int, nbytes: int) -> None:
    src.seek(offset)
    left = nbytes
    while left:
        buf = src.read(min(left, 8 << 20))
        if not buf:
            raise QuantizeError("input file ended early")
        dst.write(buf)
        left -= len(buf)


# ---------------------------------------------------------------------------
# the plan: what happens to each tensor
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    fmt: str  # "Q8" or "Q4"
    encoder: str | None = None  # "Q8", "BF16" or None (= fmt)
    embedding: str | None = None  # "Q8", "Q4", "BF16" or None (Q8 for Q4 models)
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanEntry:
    src: SourceTensor
    dtype: str  # output dtype: "Q8", "Q4" or the source dtype (copied)
    why: str  # for the summary when not quantized

    @property
    def quantized(self) -> bool:
        return self.dtype in BLOCK_BYTES and self.src.dtype not in BLOCK_BYTES

    @property
    def nbytes(self) -> int:
        if self.quantized:
            return quantized_nbytes(self.dtype, self.src.shape)
        return self.src.nbytes


def choose_dtype(t: SourceTensor, opts: Options) -> tuple[str, str]:
    """(output dtype, reason) for one tensor."""
    if t.dtype in BLOCK_BYTES:
        return t.dtype, "already quantized"
    if any(fnmatch.fnmatchcase(t.name, p) for p in opts.keep):
        return t.dtype, "--keep"
    if t.dtype not in _FLOAT_DTYPES:
        return t.dtype, f"dtype {t.dtype}"
    if len(t.shape) != 2:  # the engine takes Q8/Q4 for 2-D matrices only
        return t.dtype, f"{len(t.shape)}-D tensor"
    if t.shape[-1] % QBLOCK:
        return t.dtype, f"last dim {t.shape[-1]} not a multiple of {QBLOCK}"
    target = opts.fmt
    if t.name.endswith(EMBEDDING_SUFFIX):
        target = opts.embedding or ("Q8" if opts.fmt == "Q4" else opts.fmt)
    elif any(m in t.name for m in ENCODER_MARKERS) and opts.encoder:
        target = opts.encoder
    if target == "BF16":
        return t.dtype, "kept BF16 by option"
    return target, ""


def make_plan(tensors: Sequence[SourceTensor], opts: Options) -> list[PlanEntry]:
    out = []
    for t in tensors:
        elem = _ELEM_BYTES.get(t.dtype)
        if t.dtype not in BLOCK_BYTES and elem is not None:
            want = int(np.prod(t.shape, dtype=np.int64)) * elem
            if want != t.nbytes:
                raise QuantizeError(
                    f"tensor '{t.name}': {t.nbytes} bytes do not fit {t.dtype} {list(t.shape)}"
                )
        dtype, why = choose_dtype(t, opts)
        out.append(PlanEntry(t, dtype, why))
    return out


# ---------------------------------------------------------------------------
# quantizing a model directory
# ---------------------------------------------------------------------------


@dataclass
class Summary:
    counts: dict[str, int]
    in_bytes: int
    out_bytes: int
    worst_rel_rms: dict[str, tuple[float, str]]  # dtype -> (error, tensor)
    seconds: float


def _check_source_layout(path: Path, tensors: Sequence[SourceTensor], meta: dict[str, str]) -> None:
    """Q8/Q4 tensors of the input are copied as they are, so they must already
    be in the row-group layout: else the output would claim a layout it lacks."""
    if meta.get(LAYOUT_KEY) == LAYOUT:
        return
    for t in tensors:
        if t.dtype in BLOCK_BYTES:
            raise QuantizeError(
                f"{path}: tensor '{t.name}' is {t.dtype} in an older voxd block layout; "
                "quantize the BF16 model instead"
            )


def _write_quantized(src_path: Path, e: PlanEntry, dst: BinaryIO) -> float:
    """Quantize one tensor into dst chunk by chunk (row-group layout); returns
    the relative RMS error of its values."""
    err2 = ref2 = 0.0
    written = 0
    for chunk in _read_rows(src_path, e.src, e.src.shape[-1]):
        try:
            blocks = _QUANTIZE_FLAT[e.dtype](chunk)
        except ValueError as ex:
            raise QuantizeError(f"tensor '{e.src.name}': {ex}") from ex
        # chunks start on group boundaries, so each one's group bytes come next
        q = to_rowgroups(blocks, chunk.shape[0], BLOCK_BYTES[e.dtype])
        dst.write(q.tobytes())
        written += q.size
        vals = chunk.reshape(-1)
        diff = _DEQUANTIZE_FLAT[e.dtype](blocks) - vals
        err2 += float(np.dot(diff, diff))
        ref2 += float(np.dot(vals, vals))
    if written != e.nbytes:
        raise QuantizeError(f"tensor '{e.src.name}': wrote {written} of {e.nbytes} bytes")
    return (err2 / ref2) ** 0.5 if ref2 > 0 else 0.0


def quantize_model(
    in_dir: Path,
    out_dir: Path,
    opts: Options,
    log: TextIO | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Write the quantized model directory ``out_dir`` from ``in_dir``; ``log``
    gets one line per quantized tensor, ``progress`` (bytes written, total) a
    call after each tensor."""
    t0 = time.monotonic()
    src_path = in_dir / MODEL_FILE
    if not src_path.is_file():
        raise QuantizeError(f"{in_dir}: no {MODEL_FILE}")
    for name in COPIED_FILES:
        if not (in_dir / name).is_file():
            raise QuantizeError(f"{in_dir}: no {name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dst_path = out_dir / MODEL_FILE
    if dst_path.exists() and dst_path.samefile(src_path):
        raise QuantizeError("OUT_DIR must differ from IN_DIR (the input would be overwritten)")

    tensors, meta = read_header(src_path)
    _check_source_layout(src_path, tensors, meta)
    plan = make_plan(tensors, opts)
    meta = dict(meta)
    meta.setdefault("format", "pt")
    meta["voxd_quantize"] = opts.fmt.lower()
    if any(e.dtype in BLOCK_BYTES for e in plan):
        meta[LAYOUT_KEY] = LAYOUT
    counts: dict[str, int] = {}
    worst: dict[str, tuple[float, str]] = {}
    entries = [st.Entry(e.src.name, e.dtype, e.src.shape) for e in plan]
    total = sum(e.nbytes for e in plan)
    done = 0
    with open(src_path, "rb") as src, st.writing(dst_path, entries, meta) as dst:
        for e in plan:
            counts[e.dtype] = counts.get(e.dtype, 0) + 1
            if progress is not None:
                progress(done, total)
            done += e.nbytes
            if not e.quantized:
                _copy_bytes(src, dst, e.src.offset, e.src.nbytes)
                if log is not None:
                    log.write(f"  {e.dtype}  {e.src.name} {list(e.src.shape)}  kept: {e.why}\n")
                continue
            rel = _write_quantized(src_path, e, dst)
            if rel >= worst.get(e.dtype, (-1.0, ""))[0]:
                worst[e.dtype] = (rel, e.src.name)
            if log is not None:
                log.write(f"  {e.dtype}  {e.src.name} {list(e.src.shape)}  rel rms {rel:.2e}\n")
    if progress is not None:
        progress(done, total)
    for name in COPIED_FILES:
        shutil.copyfile(in_dir / name, out_dir / name)
    return Summary(
        counts=counts,
        in_bytes=src_path.stat().st_size,
        out_bytes=dst_path.stat().st_size,
        worst_rel_rms=worst,
        seconds=time.monotonic() - t0,
    )


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _cmd_quantize(args: argparse.Namespace) -> int:
    opts = Options(
        fmt=str(args.format).upper(),
        encoder=str(args.keep_encoder).upper() if args.keep_encoder else None,
        embedding=str(args.embedding).upper() if args.embedding else None,
        keep=tuple(args.keep or ()),
    )
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    try:
        s = quantize_model(in_dir, out_dir, opts, log=sys.stdout if args.verbose else None)
    except (QuantizeError, OSError) as e:
        print(f"voxd quantize: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        kinds = ", ".join(f"{n} {d}" for d, n in sorted(s.counts.items()))
        print(f"wrote {out_dir / MODEL_FILE}: {kinds} tensors")
        print(
            f"  {s.in_bytes / 1e9:.2f} GB -> {s.out_bytes / 1e9:.2f} GB "
            f"({s.out_bytes / max(s.in_bytes, 1):.0%}) in {s.seconds:.1f} s"
        )
        for d, (err, name) in sorted(s.worst_rel_rms.items()):
            print(f"  worst {d} relative RMS error {err:.2e} ({name})")
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``quantize`` on an argparse subparsers; sets ``func`` to the handler
    (takes the parsed Namespace, returns an exit code)."""
    p = subparsers.add_parser(
        "quantize",
        help="write a Q8/Q4 copy of a model directory",
        description="Quantize the weight matrices of a model directory to voxd's Q8 or Q4 "
        "block format (the engine loads either). Norms, biases and the conv stem stay BF16; "
        "the token embedding (also the output head) stays Q8 in a Q4 model.",
    )
    p.add_argument("in_dir", metavar="IN_DIR", help="model directory (BF16)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if needed)")
    p.add_argument("--format", choices=["q8", "q4"], required=True, help="block format")
    p.add_argument(
        "--keep-encoder",
        choices=["q8", "bf16"],
        help="format of the audio encoder and adapter (default: --format)",
    )
    p.add_argument(
        "--embedding",
        choices=["q8", "q4", "bf16"],
        help="format of the token embedding / output head (default: q8 for q4 models)",
    )
    p.add_argument(
        "--keep",
        action="append",
        metavar="PATTERN",
        help="keep tensors whose name matches this fnmatch pattern as they are (repeatable)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="one line per quantized tensor")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary")
    p.set_defaults(func=_cmd_quantize)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m voxd.tools.quantize quantize ...``, usable without the CLI."""
    parser = argparse.ArgumentParser(prog="python -m voxd.tools.quantize")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
