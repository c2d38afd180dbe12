"""Thin, scriptable wrappers over the linear-time scan ops ``torch.ops.torch_rnn_ext.selective_scan``
and ``torch.ops.torch_rnn_ext.wkv4``. Forward and backward are C++ ops with C++ autograd, so the
gradients exist in Python, TorchScript and C++ alike.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _onnx_export


def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       initial_state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The op, or during ONNX export its standard-ops form (an ONNX Scan; see _onnx_export.py)."""
    if not torch.jit.is_scripting():
        if _onnx_export.exporting():
            return _onnx_export.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    return torch.ops.torch_rnn_ext.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                  initial_state)


def _wkv4_op(time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor,
             state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The op, or during ONNX export its standard-ops form (an ONNX Scan; see _onnx_export.py)."""
    if not torch.jit.is_scripting():
        if _onnx_export.exporting():
            return _onnx_export.wkv4(time_decay, time_first, k, v, state)
    return torch.ops.torch_rnn_ext.wkv4(time_decay, time_first, k, v, state)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, return_last_state: bool = False,
                   initial_state: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""The selective scan of Mamba (S6), with the arguments of mamba_ssm's ``selective_scan_fn``.

    .. math::
        \delta'_t = \mathrm{softplus}(\delta_t + \delta_{bias}) \text{ (or without softplus)}, \quad
        h_t = e^{\delta'_t A} h_{t-1} + \delta'_t B_t u_t, \quad
        y_t = \textstyle\sum_n C_t h_t + D u_t, \quad out = y \cdot \mathrm{silu}(z)

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N).
        B, C: each (dim, N) constant, (batch, N, L) varying, or (batch, G, N, L) grouped (channel d
            uses group d // (dim // G)).
        D, delta_bias: (dim,) or None. z: (batch, dim, L) or None (no gate).
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return the state after the last step.
        initial_state: (batch, dim, N) state before the first step, or None for zeros. A call with L = 1
            and the carried state computes exactly the step of the full scan (streaming decode).

    Dtypes: float32 or float64 (all arguments alike); computed in that dtype.

    Returns:
        out (batch, dim, L), or (out, last_state (batch, dim, N)) when ``return_last_state``.

    Example::

        >>> u, delta = torch.randn(2, 8, 100), torch.rand(2, 8, 100)
        >>> A, B, C = -torch.rand(8, 16), torch.randn(2, 16, 100), torch.randn(2, 16, 100)
        >>> out, h = torch_rnn_ext.selective_scan(u, delta, A, B, C, return_last_state=True)
    """
    out, last_state = _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    if return_last_state:
        return out, last_state
    return out


def wkv4(time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor] = None,
         return_state: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""RWKV-4's WKV time mixing, in the numerically stable form of its CUDA kernel.

    With :math:`w = -e^{time\_decay}` and :math:`u = time\_first`:

    .. math::
        y_t = \frac{\sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u + k_t} v_t}
                   {\sum_{i<t} e^{(t-1-i)w + k_i} + e^{u + k_t}}

    Args:
        time_decay, time_first: (C,).
        k, v: (batch, T, C). Any finite k (e.g. in [-1000, 1000]) gives finite results.
        state: (batch, 3, C), the (aa, bb, pp) state returned by a previous call, or None to start
            empty. Calling chunk by chunk with the carried state equals one call.
        return_state: also return the state after the last step.

    Dtypes: float32 or float64 (all arguments alike).

    Returns:
        y (batch, T, C), or (y, new_state (batch, 3, C)) when ``return_state``.

    Example::

        >>> k, v = torch.randn(2, 100, 64), torch.randn(2, 100, 64)
        >>> y, s = torch_rnn_ext.wkv4(torch.zeros(64), torch.zeros(64), k, v, return_state=True)
    """
    y, new_state = _wkv4_op(time_decay, time_first, k, v, state)
    if return_state:
        return y, new_state
    return y
