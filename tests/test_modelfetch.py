"""Model download and install, against a real HTTP server on 127.0.0.1.

http.server's SimpleHTTPRequestHandler ignores Range, so the test server
below implements just enough of RFC 9110 byte ranges (`bytes=N-`) to
exercise resumption, plus knobs to misbehave: drop the connection halfway
through a file once, or announce more bytes than it sends.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from voxd import modelfetch
from voxd.modelfetch import (
    MODEL_FILES,
    ModelFetchError,
    check_model,
    check_safetensors,
    download_model,
    install_from_dir,
)

# --- a small but well-formed fake model ----------------------------------------


def make_safetensors(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def random_f32(n: int) -> bytes:
    """n random finite float32 values (random bytes would hold NaN/Inf, which
    `voxd model check` rightly reports)."""
    ints = struct.unpack(f"<{n}i", os.urandom(4 * n))
    return struct.pack(f"<{n}f", *(i / 2**31 for i in ints))


def random_bf16(n: int) -> bytes:
    f32 = random_f32(n)
    return b"".join(f32[i + 2 : i + 4] for i in range(0, len(f32), 4))  # the high halves


def fake_model_files() -> dict[str, bytes]:
    weights = make_safetensors(
        {
            "embed.weight": ("F32", [64, 256], random_f32(64 * 256)),
            "norm.weight": ("BF16", [256], random_bf16(256)),
        }
    )
    return {
        "params.json": json.dumps({"dim": 256, "n_layers": 2}).encode(),
        "tekken.json": json.dumps({"vocab": ["a", "b"] * 500}).encode(),
        "consolidated.safetensors": weights,
    }


# --- the test server -------------------------------------------------------------


class FakeHub:
    """Serves `files` under /<name>; records (name, Range header) per request."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()  # send half the body, then hang up
        self.extra: dict[str, int] = {}  # announce this many bytes more than exist
        self.chunked: set[str] = set()  # no Content-Length, chunked encoding
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # http.server dispatches on this name
                hub.serve(self)

        return Handler

    def serve(self, req: BaseHTTPRequestHandler) -> None:
        name = req.path.lstrip("/")
        rng = req.headers.get("Range")
        with self.lock:
            self.requests.append((name, rng))
            data = self.files.get(name)
            drop = name in self.drop_once
            self.drop_once.discard(name)
            claimed = len(data) + self.extra.get(name, 0) if data is not None else 0
        if data is None:
            req.send_error(404)
            return
        if name in self.chunked:
            self.serve_chunked(req, data, drop)
            return
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        if start >= claimed and rng:
            req.send_response(416)
            req.send_header("Content-Range", f"bytes */{claimed}")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        req.send_response(206 if rng else 200)
        if rng:
            req.send_header("Content-Range", f"bytes {start}-{claimed - 1}/{claimed}")
        req.send_header("Content-Length", str(claimed - start))
        req.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        req.end_headers()
        body = data[start:]
        # HTTP/1.0 (the handler's default): the connection closes after this,
        # so sending less than Content-Length is a dropped transfer.
        req.wfile.write(body[: len(body) // 2] if drop else body)

    @staticmethod
    def serve_chunked(req: BaseHTTPRequestHandler, data: bytes, drop: bool) -> None:
        # Like a dynamic origin: ignores Range, sends no size.
        req.protocol_version = "HTTP/1.1"
        req.close_connection = True
        req.send_response(200)
        req.send_header("Transfer-Encoding", "chunked")
        req.send_header("Connection", "close")
        req.end_headers()
        piece = 1000
        for i in range(0, len(data), piece):
            if drop and i >= len(data) // 2:
                return  # hang up without the terminating zero-size chunk
            block = data[i : i + piece]
            req.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        req.wfile.write(b"0\r\n\r\n")

    def ranges_for(self, name: str) -> list[str | None]:
        return [r for n, r in self.requests if n == name]


@pytest.fixture
def model_files() -> dict[str, bytes]:
    return fake_model_files()


@pytest.fixture
def hub(model_files: dict[str, bytes]) -> Iterator[FakeHub]:
    h = FakeHub(model_files)
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


def fetch(target: Path, hub: FakeHub, **kw: object) -> list[str]:
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 10.0)
    return download_model(target, hub.url, **kw)  # type: ignore[arg-type]


def assert_installed(target: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    leftovers = [p.name for p in target.iterdir() if p.name.endswith((".part", ".part.json"))]
    assert leftovers == []


# --- download ----------------------------------------------------------------------


def test_full_download(tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]) -> None:
    seen: list[tuple[str, int, int | None]] = []
    got = fetch(tmp_path / "model", hub, progress=lambda *a: seen.append(a))
    assert got == list(MODEL_FILES)
    assert_installed(tmp_path / "model", model_files)
    assert check_model(tmp_path / "model") == []
    # Small files first, and progress ends at the announced size.
    assert [n for n, _ in hub.requests] == list(MODEL_FILES)
    weights = len(model_files["consolidated.safetensors"])
    assert ("consolidated.safetensors", weights, weights) in seen


def test_second_run_does_nothing(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    fetch(tmp_path, hub)
    hub.requests.clear()
    assert fetch(tmp_path, hub) == []
    assert hub.requests == []  # not even a request
    assert_installed(tmp_path, model_files)


def test_resume_in_a_later_run_after_a_dropped_connection(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    name = "consolidated.safetensors"
    size = len(model_files[name])
    hub.drop_once.add(name)
    with pytest.raises(ModelFetchError, match=rf"after {size // 2} of {size} bytes.*resume"):
        fetch(tmp_path, hub, retries=0)
    assert not (tmp_path / name).exists()  # never a partial file under the final name
    assert (tmp_path / (name + ".part")).stat().st_size == size // 2

    assert fetch(tmp_path, hub) == [name]  # the small files were already done
    assert hub.ranges_for(name) == [None, f"bytes={size // 2}-"]
    assert_installed(tmp_path, model_files)


def test_retry_resumes_within_one_run(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    name = "tekken.json"
    hub.drop_once.add(name)
    assert fetch(tmp_path, hub) == list(MODEL_FILES)
    assert hub.ranges_for(name) == [None, f"bytes={len(model_files[name]) // 2}-"]
    assert_installed(tmp_path, model_files)


def test_size_mismatch_is_detected(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    # The server announces 10 bytes it never sends: the file must not be
    # accepted, however often we retry.
    name = "params.json"
    size = len(model_files[name])
    hub.extra[name] = 10
    with pytest.raises(ModelFetchError, match=rf"{size} of {size + 10} bytes.*3 attempts"):
        fetch(tmp_path, hub, retries=2)
    assert not (tmp_path / name).exists()


def test_chunked_response_without_size(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    name = "tekken.json"
    hub.chunked.add(name)
    hub.drop_once.add(name)  # the cut is seen from the framing; restart from 0
    assert fetch(tmp_path, hub) == list(MODEL_FILES)
    assert hub.ranges_for(name) == [None, None]
    assert_installed(tmp_path, model_files)


def test_partial_from_an_older_file_is_discarded(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    name = "consolidated.safetensors"
    hub.drop_once.add(name)
    with pytest.raises(ModelFetchError):
        fetch(tmp_path, hub, retries=0)
    # The repository is updated before the resume: a different, bigger file.
    newer = make_safetensors({"w": ("F16", [3000], os.urandom(6000))})
    hub.files[name] = newer
    fetch(tmp_path, hub)
    assert (tmp_path / name).read_bytes() == newer
    assert hub.ranges_for(name)[-1] is None  # restarted from byte 0


def test_complete_part_is_committed_without_refetching(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    # An earlier run got every byte but died before the rename.
    name = "params.json"
    data = model_files[name]
    (tmp_path / (name + ".part")).write_bytes(data)
    (tmp_path / (name + ".part.json")).write_text(json.dumps({"size": len(data), "etag": None}))
    fetch(tmp_path, hub)
    assert hub.ranges_for(name) == [f"bytes={len(data)}-"]  # answered 416
    assert_installed(tmp_path, model_files)


def test_part_without_sidecar_is_not_trusted(
    tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]
) -> None:
    name = "params.json"
    (tmp_path / (name + ".part")).write_bytes(b"garbage from somewhere")
    fetch(tmp_path, hub)
    assert hub.ranges_for(name) == [None]
    assert_installed(tmp_path, model_files)


def test_sha256_manifest(tmp_path: Path, hub: FakeHub, model_files: dict[str, bytes]) -> None:
    good = {n: hashlib.sha256(d).hexdigest() for n, d in model_files.items()}
    bad = dict(good, **{"tekken.json": "0" * 64})
    with pytest.raises(ModelFetchError, match="tekken.json: sha256 mismatch"):
        fetch(tmp_path / "a", hub, digests=bad)
    assert not (tmp_path / "a" / "tekken.json").exists()
    assert not (tmp_path / "a" / "tekken.json.part").exists()
    fetch(tmp_path / "b", hub, digests=good)
    assert_installed(tmp_path / "b", model_files)


def test_read_manifest(tmp_path: Path) -> None:
    digest = "ab" * 32
    (tmp_path / "SHA256SUMS").write_text(
        f"# comment\n{digest}  params.json\n{digest} *x/tekken.json\n"
    )
    assert modelfetch.read_manifest(tmp_path / "SHA256SUMS") == {
        "params.json": digest,
        "tekken.json": digest,
    }
    (tmp_path / "bad").write_text("nothex  params.json\n")
    with pytest.raises(ModelFetchError, match="bad:1"):
        modelfetch.read_manifest(tmp_path / "bad")


def test_http_404_is_a_clear_error(tmp_path: Path, hub: FakeHub) -> None:
    hub.files.pop("params.json")
    with pytest.raises(ModelFetchError, match=r"HTTP 404 .*/params.json.*check --url"):
        fetch(tmp_path, hub)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFetchError, match="cannot reach http://127.0.0.1:9/params.json"):
        download_model(tmp_path, "http://127.0.0.1:9", retries=0, timeout=5)


# --- install from a local directory ------------------------------------------------


@pytest.fixture
def local_model(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name, data in model_files.items():
        (src / name).write_bytes(data)
    return src


def test_install_from_local_dir(
    tmp_path: Path, local_model: Path, model_files: dict[str, bytes]
) -> None:
    target = tmp_path / "model"
    assert install_from_dir(local_model, target) == list(MODEL_FILES)
    assert_installed(target, model_files)
    assert not os.path.samefile(local_model / "params.json", target / "params.json")
    assert install_from_dir(local_model, target) == []  # idempotent


def test_install_from_local_dir_by_hard_link(tmp_path: Path, local_model: Path) -> None:
    target = tmp_path / "model"
    install_from_dir(local_model, target, link=True)
    for name in MODEL_FILES:
        assert os.path.samefile(local_model / name, target / name)


def test_install_from_incomplete_dir_touches_nothing(tmp_path: Path, local_model: Path) -> None:
    (local_model / "tekken.json").unlink()
    target = tmp_path / "model"
    with pytest.raises(ModelFetchError, match="missing tekken.json"):
        install_from_dir(local_model, target)
    assert not target.exists()


# --- check ---------------------------------------------------------------------------


def test_check_reports_missing_and_partial(tmp_path: Path) -> None:
    (tmp_path / "consolidated.safetensors.part").write_bytes(b"x")
    problems = check_model(tmp_path)
    assert len(problems) == 3
    assert "consolidated.safetensors: missing (a partial download exists" in problems[2]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:5], "too short"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "implausible header length"),
        (lambda b: b[:8] + b"{" * 4 + b[12:], "not valid JSON"),
        (lambda b: b[:-100], "outside the data"),
        (lambda b: b + b"\0" * 16, "trailing data"),
    ],
)
def test_check_safetensors_finds_damage(
    tmp_path: Path, model_files: dict[str, bytes], mangle: object, message: str
) -> None:
    path = tmp_path / "consolidated.safetensors"
    path.write_bytes(mangle(model_files["consolidated.safetensors"]))  # type: ignore[operator]
    problems = check_safetensors(path)
    assert problems and message in problems[0]


def test_check_safetensors_tensor_size_vs_shape(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(make_safetensors({"w": ("F32", [4, 4], b"\0" * 60)}))
    assert "needs 64" in check_safetensors(path)[0]


# --- command line ----------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voxd")
    modelfetch.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_download_then_check(
    tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    target = str(tmp_path / "m")
    assert cli(["model", "download", "--dir", target, "--url", hub.url, "-q"]) == 0
    assert cli(["model", "download", "--dir", target, "--url", hub.url]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli(["model", "check", "--dir", target]) == 0
    weights = tmp_path / "m" / "consolidated.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    assert cli(["model", "check", "--dir", target]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err


def test_cli_download_from_local_dir(tmp_path: Path, local_model: Path) -> None:
    target = tmp_path / "m"
    assert cli(["model", "download", "--dir", str(target), "--from", str(local_model), "-q"]) == 0
    assert cli(["model", "check", "--dir", str(target)]) == 0


def test_cli_errors_are_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope")
    assert cli(["model", "download", "--dir", str(tmp_path), "--from", missing]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert cli(["model", "check", "--dir", missing]) == 1
    assert cli(["model"]) == 2  # no sub-command: help, usage error


def test_module_entry_point_is_wired() -> None:
    with pytest.raises(SystemExit) as exc:
        modelfetch.main(["model", "download", "--help"])
    assert exc.value.code == 0


def test_progress_lines_are_sparse_when_not_a_terminal() -> None:
    buf = io.StringIO()
    show = modelfetch._ProgressPrinter(buf, every_s=3600)
    for done in (10, 50, 100):
        show("x", done, 100)
    assert buf.getvalue().splitlines() == ["x: 10 B / 100 B (10%)", "x: 100 B / 100 B (100%)"]
