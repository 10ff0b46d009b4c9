#!/usr/bin/env bash
# gpu-check.sh - check the CUDA device on a machine with one NVIDIA GPU, nvcc,
# Python 3.12 and no network (about 16 cores: it is sized to finish in under
# 6 minutes there):
#   1. a Python environment from the wheels in .whl/ (scripts/fetch-gpu-wheels.sh
#      downloads them on a machine with network access; they travel with the checkout)
#   2. the engine built with VX_CUDA=ON for this GPU, warnings as errors, and the C tests
#      (test_cuda_ops: every device operation against the CPU device)
#   3. tests/test_cuda.py (tiny models: token ids identical to the CPU engine's, the
#      NumPy reference's tolerances, 50 flushed utterances, the bandwidth probe)
#   4. a full-size random model, quantized to q4, and `voxd bench --backend cuda --json`
#      on it (bf16 too when the time allows), then the figures.
# Everything it writes is under build/gpu-check/ (GPU_CHECK_DIR to move it; the
# full models take 12 GB of disk). Exit status 0 only when every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
py="${PYTHON:-python3.12}"
jobs=$(nproc)
out="${GPU_CHECK_DIR:-build/gpu-check}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }

if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
command -v nvcc > /dev/null || { echo "gpu-check: nvcc not found (install the CUDA toolkit)" >&2; exit 2; }
nvcc --version | tail -n 2
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

step "Python environment ($py, wheels from .whl/)"
if [ ! -x "$out/venv/bin/python" ]; then
  [ -d .whl ] || { echo "gpu-check: no .whl/ here; run scripts/fetch-gpu-wheels.sh where there is network" >&2; exit 2; }
  "$py" -m venv "$out/venv"
  "$out/venv/bin/python" -m pip install -q --no-index --find-links .whl \
    numpy pydantic pydantic-settings paho-mqtt huggingface_hub pytest cmake ninja
fi
export PATH="$out/venv/bin:$PATH"
PY="$out/venv/bin/python"

step "build: VX_CUDA=ON for this GPU (native architecture), C tests, warnings as errors"
cmake -S native -B "$out/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVX_CUDA=ON \
  -DVX_CUDA_ARCHS=native -DVX_BUILD_TESTS=ON > "$out/cmake-configure.log"
cmake --build "$out/build" -j "$jobs"
export VOXD_ENGINE_LIB="$out/build/libvoxd_engine.so"

step "the GPU is usable by the engine"
"$PY" -c 'from voxd.engine import cuda_membw; print(f"read bandwidth {cuda_membw(1 << 30, 10):.1f} GB/s")'

step "C tests (ctest), then test_cuda_ops' figures"
(cd "$out/build" && ctest --output-on-failure -j "$jobs")
"$out/build/tests/test_cuda_ops"

step "pytest tests/test_cuda.py"
VOXD_CUDA_OPS_BIN="$out/build/tests/test_cuda_ops" "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/test_cuda.py

models="$out/models"
step "full-size random model (BF16), quantized to q4"
if [ ! -f "$models/full/consolidated.safetensors" ]; then
  "$PY" -m voxd.cli dev make-model "$models/full" --preset full
fi
if [ ! -f "$models/full-q4/consolidated.safetensors" ]; then
  "$PY" -m voxd.cli quantize "$models/full" "$models/full-q4" --format q4 -q
fi

bench() { # format model-dir
  step "voxd bench --backend cuda on the $1 model"
  "$PY" -m voxd.cli bench --model-dir "$2" --backend cuda --json --seconds 10 > "$out/bench-$1.json"
}
bench q4 "$models/full-q4"
# bf16 reads 3.5x the bytes per step; run it only with time left for it
if (( SECONDS - start < 240 )); then
  bench bf16 "$models/full"
else
  echo "(bf16 bench skipped: $((SECONDS - start)) s used)"
fi

step "figures"
"$PY" - "$out"/bench-*.json << 'EOF'
import json
import sys

BOARDS = {"Orin Nano": 68.0, "Orin Nano Super": 102.0, "AGX Orin": 204.8, "Thor": 273.0}
for path in sys.argv[1:]:
    r = json.load(open(path))
    m, d, e, s = r["machine"], r["decoder"], r["encoder"], r["stream"]
    gpu = m.get("gpu_read_bandwidth_gbs") or 0.0
    per_step = d["bytes_per_step"] or 0.0
    step_ms = d["streaming_ms_per_step"] or d["ms_per_step"] or 0.0
    frac = (per_step / (step_ms / 1e3)) / 1e9 / gpu if gpu and step_ms else 0.0
    print(f"{r['model']['weight_format']} on {r['model']['device_note']}")
    print(f"  GPU read bandwidth {gpu:.0f} GB/s; load {r['model']['load_s']:.1f} s")
    print(f"  decoder: {step_ms:.2f} ms/step streaming ({d['ms_per_step']:.2f} ms/step all), "
          f"{per_step / 1e9:.2f} GB/step, {frac:.0%} of the GPU's bandwidth")
    print(f"  encoder: {e['ms_per_audio_s']:.1f} ms per audio second; "
          f"prefill {r['prefill']['total_ms']:.0f} ms; RTF {s['rtf']:.3f}")
    for name, bw in BOARDS.items():
        sps = frac * bw * 1e9 / per_step if per_step else 0.0
        print(f"  at {frac:.0%} of {name}'s {bw} GB/s: {sps:.1f} steps/s "
              f"({'real time' if sps >= 12.5 else 'NOT real time'}: 12.5 needed)")
EOF
echo
echo "gpu-check: all steps passed in $((SECONDS - start)) s"
