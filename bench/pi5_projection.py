"""Raspberry Pi 5 projection of the whole stream (encoder + decoder), with pad speculation.

The decoder steps one position per 80 ms of audio and most positions output
STREAMING_PAD. The engine speculates on that: a pass runs k rows at once, the
first with its known input token, the others guessing that the previous output
was PAD, and keeps the outputs up to the first non-pad one. A pass reads the
decoder's weights once, so the more pads, the fewer weight passes per position.
Random test weights emit almost no pads, so this tool drives an exact
simulation of the engine's schedule and speculation with synthetic outputs of a
given PAD share, then prices the passes on a Pi 5 from measured inputs.

Simulation (`Stream`): native/src/stream.c's schedule, position for position:
samples -> mel frames (produce_mel) -> encoder runs every interval_ms of
pending frames (run_audio / run_encoder) -> adapter rows the decoder consumes
(run_decoder: plan_pass, vx_decoder_pass, finish_pass / keep_tokens), the 32
positions of left padding and the prompt's prefill (ensure_snapshot), EOS
(feeds ignored until the flush) and the flush's right padding (flush_audio:
delay + 1 + 10 positions past the end of the speech, the hangover's silence
counted as part of them, at least the rest of the last position), after which
the stream is back at the state saved after the left padding (flush_end). Audio is
fed in 80 ms chunks as the daemon does, so with the default interval of 480 ms
positions arrive 6 at a time, and 17 (plus the unencoded rest) at the flush.
tests/test_pi5_projection.py checks the pass counts against the real engine.

Synthetic outputs (`speech_like`): a pad run, then a word, then a pad run, ...
A word is 1, 2 or 3 text tokens, equally likely (mean 2). A pad run is
1 + NB(r, p) positions: negative binomial with shape r (--run-shape; r = 1 is
geometric, smaller r gives more very short gaps and more long silences), p set
so that the mean run is m = 2 s / (1 - s) for the PAD share s, which makes s
the expected share. Each utterance is --utterance-s of audio (default 4 s: a
spoken command) fed in 80 ms chunks, then flushed; its last --hangover-ms
(the daemon's, 700) are the endpointer's hangover, which the flush counts as
padding as the daemon does; its outputs start with a pad run. The realized
share is printed beside the target.

Pi 5 model, per format (bf16, q8, q4), from --inputs (measurements, see
bench/pi5_inputs.example.json for the keys and where each comes from):

  pass of k rows = max(memory, instructions)
    memory       = (weight bytes + k x KV bytes per step) / (bandwidth x fraction)
    instructions = weight bytes x (instr/B for 1 input + (k - 1) x instr/B per extra input)
                   / (cores x SIMD pipes x GHz)
  encoder s per audio s = GOP per audio s / (int8 ops per cycle per core x cores x GHz
                                            x encoder fraction)

The encoder fraction is the share of its matrix kernel's rate that the whole
encoder stage keeps, measured on x86 (voxd bench's encoder GFLOP/s over
bench_kernels' matmul rate in the same format): attention over the window, the
activation quantizer, norms and the daemon's small batches take the rest, and
the Pi is assumed to pay them in the same proportion. A fraction measured on a
Pi (encoder_fraction) takes its place where given.
The instruction roof treats the matrix-vector kernel's SIMD instructions as the
bound, one per pipe per cycle (no stalls, scalar work hidden); the memory roof
counts the weights once per pass and every row's read of the KV cache. The
decoder's seconds per audio second are the simulated passes' seconds, flush
padding included, over the utterances' seconds of audio (positions/s is the
passes' rate alone); the encoder's add to them (both run on the same cores,
one after the other): RTF = decoder + encoder, real time needs RTF < 1. The
prompt's prefill (batched with or without speculation) is left out. Offline, stdlib + NumPy:

    python bench/pi5_projection.py --inputs bench/pi5_inputs.example.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The engine's constants (native/src/stream.h, stages.h; the model's mel front end).
SAMPLE_RATE = 16000
POS_SAMPLES = 1280  # VX_POS_SAMPLES: one position = 80 ms
POS_FRAMES = 8  # VX_POS_FRAMES: mel frames per position
HOP = 160  # hop_length
HALF_FFT = 200  # n_fft / 2
LEFT_PAD_POS = 32  # VX_LEFT_PAD_POS
DEC_BATCH = 32  # VX_DEC_BATCH: positions per prefill pass
RIGHT_PAD_EXTRA = 1 + 10  # flush_audio: delay + 1 + 10 positions past the speech
# The daemon's defaults (voxd.config.EngineSettings, EndpointSettings; the test
# checks they agree).
INTERVAL_MS_DEFAULT = 480
DELAY_MS_DEFAULT = 480
MAX_SPECULATION_DEFAULT = 8
HANGOVER_MS_DEFAULT = 700

# A decoder output, as far as the schedule cares.
PAD, TEXT, EOS = 0, 1, 2
FORMATS = ("bf16", "q8", "q4")


@dataclass
class PassCounts:
    """The decoder's step passes (those that make logits; the prompt's prefill apart)."""

    positions: int = 0  # positions kept
    widths: Counter[int] = field(default_factory=Counter)  # passes by rows k
    prompt_passes: int = 0

    @property
    def passes(self) -> int:
        return sum(self.widths.values())

    @property
    def rows(self) -> int:
        return sum(k * n for k, n in self.widths.items())

    def add(self, other: PassCounts) -> None:
        self.positions += other.positions
        self.widths.update(other.widths)
        self.prompt_passes += other.prompt_passes


@dataclass
class _State:
    """The part of stream.c's vx_state the schedule depends on (sample counts, no data)."""

    samples: int = 0  # smp_base + smp_len: samples pushed since the stream start
    mel_next: int = 0
    mel_pending: int = 0  # n_mel_pend
    avail: int = 0  # adq_base + adq_n: positions with adapter rows
    dec_pos: int = 0
    pad_run: int = 0
    eos: bool = False
    utt_samples: int = 0


class Stream:
    """stream.c's schedule and speculation over a given output per position.

    `outputs` gives the decoder's output (PAD, TEXT or EOS) for each step
    position of the current utterance in order, from the first position after
    the prompt's prefill. Speculation never changes an output (rows do not mix),
    so one sequence serves every max_speculation.
    """

    def __init__(
        self,
        outputs: Iterator[int],
        interval_ms: int = INTERVAL_MS_DEFAULT,
        delay_ms: int = DELAY_MS_DEFAULT,
        max_speculation: int = MAX_SPECULATION_DEFAULT,
    ) -> None:
        if not 1 <= max_speculation <= DEC_BATCH:
            raise ValueError(f"max_speculation {max_speculation} must be 1..{DEC_BATCH}")
        if delay_ms < 80 or delay_ms % 80:
            raise ValueError(f"delay_ms {delay_ms} must be a multiple of 80")
        self.outputs = outputs
        self.delay_pos = delay_ms // 80
        self.prompt_len = 1 + LEFT_PAD_POS + self.delay_pos  # vx_stream_new
        self.interval_frames = max(POS_FRAMES, interval_ms // 10)
        self.max_spec = max_speculation
        self.counts = PassCounts()
        self.st = _State()
        self._snap: _State | None = None

    # ---- ensure_snapshot: the left padding, once; every utterance starts there
    def _ensure_snapshot(self) -> None:
        if self._snap is not None:
            return
        self.st.samples += LEFT_PAD_POS * POS_SAMPLES
        self._produce_mel(sys.maxsize)
        self._run_audio(force=True)
        self._run_decoder()
        self._snap = _State(**vars(self.st))

    # ---- produce_mel: frame t needs samples up to HOP t + HALF_FFT - 1
    def _produce_mel(self, frame_limit: int) -> None:
        ready = (self.st.samples - HALF_FFT) // HOP + 1
        new_next = max(self.st.mel_next, min(frame_limit, ready))
        self.st.mel_pending += new_next - self.st.mel_next
        self.st.mel_next = new_next

    # ---- run_audio / run_encoder: whole positions once interval_frames are pending
    def _run_audio(self, force: bool) -> None:
        if not force and self.st.mel_pending < self.interval_frames:
            return
        n_pos = self.st.mel_pending // POS_FRAMES
        self.st.mel_pending -= n_pos * POS_FRAMES
        self.st.avail += n_pos

    # ---- run_decoder: plan_pass, the pass, finish_pass / keep_tokens
    def _run_decoder(self) -> None:
        st = self.st
        last_prompt = self.prompt_len - 1
        while not st.eos and st.dec_pos < st.avail:  # has_decoder_work
            p = st.dec_pos
            if p < last_prompt:  # plan_pass: prompt prefill, no logits
                st.dec_pos += min(min(last_prompt, st.avail) - p, DEC_BATCH)
                self.counts.prompt_passes += 1
                continue
            # plan_pass: after a run of r pads r + 1 rows, capped by max_spec and the rows there
            k = min(st.pad_run + 1, self.max_spec, st.avail - p)
            kept = self._keep_tokens(k)
            st.dec_pos += kept
            self.counts.positions += kept
            self.counts.widths[k] += 1

    def _keep_tokens(self, k: int) -> int:
        """keep_tokens: outputs up to the first non-pad one (or EOS); the rest are wasted."""
        kept = 0
        while kept < k:
            out = next(self.outputs, None)
            if out is None:
                raise ValueError(
                    f"the outputs ran out at position {self.st.dec_pos + kept}: give one "
                    "per decoder step of the utterance"
                )
            self.st.pad_run = self.st.pad_run + 1 if out == PAD else 0
            kept += 1
            if out == EOS:
                self.st.eos = True
                break
            if out != PAD:
                break
        return kept

    # ---- the public calls (vx_stream_feed, vx_stream_flush)
    def feed(self, n_samples: int) -> None:
        self._ensure_snapshot()
        if self.st.eos or n_samples == 0:  # the model ended the utterance: wait for flush
            return
        self.st.samples += n_samples
        self.st.utt_samples += n_samples
        self._produce_mel(sys.maxsize)
        self._run_audio(force=False)
        self._run_decoder()

    def flush(self, silence: int = 0, next_outputs: Iterator[int] | None = None) -> None:
        """End the utterance, its last `silence` samples counted as padding; the next
        one's outputs come from next_outputs."""
        self._ensure_snapshot()
        st = self.st
        if st.utt_samples > 0 and not st.eos:
            total = LEFT_PAD_POS * POS_SAMPLES + st.utt_samples
            speech_end = total - min(silence, st.utt_samples)
            end = -(-speech_end // POS_SAMPLES) * POS_SAMPLES
            end += (self.delay_pos + RIGHT_PAD_EXTRA) * POS_SAMPLES
            pad = max(end, -(-total // POS_SAMPLES) * POS_SAMPLES) - total
            st.samples += pad + HALF_FFT
            self._produce_mel((total + pad) // HOP)
            self._run_audio(force=True)
            self._run_decoder()
        assert self._snap is not None
        self.st = _State(**vars(self._snap))  # flush_end: back to the saved state
        if next_outputs is not None:
            self.outputs = next_outputs


def run_utterances(
    utterances: Iterable[tuple[int, Iterator[int]]],
    interval_ms: int = INTERVAL_MS_DEFAULT,
    delay_ms: int = DELAY_MS_DEFAULT,
    max_speculation: int = MAX_SPECULATION_DEFAULT,
    chunk: int = POS_SAMPLES,
    silence: int = 0,
) -> PassCounts:
    """Pass counts of a stream fed (samples, outputs) utterances in `chunk`-sample feeds,
    each followed by a flush that counts its last `silence` samples as padding, as the
    daemon and bench/pad_speculation.py do."""
    stream = Stream(iter(()), interval_ms, delay_ms, max_speculation)
    for n_samples, outputs in utterances:
        stream.outputs = outputs
        for start in range(0, n_samples, chunk):
            stream.feed(min(chunk, n_samples - start))
        stream.flush(silence)
    return stream.counts


# ---------------------------------------------------------------- synthetic outputs


def mean_pad_run(share: float, mean_word: float = 2.0) -> float:
    """Pad run mean m with m / (m + mean_word) = share."""
    return share * mean_word / (1.0 - share)


def speech_like(rng: np.random.Generator, share: float, run_shape: float = 1.0) -> Iterator[int]:
    """Endless outputs: pad run, word (1-3 text tokens), pad run, ... (module docstring)."""
    m = mean_pad_run(share)
    if m < 1.0:
        raise ValueError(f"pad share {share} needs pad runs shorter than 1 position")
    # 1 + NB(r, p) has mean 1 + r (1 - p) / p = m
    p = run_shape / (run_shape + m - 1.0)
    while True:
        for _ in range(1 + int(rng.negative_binomial(run_shape, p))):
            yield PAD
        for _ in range(int(rng.integers(1, 4))):
            yield TEXT


@dataclass
class _Counted:
    """An iterator that counts the PADs it gave."""

    source: Iterator[int]
    given: int = 0
    pads: int = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        out = next(self.source)
        self.given += 1
        self.pads += out == PAD
        return out


@dataclass
class ShareResult:
    share: float
    realized_share: float
    on: PassCounts
    off: PassCounts
    audio_s: float  # the simulated utterances' audio


def simulate_share(
    share: float,
    *,
    utterances: int,
    utterance_s: float,
    interval_ms: int,
    delay_ms: int,
    max_speculation: int,
    run_shape: float,
    seed: int,
    hangover_ms: int = 0,
) -> ShareResult:
    """The same synthetic utterances with speculation on and off."""
    n_samples = round(utterance_s * SAMPLE_RATE)
    silence = min(SAMPLE_RATE * hangover_ms // 1000, n_samples)
    results = []
    counted: list[_Counted] = []
    for spec in (max_speculation, 1):
        rng = np.random.default_rng(seed)
        streams = [_Counted(speech_like(rng, share, run_shape)) for _ in range(utterances)]
        counted = streams  # the last run's; both runs draw the same outputs
        results.append(
            run_utterances(
                ((n_samples, s) for s in streams),
                interval_ms=interval_ms,
                delay_ms=delay_ms,
                max_speculation=spec,
                silence=silence,
            )
        )
    given = sum(c.given for c in counted)
    realized = sum(c.pads for c in counted) / given if given else 0.0
    audio_s = utterances * n_samples / SAMPLE_RATE
    return ShareResult(share, realized, results[0], results[1], audio_s)


# ---------------------------------------------------------------- Pi 5 model


@dataclass(frozen=True)
class Board:
    cores: int = 4
    ghz: float = 2.4
    simd_pipes: int = 2
    bandwidth_gbs: float = 11.0


@dataclass(frozen=True)
class FormatInputs:
    weight_bytes_per_pass: float
    kv_bytes_per_step: float
    bandwidth_fraction: float
    instr_per_byte: float
    instr_per_byte_extra: float
    encoder_gop_per_audio_s: float
    encoder_ops_per_cycle_per_core: float
    encoder_fraction: float


INPUT_KEYS = {
    "weight_bytes_per_pass": "decoder weights + head read per pass: the bench report's "
    "model.decoder_pass_bytes + model.head_bytes",
    "kv_bytes_per_step": "the bench report's decoder.kv_bytes_per_step",
    "bandwidth_fraction_x86": "the bench report's decoder.streaming_roofline_fraction on x86",
    "neon_instr_per_byte": "NEON instructions per weight byte of the matvec kernel, 1 input",
    "neon_instr_per_byte_extra_input": "NEON instructions per weight byte per extra input row",
    "encoder_gop_per_audio_s": "the bench report's encoder.gflop_per_audio_s_steady",
    "encoder_ops_per_cycle_per_core": "the NEON encoder tile's (int8) ops per cycle per core",
    "encoder_fraction_x86": "the bench report's encoder.gflops over bench_kernels' matmul "
    "GFLOP/s in that format, on x86",
}


class InputsError(ValueError):
    pass


def _number(entry: dict[str, Any], where: str, key: str, positive: bool = True) -> float:
    if key not in entry:
        raise InputsError(f"{where}.{key} is missing: give {INPUT_KEYS.get(key, key)}")
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InputsError(f"{where}.{key} is {v!r}: it must be a number")
    if v < 0 or (positive and v == 0):
        raise InputsError(f"{where}.{key} is {v}: it must be {'> 0' if positive else '>= 0'}")
    return float(v)


def _fraction(entry: dict[str, Any], where: str, key: str) -> float:
    """The Pi's own fraction `key` where measured, else the x86 one (`key`_x86)."""
    x86 = _number(entry, where, f"{key}_x86")
    used = key if key in entry else f"{key}_x86"
    frac = _number(entry, where, key) if key in entry else x86
    if frac > 1:
        raise InputsError(f"{where}.{used} is {frac}: a fraction is at most 1")
    return frac


def parse_inputs(doc: Any, source: str) -> dict[str, FormatInputs]:
    """Per-format inputs from the JSON document (format of bench/pi5_inputs.example.json)."""
    formats = doc.get("formats") if isinstance(doc, dict) else None
    if not isinstance(formats, dict) or not formats:
        raise InputsError(f'{source}: no "formats" object (see bench/pi5_inputs.example.json)')
    out = {}
    for name, entry in formats.items():
        where = f"{source}: formats.{name}"
        if name not in FORMATS:
            raise InputsError(f"{where}: unknown format; use {', '.join(FORMATS)}")
        if not isinstance(entry, dict):
            raise InputsError(f"{where} must be an object of numbers")
        out[name] = FormatInputs(
            weight_bytes_per_pass=_number(entry, where, "weight_bytes_per_pass"),
            kv_bytes_per_step=_number(entry, where, "kv_bytes_per_step", positive=False),
            bandwidth_fraction=_fraction(entry, where, "bandwidth_fraction"),
            instr_per_byte=_number(entry, where, "neon_instr_per_byte"),
            instr_per_byte_extra=_number(entry, where, "neon_instr_per_byte_extra_input", False),
            encoder_gop_per_audio_s=_number(entry, where, "encoder_gop_per_audio_s"),
            encoder_ops_per_cycle_per_core=_number(entry, where, "encoder_ops_per_cycle_per_core"),
            encoder_fraction=_fraction(entry, where, "encoder_fraction"),
        )
    return out


def load_inputs(path: Path) -> dict[str, FormatInputs]:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise InputsError(f"cannot read the inputs file {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise InputsError(f"{path} is not JSON: {e}") from e
    return parse_inputs(doc, str(path))


def pass_seconds(f: FormatInputs, board: Board, k: int) -> tuple[float, float]:
    """(memory, instruction) time of a decoder pass of k rows; the pass takes the larger."""
    memory = (f.weight_bytes_per_pass + k * f.kv_bytes_per_step) / (
        board.bandwidth_gbs * 1e9 * f.bandwidth_fraction
    )
    instr = f.weight_bytes_per_pass * (f.instr_per_byte + (k - 1) * f.instr_per_byte_extra)
    return memory, instr / (board.cores * board.simd_pipes * board.ghz * 1e9)


def decoder_seconds(f: FormatInputs, board: Board, counts: PassCounts) -> float:
    return sum(n * max(pass_seconds(f, board, k)) for k, n in counts.widths.items())


def encoder_s_per_audio_s(f: FormatInputs, board: Board) -> float:
    ops_per_s = f.encoder_ops_per_cycle_per_core * board.cores * board.ghz * f.encoder_fraction
    return f.encoder_gop_per_audio_s / ops_per_s


def project(f: FormatInputs, board: Board, r: ShareResult) -> dict[str, Any]:
    """One format at one pad share: the row of the projection table."""
    sec_on, sec_off = decoder_seconds(f, board, r.on), decoder_seconds(f, board, r.off)
    pos_s_on, pos_s_off = r.on.positions / sec_on, r.off.positions / sec_off
    # the whole stream: the flush's padding positions are work for the same audio
    dec_on, dec_off = sec_on / r.audio_s, sec_off / r.audio_s
    enc = encoder_s_per_audio_s(f, board)
    mem1, ins1 = pass_seconds(f, board, 1)
    return {
        "pad_share": r.share,
        "positions_per_s": pos_s_on,
        "positions_per_s_no_speculation": pos_s_off,
        "decoder_s_per_audio_s": dec_on,
        "decoder_s_per_audio_s_no_speculation": dec_off,
        "encoder_s_per_audio_s": enc,
        "rtf": dec_on + enc,
        "rtf_no_speculation": dec_off + enc,
        "real_time": dec_on + enc < 1.0,
        "real_time_no_speculation": dec_off + enc < 1.0,
        "one_row_pass_bound": "memory" if mem1 >= ins1 else "instructions",
    }


# ---------------------------------------------------------------- output


def _counts_json(c: PassCounts) -> dict[str, Any]:
    return {
        "positions": c.positions,
        "passes": c.passes,
        "rows_per_pass": c.rows / c.passes if c.passes else 0.0,
        "positions_per_pass": c.positions / c.passes if c.passes else 0.0,
        "width_histogram": {str(k): c.widths[k] for k in sorted(c.widths)},
    }


def format_tables(report: dict[str, Any]) -> str:
    sim, lines = report["simulation"], []
    lines.append(
        f"Simulated: {sim['utterances']} utterances of {sim['utterance_s']:g} s per share, "
        f"80 ms feeds, interval {sim['interval_ms']} ms, delay {sim['delay_ms']} ms, "
        f"words of 1-3 tokens, pad runs 1 + NB(r={sim['run_shape']:g}), seed {sim['seed']}\n"
    )
    lines.append(
        "| pad share (realized) | positions | passes | rows/pass | positions/pass | "
        "widths k:passes | passes at max_speculation 1 (1 row each) |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for s in sim["shares"]:
        on, off = s["speculation"], s["no_speculation"]
        lines.append(
            f"| {s['pad_share']:.0%} ({s['realized_pad_share']:.1%}) | {on['positions']} | "
            f"{on['passes']} | {on['rows_per_pass']:.2f} | {on['positions_per_pass']:.2f} | "
            f"{' '.join(f'{k}:{n}' for k, n in on['width_histogram'].items())} | "
            f"{off['passes']} |"
        )
    b = report["board"]
    lines.append(
        f"\nPi 5: {b['cores']} cores x {b['simd_pipes']} SIMD pipes at {b['ghz']:g} GHz, "
        f"{b['bandwidth_gbs']:g} GB/s; inputs {report['inputs']}"
    )
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    lines.append(
        "\nIn parentheses: max_speculation 1 (no speculation).\n"
        "\n| format | pad share | positions/s (off) | decoder s/audio s (off) | "
        "encoder s/audio s | RTF (off) | real time (off) | 1-row pass bound |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for fmt, rows in report["projection"].items():
        for p in rows:
            yes = {True: "yes", False: "no"}
            lines.append(
                f"| {fmt} | {p['pad_share']:.0%} | {p['positions_per_s']:.1f} "
                f"({p['positions_per_s_no_speculation']:.1f}) | "
                f"{p['decoder_s_per_audio_s']:.3f} "
                f"({p['decoder_s_per_audio_s_no_speculation']:.3f}) "
                f"| {p['encoder_s_per_audio_s']:.3f} | {p['rtf']:.3f} "
                f"({p['rtf_no_speculation']:.3f}) | {yes[p['real_time']]} "
                f"({yes[p['real_time_no_speculation']]}) | {p['one_row_pass_bound']} |"
            )
    return "\n".join(lines)


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    inputs = load_inputs(args.inputs)
    try:
        note = json.loads(args.inputs.read_text()).get("note", "")
    except (OSError, ValueError, AttributeError):
        note = ""
    board = Board(args.cores, args.ghz, args.simd_pipes, args.bandwidth_gbs)
    results = [
        simulate_share(
            share,
            utterances=args.utterances,
            utterance_s=args.utterance_s,
            interval_ms=args.interval_ms,
            delay_ms=args.delay_ms,
            max_speculation=args.max_speculation,
            run_shape=args.run_shape,
            seed=args.seed,
            hangover_ms=args.hangover_ms,
        )
        for share in args.shares
    ]
    return {
        "simulation": {
            "utterances": args.utterances,
            "utterance_s": args.utterance_s,
            "hangover_ms": args.hangover_ms,
            "interval_ms": args.interval_ms,
            "delay_ms": args.delay_ms,
            "max_speculation": args.max_speculation,
            "run_shape": args.run_shape,
            "seed": args.seed,
            "shares": [
                {
                    "pad_share": r.share,
                    "realized_pad_share": r.realized_share,
                    "speculation": _counts_json(r.on),
                    "no_speculation": _counts_json(r.off),
                }
                for r in results
            ],
        },
        "board": vars(board),
        "inputs": str(args.inputs),
        "note": note,
        "projection": {fmt: [project(f, board, r) for r in results] for fmt, f in inputs.items()},
    }


def _share(text: str) -> float:
    v = float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"pad share {text} must be between 0 and 1")
    return v


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--inputs", type=Path, required=True, help="measured inputs (JSON)")
    ap.add_argument("--cores", type=int, default=4)
    ap.add_argument("--ghz", type=float, default=2.4, help="core clock")
    ap.add_argument("--simd-pipes", type=int, default=2, help="128-bit SIMD pipes per core")
    ap.add_argument("--bandwidth-gbs", type=float, default=11.0, help="read bandwidth")
    ap.add_argument("--shares", type=_share, nargs="+", default=[0.70, 0.86, 0.90])
    ap.add_argument("--max-speculation", type=int, default=MAX_SPECULATION_DEFAULT)
    ap.add_argument("--interval-ms", type=int, default=INTERVAL_MS_DEFAULT)
    ap.add_argument("--delay-ms", type=int, default=DELAY_MS_DEFAULT)
    ap.add_argument("--utterance-s", type=float, default=4.0, help="audio per utterance")
    ap.add_argument(
        "--hangover-ms",
        type=int,
        default=HANGOVER_MS_DEFAULT,
        help="the utterance's closing silence, counted as flush padding (default: the daemon's)",
    )
    ap.add_argument("--utterances", type=int, default=200, help="utterances per pad share")
    ap.add_argument("--run-shape", type=float, default=1.0, help="pad runs' NB shape r")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    for name in ("cores", "ghz", "simd_pipes", "bandwidth_gbs", "utterance_s", "utterances"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    if args.run_shape <= 0:
        ap.error("--run-shape must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = build_report(args)
    except (InputsError, ValueError) as e:
        print(f"pi5_projection: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else format_tables(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
