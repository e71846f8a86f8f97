#!/usr/bin/env bash
# Install Rockchip RKNN-Toolkit2 2.5.0 (ONNX -> RKNN converter + x86 simulator)
# into its own venv, kept apart from autoq's environment (its pins on numpy,
# onnx, protobuf and torch clash with ours). autoq drives it by subprocess.
#
# Usage: scripts/install-rknn-toolkit.sh VENV_PATH
# Idempotent: does nothing if VENV_PATH/bin/python can already import rknn.api.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_PATH" >&2
    exit 2
fi
VENV=$1
PY=${PYTHON:-python3}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import rknn.api" >/dev/null 2>&1; then
    echo "rknn-toolkit2 already importable in $VENV; nothing to do"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q)

# (a) the toolkit itself, without its over-strict dependency pins
"${PIP[@]}" install --no-deps rknn-toolkit2==2.5.0
# (b) torch: the local CPU wheel; rknn pins an older torch but imports fine with it
"${PIP[@]}" install torch==2.13.0
# (c) the rest of rknn's runtime dependencies, within the ranges it needs
"${PIP[@]}" install "numpy<=1.26.4" "onnx>=1.16.1,<=1.18.0" "protobuf>=4.21.6,<=4.25.4" \
    "onnxruntime>=1.17,<1.20" psutil ruamel.yaml scipy tqdm opencv-python-headless fast-histogram
# (d) rknn imports pkg_resources, which setuptools>=70 no longer ships
"${PIP[@]}" install "setuptools<70"

"$VENV/bin/python" -c "from rknn.api import RKNN" >/dev/null
echo "rknn-toolkit2 2.5.0 installed in $VENV"
