"""Random Voxtral Realtime model directories in the real on-disk format.

Tests and benchmarks need model directories (``consolidated.safetensors``,
``params.json``, ``tekken.json``) without downloading the real 8.9 GB weights.
This module writes them with random weights of chosen sizes: tiny ones that
exercise every code path of the engine (heads x head_dim != dim, GQA ratios
other than 4, small sliding windows, split UTF-8 tokens), and a full-size one
with the real 4B shapes for speed measurements.

The safetensors writer streams tensor by tensor and row chunk by row chunk, so
the full-size model never sits in memory. Usage::

    python -m voxd.tools.devmodel DIR --preset tiny|tiny2|full --seed N
"""

from __future__ import annotations

import argparse
import base64
import json
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from voxd.events import SAMPLE_RATE
from voxd.tools import safetensors as st
from voxd.tools.safetensors import f32_to_bf16_bits

F32 = npt.NDArray[np.float32]

ENC_PREFIX = "mm_streams_embeddings.embedding_module."

# __metadata__ key of the files make_model writes; the value is the preset name.
RANDOM_MODEL_KEY = "voxd_random_model"

# Special token ids written into tekken.json (the real model's BOS/EOS/PAD ids;
# STREAMING_WORD's id is our own choice, engines must look it up by name).
UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
STREAMING_PAD_ID = 32
STREAMING_WORD_ID = 33

# Query/key weights are this much larger than 1/sqrt(fan_in): with unit-scale
# q.k the softmax is nearly uniform, attention just averages its window and a
# random model says the same token everywhere. Sharper attention (as in trained
# models) makes outputs follow the audio, and makes RoPE/window mistakes visible.
QK_SCALE = 2.5

# Values per generated chunk: 4 Mi float32 = 16 MB, plus a few temporaries of
# that size during BF16 conversion, keeps the full-size writer far below 1 GB.
_CHUNK_VALUES = 1 << 22


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: name, shape and a source of float32 row chunks.

    ``chunks`` yields C-ordered blocks of whole leading-axis rows whose sizes
    add up to the tensor; the writer never needs the whole tensor at once.
    """

    name: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[F32]]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def write_safetensors(
    path: Path, plans: Sequence[TensorPlan], metadata: Mapping[str, str] | None = None
) -> None:
    """Write BF16 tensors to ``path``, streaming each plan's chunks to disk;
    ``metadata`` goes into the header's ``__metadata__`` (string values).

    The file is written under a temporary name and renamed at the end, so an
    interrupted run (the full model takes a minute or more) never leaves a
    truncated file that looks complete.
    """
    entries = [st.Entry(p.name, "BF16", p.shape) for p in plans]
    with st.writing(path, entries, {"format": "pt", **(metadata or {})}) as f:
        for plan in plans:
            _write_plan(f, plan)


def _write_plan(f: BinaryIO, plan: TensorPlan) -> None:
    written = 0
    for chunk in plan.chunks():
        f.write(f32_to_bf16_bits(chunk).astype("<u2", copy=False).tobytes())
        written += chunk.size
    if written != plan.numel:
        raise ValueError(f"{plan.name}: wrote {written} values, shape needs {plan.numel}")


# ---------------------------------------------------------------------------
# Model dimensions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """Every size of a Voxtral Realtime model (decoder fields unprefixed)."""

    name: str
    # decoder
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    sliding_window: int
    ada_t_cond_dim: int
    rope_theta: float
    norm_eps: float
    # encoder
    enc_dim: int
    enc_layers: int
    enc_head_dim: int
    enc_hidden_dim: int
    enc_heads: int
    enc_kv_heads: int
    enc_window: int
    enc_rope_theta: float
    enc_norm_eps: float
    # front end / adapter / tokenizer
    n_mels: int = 128
    downsample: int = 4
    n_special: int = 1000
    # tekken vocab entries written; the model uses the first vocab_size - n_special
    n_vocab_entries: int | None = None
    # std of the token embedding (spec section 11: ~0.1)
    embed_std: float = 0.1

    @property
    def n_text(self) -> int:
        return self.vocab_size - self.n_special

    @property
    def n_tekken_entries(self) -> int:
        return self.n_text if self.n_vocab_entries is None else self.n_vocab_entries


TINY = ModelDims(
    name="tiny",
    dim=64,
    n_layers=2,
    head_dim=16,
    hidden_dim=96,
    n_heads=6,  # 6 * 16 = 96 != dim
    n_kv_heads=2,  # GQA 3:1
    vocab_size=1300,
    sliding_window=48,
    ada_t_cond_dim=12,
    rope_theta=1e6,
    norm_eps=1e-5,
    enc_dim=48,
    enc_layers=2,
    enc_head_dim=20,
    enc_hidden_dim=80,
    enc_heads=3,  # 3 * 20 = 60 != enc_dim
    enc_kv_heads=3,
    enc_window=40,
    enc_rope_theta=1e4,
    enc_norm_eps=1e-5,
)

TINY2 = ModelDims(
    name="tiny2",
    dim=80,
    n_layers=3,
    head_dim=24,
    hidden_dim=160,
    n_heads=4,  # 4 * 24 = 96 != dim
    n_kv_heads=2,  # GQA 2:1
    vocab_size=1280,
    sliding_window=32,
    ada_t_cond_dim=32,
    rope_theta=1e4,
    norm_eps=1e-6,
    enc_dim=56,
    enc_layers=2,
    enc_head_dim=16,
    enc_hidden_dim=96,
    enc_heads=4,  # 4 * 16 = 64 != enc_dim
    enc_kv_heads=4,
    enc_window=24,
    enc_rope_theta=1e6,
    enc_norm_eps=1e-5,
    # more tekken entries than the model uses: only the first 280 are text ids
    n_vocab_entries=300,
)

FULL = ModelDims(
    name="full",
    dim=3072,
    n_layers=26,
    head_dim=128,
    hidden_dim=9216,
    n_heads=32,
    n_kv_heads=8,
    vocab_size=131072,
    sliding_window=8192,
    ada_t_cond_dim=32,
    rope_theta=1e6,
    norm_eps=1e-5,
    enc_dim=1280,
    enc_layers=32,
    enc_head_dim=64,
    enc_hidden_dim=5120,
    enc_heads=32,
    enc_kv_heads=32,
    enc_window=750,
    enc_rope_theta=1e6,
    enc_norm_eps=1e-5,
)

PRESETS: dict[str, ModelDims] = {d.name: d for d in (TINY, TINY2, FULL)}


# ---------------------------------------------------------------------------
# params.json
# ---------------------------------------------------------------------------


def params_json(d: ModelDims) -> dict[str, Any]:
    """params.json content in the layout of the released model."""
    encoder_args: dict[str, Any] = {
        "audio_encoding_args": {
            "sampling_rate": SAMPLE_RATE,
            "frame_rate": 12.5,
            "num_mel_bins": d.n_mels,
            "hop_length": 160,
            "window_size": 400,
            "chunk_length_s": None,
            "global_log_mel_max": 1.5,
            "transcription_format": "streaming",
        },
        "dim": d.enc_dim,
        "n_layers": d.enc_layers,
        "head_dim": d.enc_head_dim,
        "hidden_dim": d.enc_hidden_dim,
        "n_heads": d.enc_heads,
        "vocab_size": d.vocab_size,
        "n_kv_heads": d.enc_kv_heads,
        "use_biases": True,
        "use_cache": False,
        "rope_theta": d.enc_rope_theta,
        "causal": True,
        "norm_eps": d.enc_norm_eps,
        "pos_embed": "rope",
        "max_source_positions": None,
        "ffn_type": "swiglu",
        "norm_type": "rms_norm",
        "sliding_window": d.enc_window,
    }
    return {
        "dim": d.dim,
        "n_layers": d.n_layers,
        "head_dim": d.head_dim,
        "hidden_dim": d.hidden_dim,
        "n_heads": d.n_heads,
        "n_kv_heads": d.n_kv_heads,
        "use_biases": False,
        "causal": True,
        "rope_theta": d.rope_theta,
        "norm_eps": d.norm_eps,
        "vocab_size": d.vocab_size,
        "model_parallel": 1,
        "tied_embeddings": True,
        "sliding_window": d.sliding_window,
        "model_max_length": 131072,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": encoder_args,
                "downsample_args": {"downsample_factor": d.downsample},
            }
        },
        "ada_rms_norm_t_cond": True,
        "ada_rms_norm_t_cond_dim": d.ada_t_cond_dim,
    }


# ---------------------------------------------------------------------------
# tekken.json
# ---------------------------------------------------------------------------

# Hand-picked text pieces for tiny vocabularies: single letters, words with a
# leading space (how real pieces look), whole multi-byte characters, and lone
# parts of multi-byte characters so a streaming decoder must hold bytes back.
_TINY_PIECES: list[bytes] = (
    [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz"]
    + [b" " + bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz"]
    + [bytes([c]) for c in b" 0123456789.,!?'-ABCDEFGHIJ"]
    + [s.encode() for s in ("é", "ü", "ñ", "ß", "€", "日本", "語", "😀", " café", " naïve")]
    + [s.encode() for s in (" über", " señor", " Zürich", "ça", " 東京")]
    + [
        b"\xc3",  # lead byte of é/ü/ñ/ß/...
        b"\xa9",  # continuation: \xc3\xa9 = é
        b"\xbc",  # continuation: \xc3\xbc = ü
        b"\xb1",  # continuation: \xc3\xb1 = ñ
        b"\xe2",  # lead byte of € (e2 82 ac)
        b"\x82\xac",  # rest of €
        b"\xe2\x82",  # first two bytes of €
        b"\xac",  # last byte of €
        b"\xf0\x9f",  # first half of 😀 (f0 9f 98 80)
        b"\x98\x80",  # second half of 😀
        b" \xc3",  # space then a lead byte
        b"\xa9s",  # continuation then ASCII
    ]
)

_TINY_WORDS_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come "
    "made may part over new sound take only little work know place year live me back give "
    "most very after thing our just name good sentence man think say great where help "
    "through much before line right too mean old any same tell boy follow came want show "
    "also around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind "
    "hand picture again change off play spell air away animal house point page letter "
    "mother answer found study still learn should America world hello voice speech model "
    "stream token audio test quick brown fox jumps lazy dog"
)
_TINY_WORDS = _TINY_WORDS_TEXT.split()


# The pre-tokenizer regex tekken.json carries; voxd only decodes, so it is informational.
_PRETOKENIZE_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _tiny_text_pieces(n: int) -> list[bytes]:
    pieces = list(dict.fromkeys(_TINY_PIECES))  # unique, order kept
    for word in _TINY_WORDS:
        if len(pieces) >= n:
            break
        if b" " + word.encode() not in pieces:
            pieces.append(b" " + word.encode())
    k = 0
    while len(pieces) < n:  # pad with made-up pieces if a preset asks for more
        pieces.append(f" w{k}".encode())
        k += 1
    return pieces[:n]


def _random_text_pieces(n: int, rng: np.random.Generator) -> list[bytes]:
    """All 256 single bytes first (every byte representable), then random words."""
    pieces = [bytes([b]) for b in range(min(n, 256))]
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
    while len(pieces) < n:
        length = int(rng.integers(2, 9))
        word = bytes(rng.choice(letters, size=length).tolist())
        pieces.append(b" " + word if rng.random() < 0.5 else word)
    return pieces


def _token_str(piece: bytes) -> str | None:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return None  # a fragment of a multi-byte character has no text of its own


def special_token_names(n_special: int) -> list[str]:
    """Names of the special ids: <unk> <s> </s>, streaming pad/word, the rest [control_N]."""
    names = [f"[control_{i}]" for i in range(n_special)]
    names[UNK_ID] = "<unk>"
    names[BOS_ID] = "<s>"
    names[EOS_ID] = "</s>"
    names[STREAMING_PAD_ID] = "[STREAMING_PAD]"
    names[STREAMING_WORD_ID] = "[STREAMING_WORD]"
    return names


def tekken_json(d: ModelDims, seed: int) -> dict[str, Any]:
    """tekken.json content: config, byte vocabulary (base64) and special tokens."""
    n = d.n_tekken_entries
    if d.vocab_size <= 4096:
        pieces = _tiny_text_pieces(n)
    else:
        pieces = _random_text_pieces(n, np.random.default_rng([seed, 0x7E4]))
    vocab = [
        {
            "rank": i,
            "token_bytes": base64.b64encode(p).decode("ascii"),
            "token_str": _token_str(p),
        }
        for i, p in enumerate(pieces)
    ]
    specials = [
        {"rank": i, "token_str": name, "is_control": True}
        for i, name in enumerate(special_token_names(d.n_special))
    ]
    return {
        "config": {
            "pattern": _PRETOKENIZE_PATTERN,
            "num_vocab_tokens": n,
            "default_vocab_size": d.vocab_size,
            "default_num_special_tokens": d.n_special,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {
            "sampling_rate": SAMPLE_RATE,
            "frame_rate": 12.5,
            "audio_encoding_config": {
                "num_mel_bins": d.n_mels,
                "hop_length": 160,
                "window_size": 400,
            },
        },
    }


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def _normal_chunks(
    shape: tuple[int, ...], seed: int, name: str, std: float, mean: float = 0.0
) -> Callable[[], Iterator[F32]]:
    """Chunks of mean + std * N(0, 1), seeded by (seed, name).

    Seeding per tensor name makes every tensor independent of the others and
    of the writing order; generating whole rows per chunk keeps memory bounded.
    """

    def gen() -> Iterator[F32]:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        rows = shape[0]
        row_len = int(np.prod(shape[1:], dtype=np.int64))
        step = max(1, _CHUNK_VALUES // max(1, row_len))
        for r0 in range(0, rows, step):
            n_rows = min(step, rows - r0)
            x = rng.standard_normal((n_rows, *shape[1:]), dtype=np.float32)
            x *= np.float32(std)
            if mean:
                x += np.float32(mean)
            yield x

    return gen


def tensor_specs(d: ModelDims) -> list[tuple[str, tuple[int, ...], float, float]]:
    """(name, shape, std, mean) of every tensor of spec section 3.

    Linear weights get std 1/sqrt(fan_in) so activations stay O(1) (query and
    key weights QK_SCALE times that); norm
    weights sit around 1; biases are small; the embedding has std ~0.1 so a
    random decoder does not just copy its previous token.
    """
    specs: list[tuple[str, tuple[int, ...], float, float]] = []

    def lin(name: str, out_f: int, in_f: int, scale: float = 1.0) -> None:
        specs.append((name, (out_f, in_f), scale / float(np.sqrt(in_f)), 0.0))

    def bias(name: str, n: int) -> None:
        specs.append((name, (n,), 0.02, 0.0))

    def norm(name: str, n: int) -> None:
        specs.append((name, (n,), 0.1, 1.0))

    specs.append((ENC_PREFIX + "tok_embeddings.weight", (d.vocab_size, d.dim), d.embed_std, 0.0))

    enc = ENC_PREFIX + "whisper_encoder."
    for i, c_in in enumerate((d.n_mels, d.enc_dim)):
        conv = f"{enc}conv_layers.{i}.conv."
        specs.append((conv + "weight", (d.enc_dim, c_in, 3), 1.0 / float(np.sqrt(3 * c_in)), 0.0))
        bias(conv + "bias", d.enc_dim)
    e_q = d.enc_heads * d.enc_head_dim
    e_kv = d.enc_kv_heads * d.enc_head_dim
    for i in range(d.enc_layers):
        p = f"{enc}transformer.layers.{i}."
        lin(p + "attention.wq.weight", e_q, d.enc_dim, scale=QK_SCALE)
        bias(p + "attention.wq.bias", e_q)
        lin(p + "attention.wk.weight", e_kv, d.enc_dim, scale=QK_SCALE)
        lin(p + "attention.wv.weight", e_kv, d.enc_dim)
        bias(p + "attention.wv.bias", e_kv)
        lin(p + "attention.wo.weight", d.enc_dim, e_q)
        bias(p + "attention.wo.bias", d.enc_dim)
        norm(p + "attention_norm.weight", d.enc_dim)
        norm(p + "ffn_norm.weight", d.enc_dim)
        lin(p + "feed_forward.w1.weight", d.enc_hidden_dim, d.enc_dim)
        lin(p + "feed_forward.w3.weight", d.enc_hidden_dim, d.enc_dim)
        lin(p + "feed_forward.w2.weight", d.enc_dim, d.enc_hidden_dim)
        bias(p + "feed_forward.w2.bias", d.enc_dim)
    norm(enc + "transformer.norm.weight", d.enc_dim)

    lin(ENC_PREFIX + "audio_language_projection.0.weight", d.dim, d.enc_dim * d.downsample)
    lin(ENC_PREFIX + "audio_language_projection.2.weight", d.dim, d.dim)

    q = d.n_heads * d.head_dim
    kv = d.n_kv_heads * d.head_dim
    for i in range(d.n_layers):
        p = f"layers.{i}."
        norm(p + "attention_norm.weight", d.dim)
        norm(p + "ffn_norm.weight", d.dim)
        lin(p + "attention.wq.weight", q, d.dim, scale=QK_SCALE)
        lin(p + "attention.wk.weight", kv, d.dim, scale=QK_SCALE)
        lin(p + "attention.wv.weight", kv, d.dim)
        lin(p + "attention.wo.weight", d.dim, q)
        lin(p + "feed_forward.w1.weight", d.hidden_dim, d.dim)
        lin(p + "feed_forward.w3.weight", d.hidden_dim, d.dim)
        lin(p + "feed_forward.w2.weight", d.dim, d.hidden_dim)
        # t_cond has norm ~sqrt(dim/2); down-projection keeps O(1) values and the
        # up-projection is damped so (1 + s_layer) stays a modest modulation.
        lin(p + "ada_rms_norm_t_cond.0.weight", d.ada_t_cond_dim, d.dim)
        lin(p + "ada_rms_norm_t_cond.2.weight", d.dim, d.ada_t_cond_dim, scale=0.5)
    norm("norm.weight", d.dim)
    return specs


def weight_plans(d: ModelDims, seed: int) -> list[TensorPlan]:
    return [
        TensorPlan(name, shape, _normal_chunks(shape, seed, name, std, mean))
        for name, shape, std, mean in tensor_specs(d)
    ]


def make_model(out_dir: Path, dims: ModelDims, seed: int) -> None:
    """Write a complete model directory; the same (dims, seed) gives identical files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps(params_json(dims), indent=2) + "\n")
    (out_dir / "tekken.json").write_text(
        json.dumps(tekken_json(dims, seed), ensure_ascii=False) + "\n", encoding="utf-8"
    )
    # The marker tells `voxd model check` (and whoever reads the header) that
    # these weights are noise, not a checkpoint; `voxd quantize` carries it over.
    write_safetensors(
        out_dir / "consolidated.safetensors",
        weight_plans(dims, seed),
        {RANDOM_MODEL_KEY: dims.name},
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m voxd.tools.devmodel", description="Write a random Voxtral model directory."
    )
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    dims = PRESETS[args.preset]
    make_model(args.out_dir, dims, args.seed)
    n = sum(int(np.prod(s)) for _, s, _, _ in tensor_specs(dims))
    print(f"wrote {args.out_dir} ({dims.name}, seed {args.seed}, {n} weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
