"""``voxd bench``: how fast the engine runs a model on this machine, and why.

One run measures the machine and the model together, so every ratio it prints
compares figures taken side by side (same threads, same build):

* machine: memory read bandwidth and FMA peak, measured by the engine library
  itself (``vx_measure_read_bandwidth`` / ``vx_measure_fma_peak``,
  native/include/voxd_bench.h) before and after the model runs (the best of
  the two counts; the bandwidth test's 1 GiB buffer lives in a forked child
  so it stays out of the peak RSS), CPU model and core count;
* model: load time, peak RSS, stored weight formats and bytes;
* prefill: the first ``feed`` of no samples computes the left padding (the
  31 of its 32 positions whose mel frames lie wholly in it: encoder and
  decoder, batched); timed cold (first touch of the mapped weights) and again
  warm on a second stream;
* encoder: ms per second of audio, achieved GFLOP/s and its fraction of the
  FMA peak (the encoder is compute bound);
* decoder: ms per step, bytes read per step, achieved GB/s and its fraction
  of the read bandwidth (the decoder at batch 1 is bandwidth bound: the
  "roofline" fraction), decoder passes vs positions (pad speculation batches
  several positions into one pass);
* end of utterance, as the daemon ends one: the speech is followed by the
  endpointer's hangover (``--hangover-ms`` of -60 dBFS room noise, the
  daemon's by default), fed like the rest, and the flush counts that
  silence as its padding (``--hangover-ms 0``: the offline recipe's flush,
  padding after the end of the audio). Reported: the latency of
  ``flush()`` after the last chunk, the real-time factor of the whole run,
  and the wait a speaker would have after the end of speech, modelled as
  the daemon's final reports it (``latency_s`` = ``hangover_s`` + ``lag_s``
  + ``flush_s``): the hangover, plus the lag (this run's chunk times
  replayed as if the audio came in real time: how far the engine is behind
  when the hangover's last chunk has arrived), plus the flush;
* projections for other boards (``--project NAME=GBPS[,GFLOPS]``; a Raspberry
  Pi 5 and a Jetson Orin Nano by default), spec section 10's cost model with
  this run's figures: a decoder step takes bytes per step / bandwidth (at
  100 % of the board's bandwidth, and at this run's streaming roofline
  fraction); as a second roof, this run's streaming step time scaled by the
  ratio of FMA peaks (right when the step is compute bound here, as the
  dequantizing Q8/Q4 kernels can be); the encoder takes its FLOPs per second
  of audio at this run's fraction of the board's FMA peak. Real time needs
  12.5 decoder steps per second plus the encoder within the same second.

"Streaming" figures cover the feeds alone (one position per decoder pass
when 80 ms arrive at a time); the flush decodes its padding positions (~18
less the hangover's) in one go, where pad speculation batches guesses, and
is reported on its own.

Audio is the WAV given with ``--audio``, else ``--seconds`` of espeak-ng
speech (a synthetic voiced signal if espeak-ng is missing), fed in 80 ms
chunks like the daemon does.

FLOP and byte counts (all from the model's own dimensions):

* Encoder, per encoder frame (50 per second of audio), in FLOP = 2 x MACs::

      2 * ( enc_layers * (enc_dim*q_dim + 2*enc_dim*kv_dim + q_dim*enc_dim
                          + 3*enc_dim*enc_hidden)              # attention + SwiGLU matrices
          + 2 * enc_dim * n_mels*3 + enc_dim * enc_dim*3       # conv stem (2 mel frames/frame)
          + (enc_dim*downsample*dim + dim*dim) / downsample )  # adapter, per frame
      + enc_layers * 4 * q_dim * keys                          # q.k and p.v over the window

  with q_dim = enc_heads * enc_head_dim, kv_dim = enc_kv_heads * enc_head_dim
  and keys = min(frame position + 1, enc_window) (the real count of each
  frame is summed). Element-wise work (norms, RoPE, GELU, softmax) is not
  counted. The engine's ``encoder_ms`` covers the conv stem, the transformer
  and the adapter, so the count does too.
* Decoder, per pass: every decoder layer matrix (wq, wk, wv, wo, w1, w2, w3)
  in its stored dtype, plus the output head (the tied ``tok_embeddings``,
  vocab x dim) for passes that produce logits; the ada-norm matrices are
  applied once per stream and norms are tiny, so neither is counted. Plus the
  KV cache read by attention: ``min(p + 1, window) * n_layers * 2 * kv_dim *
  2`` bytes at position p (the cache is fp16; 4 with ``--kv-f32``), summed over the positions
  decoded (as if each position were its own pass: an upper bound once passes
  are batched).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voxd.config import EndpointSettings, EngineSettings
from voxd.engine import (
    Engine,
    ModelInfo,
    Stream,
    StreamStats,
    TokenEvent,
    cuda_membw,
    library,
)
from voxd.events import DELAY_MS_DEFAULT, SAMPLE_RATE
from voxd.tools import safetensors as st

CHUNK_SAMPLES = 1280  # 80 ms, one decoder position: what the daemon feeds
LEFT_PAD_POS = 32  # positions of zeros the stream starts with (spec section 8)
REALTIME_STEPS_PER_S = 12.5
KV_BYTES_PER_VALUE = {False: 2, True: 4}  # the KV cache: fp16, or float32 with kv_f32

F32 = npt.NDArray[np.float32]

# Boards to project onto: name -> (read bandwidth GB/s, float32 FMA peak GFLOP/s).
# Pi 5: 4 x Cortex-A76 at 2.4 GHz, 2 x 128-bit FMA pipes = 16 FLOP/cycle/core.
# Jetson Orin Nano: 6 x Cortex-A78AE at 1.5 GHz, same FMA width (CPU only).
DEFAULT_PROJECTIONS: dict[str, tuple[float, float]] = {
    "raspberry-pi-5": (11.0, 4 * 2.4 * 16),
    "jetson-orin-nano": (68.0, 6 * 1.5 * 16),
}

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the lights in the living room.",
    "What is the weather going to be like tomorrow morning?",
    "Set a timer for twelve minutes and remind me to check the oven.",
    "Voice assistants should work without sending audio to the cloud.",
    "The train to the city leaves at half past seven from platform four.",
    "Add milk, eggs, bread and coffee to the shopping list.",
    "She sells sea shells by the sea shore on sunny afternoons.",
)


# ---------------------------------------------------------------- machine


def _declare_bench(lib: ctypes.CDLL) -> None:
    lib.vx_measure_read_bandwidth.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    lib.vx_measure_read_bandwidth.restype = ctypes.c_double
    lib.vx_measure_fma_peak.argtypes = [ctypes.c_int]
    lib.vx_measure_fma_peak.restype = ctypes.c_double
    if hasattr(lib, "vx_measure_int8_peak"):  # not in a library set by VOXD_ENGINE_LIB of old
        lib.vx_measure_int8_peak.argtypes = [ctypes.c_int]
        lib.vx_measure_int8_peak.restype = ctypes.c_double


def measure_read_bandwidth(n_bytes: int = 1 << 30, threads: int = 0, reps: int = 3) -> float:
    """Memory read bandwidth in GB/s, best of ``reps`` (threads 0 = all CPUs)."""
    lib = library()
    _declare_bench(lib)
    gbs = float(lib.vx_measure_read_bandwidth(n_bytes, threads, reps))
    if not gbs > 0:
        raise MemoryError(f"cannot measure the read bandwidth with a {n_bytes} byte buffer")
    return gbs


def measure_fma_peak(threads: int = 0) -> float:
    """float32 FMA peak in GFLOP/s over ``threads`` threads (0 = all CPUs)."""
    lib = library()
    _declare_bench(lib)
    gflops = float(lib.vx_measure_fma_peak(threads))
    if not gflops > 0:
        raise RuntimeError("cannot measure the FMA peak (thread start failed)")
    return gflops


def measure_int8_peak(threads: int = 0) -> float | None:
    """int8 dot-product peak in GOP/s (the Q8/Q4 kernels' instructions: vpdpbusd,
    vpmaddubsw or SDOT), or None where the CPU has none of them (or the library
    predates the measurement)."""
    lib = library()
    _declare_bench(lib)
    if not hasattr(lib, "vx_measure_int8_peak"):
        return None
    gops = float(lib.vx_measure_int8_peak(threads))
    return gops if gops > 0 else None


def _in_child(fn: Callable[[], float]) -> float:
    """fn() in a forked child where fork exists, so that its memory (the bandwidth
    test's buffer) never counts in this process's peak RSS."""
    if not hasattr(os, "fork"):
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one C call, its result down the pipe, and out
        code = 1
        with contextlib.suppress(BaseException):
            os.write(w, repr(fn()).encode())
            code = 0
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise MemoryError("the memory bandwidth measurement failed")
    return float(data)


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo, or what platform knows."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    m = re.search(r"^CPU part\s*:\s*(\S+)$", text, re.MULTILINE)
    if m:
        return f"{platform.machine()} CPU part {m.group(1)}"
    return platform.processor() or platform.machine() or "unknown"


def peak_rss_bytes() -> int:
    """Peak resident set of this process (mapped weights that were touched count)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def rss_parts() -> dict[str, int]:
    """Current anonymous / file-backed resident bytes (Linux; empty elsewhere)."""
    out: dict[str, int] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return out
    for key, name in (("RssAnon", "rss_anon_bytes"), ("RssFile", "rss_file_bytes")):
        m = re.search(rf"^{key}:\s*(\d+) kB", text, re.MULTILINE)
        if m:
            out[name] = int(m.group(1)) * 1024
    return out


# ---------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightSummary:
    groups: dict[str, dict[str, int]]  # group -> dtype -> stored bytes
    total_bytes: int
    decoder_pass_bytes: int  # decoder layer matrices read by one pass
    encoder_pass_bytes: int  # conv stem, encoder layers and adapter
    head_bytes: int  # output head (the tied token embedding)

    @property
    def label(self) -> str:
        """Dominant stored dtype of each part, e.g. "decoder q4, head q8, encoder q4"."""

        def top(group: str) -> str:
            d = self.groups.get(group, {})
            return max(d, key=lambda k: d[k]).lower() if d else "-"

        parts = {"decoder": top("decoder"), "head": top("embedding"), "encoder": top("encoder")}
        if len(set(parts.values())) == 1:
            return parts["decoder"]
        return ", ".join(f"{k} {v}" for k, v in parts.items())


# A transformer layer's matrices (attention and feed-forward), of the decoder
# ("layers.N...") and of the encoder (the same names under its prefix).
_LAYER_MATRIX = r"layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])\.weight$"
DECODER_MATRIX = re.compile("^" + _LAYER_MATRIX)
ENCODER_MATRIX = re.compile(
    "^"
    + re.escape("mm_streams_embeddings.embedding_module.whisper_encoder.transformer.")
    + _LAYER_MATRIX
)


def weight_group(name: str) -> str:
    if "whisper_encoder." in name:
        return "encoder"
    if "audio_language_projection." in name:
        return "adapter"
    if name.endswith("tok_embeddings.weight"):
        return "embedding"
    if name.startswith("layers."):
        return "decoder"
    return "other"


def summarize_weights(model_dir: str | os.PathLike[str]) -> WeightSummary:
    """Stored dtypes and bytes from the safetensors header (no weight is read)."""
    header = st.read_header(Path(model_dir) / "consolidated.safetensors")
    groups: dict[str, dict[str, int]] = {}
    total = dec = head = enc = 0
    for name, t in header.tensors.items():
        size = t.nbytes
        dtype = t.dtype
        g = groups.setdefault(weight_group(name), {})
        g[dtype] = g.get(dtype, 0) + size
        total += size
        if DECODER_MATRIX.match(name):
            dec += size
        elif name.endswith("tok_embeddings.weight"):
            head += size
        if weight_group(name) in ("encoder", "adapter"):
            enc += size
    return WeightSummary(groups, total, dec, enc, head)


# ---------------------------------------------------------------- FLOPs


def encoder_matmul_flops_per_frame(info: ModelInfo) -> float:
    """Matrix FLOPs of one encoder frame: conv stem + transformer + adapter share."""
    ed, hid = info.enc_dim, info.enc_hidden_dim
    qd = info.enc_heads * info.enc_head_dim
    kvd = info.enc_kv_heads * info.enc_head_dim
    layer = ed * qd + 2 * ed * kvd + qd * ed + 3 * ed * hid
    conv = 2 * ed * info.n_mels * 3 + ed * ed * 3
    adapter = (ed * info.downsample * info.dim + info.dim * info.dim) / info.downsample
    return 2.0 * (info.enc_layers * layer + conv + adapter)


def encoder_attention_flops(info: ModelInfo, keys: int) -> float:
    """q.k and p.v FLOPs of one encoder frame attending to ``keys`` frames."""
    return 4.0 * info.enc_layers * info.enc_heads * info.enc_head_dim * keys


def encoder_frames_per_second(info: ModelInfo) -> float:
    return info.sample_rate / info.hop_length / 2  # the conv stem halves the mel rate


def window_sum(first: int, count: int, window: int) -> int:
    """sum(min(p + 1, window) for p in range(first, first + count)), in O(1)."""
    if count <= 0:
        return 0
    last = first + count  # exclusive
    below = max(0, min(last, window - 1) - first)  # positions with p + 1 < window
    s = below * (2 * first + below + 1) // 2
    return s + (count - below) * window


def kv_bytes_per_position(info: ModelInfo, kv_f32: bool = False) -> int:
    return info.n_layers * 2 * info.n_kv_heads * info.head_dim * KV_BYTES_PER_VALUE[kv_f32]


# ---------------------------------------------------------------- audio


def _espeak(text: str, wav: Path) -> None:
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(wav), text],
        check=True,
        capture_output=True,
        timeout=120,
    )


def synth_speech(seconds: float) -> tuple[F32, str]:
    """``seconds`` of 16 kHz speech: espeak-ng sentences, else a voiced synthetic signal."""
    n = int(round(seconds * SAMPLE_RATE))
    if shutil.which("espeak-ng"):
        from voxd.audio import read_wav

        pieces: list[F32] = []
        have = 0
        with tempfile.TemporaryDirectory(prefix="voxd-bench-") as tmp:
            wav = Path(tmp) / "speech.wav"
            i = 0
            try:
                while have < n:
                    # a few sentences per call: espeak's start-up is most of its time
                    text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(4))
                    i += 4
                    _espeak(text, wav)
                    x = read_wav(wav)
                    if x.size == 0:
                        break
                    pieces.append(x)
                    have += x.size
            except (OSError, subprocess.SubprocessError, ValueError):
                pieces = []
        if pieces and have >= n:
            return np.concatenate(pieces)[:n].astype(np.float32), "espeak-ng"
    return synthetic_voice(seconds), "synthetic"


def synthetic_voice(seconds: float, seed: int = 0) -> F32:
    """A voiced, speech-like signal: glottal pulse train through moving formants,
    syllable-rate amplitude envelope, short pauses. Deterministic."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    src = np.zeros(n)
    for h in range(1, 30):  # band-limited pulse train, falling 12 dB/octave
        src += np.cos(h * phase) / h**2 * (h * 130 < SAMPLE_RATE / 2)
    out = np.zeros(n)
    for fc, bw in ((500, 80), (1500, 120), (2500, 160)):
        fc_t = fc * (1 + 0.3 * np.sin(2 * np.pi * (0.9 + fc / 5000) * t + rng.uniform(0, 6)))
        env = np.exp(-np.pi * bw / SAMPLE_RATE)
        # resonator with a slowly moving centre: y[k] = x + 2r cos(w) y[k-1] - r^2 y[k-2]
        w = 2 * np.pi * fc_t / SAMPLE_RATE
        y1 = y2 = 0.0
        y = np.empty(n)
        a1 = 2 * env * np.cos(w)
        for k in range(n):
            y0 = src[k] + a1[k] * y1 - env * env * y2
            y[k] = y0
            y2, y1 = y1, y0
        out += y / (np.max(np.abs(y)) + 1e-9)
    syll = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)  # ~4 syllables/s
    pauses = (np.sin(2 * np.pi * 0.25 * t) > -0.8).astype(np.float64)
    x = out * syll * pauses + 0.002 * rng.standard_normal(n)
    result: F32 = np.asarray(0.3 * x / (np.max(np.abs(x)) + 1e-9), dtype=np.float32)
    return result


def load_audio(path: str | None, seconds: float) -> tuple[F32, str]:
    if path:
        from voxd.audio import read_wav

        return read_wav(path), str(path)
    return synth_speech(seconds)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Projection:
    """A board to project onto: read bandwidth and float32 FMA peak (0 = unknown)."""

    name: str
    bandwidth_gbs: float
    fma_peak_gflops: float


def _delta(a: StreamStats, b: StreamStats) -> StreamStats:
    """b - a for the cumulative counters (kv_positions, a level, is b's)."""
    values = {
        f.name: getattr(b, f.name) - (0 if f.name == "kv_positions" else getattr(a, f.name))
        for f in dataclasses.fields(StreamStats)
    }
    return StreamStats(**values)


@dataclass
class _Steps:
    """The decoder steps of a segment: its passes that made logits. The prompt's
    prefill passes (no logits, batched at the stream's start) are matrix-matrix
    work and are reported with the prefill instead."""

    first: int  # the first step's position
    positions: int
    passes: int
    ms: float

    @classmethod
    def of(cls, seg: StreamStats, first_position: int) -> _Steps:
        return cls(
            first=first_position + seg.prompt_positions,
            positions=seg.positions - seg.prompt_positions,
            passes=seg.decoder_passes - seg.prompt_passes,
            ms=seg.decoder_ms - seg.prompt_ms,
        )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def realtime_lag_ms(arrivals_s: Sequence[float], chunk_ms: Sequence[float]) -> float:
    """How far behind the engine is when the last chunk has arrived, fed in real time.

    Chunk i arrives at ``arrivals_s[i]`` (when its audio has been spoken) and
    takes ``chunk_ms[i]`` (as measured); the engine starts on it once it has
    arrived and the chunk before is done. The lag is the time from the last
    arrival (the daemon's end decision: the hangover's audio is the
    utterance's last) to the engine being done with that chunk: at least its
    own feed time, more when the engine was behind.
    """
    done = 0.0
    for arrived, ms in zip(arrivals_s, chunk_ms, strict=True):
        done = max(done, arrived) + ms / 1e3
    last = arrivals_s[-1] if arrivals_s else 0.0
    return max(done - last, 0.0) * 1e3


def hangover_noise(hangover_ms: int) -> F32:
    """The hangover's audio: -60 dBFS room noise, seeded (the same in every run)."""
    n = SAMPLE_RATE * hangover_ms // 1000
    return (np.random.default_rng(0).standard_normal(n) * 1e-3).astype(np.float32)


def _prefill(stream: Stream) -> tuple[float, StreamStats]:
    t0 = time.perf_counter()
    stream.feed(np.zeros(0, dtype=np.float32))
    return (time.perf_counter() - t0) * 1e3, stream.stats()


def run_bench(
    model_dir: str | os.PathLike[str],
    audio: F32,
    audio_source: str = "array",
    threads: int = 0,
    backend: str | None = None,
    delay_ms: int = DELAY_MS_DEFAULT,
    interval_ms: int = 480,
    max_speculation: int = 0,
    kv_f32: bool = False,
    membw_bytes: int = 1 << 30,
    projections: Sequence[Projection] = (),
    hangover_ms: int = EndpointSettings().hangover_ms,
) -> dict[str, Any]:
    """Run the benchmark; returns the report as a JSON-ready dict."""
    weights = summarize_weights(model_dir)
    # the machine, before and after the engine (best of both: a shared machine's other
    # load only lowers a measurement; a big difference says the run was disturbed)
    bw_before = _in_child(lambda: measure_read_bandwidth(membw_bytes, threads, 3))
    fma_before = measure_fma_peak(threads)

    t0 = time.perf_counter()
    engine = Engine(model_dir, threads=threads, backend=backend)
    load_s = time.perf_counter() - t0
    info = engine.info
    try:
        # cold prefill (first touch of the mapped weights), then warm on a second stream
        s1 = engine.stream(delay_ms, interval_ms, max_speculation, kv_f32)
        prefill_cold_ms, _ = _prefill(s1)
        s1.close()
        stream = engine.stream(delay_ms, interval_ms, max_speculation, kv_f32)
        prefill_ms, pre = _prefill(stream)

        speech = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        x = np.concatenate([speech, hangover_noise(hangover_ms)])
        hangover_samples = x.size - speech.size
        chunk_ms: list[float] = []
        tokens = text_tokens = 0
        eos = False
        t_feed = time.perf_counter()
        for i in range(0, x.size, CHUNK_SAMPLES):
            c0 = time.perf_counter()
            events = stream.feed(x[i : i + CHUNK_SAMPLES])
            chunk_ms.append((time.perf_counter() - c0) * 1e3)
            for ev in events:
                if isinstance(ev, TokenEvent):
                    tokens += 1
                    text_tokens += not engine.is_control(ev.token_id)
                    eos = eos or ev.token_id == info.eos_id
        feed_s = time.perf_counter() - t_feed
        fed = stream.stats()
        t_flush = time.perf_counter()
        for ev in stream.flush(silence=hangover_samples):
            if isinstance(ev, TokenEvent):
                tokens += 1
                text_tokens += not engine.is_control(ev.token_id)
        flush_ms = (time.perf_counter() - t_flush) * 1e3
        end = stream.stats()
        rss_now = rss_parts()  # with the stream's caches still allocated
        stream.close()
    finally:
        engine.close()
    peak_rss = peak_rss_bytes()

    n_threads = info.n_threads
    bw_after = _in_child(lambda: measure_read_bandwidth(membw_bytes, n_threads, 3))
    fma_after = measure_fma_peak(n_threads)
    int8_peak = measure_int8_peak(n_threads)
    bandwidth = max(bw_before, bw_after)
    fma_peak = max(fma_before, fma_after)
    # the GPU's own read bandwidth (the engine's streaming-read kernel) when it ran there
    gpu_gbs = cuda_membw(membw_bytes, 10) if info.device == "cuda" else None

    audio_s = x.size / SAMPLE_RATE
    arrivals = [
        min(i + CHUNK_SAMPLES, x.size) / SAMPLE_RATE for i in range(0, x.size, CHUNK_SAMPLES)
    ]
    lag_ms = realtime_lag_ms(arrivals, chunk_ms)
    run = _delta(pre, end)  # everything after the left padding: feeds + flush
    flushed = _delta(fed, end)

    # encoder
    enc_first = pre.encoder_frames  # the stream's first audio frame position
    enc_keys = window_sum(enc_first, run.encoder_frames, info.enc_window)
    enc_flop = (
        run.encoder_frames * encoder_matmul_flops_per_frame(info)
        + encoder_attention_flops(info, 1) * enc_keys
    )
    enc_audio_s = run.encoder_frames / encoder_frames_per_second(info)
    enc_gflops = _ratio(enc_flop / 1e9, run.encoder_ms / 1e3)
    # weights re-read by every pass (the adapter and conv stem once per call: close enough)
    enc_passes = run.encoder_passes
    enc_bytes = enc_passes * weights.encoder_pass_bytes
    fps = encoder_frames_per_second(info)
    enc_gflop_per_s_steady = (
        fps
        * (encoder_matmul_flops_per_frame(info) + encoder_attention_flops(info, info.enc_window))
        / 1e9
    )

    # decoder steps: the whole run, and the streaming part alone (feeds; the flush
    # decodes many waiting positions at once, so speculation batches there)
    def dec_bytes(steps: _Steps) -> tuple[float, float]:
        """(all bytes read, KV bytes read) by a segment's decoder steps."""
        kv = window_sum(steps.first, steps.positions, info.sliding_window) * (
            kv_bytes_per_position(info, kv_f32)
        )
        return steps.passes * (weights.decoder_pass_bytes + weights.head_bytes) + kv, kv

    streaming = _delta(pre, fed)
    run_steps = _Steps.of(run, pre.positions)
    stream_steps = _Steps.of(streaming, pre.positions)
    dec_total, kv_total = dec_bytes(run_steps)
    dec_stream, _ = dec_bytes(stream_steps)
    dec_gbs = _ratio(dec_total / 1e9, run_steps.ms / 1e3)
    stream_gbs = _ratio(dec_stream / 1e9, stream_steps.ms / 1e3)
    ms_per_step = _ratio(run_steps.ms, run_steps.positions)
    stream_ms_per_step = _ratio(stream_steps.ms, stream_steps.positions)
    kv_avg = _ratio(kv_total, run_steps.positions)
    # one sequential step (no speculation): weights + head + the average KV read
    seq_step_bytes = weights.decoder_pass_bytes + weights.head_bytes + kv_avg
    roofline = _ratio(dec_gbs, bandwidth)
    stream_roofline = _ratio(stream_gbs, bandwidth)
    enc_peak_frac = _ratio(enc_gflops, fma_peak)

    proj_out = []
    for p in projections:
        # decoder, bandwidth roof: the spec's cost model (bytes per step / bandwidth)
        step_ms_ideal = seq_step_bytes / (p.bandwidth_gbs * 1e9) * 1e3
        step_ms_like = _ratio(step_ms_ideal, stream_roofline)
        # compute roof: this run's step as if it were compute bound here, scaled by FMA
        # peak (the dequantizing kernels can be; then bandwidth alone flatters the board).
        # Unknown without the board's peak, as is the encoder (at this run's peak fraction).
        step_ms_compute: float | None = None
        step_ms_two_roof: float | None = None
        enc_ms_like: float | None = None
        compute_s: float | None = None
        if p.fma_peak_gflops > 0:
            step_ms_compute = stream_ms_per_step * fma_peak / p.fma_peak_gflops
            step_ms_two_roof = max(step_ms_ideal, step_ms_compute)
            enc_ms_like = _ratio(enc_gflop_per_s_steady, p.fma_peak_gflops * enc_peak_frac) * 1e3
            compute_s = (REALTIME_STEPS_PER_S * step_ms_two_roof + enc_ms_like) / 1e3
        proj_out.append(
            {
                "name": p.name,
                "bandwidth_gbs": p.bandwidth_gbs,
                "fma_peak_gflops": p.fma_peak_gflops,
                "decoder_step_ms_at_full_bandwidth": step_ms_ideal,
                "steps_per_s_at_full_bandwidth": _ratio(1e3, step_ms_ideal),
                "decoder_step_ms_at_this_roofline": step_ms_like,
                "steps_per_s_at_this_roofline": _ratio(1e3, step_ms_like),
                "decoder_step_ms_compute_scaled": step_ms_compute,
                "decoder_step_ms_two_roof": step_ms_two_roof,
                "steps_per_s_two_roof": _ratio(1e3, step_ms_two_roof) if step_ms_two_roof else None,
                "encoder_ms_per_audio_s_at_this_peak_fraction": enc_ms_like,
                "compute_s_per_audio_s": compute_s,
            }
        )

    return {
        "voxd_bench": 1,
        "machine": {
            "cpu_model": cpu_model(),
            "arch": platform.machine(),
            "cores": os.cpu_count() or 1,
            "threads": n_threads,
            "read_bandwidth_gbs": bandwidth,
            "read_bandwidth_gbs_runs": [bw_before, bw_after],
            "bandwidth_buffer_bytes": membw_bytes,
            "fma_peak_gflops": fma_peak,
            "fma_peak_gflops_runs": [fma_before, fma_after],
            "int8_peak_gops": int8_peak,
            "gpu_read_bandwidth_gbs": gpu_gbs,
        },
        "model": {
            "dir": str(model_dir),
            "backend": info.backend,
            "device": info.device,
            "device_note": info.device_note,
            "weights_note": info.weights_note,
            "weight_format": weights.label,
            "weight_dtypes": weights.groups,
            "weight_bytes": weights.total_bytes,
            "mapped_bytes": info.weight_bytes,
            "decoder_pass_bytes": weights.decoder_pass_bytes,
            "head_bytes": weights.head_bytes,
            "load_s": load_s,
            "peak_rss_bytes": peak_rss,
            **rss_now,
        },
        "audio": {
            "source": audio_source,
            "seconds": audio_s,  # the speech and the hangover after it
            "hangover_seconds": hangover_samples / SAMPLE_RATE,
            "chunk_ms": CHUNK_SAMPLES * 1000 // SAMPLE_RATE,
            "delay_ms": delay_ms,
            "interval_ms": interval_ms,
            "max_speculation": max_speculation,
            "kv_cache": "f32" if kv_f32 else "f16",
        },
        "prefill": {
            "cold_ms": prefill_cold_ms,
            "ms": prefill_ms,
            "positions": pre.positions,
            "decoder_passes": pre.decoder_passes,
            "encoder_frames": pre.encoder_frames,
            "mel_ms": pre.mel_ms,
            "encoder_ms": pre.encoder_ms,
            "decoder_ms": pre.decoder_ms,
            # the rest of the prompt, prefilled once the first audio gives its positions
            "feed_prompt_positions": run.prompt_positions,
            "feed_prompt_passes": run.prompt_passes,
            "feed_prompt_ms": run.prompt_ms,
            "total_ms": prefill_ms + run.prompt_ms,
        },
        "encoder": {
            "frames": run.encoder_frames,
            "ms": run.encoder_ms,
            "mel_ms": run.mel_ms,
            "mel_ms_per_audio_s": _ratio(run.mel_ms, enc_audio_s),
            "ms_per_audio_s": _ratio(run.encoder_ms, enc_audio_s),
            "gflop": enc_flop / 1e9,
            "gflop_per_audio_s_steady": enc_gflop_per_s_steady,
            "gflops": enc_gflops,
            "fma_peak_fraction": enc_peak_frac,
            "passes": enc_passes,
            "frames_per_pass": _ratio(run.encoder_frames, enc_passes),
            "weight_bytes_per_pass": weights.encoder_pass_bytes,
            "weight_gbs": _ratio(enc_bytes / 1e9, run.encoder_ms / 1e3),
        },
        "decoder": {
            # steps: passes that made logits (the prompt's passes are in "prefill")
            "positions": run_steps.positions,
            "passes": run_steps.passes,
            "passes_per_position": _ratio(run_steps.passes, run_steps.positions),
            "spec_guesses": run.spec_guesses,
            "spec_accepted": run.spec_accepted,
            # rows computed per pass: kept positions plus rejected guesses
            "rows_per_pass": _ratio(
                run_steps.positions + run.spec_guesses - run.spec_accepted, run_steps.passes
            ),
            "ms": run_steps.ms,
            "ms_per_step": ms_per_step,
            "ms_per_pass": _ratio(run_steps.ms, run_steps.passes),
            "steps_per_s": _ratio(1e3, ms_per_step),
            "kv_bytes_per_step": kv_avg,
            "bytes_per_step": _ratio(dec_total, run_steps.positions),
            "sequential_step_bytes": seq_step_bytes,
            "achieved_gbs": dec_gbs,
            "roofline_fraction": roofline,
            # the feeds alone: one position per pass at 80 ms chunks, the steady state
            "streaming_positions": stream_steps.positions,
            "streaming_passes": stream_steps.passes,
            "streaming_ms_per_step": stream_ms_per_step,
            "streaming_achieved_gbs": stream_gbs,
            "streaming_roofline_fraction": stream_roofline,
        },
        "stream": {
            "feed_s": feed_s,
            "chunk_ms_p50": float(np.percentile(chunk_ms, 50)) if chunk_ms else 0.0,
            "chunk_ms_max": max(chunk_ms, default=0.0),
            "flush_ms": flush_ms,
            "flush_silence_samples": hangover_samples,  # the hangover, counted as padding
            "flush_positions": flushed.positions,
            "flush_passes": flushed.decoder_passes,
            "flush_encoder_ms": flushed.encoder_ms,
            "flush_decoder_ms": flushed.decoder_ms,
            "rtf": _ratio(feed_s + flush_ms / 1e3, audio_s),
            "tokens": tokens,
            "text_tokens": text_tokens,
            "eos": eos,
        },
        # the wait after the end of speech, as the daemon's final reports it
        "wait": {
            "hangover_ms": float(hangover_ms),
            "lag_ms": lag_ms,
            "flush_ms": flush_ms,
            "total_ms": hangover_ms + lag_ms + flush_ms,
        },
        "projections": proj_out,
    }


# ---------------------------------------------------------------- output


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _spread(section: dict[str, Any], key: str) -> str:
    """A warning when the before/after measurements differ by more than 20 %."""
    runs = [float(v) for v in section.get(key, [])]
    if len(runs) < 2 or min(runs) >= 0.8 * max(runs):
        return ""
    return " (measured " + " / ".join(f"{v:.1f}" for v in runs) + ": other load?)"


def format_report(r: dict[str, Any]) -> str:
    m, mo, a, pf = r["machine"], r["model"], r["audio"], r["prefill"]
    e, d, s, w = r["encoder"], r["decoder"], r["stream"], r["wait"]
    rows: list[tuple[str, str]] = [
        ("cpu", f"{m['cpu_model']} ({m['arch']}, {m['cores']} cores, {m['threads']} threads)"),
        (
            "memory read bandwidth",
            f"{m['read_bandwidth_gbs']:.1f} GB/s" + _spread(m, "read_bandwidth_gbs_runs"),
        ),
        ("FMA peak", f"{m['fma_peak_gflops']:.1f} GFLOP/s" + _spread(m, "fma_peak_gflops_runs")),
        (
            "int8 dot-product peak",
            f"{m['int8_peak_gops']:.1f} GOP/s" if m.get("int8_peak_gops") else "none on this CPU",
        ),
        ("model", f"{mo['dir']} ({mo['weight_format']}, backend {mo['backend']})"),
        ("weights", f"{_gb(mo['weight_bytes'])} stored"),
        ("load", f"{mo['load_s'] * 1e3:.0f} ms"),
        ("peak RSS", _gb(mo["peak_rss_bytes"])),
        (
            "audio",
            f"{a['seconds']:.2f} s from {a['source']}, {a['chunk_ms']} ms chunks, "
            f"delay {a['delay_ms']} ms",
        ),
        (
            "prefill (left padding)",
            f"{pf['positions']} positions: {pf['ms']:.0f} ms warm, {pf['cold_ms']:.0f} ms cold "
            f"(mel {pf['mel_ms']:.0f} ms, encoder {pf['encoder_ms']:.0f} ms, "
            f"decoder {pf['decoder_ms']:.0f} ms)",
        ),
        (
            "prefill (rest of the prompt)",
            f"{pf['feed_prompt_positions']} positions in {pf['feed_prompt_passes']} passes "
            f"with the first audio: {pf['feed_prompt_ms']:.0f} ms; "
            f"prefill in all {pf['total_ms']:.0f} ms",
        ),
        (
            "encoder",
            f"{e['ms_per_audio_s']:.0f} ms per audio s, {e['gflops']:.1f} GFLOP/s = "
            f"{e['fma_peak_fraction'] * 100:.0f}% of FMA peak "
            f"({e['gflop_per_audio_s_steady']:.3g} GFLOP per audio s at full window; "
            f"mel {e['mel_ms_per_audio_s']:.0f} ms per audio s)",
        ),
        (
            "encoder passes",
            f"{e['passes']} of {e['frames_per_pass']:.1f} frames, each reading "
            f"{_gb(e['weight_bytes_per_pass'])}: {e['weight_gbs']:.1f} GB/s of weights",
        ),
        (
            "decoder step (with logits)",
            f"{d['ms_per_step']:.1f} ms ({d['steps_per_s']:.2f} steps/s; "
            f"real time needs {REALTIME_STEPS_PER_S}); streaming alone "
            f"{d['streaming_ms_per_step']:.1f} ms",
        ),
        ("decoder bytes/step", f"{_gb(d['bytes_per_step'])} (KV {_gb(d['kv_bytes_per_step'])})"),
        (
            "decoder bandwidth",
            f"{d['achieved_gbs']:.1f} GB/s = "
            f"{d['roofline_fraction'] * 100:.0f}% of measured read bandwidth; streaming alone "
            f"{d['streaming_achieved_gbs']:.1f} GB/s = "
            f"{d['streaming_roofline_fraction'] * 100:.0f}%",
        ),
        (
            "decoder passes / positions",
            f"{d['passes']} / {d['positions']} ({d['passes_per_position']:.2f}); "
            f"{d['rows_per_pass']:.2f} rows per pass; pad guesses: {d['spec_accepted']} of "
            f"{d['spec_guesses']} right",
        ),
        ("feed chunk time", f"p50 {s['chunk_ms_p50']:.0f} ms, max {s['chunk_ms_max']:.0f} ms"),
        (
            "flush latency",
            f"{s['flush_ms']:.0f} ms after {s['flush_silence_samples'] / SAMPLE_RATE:.2f} s of "
            f"hangover ({s['flush_positions']} positions in "
            f"{s['flush_passes']} passes: encoder {s['flush_encoder_ms']:.0f} ms, "
            f"decoder {s['flush_decoder_ms']:.0f} ms)",
        ),
        (
            "end-of-utterance wait",
            f"{w['total_ms']:.0f} ms modelled = hangover {w['hangover_ms']:.0f} ms (configured) "
            f"+ lag {w['lag_ms']:.0f} ms (these chunk times at real time) "
            f"+ flush {w['flush_ms']:.0f} ms",
        ),
        ("real-time factor", f"{s['rtf']:.2f}"),
        ("tokens", f"{s['tokens']} ({s['text_tokens']} text){', EOS' if s['eos'] else ''}"),
    ]
    for p in r["projections"]:
        text = (
            f"{p['bandwidth_gbs']:g} GB/s: {p['steps_per_s_at_full_bandwidth']:.2f} steps/s at "
            f"100% of bandwidth, {p['steps_per_s_at_this_roofline']:.2f} at this run's "
            f"streaming {d['streaming_roofline_fraction'] * 100:.0f}%"
        )
        if p["compute_s_per_audio_s"] is not None:
            text += (
                f"; {p['fma_peak_gflops']:g} GFLOP/s: {p['steps_per_s_two_roof']:.2f} steps/s "
                f"if compute bound like here; encoder "
                f"{p['encoder_ms_per_audio_s_at_this_peak_fraction']:.0f} ms per audio s; "
                f"{p['compute_s_per_audio_s']:.2f} s compute per audio s"
            )
        rows.append((f"-> {p['name']}", text))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _parse_projection(text: str) -> Projection:
    """NAME=GBPS[,GFLOPS] (GFLOPS defaults to the built-in board's or 0)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=GBPS[,GFLOPS], got {text!r}")
    try:
        nums = [float(v) for v in rest.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected NAME=GBPS[,GFLOPS], got {text!r}") from exc
    if not 1 <= len(nums) <= 2 or any(not (math.isfinite(v) and v > 0) for v in nums):
        raise argparse.ArgumentTypeError(f"expected positive NAME=GBPS[,GFLOPS], got {text!r}")
    flops = nums[1] if len(nums) == 2 else DEFAULT_PROJECTIONS.get(name, (0.0, 0.0))[1]
    return Projection(name, nums[0], flops)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        print("voxd bench: --seconds must be > 0", file=sys.stderr)
        return 2
    if args.hangover_ms < 0:
        print("voxd bench: --hangover-ms must be >= 0", file=sys.stderr)
        return 2
    try:
        audio, source = load_audio(args.audio, args.seconds)
    except (OSError, ValueError) as exc:
        print(f"voxd bench: {exc}", file=sys.stderr)
        return 2
    projections = args.project or [Projection(k, *v) for k, v in DEFAULT_PROJECTIONS.items()]
    model_dir = args.model_dir
    if model_dir is None:  # the daemon's model, so the bench runs what it runs
        from voxd.tools.modelfetch import ModelFetchError, configured_engine

        try:
            model_dir = configured_engine(args.config, "--model-dir").model_dir
        except ModelFetchError as exc:
            print(f"voxd bench: no --model-dir, and {exc}", file=sys.stderr)
            return 2
    try:
        report = run_bench(
            model_dir,
            audio,
            audio_source=source,
            threads=args.threads,
            backend=args.backend,
            delay_ms=args.delay_ms,
            interval_ms=args.interval_ms,
            max_speculation=args.max_speculation,
            kv_f32=args.kv_f32,
            membw_bytes=int(args.membw_mb * (1 << 20)),
            projections=projections,
            hangover_ms=args.hangover_ms,
        )
    except (OSError, RuntimeError, MemoryError, ValueError) as exc:
        print(f"voxd bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bench`` on an argparse subparsers; sets ``func`` to the handler
    (takes the parsed Namespace, returns an exit code)."""
    p = subparsers.add_parser(
        "bench",
        help="measure the engine's speed on this machine",
        description="Run a model on speech fed in 80 ms chunks and report load time, memory, "
        "prefill, encoder and decoder speed against this machine's measured memory bandwidth "
        "and FMA peak, end-of-utterance latency, real-time factor, and projections for "
        "other boards.",
    )
    p.add_argument("--model-dir", metavar="DIR", help="model directory (default: engine.model_dir)")
    p.add_argument("--config", type=Path, metavar="PATH", help="default: /etc/voxd/voxd.toml")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--audio", metavar="WAV", help="audio to feed (any rate; mixed to mono)")
    src.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        metavar="N",
        help="seconds of espeak-ng speech to synthesize when no --audio (default: 10)",
    )
    p.add_argument("--threads", type=int, default=0, metavar="N", help="0 = all cores (default)")
    p.add_argument(
        "--backend", metavar="NAME", help="auto, cuda, portable, avx2 or neon (default: best CPU)"
    )
    # the daemon's defaults, so the bench runs what it runs
    daemon = EngineSettings()
    delay, interval = daemon.delay_ms, daemon.interval_ms
    p.add_argument(
        "--delay-ms",
        type=int,
        default=delay,
        metavar="MS",
        help=f"decoder delay (default: the daemon's, {delay})",
    )
    p.add_argument(
        "--interval-ms",
        type=int,
        default=interval,
        metavar="MS",
        help=f"audio the encoder batches (default: the daemon's, {interval})",
    )
    p.add_argument(
        "--max-speculation",
        type=int,
        default=0,
        metavar="K",
        help="positions per decoder pass with pad speculation (0 = engine default, 1 = off)",
    )
    p.add_argument(
        "--kv-f32",
        action="store_true",
        help="keep the KV caches in float32 instead of fp16 (twice the bytes)",
    )
    hangover = EndpointSettings().hangover_ms
    p.add_argument(
        "--hangover-ms",
        type=int,
        default=hangover,
        metavar="MS",
        help=f"endpointer hangover for the modelled end-of-utterance wait "
        f"(default: the daemon's, {hangover})",
    )
    p.add_argument(
        "--membw-mb",
        type=float,
        default=1024,
        metavar="MB",
        help="buffer of the bandwidth test in MiB (default: 1024)",
    )
    p.add_argument(
        "--project",
        action="append",
        type=_parse_projection,
        metavar="NAME=GBPS[,GFLOPS]",
        help="a board to project onto (repeatable; default: raspberry-pi-5=11,153.6 and "
        "jetson-orin-nano=68,144)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m voxd.tools.bench --model-dir DIR ...``, usable without the CLI."""
    parser = argparse.ArgumentParser(prog="python -m voxd.tools.bench")
    sub = parser.add_subparsers(dest="command")
    add_cli(sub)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != "bench":
        args_list.insert(0, "bench")
    args = parser.parse_args(args_list)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
