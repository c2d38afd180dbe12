"""torch_rnn_ext: recurrent networks as fused C++ PyTorch operators.

``import torch_rnn_ext`` loads the operator library, which registers the ops under
``torch.ops.torch_rnn_ext`` (usable from Python, TorchScript and C++), and exports drop-in modules.
"""
from . import _library

LIBRARY_PATH = _library.load()

from . import functional  # noqa: E402
from .functional import lstm, lstm_layer  # noqa: E402
from .modules.rnn import LSTM  # noqa: E402

__all__ = ["LSTM", "functional", "lstm", "lstm_layer", "LIBRARY_PATH"]
