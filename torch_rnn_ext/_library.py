"""Finds and loads the compiled operator library (libtorch_rnn_ext.so) into torch.ops.

A library is built for one torch release: the build puts it under ``lib/torch-<major.minor.patch>/``
(``make build`` builds one per torch environment), and this loader takes the one that matches the running
torch, so one source tree serves torch 2.x and Debian's 1.13 side by side. Run as a script
(``python _library.py --tag``) it prints the running torch's directory name, for the build.
"""
import os
import re
import sys

import torch

_LIB_NAME = "libtorch_rnn_ext.so"
_LIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")


def torch_tag(version: str = "") -> str:
    """The directory name of the libraries built for a torch version: ``torch-2.15.0`` for "2.15.0+cu132",
    ``torch-1.13.0`` for Debian's "1.13.0a0" (local and pre-release suffixes do not change the ABI)."""
    version = version or torch.__version__
    m = re.match(r"\d+\.\d+\.\d+", version)
    return "torch-" + (m.group(0) if m else version)


def built_tags() -> list:
    """The torch versions this package holds a library for."""
    if not os.path.isdir(_LIB_DIR):
        return []
    return sorted(d for d in os.listdir(_LIB_DIR) if os.path.exists(os.path.join(_LIB_DIR, d, _LIB_NAME)))


def library_path() -> str:
    """Path of the op library: $TORCH_RNN_EXT_LIBRARY if set, else this package's copy for the running torch."""
    env = os.environ.get("TORCH_RNN_EXT_LIBRARY")
    if env:
        return env
    return os.path.join(_LIB_DIR, torch_tag(), _LIB_NAME)


def load() -> str:
    path = library_path()
    running = torch_tag()
    # A library sits in a directory named for its torch (lib/torch-X or build/torch-X): a mismatch is
    # caught before the library is opened, which would fail on undefined symbols or worse.
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if parent.startswith("torch-") and parent != running:
        raise ImportError(
            f"torch_rnn_ext: {path} was built for {parent}, but the running torch is {torch.__version__} "
            f"({running}). Rebuild it for this torch (`make build`, or `pip install --no-build-isolation .`).")
    if not os.path.exists(path):
        have = ", ".join(built_tags()) or "none"
        raise ImportError(
            f"torch_rnn_ext: no operator library for the running torch {torch.__version__} ({path} does not "
            f"exist; this package has libraries for: {have}). Build it for this torch with `make build` "
            "(or `pip install --no-build-isolation .` into this environment), or point "
            "TORCH_RNN_EXT_LIBRARY at one.")
    try:
        torch.ops.load_library(path)
    except OSError as e:
        raise ImportError(
            f"torch_rnn_ext: could not load {path} into torch {torch.__version__}: {e}. A library built for "
            "another torch does not load; rebuild it for this one (`make build`).") from None
    return path


if __name__ == "__main__" and sys.argv[1:] == ["--tag"]:
    print(torch_tag())
