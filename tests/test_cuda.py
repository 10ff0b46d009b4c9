"""The CUDA device (native/src/cuda/device_cuda.cu).

Everywhere: the CUDA sources compile for every listed architecture with warnings
as errors (skipped without nvcc), and backend "auto" / "cuda" say why when there
is no usable GPU.

On a machine with a GPU (scripts/gpu-check.sh): every device operation against
the CPU device (native/tests/cuda/test_cuda_ops.c, whose header states and justifies
each tolerance), the tiny models' token ids identical to the CPU engine's in BF16,
Q8 and Q4 and in several chunkings, the NumPy reference's logits within the
CPU's own tolerances, flushes and 50 utterances on one stream, and the
bandwidth probe. Without one these skip, saying why ("no CUDA device: <cause>"
or "engine built without CUDA").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import reference
from parity import rel_err
from speech import SENTENCES, have_espeak, synth

from voxd.engine import (
    DEBUG_ADAPTER,
    DEBUG_ENCODER,
    DEBUG_LOGITS,
    Engine,
    EngineError,
    TokenEvent,
    UtteranceEnd,
    cuda_membw,
    transcribe,
)

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "native" / "src" / "cuda").glob("*.cu"))
# The architectures native/CMakeLists.txt builds (VX_CUDA_ARCHS): SASS for Orin,
# Hopper and Thor, PTX for the rest.
ARCHS = ["sm_87", "sm_90", "sm_110", "compute_80"]
# The same strictness as the CMake build.
NVCC_FLAGS = [
    "-std=c++20",
    "-Werror=all-warnings",
    "-Xcompiler=-Wall,-Wextra,-Werror,-Wno-unused-parameter",
    "-DVX_HAVE_CUDA=1",
]
# The CPU engine's tolerances against the float64 reference (test_engine.py).
TOL = {"encoder": 5e-5, "adapter": 5e-5, "logits": 5e-5}


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").is_file():
        found = "/usr/local/cuda/bin/nvcc"
    return found


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_sources_compile(arch: str, source: Path, tmp_path: Path) -> None:
    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc not found (no CUDA toolkit): the CUDA sources cannot be compiled here")
    kind = "compute" if arch.startswith("compute") else "sm"
    num = arch.split("_")[1]
    gencode = f"arch=compute_{num},code={kind}_{num}"
    cmd = [
        compiler,
        *NVCC_FLAGS,
        f"-gencode={gencode}",
        f"-I{ROOT / 'native' / 'include'}",
        f"-I{ROOT / 'native' / 'src'}",
        "-c",
        str(source),
        "-o",
        str(tmp_path / "out.o"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}{done.stderr}"
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.fixture(scope="module")
def cuda_unusable(tiny_model_dir: Path) -> str | None:
    """Why backend "cuda" cannot load here (the engine's own words), or None."""
    try:
        with Engine(tiny_model_dir, backend="cuda"):
            return None
    except EngineError as err:
        return str(err)


def _skip_reason(why: str) -> str:
    if "built without CUDA" in why:
        return "engine built without CUDA"
    return why.split("no usable CUDA device: ", 1)[-1]


@pytest.fixture(scope="module")
def gpu(cuda_unusable: str | None) -> None:
    if cuda_unusable is not None:
        pytest.skip(_skip_reason(cuda_unusable))


# ---------------------------------------------------------------------------
# anywhere: the choice of device says why
# ---------------------------------------------------------------------------


def test_auto_backend_names_its_device_and_why(tiny_model_dir: Path) -> None:
    with Engine(tiny_model_dir, backend="auto") as engine:
        info = engine.info
        assert info.device in ("cpu", "cuda")
        # the CPU kernels always load; an x86 name says which int8 dot product ran
        assert info.backend.split("+")[0] in ("portable", "avx2", "neon")
        if info.device == "cpu":
            causes = ("no CUDA device", "built without CUDA", "unsupported architecture")
            causes += ("out of memory", "CUDA device 0")
            assert any(c in info.device_note for c in causes), info.device_note
        else:
            assert "sm_" in info.device_note and "GiB free" in info.device_note


def test_default_backend_stays_on_the_cpu(tiny_model_dir: Path) -> None:
    """NULL keeps the CPU: the exactness tests compare CPU bits on any machine."""
    with Engine(tiny_model_dir) as engine:
        assert engine.info.device == "cpu"


def test_cuda_request_without_a_device_names_the_cause(
    tiny_model_dir: Path, cuda_unusable: str | None
) -> None:
    if cuda_unusable is None:
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(EngineError) as err:
        Engine(tiny_model_dir, backend="cuda")
    msg = str(err.value)
    assert msg.startswith('backend "cuda": ')
    assert "no usable CUDA device: " in msg or "built without CUDA" in msg


def test_membw_without_a_device_says_why(cuda_unusable: str | None) -> None:
    if cuda_unusable is None:
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(EngineError, match="CUDA"):
        cuda_membw(1 << 20, 1)


# ---------------------------------------------------------------------------
# on a GPU
# ---------------------------------------------------------------------------


def test_every_op_matches_the_cpu_device(
    gpu: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """native/tests/cuda/test_cuda_ops.c, built here for this GPU with warnings as errors
    (or the one VOXD_CUDA_OPS_BIN names, which scripts/gpu-check.sh has just built)."""
    prebuilt = os.environ.get("VOXD_CUDA_OPS_BIN")
    if prebuilt:
        run = subprocess.run([prebuilt], capture_output=True, text=True, timeout=300)
        print(run.stdout)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
        assert "checks passed" in run.stdout
        return
    build = tmp_path_factory.mktemp("cuda_ops_build")
    configure = [
        "cmake",
        "-S",
        str(ROOT / "native"),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DVX_CUDA=ON",
        "-DVX_BUILD_TESTS=ON",
        "-DVX_CUDA_ARCHS=native",
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run = subprocess.run(
        [str(build / "tests" / "test_cuda_ops")], capture_output=True, text=True, timeout=300
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    assert "all" in run.stdout and "checks passed" in run.stdout


CLIPS = {k: SENTENCES[k] for k in ("hello", "numbers")}


def voiced(seconds: float, seed: int) -> np.ndarray:
    """A voiced, syllable-shaped signal (harmonics of a gliding pitch under a 4 Hz
    envelope, seeded). For GPU machines without espeak-ng: the GPU-vs-CPU checks
    need audio that drives the models through many different tokens, not words."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    return (0.2 * x * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    if have_espeak():
        return {k: synth(v) for k, v in CLIPS.items()}
    return {k: voiced(3.0, seed) for seed, k in enumerate(CLIPS)}


@pytest.fixture(scope="module")
def model_dirs(
    tiny_model_dir: Path, tiny2_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """tiny and tiny2 as made (BF16) and quantized to Q8 and Q4."""
    from voxd import quantize

    dirs = {"tiny-bf16": tiny_model_dir, "tiny2-bf16": tiny2_model_dir}
    for name, src in (("tiny", tiny_model_dir), ("tiny2", tiny2_model_dir)):
        for fmt in ("q8", "q4"):
            out = tmp_path_factory.mktemp(f"{name}-{fmt}")
            shutil.rmtree(out)
            assert quantize.main(["quantize", str(src), str(out), "--format", fmt, "-q"]) == 0
            dirs[f"{name}-{fmt}"] = out
    return dirs


MODELS = [f"{m}-{f}" for m in ("tiny", "tiny2") for f in ("bf16", "q8", "q4")]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("chunk", [37, 1280, 4000, 0])
def test_token_ids_match_the_cpu_engine(
    gpu: None, model_dirs: dict[str, Path], clips: dict[str, np.ndarray], model: str, chunk: int
) -> None:
    with Engine(model_dirs[model]) as cpu, Engine(model_dirs[model], backend="cuda") as cuda:
        assert cuda.info.device == "cuda" and cpu.info.device == "cpu"
        for name, audio in clips.items():
            _, want = transcribe(cpu, audio)
            _, got = transcribe(cuda, audio, chunk=chunk)
            assert len(want) > 20, f"{name}: the clip gave too few tokens to tell anything"
            assert got == want, f"{model} {name} chunk={chunk}"


@pytest.mark.parametrize("model", ["tiny", "tiny2"])
def test_matches_the_reference_within_the_cpu_tolerances(
    gpu: None, request: pytest.FixtureRequest, model: str, clips: dict[str, np.ndarray]
) -> None:
    model_dir: Path = request.getfixturevalue(f"{model}_model_dir")
    ref_model: reference.RefModel = request.getfixturevalue(f"ref_{model}")
    audio = clips["hello"]
    ref = reference.transcribe(ref_model, audio, delay_ms=480)
    with Engine(model_dir, backend="cuda") as engine:
        s = engine.stream(kv_f32=True)  # the reference is float64
        s.enable_debug(DEBUG_ENCODER | DEBUG_ADAPTER | DEBUG_LOGITS)
        events = s.feed(audio) + s.finish()
        got = {
            "encoder": s.debug_tensor(DEBUG_ENCODER),
            "adapter": s.debug_tensor(DEBUG_ADAPTER),
            "logits": s.debug_tensor(DEBUG_LOGITS),
        }
        s.close()
    expected = {"encoder": ref.encoder_out, "adapter": ref.adapter_out, "logits": ref.logits}
    for name, tol in TOL.items():
        err = rel_err(got[name], expected[name])
        print(f"{model} {name}: relative error {err:.2e}")
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == ref.token_ids


def test_fifty_utterances_with_flushes(
    gpu: None, model_dirs: dict[str, Path], clips: dict[str, np.ndarray]
) -> None:
    """One stream, 50 utterances ended by flush: each gives the CPU's ids for its
    clip (the caches and activations are restored on the device every time)."""
    model_dir = model_dirs["tiny-q4"]
    with Engine(model_dir) as cpu:
        want = {name: transcribe(cpu, audio)[1] for name, audio in clips.items()}
    with Engine(model_dir, backend="cuda") as cuda:
        s = cuda.stream()
        names = list(clips)
        for i in range(50):
            name = names[i % len(names)]
            audio = clips[name]
            events = s.feed(audio[:7000]) + s.feed(audio[7000:]) + s.flush()
            assert isinstance(events[-1], UtteranceEnd)
            got = [e.token_id for e in events if isinstance(e, TokenEvent)]
            assert got == want[name], f"utterance {i} ({name})"
        s.close()


def test_membw_measures_the_gpu(gpu: None) -> None:
    gbs = cuda_membw(256 << 20, 5)
    print(f"CUDA read bandwidth: {gbs:.1f} GB/s")
    assert gbs > 1.0  # any GPU reads faster than 1 GB/s; a broken timer gives 0 or inf
    assert np.isfinite(gbs)
