#!/usr/bin/env bash
# Installs what the build, tests and benchmarks need, only when missing (idempotent: a second run installs
# nothing): the Debian packages (with Debian's torch 1.13, the second environment), then the project's
# torch 2.x environment, .venv/, with the versions pinned in requirements.txt. This is the only place that
# knows Debian package names; the code itself finds torch through Python.
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

# The torch 2.x environment. pip runs again only when requirements.txt changed since the last install
# (its hash is kept in the venv). pip takes a CPU build of torch where its local wheel folder
# (PIP_FIND_LINKS) holds one; PyPI's Linux wheel is a CUDA build (about 3 GB with its nvidia-* packages)
# that runs on the CPU.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.venv
want=$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "install_deps: installing requirements.txt into $VENV"
  start=$(date +%s)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$want" > "$VENV/.requirements.sha256"
  echo "install_deps: .venv ready in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
fi
