#!/usr/bin/env bash
# Install the `detseg` extra (mmengine, mmdet, mmsegmentation) into the venv of PYTHON.
# mmdet/mmseg import mmcv's compiled ops, and the registry has no Linux wheel of mmcv 2.1.0 with ops,
# so mmcv is built once from its source package, patched for torch 2.14's C++20 headers, and the
# wheel is cached outside the repository, keyed by torch and Python version (a build takes ~12 min
# on 2 cores; a cached install takes seconds). CONSTRAINTS: the torch pair to install (default: `make setup`'s).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONSTRAINTS=${CONSTRAINTS:-$ROOT/constraints/torch2.14.txt}
MMCV_VERSION=2.1.0
# The project with the extra first, under the constraints: the torch mmcv is then built against and keyed by
# stays. The extra brings setuptools < 82 (mmcv's setup.py and mmengine 0.10.7 import pkg_resources) and
# mmengine, addict, yapf (mmcv's run-time requirements; mmcv itself is installed without deps below).
"$PY" -m pip install --progress-bar off -c "$CONSTRAINTS" ninja wheel -e "$ROOT[detseg]"
TORCH=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
CACHE=${DFQ_HARNESS_CACHE:-$HOME/.cache/dfq_harness}/wheels/mmcv-$MMCV_VERSION-torch-$TORCH-$PYTAG

if ! ls "$CACHE"/mmcv-*.whl >/dev/null 2>&1; then
    echo "[detseg] no cached mmcv wheel in $CACHE: building mmcv $MMCV_VERSION from source (~12 min on 2 cores)"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    # --no-build-isolation: mmcv's setup.py needs pkg_resources, which an isolated setuptools lacks.
    "$PY" -m pip download --progress-bar off --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$WORK"
    tar -xzf "$WORK"/mmcv-$MMCV_VERSION.tar.gz -C "$WORK"
    SRC="$WORK/mmcv-$MMCV_VERSION"
    # torch 2.14's headers need C++20; mmcv 2.1.0 pins c++14/c++17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/setup.py"
    grep -q -- '-std=c++20' "$SRC/setup.py" || { echo "[detseg] could not patch mmcv's C++ standard in $SRC/setup.py" >&2; exit 1; }
    START=$(date +%s)
    # Full log to a file; the console gets ninja's [k/n] progress lines.
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" -m pip wheel -v --no-build-isolation --no-deps -w "$WORK/dist" "$SRC" 2>&1 \
        | tee "$WORK/build.log" | sed -u -nE 's/^\s*\[([0-9]+\/[0-9]+)\].*/[detseg] mmcv ops compiled \1/p' \
        || true
    if ! ls "$WORK"/dist/mmcv-*.whl >/dev/null 2>&1; then
        tail -40 "$WORK/build.log" >&2
        echo "[detseg] mmcv build failed (log above)" >&2
        exit 1
    fi
    mkdir -p "$CACHE"
    WHEEL=$(basename "$WORK"/dist/mmcv-*.whl)
    cp "$WORK/dist/$WHEEL" "$CACHE/.$WHEEL.partial" && mv "$CACHE/.$WHEEL.partial" "$CACHE/$WHEEL"
    echo "[detseg] mmcv wheel built in $(( $(date +%s) - START )) s, cached in $CACHE"
fi
# Without deps, so pip never rebuilds it.
"$PY" -m pip install --progress-bar off --no-deps "$CACHE"/mmcv-*.whl
"$PY" -c 'from mmcv.ops import nms, RoIAlign; import mmdet, mmseg; print("[detseg] mmcv", __import__("mmcv").__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__)'
