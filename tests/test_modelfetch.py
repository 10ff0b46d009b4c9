"""Model download, install and check.

Downloads go through huggingface_hub against a real HTTP server on 127.0.0.1
that answers the Hub paths huggingface_hub uses: HEAD and GET
/<repo>/resolve/<revision>/<file> with X-Repo-Commit and ETag, small files
served directly, the large one redirected to a "CDN" host (localhost instead
of 127.0.0.1, so huggingface_hub treats it as another host, as it does
the real Hub's CDN) with X-Linked-Size / X-Linked-Etag, and byte ranges on
the CDN. Knobs make it misbehave: drop a transfer halfway once, demand a
token, forget a file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from voxd import modelsize
from voxd.engine import Engine
from voxd.modelsize import MemInfo
from voxd.tools import modelfetch
from voxd.tools import quantize as qz
from voxd.tools.devmodel import FULL, RANDOM_MODEL_KEY, TINY, make_model, tensor_specs
from voxd.tools.modelfetch import (
    MODEL_FILES,
    Hub,
    ModelFetchError,
    check_model,
    check_safetensors,
    describe_model,
    download_model,
    install_from_dir,
    install_local,
    model_format,
)

ROOT = Path(__file__).resolve().parent.parent

REPO = "voxd-test/tiny-realtime"
COMMIT = "3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e"
WEIGHTS = "consolidated.safetensors"

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


@pytest.fixture
def model_files() -> dict[str, bytes]:
    return fake_model_files()


def assert_installed(target: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    leftovers = [p.name for p in target.iterdir() if p.name.endswith((".part", ".part.json"))]
    assert leftovers == []


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A loadable tiny random model (BF16), as the Hub would serve a checkpoint."""
    d = tmp_path_factory.mktemp("tiny_src")
    make_model(d, TINY, seed=4)
    return {name: (d / name).read_bytes() for name in MODEL_FILES}


# --- the test Hub ----------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: str | None


class FakeHub:
    """Serves `files` as repository REPO at revision main (= COMMIT)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.token: str | None = None  # when set, resolve requests need it
        self.drop_once: set[str] = set()  # send half the body, then hang up
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.cdn = f"http://localhost:{port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # http.server dispatches on these names
                hub.serve(self, head=True)

            def do_GET(self) -> None:
                hub.serve(self, head=False)

        return Handler

    def gets(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + name)]

    def serve(self, req: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(req.path).path)
        with self.lock:
            self.requests.append(
                Request(
                    "HEAD" if head else "GET",
                    path,
                    req.headers.get("Range"),
                    req.headers.get("Authorization"),
                )
            )
        if path.startswith("/cdn/"):
            self.serve_body(req, path.removeprefix("/cdn/"), head=head)
            return
        prefix = f"/{REPO}/resolve/"
        if not path.startswith(prefix):
            # What the Hub answers for a repository it does not know.
            self.error(req, 401, code="RepoNotFound", message="Repository not found")
            return
        revision, _, name = path.removeprefix(prefix).partition("/")
        if self.token is not None and not self.authorized(req):
            return
        if revision not in ("main", COMMIT):
            self.error(req, 404, code="RevisionNotFound", message="Invalid rev id")
            return
        if name not in self.files:
            self.error(req, 404, code="EntryNotFound", message="Entry not found")
            return
        data = self.files[name]
        if name == WEIGHTS:  # stored in LFS: the Hub redirects to its CDN
            req.send_response(302)
            req.send_header("Location", f"{self.cdn}/cdn/{name}")
            req.send_header("X-Repo-Commit", COMMIT)
            req.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            req.send_header("X-Linked-Size", str(len(data)))
            req.send_header("ETag", '"redirect"')
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        self.serve_body(req, name, head=head)

    def authorized(self, req: BaseHTTPRequestHandler) -> bool:
        auth = req.headers.get("Authorization")
        if auth is None:
            self.error(req, 401, code="GatedRepo", message="Access to model is restricted")
            return False
        if auth != f"Bearer {self.token}":
            self.error(req, 401, message="Invalid credentials in Authorization header")
            return False
        return True

    @staticmethod
    def error(
        req: BaseHTTPRequestHandler, status: int, *, message: str, code: str | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        req.send_response(status)
        if code is not None:
            req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", message)
        req.send_header("X-Repo-Commit", COMMIT)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def serve_body(self, req: BaseHTTPRequestHandler, name: str, *, head: bool) -> None:
        data = self.files.get(name)
        if data is None:
            self.error(req, 404, message="no such object")
            return
        rng = req.headers.get("Range")
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        with self.lock:
            drop = not head and name in self.drop_once
            self.drop_once.discard(name)
        req.send_response(206 if rng else 200)
        if rng:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.send_header("Content-Length", str(len(data) - start))
        # small (git) files: the blob's sha1 as the Hub sends; LFS ones: sha256
        req.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        req.send_header("X-Repo-Commit", COMMIT)
        req.end_headers()
        if head:
            return
        body = data[start:]
        # HTTP/1.0 (the handler's default): the connection closes after this,
        # so sending less than Content-Length is a dropped transfer.
        req.wfile.write(body[: len(body) // 2] if drop else body)


@pytest.fixture
def hub(tiny_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    for var in ("HF_TOKEN", "HF_ENDPOINT", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    h = FakeHub(tiny_files)
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


def at(hub: FakeHub, token: str | None = None) -> Hub:
    return Hub(repo=REPO, endpoint=hub.url, token=token, quiet=True)


# --- download from the Hub ---------------------------------------------------------


def test_download_quantizes_and_drops_the_bf16_files(
    tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes]
) -> None:
    target = tmp_path / "model"
    result = download_model(target, "q4", hub=at(hub), quiet=True)
    assert (result.fmt, result.downloaded, result.quantized) == ("q4", list(MODEL_FILES), True)
    assert check_model(target) == []
    assert model_format(target) == "q4"
    assert not (target / "bf16").exists() and result.bf16_dir is None
    for name in ("params.json", "tekken.json"):
        assert (target / name).read_bytes() == tiny_files[name]
    # The marker of a random model survives quantization.
    assert modelfetch.read_metadata(target / WEIGHTS)[RANDOM_MODEL_KEY] == "tiny"
    with Engine(target) as engine:
        assert engine.info.dim == TINY.dim
    # The weights came from the CDN after the redirect, small files first.
    gets = [r.path for r in hub.requests if r.method == "GET"]
    assert gets == [f"/{REPO}/resolve/main/params.json", f"/{REPO}/resolve/main/tekken.json",
                    f"/cdn/{WEIGHTS}"]  # fmt: skip


def test_second_run_asks_nothing(tmp_path: Path, hub: FakeHub) -> None:
    download_model(tmp_path, "q8", hub=at(hub), quiet=True)
    hub.requests.clear()
    result = download_model(tmp_path, "q8", hub=at(hub), quiet=True)
    assert not result.changed
    assert hub.requests == []  # not even a request


def test_keep_bf16_then_another_format_without_downloading(
    tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes]
) -> None:
    result = download_model(tmp_path, "q8", hub=at(hub), keep_bf16=True, quiet=True)
    assert result.bf16_dir == tmp_path / "bf16"
    for name, data in tiny_files.items():
        assert (tmp_path / "bf16" / name).read_bytes() == data
    assert model_format(tmp_path) == "q8"
    hub.requests.clear()
    again = download_model(tmp_path, "q4", hub=at(hub), keep_bf16=True, quiet=True)
    assert (again.downloaded, again.quantized) == ([], True)
    assert model_format(tmp_path) == "q4"
    assert hub.requests == []


def test_bf16_goes_straight_into_the_directory(
    tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes]
) -> None:
    result = download_model(tmp_path, "bf16", hub=at(hub), quiet=True)
    assert (result.fmt, result.quantized) == ("bf16", False)
    for name, data in tiny_files.items():
        assert (tmp_path / name).read_bytes() == data


def test_an_installed_bf16_model_is_quantized_without_downloading(
    tmp_path: Path, hub: FakeHub
) -> None:
    download_model(tmp_path, "bf16", hub=at(hub), quiet=True)
    hub.requests.clear()
    result = download_model(tmp_path, "q8", hub=at(hub), quiet=True)
    assert (result.downloaded, result.quantized, result.bf16_dir) == ([], True, None)
    assert model_format(tmp_path) == "q8" and not (tmp_path / "bf16").exists()
    assert hub.requests == []


def test_a_dropped_transfer_resumes_with_a_range_request(tmp_path: Path, hub: FakeHub) -> None:
    # huggingface_hub keeps what it received in whole 10 MB chunks, so the
    # file must be a few of them for a resume to start past byte 0.
    big = make_safetensors({"w": ("F32", [3, 2 << 20], os.urandom(24 << 20))})
    hub.files[WEIGHTS] = big
    hub.drop_once.add(WEIGHTS)
    download_model(tmp_path, "bf16", hub=at(hub), quiet=True)
    ranges = [r.range for r in hub.gets(WEIGHTS)]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] is not None
    start = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(big) // 2  # resumed where the data stopped, not from 0
    assert (tmp_path / WEIGHTS).read_bytes() == big


def test_token_goes_to_the_hub_not_to_the_cdn(tmp_path: Path, hub: FakeHub) -> None:
    hub.token = "hf_right"
    download_model(tmp_path, "q8", hub=at(hub, token="hf_right"), quiet=True)
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(r.auth == "Bearer hf_right" for r in resolves)
    assert [r.auth for r in hub.gets(WEIGHTS)] == [None]


def test_a_wrong_token_is_a_clear_error(tmp_path: Path, hub: FakeHub) -> None:
    hub.token = "hf_right"
    with pytest.raises(ModelFetchError, match=r"refused the access token \(HTTP 401.*HF_TOKEN="):
        download_model(tmp_path / "m", "q8", hub=at(hub, token="hf_wrong"), quiet=True)
    assert not (tmp_path / "m" / WEIGHTS).exists()
    assert [r for r in hub.requests if r.method == "GET"] == []


def test_no_token_for_a_gated_repository(tmp_path: Path, hub: FakeHub) -> None:
    hub.token = "hf_right"
    with pytest.raises(ModelFetchError, match=r"is gated: accept its licence at .*HF_TOKEN"):
        download_model(tmp_path, "q8", hub=at(hub), quiet=True)


def test_missing_file_and_unknown_repository(tmp_path: Path, hub: FakeHub) -> None:
    del hub.files["tekken.json"]
    with pytest.raises(ModelFetchError, match="has no file tekken.json"):
        download_model(tmp_path / "a", "q8", hub=at(hub), quiet=True)
    other = Hub(repo="nobody/nothing", endpoint=hub.url, quiet=True)
    with pytest.raises(ModelFetchError, match="repository nobody/nothing not found"):
        download_model(tmp_path / "b", "q8", hub=other, quiet=True)


def test_no_dns_fails_at_once(tmp_path: Path, hub: FakeHub) -> None:
    # .invalid never resolves (RFC 2606), with or without a network.
    offline = Hub(repo=REPO, endpoint="http://voxd-test.invalid", quiet=True)
    with pytest.raises(ModelFetchError, match=r"cannot resolve voxd-test.invalid .*--from DIR"):
        download_model(tmp_path, "q8", hub=offline, quiet=True)


def test_refused_connection_fails_at_once(tmp_path: Path, hub: FakeHub) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = Hub(repo=REPO, endpoint=f"http://127.0.0.1:{port}", quiet=True)
    with pytest.raises(ModelFetchError, match=rf"cannot connect to 127.0.0.1 port {port}"):
        download_model(tmp_path, "q8", hub=closed, quiet=True)


def test_sha256_manifest(tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes]) -> None:
    good = {n: hashlib.sha256(d).hexdigest() for n, d in tiny_files.items()}
    bad = dict(good, **{"tekken.json": "0" * 64})
    with pytest.raises(ModelFetchError, match="tekken.json: sha256 mismatch"):
        download_model(tmp_path / "a", "bf16", hub=at(hub), digests=bad, quiet=True)
    assert not (tmp_path / "a" / "tekken.json").exists()
    download_model(tmp_path / "b", "bf16", hub=at(hub), digests=good, quiet=True)
    assert_installed(tmp_path / "b", tiny_files)


# --- formats and memory -----------------------------------------------------------


def test_weight_sizes_follow_the_quantizer_layout() -> None:
    # modelsize's figures are those of the real shapes in each format.
    tensors, offset = [], 0
    for name, shape, _, _ in tensor_specs(FULL):
        n = int(np.prod(shape)) * 2
        tensors.append(qz.SourceTensor(name, "BF16", tuple(shape), offset, n))
        offset += n
    assert modelsize.WEIGHT_BYTES["bf16"] == offset
    for fmt in ("q8", "q4"):
        plan = qz.make_plan(tensors, qz.Options(fmt=fmt.upper()))
        assert modelsize.WEIGHT_BYTES[fmt] == sum(e.nbytes for e in plan)


@pytest.mark.parametrize(
    ("mem_total_kb", "fmt"),
    [(2_000_000, "q4"), (4_045_000, "q4"), (6_000_000, "q4"), (8_050_000, "q8"),
     (16_200_000, "q8")],
)  # fmt: skip
def test_auto_format_from_meminfo(tmp_path: Path, mem_total_kb: int, fmt: str) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {mem_total_kb} kB\nMemAvailable:   1000 kB\n")
    info = modelsize.read_meminfo(meminfo)
    assert info == MemInfo(mem_total_kb * 1024, 1000 * 1024)
    assert modelsize.resolve_format("auto", info) == fmt
    assert modelsize.resolve_format("bf16", info) == "bf16"


def test_fit_warning_with_numbers(tmp_path: Path) -> None:
    weights = tmp_path / WEIGHTS
    with weights.open("wb") as f:  # sparse: a 5 GB size without the disk space
        f.truncate(5_000_000_000)
    gib = 1 << 30
    small = modelsize.fit_warning(tmp_path, MemInfo(4 * gib, 3 * gib))
    assert small is not None
    assert "5.0 GB of files, 5.6 GB with the engine's caches" in small
    assert "4.3 GB of memory" in small and "--format q4" in small
    busy = modelsize.fit_warning(tmp_path, MemInfo(16 * gib, 2 * gib))
    assert busy is not None and "only 2.1 GB of this machine's 17.2 GB are available" in busy
    assert modelsize.fit_warning(tmp_path, MemInfo(16 * gib, 12 * gib)) is None
    assert modelsize.fit_warning(tmp_path / "none", MemInfo(gib, gib)) is None


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


def test_a_model_directory_it_cannot_read_is_named_as_such(tmp_path: Path) -> None:
    # The service's model (/var/lib/voxd is 0750 voxd) used by the user who
    # installed it: `model check` and the engine's load each say it cannot be
    # read, and how to check it; no traceback, no "missing".
    voxd = [sys.executable, "-m", "voxd.cli"]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        dac = "-dac_override,-dac_read_search"
        voxd = ["setpriv", f"--bounding-set={dac}", f"--inh-caps={dac}", "--", *voxd]
    closed, wav = tmp_path / "closed", tmp_path / "x.wav"
    model = closed / "model"
    make_model(model, TINY, seed=1)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    closed.chmod(0o000)
    try:
        check, load = (
            subprocess.run(
                voxd + args, capture_output=True, text=True, env=env, cwd="/", timeout=120
            )
            for args in (
                ["model", "check", "--dir", str(model)],
                ["transcribe", str(wav), "--model-dir", str(model)],
            )
        )
    finally:
        closed.chmod(0o700)
    assert check.returncode == 1, check.stderr
    assert "Traceback" not in check.stderr
    assert f"cannot read {model} (Permission denied)" in check.stderr
    assert "sudo -u voxd voxd model check" in check.stderr
    assert load.returncode == 2, load.stderr
    assert "params.json: cannot read it (Permission denied)" in load.stderr


def test_check_turns_an_unreadable_path_into_a_problem(tmp_path: Path) -> None:
    # Any error from looking at the directory (here a name too long, which
    # root meets as well) is reported as a problem, never raised.
    problems = check_model(tmp_path / ("x" * 300))
    assert len(problems) == 1 and "(File name too long)" in problems[0], problems


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


def test_install_local_quantizes_a_bf16_directory(
    tmp_path: Path, tiny_files: dict[str, bytes]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, data in tiny_files.items():
        (src / name).write_bytes(data)
    assert install_local(src, tmp_path / "m", "q8", quiet=True) == ("q8", list(MODEL_FILES))
    assert model_format(tmp_path / "m") == "q8"
    assert install_local(src, tmp_path / "m", "q8", quiet=True) == ("q8", [])


def test_describe_tells_a_checkpoint_from_a_random_model(
    tmp_path: Path, local_model: Path, tiny_files: dict[str, bytes]
) -> None:
    assert describe_model(local_model) == "bf16 checkpoint"
    for name, data in tiny_files.items():
        (tmp_path / name).write_bytes(data)
    assert describe_model(tmp_path).startswith("random test model (preset tiny), bf16")


# --- command line ----------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voxd")
    modelfetch.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_download_then_check(
    tmp_path: Path,
    hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    target = str(tmp_path / "m")
    args = ["model", "download", "--dir", target, "--repo", REPO, "--format", "q4"]
    assert cli([*args, "-q"]) == 0
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert f"q4 model installed in {target}\n" in out
    assert f"q4 model already in {target}; nothing to do" in out
    assert cli(["model", "check", "--dir", target]) == 0
    assert "looks complete: random test model (preset tiny), q4" in capsys.readouterr().out
    weights = tmp_path / "m" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1])
    assert cli(["model", "check", "--dir", target]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err


def test_cli_download_takes_dir_and_format_from_the_config(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    config = tmp_path / "voxd.toml"
    config.write_text(f'[engine]\nmodel_dir = "{tmp_path / "cfg"}"\nformat = "Q8"\n')
    assert cli(["model", "download", "--config", str(config), "--repo", REPO, "-q"]) == 0
    assert model_format(tmp_path / "cfg") == "q8"
    config.write_text('[engine]\nformat = "q5"\n')
    assert cli(["model", "download", "--config", str(config), "-q"]) == 1


def test_cli_download_errors(
    tmp_path: Path,
    hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://voxd-test.invalid")
    args = ["model", "download", "--dir", str(tmp_path), "--format", "q4", "-q"]
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("voxd model download: error: cannot resolve voxd-test.invalid")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.token = "hf_right"
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert cli([*args, "--repo", REPO]) == 1
    assert "refused the access token (HTTP 401" in capsys.readouterr().err


def test_cli_download_from_local_dir(tmp_path: Path, local_model: Path) -> None:
    target = tmp_path / "m"
    assert (
        cli(
            [
                "model",
                "download",
                "--dir",
                str(target),
                "--from",
                str(local_model),
                "--format",
                "bf16",
                "-q",
            ]
        )  # fmt: skip
        == 0
    )
    assert cli(["model", "check", "--dir", str(target)]) == 0


def test_cli_errors_are_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope")
    args = ["model", "download", "--dir", str(tmp_path), "--format", "bf16", "--from", missing]
    assert cli(args) == 1
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


def test_daemon_start_up_warns_when_the_model_does_not_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from voxd import daemon
    from voxd.config import EngineSettings, Settings
    from voxd.sdnotify import Notifier

    with (tmp_path / WEIGHTS).open("wb") as f:
        f.truncate(1 << 40)  # sparse: bigger than any machine's memory
    settings = Settings(engine=EngineSettings(model_dir=tmp_path))
    loaded = daemon.load_engine(settings, Notifier(None))
    assert isinstance(loaded, str)  # not a model at all, so it does not load either
    assert any("does not fit in this machine's" in r.getMessage() for r in caplog.records)
