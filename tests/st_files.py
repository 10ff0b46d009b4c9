"""Reading and writing small safetensors files in tests (headers edited by hand,
tensors placed in a chosen order)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_header(path: Path) -> dict[str, Any]:
    """The whole JSON header, ``__metadata__`` included."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h: dict[str, Any] = json.loads(f.read(n))
    return h


def read_st(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and the data bytes after it."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header: dict[str, Any] = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


def write_st(path: Path, header: dict[str, Any], data: bytes) -> None:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # the format pads the header so tensors stay aligned
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)


def write_tensors(
    path: Path, blobs: list[tuple[str, str, list[int], bytes]], meta: dict[str, str] | None
) -> None:
    """A safetensors file of (name, dtype, shape, data) in this order."""
    header: dict[str, Any] = {} if meta is None else {"__metadata__": meta}
    off = 0
    for name, dt, shape, data in blobs:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    write_st(path, header, b"".join(data for *_, data in blobs))
