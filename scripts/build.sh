#!/usr/bin/env bash
# Builds the op library (and the C++ tests) against the torch of one Python interpreter, in
# build/torch-<version>, and places it in the package as torch_rnn_ext/lib/torch-<version>/ where the
# loader looks for it. Usage: scripts/build.sh PYTHON [BUILD_TYPE] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$1; BUILD_TYPE=${2:-Release}; JOBS=${3:-2}
"$PY" -c "import torch" 2>/dev/null || { echo "build: $PY cannot import torch" >&2; exit 1; }
TAG=$("$PY" torch_rnn_ext/_library.py --tag)
DIR=build/$TAG
# The interpreter's absolute path, symlinks kept (a venv's python is a symlink that must stay one).
PY_ABS=$(realpath -s "$(command -v "$PY")")
if ! grep -qx "TRE_PYTHON_EXECUTABLE:[A-Z]*=$PY_ABS" "$DIR/CMakeCache.txt" 2>/dev/null; then
  cmake -S . -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DTRE_BUILD_TESTS=ON \
    -DTRE_PYTHON_EXECUTABLE="$PY_ABS" \
    -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
fi
cmake --build "$DIR" -j "$JOBS"
# copy then rename: processes that have the old library mapped keep its inode and do not crash
mkdir -p "torch_rnn_ext/lib/$TAG"
cp -f "$DIR/libtorch_rnn_ext.so" "torch_rnn_ext/lib/$TAG/.libtorch_rnn_ext.so.tmp"
mv -f "torch_rnn_ext/lib/$TAG/.libtorch_rnn_ext.so.tmp" "torch_rnn_ext/lib/$TAG/libtorch_rnn_ext.so"
