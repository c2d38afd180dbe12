"""Drop-in replacements for torch.nn.LSTMCell, GRUCell and RNNCell: one C++ op call per step.

Each subclasses its torch.nn twin (same constructor, parameters, initialisation and state_dict).
Shapes: input (B, I) or (I,) unbatched; states (B, H) or (H,); omitted states are zeros.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import _onnx_export
from .rnn import check_lstm_state

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]


class LSTMCell(nn.LSTMCell):
    r"""One LSTM step, as :class:`torch.nn.LSTMCell`: returns (h', c'), each (B, H).

    Example::

        >>> cell = torch_rnn_ext.LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
    """

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):  # torch.nn 2.x's ValueError (1.13's nn asserted)
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        h: Optional[Tensor] = None
        c: Optional[Tensor] = None
        if hx is not None:
            if not torch.jit.is_scripting():
                check_lstm_state(hx, "lstm_cell")
            h, c = (hx[0], hx[1]) if is_batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        if not torch.jit.is_scripting():
            if _onnx_export.exporting():  # a standard ONNX LSTM node (see _onnx_export.py)
                h_new, c_new = _onnx_export.cell_forward(self, "LSTM", input, h, c)
                return (h_new.squeeze(0), c_new.squeeze(0)) if not is_batched else (h_new, c_new)
        h_new, c_new = torch.ops.torch_rnn_ext.lstm_cell(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih,
                                                         self.bias_hh)
        if not is_batched:
            return h_new.squeeze(0), c_new.squeeze(0)
        return h_new, c_new


def _single_state_cell_forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
    """forward of GRUCell and RNNCell; the class's ``_step`` makes the op call."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{self._name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
        if hx is not None:
            hx = hx.unsqueeze(0)
    ret = self._step(input, hx)
    if not is_batched:
        ret = ret.squeeze(0)
    return ret


class GRUCell(nn.GRUCell):
    r"""One GRU step, as :class:`torch.nn.GRUCell`: returns h' (B, H).

    Example::

        >>> cell = torch_rnn_ext.GRUCell(10, 20)
        >>> h = cell(torch.randn(3, 10))
    """

    __constants__ = nn.GRUCell.__constants__ + ["_name"]
    _name = "GRUCell"
    forward = _single_state_cell_forward  # type: ignore[assignment]

    def _step(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if not torch.jit.is_scripting():
            if _onnx_export.exporting():  # a standard ONNX GRU node (see _onnx_export.py)
                return _onnx_export.cell_forward(self, "GRU", input, hx)
        return torch.ops.torch_rnn_ext.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                                self.bias_hh)


class RNNCell(nn.RNNCell):
    r"""One Elman RNN step with tanh or relu, as :class:`torch.nn.RNNCell`: returns h' (B, H).

    Example::

        >>> cell = torch_rnn_ext.RNNCell(10, 20, nonlinearity="relu")
        >>> h = cell(torch.randn(3, 10))
    """

    __constants__ = nn.RNNCell.__constants__ + ["_name"]
    _name = "RNNCell"
    forward = _single_state_cell_forward  # type: ignore[assignment]

    def _step(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if not torch.jit.is_scripting():
            if _onnx_export.exporting():  # a standard ONNX RNN node (see _onnx_export.py)
                return _onnx_export.cell_forward(self, "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU",
                                                 input, hx)
        if self.nonlinearity == "tanh":
            return torch.ops.torch_rnn_ext.rnn_tanh_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                                         self.bias_hh)
        return torch.ops.torch_rnn_ext.rnn_relu_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                                     self.bias_hh)
