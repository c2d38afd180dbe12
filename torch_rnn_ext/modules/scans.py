"""Sequence-mixing layers built on the linear-time scan ops: Mamba's mixer and RWKV-4's time mixing.

Both are scriptable (``torch.jit.script``) and call ``torch.ops.torch_rnn_ext.*`` (through
``torch_rnn_ext.scans``' helpers, which during ONNX export give the recurrence as an ONNX Scan); each has a
``step()`` for streaming decode and a ``forward_with_state()`` for streaming chunks (what
:class:`torch_rnn_ext.Streamer` calls), whose outputs match the full-sequence ``forward``.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..scans import _selective_scan_op, _wkv4_op

def _check_stream_args(module: str, x: Tensor, x_name: str, x_sizes: Tuple[int, ...],
                       states: Tuple[Tuple[Tensor, str, Tuple[int, ...]], ...], like: Tensor) -> None:
    """Eager-mode checks of a streaming call's input and states: their shapes (-1: any batch, the same for
    all; -2: any length) and dtype (``like``'s), so a wrong state raises naming it instead of being
    broadcast or failing inside torch.cat."""
    if x.dim() != len(x_sizes) or any(w >= 0 and g != w for g, w in zip(x.shape, x_sizes)):
        raise ValueError(f"{module}: {x_name}: expected a tensor of size "
                         f"({', '.join('batch' if w == -1 else 'L' if w == -2 else str(w) for w in x_sizes)}), "
                         f"got {tuple(x.shape)}")
    if x.dtype != like.dtype:
        raise TypeError(f"{module}: {x_name}: expected dtype {like.dtype} (the module's), got {x.dtype}")
    batch = x.size(0)
    for t, name, sizes in states:
        want = tuple(batch if w == -1 else w for w in sizes)
        if not isinstance(t, Tensor) or tuple(t.shape) != want:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{module}: {name}: expected size {want} (batch {batch} of {x_name}), got {got}")
        if t.dtype != like.dtype:
            raise TypeError(f"{module}: {name}: expected dtype {like.dtype} (the module's), got {t.dtype}")


class MambaMixer(nn.Module):
    r"""The Mamba block's mixer, with the parameter names, shapes and initialisation of mamba_ssm's
    ``Mamba`` (so its state dicts load unchanged), computed by the C++ ``selective_scan`` op.

    Args:
        d_model: model width. d_state: N, the SSM state size per channel (16).
        d_conv: width of the causal depthwise convolution (4). expand: d_inner = expand * d_model (2).
        dt_rank: rank of the delta projection, "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: Mamba's delta initialisation.

    Parameters: in_proj (2 d_inner, d_model), conv1d (d_inner, 1, d_conv) with bias, x_proj
    (dt_rank + 2 N, d_inner), dt_proj (d_inner, dt_rank) with bias, A_log (d_inner, N), D (d_inner),
    out_proj (d_model, d_inner).

    Shapes: forward (batch, L, d_model) -> (batch, L, d_model); step (batch, d_model) with the states
    (conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, N)) from :meth:`allocate_state`
    or a previous step -> (out (batch, d_model), conv_state, ssm_state).

    Example::

        >>> m = MambaMixer(64)
        >>> y = m(torch.randn(2, 100, 64))
        >>> conv, ssm = m.allocate_state(2)
        >>> y0, conv, ssm = m.step(torch.randn(2, 64), conv, ssm)
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=True, **kw)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # delta = softplus(dt_proj.bias) starts log-uniform in [dt_min, dt_max]: the bias is its inverse.
        dt = torch.exp(torch.rand(self.d_inner, **kw) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A).to(dtype) if dtype is not None else torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device, dtype=dtype))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **kw)

    def _ssm_inputs(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        # x (..., d_inner) -> delta (..., d_inner) before its bias, B and C (..., N).
        x_dbl = self.x_proj(x)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, hidden_states: Tensor) -> Tensor:
        L = hidden_states.size(1)
        xz = self.in_proj(hidden_states)
        x, z = xz.chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L])  # (batch, d_inner, L)
        dt, B, C = self._ssm_inputs(x.transpose(1, 2))
        A = -torch.exp(self.A_log)
        y, _ = _selective_scan_op(
            x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D, z.transpose(1, 2),
            self.dt_proj.bias, True, None)
        return self.out_proj(y.transpose(1, 2))

    @torch.jit.export
    def allocate_state(self, batch: int) -> Tuple[Tensor, Tensor]:
        """Empty streaming states: conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, N)."""
        w = self.A_log
        return (torch.zeros(batch, self.d_inner, self.d_conv, device=w.device, dtype=w.dtype),
                torch.zeros(batch, self.d_inner, self.d_state, device=w.device, dtype=w.dtype))

    @torch.jit.export
    def step(self, hidden_states: Tensor, conv_state: Tensor,
             ssm_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One token: hidden_states (batch, d_model) -> (out (batch, d_model), conv_state, ssm_state)."""
        if not torch.jit.is_scripting():
            _check_stream_args("MambaMixer.step", hidden_states, "hidden_states", (-1, self.d_model),
                               ((conv_state, "conv_state", (-1, self.d_inner, self.d_conv)),
                                (ssm_state, "ssm_state", (-1, self.d_inner, self.d_state))), self.A_log)
        xz = self.in_proj(hidden_states)
        x, z = xz.chunk(2, dim=-1)
        conv_state = torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1)], dim=-1)
        x = (conv_state * self.conv1d.weight.squeeze(1)).sum(-1)
        bias = self.conv1d.bias
        if bias is not None:
            x = x + bias
        x = F.silu(x)
        dt, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log)
        y, ssm_state = _selective_scan_op(
            x.unsqueeze(-1), dt.unsqueeze(-1), A, B.unsqueeze(-1), C.unsqueeze(-1), self.D, z.unsqueeze(-1),
            self.dt_proj.bias, True, ssm_state)
        return self.out_proj(y.squeeze(-1)), conv_state, ssm_state

    @torch.jit.export
    def forward_with_state(self, hidden_states: Tensor, conv_state: Tensor,
                           ssm_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """A chunk of L >= 1 tokens: hidden_states (batch, L, d_model) with the states of
        :meth:`allocate_state`, :meth:`step` or a previous call -> (out (batch, L, d_model), conv_state,
        ssm_state). From :meth:`allocate_state` it equals :meth:`forward`; chunk by chunk it equals one
        call on the whole sequence; it can be interleaved with :meth:`step`."""
        if not torch.jit.is_scripting():
            _check_stream_args("MambaMixer.forward_with_state", hidden_states, "hidden_states",
                               (-1, -2, self.d_model),
                               ((conv_state, "conv_state", (-1, self.d_inner, self.d_conv)),
                                (ssm_state, "ssm_state", (-1, self.d_inner, self.d_state))), self.A_log)
        xz = self.in_proj(hidden_states)
        x, z = xz.chunk(2, dim=-1)
        # The causal depthwise conv sees the previous d_conv - 1 inputs, then the chunk.
        x = torch.cat([conv_state[:, :, 1:], x.transpose(1, 2)], dim=-1)  # (batch, d_inner, d_conv - 1 + L)
        conv_state = x[:, :, x.size(2) - self.d_conv:]
        x = F.silu(F.conv1d(x, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))  # (batch, d_inner, L)
        dt, B, C = self._ssm_inputs(x.transpose(1, 2))
        A = -torch.exp(self.A_log)
        y, ssm_state = _selective_scan_op(
            x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D, z.transpose(1, 2),
            self.dt_proj.bias, True, ssm_state)
        return self.out_proj(y.transpose(1, 2)), conv_state, ssm_state


class RWKV4TimeMix(nn.Module):
    r"""RWKV-4's time mixing block (``RWKV_TimeMix``), with its parameter names and initialisation,
    computed by the C++ ``wkv4`` op.

    Args:
        n_embd: model width C. attn_sz: width of k, v, r (n_embd when None).
        layer_id, n_layer: position of the layer, used by RWKV-4's initialisation of the decays and mixes.

    Parameters: time_decay, time_first (attn_sz), time_mix_k, time_mix_v, time_mix_r (1, 1, n_embd),
    key, value, receptance (attn_sz, n_embd), output (n_embd, attn_sz); all Linear without bias.

    Shapes: forward (batch, T, n_embd) -> (batch, T, n_embd). step (batch, n_embd) with last_x
    (batch, n_embd) and the wkv state (batch, 3, attn_sz) from :meth:`allocate_state` or a previous
    step -> (out, x (the new last_x), new state).

    Example::

        >>> m = RWKV4TimeMix(64)
        >>> y = m(torch.randn(2, 100, 64))
        >>> last_x, state = m.allocate_state(2)
        >>> y0, last_x, state = m.step(torch.randn(2, 64), last_x, state)
    """

    def __init__(self, n_embd: int, attn_sz: Optional[int] = None, layer_id: int = 0, n_layer: int = 1,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        attn_sz = n_embd if attn_sz is None else attn_sz
        self.n_embd = n_embd
        self.attn_sz = attn_sz
        ratio_0_to_1 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer_id / n_layer
        h = torch.arange(attn_sz, dtype=torch.float64)
        decay_speed = -5 + 8 * (h / max(attn_sz - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(attn_sz)], dtype=torch.float64) * 0.5
        x = (torch.arange(n_embd, dtype=torch.float64) / n_embd).view(1, 1, n_embd)
        self.time_decay = nn.Parameter(decay_speed.to(**kw))
        self.time_first = nn.Parameter((torch.ones(attn_sz, dtype=torch.float64) * math.log(0.3) + zigzag).to(**kw))
        self.time_mix_k = nn.Parameter(torch.pow(x, ratio_1_to_almost0).to(**kw))
        self.time_mix_v = nn.Parameter((torch.pow(x, ratio_1_to_almost0) + 0.3 * ratio_0_to_1).to(**kw))
        self.time_mix_r = nn.Parameter(torch.pow(x, 0.5 * ratio_1_to_almost0).to(**kw))
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.key = nn.Linear(n_embd, attn_sz, bias=False, **kw)
        self.value = nn.Linear(n_embd, attn_sz, bias=False, **kw)
        self.receptance = nn.Linear(n_embd, attn_sz, bias=False, **kw)
        self.output = nn.Linear(attn_sz, n_embd, bias=False, **kw)

    def _mix(self, x: Tensor, xx: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + xx * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        return self.key(xk), self.value(xv), torch.sigmoid(self.receptance(xr))

    def forward(self, x: Tensor) -> Tensor:
        k, v, sr = self._mix(x, self.time_shift(x))
        wkv, _ = _wkv4_op(self.time_decay, self.time_first, k, v, None)
        return self.output(sr * wkv)

    @torch.jit.export
    def allocate_state(self, batch: int) -> Tuple[Tensor, Tensor]:
        """Empty streaming states: last_x (batch, n_embd) zeros and the empty wkv state (batch, 3, attn_sz)."""
        w = self.time_decay
        state = torch.zeros(batch, 3, self.attn_sz, device=w.device, dtype=w.dtype)
        state[:, 2] = -1e38
        return torch.zeros(batch, self.n_embd, device=w.device, dtype=w.dtype), state

    @torch.jit.export
    def step(self, x: Tensor, last_x: Tensor, state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One token: x (batch, n_embd) -> (out (batch, n_embd), x as the next last_x, new wkv state)."""
        if not torch.jit.is_scripting():
            _check_stream_args("RWKV4TimeMix.step", x, "x", (-1, self.n_embd),
                               ((last_x, "last_x", (-1, self.n_embd)), (state, "state", (-1, 3, self.attn_sz))),
                               self.time_decay)
        k, v, sr = self._mix(x.unsqueeze(1), last_x.unsqueeze(1))
        wkv, state = _wkv4_op(self.time_decay, self.time_first, k, v, state)
        return self.output(sr * wkv).squeeze(1), x, state

    @torch.jit.export
    def forward_with_state(self, x: Tensor, last_x: Tensor, state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """A chunk of T >= 1 tokens: x (batch, T, n_embd) with last_x (batch, n_embd) and the wkv state
        (batch, 3, attn_sz) of :meth:`allocate_state`, :meth:`step` or a previous call -> (out (batch, T,
        n_embd), x[:, -1] as the next last_x, new state). From :meth:`allocate_state` it equals
        :meth:`forward`; chunk by chunk it equals one call on the whole sequence."""
        if not torch.jit.is_scripting():
            _check_stream_args("RWKV4TimeMix.forward_with_state", x, "x", (-1, -2, self.n_embd),
                               ((last_x, "last_x", (-1, self.n_embd)), (state, "state", (-1, 3, self.attn_sz))),
                               self.time_decay)
        k, v, sr = self._mix(x, torch.cat([last_x.unsqueeze(1), x[:, :-1]], dim=1))
        wkv, state = _wkv4_op(self.time_decay, self.time_first, k, v, state)
        return self.output(sr * wkv), x[:, -1], state
