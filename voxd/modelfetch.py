"""Fetch, install and check the Voxtral model files (`voxd model ...`).

The model is three files: consolidated.safetensors (~8.9 GB), params.json
and tekken.json. They are downloaded over HTTP(S) with urllib only, or copied
from a local directory. Downloads are written to `<file>.part`, resumed with
an HTTP Range request after an interruption, checked against the size the
server announced (and an optional sha256 manifest), and only then renamed
into place, so a file under its final name is always complete.

A `<file>.part.json` sidecar remembers the size and ETag the server gave
when the partial file was started: if the file on the server changes in the
meantime, the stale partial data is discarded instead of being spliced with
the new version.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import math
import os
import shutil
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from voxd import __version__

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co/mistralai/Voxtral-Mini-4B-Realtime-2602/resolve/main"
WEIGHTS_FILE = "consolidated.safetensors"
# Small files first: a wrong URL or a missing token fails within a second,
# not after gigabytes.
MODEL_FILES: tuple[str, ...] = ("params.json", "tekken.json", WEIGHTS_FILE)

CHUNK = 1 << 20
LOCK_NAME = ".voxd-download.lock"
# A safetensors header is a few MB at most; anything bigger is not one.
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

# (file name, bytes done, total bytes or None when unknown)
ProgressFn = Callable[[str, int, int | None], None]


class ModelFetchError(Exception):
    """A failure with a message meant for the person running the command."""


class _TransientError(Exception):
    """A failure worth retrying: the partial file is kept and resumed."""


def default_model_dir() -> Path:
    # Imported here: the config module pulls in pydantic, which a plain
    # `import voxd.modelfetch` (e.g. from install.sh) need not pay for.
    from voxd.config import ServiceSettings

    return ServiceSettings().state_dir / "model"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")


# --- manifest ------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, str]:
    """Parse a `sha256sum` style file: '<64 hex digits>  <file name>' per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelFetchError(f"cannot read sha256 manifest {path}: {exc.strerror}") from exc
    digests: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or not _is_hex(digest):
            raise ModelFetchError(
                f"{path}:{lineno}: expected '<sha256 hex>  <file name>', got {line!r}"
            )
        # sha256sum marks binary mode with a leading '*' on the name.
        digests[Path(parts[1].lstrip("*")).name] = digest
    return digests


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify_digest(path: Path, name: str, digests: Mapping[str, str] | None) -> None:
    expected = (digests or {}).get(name)
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise ModelFetchError(
            f"{name}: sha256 mismatch (expected {expected}, got {actual}); "
            "the data was discarded, run the command again to fetch it anew"
        )


# --- small filesystem helpers ----------------------------------------------


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock so two downloads never write the same .part."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelFetchError(
                f"another model download into {directory} is running; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(part: Path, final: Path) -> None:
    """Atomically move a complete file to its final name, durably."""
    os.replace(part, final)
    _fsync_dir(final.parent)


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise ModelFetchError(
            f"not enough disk space in {directory}: {_human(needed)} more needed, "
            f"{_human(free)} free"
        )


# --- HTTP download -------------------------------------------------------------


@dataclass
class _PartInfo:
    """What the server said about the file when its .part was started."""

    size: int
    etag: str | None = None

    @classmethod
    def load(cls, path: Path) -> _PartInfo | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(size=int(data["size"]), etag=data.get("etag"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"size": self.size, "etag": self.etag}), encoding="utf-8")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = span.partition("-")[0]
    try:
        return (int(start) if start != "*" else None), (int(total) if total != "*" else None)
    except ValueError:
        return None, None


def _http_error(url: str, code: int, reason: str) -> ModelFetchError:
    hint = {
        401: "authentication required: set HF_TOKEN to a Hugging Face access token",
        403: "access denied: accept the model's licence on its page and set HF_TOKEN",
        404: "not found: check --url (the base URL, without the file name)",
    }.get(code, "")
    return ModelFetchError(f"HTTP {code} {reason} for {url}" + (f" ({hint})" if hint else ""))


@dataclass
class _Fetch:
    """One file transfer: the URL, where it goes, and how to report."""

    name: str
    url: str
    final: Path
    opener: urllib.request.OpenerDirector
    token: str | None
    timeout: float
    progress: ProgressFn | None

    @property
    def part(self) -> Path:
        return self.final.with_name(self.final.name + ".part")

    @property
    def info_path(self) -> Path:
        return self.final.with_name(self.final.name + ".part.json")

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)

    def request(self, offset: int) -> urllib.request.Request:
        req = urllib.request.Request(self.url, headers={"User-Agent": f"voxd/{__version__}"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        if self.token:
            # Unredirected: the token is for the origin, not for the CDN it
            # redirects to with a pre-signed URL.
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return req

    def attempt(self) -> None:
        """Fetch the rest of the file into .part; raise _TransientError to retry."""
        have = self.part.stat().st_size if self.part.exists() else 0
        info = _PartInfo.load(self.info_path) if have else None
        if have and info is None:
            # A .part without its sidecar cannot be trusted to match.
            self.discard()
            have = 0
        try:
            resp = self.opener.open(self.request(have), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                self._on_http_error(exc, have, info)
            return
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise _TransientError(f"cannot reach {self.url}: {reason}") from exc
        with resp:
            self._receive(resp, have, info)

    def _on_http_error(
        self, exc: urllib.error.HTTPError, have: int, info: _PartInfo | None
    ) -> None:
        if exc.code == 416 and have:
            # Nothing left to send from our offset: either we already have the
            # whole file (an earlier run died before the rename) or the
            # partial file is longer than the server's and must go.
            _, total = _parse_content_range(exc.headers.get("Content-Range"))
            if info is not None and total == have == info.size:
                return
            self.discard()
            raise _TransientError(f"partial {self.name} does not match the server's file")
        if exc.code >= 500 or exc.code == 429:
            raise _TransientError(f"HTTP {exc.code} {exc.reason} for {self.url}")
        raise _http_error(self.url, exc.code, str(exc.reason))

    def _receive(self, resp: http.client.HTTPResponse, have: int, info: _PartInfo | None) -> None:
        etag = resp.headers.get("ETag")
        if resp.status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have or total is None or info is None or not _same(info, total, etag):
                # The server's file is not the one our partial data came from.
                self.discard()
                raise _TransientError(f"{self.name} changed on the server; starting over")
            mode = "ab"
        else:
            # A plain 200: a fresh start, or a server that ignores Range.
            total = _content_length(resp)
            have, mode = 0, "wb"
            if total is not None:
                _PartInfo(total, etag).save(self.info_path)
            elif resp.chunked:
                # Chunked framing tells a complete body from a cut one, but
                # the size is unknown, so without a sidecar this transfer is
                # restarted rather than resumed if it breaks.
                self.info_path.unlink(missing_ok=True)
            else:
                raise ModelFetchError(
                    f"{self.url}: the server sent neither the file size (Content-Length) "
                    "nor chunked framing, so a truncated download could not be detected"
                )
        if total is not None:
            _check_space(self.final.parent, total - have)
        with self.part.open(mode) as out:
            have = self._copy_body(resp, out, have, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and have != total:
            raise _TransientError(f"{self.name}: connection closed after {have} of {total} bytes")

    def _copy_body(
        self, resp: http.client.HTTPResponse, out: IO[bytes], have: int, total: int | None
    ) -> int:
        try:
            while chunk := resp.read(CHUNK):
                if total is not None and have + len(chunk) > total:
                    self.discard()
                    raise ModelFetchError(
                        f"{self.name}: the server sent more than the {total} bytes it announced"
                    )
                out.write(chunk)
                have += len(chunk)
                if self.progress is not None:
                    self.progress(self.name, have, total)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not _is_network(exc):
                raise ModelFetchError(f"cannot write {self.part}: {exc.strerror}") from exc
            out.flush()
            raise _TransientError(
                f"{self.name}: transfer interrupted after {have} of {total} bytes ({exc})"
            ) from exc
        return have


def _same(info: _PartInfo, total: int, etag: str | None) -> bool:
    if info.size != total:
        return False
    return info.etag is None or etag is None or info.etag == etag


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _is_network(exc: OSError) -> bool:
    # Socket failures while reading the body, as opposed to local disk errors
    # (ENOSPC, EIO) when writing it.
    return isinstance(exc, (ConnectionError, TimeoutError)) or exc.errno in {
        errno.ECONNRESET,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }


def _download_file(
    fetch: _Fetch,
    *,
    digests: Mapping[str, str] | None,
    retries: int,
    backoff: float,
) -> bool:
    """Download one file unless already present; True when it was fetched."""
    if fetch.final.exists():
        return False
    for attempt in range(retries + 1):
        try:
            fetch.attempt()
            break
        except _TransientError as exc:
            if attempt == retries:
                raise ModelFetchError(
                    f"{exc} (gave up after {retries + 1} attempts; run the command again to resume)"
                ) from exc
            delay = min(backoff * 2**attempt, 60.0)
            log.warning("%s; retrying in %.0f s", exc, delay)
            time.sleep(delay)
    _verify_digest(fetch.part, fetch.name, digests)
    _commit(fetch.part, fetch.final)
    fetch.info_path.unlink(missing_ok=True)
    return True


def download_model(
    target: Path,
    base_url: str = DEFAULT_BASE_URL,
    *,
    files: Sequence[str] = MODEL_FILES,
    digests: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    token: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    opener: urllib.request.OpenerDirector | None = None,
) -> list[str]:
    """Download the model files missing from `target`; return their names.

    Files already under their final name are left alone (a final name is
    only ever given to a complete, checked file), so a second run is free.
    """
    target = Path(target)
    base = base_url.rstrip("/")
    opener = opener or urllib.request.build_opener()
    fetched: list[str] = []
    with _dir_lock(target):
        for name in files:
            fetch = _Fetch(
                name=name,
                url=f"{base}/{name}",
                final=target / name,
                opener=opener,
                token=token,
                timeout=timeout,
                progress=progress,
            )
            if _download_file(fetch, digests=digests, retries=retries, backoff=backoff):
                fetched.append(name)
    return fetched


# --- local copy --------------------------------------------------------------


def _copy_with_progress(src: Path, dst: Path, name: str, progress: ProgressFn | None) -> None:
    total = src.stat().st_size
    done = 0
    with src.open("rb") as inp, dst.open("wb") as out:
        while chunk := inp.read(4 * CHUNK):
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(name, done, total)
        out.flush()
        os.fsync(out.fileno())
    if done != total:
        raise ModelFetchError(f"{src} changed while being copied ({done} of {total} bytes)")


def _install_one(
    src: Path, final: Path, *, link: bool, digests: Mapping[str, str] | None,
    progress: ProgressFn | None,
) -> bool:  # fmt: skip
    if final.exists() and (
        os.path.samefile(src, final) or final.stat().st_size == src.stat().st_size
    ):
        return False
    part = final.with_name(final.name + ".part")
    part.unlink(missing_ok=True)
    linked = False
    if link:
        try:
            os.link(src, part)
            linked = True
        except OSError as exc:  # another filesystem, or links not permitted
            log.info("cannot hard-link %s (%s); copying instead", src, exc.strerror)
    if not linked:
        _check_space(final.parent, src.stat().st_size)
        _copy_with_progress(src, part, final.name, progress)
    _verify_digest(part, final.name, digests)
    _commit(part, final)
    return True


def install_from_dir(
    source: Path,
    target: Path,
    *,
    files: Sequence[str] = MODEL_FILES,
    link: bool = False,
    digests: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Copy (or hard-link) the model files from a local directory.

    All files are validated before anything is written, so a wrong --from
    leaves the target untouched. Returns the names actually installed.
    """
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise ModelFetchError(f"{source} is not a directory")
    missing = [n for n in files if not (source / n).is_file()]
    if missing:
        raise ModelFetchError(
            f"{source} is not a model directory: missing {', '.join(missing)} "
            f"(expected {', '.join(files)})"
        )
    installed: list[str] = []
    with _dir_lock(target):
        for name in files:
            if _install_one(
                source / name, target / name, link=link, digests=digests, progress=progress
            ):
                installed.append(name)
    return installed


# --- check ---------------------------------------------------------------------


def check_safetensors(path: Path) -> list[str]:
    """Problems with a safetensors file's header and layout (empty list: fine).

    The format: an 8-byte little-endian header length N, N bytes of JSON
    mapping tensor names to dtype/shape/data_offsets, then the data. Offsets
    are relative to the end of the header and must tile the data exactly.
    """
    size = path.stat().st_size
    if size < 8:
        return [f"{path.name}: {size} bytes, too short to be a safetensors file"]
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            return [f"{path.name}: implausible header length {n} for a {size}-byte file"]
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{path.name}: header is not valid JSON ({exc})"]
    if not isinstance(header, dict):
        return [f"{path.name}: header is not a JSON object"]
    return _check_tensors(path.name, header, size - 8 - n)


def _check_tensors(name: str, header: dict[str, Any], data_len: int) -> list[str]:
    problems: list[str] = []
    end_max = 0
    for tensor, meta in header.items():
        if tensor == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in meta["data_offsets"])
            shape = [int(d) for d in meta["shape"]]
            dtype = str(meta["dtype"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{name}: tensor {tensor!r} has a malformed entry")
            continue
        if not 0 <= begin <= end <= data_len:
            problems.append(
                f"{name}: tensor {tensor!r} lies outside the data ({begin}..{end} of {data_len}); "
                "the file is truncated or corrupt"
            )
            continue
        count = 1
        for d in shape:
            count *= d
        if dtype in DTYPE_BYTES and count * DTYPE_BYTES[dtype] != end - begin:
            problems.append(
                f"{name}: tensor {tensor!r} is {end - begin} bytes, "
                f"but {dtype}{shape} needs {count * DTYPE_BYTES[dtype]}"
            )
        end_max = max(end_max, end)
    if not problems and end_max != data_len:
        problems.append(
            f"{name}: tensors end at byte {end_max} of {data_len} bytes of data; "
            "the file has trailing data or is not the one its header describes"
        )
    return problems


def check_model(
    directory: Path,
    *,
    files: Sequence[str] = MODEL_FILES,
    digests: Mapping[str, str] | None = None,
) -> list[str]:
    """Everything wrong with a model directory, as messages (empty: usable)."""
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory} does not exist or is not a directory"]
    problems: list[str] = []
    for name in files:
        path = directory / name
        if not path.is_file():
            partial = path.with_name(name + ".part")
            hint = (
                " (a partial download exists: run `voxd model download`)"
                if partial.exists()
                else ""
            )
            problems.append(f"{name}: missing{hint}")
            continue
        problems.extend(_check_file(path))
        expected = (digests or {}).get(name)
        if expected is not None and sha256_file(path) != expected:
            problems.append(f"{name}: sha256 does not match the manifest")
    return problems


def _check_file(path: Path) -> list[str]:
    try:
        if path.suffix == ".safetensors":
            return check_safetensors(path)
        if path.suffix == ".json":
            json.loads(path.read_bytes())
    except OSError as exc:
        return [f"{path.name}: cannot read ({exc.strerror})"]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{path.name}: not valid JSON ({exc})"]
    return []


# --- command line ------------------------------------------------------------


class _ProgressPrinter:
    """Progress on stderr: a live line on a terminal, sparse lines in logs."""

    def __init__(self, stream: IO[str] | None = None, every_s: float = 10.0) -> None:
        # Looked up at call time, not import time, so redirection is honoured.
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._every = 0.2 if self._tty else every_s
        self._last = -math.inf  # the first update always shows

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last < self._every:
            return
        self._last = now
        pct = f" ({100 * done // total}%)" if total else ""
        line = f"{name}: {_human(done)} / {_human(total or 0)}{pct}"
        if self._tty:
            self._stream.write("\r\033[K" + line + ("\n" if finished else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def _cmd_download(args: argparse.Namespace) -> int:
    target = Path(args.dir) if args.dir else default_model_dir()
    progress = None if args.quiet else _ProgressPrinter()
    try:
        digests = read_manifest(Path(args.sha256)) if args.sha256 else None
        if args.source:
            done = install_from_dir(
                Path(args.source), target, link=args.link, digests=digests, progress=progress
            )
        else:
            done = download_model(
                target,
                args.url,
                digests=digests,
                progress=progress,
                token=os.environ.get("HF_TOKEN") or None,
                retries=args.retries,
            )
    except ModelFetchError as exc:
        print(f"voxd model download: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nvoxd model download: interrupted; run it again to resume", file=sys.stderr)
        return 130
    if done:
        print(f"model files installed in {target}: {', '.join(done)}")
    else:
        print(f"model already present in {target}; nothing to do")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    target = Path(args.dir) if args.dir else default_model_dir()
    try:
        digests = read_manifest(Path(args.sha256)) if args.sha256 else None
    except ModelFetchError as exc:
        print(f"voxd model check: error: {exc}", file=sys.stderr)
        return 1
    problems = check_model(target, digests=digests)
    if not problems:
        problems = _nonfinite_problems(target / "consolidated.safetensors")
    for problem in problems:
        print(f"voxd model check: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"model in {target} looks complete")
    return 0


def _nonfinite_problems(weights: Path) -> list[str]:
    """Every tensor holding NaN/Inf values, from a full scan by the native engine."""
    from voxd.engine import EngineError, find_nonfinite_weights  # the native library

    try:
        scan = find_nonfinite_weights(weights)
    except EngineError as exc:
        return [f"{weights.name}: cannot scan the weights: {exc}"]
    found = [f"{weights.name}: {t.describe()} (NaN or Inf)" for t in scan.tensors]
    if scan.total > len(scan.tensors):
        found.append(f"{weights.name}: {scan.total - len(scan.tensors)} more tensors with NaN/Inf")
    return found


def _cmd_model_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def handler(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `model download` and `model check` on an argparse subparsers.

    Each leaf parser sets `func` to a handler taking the parsed Namespace and
    returning an exit code, so the caller runs `return args.func(args)`.
    """
    model = subparsers.add_parser("model", help="download or check the model files")
    model.set_defaults(func=_cmd_model_help(model))
    actions = model.add_subparsers(dest="model_command", metavar="{download,check}")

    dl = actions.add_parser(
        "download",
        help="download the model (resumable) or install it from a local directory",
        description="Download the model files into DIR, resuming an interrupted "
        "download. Set HF_TOKEN if the repository requires a login.",
    )
    dl.add_argument("--dir", metavar="DIR", help="target directory (default: <state_dir>/model)")
    dl.add_argument(
        "--from", dest="source", metavar="DIR", help="copy from a local directory instead"
    )
    dl.add_argument("--url", default=DEFAULT_BASE_URL, metavar="BASE", help="base URL of the files")
    dl.add_argument(
        "--link", action="store_true", help="with --from: hard-link instead of copying if possible"
    )
    dl.add_argument("--sha256", metavar="FILE", help="verify against a sha256sum-style manifest")
    dl.add_argument("--retries", type=int, default=5, help="retries per file (default: 5)")
    dl.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    dl.set_defaults(func=_cmd_download)

    ck = actions.add_parser("check", help="check that the model files are complete and readable")
    ck.add_argument("--dir", metavar="DIR", help="model directory (default: <state_dir>/model)")
    ck.add_argument("--sha256", metavar="FILE", help="also verify a sha256sum-style manifest")
    ck.set_defaults(func=_cmd_check)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m voxd.modelfetch model download ...`, usable without the CLI."""
    parser = argparse.ArgumentParser(prog="python -m voxd.modelfetch")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
