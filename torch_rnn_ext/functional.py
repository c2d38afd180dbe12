"""Thin, scriptable wrappers over ``torch.ops.torch_rnn_ext``.

Shapes: T sequence length, B batch, I input size, H hidden size, L layers, D directions (1 or 2).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def lstm_layer(input: Tensor, hx: Optional[Tensor], cx: Optional[Tensor], weight_ih: Tensor,
               weight_hh: Tensor, bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               batch_sizes: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    r"""One LSTM layer in one direction, with torch.nn.LSTM's gates (i, f, g, o) and formulas.

    Args:
        input: (T, B, I), or packed rows (N, I) when ``batch_sizes`` (T,) int64 is given.
        hx, cx: (B, H) initial states, or None for zeros.
        weight_ih: (4H, I). weight_hh: (4H, H). bias_ih, bias_hh: (4H,) or None.
        reverse: walk time from the end (the reverse direction of a bidirectional layer).

    Returns:
        output (T, B, H) (or (N, H) packed), h_n (B, H), c_n (B, H).

    Example::

        >>> x = torch.randn(5, 3, 10)
        >>> w_ih, w_hh = torch.randn(80, 10), torch.randn(80, 20)
        >>> out, h, c = torch_rnn_ext.lstm_layer(x, None, None, w_ih, w_hh)
    """
    return torch.ops.torch_rnn_ext.lstm_layer(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                              batch_sizes, reverse)


def lstm(input: Tensor, hx: List[Tensor], params: List[Tensor], has_biases: bool, num_layers: int,
         dropout: float, train: bool, bidirectional: bool, batch_first: bool,
         batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    r"""A multi-layer, optionally bidirectional LSTM in one op call (the signature of ``torch.lstm``).

    Args:
        input: (T, B, I) ((B, T, I) if batch_first), or packed rows (N, I) with ``batch_sizes``.
        hx: [] for zeros, or [h_0, c_0] each (L*D, B, H).
        params: per layer and direction: weight_ih, weight_hh[, bias_ih, bias_hh], as nn.LSTM's
            ``_flat_weights``.
        dropout: probability of dropout on the outputs of every layer but the last, when ``train``.

    Returns:
        output (T, B, D*H), h_n (L*D, B, H), c_n (L*D, B, H).
    """
    return torch.ops.torch_rnn_ext.lstm(input, hx, params, has_biases, num_layers, dropout, train,
                                        bidirectional, batch_first, batch_sizes)
