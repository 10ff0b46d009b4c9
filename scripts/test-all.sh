#!/usr/bin/env bash
# Run voxd's whole test suite from a clean clone: installs what it needs
# (apt packages when run as root, a virtual environment in .venv), builds the
# package (the native engine), then runs
#   1. the C tests, built with AddressSanitizer + UBSan, and the thread
#      pool's test with ThreadSanitizer,
#   2. the C tests cross-built for aarch64 under qemu (NEON kernels),
#   3. ruff and mypy --strict,
#   4. pytest: engine vs reference, audio over ALSA, MQTT against mosquitto,
#      the daemon end to end,
#   5. the engine tests again against an ASan build of the library.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential espeak-ng mosquitto portaudio19-dev libasound2-dev alsa-utils
              gcc-aarch64-linux-gnu qemu-user systemd shellcheck python3-venv)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "== installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing apt packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing voxd (builds native/)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ".[test]"

echo "== C tests (ASan + UBSan)"
# The sanitizer builds leave the CUDA device out: it cannot run without a GPU,
# and tests/test_cuda.py compiles it for every architecture with warnings as errors.
cmake -S native -B build/ctest-asan -DVX_BUILD_TESTS=ON -DVX_SANITIZE=ON -DVX_CUDA=OFF \
      -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/ctest-asan -j2 >/dev/null
ctest --test-dir build/ctest-asan --output-on-failure

echo "== thread pool test (ThreadSanitizer)"
cmake -S native -B build/ctest-tsan -DVX_BUILD_TESTS=ON -DVX_TSAN=ON -DVX_CUDA=OFF \
      -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/ctest-tsan -j2 --target test_threadpool >/dev/null
TSAN_OPTIONS=halt_on_error=1 build/ctest-tsan/tests/test_threadpool

echo "== C tests on aarch64 (qemu, cortex-a76)"
bash scripts/aarch64-test.sh

echo "== lint"
.venv/bin/ruff check voxd tests bench
.venv/bin/mypy --strict voxd bench

echo "== pytest"
# the suite imports voxd from this checkout; the engine library comes from the install
.venv/bin/python -m pytest -q

echo "== engine tests against the ASan build of the library"
cmake -S native -B build/asan-lib -DVX_SANITIZE=ON -DVX_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan-lib -j2 >/dev/null
VOXD_ENGINE_LIB=$PWD/build/asan-lib/libvoxd_engine.so \
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0 \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_engine.py \
    -k "(not chunking or 4000) and not memory_flat"  # ASan's quarantine holds freed memory
