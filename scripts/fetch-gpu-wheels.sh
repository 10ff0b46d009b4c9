#!/usr/bin/env bash
# Download the wheels scripts/gpu-check.sh installs on a GPU machine that has
# a bare Python 3.12 and no network, into .whl/ (ignored by git; it travels
# with the checkout). Run it here, on a machine with network access.
#   scripts/fetch-gpu-wheels.sh            x86_64 (a desktop or server GPU)
#   WHEEL_ARCH=aarch64 scripts/fetch-gpu-wheels.sh    Jetson Orin / Thor
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${WHEEL_ARCH:-x86_64}"
py="${PYTHON:-python3}"
mkdir -p .whl
# What the tests and the CLI import (voxd's own dependencies without the audio,
# MQTT-broker and Wyoming parts the GPU check never touches), pytest, and CMake
# and Ninja in case the machine has no recent CMake.
"$py" -m pip download --dest .whl --only-binary=:all: --python-version 3.12 \
  --platform "manylinux2014_${arch}" --platform "manylinux_2_28_${arch}" \
  --platform "manylinux_2_17_${arch}" --implementation cp \
  numpy "pydantic>=2.5" "pydantic-settings>=2.2" "paho-mqtt>=2.0" "huggingface_hub>=2.4,<3" \
  pytest cmake ninja
echo "wheels in $(pwd)/.whl:"
ls .whl
