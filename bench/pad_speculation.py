"""Pad speculation against the share of STREAMING_PAD in the decoder's output.

How many weight passes speculation saves depends on how often the model says
STREAMING_PAD, and random weights almost never do. This makes copies of a
model whose PAD output row is the row of its most frequent output token
scaled by alpha (alpha >= 1 makes PAD win where that token would, and more
often as alpha grows), streams espeak-ng speech through each copy in 80 ms
chunks at the daemon's encoder interval, and prints, per copy: the share of
pads, and the decoder positions and weight passes after the prompt (whose
prefill is batched either way) with speculation on and off (the token ids
are checked to be identical). Counts only, no timing, so any model
size gives the same kind of figures; a tiny one runs in seconds:

    python -m voxd.tools.devmodel /tmp/tiny --preset tiny --seed 1
    python bench/pad_speculation.py /tmp/tiny --work /tmp/padbench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from voxd.audio import read_wav
from voxd.config import EngineSettings
from voxd.engine import Engine, TokenEvent
from voxd.tools import safetensors as st
from voxd.tools.safetensors import bf16_bits_to_f32, f32_to_bf16_bits

TOK_EMB = "mm_streams_embeddings.embedding_module.tok_embeddings.weight"
MODEL_FILE = "consolidated.safetensors"
SENTENCES = [
    "hello world, this is a test of the engine",
    "set the timer for twenty five minutes please",
    "turn off the lights in the kitchen",
]
CHUNK = 1280  # 80 ms at 16 kHz, as the daemon feeds


def speech() -> np.ndarray:
    """The sentences from espeak-ng at 16 kHz, 0.6 s of silence after each."""
    parts = []
    for text in SENTENCES:
        with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
            subprocess.run(["espeak-ng", "-w", wav.name, text], check=True)
            parts += [read_wav(wav.name), np.zeros(9600, np.float32)]
    return np.concatenate(parts)


def run(model: Path, audio: np.ndarray, interval_ms: int, spec: int) -> tuple[list[int], int, int]:
    """(token ids, positions, passes) of one stream fed in 80 ms chunks, then flushed;
    positions and passes count decoder steps, not the prompt's prefill."""
    with Engine(model) as engine:
        s = engine.stream(interval_ms=interval_ms, max_speculation=spec)
        events = []
        for i in range(0, audio.size, CHUNK):
            events += s.feed(audio[i : i + CHUNK])
        events += s.flush()
        st = s.stats()
        s.close()
    ids = [e.token_id for e in events if isinstance(e, TokenEvent)]
    return ids, st.positions - st.prompt_positions, st.decoder_passes - st.prompt_passes


def pad_variant(src: Path, dst: Path, alpha: float, common: int, pad: int) -> None:
    """dst = src with PAD's (tied) embedding row = alpha x row `common` (BF16 models)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    path = dst / MODEL_FILE
    checked = st.read_header(path)
    header, base = checked.entries(), checked.data_start
    t = header[TOK_EMB]
    if t["dtype"] != "BF16":
        raise SystemExit(f"{TOK_EMB} is {t['dtype']}; this tool edits BF16 models")
    row_bytes = int(t["shape"][1]) * 2
    first = base + int(t["data_offsets"][0])
    with open(path, "r+b") as f:
        f.seek(first + common * row_bytes)
        row = bf16_bits_to_f32(np.frombuffer(f.read(row_bytes), dtype="<u2"))
        f.seek(first + pad * row_bytes)
        f.write(f32_to_bf16_bits(row * alpha).astype("<u2").tobytes())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, help="a BF16 model directory")
    ap.add_argument("--work", type=Path, required=True, help="where the copies go")
    ap.add_argument("--alpha", type=float, nargs="+", default=[1.0, 1.1, 1.25, 1.5, 2.0])
    ap.add_argument("--interval-ms", type=int, default=EngineSettings().interval_ms)
    ap.add_argument("--max-speculation", type=int, default=8)
    args = ap.parse_args()
    audio = speech()
    with Engine(args.model_dir) as engine:
        pad = engine.info.pad_id
    ids, _, _ = run(args.model_dir, audio, args.interval_ms, 1)
    common = max(set(ids) - {pad}, key=ids.count)
    rows = []
    for alpha in args.alpha:
        copy = args.work / f"pad-x{alpha:g}"
        pad_variant(args.model_dir, copy, alpha, common, pad)
        off = run(copy, audio, args.interval_ms, 1)
        on = run(copy, audio, args.interval_ms, args.max_speculation)
        if on[0] != off[0]:
            raise SystemExit(f"alpha {alpha}: speculation changed the tokens")
        share = sum(t == pad for t in on[0]) / max(len(on[0]), 1)
        positions, p_off, p_on = on[1], off[2], on[2]
        rows.append(
            {
                "alpha": alpha,
                "pad_share": share,
                "positions": positions,
                "passes_off": p_off,
                "passes_on": p_on,
                "positions_per_pass": positions / p_on,
            }
        )
        print(
            f"alpha {alpha:<5g} pads {share:6.1%}  positions {positions:4d}  passes: "
            f"off {p_off:4d}, on {p_on:4d}  positions/pass {positions / p_on:.2f}"
        )
    print(json.dumps({"interval_ms": args.interval_ms, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
