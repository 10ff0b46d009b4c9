#!/usr/bin/env bash
# scripts/aarch64-test.sh - build the native engine and its C tests for AArch64 with
# the cross compiler and run them under user-mode QEMU, so the NEON backend is
# tested on every change without an ARM board.
#
#   scripts/aarch64-test.sh [BUILD_DIR]      (default: build/aarch64)
#
# Needs the Debian/Ubuntu packages gcc-aarch64-linux-gnu and qemu-user.
# Binaries are linked statically, so no AArch64 sysroot setup is needed at
# run time. The tests run on an emulated Cortex-A76 (Raspberry Pi 5: ARMv8.2
# with fp16 and dotprod, the target the NEON file is compiled for) and the
# kernel test again on a Cortex-A57 (ARMv8.0, Jetson Nano): the NEON backend
# claims to need only base Advanced SIMD, and QEMU traps any newer
# instruction the compiler might have emitted. The kernel and several-stream
# tests run a third time on QEMU's "max" CPU, which has FEAT_I8MM, so the
# SMMLA backend (neon_i8mm.c) runs too.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/build/aarch64"}
CC=${AARCH64_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU_AARCH64:-qemu-aarch64}

missing=()
command -v "$CC" >/dev/null 2>&1 || missing+=("$CC (apt-get install gcc-aarch64-linux-gnu)")
command -v "$QEMU" >/dev/null 2>&1 || missing+=("$QEMU (apt-get install qemu-user)")
if ((${#missing[@]})); then
    echo "aarch64-test: missing tools:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 2
fi

src="$root/native/src"
mkdir -p "$out/obj"
# The same warning flags as native/CMakeLists.txt; -O2 keeps the build quick.
cflags=(-std=gnu11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -pthread
        -I"$root/native/include" -I"$src" -DVX_HAVE_NEON=1 -DVX_HAVE_NEON_I8MM=1)

# Engine sources: everything in src/ and src/kernels/ except other
# architectures' backends.
objs=()
pids=()
for f in "$src"/*.c "$src"/kernels/*.c; do
    name=$(basename "$f" .c)
    case "$name" in
    avx2 | avx2_elem) continue ;;
    neon) extra=(-march=armv8.2-a+fp16+dotprod) ;;
    neon_i8mm) extra=(-march=armv8.2-a+fp16+dotprod+i8mm) ;;
    quant | device_cpu | elementwise) extra=(-ffp-contract=off) ;; # as in CMakeLists.txt
    *) extra=() ;;
    esac
    "$CC" "${cflags[@]}" "${extra[@]}" -c "$f" -o "$out/obj/$name.o" &
    pids+=($!)
    objs+=("$out/obj/$name.o")
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
if ((status)); then
    echo "aarch64-test: engine compile failed" >&2
    exit 1
fi
rm -f "$out/libvoxd_engine.a"
ar rcs "$out/libvoxd_engine.a" "${objs[@]}"

# Every C test in native/tests that builds on its own; without FMA contraction,
# as in CMakeLists.txt (test_kernels' scalar references must round as written).
tests=()
for t in "$root"/native/tests/test_*.c; do
    name=$(basename "$t" .c)
    if "$CC" "${cflags[@]}" -ffp-contract=off -static "$t" "$out/libvoxd_engine.a" -lm -o "$out/$name"; then
        tests+=("$name")
    else
        echo "aarch64-test: $name does not build" >&2
        status=1
    fi
done

run() { # cpu test
    local cpu=$1 name=$2 log
    log=$(mktemp)
    if TMPDIR=${TMPDIR:-/tmp} "$QEMU" -cpu "$cpu" "$out/$name" >"$log" 2>&1; then
        echo "PASS  $name ($cpu)"
    else
        echo "FAIL  $name ($cpu)"
        sed 's/^/    /' "$log"
        status=1
    fi
    rm -f "$log"
}

for name in "${tests[@]}"; do run cortex-a76 "$name"; done
for name in "${tests[@]}"; do [[ $name == test_kernels ]] && run cortex-a57 "$name"; done
for name in "${tests[@]}"; do
    [[ $name == test_kernels || $name == test_group ]] && run max "$name"
done

if [[ " ${tests[*]} " != *" test_kernels "* ]]; then
    echo "aarch64-test: test_kernels missing" >&2
    status=1
fi
exit $status
