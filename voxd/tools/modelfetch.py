"""Fetch, install and check the Voxtral model files (`voxd model ...`).

The model is three files: consolidated.safetensors (8.9 GB in BF16),
params.json and tekken.json. `voxd model download` fetches them from the
Hugging Face Hub with huggingface_hub (HF_TOKEN, HF_ENDPOINT, its progress
bars, size checks, and resumption of a transfer that breaks off), then
quantizes the weights tensor by tensor to the format the machine's memory
takes (`engine.format`, "auto" by default: see voxd.modelsize), so that a
4 GB Raspberry Pi 5 gets a model it can hold. `--from DIR` installs a model
directory that is already on this machine instead.

The BF16 files are downloaded into DIR/bf16 (huggingface_hub's local-dir
layout) and deleted once quantized, unless --keep-bf16. Every file under its
final name is complete: huggingface_hub and the quantizer both write under a
temporary name and rename at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from voxd.modelsize import MODEL_FILES, WEIGHT_BYTES, resolve_format
from voxd.tools import safetensors as st

if TYPE_CHECKING:
    from voxd.config import EngineSettings

log = logging.getLogger(__name__)

DEFAULT_REPO = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_ENDPOINT = "https://huggingface.co"
WEIGHTS_FILE = "consolidated.safetensors"
BF16_SUBDIR = "bf16"  # where the downloaded checkpoint waits to be quantized
FORMAT_CHOICES = ("auto", "bf16", "q8", "q4")
TOKENS_URL = "https://huggingface.co/settings/tokens"
CONNECT_TIMEOUT_S = 15.0

CHUNK = 1 << 20
LOCK_NAME = ".voxd-download.lock"

# (file name, bytes done, total bytes or None when unknown)
ProgressFn = Callable[[str, int, int | None], None]


class ModelFetchError(Exception):
    """A failure with a message meant for the person running the command."""


def configured_engine(config: Path | None, skip: str) -> EngineSettings:
    """The [engine] section of the configuration file (voxd.config.EngineSettings);
    skip: the calling command's options that make reading it unnecessary, for
    the error message.

    Imported here: the config module pulls in pydantic, which a plain
    `import voxd.tools.modelfetch` need not pay for."""
    from voxd.config import ConfigError, load_settings

    try:
        return load_settings(config).engine
    except ConfigError as exc:
        raise ModelFetchError(f"configuration error (pass {skip} to skip it):\n{exc}") from None


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


# --- download from the Hub ------------------------------------------------------


def model_format(directory: Path) -> str | None:
    """Format of the complete model in `directory` ("bf16", "q8", "q4"), or
    None when it is incomplete or damaged. Reads headers only."""
    for name in MODEL_FILES:
        path = directory / name
        if not path.is_file() or _check_file(path):
            return None
    return _weights_format(read_metadata(directory / WEIGHTS_FILE))


def _weights_format(meta: Mapping[str, str]) -> str:
    # voxd quantize records its format; a checkpoint as published is BF16.
    return meta.get("voxd_quantize", "bf16")


def read_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (empty when it has none)."""
    try:
        return st.read_header(path).string_metadata()
    except (st.SafetensorsError, OSError) as exc:
        raise ModelFetchError(str(exc)) from exc


def _check_network(endpoint: str) -> None:
    """Fail within seconds where the download cannot work at all (no DNS, no
    route), instead of huggingface_hub's minute of retries."""
    if urllib.request.getproxies():
        return  # the proxy resolves and connects for us
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    offline = (
        "copy the model from another machine with `voxd model download --from DIR`, "
        "or connect this one and run the command again"
    )
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ModelFetchError(
            f"cannot resolve {host} ({exc.strerror}): this machine has no working DNS or no "
            f"network; {offline}"
        ) from None
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ModelFetchError(
            f"cannot connect to {host} port {port} ({exc.strerror or exc}): no route to the "
            f"Hub from this machine (a firewall, or a proxy that needs HTTPS_PROXY); {offline}"
        ) from None


@dataclass
class Hub:
    """Where and as whom to download: a repository on a Hub endpoint."""

    repo: str = DEFAULT_REPO
    revision: str | None = None
    token: str | None = None  # None: HF_TOKEN or the token `hf auth login` saved
    endpoint: str | None = None  # None: HF_ENDPOINT or huggingface.co
    quiet: bool = False

    @property
    def url(self) -> str:
        return (self.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")

    def fetch(self, name: str, local_dir: Path, *, dry_run: bool = False) -> Any:
        from huggingface_hub import hf_hub_download

        with self._errors(name):
            return hf_hub_download(
                self.repo,
                name,
                revision=self.revision,
                local_dir=local_dir,
                token=self.token,
                endpoint=self.url,
                library_name="voxd",
                dry_run=dry_run,
            )

    @contextlib.contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """huggingface_hub's exceptions as messages that say what to do."""
        import httpx2
        from huggingface_hub import errors as e

        page = f"{self.url}/{self.repo}"
        try:
            yield
        except e.GatedRepoError:
            raise ModelFetchError(
                f"{self.repo} is gated: accept its licence at {page} with your Hugging Face "
                f"account, then run again with HF_TOKEN set to a token of it ({TOKENS_URL})"
            ) from None
        except e.RepositoryNotFoundError:
            raise ModelFetchError(
                f"repository {self.repo} not found at {self.url}, or it needs a login: check "
                f"--repo, or run again with HF_TOKEN=hf_... ({TOKENS_URL})"
            ) from None
        except e.RevisionNotFoundError:
            raise ModelFetchError(f"{self.repo} has no revision {self.revision!r}") from None
        except e.RemoteEntryNotFoundError:
            raise ModelFetchError(
                f"{self.repo} has no file {name}: is it a Voxtral Realtime repository?"
            ) from None
        except e.HfHubHTTPError as exc:
            raise ModelFetchError(self._http_message(exc, name)) from None
        except e.LocalEntryNotFoundError as exc:
            cause = exc.__cause__ or exc
            raise ModelFetchError(
                f"cannot reach {self.url} for {name} ({cause}); check the network and run the "
                "command again"
            ) from None
        except (httpx2.HTTPError, OSError) as exc:
            raise ModelFetchError(
                f"downloading {name} failed: {exc}; run the command again (files already "
                "complete are kept)"
            ) from None

    def _http_message(self, exc: Any, name: str) -> str:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            return (
                f"the Hub refused the access token (HTTP 401 for {name}): HF_TOKEN (or the token "
                f"saved by `hf auth login`) is wrong or expired; create a read token at "
                f"{TOKENS_URL} and run again with HF_TOKEN=hf_..."
            )
        if status == 403:
            return (
                f"access to {self.repo} denied (HTTP 403 for {name}): accept the model's licence "
                f"at {self.url}/{self.repo} with the account of your token"
            )
        return f"the Hub answered HTTP {status} for {name}: {exc}; run the command again later"


@dataclass
class DownloadResult:
    fmt: str
    downloaded: list[str] = field(default_factory=list)
    quantized: bool = False
    bf16_dir: Path | None = None  # where the BF16 checkpoint is, when kept

    @property
    def changed(self) -> bool:
        return bool(self.downloaded) or self.quantized


def _bf16_dir(target: Path, fmt: str) -> Path:
    return target if fmt == "bf16" else target / BF16_SUBDIR


def download_model(
    target: Path,
    fmt: str = "auto",
    *,
    hub: Hub | None = None,
    keep_bf16: bool = False,
    digests: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> DownloadResult:
    """Install the model in `target` in format `fmt` (auto: from this machine's
    memory), downloading the BF16 checkpoint unless it is already there.

    A second run with the same format does nothing and asks nothing of the
    network; one with another format re-quantizes (downloading again unless
    the BF16 checkpoint was kept)."""
    hub = hub or Hub()
    target = Path(target)
    result = DownloadResult(resolve_format(fmt))
    src = _bf16_dir(target, result.fmt)
    with _dir_lock(target):
        done = model_format(target) == result.fmt
        if done and (not keep_bf16 or model_format(src) == "bf16"):
            result.bf16_dir = src if model_format(src) == "bf16" else None
            return result
        if src != target and model_format(target) == "bf16" and model_format(src) != "bf16":
            # The checkpoint itself is installed: quantize it rather than
            # download it again (a rename, on the same filesystem).
            src.mkdir(exist_ok=True)
            for name in MODEL_FILES:
                os.replace(target / name, src / name)
        if model_format(src) != "bf16":
            result.downloaded = _download_bf16(src, hub, result.fmt)
        for name in MODEL_FILES:
            _verify_digest(src / name, name, digests)
        if result.fmt != "bf16" and not done:
            _quantize(src, target, result.fmt, quiet=quiet)
            result.quantized = True
        if result.fmt != "bf16" and not keep_bf16:
            shutil.rmtree(src)
        result.bf16_dir = src if src.exists() else None
    return result


def _download_bf16(src: Path, hub: Hub, fmt: str) -> list[str]:
    from huggingface_hub.utils.tqdm import disable_progress_bars

    _check_network(hub.url)
    with disable_progress_bars() if hub.quiet else contextlib.nullcontext():
        return _download_files(src, hub, fmt)


def _download_files(src: Path, hub: Hub, fmt: str) -> list[str]:
    src.mkdir(parents=True, exist_ok=True)
    # Ask for every file's size first (HEAD requests) so that a full disk is
    # reported before gigabytes are downloaded, not after.
    plans = [hub.fetch(name, src, dry_run=True) for name in MODEL_FILES]
    need = sum(int(p.file_size or 0) for p in plans if p.will_download)
    weights = next(int(p.file_size or 0) for p in plans if p.filename == WEIGHTS_FILE)
    if fmt != "bf16":
        need += weights * WEIGHT_BYTES[fmt] // WEIGHT_BYTES["bf16"]
    _check_space(src, need)
    fetched = []
    for p in plans:
        if p.will_download:
            size = _human(p.file_size or 0)
            _say(hub.quiet, f"downloading {p.filename} ({size}) from {hub.url}/{hub.repo}")
        hub.fetch(p.filename, src)
        if p.will_download:
            fetched.append(p.filename)
    problems = [msg for name in MODEL_FILES for msg in _check_file(src / name)]
    if problems:
        raise ModelFetchError("the downloaded checkpoint is damaged: " + "; ".join(problems))
    return fetched


def _quantize(src: Path, target: Path, fmt: str, *, quiet: bool) -> None:
    from voxd.tools.quantize import Options, QuantizeError, quantize_model

    _say(quiet, f"quantizing {src / WEIGHTS_FILE} to {fmt} into {target}")
    bar = None if quiet else _QuantizeBar(fmt)
    try:
        quantize_model(src, target, Options(fmt=fmt.upper()), progress=bar)
    except (QuantizeError, OSError) as exc:
        raise ModelFetchError(f"quantizing to {fmt} failed: {exc}") from exc
    finally:
        if bar is not None:
            bar.close()


def _say(quiet: bool, message: str) -> None:
    """A step of a long command, on stderr: also in logs, where progress bars
    are off (a download of gigabytes should not look like a hang)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


class _QuantizeBar:
    """tqdm (huggingface_hub's progress bars use it too) fed with bytes written."""

    def __init__(self, fmt: str) -> None:
        from huggingface_hub.utils.tqdm import tqdm

        self._bar = tqdm(  # type: ignore[no-untyped-call]
            # disable=None: on a terminal only, like huggingface_hub's bars
            desc=f"quantize {fmt}",
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            disable=None,
        )

    def __call__(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


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

    The header is checked as the engine checks it (voxd.tools.safetensors);
    beyond that the tensors must tile the data exactly, as every writer lays
    them out: trailing bytes mean the file is not the one its header describes.
    """
    try:
        header = st.read_header(path)
    except st.SafetensorsError as exc:
        return [str(exc).replace(f"{path}: ", f"{path.name}: ", 1)]
    if header.data_end != header.data_size:
        return [
            f"{path.name}: tensors end at byte {header.data_end} of {header.data_size} bytes of "
            "data; the file has trailing data or is not the one its header describes"
        ]
    return []


def check_model(
    directory: Path,
    *,
    files: Sequence[str] = MODEL_FILES,
    digests: Mapping[str, str] | None = None,
) -> list[str]:
    """Everything wrong with a model directory, as messages (empty: usable)."""
    directory = Path(directory)
    try:
        os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return [f"{directory} does not exist or is not a directory"]
    except OSError as exc:  # e.g. the service's 0750 directory, read by another user
        return [
            f"cannot read {directory} ({exc.strerror}): check it as a user who can, "
            f"e.g. the service's model with `sudo -u voxd voxd model check`"
        ]
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


def _target_and_format(args: argparse.Namespace) -> tuple[Path, str]:
    """--dir and --format, else engine.model_dir and engine.format of the config."""
    fmt: str | None = getattr(args, "format", None)
    if args.dir and (fmt or not hasattr(args, "format")):
        return Path(args.dir), fmt or "auto"
    engine = configured_engine(
        args.config, "--dir and --format" if hasattr(args, "format") else "--dir"
    )
    return Path(args.dir or engine.model_dir), str(fmt or engine.format)


def install_local(
    source: Path,
    target: Path,
    fmt: str,
    *,
    link: bool = False,
    digests: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    quiet: bool = False,
) -> tuple[str, list[str]]:
    """`--from DIR`: quantize a BF16 model directory into `target` when another
    format is wanted, else copy it; returns (format installed, files written)."""
    fmt = resolve_format(fmt)
    have = model_format(Path(source)) if Path(source).is_dir() else None
    if have == "bf16" and fmt != "bf16":
        for name in MODEL_FILES:
            _verify_digest(Path(source) / name, name, digests)
        with _dir_lock(target):
            if model_format(target) == fmt:
                return fmt, []
            _quantize(Path(source), target, fmt, quiet=quiet)
        return fmt, list(MODEL_FILES)
    if have is not None and have != fmt:
        log.warning("%s holds a %s model; installing it as it is (not %s)", source, have, fmt)
    done = install_from_dir(source, target, link=link, digests=digests, progress=progress)
    return have or fmt, done


def _cmd_download(args: argparse.Namespace) -> int:
    try:
        target, fmt = _target_and_format(args)
        digests = read_manifest(Path(args.sha256)) if args.sha256 else None
        if args.source:
            progress = None if args.quiet else _ProgressPrinter()
            fmt, done = install_local(
                Path(args.source), target, fmt, link=args.link, digests=digests,
                progress=progress, quiet=args.quiet,
            )  # fmt: skip
            changed = bool(done)
        else:
            hub = Hub(repo=args.repo, revision=args.revision, quiet=args.quiet)
            result = download_model(
                target, fmt, hub=hub, keep_bf16=args.keep_bf16, digests=digests, quiet=args.quiet
            )
            fmt, changed = result.fmt, result.changed
    except ModelFetchError as exc:
        print(f"voxd model download: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nvoxd model download: interrupted; run it again to continue", file=sys.stderr)
        return 130
    if changed:
        print(f"{fmt} model installed in {target}")
    else:
        print(f"{fmt} model already in {target}; nothing to do")
    if not args.source and result.bf16_dir is not None and result.bf16_dir != target:
        print(f"BF16 checkpoint kept in {result.bf16_dir}")
    return 0


def describe_model(directory: Path) -> str:
    """What the weights are: "<format> checkpoint", or "random test model (preset X)"."""
    meta = read_metadata(directory / WEIGHTS_FILE)
    fmt = _weights_format(meta)
    preset = meta.get("voxd_random_model")
    if preset is not None:
        return f"random test model (preset {preset}), {fmt}: it transcribes nothing"
    return f"{fmt} checkpoint"


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        target = Path(args.dir) if args.dir else _target_and_format(args)[0]
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
    try:
        kind = describe_model(target)
    except ModelFetchError as exc:
        print(f"voxd model check: {exc}", file=sys.stderr)
        return 1
    print(f"model in {target} looks complete: {kind}")
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
        help="download the model from the Hugging Face Hub, or install it from a local directory",
        description="Download the BF16 checkpoint from the Hugging Face Hub and quantize it to "
        "the format this machine's memory takes (engine.format; auto: q8 with 6.3 GB of RAM or "
        "more, else q4). Set HF_TOKEN if the repository needs a login, HF_ENDPOINT for a "
        "mirror. A second run does nothing.",
    )
    dl.add_argument("--dir", metavar="DIR", help="model directory (default: engine.model_dir)")
    dl.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        help="weight format to install (default: engine.format, auto)",
    )
    dl.add_argument("--keep-bf16", action="store_true", help="keep the BF16 checkpoint in DIR/bf16")
    dl.add_argument(
        "--from", dest="source", metavar="SRC", help="install from a local model directory"
    )
    dl.add_argument(
        "--repo", default=DEFAULT_REPO, help=f"Hub repository (default: {DEFAULT_REPO})"
    )
    dl.add_argument("--revision", help="branch, tag or commit of the repository (default: main)")
    dl.add_argument(
        "--link", action="store_true", help="with --from: hard-link instead of copying if possible"
    )
    dl.add_argument("--sha256", metavar="FILE", help="verify against a sha256sum-style manifest")
    dl.add_argument("--config", type=Path, help="configuration file (default: /etc/voxd/voxd.toml)")
    dl.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    dl.set_defaults(func=_cmd_download)

    ck = actions.add_parser(
        "check",
        help="check that the model files are complete, and whether they are a real checkpoint",
    )
    ck.add_argument("--dir", metavar="DIR", help="model directory (default: engine.model_dir)")
    ck.add_argument("--sha256", metavar="FILE", help="also verify a sha256sum-style manifest")
    ck.add_argument("--config", type=Path, help="configuration file (default: /etc/voxd/voxd.toml)")
    ck.set_defaults(func=_cmd_check)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m voxd.tools.modelfetch model download ...`, usable without the CLI."""
    parser = argparse.ArgumentParser(prog="python -m voxd.tools.modelfetch")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
