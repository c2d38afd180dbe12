"""Finds and loads the compiled operator library (libtorch_rnn_ext.so) into torch.ops."""
import os

import torch

_LIB_NAME = "libtorch_rnn_ext.so"


def library_path() -> str:
    """Path of the op library: $TORCH_RNN_EXT_LIBRARY if set, else the copy inside this package."""
    env = os.environ.get("TORCH_RNN_EXT_LIBRARY")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", _LIB_NAME)


def load() -> str:
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"torch_rnn_ext: the operator library {path} does not exist. Build it with `make build` "
            "(or install the package with pip), or point TORCH_RNN_EXT_LIBRARY at it.")
    torch.ops.load_library(path)
    return path
