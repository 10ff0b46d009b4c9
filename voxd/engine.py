"""ctypes binding of voxd's native engine (native/include/voxd_engine.h).

ctypes releases the GIL during every foreign call, so audio capture and MQTT
threads keep running while the engine computes.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from voxd.events import DELAY_MS_DEFAULT, DELAY_MS_RULE, delay_ms_valid

log = logging.getLogger(__name__)

LIB_NAME = "libvoxd_engine.so"
EVENT_TEXT_MAX = 256
TENSOR_NAME_MAX = 192  # VX_TENSOR_NAME_MAX
NONFINITE_REPORT_MAX = 64  # tensors listed by one check (the count covers all)

VX_EVENT_TOKEN = 0
VX_EVENT_UTTERANCE_END = 1

DEBUG_MEL = 1
DEBUG_ENCODER = 2
DEBUG_ADAPTER = 4
DEBUG_LOGITS = 8
# The debug tensors by name (the .npy files of `voxd transcribe --dump`).
DEBUG_NAMES = {
    DEBUG_MEL: "mel",
    DEBUG_ENCODER: "encoder",
    DEBUG_ADAPTER: "adapter",
    DEBUG_LOGITS: "logits",
}
DEBUG_ALL = DEBUG_MEL | DEBUG_ENCODER | DEBUG_ADAPTER | DEBUG_LOGITS


class Status(enum.IntEnum):
    """The C engine's vx_status (native/include/voxd_engine.h; a test checks they agree)."""

    OK = 0
    ERR_IO = 1  # file missing, unreadable, mmap failed
    ERR_FORMAT = 2  # malformed safetensors / JSON / tokenizer
    ERR_SHAPE = 3  # tensor shape or dtype disagrees with params.json
    ERR_ARG = 4  # bad argument: NaN samples, delay out of range ...
    ERR_STATE = 5  # call not allowed now (e.g. feed after finish)
    ERR_NOMEM = 6  # allocation failed


class EngineError(RuntimeError):
    """A failed engine call; `status` is the C vx_status (:class:`Status`)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _ModelOptions(ctypes.Structure):
    _fields_ = [("n_threads", ctypes.c_int), ("backend", ctypes.c_char_p)]


_INFO_INT_FIELDS = (
    "dim n_layers n_heads n_kv_heads head_dim hidden_dim vocab_size sliding_window "
    "enc_dim enc_layers enc_heads enc_kv_heads enc_head_dim enc_hidden_dim "
    "enc_window n_mels downsample sample_rate hop_length window_size "
    "n_special bos_id eos_id pad_id"
)


class _ModelInfo(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int) for name in _INFO_INT_FIELDS.split()),
        ("weight_bytes", ctypes.c_int64),
        ("backend", ctypes.c_char_p),
        ("n_threads", ctypes.c_int),
        ("device", ctypes.c_char_p),
        ("device_note", ctypes.c_char_p),
        ("weights_note", ctypes.c_char_p),
    ]


class _NonFinite(ctypes.Structure):
    _fields_ = [
        ("tensor", ctypes.c_char * TENSOR_NAME_MAX),
        ("count", ctypes.c_int64),
        ("first", ctypes.c_int64),
    ]


class _StreamOptions(ctypes.Structure):
    _fields_ = [
        ("delay_ms", ctypes.c_int),
        ("interval_ms", ctypes.c_int),
        ("max_speculation", ctypes.c_int),
        ("kv_f32", ctypes.c_int),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("token", ctypes.c_int32),
        ("position", ctypes.c_int64),
        ("audio_time", ctypes.c_double),
        ("text_len", ctypes.c_int32),
        ("text", ctypes.c_char * EVENT_TEXT_MAX),
    ]


class _StreamStats(ctypes.Structure):
    _fields_ = [
        ("positions", ctypes.c_int64),
        ("decoder_passes", ctypes.c_int64),
        ("encoder_frames", ctypes.c_int64),
        ("mel_ms", ctypes.c_double),
        ("encoder_ms", ctypes.c_double),
        ("decoder_ms", ctypes.c_double),
        ("kv_positions", ctypes.c_int64),
        ("spec_guesses", ctypes.c_int64),
        ("spec_accepted", ctypes.c_int64),
        ("prompt_positions", ctypes.c_int64),
        ("prompt_passes", ctypes.c_int64),
        ("prompt_ms", ctypes.c_double),
        ("encoder_passes", ctypes.c_int64),
    ]


class _GroupStats(ctypes.Structure):
    _fields_ = [
        ("calls", ctypes.c_int64),
        ("passes", ctypes.c_int64),
        ("stream_passes", ctypes.c_int64),
        ("rows", ctypes.c_int64),
        ("max_streams", ctypes.c_int64),
        ("encoder_passes", ctypes.c_int64),
        ("encoder_stream_passes", ctypes.c_int64),
    ]


def _library_candidates() -> list[Path]:
    env = os.environ.get("VOXD_ENGINE_LIB")
    found = [Path(env)] if env else []
    found.append(Path(__file__).resolve().parent / "_native" / LIB_NAME)
    # editable installs keep the built library in site-packages, not the checkout
    for entry in sys.path:
        found.append(Path(entry) / "voxd" / "_native" / LIB_NAME)
    return found


def _load_library() -> ctypes.CDLL:
    tried = []
    for path in _library_candidates():
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            return lib
        tried.append(str(path))
    raise EngineError(
        "voxd's native engine is not built: none of " + ", ".join(tried) + " exists. "
        "Install the package with `pip install .` (it compiles native/) or set VOXD_ENGINE_LIB."
    )


def _declare(lib: ctypes.CDLL) -> None:
    p, c_int, c_size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    lib.vx_model_load.argtypes = [
        ctypes.c_char_p,
        ctypes.POINTER(_ModelOptions),
        ctypes.POINTER(p),
        ctypes.c_char_p,
        c_size,
    ]
    lib.vx_model_load.restype = c_int
    lib.vx_model_free.argtypes = [p]
    lib.vx_model_free.restype = None
    lib.vx_model_get_info.argtypes = [p, ctypes.POINTER(_ModelInfo)]
    lib.vx_model_get_info.restype = None
    lib.vx_model_token_bytes.argtypes = [p, c_int, ctypes.POINTER(c_int)]
    lib.vx_model_token_bytes.restype = ctypes.POINTER(ctypes.c_char)
    lib.vx_stream_new.argtypes = [p, ctypes.POINTER(_StreamOptions), ctypes.POINTER(p)]
    lib.vx_stream_new.restype = c_int
    lib.vx_stream_free.argtypes = [p]
    lib.vx_stream_free.restype = None
    lib.vx_stream_feed.argtypes = [p, ctypes.POINTER(ctypes.c_float), c_size]
    lib.vx_stream_feed.restype = c_int
    for name in ("vx_stream_flush", "vx_stream_finish", "vx_stream_reset", "vx_stream_prepare"):
        getattr(lib, name).argtypes = [p]
        getattr(lib, name).restype = c_int
    lib.vx_stream_flush_after_silence.argtypes = [p, c_size]
    lib.vx_stream_flush_after_silence.restype = c_int
    lib.vx_stream_read_events.argtypes = [p, ctypes.POINTER(_Event), c_size]
    lib.vx_stream_read_events.restype = c_size
    lib.vx_stream_error.argtypes = [p]
    lib.vx_stream_error.restype = ctypes.c_char_p
    lib.vx_stream_get_stats.argtypes = [p, ctypes.POINTER(_StreamStats)]
    lib.vx_stream_get_stats.restype = None
    lib.vx_stream_debug_enable.argtypes = [p, c_int]
    lib.vx_stream_debug_enable.restype = c_int
    lib.vx_stream_debug_get.argtypes = [
        p,
        c_int,
        ctypes.POINTER(ctypes.POINTER(ctypes.c_float)),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int64),
    ]
    lib.vx_stream_debug_get.restype = c_int
    lib.vx_status_name.argtypes = [c_int]
    lib.vx_status_name.restype = ctypes.c_char_p
    lib.vx_model_find_nonfinite.argtypes = [p, c_int, ctypes.POINTER(_NonFinite), c_size]
    lib.vx_model_find_nonfinite.restype = ctypes.c_int64
    lib.vx_weights_find_nonfinite.argtypes = [
        ctypes.c_char_p,
        ctypes.POINTER(_NonFinite),
        c_size,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_char_p,
        c_size,
    ]
    lib.vx_weights_find_nonfinite.restype = c_int
    lib.vx_cuda_membw.argtypes = [c_size, c_int, ctypes.c_char_p, c_size]
    lib.vx_cuda_membw.restype = ctypes.c_double
    _declare_group(lib)


def _declare_group(lib: ctypes.CDLL) -> None:
    """vx_group_* (several streams stepped together)."""
    p, c_int = ctypes.c_void_p, ctypes.c_int
    lib.vx_group_new.argtypes = [p, ctypes.POINTER(p)]
    lib.vx_group_new.restype = c_int
    lib.vx_group_free.argtypes = [p]
    lib.vx_group_free.restype = None
    lib.vx_group_feed.argtypes = [
        p,
        ctypes.POINTER(p),
        ctypes.POINTER(ctypes.POINTER(ctypes.c_float)),
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(c_int),
        ctypes.POINTER(ctypes.c_size_t),
        c_int,
        ctypes.POINTER(c_int),
    ]
    lib.vx_group_feed.restype = c_int
    lib.vx_group_get_stats.argtypes = [p, ctypes.POINTER(_GroupStats)]
    lib.vx_group_get_stats.restype = None


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """The loaded native library (loaded once, on first use)."""
    global _lib
    if _lib is None:
        _lib = _load_library()
    return _lib


def cuda_membw(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Read bandwidth of CUDA device 0 in GB/s (the engine's streaming-read kernel).

    Raises EngineError naming the cause when there is no usable device or the
    engine was built without CUDA.
    """
    lib = library()
    err = ctypes.create_string_buffer(512)
    gbs = float(lib.vx_cuda_membw(nbytes, reps, err, len(err)))
    if gbs < 0:
        raise EngineError(err.value.decode("utf-8", "replace"))
    return gbs


@dataclass(frozen=True)
class ModelInfo:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    sliding_window: int
    enc_dim: int
    enc_layers: int
    enc_heads: int
    enc_kv_heads: int
    enc_head_dim: int
    enc_hidden_dim: int
    enc_window: int
    n_mels: int
    downsample: int
    sample_rate: int
    hop_length: int
    window_size: int
    n_special: int
    bos_id: int
    eos_id: int
    pad_id: int
    weight_bytes: int
    backend: str
    n_threads: int
    device: str = "cpu"  # where the transformer stacks run: "cpu" or "cuda"
    device_note: str = ""  # the GPU, or why not a GPU (backend "auto")
    weights_note: str = ""  # copied into memory (huge pages), or mapped from the file and why


@dataclass(frozen=True)
class NonFinite:
    """A weight tensor holding NaN or Inf values."""

    tensor: str
    count: int  # non-finite values in the part scanned (Q8/Q4: 32 per bad block scale)
    first: int  # flat element index of the first

    def describe(self) -> str:
        return (
            f"tensor {self.tensor!r}: {self.count} non-finite value(s), "
            f"first at element {self.first}"
        )


@dataclass(frozen=True)
class NonFiniteScan:
    """What a scan for NaN/Inf weights found: up to NONFINITE_REPORT_MAX tensors, and
    how many tensors hold such values in all."""

    tensors: tuple[NonFinite, ...]
    total: int


def _nonfinite_scan(found: int, buf: ctypes.Array[_NonFinite]) -> NonFiniteScan:
    n = min(found, len(buf))
    tensors = tuple(
        NonFinite(buf[i].tensor.decode("utf-8", "replace"), buf[i].count, buf[i].first)
        for i in range(n)
    )
    return NonFiniteScan(tensors, found)


def find_nonfinite_weights(path: str | os.PathLike[str]) -> NonFiniteScan:
    """Every value of every tensor of a safetensors file, checked for NaN/Inf
    (``voxd model check``). EngineError when the engine cannot map the file."""
    lib = library()
    buf = (_NonFinite * NONFINITE_REPORT_MAX)()
    found = ctypes.c_int64()
    err = ctypes.create_string_buffer(1024)
    st = lib.vx_weights_find_nonfinite(
        os.fsencode(path), buf, len(buf), ctypes.byref(found), err, len(err)
    )
    if st != Status.OK:
        raise EngineError(err.value.decode("utf-8", "replace"), st)
    return _nonfinite_scan(found.value, buf)


@dataclass(frozen=True)
class TokenEvent:
    """The decoder produced a token; `text` holds only complete characters."""

    token_id: int
    text: str
    position: int
    audio_time: float


@dataclass(frozen=True)
class UtteranceEnd:
    """flush()/finish() completed an utterance; `text` is any leftover partial character."""

    text: str
    position: int
    audio_time: float


StreamEvent = TokenEvent | UtteranceEnd


@dataclass(frozen=True)
class StreamStats:
    positions: int
    decoder_passes: int
    encoder_frames: int
    mel_ms: float
    encoder_ms: float
    decoder_ms: float
    kv_positions: int
    spec_guesses: int  # pad guesses checked by speculation
    spec_accepted: int  # of which were right
    # the prompt's prefill passes (no logits), included in the decoder figures above
    prompt_positions: int
    prompt_passes: int
    prompt_ms: float
    encoder_passes: int  # weight passes of the encoder


@dataclass(frozen=True)
class GroupStats:
    calls: int  # feed() calls
    passes: int  # decoder passes run: reads of the decoder weights
    stream_passes: int  # the streams' own passes they stood for
    rows: int  # decoder rows computed
    max_streams: int  # most streams in one pass
    encoder_passes: int  # encoder stack passes of two or more streams' frames
    encoder_stream_passes: int  # the streams' shares of them


def _warn_nonfinite(model_dir: str | os.PathLike[str], scan: NonFiniteScan) -> None:
    """Load succeeds with NaN/Inf weights, but transcripts come out empty: say so loudly."""
    if not scan.total:
        return
    for t in scan.tensors[:8]:
        log.warning("model weights in %s: %s", os.fspath(model_dir), t.describe())
    more = f" ({scan.total - 8} more tensors not listed)" if scan.total > 8 else ""
    log.warning(
        "the model in %s has NaN/Inf weights in %d tensor(s)%s: transcripts will be empty or "
        "wrong. Run `voxd model check` for a full scan, then fetch the model again "
        "(`voxd model download`) or quantize it again from a good copy",
        os.fspath(model_dir),
        scan.total,
        more,
    )


_H = TypeVar("_H", bound="_NativeHandle")


class _NativeHandle:
    """Something that owns a native handle and frees it in close(): usable in
    ``with``, and closed when collected."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # at interpreter shutdown ctypes may already be gone: nothing useful to do
        with contextlib.suppress(Exception):
            self.close()


class Engine(_NativeHandle):
    """A loaded model. Streams made from it may run in different threads."""

    def __init__(
        self, model_dir: str | os.PathLike[str], threads: int = 0, backend: str | None = None
    ) -> None:
        self._lib = library()
        opts = _ModelOptions(threads, backend.encode() if backend else None)
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(1024)
        st = self._lib.vx_model_load(
            os.fsencode(model_dir), ctypes.byref(opts), ctypes.byref(handle), err, len(err)
        )
        if st != Status.OK:
            raise EngineError(err.value.decode("utf-8", "replace"), st)
        self._handle: ctypes.c_void_p | None = handle
        raw = _ModelInfo()
        self._lib.vx_model_get_info(handle, ctypes.byref(raw))
        values = {f[0]: getattr(raw, f[0]) for f in _ModelInfo._fields_}
        values["backend"] = (raw.backend or b"").decode()
        values["device"] = (raw.device or b"cpu").decode()
        values["device_note"] = (raw.device_note or b"").decode("utf-8", "replace")
        values["weights_note"] = (raw.weights_note or b"").decode("utf-8", "replace")
        self.info = ModelInfo(**values)
        self._streams: list[Stream] = []
        self.nonfinite = self.find_nonfinite(full=False)
        _warn_nonfinite(model_dir, self.nonfinite)

    def find_nonfinite(self, *, full: bool = False) -> NonFiniteScan:
        """Tensors with NaN/Inf weights. ``full=False`` is the quick check done at
        load (vectors in full, a few rows of each matrix); ``full=True`` reads every value."""
        buf = (_NonFinite * NONFINITE_REPORT_MAX)()
        found = self._lib.vx_model_find_nonfinite(self._ptr(), int(full), buf, len(buf))
        return _nonfinite_scan(int(found), buf)

    def _ptr(self) -> ctypes.c_void_p:
        if self._handle is None:
            raise EngineError("the engine is closed")
        return self._handle

    def stream(
        self,
        delay_ms: int = DELAY_MS_DEFAULT,
        interval_ms: int = 80,
        max_speculation: int = 0,
        kv_f32: bool = False,
    ) -> Stream:
        """A new stream.

        max_speculation: positions per decoder pass (0 = default, 1 = off);
        kv_f32: keep the KV caches in float32 instead of fp16 (for exact
        checks against a float reference; twice the memory).
        """
        if not delay_ms_valid(delay_ms):
            raise EngineError(f"delay_ms {delay_ms} must be {DELAY_MS_RULE}", Status.ERR_ARG)
        if interval_ms < 0:
            raise EngineError(f"interval_ms {interval_ms} must be >= 0", Status.ERR_ARG)
        if not 0 <= max_speculation <= 32:
            raise EngineError(f"max_speculation {max_speculation} must be 0..32", Status.ERR_ARG)
        handle = ctypes.c_void_p()
        opts = _StreamOptions(delay_ms, interval_ms, max_speculation, int(kv_f32))
        st = self._lib.vx_stream_new(self._ptr(), ctypes.byref(opts), ctypes.byref(handle))
        if st != Status.OK:
            raise EngineError(f"cannot create a stream: {self._status_name(st)}", st)
        s = Stream(self, handle)
        self._streams.append(s)
        return s

    def group(self) -> StreamGroup:
        """A StreamGroup: this model's streams stepped together (see StreamGroup)."""
        return StreamGroup(self)

    def token_bytes(self, token_id: int) -> bytes:
        n = ctypes.c_int(0)
        ptr = self._lib.vx_model_token_bytes(self._ptr(), token_id, ctypes.byref(n))
        return ctypes.string_at(ptr, n.value) if n.value else b""

    def is_control(self, token_id: int) -> bool:
        return token_id < self.info.n_special

    def _status_name(self, st: int) -> str:
        name: bytes = self._lib.vx_status_name(st)
        return name.decode()

    def _forget(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def close(self) -> None:
        for s in list(self._streams):
            s.close()
        self._streams.clear()
        if self._handle is not None:
            self._lib.vx_model_free(self._handle)
            self._handle = None


def _silence(samples: int) -> int:
    """A flush's count of silent samples, checked before it reaches the engine."""
    if samples < 0:
        raise ValueError(f"silence must be 0 or more samples, not {samples}")
    return samples


class Stream:
    """One audio stream: feed 16 kHz mono float audio, get token events."""

    def __init__(self, engine: Engine, handle: ctypes.c_void_p) -> None:
        self._engine = engine
        self._lib = engine._lib
        self._handle: ctypes.c_void_p | None = handle
        self._buf = (_Event * 256)()

    def _ptr(self) -> ctypes.c_void_p:
        if self._handle is None:
            raise EngineError("the stream is closed", Status.ERR_STATE)
        return self._handle

    def _check(self, st: int) -> None:
        if st != Status.OK:
            msg: bytes = self._lib.vx_stream_error(self._ptr())
            raise EngineError(msg.decode("utf-8", "replace") or self._engine._status_name(st), st)

    def _drain(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        while True:
            n = self._lib.vx_stream_read_events(self._ptr(), self._buf, len(self._buf))
            for ev in self._buf[:n]:
                text = bytes(ev.text[: ev.text_len]).decode("utf-8", "replace")
                if ev.kind == VX_EVENT_TOKEN:
                    out.append(TokenEvent(ev.token, text, ev.position, ev.audio_time))
                else:
                    out.append(UtteranceEnd(text, ev.position, ev.audio_time))
            if n < len(self._buf):
                return out

    def feed(self, samples: npt.ArrayLike) -> list[StreamEvent]:
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        ptr = x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._check(self._lib.vx_stream_feed(self._ptr(), ptr, x.size))
        return self._drain()

    def flush(self, silence: int = 0) -> list[StreamEvent]:
        """End of utterance (not terminal): the rest of its tokens, then UtteranceEnd.

        ``silence``: how many of the last samples fed were silence after the
        speech (the endpointer's hangover); they count toward the right
        padding, so the decoder stops that much sooner (vx_stream_flush_after_silence).
        """
        self._check(self._lib.vx_stream_flush_after_silence(self._ptr(), _silence(silence)))
        return self._drain()

    def finish(self) -> list[StreamEvent]:
        """Terminal flush: feeding afterwards is an error until reset()."""
        self._check(self._lib.vx_stream_finish(self._ptr()))
        return self._drain()

    def reset(self) -> None:
        self._check(self._lib.vx_stream_reset(self._ptr()))

    def prepare(self) -> None:
        """Compute the left padding now, not at the first feed (the output is the same)."""
        self._check(self._lib.vx_stream_prepare(self._ptr()))

    def stats(self) -> StreamStats:
        raw = _StreamStats()
        self._lib.vx_stream_get_stats(self._ptr(), ctypes.byref(raw))
        return StreamStats(**{f[0]: getattr(raw, f[0]) for f in _StreamStats._fields_})

    def enable_debug(self, kinds: int) -> None:
        """Capture intermediate tensors (DEBUG_* flags); enable before the first feed."""
        self._check(self._lib.vx_stream_debug_enable(self._ptr(), kinds))

    def debug_tensor(self, kind: int) -> npt.NDArray[np.float32]:
        data = ctypes.POINTER(ctypes.c_float)()
        rows, cols = ctypes.c_int64(), ctypes.c_int64()
        self._check(
            self._lib.vx_stream_debug_get(
                self._ptr(), kind, ctypes.byref(data), ctypes.byref(rows), ctypes.byref(cols)
            )
        )
        if rows.value == 0 or not data:
            return np.zeros((0, max(cols.value, 0)), dtype=np.float32)
        arr = np.ctypeslib.as_array(data, shape=(rows.value, cols.value))
        return np.array(arr, dtype=np.float32, copy=True)

    def close(self) -> None:
        if self._handle is not None:
            self._lib.vx_stream_free(self._handle)
            self._handle = None
            self._engine._forget(self)


class StreamGroup(_NativeHandle):
    """Several streams of one Engine stepped together, one read of the weights per pass.

    The decoder streams all its weights for every pass however few rows it
    computes, so N streams stepped together cost about what one costs. A
    server that gives each connection its own Stream runs one worker thread
    that owns a StreamGroup: it gathers the audio that arrived for each
    connection since the last round (and which connections ended an
    utterance), calls feed() once with all of them, and hands each
    connection its events. Each stream's events are exactly what
    Stream.feed() (then Stream.flush()) would give it alone, whatever the
    other streams do and however their audio is split, so connections may
    join or leave between calls. A group is used by one thread at a time; a
    stream must not be fed elsewhere during a call.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lib = engine._lib
        handle = ctypes.c_void_p()
        st = self._lib.vx_group_new(engine._ptr(), ctypes.byref(handle))
        if st != Status.OK:
            raise EngineError(f"cannot create a stream group: {engine._status_name(st)}", st)
        self._handle: ctypes.c_void_p | None = handle

    def feed(
        self,
        audio: Mapping[Stream, npt.ArrayLike],
        flush: Collection[Stream] = (),
        silence: Mapping[Stream, int] | None = None,
    ) -> dict[Stream, list[StreamEvent] | EngineError]:
        """Feed each stream its samples, flush those in `flush` after their audio.

        A stream in `flush` but not in `audio` is flushed with no new audio;
        ``silence`` gives a flushing stream's samples of silence after its
        speech, as ``Stream.flush(silence=...)`` takes them (default 0).
        Returns each stream's events, or the EngineError of that stream alone
        (a NaN sample, a feed after finish...): the other streams go on.
        """
        if self._handle is None:
            raise EngineError("the stream group is closed", Status.ERR_STATE)
        streams = list(audio) + [s for s in flush if s not in audio]
        n = len(streams)
        arrays = [
            np.ascontiguousarray(audio.get(s, ()), dtype=np.float32).reshape(-1) for s in streams
        ]
        f_ptr = ctypes.POINTER(ctypes.c_float)
        handles = (ctypes.c_void_p * n)(*[s._ptr() for s in streams])
        pcm = (f_ptr * n)(*[a.ctypes.data_as(f_ptr) for a in arrays])
        sizes = (ctypes.c_size_t * n)(*[a.size for a in arrays])
        flags = (ctypes.c_int * n)(*[int(s in flush) for s in streams])
        silent = (ctypes.c_size_t * n)(*[_silence((silence or {}).get(s, 0)) for s in streams])
        status = (ctypes.c_int * n)()
        st = self._lib.vx_group_feed(self._handle, handles, pcm, sizes, flags, silent, n, status)
        if st != Status.OK and not any(status):  # refused before running: bad arguments
            raise EngineError(
                "vx_group_feed refused the call: streams must be distinct, open and of this "
                f"group's engine ({self._engine._status_name(st)})",
                st,
            )
        out: dict[Stream, list[StreamEvent] | EngineError] = {}
        for s, code in zip(streams, status, strict=True):
            try:
                s._check(code)
                out[s] = s._drain()
            except EngineError as e:
                out[s] = e
        return out

    def stats(self) -> GroupStats:
        if self._handle is None:
            raise EngineError("the stream group is closed", Status.ERR_STATE)
        raw = _GroupStats()
        self._lib.vx_group_get_stats(self._handle, ctypes.byref(raw))
        return GroupStats(**{f[0]: getattr(raw, f[0]) for f in _GroupStats._fields_})

    def close(self) -> None:
        if self._handle is not None:
            self._lib.vx_group_free(self._handle)
            self._handle = None


def transcribe(
    engine: Engine,
    audio: npt.ArrayLike,
    delay_ms: int = DELAY_MS_DEFAULT,
    chunk: int = 0,
    max_speculation: int = 0,
    *,
    silence: int = 0,
    debug: int = 0,
    on_progress: Callable[[int], None] | None = None,
    before_close: Callable[[Stream], None] | None = None,
) -> tuple[str, list[int]]:
    """Offline transcription: feed everything (in chunks if given), finish.

    ``silence``: the audio's last samples that are silence after its speech,
    counted as padding as the daemon does (``Stream.flush(silence=...)``);
    0 pads after the end of the audio, the offline recipe.

    Returns the final text (pieces joined, surrounding white space stripped) and
    every token id the decoder produced, control ids included. ``voxd
    transcribe`` runs this too, with the hooks: ``debug`` (DEBUG_* bits) is
    enabled on the stream before any audio; ``on_progress`` gets the samples
    fed so far, 0 once the stream is open (so a caller can tell a stream that
    could not be made from audio it failed on) and after each chunk;
    ``before_close`` gets the finished stream (its stats and debug tensors).
    """
    x = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
    stream = engine.stream(delay_ms=delay_ms, max_speculation=max_speculation)
    try:
        if debug:
            stream.enable_debug(debug)
        if on_progress is not None:
            on_progress(0)
        events: list[StreamEvent] = []
        step = chunk if chunk > 0 else max(x.size, 1)
        for i in range(0, x.size, step):
            events += stream.feed(x[i : i + step])
            if on_progress is not None:
                on_progress(min(i + step, x.size))
        events += stream.flush(silence=silence) if silence else stream.finish()
        if before_close is not None:
            before_close(stream)
    finally:
        stream.close()
    text = "".join(e.text for e in events)
    ids = [e.token_id for e in events if isinstance(e, TokenEvent)]
    return text.strip(), ids
