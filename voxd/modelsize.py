"""How much memory each model format needs, which one a board takes, and
whether a model directory fits in this machine's memory.

The engine reads all of the weights for every decoder step, so the whole
file has to stay in RAM. Where it fits in the available memory the engine
copies it into its own (huge) pages at load (the file's page cache is then
free to go); where it does not, it maps the file, and the kernel drops
mapped pages and reads them back from the SD card on every step, which is
hundreds of times slower than memory (or the OOM killer ends the service).

Sizes of the real Voxtral Realtime 4B checkpoint (its full-size shapes, as
`voxd dev make-model --preset full` writes them and `voxd quantize` lays them
out; tests/test_modelfetch.py recomputes them from those two modules):

* bf16: 8.86 GB, the checkpoint as published;
* q8: 4.71 GB (34-byte blocks of 32 weights; norms, biases, conv stem BF16);
* q4: 2.70 GB (18-byte blocks; the token embedding, also the output head,
  stays Q8: 0.43 GB of it).

Beyond the weights the engine needs its KV caches and activations: the
encoder's fp16 KV cache at its 750-frame window is 32 layers x 2 x 2048 x 814
x 2 B = 0.21 GB, the decoder's for a 30 s utterance (the endpointer's limit)
about 0.06 GB, plus activations, logits and the Python process (~0.15 GB):
RUNTIME_BYTES rounds that up to 0.6 GB.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

MEMINFO = Path("/proc/meminfo")

FORMATS = ("bf16", "q8", "q4")
WEIGHT_BYTES: dict[str, int] = {
    "bf16": 8_859_358_720,
    "q8": 4_712_035_840,
    "q4": 2_701_456_896,
}
# KV caches, activations and the Python process on top of the weights.
RUNTIME_BYTES = 600_000_000
# What the operating system and its page cache keep for themselves: Raspberry
# Pi OS Lite idles at ~0.3 GB, with a desktop ~0.8 GB.
OS_HEADROOM_BYTES = 1_000_000_000

# Files whose size is the model's footprint (a kept bf16/ copy is not loaded).
# Small files first: a download with a wrong repository or a missing token
# fails within a second, not after gigabytes.
MODEL_FILES = ("params.json", "tekken.json", "consolidated.safetensors")


def needed_bytes(fmt: str) -> int:
    """Memory the daemon needs with the real model in this format."""
    return WEIGHT_BYTES[fmt] + RUNTIME_BYTES


def auto_threshold() -> int:
    """MemTotal from which `format = "auto"` picks q8 rather than q4."""
    return needed_bytes("q8") + OS_HEADROOM_BYTES


def choose_format(mem_total: int) -> str:
    """The format for a board with this much RAM (bytes): q8 where it fits with
    room for the OS (8 GB and 16 GB boards), else q4 (4 GB boards). Never bf16:
    it fits a 16 GB board but doubles the bytes every decoder step reads, and
    the decoder is memory bound on these boards."""
    return "q8" if mem_total >= auto_threshold() else "q4"


@dataclass(frozen=True)
class MemInfo:
    total: int  # bytes
    available: int  # bytes the kernel can hand out without swapping


def read_meminfo(path: Path = MEMINFO) -> MemInfo | None:
    """MemTotal and MemAvailable in bytes, or None where there is no /proc/meminfo."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    values: dict[str, int] = {}
    for key in ("MemTotal", "MemAvailable"):
        m = re.search(rf"^{key}:\s*(\d+)\s*kB", text, re.MULTILINE)
        if m:
            values[key] = int(m.group(1)) * 1024
    if "MemTotal" not in values:
        return None
    return MemInfo(values["MemTotal"], values.get("MemAvailable", values["MemTotal"]))


def resolve_format(fmt: str, meminfo: MemInfo | None = None) -> str:
    """`fmt`, with "auto" replaced by the format this machine's memory takes
    (q4 when the memory cannot be read: it fits the most boards)."""
    if fmt != "auto":
        return fmt
    info = meminfo if meminfo is not None else read_meminfo()
    return choose_format(info.total) if info is not None else "q4"


def model_bytes(model_dir: Path) -> int:
    """Bytes of the files the engine loads from this directory."""
    total = 0
    for name in MODEL_FILES:
        with contextlib.suppress(OSError):  # a missing file counts nothing
            total += (model_dir / name).stat().st_size
    return total


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def fit_warning(model_dir: Path, meminfo: MemInfo | None = None) -> str | None:
    """Why the model in `model_dir` would not fit this machine's memory (with
    the numbers and the fix), or None when it fits or there is nothing to judge."""
    info = meminfo if meminfo is not None else read_meminfo()
    weights = model_bytes(model_dir)
    if info is None or weights == 0:
        return None
    need = weights + RUNTIME_BYTES
    fix = (
        "use a smaller format: `voxd model download --format q4` "
        "(or q8; see engine.format in the configuration)"
    )
    if need > info.total:
        return (
            f"the model in {model_dir} ({gb(weights)} of files, {gb(need)} with the engine's "
            f"caches) does not fit in this machine's {gb(info.total)} of memory: weights would "
            f"be read back from disk on every step, or the service killed; {fix}"
        )
    if need > info.available:
        return (
            f"the model in {model_dir} needs {gb(need)} with the engine's caches, but only "
            f"{gb(info.available)} of this machine's {gb(info.total)} are available now: stop "
            f"other programs, or {fix}"
        )
    return None
