"""Thin, scriptable wrappers over ``torch.ops.torch_rnn_ext``.

Shapes: T sequence length, B batch, I input size, H hidden size, L layers, D directions (1 or 2).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def lstm_layer(input: Tensor, hx: Optional[Tensor], cx: Optional[Tensor], weight_ih: Tensor,
               weight_hh: Tensor, bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               batch_sizes: Optional[Tensor] = None, reverse: bool = False,
               weight_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    r"""One LSTM layer in one direction, with torch.nn.LSTM's gates (i, f, g, o) and formulas.

    Args:
        input: (T, B, I), or packed rows (N, I) when ``batch_sizes`` (T,) int64 is given.
        hx: (B, P) and cx: (B, H) initial states, or None for zeros (P = H, or proj_size).
        weight_ih: (4H, I). weight_hh: (4H, P). bias_ih, bias_hh: (4H,) or None.
        reverse: walk time from the end (the reverse direction of a bidirectional layer).
        weight_hr: (P, H) projection of h (nn.LSTM's proj_size), or None.

    Returns:
        output (T, B, P) (or (N, P) packed), h_n (B, P), c_n (B, H).

    Example::

        >>> x = torch.randn(5, 3, 10)
        >>> w_ih, w_hh = torch.randn(80, 10), torch.randn(80, 20)
        >>> out, h, c = torch_rnn_ext.lstm_layer(x, None, None, w_ih, w_hh)
    """
    return torch.ops.torch_rnn_ext.lstm_layer(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                              batch_sizes, reverse, weight_hr)


def gru_layer(input: Tensor, hx: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
              batch_sizes: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    r"""One GRU layer in one direction (torch.nn.GRU's gates r, z, n and formulas).

    input (T, B, I) or packed (N, I) with ``batch_sizes``; hx (B, H) or None; weight_ih (3H, I),
    weight_hh (3H, H), biases (3H,). Returns output (T, B, H) (or (N, H)) and h_n (B, H).
    """
    return torch.ops.torch_rnn_ext.gru_layer(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes,
                                             reverse)


def rnn_tanh_layer(input: Tensor, hx: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
                   bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
                   batch_sizes: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    r"""One Elman RNN layer with tanh: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh). Shapes as
    :func:`gru_layer` with H rows instead of 3H."""
    return torch.ops.torch_rnn_ext.rnn_tanh_layer(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes,
                                                  reverse)


def rnn_relu_layer(input: Tensor, hx: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
                   bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
                   batch_sizes: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    r"""One Elman RNN layer with relu. Shapes as :func:`rnn_tanh_layer`."""
    return torch.ops.torch_rnn_ext.rnn_relu_layer(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes,
                                                  reverse)


def lstm(input: Tensor, hx: List[Tensor], params: List[Tensor], has_biases: bool, num_layers: int,
         dropout: float, train: bool, bidirectional: bool, batch_first: bool,
         batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    r"""A multi-layer, optionally bidirectional LSTM in one op call (the signature of ``torch.lstm``).

    Args:
        input: (T, B, I) ((B, T, I) if batch_first), or packed rows (N, I) with ``batch_sizes``.
        hx: [] for zeros, or [h_0, c_0] each (L*D, B, H).
        params: per layer and direction: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr], as
            nn.LSTM's ``_flat_weights`` (a projection is recognised by the count, as torch.lstm does).
        dropout: probability of dropout on the outputs of every layer but the last, when ``train``.

    Returns:
        output (T, B, D*H), h_n (L*D, B, H), c_n (L*D, B, H).
    """
    return torch.ops.torch_rnn_ext.lstm(input, hx, params, has_biases, num_layers, dropout, train,
                                        bidirectional, batch_first, batch_sizes)


def gru(input: Tensor, hx: Optional[Tensor], params: List[Tensor], has_biases: bool, num_layers: int,
        dropout: float, train: bool, bidirectional: bool, batch_first: bool,
        batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""A multi-layer, optionally bidirectional GRU in one op call (the signature of ``torch.gru``).

    hx: (L*D, B, H) or None for zeros. Returns output (T, B, D*H) and h_n (L*D, B, H).
    """
    return torch.ops.torch_rnn_ext.gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                       batch_first, batch_sizes)


def rnn_tanh(input: Tensor, hx: Optional[Tensor], params: List[Tensor], has_biases: bool, num_layers: int,
             dropout: float, train: bool, bidirectional: bool, batch_first: bool,
             batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""A multi-layer Elman RNN with tanh in one op call. Shapes as :func:`gru`."""
    return torch.ops.torch_rnn_ext.rnn_tanh(input, hx, params, has_biases, num_layers, dropout, train,
                                            bidirectional, batch_first, batch_sizes)


def rnn_relu(input: Tensor, hx: Optional[Tensor], params: List[Tensor], has_biases: bool, num_layers: int,
             dropout: float, train: bool, bidirectional: bool, batch_first: bool,
             batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""A multi-layer Elman RNN with relu in one op call. Shapes as :func:`gru`."""
    return torch.ops.torch_rnn_ext.rnn_relu(input, hx, params, has_biases, num_layers, dropout, train,
                                            bidirectional, batch_first, batch_sizes)
