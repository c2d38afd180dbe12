"""Drop-in replacements for torch.nn's recurrent layers, computed by torch_rnn_ext's C++ ops.

Each class subclasses its torch.nn twin, so the constructor, its argument checks, the parameter names,
shapes, registration order and initialisation, ``state_dict``, ``all_weights`` and the input checks are
torch.nn's own; only the computation is replaced, by one op call per forward.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["LSTM"]


class LSTM(nn.LSTM):
    r"""Applies a multi-layer LSTM to an input sequence, exactly as :class:`torch.nn.LSTM` does.

    Same arguments (``input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None``), parameters
    (``weight_ih_l{k}[_reverse]`` (4H, I or D*H), ``weight_hh_l{k}[_reverse]`` (4H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,)), inputs and outputs:

    - input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a PackedSequence;
    - hx: optional (h_0, c_0), each (L*D, B, H) ((L*D, H) unbatched), zeros when omitted;
    - returns output (T, B, D*H) (or a PackedSequence) and (h_n, c_n), each (L*D, B, H).

    float32 and float64 on CPU. The state_dict loads both ways with torch.nn.LSTM.

    Example::

        >>> rnn = torch_rnn_ext.LSTM(10, 20, num_layers=2)
        >>> output, (h_n, c_n) = rnn(torch.randn(5, 3, 10))
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.proj_size > 0:
            raise ValueError("torch_rnn_ext.LSTM: proj_size > 0 is not supported yet")

    # Annotated for Tensor input so that a scripted module is callable on its own (torch.nn's overloads
    # make a top-level scripted nn.LSTM uncallable). Eager calls also take a PackedSequence: TorchScript
    # resolves the isinstance() branch statically and compiles only the Tensor path.
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
            zeros = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
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
