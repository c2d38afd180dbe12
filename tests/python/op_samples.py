"""Representative calls of every op, public and private, for the Meta, FakeTensor and opcheck tests:
packed and reverse layers, projection, bidirectional stacks, cells, selective scan with every optional
argument and each B/C layout, wkv4 with and without state, the gated delta rule (scalar, per-key and no
gate, packed sequences), and each backward op on its forward's results.

Each sample is (name, op overload, args, kwargs). Inputs are float64 CPU tensors; `grad` makes the
differentiable floating-point inputs of public ops require grad (private ops run below autograd).
"""
import torch

import torch_rnn_ext  # noqa: F401  (loads the ops)

OPS = torch.ops.torch_rnn_ext
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
DT = torch.float64


def _r(*shape, grad=False, scale=0.5):
    return (torch.randn(*shape, dtype=DT) * scale).requires_grad_(grad)


def _layer_args(mode, T=5, B=3, I=4, H=6, P=None, packed=False, with_state=True, grad=False):
    """input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes."""
    G = GATES[mode]
    P = P or H
    if packed:
        batch_sizes = torch.tensor([B] * 2 + [B - 1] * (T - 3) + [1], dtype=torch.long)
        x = _r(int(batch_sizes.sum()), I, grad=grad)
    else:
        batch_sizes = None
        x = _r(T, B, I, grad=grad)
    hx = _r(B, P, grad=grad) if with_state else None
    cx = _r(B, H, grad=grad) if with_state and mode == "lstm" else None
    w_hr = _r(P, H, grad=grad) if P != H else None
    return x, hx, cx, _r(G * H, I, grad=grad), _r(G * H, P, grad=grad), _r(G * H, grad=grad), _r(G * H, grad=grad), \
        w_hr, batch_sizes


def layer_samples(grad=False):
    out = []
    for mode, packed, reverse, P in [("lstm", False, False, None), ("lstm", True, True, None),
                                     ("lstm", False, True, 3), ("gru", False, False, None), ("gru", True, False, None),
                                     ("rnn_tanh", False, True, None), ("rnn_relu", True, True, None)]:
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, bsz = _layer_args(mode, P=P, packed=packed, grad=grad)
        tag = f"{mode}{'_packed' if packed else ''}{'_reverse' if reverse else ''}{'_proj' if P else ''}"
        if mode == "lstm":
            out.append((f"lstm_layer[{tag}]", OPS.lstm_layer.default,
                        (x, hx, cx, w_ih, w_hh, b_ih, b_hh, bsz, reverse, w_hr), {}))
        else:
            out.append((f"{mode}_layer[{tag}]", getattr(OPS, f"{mode}_layer").default,
                        (x, hx, w_ih, w_hh, b_ih, b_hh, bsz, reverse), {}))
    # No initial state and no biases, padded.
    x, _, _, w_ih, w_hh, _, _, _, _ = _layer_args("lstm", with_state=False, grad=grad)
    out.append(("lstm_layer[no_state_no_bias]", OPS.lstm_layer.default, (x, None, None, w_ih, w_hh), {}))
    return out


def private_layer_samples():
    """_recurrent_layer_forward (saving and not), _recurrent_layer_backward on its results, _layer_products."""
    out = []
    for mode, packed, reverse, P in [("lstm", False, False, None), ("lstm", True, True, 3), ("gru", True, False, None),
                                     ("rnn_tanh", False, True, None), ("rnn_relu", False, False, None)]:
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, bsz = _layer_args(mode, P=P, packed=packed)
        tag = f"{mode}{'_packed' if packed else ''}{'_reverse' if reverse else ''}{'_proj' if P else ''}"
        fwd_args = (mode, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, bsz, reverse)
        for save in (True, False):
            out.append((f"_recurrent_layer_forward[{tag}_save={save}]", OPS._recurrent_layer_forward.default,
                        fwd_args + (save,), {}))
        output, h_n, c_n, ws = OPS._recurrent_layer_forward(*fwd_args, True)
        mask = [True, True, mode == "lstm", True, True, True, True, P is not None]
        g_out, g_h = torch.randn_like(output), torch.randn_like(h_n)
        g_c = torch.randn_like(c_n) if c_n is not None else None
        out.append((f"_recurrent_layer_backward[{tag}]", OPS._recurrent_layer_backward.default,
                    (mode, g_out, g_h, g_c, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, output, ws, bsz, reverse, mask),
                    {}))
        # Some gradients absent, some not wanted.
        out.append((f"_recurrent_layer_backward[{tag}_partial]", OPS._recurrent_layer_backward.default,
                    (mode, g_out, None, None, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, output, ws, bsz, reverse,
                     [True, False, False, False, True, False, True, False]), {}))
    for G, I, H in [(4, 5, 6), (1, 6, 6), (3, 4, 6)]:
        T, B = 5, 3
        x, w_ih, w_hh = _r(T, B, I), _r(G * H, I), _r(G * H, H)
        for backward in (False, True):
            out.append((f"_layer_products[G={G},I={I},backward={backward}]", OPS._layer_products.default,
                        (x, w_ih, w_hh, torch.ones(T * B, H, dtype=DT), backward), {}))
    return out


def stack_samples(grad=False):
    out = []
    T, B, I, H = 5, 3, 4, 6

    def params(mode, layers, D, proj=0, bias=True):
        G, ps = GATES[mode], []
        for layer in range(layers):
            for _ in range(D):
                width = I if layer == 0 else (proj or H) * D
                ps += [_r(G * H, width, grad=grad), _r(G * H, proj or H, grad=grad)]
                if bias:
                    ps += [_r(G * H, grad=grad), _r(G * H, grad=grad)]
                if proj:
                    ps.append(_r(proj, H, grad=grad))
        return ps

    x = _r(T, B, I, grad=grad)
    hx = [_r(4, B, 3, grad=grad), _r(4, B, H, grad=grad)]
    out.append(("lstm[2 layers, bidirectional, proj]", OPS.lstm.default,
                (x, hx, params("lstm", 2, 2, proj=3), True, 2, 0.0, False, True, False), {}))
    out.append(("lstm[1 layer, batch_first, no bias]", OPS.lstm.default,
                (_r(B, T, I, grad=grad), [], params("lstm", 1, 1, bias=False), False, 1, 0.0, False, False, True),
                {}))
    for mode in ("gru", "rnn_tanh", "rnn_relu"):
        out.append((f"{mode}[2 layers, bidirectional]", getattr(OPS, mode).default,
                    (x, _r(4, B, H, grad=grad), params(mode, 2, 2), True, 2, 0.0, False, True, False), {}))
    # A packed stack with h_0 (its batch size comes from h_0).
    bsz = torch.tensor([3, 3, 2, 1], dtype=torch.long)
    out.append(("gru[packed]", OPS.gru.default,
                (_r(int(bsz.sum()), I, grad=grad), _r(1, B, H, grad=grad), params("gru", 1, 1), True, 1, 0.0, False,
                 False, False, bsz), {}))
    # Unbatched input.
    out.append(("rnn_tanh[unbatched]", OPS.rnn_tanh.default,
                (_r(T, I, grad=grad), None, params("rnn_tanh", 1, 1), True, 1, 0.0, False, False, False), {}))
    # Cells.
    xc = _r(B, I, grad=grad)
    out.append(("lstm_cell", OPS.lstm_cell.default,
                (xc, _r(B, H, grad=grad), _r(B, H, grad=grad), _r(4 * H, I, grad=grad), _r(4 * H, H, grad=grad),
                 _r(4 * H, grad=grad), _r(4 * H, grad=grad)), {}))
    for mode, G in (("gru", 3), ("rnn_tanh", 1), ("rnn_relu", 1)):
        out.append((f"{mode}_cell", getattr(OPS, f"{mode}_cell").default,
                    (xc, _r(B, H, grad=grad), _r(G * H, I, grad=grad), _r(G * H, H, grad=grad),
                     _r(G * H, grad=grad), _r(G * H, grad=grad)), {}))
    return out


def _scan_args(layout, full, grad=False, batch=2, dim=4, L=70, N=3):
    u, delta = _r(batch, dim, L, grad=grad), _r(batch, dim, L, grad=grad)
    A = (-torch.rand(dim, N, dtype=DT) - 0.5).requires_grad_(grad)
    shapes = {"constant": (dim, N), "varying": (batch, N, L), "grouped": (batch, 2, N, L)}
    B, C = _r(*shapes[layout], grad=grad), _r(*shapes[layout], grad=grad)
    if not full:
        return (u, delta, A, B, C), {}
    return (u, delta, A, B, C, _r(dim, grad=grad), _r(batch, dim, L, grad=grad), _r(dim, grad=grad), True,
            _r(batch, dim, N, grad=grad)), {}


def _wkv_args(with_state, grad=False, batch=2, T=70, C=5):
    k, v = _r(batch, T, C, grad=grad), _r(batch, T, C, grad=grad)
    args = (_r(C, grad=grad), _r(C, grad=grad), k, v)
    if with_state:
        state = torch.cat([_r(batch, 2, C), torch.full((batch, 1, C), -3.0, dtype=DT)], 1).requires_grad_(grad)
        args += (state,)
    return args


DELTA_CONFIGS = {  # tag -> gate ("scalar", "per_key" or None), initial state, l2norm, scale, cu_seqlens
    "gate,state,l2norm": ("scalar", True, True, None, None),
    "per_key_gate,scale": ("per_key", False, False, 0.3, None),
    "no_gate,varlen,state": (None, True, False, None, [0, 30, 31, 70]),
}


def _delta_args(tag, grad=False, T=70, H=2, HV=4, K=5, V=20):
    """gated_delta_rule's arguments; V = 20 spans a full and a partial panel of 16 state columns."""
    gate, with_state, l2norm, scale, cu = DELTA_CONFIGS[tag]
    B = 1 if cu else 2
    N = len(cu) - 1 if cu else B
    q, k, v = _r(B, T, H, K, grad=grad), _r(B, T, H, K, grad=grad), _r(B, T, HV, V, grad=grad)
    g = None
    if gate:
        shape = (B, T, HV, K) if gate == "per_key" else (B, T, HV)
        g = torch.nn.functional.logsigmoid(torch.randn(*shape, dtype=DT) + 2).requires_grad_(grad)
    beta = torch.rand(B, T, HV, dtype=DT).requires_grad_(grad)
    init = _r(N, HV, K, V, grad=grad) if with_state else None
    cu_seqlens = torch.tensor(cu, dtype=torch.long) if cu else None
    return (q, k, v, g, beta, scale, init, l2norm, cu_seqlens)


def scan_samples(grad=False):
    out = []
    for layout in ("constant", "varying", "grouped"):
        for full in (True, False):
            args, kw = _scan_args(layout, full, grad=grad)
            out.append((f"selective_scan[{layout}{',all optional' if full else ''}]", OPS.selective_scan.default,
                        args, kw))
    for with_state in (True, False):
        out.append((f"wkv4[state={with_state}]", OPS.wkv4.default, _wkv_args(with_state, grad=grad), {}))
    for tag in DELTA_CONFIGS:
        out.append((f"gated_delta_rule[{tag}]", OPS.gated_delta_rule.default, _delta_args(tag, grad=grad), {}))
    return out


def private_scan_samples():
    out = []
    for layout in ("constant", "varying", "grouped"):
        for full in (True, False):
            args, _ = _scan_args(layout, full)
            fwd = args if full else args + (None, None, None, False, None)
            tag = f"{layout}{',all optional' if full else ''}"
            out.append((f"_selective_scan_forward[{tag}]", OPS._selective_scan_forward.default, fwd, {}))
            o, last, ck = OPS._selective_scan_forward(*fwd)
            mask = [True] * 9
            out.append((f"_selective_scan_backward[{tag}]", OPS._selective_scan_backward.default,
                        (torch.randn_like(o), torch.randn_like(last) if full else None) + fwd + (ck, mask), {}))
    for with_state in (True, False):
        args = _wkv_args(with_state)
        fwd = args if with_state else args + (None,)
        out.append((f"_wkv4_forward[state={with_state}]", OPS._wkv4_forward.default, fwd, {}))
        y, s, ck = OPS._wkv4_forward(*fwd)
        out.append((f"_wkv4_backward[state={with_state}]", OPS._wkv4_backward.default,
                    (torch.randn_like(y), torch.randn_like(s) if with_state else None) + fwd +
                    (ck, [True, True, True, True, with_state]), {}))
    for tag, (gate, with_state, _, _, _) in DELTA_CONFIGS.items():
        fwd = _delta_args(tag)
        out.append((f"_gated_delta_rule_forward[{tag}]", OPS._gated_delta_rule_forward.default, fwd, {}))
        o, last, ck = OPS._gated_delta_rule_forward(*fwd)
        mask = [True, True, True, gate is not None, True, with_state]
        out.append((f"_gated_delta_rule_backward[{tag}]", OPS._gated_delta_rule_backward.default,
                    (torch.randn_like(o), torch.randn_like(last) if with_state else None) + fwd + (ck, mask), {}))
    return out


def public_samples(grad=False):
    return layer_samples(grad) + stack_samples(grad) + scan_samples(grad)


def private_samples():
    return private_layer_samples() + private_scan_samples()


def all_samples():
    return public_samples() + private_samples()
