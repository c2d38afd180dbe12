"""Gated DeltaNet: the linear-attention layer of Qwen3-Next, its recurrence computed by the C++
``gated_delta_rule`` op.

Like the scan layers of ``scans.py`` it has ``step()`` for streaming decode and ``forward_with_state()``
for streaming chunks (what :class:`torch_rnn_ext.Streamer` calls), whose outputs match the full-sequence
``forward``.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..delta_rule import gated_delta_rule
from .scans import _check_stream_args

__all__ = ["GatedDeltaNet"]


def _check_not_empty(where: str, hidden_states: Tensor) -> None:
    if hidden_states.size(1) == 0:
        raise ValueError(f"{where}: hidden_states: expected at least one token (size (batch, L >= 1, "
                         f"hidden_size)), got {tuple(hidden_states.shape)}")


class RMSNormGated(nn.Module):
    r"""RMS normalisation over the last dimension, scaled by ``weight``, then gated by ``silu(gate)``:
    ``weight * x / sqrt(mean(x^2) + eps) * silu(gate)`` (Qwen3-Next's ``Qwen3NextRMSNormGated``), in the
    input's dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x * F.silu(gate)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedDeltaNet(nn.Module):
    r"""The Gated DeltaNet layer of Qwen3-Next (linear attention with the gated delta rule), with the
    parameter names, shapes and layout of Hugging Face transformers' ``Qwen3NextGatedDeltaNet`` (its
    ``state_dict`` loads here and ours there, unchanged); the recurrence is the C++
    :func:`torch_rnn_ext.gated_delta_rule` op.

    For an input x_t (hidden_size), with ``H = num_k_heads`` query/key heads of width ``dk =
    head_k_dim`` and ``HV = num_v_heads`` value heads of width ``dv = head_v_dim`` (query/key head h serves
    the value heads ``h * HV / H`` ... ``(h + 1) * HV / H - 1``):

    .. math::
        q, k, v, z &= \mathrm{in\_proj\_qkvz}(x_t), \quad b, a = \mathrm{in\_proj\_ba}(x_t) \\
        q, k, v &\leftarrow \mathrm{silu}(\text{causal depthwise conv1d over time}(q, k, v)) \\
        g &= -e^{A\_log} \, \mathrm{softplus}(a + dt\_bias), \quad \beta = \sigma(b) \\
        S_t &= e^{g} S_{t-1} + \hat k \, \big(\beta (v - S_{t-1}^\top e^{g} \hat k)\big)^\top, \quad
        o_t = S_t^\top \hat q / \sqrt{dk} \quad \text{per value head,} \\
        y_t &= \mathrm{out\_proj}\big(\mathrm{RMSNorm}(o_t) \cdot \mathrm{norm.weight} \cdot \mathrm{silu}(z)\big)

    where :math:`\hat q, \hat k` are q and k L2-normalised over their dk features
    (``x / sqrt(sum x^2 + 1e-6)``) and the RMS norm is per value head, over dv.

    Args:
        hidden_size: model width (``config.hidden_size``).
        num_k_heads: query/key heads H (``linear_num_key_heads``, 16 in Qwen3-Next-80B-A3B).
        num_v_heads: value heads HV, a multiple of H (``linear_num_value_heads``, 32).
        head_k_dim: query/key head width dk (``linear_key_head_dim``, 128).
        head_v_dim: value head width dv (``linear_value_head_dim``, 128).
        conv_kernel_size: width of the causal depthwise convolution (``linear_conv_kernel_dim``, 4).
        norm_eps: epsilon of the gated RMS norm (``rms_norm_eps``, 1e-6).
        device, dtype: of the parameters (float32 or float64).

    Parameters, with ``key_dim = H dk``, ``value_dim = HV dv``, ``conv_dim = 2 key_dim + value_dim``:
        dt_bias (HV), A_log (HV), conv1d (conv_dim, 1, conv_kernel_size) without bias, in_proj_qkvz
        (2 key_dim + 2 value_dim, hidden_size), in_proj_ba (2 HV, hidden_size), norm.weight (dv),
        out_proj (hidden_size, value_dim); all Linear without bias. The rows of in_proj_qkvz are grouped by
        key head (q, k, then that head's HV/H value heads' v and z), those of in_proj_ba likewise (b, a),
        as in transformers. Initialisation: torch.nn's for the Linear and Conv1d, ``dt_bias = 1``,
        ``A_log = log(U(0.01, 16))`` and ``norm.weight = 1`` (transformers').

    Shapes:
        - forward: hidden_states (batch, L, hidden_size) -> (batch, L, hidden_size).
        - states, from :meth:`allocate_state` (zeros) or a previous call: conv_state (batch, conv_dim,
          conv_kernel_size), the last conv_kernel_size conv inputs; recurrent_state (batch, HV, dk, dv),
          key-first (the layouts of transformers' cache).
        - step: hidden_states (batch, hidden_size) -> (out (batch, hidden_size), conv_state,
          recurrent_state).
        - forward_with_state: hidden_states (batch, L, hidden_size), L >= 1 -> (out (batch, L,
          hidden_size), conv_state, recurrent_state).

    Example::

        >>> m = torch_rnn_ext.GatedDeltaNet(256, num_k_heads=2, num_v_heads=4, head_k_dim=64, head_v_dim=64)
        >>> y = m(torch.randn(2, 100, 256))                       # (2, 100, 256)
        >>> conv, state = m.allocate_state(2)
        >>> y0, conv, state = m.step(torch.randn(2, 256), conv, state)
        >>> # transformers.models.qwen3_next's layer: m.load_state_dict(hf_layer.state_dict()) and back
    """

    def __init__(self, hidden_size: int, num_k_heads: int = 16, num_v_heads: int = 32, head_k_dim: int = 128,
                 head_v_dim: int = 128, conv_kernel_size: int = 4, norm_eps: float = 1e-6, device=None,
                 dtype=None):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_k_heads", num_k_heads),
                            ("num_v_heads", num_v_heads), ("head_k_dim", head_k_dim), ("head_v_dim", head_v_dim),
                            ("conv_kernel_size", conv_kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GatedDeltaNet: {name} must be a positive integer, got {value!r}")
        if num_v_heads % num_k_heads != 0:
            raise ValueError(f"GatedDeltaNet: num_v_heads ({num_v_heads}) must be a multiple of num_k_heads "
                             f"({num_k_heads}): each query/key head serves num_v_heads / num_k_heads value heads")
        if not norm_eps > 0:
            raise ValueError(f"GatedDeltaNet: norm_eps must be positive, got {norm_eps!r}")
        kw = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.num_k_heads = num_k_heads
        self.num_v_heads = num_v_heads
        self.head_k_dim = head_k_dim
        self.head_v_dim = head_v_dim
        self.key_dim = num_k_heads * head_k_dim
        self.value_dim = num_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.conv_kernel_size = conv_kernel_size
        self.norm_eps = norm_eps
        # Registered in transformers' order, so the state_dict keys come in its order too.
        self.dt_bias = nn.Parameter(torch.ones(num_v_heads, **kw))
        self.A_log = nn.Parameter(torch.empty(num_v_heads, **kw).uniform_(0.01, 16).log_())
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=conv_kernel_size, groups=self.conv_dim,
                                padding=conv_kernel_size - 1, bias=False, **kw)
        self.in_proj_qkvz = nn.Linear(hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False, **kw)
        self.in_proj_ba = nn.Linear(hidden_size, 2 * num_v_heads, bias=False, **kw)
        self.norm = RMSNormGated(head_v_dim, eps=norm_eps, **kw)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False, **kw)

    def extra_repr(self) -> str:
        return (f"{self.hidden_size}, num_k_heads={self.num_k_heads}, num_v_heads={self.num_v_heads}, "
                f"head_k_dim={self.head_k_dim}, head_v_dim={self.head_v_dim}, "
                f"conv_kernel_size={self.conv_kernel_size}")

    def _project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (batch, L, hidden_size) -> the conv input (batch, conv_dim, L) (q, k, v channels), z (batch, L, HV,
        dv), b and a (batch, L, HV), unpacked from transformers' per-key-head grouping."""
        batch, L = x.size(0), x.size(1)
        H, r, dk, dv = self.num_k_heads, self.num_v_heads // self.num_k_heads, self.head_k_dim, self.head_v_dim
        q, k, v, z = torch.split(self.in_proj_qkvz(x).view(batch, L, H, 2 * dk + 2 * r * dv),
                                 [dk, dk, r * dv, r * dv], dim=3)
        b, a = torch.split(self.in_proj_ba(x).view(batch, L, H, 2 * r), [r, r], dim=3)
        mixed = torch.cat([q.reshape(batch, L, self.key_dim), k.reshape(batch, L, self.key_dim),
                           v.reshape(batch, L, self.value_dim)], dim=-1)
        return (mixed.transpose(1, 2), z.reshape(batch, L, self.num_v_heads, dv),
                b.reshape(batch, L, self.num_v_heads), a.reshape(batch, L, self.num_v_heads))

    def _attend(self, mixed: Tensor, z: Tensor, b: Tensor, a: Tensor, recurrent_state: Optional[Tensor],
                output_final_state: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """The conv output ``mixed`` (batch, conv_dim, L), activated -> (out (batch, L, hidden_size), the final
        recurrent state when asked)."""
        batch, L = mixed.size(0), mixed.size(2)
        q, k, v = torch.split(mixed.transpose(1, 2), [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(batch, L, self.num_k_heads, self.head_k_dim)
        k = k.reshape(batch, L, self.num_k_heads, self.head_k_dim)
        v = v.reshape(batch, L, self.num_v_heads, self.head_v_dim)
        beta = torch.sigmoid(b)
        g = -torch.exp(self.A_log) * F.softplus(a + self.dt_bias)
        o, state = gated_delta_rule(q, k, v, g, beta, initial_state=recurrent_state,
                                    output_final_state=output_final_state, use_qk_l2norm_in_kernel=True)
        o = self.norm(o, z)  # (batch, L, HV, dv)
        return self.out_proj(o.reshape(batch, L, self.value_dim)), state

    def forward(self, hidden_states: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            _check_stream_args("GatedDeltaNet.forward", hidden_states, "hidden_states",
                               (-1, -2, self.hidden_size), (), self.A_log)
            _check_not_empty("GatedDeltaNet.forward", hidden_states)
        L = hidden_states.size(1)
        mixed, z, b, a = self._project(hidden_states)
        mixed = F.silu(self.conv1d(mixed)[..., :L])
        out, _ = self._attend(mixed, z, b, a, None, False)
        return out

    @torch.jit.export
    def allocate_state(self, batch: int) -> Tuple[Tensor, Tensor]:
        """Empty streaming states (zeros): conv_state (batch, conv_dim, conv_kernel_size), recurrent_state
        (batch, num_v_heads, head_k_dim, head_v_dim)."""
        w = self.A_log
        return (torch.zeros(batch, self.conv_dim, self.conv_kernel_size, device=w.device, dtype=w.dtype),
                torch.zeros(batch, self.num_v_heads, self.head_k_dim, self.head_v_dim, device=w.device,
                            dtype=w.dtype))

    def _check_states(self, where: str, x: Tensor, sizes: Tuple[int, ...], conv_state: Tensor,
                      recurrent_state: Tensor) -> None:
        _check_stream_args(where, x, "hidden_states", sizes,
                           ((conv_state, "conv_state", (-1, self.conv_dim, self.conv_kernel_size)),
                            (recurrent_state, "recurrent_state",
                             (-1, self.num_v_heads, self.head_k_dim, self.head_v_dim))), self.A_log)

    @torch.jit.export
    def step(self, hidden_states: Tensor, conv_state: Tensor,
             recurrent_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One token: hidden_states (batch, hidden_size) with the states of :meth:`allocate_state` or a previous
        call -> (out (batch, hidden_size), conv_state, recurrent_state). The states passed in are not
        modified."""
        if not torch.jit.is_scripting():
            self._check_states("GatedDeltaNet.step", hidden_states, (-1, self.hidden_size), conv_state,
                               recurrent_state)
        mixed, z, b, a = self._project(hidden_states.unsqueeze(1))
        conv_state = torch.cat([conv_state[:, :, 1:], mixed], dim=-1)
        mixed = F.silu((conv_state * self.conv1d.weight.squeeze(1)).sum(-1, keepdim=True))
        out, state = self._attend(mixed, z, b, a, recurrent_state, True)
        assert state is not None
        return out.squeeze(1), conv_state, state

    @torch.jit.export
    def forward_with_state(self, hidden_states: Tensor, conv_state: Tensor,
                           recurrent_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """A chunk of L >= 1 tokens: hidden_states (batch, L, hidden_size) with the states of
        :meth:`allocate_state`, :meth:`step` or a previous call -> (out (batch, L, hidden_size), conv_state,
        recurrent_state). From :meth:`allocate_state` it equals :meth:`forward`; chunk by chunk it equals one
        call on the whole sequence; it can be interleaved with :meth:`step`."""
        if not torch.jit.is_scripting():
            self._check_states("GatedDeltaNet.forward_with_state", hidden_states, (-1, -2, self.hidden_size),
                               conv_state, recurrent_state)
            _check_not_empty("GatedDeltaNet.forward_with_state", hidden_states)
        mixed, z, b, a = self._project(hidden_states)
        # The causal depthwise conv sees the previous conv_kernel_size - 1 inputs, then the chunk.
        mixed = torch.cat([conv_state[:, :, 1:], mixed], dim=-1)  # (batch, conv_dim, K - 1 + L)
        conv_state = mixed[:, :, mixed.size(2) - self.conv_kernel_size:]
        mixed = F.silu(F.conv1d(mixed, self.conv1d.weight, None, groups=self.conv_dim))  # (batch, conv_dim, L)
        out, state = self._attend(mixed, z, b, a, recurrent_state, True)
        assert state is not None
        return out, conv_state, state
