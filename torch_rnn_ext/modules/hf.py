"""Hugging Face transformers' recurrent mixers computed with our scan ops, for ``convert``.

transformers runs Mamba-1, RWKV-4 and Qwen3-Next's Gated DeltaNet on the CPU through pure-PyTorch fallbacks
(a Python loop over time steps in ``mamba_selective_scan`` and ``rwkv_linear_attention_cpu``; a chunked float32
algorithm in ``torch_chunk_gated_delta_rule`` and a loop in ``torch_recurrent_gated_delta_rule``) when the
CUDA kernels are absent. ``convert`` gives each such module a subclass of its own class (the same name,
parameters, buffers, state_dict keys, device, dtype and training mode; ``isinstance`` still holds) whose
``forward`` is the transformers forward with the recurrence done by ``torch.ops.torch_rnn_ext.selective_scan``
/ ``wkv4`` / ``gated_delta_rule``.

One entry of ``_TABLE`` per class: (module, class name) -> forward. Keys are strings, so nothing here imports
transformers unless a model of it is converted; a family added to this library later (Mamba-2, Qwen3.5's
Gated DeltaNet, RWKV-7) is one more forward and one more entry.

Arithmetic: in a float32 model the converted layer computes what transformers' path does, in the same
dtype. In a float64 model transformers rounds some operands to float32 (Mamba: B and u in the state update,
D and delta_bias; RWKV-4: the keys, and its state between calls is float32); the converted layer rounds
the same operands, so it computes the model transformers defines. Qwen3-Next's fallbacks compute the whole
gated delta rule in float32 (state included) even in a float64 model; there the converted layer computes it
in float64 (rounding only what transformers' own code outside the recurrence rounds: A_log and a in g).
float16 / bfloat16 models run the scans in float32 (as transformers' paths mostly do) and cast back.
"""
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..delta_rule import gated_delta_rule

__all__ = ["converted_class"]

_MAMBA = "transformers.models.mamba.modeling_mamba"
_RWKV = "transformers.models.rwkv.modeling_rwkv"
_QWEN3_NEXT = "transformers.models.qwen3_next.modeling_qwen3_next"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _selective_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                    delta_bias: Optional[Tensor], h0: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """transformers' ``mamba_selective_scan`` (and, with h0 and L = 1, ``mamba_selective_state_update``)
    with softplus on dt + delta_bias, D and the silu(z) gate; u, dt, z (batch, dim, L), B, C (batch, N, L),
    A (dim, N), h0 (batch, dim, N) or None. Returns (out in u's dtype, last state)."""
    dtype = u.dtype
    cd = _compute_dtype(dtype)
    bias = delta_bias.to(cd) if delta_bias is not None else None
    h0 = h0.to(cd) if h0 is not None else None
    if dtype == torch.float64:
        # transformers rounds B and u to float32 where they enter the state, not in the skip term D u (D itself
        # rounded): the skip and the gate are applied here, outside the op.
        y, h = torch.ops.torch_rnn_ext.selective_scan(u.float().to(cd), dt, A.to(cd), B.float().to(cd), C, None,
                                                      None, bias, True, h0)
        return (y + u * D.float()[:, None]) * F.silu(z), h
    y, h = torch.ops.torch_rnn_ext.selective_scan(u.to(cd), dt.to(cd), A.to(cd), B.to(cd), C.to(cd), D.to(cd),
                                                  z.to(cd), bias, True, h0)
    return y.to(dtype), h


def _cache_states(self, cache, kwargs: dict):
    """The cache a mixer's forward was given (``cache_params``, its name before transformers 5.40, is taken
    from kwargs too) and this layer's (conv, recurrent) states in it: (cache, conv_state, recurrent_state),
    Nones without a cache."""
    if cache is None:
        cache = kwargs.pop("cache_params", None)
    kwargs.pop("cache_params", None)
    if cache is None:
        return None, None, None
    return (cache, cache.get_conv_state(self.layer_idx, state_idx=0),
            cache.get_recurrent_state(self.layer_idx, state_idx=0))


def _mamba_mixer_forward(self, hidden_states: Tensor, cache=None, attention_mask: Optional[Tensor] = None,
                         **kwargs):
    """transformers' ``MambaMixer.forward`` (same arguments, cache protocol and result), the selective scan and
    the decode step computed by torch_rnn_ext's ``selective_scan``. A prompt given in pieces with the cache
    continues from the cached state (transformers' own path restarts multi-token calls from zeros)."""
    hf = sys.modules[_MAMBA]
    cache, conv_state, recurrent_state = _cache_states(self, cache, kwargs)
    seq_len = hidden_states.shape[1]

    hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
    x, gate = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
    weight = self.conv1d.weight.squeeze(1)
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(self.layer_idx):
        x = hf.causal_conv1d_update(x, conv_state, weight, self.conv1d.bias, activation=self.activation)
    else:
        if cache is not None:
            x = cache.update_conv_state(x, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        x = hf.causal_conv1d_fn(x, weight, self.conv1d.bias, activation=self.activation, **kwargs)
        if cache is not None:
            x = x[:, :, -seq_len:]

    x = hf.apply_mask_to_padding_states(x.transpose(1, 2), attention_mask)  # (batch, L, dim)
    time_step, B, C = torch.split(self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size],
                                  dim=-1)
    time_step = self.dt_proj.weight @ time_step.transpose(1, 2)  # (batch, dim, L)
    A = -torch.exp(self.A_log.float())
    delta_bias = self.dt_proj.bias.float() if self.dt_proj.bias is not None else None
    out, state = _selective_scan(x.transpose(1, 2), time_step, A, B.transpose(1, 2), C.transpose(1, 2), self.D,
                                 gate, delta_bias, recurrent_state)
    if cache is not None:
        cache.update_recurrent_state(state, self.layer_idx)
    return self.out_proj(out.transpose(1, 2).to(hidden_states.dtype))


def _wkv4(time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor,
          state: Optional[Tuple[Tensor, Tensor, Tensor]], return_state: bool
          ) -> Tuple[Tensor, Optional[List[Tensor]]]:
    """transformers' ``rwkv_linear_attention_cpu``: key, value (batch, T, C), state (num, den, max), each
    (batch, C), or None. Returns (output in key's dtype, [num, den, max] or None)."""
    dtype = key.dtype
    cd = _compute_dtype(dtype)
    if dtype == torch.float64:
        key = key.float()  # transformers' CPU path computes with float32 keys
    s0 = torch.stack(state, dim=1).to(cd) if state is not None else None  # (batch, 3, C): aa, bb, pp
    y, s = torch.ops.torch_rnn_ext.wkv4(time_decay.to(cd), time_first.to(cd), key.to(cd), value.to(cd), s0)
    new_state = list(s.unbind(1)) if return_state or state is not None else None
    return y.to(dtype), new_state


def _rwkv_self_attention_forward(self, hidden: Tensor, state: Optional[List[Tensor]] = None,
                                 use_cache: bool = False):
    """transformers' ``RwkvSelfAttention.forward`` (same arguments, state layout and result), the WKV
    recurrence computed by torch_rnn_ext's ``wkv4``."""
    receptance, key, value, state = self.extract_key_value(hidden, state=state)
    layer_state = tuple(s[:, :, self.layer_id] for s in state[2:]) if state is not None else None
    rwkv, layer_state = _wkv4(self.time_decay, self.time_first, key, value, layer_state, use_cache)
    if layer_state is not None:
        for i in range(3):
            state[2 + i][:, :, self.layer_id] = layer_state[i]
    return self.output(receptance * rwkv), state


def _gated_delta_rule(query: Tensor, key: Tensor, value: Tensor, g: Tensor, beta: Tensor,
                      initial_state: Optional[Tensor], output_final_state: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """transformers' ``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule`` with
    ``use_qk_l2norm_in_kernel=True``: query, key (batch, L, H, dk), value (batch, L, HV, dv), g, beta (batch, L, HV),
    initial_state (batch, HV, dk, dv) or None. Computed in float64 for float64 value (transformers: float32),
    float32 otherwise; returns (out in query's dtype, final state in the compute dtype, or None)."""
    cd = _compute_dtype(value.dtype)
    out, state = gated_delta_rule(query.to(cd), key.to(cd), value.to(cd), g.to(cd), beta.to(cd),
                                  initial_state=initial_state.to(cd) if initial_state is not None else None,
                                  output_final_state=output_final_state, use_qk_l2norm_in_kernel=True)
    return out.to(query.dtype), state


def _qwen3_next_gated_deltanet_forward(self, hidden_states: Tensor, cache=None,
                                       attention_mask: Optional[Tensor] = None, **kwargs):
    """transformers' ``Qwen3NextGatedDeltaNet.forward`` (same arguments, cache protocol and result), the gated
    delta rule (prefill, chunks with the cache and the cached decode step alike) computed by torch_rnn_ext's
    ``gated_delta_rule``."""
    hf = sys.modules[_QWEN3_NEXT]
    cache, conv_state, recurrent_state = _cache_states(self, cache, kwargs)
    hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
    seq_len = hidden_states.shape[1]

    query, key, value, z, b, a = self.fix_query_key_value_ordering(self.in_proj_qkvz(hidden_states),
                                                                   self.in_proj_ba(hidden_states))
    query, key, value = (x.reshape(x.shape[0], x.shape[1], -1) for x in (query, key, value))
    mixed_qkv = torch.cat((query, key, value), dim=-1).transpose(1, 2)
    weight = self.conv1d.weight.squeeze(1)
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(self.layer_idx):
        mixed_qkv = hf.causal_conv1d_update(mixed_qkv, conv_state, weight, self.conv1d.bias, self.activation)
    else:
        if cache is not None:
            mixed_qkv = cache.update_conv_state(mixed_qkv, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        mixed_qkv = hf.causal_conv1d_fn(mixed_qkv, weight, self.conv1d.bias, activation=self.activation, **kwargs)
        if cache is not None:
            mixed_qkv = mixed_qkv[:, :, -seq_len:]

    query, key, value = torch.split(mixed_qkv.transpose(1, 2), [self.key_dim, self.key_dim, self.value_dim], dim=-1)
    query = query.reshape(query.shape[0], query.shape[1], -1, self.head_k_dim)
    key = key.reshape(key.shape[0], key.shape[1], -1, self.head_k_dim)
    value = value.reshape(value.shape[0], value.shape[1], -1, self.head_v_dim)
    beta = b.sigmoid()
    g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)  # (transformers' roundings)
    # transformers' CPU paths ignore packed-sequence boundaries (cu_seq_lens_q) in the conv and the recurrence
    # alike; so does this one, to compute the same model.
    core_attn_out, last_recurrent_state = _gated_delta_rule(query, key, value, g, beta, recurrent_state,
                                                            cache is not None)
    if cache is not None:
        cache.update_recurrent_state(last_recurrent_state, self.layer_idx)

    z_shape = z.shape
    core_attn_out = self.norm(core_attn_out.reshape(-1, core_attn_out.shape[-1]), z.reshape(-1, z.shape[-1]))
    core_attn_out = core_attn_out.reshape(z_shape).reshape(z_shape[0], z_shape[1], -1)
    return self.out_proj(core_attn_out)


# (module, class name) of a transformers class -> the forward its converted subclass runs.
_TABLE: Dict[Tuple[str, str], Callable] = {
    (_MAMBA, "MambaMixer"): _mamba_mixer_forward,
    (_RWKV, "RwkvSelfAttention"): _rwkv_self_attention_forward,
    (_QWEN3_NEXT, "Qwen3NextGatedDeltaNet"): _qwen3_next_gated_deltanet_forward,
}
_CONVERTED: Dict[type, type] = {}


def converted_class(cls: type) -> Optional[type]:
    """The subclass of transformers' ``cls`` that computes with our ops, or None when ``cls`` is not in the
    table (exact classes only: a user's subclass keeps its own forward)."""
    if cls in _CONVERTED:
        return _CONVERTED[cls]
    forward = _TABLE.get((cls.__module__, cls.__qualname__))
    if forward is None:
        return None
    ours = type(cls.__name__, (cls,), {
        "forward": forward,
        "__module__": __name__,
        "__qualname__": cls.__name__,
        "__doc__": f"transformers' {cls.__name__}, computed with torch_rnn_ext's ops (see torch_rnn_ext.convert).",
    })
    _CONVERTED[cls] = ours
    _CONVERTED[ours] = None  # converting again leaves it as it is
    return ours


def __getattr__(name: str) -> type:
    # Unpickling a converted model looks its classes up here: build them from the table.
    for (module, cls_name) in _TABLE:
        if cls_name == name:
            __import__(module)
            return converted_class(getattr(sys.modules[module], cls_name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
