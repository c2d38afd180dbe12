"""Thin, scriptable wrapper over ``torch.ops.torch_rnn_ext.gated_delta_rule``, the recurrence of Gated
DeltaNet (Qwen3-Next, Qwen3.5) and, with a per-key gate, Kimi Linear's KDA. Forward and backward are C++
ops with C++ autograd, so the gradients exist in Python, TorchScript and C++ alike.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _onnx_export


def _op(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], beta: Tensor, scale: Optional[float],
        initial_state: Optional[Tensor], use_qk_l2norm_in_kernel: bool,
        cu_seqlens: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The op, or during ONNX export its standard-ops form (an ONNX Scan; see _onnx_export.py)."""
    if not torch.jit.is_scripting():
        if _onnx_export.exporting():
            return _onnx_export.gated_delta_rule(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel,
                                                 cu_seqlens)
    return torch.ops.torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel,
                                                    cu_seqlens)


def gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], beta: Tensor,
                     scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                     output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
                     cu_seqlens: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    r"""The gated delta rule, with the arguments of flash-linear-attention's ``chunk_gated_delta_rule``.

    Per value head, with the state :math:`S` of size (K, V) (key-first):

    .. math::
        S_t = e^{g_t} (I - \beta_t k_t k_t^\top) S_{t-1} + \beta_t k_t v_t^\top, \quad
        o_t = S_t^\top (\mathrm{scale}\; q_t)

    Args:
        q, k: (B, T, H, K). q/k head ``h`` serves value heads ``h * HV // H`` to ``(h + 1) * HV // H - 1``.
        v: (B, T, HV, V), with H dividing HV.
        g: (B, T, HV) log decay (<= 0 for a decaying state), (B, T, HV, K) one per key channel (KDA), or
            None for the ungated delta rule.
        beta: (B, T, HV) write strength, usually in (0, 1).
        scale: multiplies q; None for ``K ** -0.5``.
        initial_state: (N, HV, K, V) state before the first step, or None for zeros; N = B, or the number
            of sequences with ``cu_seqlens``.
        output_final_state: also return the state after the last step.
        use_qk_l2norm_in_kernel: L2-normalise q and k over K (``x / sqrt(sum x^2 + 1e-6)``) inside the op,
            gradients included.
        cu_seqlens: (N + 1,) int64 offsets of N sequences packed along T (B must be 1), each starting from
            its own initial state, as in flash-linear-attention's variable-length mode.

    Dtypes: float32 (state kept in float32) or float64; all tensor arguments alike.

    Returns:
        (o, final_state): o (B, T, HV, V); final_state (N, HV, K, V) when ``output_final_state``, else None.
        A call with T = 1 and the carried state is the streaming decode step; calls over consecutive chunks
        carrying the state equal one call over the whole sequence (to rounding with a scalar gate, whose
        decay the op keeps out of the state between the points where it multiplies it in; bit for bit
        with per-key decays or none).

    Example::

        >>> B, T, H, K, V = 1, 64, 2, 32, 32
        >>> q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
        >>> g = torch.nn.functional.logsigmoid(torch.randn(B, T, H))
        >>> beta = torch.rand(B, T, H)
        >>> o, state = torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, output_final_state=True,
        ...                                           use_qk_l2norm_in_kernel=True)
    """
    o, final_state = _op(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel, cu_seqlens)
    if output_final_state:
        return o, final_state
    return o, None
