"""ONNX export of our LSTM, GRU and RNN modules and their cells as the standard ONNX ``LSTM`` / ``GRU`` /
``RNN`` nodes, so that onnxruntime (or any ONNX runtime) runs them without this library.

While ``torch.onnx.export`` runs (``torch.onnx.is_in_onnx_export()``), the modules' ``forward`` calls
``rnn_forward`` / ``cell_forward`` here instead of our op: one node per layer (both directions of a
bidirectional layer in one node), torch's gate blocks reordered to ONNX's (LSTM i, f, g, o -> i, o, f, c;
GRU r, z, n -> z, r, h, with ``linear_before_reset=1``, which is torch's GRU), the biases as ONNX's
``B = [Wb, Rb]``, and the outputs reshaped from ONNX's ``[T, dirs, B, H]`` to torch's ``[T, B, dirs * H]``.
A cell is a node over a sequence of length 1.

- torch 2.x, the default (dynamo-based) exporter: the node is ``torch.onnx.ops.symbolic_multi_out``.
- The TorchScript-based exporter (``dynamo=False`` on torch 2.x, the only one on 1.13): an
  ``autograd.Function`` whose ``symbolic`` emits the node (its forward computes the layer with our op,
  for the tracer).

The scans (``selective_scan``, ``wkv4`` below, used by the functional wrappers and by ``MambaMixer`` /
``RWKV4TimeMix`` through torch_rnn_ext/scans.py) export, with the dynamo-based exporter only, as the
recurrence in torch's ``scan`` higher-order op (an ONNX ``Scan``) and the rest as ordinary ops, dynamic in
length and batch.

Not exported (ValueError, naming the reason): ``proj_size`` > 0 (ONNX's LSTM has no projection),
PackedSequence input (export the padded tensor; ONNX's ``sequence_lens`` is not used), and training mode
with dropout between layers.
"""
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

# The exporters' flags, read directly (what torch.onnx.is_in_onnx_export() reads, without its imports on
# every call: a streaming step checks them): the dynamo-based exporter's must be read this way anyway,
# since under its strict (Dynamo) capture is_in_onnx_export() is not traced through, and a model would
# fall back to our ops there.
try:  # torch 2.x
    from torch.onnx._internal.exporter import _flags as _DYNAMO_FLAGS
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _TS_GLOBALS
except ImportError:
    _DYNAMO_FLAGS = None
    try:  # torch 1.13
        from torch.onnx._globals import GLOBALS as _TS_GLOBALS
    except ImportError:
        _TS_GLOBALS = None


_IS_COMPILING = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def exporting() -> bool:
    """Whether torch.onnx.export is running (either exporter)."""
    if _DYNAMO_FLAGS is not None:
        if getattr(_DYNAMO_FLAGS, "_is_onnx_exporting", False):
            return True
        if _IS_COMPILING is not None and _IS_COMPILING():
            return False  # under Dynamo (torch.compile, torch.export): the TorchScript exporter is not running
    if _TS_GLOBALS is not None:
        return bool(_TS_GLOBALS.in_onnx_export)
    return torch.onnx.is_in_onnx_export()


# torch's gate blocks in ONNX's order.
_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
_OP = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _gates(w: Tensor, mode: str, H: int) -> Tensor:
    order = _ORDER.get(mode)
    if order is None:
        return w
    return torch.cat([w[i * H:(i + 1) * H] for i in order], 0)


def _attrs(mode: str, H: int, dirs: int) -> dict:
    attrs: dict = {"hidden_size": H, "direction": "bidirectional" if dirs == 2 else "forward"}
    if mode == "GRU":
        attrs["linear_before_reset"] = 1
    elif mode != "LSTM":
        attrs["activations"] = ["Tanh" if mode == "RNN_TANH" else "Relu"] * dirs
    return attrs


def _unused(g):
    """A missing optional input of an ONNX node (the TorchScript-based exporter's convention)."""
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


_EAGER: List[Any] = []  # the value computation of the _TracedNode being applied (a closure is no traceable argument)


class _TracedNode(torch.autograd.Function):
    """The node for the TorchScript-based exporter: ``symbolic`` emits it; ``forward`` returns what the
    node computes (``_EAGER[-1]()``), so that tracing goes on with the right values and shapes."""

    @staticmethod
    def forward(ctx, mode, H, dirs, x, W, R, B, h0, c0):  # noqa: D102
        return _EAGER[-1]()

    @staticmethod
    def symbolic(g, mode, H, dirs, x, W, R, B, h0, c0):  # noqa: D102
        kw = {}
        for name, value in _attrs(mode, H, dirs).items():
            kw[name + ("_i" if isinstance(value, int) else "_s")] = value  # ints, strings or string lists
        inputs = [x, W, R, B if B is not None else _unused(g), _unused(g), h0 if h0 is not None else _unused(g)]
        if mode == "LSTM":
            inputs.append(c0 if c0 is not None else _unused(g))
        return g.op(_OP[mode], *inputs, outputs=3 if mode == "LSTM" else 2, **kw)


def _node(mode: str, H: int, dirs: int, x: Tensor, W: Tensor, R: Tensor, B: Optional[Tensor],
          h0: Optional[Tensor], c0: Optional[Tensor], eager) -> List[Tensor]:
    """One ONNX node over x (T, batch, I): [Y (T, dirs, batch, H), Y_h (dirs, batch, H)(, Y_c)]."""
    n_out = 3 if mode == "LSTM" else 2
    if torch.jit.is_tracing():
        _EAGER.append(eager)
        try:
            return list(_TracedNode.apply(mode, H, dirs, x, W, R, B, h0, c0))
        finally:
            _EAGER.pop()
    T, batch = x.shape[0], x.shape[1]
    inputs = [x, W, R, B, None, h0] + ([c0] if mode == "LSTM" else [])
    shapes = [[T, dirs, batch, H], [dirs, batch, H], [dirs, batch, H]][:n_out]
    return list(torch.onnx.ops.symbolic_multi_out(_OP[mode], inputs, _attrs(mode, H, dirs),
                                                  dtypes=[x.dtype] * n_out, shapes=shapes))


def _layer_op(mode: str):
    return {"LSTM": torch.ops.torch_rnn_ext.lstm, "GRU": torch.ops.torch_rnn_ext.gru,
            "RNN_TANH": torch.ops.torch_rnn_ext.rnn_tanh, "RNN_RELU": torch.ops.torch_rnn_ext.rnn_relu}[mode]


def _eager_layer(mode: str, H: int, dirs: int, x: Tensor, params: List[Tensor], has_bias: bool,
                 h0: Optional[Tensor], c0: Optional[Tensor]):
    """What the node computes, by our op (one layer), in ONNX's output layout."""
    def run():
        # computed off the trace (only the node is recorded: the tracer cannot follow our op in here)
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            values = compute()
        finally:
            torch._C._set_tracing_state(state)
        # copied on the trace: the Function's outputs must be values the tracer knows
        return tuple(t.clone() for t in values)

    def compute():
        with torch.no_grad():
            if mode == "LSTM":
                out, h, c = _layer_op(mode)(x, [] if h0 is None else [h0, c0], params, has_bias, 1, 0.0, False,
                                            dirs == 2, False, None)
                states = [h, c]
            else:
                out, h = _layer_op(mode)(x, h0, params, has_bias, 1, 0.0, False, dirs == 2, False, None)
                states = [h]
        T, batch = x.shape[0], x.shape[1]
        return tuple([out.view(T, batch, dirs, H).transpose(1, 2)] + states)
    return run


def _check_exportable(module, input) -> None:
    from torch.nn.utils.rnn import PackedSequence
    name = type(module).__name__
    if isinstance(input, PackedSequence):
        raise ValueError(f"torch_rnn_ext.{name}: ONNX export of a PackedSequence input is not supported; "
                         "export the padded tensor instead")
    if getattr(module, "proj_size", 0) > 0:
        raise ValueError(f"torch_rnn_ext.{name}: ONNX export with proj_size > 0 is not supported: ONNX's LSTM "
                         "node has no projection")
    if module.training and getattr(module, "dropout", 0) > 0 and getattr(module, "num_layers", 1) > 1:
        raise ValueError(f"torch_rnn_ext.{name}: ONNX export in training mode with dropout between layers is "
                         "not supported; export the model in eval mode")


def _run_layers(mode: str, H: int, dirs: int, layers: int, x: Tensor, weights: List[List[Tensor]],
                has_bias: bool, h0: Optional[Tensor], c0: Optional[Tensor]) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """x (T, batch, I) through `layers` nodes; weights[l] = that layer's flat weights (torch's order, both
    directions). Returns (output (T, batch, dirs * H), [h_n per layer], [c_n per layer])."""
    hs, cs = [], []
    per_dir = 4 if has_bias else 2
    for layer in range(layers):
        p = weights[layer]
        d_params = [p[d * per_dir:(d + 1) * per_dir] for d in range(dirs)]
        W = torch.stack([_gates(q[0], mode, H) for q in d_params])
        R = torch.stack([_gates(q[1], mode, H) for q in d_params])
        B = torch.stack([torch.cat([_gates(q[2], mode, H), _gates(q[3], mode, H)]) for q in d_params]) \
            if has_bias else None
        lh = h0[layer * dirs:(layer + 1) * dirs] if h0 is not None else None
        lc = c0[layer * dirs:(layer + 1) * dirs] if c0 is not None else None
        outs = _node(mode, H, dirs, x, W, R, B, lh, lc, _eager_layer(mode, H, dirs, x, p, has_bias, lh, lc))
        T, batch = x.shape[0], x.shape[1]
        x = outs[0].transpose(1, 2).reshape(T, batch, dirs * H)
        hs.append(outs[1])
        if mode == "LSTM":
            cs.append(outs[2])
    return x, hs, cs


def rnn_forward(module, input: Tensor, hx: Any):
    """``forward`` of our LSTM / GRU / RNN during ONNX export (same arguments and results)."""
    _check_exportable(module, input)
    mode, H = module.mode, module.hidden_size
    dirs, layers = 2 if module.bidirectional else 1, module.num_layers
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(1)
    if module.batch_first and batched:
        x = x.transpose(0, 1)
    if mode == "LSTM":
        h0, c0 = (None, None) if hx is None else hx
    else:
        h0, c0 = hx, None
    if not batched:
        h0 = h0.unsqueeze(1) if h0 is not None else None
        c0 = c0.unsqueeze(1) if c0 is not None else None
    flat = module._flat_weights
    n = len(flat) // layers
    weights = [flat[layer * n:(layer + 1) * n] for layer in range(layers)]
    out, hs, cs = _run_layers(mode, H, dirs, layers, x, weights, module.bias, h0, c0)
    h_n = torch.cat(hs, 0)
    c_n = torch.cat(cs, 0) if mode == "LSTM" else None
    if module.batch_first and batched:
        out = out.transpose(0, 1)
    if not batched:
        out, h_n = out.squeeze(1), h_n.squeeze(1)
        c_n = c_n.squeeze(1) if c_n is not None else None
    return (out, (h_n, c_n)) if mode == "LSTM" else (out, h_n)


def cell_forward(cell, mode: str, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor] = None):
    """A cell's step during ONNX export: a node over one step. input (batch, I), h0 / c0 (batch, H) or
    None; returns h' (and c' for an LSTM cell), each (batch, H)."""
    x = input.unsqueeze(0)  # (1, batch, I)
    weights = [[cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])]
    _, hs, cs = _run_layers(mode, cell.hidden_size, 1, 1, x, weights, cell.bias,
                            h0.unsqueeze(0) if h0 is not None else None, c0.unsqueeze(0) if c0 is not None else None)
    return (hs[0][0], cs[0][0]) if mode == "LSTM" else hs[0][0]


# ---- The scans: the recurrence as an ONNX Scan (torch's scan higher-order op, which the dynamo-based
# exporter translates to Scan), the rest as ordinary ops; onnxruntime runs it without our library.

def _scan_export_check(op: str) -> None:
    if torch.jit.is_tracing():
        raise ValueError(f"torch_rnn_ext.{op}: ONNX export of the scans needs torch 2.x's dynamo-based exporter "
                         "(torch.onnx.export(..., dynamo=True), the default): the TorchScript-based one has no "
                         "loop for the recurrence")


def _scan(step, init, xs, consts: List[Optional[Tensor]]):
    """torch's scan of ``step(carry, x, *consts)`` over dim 0 of xs, on operands detached from autograd.

    Detached because the exporter re-runs the decomposed graph on fake parameters that require grad (its
    type promotion pass): scan's autograd path would then split the body into a forward and a backward and
    return what the backward needs from the forward, the batch size among it, and a symbolic batch size
    there fails the export ("Expected leaf to be a Tensor or None, got SymInt"). An export is inference only.
    """
    from torch._higher_order_ops.scan import scan
    init, xs, consts = torch.utils._pytree.tree_map_only(Tensor, lambda t: t.detach(), (init, xs, consts))
    # consts (closed over) reach the body as the scan's additional inputs; a None stays None
    return scan(lambda carry, x: step(carry, x, *consts), init, xs)


def _per_channel(X: Tensor, batch: int, dim: int) -> Tensor:
    """B or C of the selective scan as (L, batch, dim, N): constant (dim, N), varying (batch, N, L) or
    grouped (batch, G, N, L)."""
    if X.dim() == 2:
        return X[None, None]  # (1, 1, dim, N): broadcast in the step
    if X.dim() == 3:
        return X.permute(2, 0, 1)[:, :, None, :]  # (L, batch, 1, N)
    G, N, L = X.shape[1], X.shape[2], X.shape[3]
    per = X.permute(3, 0, 1, 2)[:, :, :, None, :]  # (L, batch, G, 1, N)
    return per.expand(L, batch, G, dim // G, N).reshape(L, batch, dim, N)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                   initial_state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """torch.ops.torch_rnn_ext.selective_scan during ONNX export (same arguments and results)."""
    _scan_export_check("selective_scan")
    batch, dim = u.shape[0], u.shape[1]
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    if delta_softplus:
        dt = torch.nn.functional.softplus(dt)
    du = dt * u
    Bs, Cs = _per_channel(B, batch, dim), _per_channel(C, batch, dim)
    xs = [dt.permute(2, 0, 1), du.permute(2, 0, 1)]
    const_B, const_C = B.dim() == 2, C.dim() == 2
    if not const_B:
        xs.append(Bs)
    if not const_C:
        xs.append(Cs)
    h0 = initial_state.clone() if initial_state is not None else u.new_zeros(batch, dim, A.shape[1])

    def step(h, x, A, B0, C0):
        dt_t, du_t = x[0], x[1]
        b_t = B0 if const_B else x[2]
        c_t = C0 if const_C else x[2 + (0 if const_B else 1)]
        h = torch.exp(dt_t[..., None] * A) * h + du_t[..., None] * b_t
        return h, (h * c_t).sum(-1)

    last, ys = _scan(step, h0, xs, [A, Bs[0, 0] if const_B else None, Cs[0, 0] if const_C else None])
    y = ys.permute(1, 2, 0)  # (batch, dim, L)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y, last


def wkv4(time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor]
         ) -> Tuple[Tensor, Tensor]:
    """torch.ops.torch_rnn_ext.wkv4 during ONNX export (same arguments and results): the numerically stable
    recurrence of RWKV-4's kernel over the (aa, bb, pp) state."""
    _scan_export_check("wkv4")
    w = -torch.exp(time_decay)
    # three separate tensors (the scan's carry must not alias its inputs or one another)
    if state is None:
        aa, bb = k.new_zeros(k.shape[0], k.shape[2]), k.new_zeros(k.shape[0], k.shape[2])
        pp = k.new_full((k.shape[0], k.shape[2]), -1e38)
    else:
        aa, bb, pp = state[:, 0].clone(), state[:, 1].clone(), state[:, 2].clone()

    def step(carry, x, w, time_first):
        aa, bb, pp = carry
        kk, vv = x
        ww = time_first + kk
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        y = (e1 * aa + e2 * vv) / (e1 * bb + e2)
        ww = w + pp
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        return (e1 * aa + e2 * vv, e1 * bb + e2, p), y

    (aa, bb, pp), ys = _scan(step, (aa, bb, pp), (k.transpose(0, 1), v.transpose(0, 1)), [w, time_first])
    return ys.transpose(0, 1), torch.stack([aa, bb, pp], 1)


def gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], beta: Tensor, scale: Optional[float],
                     initial_state: Optional[Tensor], use_qk_l2norm_in_kernel: bool,
                     cu_seqlens: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """torch.ops.torch_rnn_ext.gated_delta_rule during ONNX export (same arguments and results): the recurrence
    step by step over the (batch, HV, K, V) state, S = e^g S, S += k (beta (v - S^T k))^T, o = S^T (scale q)."""
    _scan_export_check("gated_delta_rule")
    if cu_seqlens is not None:
        raise ValueError("torch_rnn_ext.gated_delta_rule: ONNX export takes no cu_seqlens (sequences packed along "
                         "T); export with one sequence per batch row")
    H, K, HV, V = q.shape[2], q.shape[3], v.shape[2], v.shape[3]
    if use_qk_l2norm_in_kernel:  # x / sqrt(sum x^2 + 1e-6) over K, as the op normalises
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    if HV != H:  # query/key head h serves value heads h * HV / H ...
        q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    q = q * (K ** -0.5 if scale is None else scale)
    xs = [q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), beta.transpose(0, 1)]  # (T, batch, ...)
    gated, per_key = g is not None, g is not None and g.dim() == 4
    if gated:
        xs.append(torch.exp(g).transpose(0, 1))
    if initial_state is not None:
        S0 = initial_state.clone()
    else:
        S0 = q.new_zeros(q.shape[0], HV, K, V)

    def step(S, x):
        q_t, k_t, v_t, b_t = x[0], x[1], x[2], x[3]
        if gated:
            S = S * (x[4][..., None] if per_key else x[4][..., None, None])
        u = b_t[..., None] * (v_t - (S * k_t[..., None]).sum(-2))  # beta (v - S^T k), (batch, HV, V)
        S = S + k_t[..., None] * u[..., None, :]
        return S, (S * q_t[..., None]).sum(-2)

    if isinstance(q.shape[1], int) and q.shape[1] == 1:  # one step (a streaming step's static length)
        last, o = step(S0, [x[0] for x in xs])
        return o.unsqueeze(1), last
    last, os = _scan(step, S0, xs, [])
    return os.transpose(0, 1), last
