#!/usr/bin/env bash
# Runs the whole suite (ctest, then pytest) against the torch of one Python interpreter, whose library
# scripts/build.sh has built. Usage: scripts/test_leg.sh PYTHON [pytest arguments...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=$1; shift
TAG=$("$PY" torch_rnn_ext/_library.py --tag) || exit 1
echo "=== test leg: $TAG ($PY) ==="
rc=0
(cd "build/$TAG" && ctest --output-on-failure) || rc=1
"$PY" -m pytest -q -rfEs tests/python "$@" || rc=1
echo "=== test leg $TAG: $([ $rc = 0 ] && echo passed || echo FAILED) ==="
exit $rc
