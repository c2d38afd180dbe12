#!/usr/bin/env bash
# make test-sanitize: builds the op library and the C++ tests with -fsanitize=address,undefined against the
# torch of one interpreter (build/sanitize/torch-<version>), then runs the GoogleTest binaries, the
# TorchScript deployment example and the main pytest files with that library (the sanitizer runtimes
# preloaded into Python). Any sanitizer report aborts its process, which fails the run.
# Usage: scripts/sanitize.sh PYTHON [JOBS]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=$1; JOBS=${2:-2}
TAG=$("$PY" torch_rnn_ext/_library.py --tag) || exit 1
DIR=build/sanitize/$TAG
PY_ABS=$(realpath -s "$(command -v "$PY")")
echo "=== sanitizer leg: $TAG ($PY) ==="
start=$(date +%s)
if ! grep -qx "TRE_SANITIZE:BOOL=ON" "$DIR/CMakeCache.txt" 2>/dev/null ||
   ! grep -qx "CMAKE_CXX_FLAGS_RELWITHDEBINFO:STRING=-O2 -g" "$DIR/CMakeCache.txt"; then
  # -O2 -g, as released plus line numbers: the vectorised loops (and their tails) are the ones checked, and
  # results keep the release build's bits (the thread-count tests compare them).
  cmake -S . -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g" \
    -DTRE_BUILD_TESTS=ON -DTRE_SANITIZE=ON -DTRE_PYTHON_EXECUTABLE="$PY_ABS" \
    -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null || exit 1
fi
cmake --build "$DIR" -j "$JOBS" || exit 1
echo "sanitizer build: $(( $(date +%s) - start )) s"

# Python itself is not instrumented: the runtimes go first into every process (python, and the test
# programs ctest starts). Leak checking is off (CPython and torch keep allocations until exit by design);
# a failed allocation returns null (torch then raises, as without the sanitizer); everything else aborts
# on the first report.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TORCH_RNN_EXT_LIBRARY=$PWD/$DIR/libtorch_rnn_ext.so
rc=0
# AOTInductor's example is left out: its save step compiles the model with g++ under the preloaded runtime.
(cd "$DIR" && ctest --output-on-failure -E aoti_model) || rc=1
t1=$(date +%s)
"$PY" -m pytest -q -rfEs -p no:cacheprovider \
  tests/python/test_lstm.py tests/python/test_rnn_family.py tests/python/test_selective_scan.py \
  tests/python/test_wkv4.py tests/python/test_streaming.py tests/python/test_meta.py \
  tests/python/test_hardening.py tests/python/test_fuzz.py tests/python/test_concurrency.py || rc=1
echo "sanitizer pytest: $(( $(date +%s) - t1 )) s"
echo "=== sanitizer leg $TAG: $([ $rc = 0 ] && echo passed || echo FAILED) ($(( $(date +%s) - start )) s) ==="
exit $rc
