"""Reading and writing small safetensors files in tests (headers edited by hand,
tensors placed in a chosen order). Reading goes through voxd's checked reader;
writing takes any header, so tests can make the damaged files they need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voxd.tools import safetensors as st


def read_header(path: Path) -> dict[str, Any]:
    """The whole JSON header, ``__metadata__`` included."""
    return st.read_header(path).json()


def read_st(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and the data bytes after it."""
    header = st.read_header(path)
    return header.json(), path.read_bytes()[header.data_start :]


def write_st(path: Path, header: dict[str, Any], data: bytes) -> None:
    """Exactly this header (checked or not) and these data bytes."""
    path.write_bytes(st.encode_header(header) + data)


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
