#!/usr/bin/env bash
# Installs the Debian packages the build, tests and benchmarks need, only when missing (idempotent).
# This is the only place that knows Debian package names; the code itself finds torch through Python.
set -euo pipefail
PKGS=(
  python3-torch libtorch-dev          # PyTorch 1.13 (Python) and LibTorch (C++, TorchConfig.cmake)
  libopenblas0-pthread libblas-dev    # OpenBLAS behind libblas.so.3 (torch and our kernels use it)
  libgtest-dev cmake ninja-build g++ make
  python3-pytest python3-numpy python3-pip python3-venv python3-setuptools python3-wheel
  python3-tqdm python3-matplotlib
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
