"""torch_rnn_ext: recurrent networks as fused C++ PyTorch operators.

``import torch_rnn_ext`` loads the operator library, which registers the ops under
``torch.ops.torch_rnn_ext`` (usable from Python, TorchScript and C++), and exports drop-in modules.
"""
from . import _library

LIBRARY_PATH = _library.load()

from . import functional  # noqa: E402
from .functional import gru, gru_layer, lstm, lstm_layer, rnn_relu, rnn_relu_layer, rnn_tanh, rnn_tanh_layer  # noqa: E402,E501
from .modules.cells import GRUCell, LSTMCell, RNNCell  # noqa: E402
from .modules.convert import convert  # noqa: E402
from .modules.gated_deltanet import GatedDeltaNet  # noqa: E402
from .modules.rnn import GRU, LSTM, RNN  # noqa: E402
from .modules.scans import MambaMixer, RWKV4TimeMix  # noqa: E402
from .delta_rule import gated_delta_rule  # noqa: E402
from .scans import selective_scan, wkv4  # noqa: E402
from .streaming import Streamer  # noqa: E402

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "functional", "lstm", "gru",
           "rnn_tanh", "rnn_relu", "lstm_layer", "gru_layer", "rnn_tanh_layer", "rnn_relu_layer", "LIBRARY_PATH",
           "selective_scan", "wkv4", "gated_delta_rule", "MambaMixer", "RWKV4TimeMix"]
__all__ += ["Streamer", "GatedDeltaNet"]
