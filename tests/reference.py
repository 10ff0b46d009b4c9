"""Independent NumPy (float64) reference of Voxtral Realtime, from the model spec.

Written from /work/shared/voxtral-model.md alone (not from the C engine), so that
the engine's numbers can be checked against a second implementation. Readability
and exactness matter here, not speed; it is still fast enough for the tiny test
models (a few seconds of audio in about a second).

Entry points:
    load(dir) -> RefModel
    load(dir, decoder_only=True, dtype=np.float32) -> RefModel with what a decoder
        step reads (decoder layers, final norm, token embedding), computing in float32
    log_mel(padded_audio) -> [frames, 128]
    encoder(model, mel) -> [enc_frames, enc_dim]
    adapter(model, enc) -> [positions, dim]
    ada_scales(model, delay_positions) -> [n_layers, dim]
    Decoder(model, delay_positions).forward(inputs) -> logits
    transcribe(model, audio16k, delay_ms=480) -> RefResult   (offline recipe)
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voxd.tools import safetensors as st

A = npt.NDArray[np.float64]

ENC = "mm_streams_embeddings.embedding_module."
WHISPER = ENC + "whisper_encoder."
TOK_EMB = ENC + "tok_embeddings.weight"

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 400
SAMPLES_PER_POSITION = 1280  # 80 ms: 8 mel frames, 4 encoder frames, 1 adapter frame
LEFT_PAD_POSITIONS = 32
RIGHT_PAD_EXTRA = 10  # offline/flush right padding: (delay + 1) + 10 positions
MS_PER_POSITION = 80


# ---------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerCfg:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    rope_theta: float
    norm_eps: float
    window: int


@dataclass
class RefModel:
    dec: TransformerCfg
    enc: TransformerCfg
    vocab_size: int
    ada_dim: int
    downsample: int
    n_mels: int
    log_mel_max: float
    n_special: int
    vocab: list[bytes]  # text piece of id n_special + i
    special_ids: dict[str, int]  # special token name -> id
    w: dict[str, A]
    dtype: type[np.floating[Any]] = np.float64  # of the weights; the decoder computes in it

    @property
    def bos(self) -> int:
        return self.special_ids.get("<s>", 1)

    @property
    def eos(self) -> int:
        return self.special_ids.get("</s>", 2)

    @property
    def streaming_pad(self) -> int:
        return self.special_ids.get("[STREAMING_PAD]", 32)

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes a token prints: nothing for specials, its piece for text ids."""
        if token_id < self.n_special:
            return b""
        return self.vocab[token_id - self.n_special]


def _cfg(p: dict[str, Any]) -> TransformerCfg:
    return TransformerCfg(
        dim=int(p["dim"]),
        n_layers=int(p["n_layers"]),
        head_dim=int(p["head_dim"]),
        hidden_dim=int(p["hidden_dim"]),
        n_heads=int(p["n_heads"]),
        n_kv_heads=int(p["n_kv_heads"]),
        rope_theta=float(p["rope_theta"]),
        norm_eps=float(p["norm_eps"]),
        window=int(p["sliding_window"]),
    )


def expected_shapes(m: RefModel) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of spec section 3 for this model's sizes."""
    e, d = m.enc, m.dec
    s: dict[str, tuple[int, ...]] = {ENC + "tok_embeddings.weight": (m.vocab_size, d.dim)}
    s[WHISPER + "conv_layers.0.conv.weight"] = (e.dim, m.n_mels, 3)
    s[WHISPER + "conv_layers.0.conv.bias"] = (e.dim,)
    s[WHISPER + "conv_layers.1.conv.weight"] = (e.dim, e.dim, 3)
    s[WHISPER + "conv_layers.1.conv.bias"] = (e.dim,)
    eq, ekv = e.n_heads * e.head_dim, e.n_kv_heads * e.head_dim
    for i in range(e.n_layers):
        p = f"{WHISPER}transformer.layers.{i}."
        s[p + "attention.wq.weight"] = (eq, e.dim)
        s[p + "attention.wq.bias"] = (eq,)
        s[p + "attention.wk.weight"] = (ekv, e.dim)
        s[p + "attention.wv.weight"] = (ekv, e.dim)
        s[p + "attention.wv.bias"] = (ekv,)
        s[p + "attention.wo.weight"] = (e.dim, eq)
        s[p + "attention.wo.bias"] = (e.dim,)
        s[p + "attention_norm.weight"] = (e.dim,)
        s[p + "ffn_norm.weight"] = (e.dim,)
        s[p + "feed_forward.w1.weight"] = (e.hidden_dim, e.dim)
        s[p + "feed_forward.w3.weight"] = (e.hidden_dim, e.dim)
        s[p + "feed_forward.w2.weight"] = (e.dim, e.hidden_dim)
        s[p + "feed_forward.w2.bias"] = (e.dim,)
    s[WHISPER + "transformer.norm.weight"] = (e.dim,)
    s[ENC + "audio_language_projection.0.weight"] = (d.dim, e.dim * m.downsample)
    s[ENC + "audio_language_projection.2.weight"] = (d.dim, d.dim)
    q, kv = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
    for i in range(d.n_layers):
        p = f"layers.{i}."
        s[p + "attention_norm.weight"] = (d.dim,)
        s[p + "ffn_norm.weight"] = (d.dim,)
        s[p + "attention.wq.weight"] = (q, d.dim)
        s[p + "attention.wk.weight"] = (kv, d.dim)
        s[p + "attention.wv.weight"] = (kv, d.dim)
        s[p + "attention.wo.weight"] = (d.dim, q)
        s[p + "feed_forward.w1.weight"] = (d.hidden_dim, d.dim)
        s[p + "feed_forward.w3.weight"] = (d.hidden_dim, d.dim)
        s[p + "feed_forward.w2.weight"] = (d.dim, d.hidden_dim)
        s[p + "ada_rms_norm_t_cond.0.weight"] = (m.ada_dim, d.dim)
        s[p + "ada_rms_norm_t_cond.2.weight"] = (d.dim, m.ada_dim)
    s["norm.weight"] = (d.dim,)
    return s


class ActQuantWeight(np.ndarray):
    """A Q8/Q4 matrix (its dequantized values). The engine multiplies such a
    matrix with its input quantized to int8 per block of 32 (scale amax/127,
    round half to even: native/src/engine.h), so linear() does the same."""


Q_LAYOUT_KEY = "voxd_q_layout"  # __metadata__ entry naming the Q8/Q4 byte order
Q_LAYOUT = "rowgroup8"
Q_GROUP = 8


def _ungroup_rows(raw: npt.NDArray[np.uint8], rows: int, nb: int) -> npt.NDArray[np.uint8]:
    """[rows, blocks, nb] row-major blocks from the "rowgroup8" byte order: rows
    come in groups of 8 (the last group holds what is left); a group of n rows
    holds, per block column, the n fp16 scales and then the n payloads, each in
    row order."""
    nblk = raw.size // (rows * nb)
    out = np.empty((rows, nblk, nb), dtype=np.uint8)
    pos = 0
    for r0 in range(0, rows, Q_GROUP):
        n = min(Q_GROUP, rows - r0)
        group = raw[pos : pos + n * nblk * nb].reshape(nblk, n * nb)
        out[r0 : r0 + n, :, :2] = group[:, : 2 * n].reshape(nblk, n, 2).transpose(1, 0, 2)
        out[r0 : r0 + n, :, 2:] = group[:, 2 * n :].reshape(nblk, n, nb - 2).transpose(1, 0, 2)
        pos += n * nblk * nb
    return out


def _dequantize_blocks(dtype: str, raw: npt.NDArray[np.uint8], shape: list[int]) -> A:
    """voxd's block formats (native/src/quant.h), decoded here independently."""
    nb = 34 if dtype == "Q8" else 18
    if len(shape) != 2 or shape[1] % 32 or raw.size != shape[0] * shape[1] // 32 * nb:
        raise ValueError(f"{dtype} tensor of shape {shape} with {raw.size} bytes")
    blocks = _ungroup_rows(raw, shape[0], nb).reshape(-1, nb)
    d = blocks[:, :2].copy().view("<f2").astype(np.float64)  # [n, 1]
    if dtype == "Q8":
        ints = blocks[:, 2:].view(np.int8).astype(np.float64)
    else:
        b = blocks[:, 2:].astype(np.int64)
        ints = np.concatenate([b & 0x0F, b >> 4], axis=1).astype(np.float64) - 8.0
    return (d * ints).reshape(shape)


def is_decoder_tensor(name: str) -> bool:
    """Read by a decoder step: decoder layers (ada norm included), final norm, token embedding."""
    return name.startswith("layers.") or name in ("norm.weight", TOK_EMB)


def _any_tensor(name: str) -> bool:
    return True


def _read_weights(
    path: Path,
    keep: Callable[[str], bool] = _any_tensor,
    dtype: type[np.floating[Any]] = np.float64,
) -> dict[str, A]:
    """The tensors whose name ``keep`` accepts as ``dtype``; Q8/Q4 ones as ActQuantWeight."""
    checked = st.read_header(path)
    meta, base = checked.metadata, checked.data_start
    header = {k: v for k, v in checked.entries().items() if keep(k)}
    plain = [k for k, v in header.items() if v["dtype"] not in ("Q8", "Q4")]
    out = {k: v.astype(dtype, copy=False) for k, v in st.read_tensors(path, plain).items()}
    if len(plain) < len(header) and meta.get(Q_LAYOUT_KEY) != Q_LAYOUT:
        raise ValueError(f"{path}: Q8/Q4 tensors without {Q_LAYOUT_KEY} = {Q_LAYOUT}")
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        if name in out:
            continue
        begin, end = info["data_offsets"]
        raw = np.array(mapped[base + begin : base + end])
        values = _dequantize_blocks(info["dtype"], raw, info["shape"]).astype(dtype, copy=False)
        out[name] = values.view(ActQuantWeight)
    del mapped
    return out


def quantize_activations(x: A) -> A:
    """x with each block of 32 along the last axis rounded to amax/127 steps."""
    b = np.asarray(x, dtype=np.float64).reshape(*np.shape(x)[:-1], -1, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = amax / 127.0
    safe = np.where(amax > 0, amax, 1.0)
    q = np.clip(np.rint(b * (127.0 / safe)), -127, 127)  # rint: half to even
    return np.asarray((q * d).reshape(np.shape(x)))


def load(
    model_dir: Path | str,
    decoder_only: bool = False,
    dtype: type[np.floating[Any]] = np.float64,
) -> RefModel:
    """Read params.json, consolidated.safetensors and tekken.json; check shapes.

    decoder_only: read only the tensors a decoder step needs (is_decoder_tensor);
    dtype: hold the weights in this float type, which the Decoder then computes in
    (float64 by default; float32 halves the memory and runs float32 BLAS).
    """
    model_dir = Path(model_dir)
    params = json.loads((model_dir / "params.json").read_text())
    wargs = params["multimodal"]["whisper_model_args"]
    eargs = wargs["encoder_args"]
    audio = eargs["audio_encoding_args"]
    tek = json.loads((model_dir / "tekken.json").read_text(encoding="utf-8"))
    n_special = int(tek["config"]["default_num_special_tokens"])
    vocab_size = int(params["vocab_size"])
    vocab = [base64.b64decode(v["token_bytes"]) for v in tek["vocab"][: vocab_size - n_special]]
    specials = {str(s["token_str"]): int(s["rank"]) for s in tek.get("special_tokens", [])}
    keep = is_decoder_tensor if decoder_only else _any_tensor
    weights = _read_weights(model_dir / "consolidated.safetensors", keep, dtype)
    m = RefModel(
        dec=_cfg(params),
        enc=_cfg(eargs),
        vocab_size=vocab_size,
        ada_dim=int(params["ada_rms_norm_t_cond_dim"]),
        downsample=int(wargs["downsample_args"]["downsample_factor"]),
        n_mels=int(audio["num_mel_bins"]),
        log_mel_max=float(audio["global_log_mel_max"]),
        n_special=n_special,
        vocab=vocab,
        special_ids=specials,
        w=weights,
        dtype=dtype,
    )
    want = {k: v for k, v in expected_shapes(m).items() if keep(k)}
    got = {k: tuple(v.shape) for k, v in m.w.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise ValueError(f"tensor names/shapes differ from params.json: {diff[:6]}")
    return m


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: A) -> A:
    """Exact GELU, x * Phi(x), with the error function (not the tanh approximation)."""
    erf = np.asarray(_erf(np.asarray(x) / math.sqrt(2.0)), dtype=np.float64)
    return np.asarray(0.5 * x * (1.0 + erf))


def silu(x: A) -> A:
    return np.asarray(x / (1.0 + np.exp(-x)))


def rms_norm(x: A, weight: A, eps: float) -> A:
    return np.asarray(x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight)


def linear(x: A, w: A, b: A | None = None) -> A:
    """y = x W^T (+ b) with W stored [out, in]; a Q8/Q4 W sees x in int8 steps."""
    if isinstance(w, ActQuantWeight):
        x = quantize_activations(x)
    y = np.asarray(x) @ np.asarray(w).T
    return np.asarray(y if b is None else y + b)


def rope_angles(positions: npt.ArrayLike, head_dim: int, theta: float) -> A:
    """[T, head_dim/2] angles pos * theta^(-2j/head_dim)."""
    j = np.arange(head_dim // 2, dtype=np.float64)
    inv = theta ** (-2.0 * j / head_dim)
    return np.asarray(np.outer(np.asarray(positions, dtype=np.float64), inv))


def rope_interleaved(x: A, positions: npt.ArrayLike, theta: float) -> A:
    """Rotate pairs (x[2j], x[2j+1]) of each head; x is [T, heads, head_dim]."""
    ang = rope_angles(positions, x.shape[-1], theta)[:, None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def attention(
    q: A, k: A, v: A, q_pos: npt.NDArray[np.int64], k_pos: npt.NDArray[np.int64], window: int
) -> A:
    """Causal sliding-window GQA attention.

    q: [T, H, hd]; k, v: [S, KV, hd]. A query at position p sees keys at
    positions p - window + 1 .. p. Query head j uses KV head j // (H // KV):
    consecutive query heads share one KV head.
    """
    n_heads, n_kv = q.shape[1], k.shape[1]
    group = n_heads // n_kv
    kv_of_head = np.arange(n_heads) // group
    kh, vh = k[:, kv_of_head, :], v[:, kv_of_head, :]  # [S, H, hd]
    scores = np.einsum("thd,shd->hts", q, kh) / math.sqrt(q.shape[-1])
    delta = q_pos[:, None] - k_pos[None, :]
    visible = (delta >= 0) & (delta < window)
    scores = np.where(visible[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.asarray(np.einsum("hts,shd->thd", p, vh))


# ---------------------------------------------------------------------------
# Audio front end (spec section 4)
# ---------------------------------------------------------------------------


def hann_periodic(n: int) -> A:
    """Periodic Hann: the symmetric window of n + 1 points without its last point."""
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n))


def slaney_hz_to_mel(f: npt.ArrayLike) -> A:
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.asarray(np.where(f < 1000.0, lin, log))


def slaney_mel_to_hz(m: npt.ArrayLike) -> A:
    m = np.asarray(m, dtype=np.float64)
    lin = 200.0 * m / 3.0
    log = 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0)
    return np.asarray(np.where(m < 15.0, lin, log))


def mel_filters(n_mels: int = 128, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> A:
    """[n_fft/2 + 1, n_mels] Slaney triangles with area normalisation 2/(f_right - f_left)."""
    bin_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(0.0, slaney_hz_to_mel(sr / 2), n_mels + 2))
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    rise = (bin_hz[:, None] - left) / (center - left)
    fall = (right - bin_hz[:, None]) / (right - center)
    tri = np.maximum(0.0, np.minimum(rise, fall))
    return np.asarray(tri * (2.0 / (right - left)))


def log_mel(padded_audio: npt.ArrayLike, n_mels: int = 128, log_mel_max: float = 1.5) -> A:
    """[frames, n_mels] log-mel of already padded audio; frames = len // 160.

    Centered STFT: reflect-pad 200 on both sides so frame t is centered on
    sample 160 t; that gives 1 + len // 160 frames and the last one is dropped.
    """
    x = np.asarray(padded_audio, dtype=np.float64)
    n_frames = len(x) // HOP  # 1 + len // HOP, minus the dropped last frame
    xp = np.pad(x, N_FFT // 2, mode="reflect")
    idx = np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    spec = np.fft.rfft(xp[idx] * hann_periodic(N_FFT), axis=-1)
    power = spec.real**2 + spec.imag**2  # [frames, 201]
    mel = power @ mel_filters(n_mels)
    logm = np.log10(np.maximum(mel, 1e-10))
    logm = np.maximum(logm, log_mel_max - 8.0)
    return np.asarray((logm + 4.0) / 4.0)


# ---------------------------------------------------------------------------
# Encoder (spec section 5) and adapter (section 6)
# ---------------------------------------------------------------------------


def causal_conv1d(x: A, w: A, b: A, stride: int, left_pad: int) -> A:
    """x [T, C_in], w [C_out, C_in, K]: zeros on the left only, so output t never
    looks past input t * stride + (K - 1 - left_pad)."""
    k_size = w.shape[2]
    xp = np.concatenate([np.zeros((left_pad, x.shape[1])), x], axis=0)
    n_out = (xp.shape[0] - k_size) // stride + 1
    if n_out <= 0:
        return np.zeros((0, w.shape[0]))
    y = np.zeros((n_out, w.shape[0])) + b
    for k in range(k_size):
        taps = xp[k : k + stride * (n_out - 1) + 1 : stride]
        y += taps @ w[:, :, k].T
    return np.asarray(y)


def conv_stem(m: RefModel, mel: A) -> A:
    """[T, 128] mel frames -> [T // 2, enc_dim] (an odd last frame waits for its pair)."""
    x = causal_conv1d(
        mel, m.w[WHISPER + "conv_layers.0.conv.weight"], m.w[WHISPER + "conv_layers.0.conv.bias"],
        stride=1, left_pad=2,
    )  # fmt: skip
    x = gelu(x)
    x = causal_conv1d(
        x, m.w[WHISPER + "conv_layers.1.conv.weight"], m.w[WHISPER + "conv_layers.1.conv.bias"],
        stride=2, left_pad=1,
    )  # fmt: skip
    return gelu(x)


def kv_cached(x: A, kv_f16: bool) -> A:
    """Keys/values as the cache holds them: fp16 (round to nearest even) or exact."""
    return x.astype(np.float16).astype(x.dtype) if kv_f16 else x


def _enc_layer(m: RefModel, i: int, h: A, pos: npt.NDArray[np.int64], kv_f16: bool = False) -> A:
    c = m.enc
    p = f"{WHISPER}transformer.layers.{i}."
    w = m.w
    x = rms_norm(h, w[p + "attention_norm.weight"], c.norm_eps)
    t = x.shape[0]
    # the bias is added before the rotation: the rotated vector is x Wq^T + bq
    q = linear(x, w[p + "attention.wq.weight"], w[p + "attention.wq.bias"])
    k = linear(x, w[p + "attention.wk.weight"])
    v = linear(x, w[p + "attention.wv.weight"], w[p + "attention.wv.bias"])
    q = rope_interleaved(q.reshape(t, c.n_heads, c.head_dim), pos, c.rope_theta)
    k = rope_interleaved(k.reshape(t, c.n_kv_heads, c.head_dim), pos, c.rope_theta)
    v = v.reshape(t, c.n_kv_heads, c.head_dim)
    k, v = kv_cached(k, kv_f16), kv_cached(v, kv_f16)
    att = attention(q, k, v, pos, pos, c.window).reshape(t, -1)
    h = h + linear(att, w[p + "attention.wo.weight"], w[p + "attention.wo.bias"])
    x = rms_norm(h, w[p + "ffn_norm.weight"], c.norm_eps)
    gate = silu(linear(x, w[p + "feed_forward.w1.weight"]))
    up = linear(x, w[p + "feed_forward.w3.weight"])
    return h + linear(gate * up, w[p + "feed_forward.w2.weight"], w[p + "feed_forward.w2.bias"])


def encoder(m: RefModel, mel: A, kv_f16: bool = False) -> A:
    """[T, 128] mel (from the start of the stream) -> [T // 2, enc_dim]."""
    h = conv_stem(m, np.asarray(mel, dtype=np.float64))
    pos = np.arange(h.shape[0], dtype=np.int64)  # encoder frames since stream start
    for i in range(m.enc.n_layers):
        h = _enc_layer(m, i, h, pos, kv_f16)
    return rms_norm(h, m.w[WHISPER + "transformer.norm.weight"], m.enc.norm_eps)


def adapter(m: RefModel, enc: A) -> A:
    """[F, enc_dim] -> [F // downsample, dim]: frames 4k..4k+3 concatenated, then MLP."""
    n = enc.shape[0] // m.downsample
    grouped = enc[: n * m.downsample].reshape(n, m.downsample * enc.shape[1])
    x = gelu(linear(grouped, m.w[ENC + "audio_language_projection.0.weight"]))
    return linear(x, m.w[ENC + "audio_language_projection.2.weight"])


# ---------------------------------------------------------------------------
# Decoder (spec section 7)
# ---------------------------------------------------------------------------


def t_cond(dim: int, delay_positions: float) -> A:
    """Sinusoidal embedding of the delay: concat(cos(d f), sin(d f)), f_i = 10000^(-i/half)."""
    half = dim // 2
    inv_freq = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    ang = float(delay_positions) * inv_freq
    return np.concatenate([np.cos(ang), np.sin(ang)])


def ada_scales(m: RefModel, delay_positions: float) -> A:
    """[n_layers, dim] s_layer = up(gelu(down(t_cond))), constant for a delay."""
    tc = t_cond(m.dec.dim, delay_positions)
    rows = []
    for i in range(m.dec.n_layers):
        p = f"layers.{i}.ada_rms_norm_t_cond."
        rows.append(linear(gelu(linear(tc, m.w[p + "0.weight"])), m.w[p + "2.weight"]))
    return np.stack(rows)


@dataclass
class Decoder:
    """Decoder with a KV cache; forward() takes the inputs of the next positions."""

    model: RefModel
    delay_positions: float
    kv_f16: bool = False  # cache keys and values as fp16, as the engine does by default
    pos: int = 0  # next absolute position
    keys: list[A] = field(default_factory=list)
    values: list[A] = field(default_factory=list)
    scales: A = field(init=False)

    def __post_init__(self) -> None:
        c, dt = self.model.dec, self.model.dtype
        self.scales = ada_scales(self.model, self.delay_positions).astype(dt, copy=False)
        shape = (0, c.n_kv_heads, c.head_dim)
        self.keys = [np.zeros(shape, dtype=dt) for _ in range(c.n_layers)]
        self.values = [np.zeros(shape, dtype=dt) for _ in range(c.n_layers)]

    def embed(self, token_ids: npt.ArrayLike) -> A:
        rows = self.model.w[TOK_EMB][np.asarray(token_ids)]
        return np.array(rows, dtype=self.model.dtype)  # a lookup: no activation rounding

    def forward(self, inputs: A) -> A:
        """inputs [n, dim] for positions pos..pos+n-1 -> logits [n, vocab]."""
        m, c = self.model, self.model.dec
        n = inputs.shape[0]
        pos = np.arange(self.pos, self.pos + n, dtype=np.int64)
        h = np.asarray(inputs, dtype=m.dtype)
        for i in range(c.n_layers):
            h = self._layer(i, h, pos)
        self.pos += n
        h = rms_norm(h, m.w["norm.weight"], c.norm_eps)
        return linear(h, m.w[TOK_EMB])  # tied output head

    def _layer(self, i: int, h: A, pos: npt.NDArray[np.int64]) -> A:
        c, w = self.model.dec, self.model.w
        p = f"layers.{i}."
        n = h.shape[0]
        x = rms_norm(h, w[p + "attention_norm.weight"], c.norm_eps)
        q = linear(x, w[p + "attention.wq.weight"]).reshape(n, c.n_heads, c.head_dim)
        k = linear(x, w[p + "attention.wk.weight"]).reshape(n, c.n_kv_heads, c.head_dim)
        v = linear(x, w[p + "attention.wv.weight"]).reshape(n, c.n_kv_heads, c.head_dim)
        q = rope_interleaved(q, pos, c.rope_theta)
        k = rope_interleaved(k, pos, c.rope_theta)
        self.keys[i] = np.concatenate([self.keys[i], kv_cached(k, self.kv_f16)])
        self.values[i] = np.concatenate([self.values[i], kv_cached(v, self.kv_f16)])
        k_pos = np.arange(self.keys[i].shape[0], dtype=np.int64)
        att = attention(q, self.keys[i], self.values[i], pos, k_pos, c.window)
        h = h + linear(att.reshape(n, -1), w[p + "attention.wo.weight"])
        x = rms_norm(h, w[p + "ffn_norm.weight"], c.norm_eps)
        x = x * (1.0 + self.scales[i])
        gate = silu(linear(x, w[p + "feed_forward.w1.weight"]))
        up = linear(x, w[p + "feed_forward.w3.weight"])
        return h + linear(gate * up, w[p + "feed_forward.w2.weight"])


# ---------------------------------------------------------------------------
# Offline transcription (spec section 8)
# ---------------------------------------------------------------------------


@dataclass
class RefResult:
    padded_audio: A
    mel: A  # [frames, 128]
    encoder_out: A  # [frames // 2, enc_dim]
    adapter_out: A  # [positions, dim]
    logits: A  # [n_tokens, vocab], row i produced token_ids[i]
    token_ids: list[int]
    text: str
    first_position: int  # the position whose logits gave token_ids[0]


def delay_positions_of(delay_ms: int) -> int:
    if delay_ms % MS_PER_POSITION:
        raise ValueError(f"delay must be a multiple of {MS_PER_POSITION} ms, got {delay_ms}")
    return delay_ms // MS_PER_POSITION


def pad_offline(audio: npt.ArrayLike, delay_positions: int) -> A:
    """32 zero positions in front; zeros to a whole position, then delay + 1 + 10 more."""
    x = np.asarray(audio, dtype=np.float64)
    left = np.zeros(LEFT_PAD_POSITIONS * SAMPLES_PER_POSITION)
    fill = -len(x) % SAMPLES_PER_POSITION
    right = np.zeros(fill + (delay_positions + 1 + RIGHT_PAD_EXTRA) * SAMPLES_PER_POSITION)
    return np.concatenate([left, x, right])


def decode_text(m: RefModel, token_ids: list[int]) -> str:
    raw = b"".join(m.token_bytes(t) for t in token_ids)
    return raw.decode("utf-8", errors="replace").strip()


def transcribe(
    m: RefModel, audio16k: npt.ArrayLike, delay_ms: int = 480, kv_f16: bool = False
) -> RefResult:
    """Greedy offline transcription exactly as spec section 8 describes.

    kv_f16 rounds cached keys and values to fp16, as the engine's default cache does.
    """
    delay = delay_positions_of(delay_ms)
    padded = pad_offline(audio16k, delay)
    mel = log_mel(padded, m.n_mels, m.log_mel_max)
    enc = encoder(m, mel, kv_f16)
    ada = adapter(m, enc)
    n_pos = ada.shape[0]

    prompt = [m.bos] + [m.streaming_pad] * (LEFT_PAD_POSITIONS + delay)
    n_prompt = len(prompt)  # 33 + delay
    dec = Decoder(m, float(delay), kv_f16)
    # positions 0 .. L-2 are prefilled; their logits are not used
    dec.forward(ada[: n_prompt - 1] + dec.embed(prompt[:-1]))

    token_ids: list[int] = []
    rows: list[A] = []
    token = prompt[-1]
    for p in range(n_prompt - 1, n_pos):
        logits = dec.forward(ada[p : p + 1] + dec.embed([token]))[0]
        token = int(np.argmax(logits))  # ties go to the lowest id
        rows.append(logits)
        token_ids.append(token)
        if token == m.eos:
            break

    logits_arr = np.stack(rows) if rows else np.zeros((0, m.vocab_size))
    return RefResult(
        padded_audio=padded,
        mel=mel,
        encoder_out=enc,
        adapter_out=ada,
        logits=logits_arr,
        token_ids=token_ids,
        text=decode_text(m, token_ids),
        first_position=n_prompt - 1,
    )
