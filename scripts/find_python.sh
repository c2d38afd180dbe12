#!/usr/bin/env bash
# Prints the first Python interpreter that can import torch (on Debian: /usr/bin/python3).
for p in ${PYTHON:-} python3 /usr/bin/python3 python; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch" >/dev/null 2>&1; then
    command -v "$p"; exit 0
  fi
done
echo "find_python: no Python interpreter on PATH can 'import torch'" >&2
exit 1
