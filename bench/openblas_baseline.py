"""voxd's decoder step against a plain BF16->F32 OpenBLAS engine, in one run.

voxd's speed target names a plain BF16->F32 OpenBLAS engine as the baseline
for its decoder step (>= 3x faster in BF16, >= 10x in Q4), measured in the
same run as the memory bandwidth. This script is that run; one process, one thread
count for everything (OpenBLAS and the engine), figures in this order:

* memory read bandwidth: ``voxd.tools.bench.measure_read_bandwidth`` (the engine
  library's test), before the baseline and again after voxd; the best counts.
* the baseline: the NumPy reference decoder (tests/reference.py, the model's
  own math: RMSNorm, ada-norm scale, GQA attention with interleaved RoPE over
  a KV cache, SwiGLU, final norm, tied head) loaded from the BF16 model with
  only what a decoder step reads (decoder layers, norms, ada norm, token
  embedding), widened to float32 at load and resident in RAM, as the plain
  engine did; every matrix product is numpy's ``@`` on float32, i.e. an
  OpenBLAS matrix-vector product (numpy must be built on OpenBLAS: checked).
  Its KV cache (float32) is filled by a real batched prefill of the streaming
  prompt tokens (BOS, then STREAMING_PAD) up to ``--kv-positions - 1``
  positions, so the first timed step attends over ``--kv-positions`` keys;
  then ``--steps`` greedy steps are timed, each embedding -> logits -> argmax.
  The decoder input is the token embedding alone (there is no encoder): the
  audio term is one vector add. Also reported: its bytes per step (float32
  layer matrices, head, KV cache) over the bandwidth, and the time of the
  step's matrix products alone (the same OpenBLAS calls on the same matrices,
  nothing else: the floor of any float32 OpenBLAS engine on this machine).
  It is freed before voxd runs (the full-size decoder is ~13.7 GB in float32).
* voxd on each ``--voxd-dir`` (bf16, q8, q4 model directories): the speech of
  ``voxd bench`` fed in 80 ms chunks with the daemon's stream settings until
  the decoder has ``--kv-positions - 1`` positions; then its decoder ms per
  step over the next ``--steps`` (or more: the engine decodes in bursts)
  positions, StreamStats.decoder_ms / positions: the formula of ``voxd
  bench``'s "streaming alone" decoder figure, at the baseline's KV length.
* per format, the ratio baseline ms / voxd ms (and matrix products alone /
  voxd ms), beside the target.
* the encoder, which is bound by arithmetic: OpenBLAS float32 products
  (``x @ W.T``) over every encoder layer matrix of the model's shapes, with as
  many rows (frames) as voxd's encoder passes held in this run, and with the
  rows of the whole audio at once; their GFLOP/s beside the machine's FMA peak
  (``voxd.tools.bench.measure_fma_peak``, the same run) and beside voxd's own: the
  same matrix FLOPs over voxd's whole encoder time (attention, norms, conv
  stem and adapter included) for the audio it streamed after the left padding.

The default KV length is that of ``voxd bench``'s default 10 s of speech at
its end: 32 positions of left padding + 125. Timing is noisy on a shared
machine: run it on a quiet one. Example (the full-size model needs ~16 GB of
free RAM for the baseline)::

    PYTHONPATH=. python bench/openblas_baseline.py --bf16-dir MODEL \\
        --voxd-dir MODEL --voxd-dir MODEL-q8 --voxd-dir MODEL-q4 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests import reference
from voxd.config import EngineSettings
from voxd.engine import Engine, Stream, StreamStats
from voxd.events import SAMPLE_RATE
from voxd.tools import safetensors as st
from voxd.tools.bench import (
    CHUNK_SAMPLES,
    DECODER_MATRIX,
    ENCODER_MATRIX,
    LEFT_PAD_POS,
    REALTIME_STEPS_PER_S,
    _delta,
    kv_bytes_per_position,
    load_audio,
    measure_fma_peak,
    measure_read_bandwidth,
    summarize_weights,
    window_sum,
)

F32 = npt.NDArray[np.float32]

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
BENCH_SECONDS = 10.0  # voxd bench's default speech
DEFAULT_KV_POSITIONS = LEFT_PAD_POS + round(BENCH_SECONDS * REALTIME_STEPS_PER_S)
TARGETS = {"bf16": 3.0, "q4": 10.0}  # the targeted speed-up over the baseline
MODEL_FILE = "consolidated.safetensors"


# ---------------------------------------------------------------- BLAS


def blas_info() -> dict[str, str]:
    """The BLAS numpy was built with (np.show_config) and the one it has loaded."""
    deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    loaded = sorted(
        {Path(m.group(1)).name for m in re.finditer(r"(/\S*blas\S*\.so\S*)", _maps())},
    )
    return {
        "name": str(deps.get("name", "?")),
        "version": str(deps.get("version", "?")),
        "config": str(deps.get("openblas configuration", "")),
        "loaded": ", ".join(loaded) or "?",
        **{k: os.environ.get(k, "unset") for k in THREAD_VARS},
    }


def _maps() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


def require_openblas(info: dict[str, str]) -> None:
    if "openblas" not in info["name"].lower():
        raise RuntimeError(f"numpy is built with {info['name']}, not OpenBLAS: no baseline")


def thread_env(threads: int) -> dict[str, str]:
    return dict.fromkeys(THREAD_VARS, str(threads))


def reexec_with_threads(threads: int) -> None:
    """Run this script again with the OpenBLAS thread variables set, unless they
    are: OpenBLAS reads them once, when numpy is first imported."""
    want = thread_env(threads)
    if all(os.environ.get(k) == v for k, v in want.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **want})


# ---------------------------------------------------------------- the baseline


def load_baseline(bf16_dir: str | Path) -> reference.RefModel:
    """The decoder of a BF16 model, widened to float32 (nothing of the encoder)."""
    header = st.read_header(Path(bf16_dir) / MODEL_FILE).entries()
    other = {v["dtype"] for k, v in header.items() if reference.is_decoder_tensor(k)} - {"BF16"}
    if other:
        raise ValueError(f"{bf16_dir}: the baseline runs from BF16 weights, found {sorted(other)}")
    return reference.load(bf16_dir, decoder_only=True, dtype=np.float32)


def layer_matrices(model: reference.RefModel) -> list[npt.NDArray[Any]]:
    """Every matrix one decoder step multiplies by, layer by layer, the tied head last."""
    names = sorted((k for k in model.w if DECODER_MATRIX.match(k)), key=_layer_order)
    return [*(model.w[k] for k in names), model.w[reference.TOK_EMB]]


def _layer_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name


def step_bytes(model: reference.RefModel, kv_positions: float) -> float:
    """Bytes one step reads: float32 layer matrices, head and a float32 KV cache of
    ``kv_positions`` (norms and the ada-norm scales, a few vectors, left out)."""
    c = model.dec
    kv = kv_positions * c.n_layers * 2 * c.n_kv_heads * c.head_dim * 4
    return sum(w.nbytes for w in layer_matrices(model)) + kv


def prompt_tokens(model: reference.RefModel, n: int) -> list[int]:
    """BOS, then STREAMING_PAD: the streaming prompt, carried on to n positions."""
    return [model.bos] + [model.streaming_pad] * (n - 1)


def start_baseline(
    model: reference.RefModel, kv_positions: int, delay_positions: int
) -> tuple[reference.Decoder, int]:
    """A decoder whose cache holds kv_positions - 1 prefilled positions, and the
    token its last logits chose (the next step's input)."""
    if kv_positions < 2:
        raise ValueError("--kv-positions must be at least 2")
    dec = reference.Decoder(model, float(delay_positions))
    logits = dec.forward(dec.embed(prompt_tokens(model, kv_positions - 1)))
    return dec, int(np.argmax(logits[-1]))


def baseline_step(dec: reference.Decoder, token: int) -> F32:
    """One decoder step of the baseline: the logits after ``token``."""
    logits: F32 = dec.forward(dec.embed([token]))[0]
    return logits


def time_baseline_steps(dec: reference.Decoder, token: int, steps: int) -> list[float]:
    """ms of each of ``steps`` greedy steps (embedding to argmax)."""
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token = int(np.argmax(baseline_step(dec, token)))
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_matvecs(model: reference.RefModel, reps: int) -> float:
    """ms of one pass of the step's matrix products alone (same calls as the
    reference's linear(): a [1, in] row times W^T), best of ``reps``."""
    mats = layer_matrices(model)
    inputs = [np.ones((1, w.shape[1]), dtype=np.float32) for w in mats]
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for x, w in zip(inputs, mats, strict=True):
            _ = x @ w.T
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


@dataclass(frozen=True)
class BaselineResult:
    dir: str
    load_s: float
    weight_bytes: int  # float32, resident
    kv_positions: int
    step_ms: list[float]
    ms_per_step: float  # mean of step_ms
    matvec_ms: float  # the matrix products alone, best pass
    bytes_per_step: float  # mean over the timed steps


def run_baseline(bf16_dir: str, kv_positions: int, steps: int, delay_ms: int) -> BaselineResult:
    """Load, prefill and time the baseline; everything it holds is freed on return."""
    t0 = time.perf_counter()
    model = load_baseline(bf16_dir)
    load_s = time.perf_counter() - t0
    matvec_ms = time_matvecs(model, max(steps, 2))
    dec, token = start_baseline(model, kv_positions, reference.delay_positions_of(delay_ms))
    step_ms = time_baseline_steps(dec, token, steps)
    return BaselineResult(
        dir=str(bf16_dir),
        load_s=load_s,
        weight_bytes=sum(w.nbytes for w in model.w.values()),
        kv_positions=kv_positions,
        step_ms=step_ms,
        ms_per_step=float(np.mean(step_ms)),
        matvec_ms=matvec_ms,
        bytes_per_step=step_bytes(model, kv_positions + (steps - 1) / 2),
    )


# ---------------------------------------------------------------- voxd


@dataclass(frozen=True)
class VoxdResult:
    dir: str
    weight_format: str  # voxd bench's label of the stored dtypes
    decoder_format: str  # dominant dtype of the decoder layers
    backend: str
    positions: int  # timed positions
    passes: int
    kv_first: int  # KV length of the first timed position
    ms_per_step: float  # StreamStats.decoder_ms / positions over the timed feeds
    bytes_per_step: float  # layer matrices + head + fp16 KV, per pass, per position
    # the encoder over all audio fed after the left padding
    encoder_frames: int
    encoder_passes: int
    encoder_ms: float


def _chunks(audio: F32) -> Iterator[F32]:
    for i in range(0, audio.size, CHUNK_SAMPLES):
        yield audio[i : i + CHUNK_SAMPLES]


def _feed_until(stream: Stream, chunks: Iterator[F32], positions: int) -> StreamStats:
    """Feed 80 ms chunks until the decoder has done ``positions`` positions."""
    st = stream.stats()
    while st.positions < positions:
        chunk = next(chunks, None)
        if chunk is None:
            raise ValueError(f"the audio ran out at decoder position {st.positions} < {positions}")
        stream.feed(chunk)
        st = stream.stats()
    return st


def run_voxd(model_dir: str, audio: F32, threads: int, kv_positions: int, steps: int) -> VoxdResult:
    """voxd's streaming decoder ms/step over >= ``steps`` positions from KV ``kv_positions``."""
    daemon = EngineSettings()
    weights = summarize_weights(model_dir)
    with Engine(model_dir, threads=threads) as engine:
        stream = engine.stream(daemon.delay_ms, daemon.interval_ms)
        stream.feed(np.zeros(0, dtype=np.float32))  # the left padding, batched
        padded = stream.stats()
        chunks = _chunks(audio)
        start = _feed_until(stream, chunks, kv_positions - 1)
        end = _feed_until(stream, chunks, start.positions + steps)
        info = engine.info
    run = _delta(start, end)
    audio_run = _delta(padded, end)
    weight = run.decoder_passes * (weights.decoder_pass_bytes + weights.head_bytes)
    kv_reads = window_sum(start.positions, run.positions, info.sliding_window)
    kv = kv_reads * kv_bytes_per_position(info)
    dec_dtypes = weights.groups.get("decoder", {})
    return VoxdResult(
        dir=str(model_dir),
        weight_format=weights.label,
        decoder_format=max(dec_dtypes, key=lambda k: dec_dtypes[k]).lower(),
        backend=info.backend,
        positions=run.positions,
        passes=run.decoder_passes,
        kv_first=start.positions + 1,
        ms_per_step=run.decoder_ms / run.positions,
        bytes_per_step=(weight + kv) / run.positions,
        encoder_frames=audio_run.encoder_frames,
        encoder_passes=audio_run.encoder_passes,
        encoder_ms=audio_run.encoder_ms,
    )


# ---------------------------------------------------------------- encoder products


def encoder_matrix_shapes(header: dict[str, Any]) -> list[tuple[int, int]]:
    """[out, in] of every encoder layer matrix, from the model's header."""
    shapes = [
        (int(v["shape"][0]), int(v["shape"][1]))
        for k, v in header.items()
        if ENCODER_MATRIX.match(k)
    ]
    if not shapes:
        raise ValueError("the model has no encoder layer matrices")
    return shapes


def encoder_flop_per_frame(shapes: Sequence[tuple[int, int]]) -> float:
    """Multiply-adds of one frame through every encoder layer matrix, times 2."""
    return 2.0 * sum(o * i for o, i in shapes)


@dataclass(frozen=True)
class EncoderProducts:
    rows: int  # frames per product
    ms: float  # one pass over every layer matrix, best of the repetitions
    gflops: float


def time_encoder_products(
    shapes: Sequence[tuple[int, int]], rows: int, reps: int
) -> EncoderProducts:
    """OpenBLAS float32 ``x @ W.T`` for every matrix, x of ``rows`` frames. The
    values are constants: they do not change the cost of a float32 product."""
    mats = [np.full(s, 0.01, dtype=np.float32) for s in shapes]
    inputs = {i: np.full((rows, i), 0.5, dtype=np.float32) for _, i in shapes}
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in mats:
            _ = inputs[w.shape[1]] @ w.T
        best = min(best, time.perf_counter() - t0)
    return EncoderProducts(rows, best * 1e3, encoder_flop_per_frame(shapes) * rows / best / 1e9)


# ---------------------------------------------------------------- the run


def _mem_available() -> int:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return 0
    m = re.search(r"^MemAvailable:\s*(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def check_memory(header: dict[str, Any]) -> None:
    """Refuse to start when the float32 decoder (twice its BF16 bytes, plus the
    largest tensor once more while it is widened) does not fit in free RAM."""
    sizes = [
        v["data_offsets"][1] - v["data_offsets"][0]
        for k, v in header.items()
        if reference.is_decoder_tensor(k)
    ]
    need = 2 * (sum(sizes) + 2 * max(sizes))
    have = _mem_available()
    if have and need > have:
        raise MemoryError(
            f"the float32 baseline needs ~{need / 1e9:.1f} GB, {have / 1e9:.1f} GB available"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    blas = blas_info()
    require_openblas(blas)
    header = st.read_header(Path(args.bf16_dir) / MODEL_FILE).entries()
    check_memory(header)
    membw = int(args.membw_mb * (1 << 20))
    bw_before = measure_read_bandwidth(membw, args.threads, 3)
    baseline = run_baseline(args.bf16_dir, args.kv_positions, args.steps, EngineSettings().delay_ms)
    gc.collect()
    voxd: list[VoxdResult] = []
    source = "-"
    if args.voxd_dir:
        # position p holds audio chunk p - 32: this covers the steps and the bursts
        seconds = (args.kv_positions + args.steps) * CHUNK_SAMPLES / SAMPLE_RATE
        audio, source = load_audio(None, seconds)
        for d in args.voxd_dir:
            voxd.append(run_voxd(d, audio, args.threads, args.kv_positions, args.steps))
    encoder = run_encoder(encoder_matrix_shapes(header), voxd, args.threads) if voxd else None
    bw_after = measure_read_bandwidth(membw, args.threads, 3)
    bandwidth = max(bw_before, bw_after)
    return {
        "blas": blas,
        "threads": args.threads,
        "audio": source,
        "read_bandwidth_gbs": bandwidth,
        "read_bandwidth_gbs_runs": [bw_before, bw_after],
        "baseline": {
            **asdict(baseline),
            "roofline_ms": baseline.bytes_per_step / (bandwidth * 1e9) * 1e3,
            "achieved_gbs": baseline.bytes_per_step / baseline.ms_per_step / 1e6,
        },
        "voxd": [_voxd_entry(v, baseline, bandwidth) for v in voxd],
        "encoder": encoder,
    }


def run_encoder(
    shapes: Sequence[tuple[int, int]], voxd: Sequence[VoxdResult], threads: int
) -> dict[str, Any]:
    """OpenBLAS's encoder products at voxd's rows per pass and at the whole audio's,
    voxd's encoder GFLOP/s on the same FLOPs, and the FMA peak."""
    flop = encoder_flop_per_frame(shapes)
    passes = sum(v.encoder_passes for v in voxd)
    frames = sum(v.encoder_frames for v in voxd)
    if passes == 0:
        raise RuntimeError("voxd made no encoder pass after the left padding")
    stream_rows = max(1, round(frames / passes))
    whole_rows = max(v.encoder_frames for v in voxd)
    blas = [asdict(time_encoder_products(shapes, rows, 3)) for rows in (stream_rows, whole_rows)]
    gc.collect()
    peak = measure_fma_peak(threads)
    return {
        "matrices": len(shapes),
        "gflop_per_frame": flop / 1e9,
        "fma_peak_gflops": peak,
        "openblas": [{**b, "peak_fraction": b["gflops"] / peak} for b in blas],
        "voxd": [_voxd_encoder_entry(v, flop, peak, blas[0]["gflops"]) for v in voxd],
    }


def _voxd_encoder_entry(
    v: VoxdResult, flop: float, peak: float, blas_gflops: float
) -> dict[str, Any]:
    gflops = flop * v.encoder_frames / v.encoder_ms / 1e6 if v.encoder_ms > 0 else 0.0
    return {
        "dir": v.dir,
        "weight_format": v.weight_format,
        "decoder_format": v.decoder_format,
        "frames": v.encoder_frames,
        "passes": v.encoder_passes,
        "ms": v.encoder_ms,
        "gflops": gflops,
        "peak_fraction": gflops / peak,
        "vs_openblas_same_rows": gflops / blas_gflops,
    }


def _voxd_entry(v: VoxdResult, baseline: BaselineResult, bandwidth: float) -> dict[str, Any]:
    gbs = v.bytes_per_step / v.ms_per_step / 1e6
    return {
        **asdict(v),
        "achieved_gbs": gbs,
        "roofline_fraction": gbs / bandwidth,
        "speedup": baseline.ms_per_step / v.ms_per_step,
        "speedup_vs_matvecs_alone": baseline.matvec_ms / v.ms_per_step,
        "target": TARGETS.get(v.decoder_format),
    }


# ---------------------------------------------------------------- output


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def format_report(r: dict[str, Any]) -> str:
    b, blas = r["baseline"], r["blas"]
    bw = r["read_bandwidth_gbs"]
    threads = ", ".join(f"{k}={blas[k]}" for k in THREAD_VARS)
    rows: list[tuple[str, str]] = [
        ("BLAS", f"{blas['name']} {blas['version']} ({blas['config']}); loaded {blas['loaded']}"),
        ("threads", f"{r['threads']} (voxd engine; {threads})"),
        ("voxd audio", r["audio"]),
        (
            "memory read bandwidth",
            f"{bw:.1f} GB/s (before / after: "
            + " / ".join(f"{v:.1f}" for v in r["read_bandwidth_gbs_runs"])
            + ")",
        ),
        (
            "baseline",
            f"{b['dir']}: BF16 -> float32 decoder, {_gb(b['weight_bytes'])} resident, "
            f"loaded in {b['load_s']:.1f} s",
        ),
        (
            "baseline decoder step",
            f"{b['ms_per_step']:.1f} ms (mean of {len(b['step_ms'])}: "
            + ", ".join(f"{v:.0f}" for v in b["step_ms"])
            + f"; KV {b['kv_positions']}..{b['kv_positions'] + len(b['step_ms']) - 1})",
        ),
        (
            "baseline bytes/step",
            f"{_gb(b['bytes_per_step'])}: / bandwidth = {b['roofline_ms']:.1f} ms; achieved "
            f"{b['achieved_gbs']:.1f} GB/s = {b['achieved_gbs'] / bw * 100:.0f}% of bandwidth",
        ),
        ("baseline matvecs alone", f"{b['matvec_ms']:.1f} ms (the step's OpenBLAS products only)"),
    ]
    for v in r["voxd"]:
        rows += _voxd_rows(v)
    if r.get("encoder"):
        rows += _encoder_rows(r["encoder"])
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _voxd_rows(v: dict[str, Any]) -> list[tuple[str, str]]:
    fmt = v["decoder_format"]
    target = f" (target >= {v['target']:g}x)" if v["target"] else ""
    return [
        (
            f"voxd {fmt} decoder step",
            f"{v['ms_per_step']:.1f} ms ({v['dir']}, {v['weight_format']}, {v['backend']}; "
            f"{v['positions']} positions in {v['passes']} passes from KV {v['kv_first']})",
        ),
        (
            f"voxd {fmt} bytes/step",
            f"{_gb(v['bytes_per_step'])}: {v['achieved_gbs']:.1f} GB/s = "
            f"{v['roofline_fraction'] * 100:.0f}% of bandwidth",
        ),
        (
            f"ratio {fmt}",
            f"baseline / voxd = {v['speedup']:.2f}x{target}; "
            f"matvecs alone / voxd = {v['speedup_vs_matvecs_alone']:.2f}x",
        ),
    ]


def _encoder_rows(e: dict[str, Any]) -> list[tuple[str, str]]:
    peak = e["fma_peak_gflops"]
    rows = [
        (
            "encoder matrix work",
            f"{e['gflop_per_frame']:.3f} GFLOP per frame in {e['matrices']} matrices; "
            f"FMA peak {peak:.1f} GFLOP/s",
        )
    ]
    for b in e["openblas"]:
        rows.append(
            (
                f"OpenBLAS products, {b['rows']} rows",
                f"{b['ms']:.1f} ms: {b['gflops']:.1f} GFLOP/s = {b['peak_fraction']:.2f} of peak",
            )
        )
    same = e["openblas"][0]["rows"]
    for v in e["voxd"]:
        rows.append(
            (
                f"voxd {v['decoder_format']} model's encoder",
                f"{v['weight_format']}: {v['frames']} frames in {v['passes']} passes, "
                f"{v['ms']:.0f} ms: "
                f"{v['gflops']:.1f} GFLOP/s = {v['peak_fraction']:.2f} of peak, "
                f"{v['vs_openblas_same_rows']:.2f}x OpenBLAS's products at {same} rows",
            )
        )
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/openblas_baseline.py",
        description="A plain BF16->F32 OpenBLAS decoder step against voxd's, with the memory "
        "bandwidth, in one run.",
    )
    p.add_argument("--bf16-dir", required=True, metavar="DIR", help="BF16 model (the baseline)")
    p.add_argument(
        "--voxd-dir", action="append", default=[], metavar="DIR", help="model voxd runs (repeat)"
    )
    p.add_argument("--threads", type=int, default=2, metavar="N", help="threads (default: 2)")
    p.add_argument("--steps", type=int, default=8, metavar="N", help="timed steps (default: 8)")
    p.add_argument(
        "--kv-positions",
        type=int,
        default=DEFAULT_KV_POSITIONS,
        metavar="N",
        help=f"KV length of the first timed step (default: {DEFAULT_KV_POSITIONS}, the end "
        f"of voxd bench's {BENCH_SECONDS:g} s of speech)",
    )
    p.add_argument(
        "--membw-mb", type=float, default=1024, metavar="MB", help="bandwidth test buffer (MiB)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.kv_positions < 2:
        p.error("--threads and --steps must be >= 1, --kv-positions >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_threads(args.threads)
    elif any(os.environ.get(k) != v for k, v in thread_env(args.threads).items()):
        print(f"note: {', '.join(THREAD_VARS)} are not {args.threads}", file=sys.stderr)
    try:
        report = run(args)
    except (OSError, RuntimeError, MemoryError, ValueError) as exc:
        print(f"openblas_baseline: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
