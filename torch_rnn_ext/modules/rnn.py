"""Drop-in replacements for torch.nn's recurrent layers, computed by torch_rnn_ext's C++ ops.

Each class subclasses torch.nn.RNNBase, the base of its torch.nn twin, with the twin's constructor
arguments and checks, so the parameter names, shapes, registration order and initialisation,
``state_dict``, ``all_weights`` and ``flatten_parameters`` are torch.nn's own; the computation is replaced
by one op call per forward, which also takes unbatched input and checks the inputs and states (with
torch.nn's messages for the states' ranks and sizes). They are not subclasses of nn.LSTM, nn.GRU and
nn.RNN themselves: torch.compile (Dynamo) breaks the graph on any instance of those three.

``forward`` is annotated for Tensor input, so a scripted module is callable on its own (torch.nn's
overloads make a top-level scripted nn.LSTM uncallable). Eager calls also take a PackedSequence:
TorchScript resolves the isinstance() branch statically and compiles only the Tensor path.
"""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from .. import _onnx_export

__all__ = ["LSTM", "GRU", "RNN"]


class LSTM(nn.RNNBase):
    r"""Applies a multi-layer LSTM to an input sequence, exactly as :class:`torch.nn.LSTM` does.

    Args (as torch.nn.LSTM): input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None.

    Shapes (L layers, D = 2 if bidirectional else 1, P = proj_size or hidden_size H):

    - input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a PackedSequence;
    - hx: optional (h_0, c_0) of shapes (L*D, B, P) and (L*D, B, H) ((L*D, P), (L*D, H) unbatched);
    - returns output (T, B, D*P) (or a PackedSequence) and (h_n, c_n) shaped like hx.

    Parameters: ``weight_ih_l{k}[_reverse]`` (4H, I or D*P), ``weight_hh_l{k}[_reverse]`` (4H, P),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,), ``weight_hr_l{k}`` (P, H) with proj_size. float32 and
    float64 on CPU. The state_dict loads both ways with torch.nn.LSTM.

    Example::

        >>> rnn = torch_rnn_ext.LSTM(10, 20, num_layers=2)
        >>> output, (h_n, c_n) = rnn(torch.randn(5, 3, 10))
    """

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's own checks of the states and their permutation for packed input.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args  # type: ignore[assignment]
    permute_hidden = nn.LSTM.permute_hidden  # type: ignore[assignment]

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:  # type: ignore[override]
        if not torch.jit.is_scripting():
            if _onnx_export.exporting():  # standard ONNX LSTM nodes (see _onnx_export.py)
                return _onnx_export.rnn_forward(self, input, hx)
            if hx is not None:
                check_lstm_state(hx, "lstm")
        if isinstance(input, PackedSequence):
            return _packed_forward(self, input, hx)
        # One op call: it takes batched and unbatched input and checks every argument (torch.nn's
        # messages for the states), which keeps a streaming step's Python short.
        output, h_n, c_n = torch.ops.torch_rnn_ext.lstm(
            input, [] if hx is None else [hx[0], hx[1]], self._flat_weights, self.bias, self.num_layers,
            self.dropout, self.training, self.bidirectional, self.batch_first, None)
        return output, (h_n, c_n)


def check_lstm_state(hx: Any, op: str) -> None:
    """An LSTM's (h_0, c_0) in eager mode, with torch.nn's exception types: a Tensor is not split into
    two (TypeError), and fewer or more than two states raise as nn does (``op`` is ``lstm`` or
    ``lstm_cell``). TorchScript checks the annotated type instead."""
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"{op}(): argument 'hx' must be a tuple of two Tensors (h_0, c_0), not "
                        f"{type(hx).__name__}")
    if len(hx) != 2:
        message = f"{op} expects two hidden states (h_0, c_0), got {len(hx)}"
        # nn.LSTM indexes hx[1] first (IndexError); nn.LSTMCell and longer tuples reach ATen's check.
        raise IndexError(message) if op == "lstm" and len(hx) < 2 else RuntimeError(message)


def _reject_proj_size(kwargs):
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


def _single_state_forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """forward of GRU and RNN (one state tensor); the op is chosen by torch.nn's ``mode``."""
    if not torch.jit.is_scripting():
        if _onnx_export.exporting():  # standard ONNX GRU / RNN nodes (see _onnx_export.py)
            return _onnx_export.rnn_forward(self, input, hx)
    if isinstance(input, PackedSequence):
        return _packed_forward(self, input, hx)
    args = (input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
            self.bidirectional, self.batch_first, None)
    if self.mode == "GRU":
        return torch.ops.torch_rnn_ext.gru(*args)
    if self.mode == "RNN_TANH":
        return torch.ops.torch_rnn_ext.rnn_tanh(*args)
    return torch.ops.torch_rnn_ext.rnn_relu(*args)


def _packed_forward(self, input: PackedSequence, hx: Any) -> Tuple[PackedSequence, Any]:
    """forward of any of the three on a PackedSequence (eager only): the states are in the caller's batch
    order and the op's in the packed (sorted) order, as torch.nn permutes them."""
    data, batch_sizes, sorted_indices, unsorted_indices = input
    if hx is not None:
        hx = self.permute_hidden(hx, sorted_indices)
    if self.mode == "LSTM":
        output, h_n, c_n = torch.ops.torch_rnn_ext.lstm(
            data, [] if hx is None else [hx[0], hx[1]], self._flat_weights, self.bias, self.num_layers,
            self.dropout, self.training, self.bidirectional, self.batch_first, batch_sizes)
        hidden: Any = (h_n, c_n)
    else:
        op = {"GRU": torch.ops.torch_rnn_ext.gru, "RNN_TANH": torch.ops.torch_rnn_ext.rnn_tanh,
              "RNN_RELU": torch.ops.torch_rnn_ext.rnn_relu}[self.mode]
        output, hidden = op(data, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                            self.training, self.bidirectional, self.batch_first, batch_sizes)
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), \
        self.permute_hidden(hidden, unsorted_indices)


class GRU(nn.RNNBase):
    r"""Applies a multi-layer GRU to an input sequence, exactly as :class:`torch.nn.GRU` does
    (r, z, n gates; the reset gate multiplies ``W_hn h + b_hn``).

    Args (as torch.nn.GRU): input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None.

    Shapes: input (T, B, I) / (B, T, I) / (T, I) / PackedSequence; hx (L*D, B, H) optional; returns
    output (T, B, D*H) and h_n (L*D, B, H). Parameters ``weight_ih_l{k}`` (3H, I), ``weight_hh_l{k}``
    (3H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H,).

    Example::

        >>> rnn = torch_rnn_ext.GRU(10, 20, bidirectional=True)
        >>> output, h_n = rnn(torch.randn(5, 3, 10))
    """

    def __init__(self, *args, **kwargs):
        _reject_proj_size(kwargs)
        super().__init__("GRU", *args, **kwargs)

    forward = _single_state_forward  # type: ignore[assignment]


class RNN(nn.RNNBase):
    r"""Applies a multi-layer Elman RNN with tanh or relu, exactly as :class:`torch.nn.RNN` does.

    Args (as torch.nn.RNN): input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None.

    Shapes: as :class:`GRU`, with parameters ``weight_ih_l{k}`` (H, I), ``weight_hh_l{k}`` (H, H).

    Example::

        >>> rnn = torch_rnn_ext.RNN(10, 20, nonlinearity="relu")
        >>> output, h_n = rnn(torch.randn(5, 3, 10))
    """

    def __init__(self, *args, **kwargs):
        # torch.nn.RNN's: nonlinearity is the 4th positional argument or a keyword.
        _reject_proj_size(kwargs)
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if self.nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(modes[self.nonlinearity], *args, **kwargs)

    forward = _single_state_forward  # type: ignore[assignment]
