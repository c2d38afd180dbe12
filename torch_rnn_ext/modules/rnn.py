"""Drop-in replacements for torch.nn's recurrent layers, computed by torch_rnn_ext's C++ ops.

Each class subclasses its torch.nn twin, so the constructor, its argument checks, the parameter names,
shapes, registration order and initialisation, ``state_dict``, ``all_weights``, ``flatten_parameters``
and the input checks are torch.nn's own; only the computation is replaced, by one op call per forward.

``forward`` is annotated for Tensor input, so a scripted module is callable on its own (torch.nn's
overloads make a top-level scripted nn.LSTM uncallable). Eager calls also take a PackedSequence:
TorchScript resolves the isinstance() branch statically and compiles only the Tensor path.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["LSTM", "GRU", "RNN"]


class LSTM(nn.LSTM):
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

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:  # type: ignore[override]
        orig_input = input
        batch_sizes = None
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
        else:
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None

        if hx is None:
            num_directions = 2 if self.bidirectional else 1
            real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
            h_zeros = torch.zeros(self.num_layers * num_directions, max_batch_size, real_hidden_size,
                                  dtype=input.dtype, device=input.device)
            c_zeros = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                  dtype=input.dtype, device=input.device)
            hx = (h_zeros, c_zeros)
        else:
            if batch_sizes is None:
                if is_batched:
                    if hx[0].dim() != 3 or hx[1].dim() != 3:
                        raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got "
                                           f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                else:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but got "
                                           f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            hx = self.permute_hidden(hx, sorted_indices)

        self.check_forward_args(input, hx, batch_sizes)
        output, h_n, c_n = torch.ops.torch_rnn_ext.lstm(
            input, [hx[0], hx[1]], self._flat_weights, self.bias, self.num_layers, float(self.dropout),
            self.training, self.bidirectional, self.batch_first, batch_sizes)
        hidden = (h_n, c_n)
        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden(hidden, unsorted_indices)
        else:
            if not is_batched:
                output = output.squeeze(batch_dim)
                hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
            return output, self.permute_hidden(hidden, unsorted_indices)


def _single_state_forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """forward of GRU and RNN (one state tensor); the op is chosen by torch.nn's ``mode``."""
    orig_input = input
    batch_sizes = None
    is_batched = True
    batch_dim = 0 if self.batch_first else 1
    if isinstance(orig_input, PackedSequence):
        input, batch_sizes, sorted_indices, unsorted_indices = input
        max_batch_size = int(batch_sizes[0])
    else:
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        else:
            if hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        max_batch_size = input.size(0) if self.batch_first else input.size(1)
        sorted_indices = None
        unsorted_indices = None

    if hx is None:
        num_directions = 2 if self.bidirectional else 1
        hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                         dtype=input.dtype, device=input.device)
    else:
        hx = self.permute_hidden(hx, sorted_indices)

    self.check_forward_args(input, hx, batch_sizes)
    args = (input, hx, self._flat_weights, self.bias, self.num_layers, float(self.dropout), self.training,
            self.bidirectional, self.batch_first, batch_sizes)
    if self.mode == "GRU":
        output, hidden = torch.ops.torch_rnn_ext.gru(*args)
    elif self.mode == "RNN_TANH":
        output, hidden = torch.ops.torch_rnn_ext.rnn_tanh(*args)
    else:
        output, hidden = torch.ops.torch_rnn_ext.rnn_relu(*args)

    if isinstance(orig_input, PackedSequence):
        output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        return output_packed, self.permute_hidden(hidden, unsorted_indices)
    else:
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


class GRU(nn.GRU):
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

    forward = _single_state_forward  # type: ignore[assignment]


class RNN(nn.RNN):
    r"""Applies a multi-layer Elman RNN with tanh or relu, exactly as :class:`torch.nn.RNN` does.

    Args (as torch.nn.RNN): input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None.

    Shapes: as :class:`GRU`, with parameters ``weight_ih_l{k}`` (H, I), ``weight_hh_l{k}`` (H, H).

    Example::

        >>> rnn = torch_rnn_ext.RNN(10, 20, nonlinearity="relu")
        >>> output, h_n = rnn(torch.randn(5, 3, 10))
    """

    forward = _single_state_forward  # type: ignore[assignment]
