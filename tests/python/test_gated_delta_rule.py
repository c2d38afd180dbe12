"""gated_delta_rule against a float64 loop of the equation written here: outputs, final state and every
gradient, for the issue's grid of lengths, widths, head groupings, gates and options; chunked calls and
packed sequences against one call; long sequences; gradcheck; threads; TorchScript; bad input."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import torch_rnn_ext
from conftest import REPO_ROOT

OPS = torch.ops.torch_rnn_ext


def reference(q, k, v, g, beta, scale=None, initial_state=None, l2norm=False, cu_seqlens=None):
    """The recurrence step by step in float64, from the equation: per value head,
    S = exp(g_t) S;  S = S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T (scale q_t)."""
    q, k, v, beta = q.double(), k.double(), v.double(), beta.double()
    g = g.double() if g is not None else None
    if l2norm:
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        seqs = [(b, 0, T) for b in range(B)]
    else:
        c = cu_seqlens.tolist()
        seqs = [(0, c[n], c[n + 1]) for n in range(len(c) - 1)]
    outs = [[None] * T for _ in range(B)]
    finals = []
    for n, (b, s, e) in enumerate(seqs):
        S = initial_state[n].double() if initial_state is not None else torch.zeros(HV, K, V, dtype=torch.float64)
        for t in range(s, e):
            kt, qt = k[b, t].repeat_interleave(G, 0), q[b, t].repeat_interleave(G, 0)  # (HV, K)
            if g is not None:
                a = g[b, t].exp()
                S = S * (a[:, :, None] if a.dim() == 2 else a[:, None, None])
            p = torch.einsum("hkv,hk->hv", S, kt)
            u = beta[b, t][:, None] * (v[b, t] - p)
            S = S + kt[:, :, None] * u[:, None, :]
            outs[b][t] = torch.einsum("hkv,hk->hv", S, scale * qt)
        finals.append(S)
    if not finals:  # a batch of 0
        return v.new_zeros(0, T, HV, V), v.new_zeros(0, HV, K, V)
    o = torch.stack([torch.stack(row) for row in outs])
    return o, torch.stack(finals)


def make_inputs(B=1, T=20, H=2, HV=2, K=16, V=16, gate="scalar", decay=1.0, with_state=False, cu=None,
                dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, HV, V)
    k = k / k.norm(dim=-1, keepdim=True)  # the delta rule is stable for |k| = 1, beta in (0, 1)
    g = None
    if gate:
        shape = (B, T, HV, K) if gate == "per_key" else (B, T, HV)
        g = F.logsigmoid(torch.rand(*shape, generator=gen, dtype=dtype)) / decay
    beta = torch.rand(B, T, HV, generator=gen, dtype=dtype)
    N = len(cu) - 1 if cu else B
    init = r(N, HV, K, V) if with_state else None
    cu_seqlens = torch.tensor(cu, dtype=torch.long) if cu else None
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=init, cu_seqlens=cu_seqlens)


DIFF = ["q", "k", "v", "g", "beta", "initial_state"]


def run(fn, inp, scale=None, l2norm=False):
    """fn ("ours" or "reference") on inp: o, final state, and the gradients of a fixed random projection of
    (o, final_state) for every differentiable input given."""
    x = {n: (t.detach().clone().requires_grad_(n in DIFF) if t is not None else None) for n, t in inp.items()}
    if fn == "ours":
        o, s = torch_rnn_ext.gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=scale,
                                              initial_state=x["initial_state"], output_final_state=True,
                                              use_qk_l2norm_in_kernel=l2norm, cu_seqlens=x["cu_seqlens"])
    else:
        o, s = reference(x["q"], x["k"], x["v"], x["g"], x["beta"], scale, x["initial_state"], l2norm,
                         x["cu_seqlens"])
    gen = torch.Generator().manual_seed(1)
    wo = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    ws = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    loss = (o.double() * wo).sum() + (s.double() * ws).sum()
    names = [n for n in DIFF if x[n] is not None]
    grads = torch.autograd.grad(loss, [x[n] for n in names])
    return o.detach(), s.detach(), dict(zip(names, grads))


def run_both(inp, scale=None, l2norm=False):
    return run("ours", inp, scale, l2norm), run("reference", inp, scale, l2norm)


def assert_close_rel(ours, ref, rtol, what):
    ref = ref.double()
    scale = max(ref.abs().max().item(), 1e-30)
    err = (ours.double() - ref).abs().max().item() / scale
    assert err <= rtol, f"{what}: max error {err:.3g} relative to the largest value {scale:.3g} (tolerance {rtol})"


def check(inp, rtol, scale=None, l2norm=False):
    (o, s, gr), (ro, rs, rgr) = run_both(inp, scale, l2norm)
    assert o.dtype == inp["q"].dtype and s.dtype == inp["q"].dtype
    assert torch.isfinite(o).all()
    assert_close_rel(o, ro, rtol, "o")
    assert_close_rel(s, rs, rtol, "final_state")
    assert set(gr) == set(rgr)
    for n in gr:
        assert gr[n].shape == inp[n].shape, n
        assert_close_rel(gr[n], rgr[n], rtol, f"grad {n}")


# The grid, covered by pairs: T in {1, 63, 64, 65, 300}, K, V in {16, 60, 128}, HV / H in {1, 2, 4},
# initial state and L2 norm on and off, g from logsigmoid(rand) / {0.1, 1, 10} (weak to strong decay).
GRID = [  # T, K, V, H, HV, state, l2norm, decay
    (1, 16, 16, 1, 1, False, False, 1.0),
    (1, 128, 128, 2, 8, True, True, 0.1),
    (63, 60, 16, 2, 4, True, False, 10.0),
    (64, 16, 60, 1, 2, False, True, 1.0),
    (65, 128, 60, 1, 1, True, True, 0.1),
    (65, 60, 128, 2, 2, False, False, 1.0),
    (300, 16, 128, 1, 4, True, True, 10.0),
    (300, 60, 60, 2, 4, False, True, 0.1),
    (130, 128, 16, 1, 1, True, False, 1.0),
]


@pytest.mark.parametrize("T,K,V,H,HV,state,l2norm,decay", GRID)
def test_matches_reference_float64(T, K, V, H, HV, state, l2norm, decay):
    inp = make_inputs(B=2 if T < 300 else 1, T=T, H=H, HV=HV, K=K, V=V, decay=decay, with_state=state)
    check(inp, 1e-9, l2norm=l2norm)


@pytest.mark.parametrize("T,K,V,H,HV,state,l2norm,decay", [GRID[1], GRID[4], GRID[6]])
def test_matches_reference_float32(T, K, V, H, HV, state, l2norm, decay):
    inp = make_inputs(B=1, T=T, H=H, HV=HV, K=K, V=V, decay=decay, with_state=state, dtype=torch.float32)
    check(inp, 2e-4, l2norm=l2norm)


@pytest.mark.parametrize("gate", [None, "per_key"])
@pytest.mark.parametrize("T", [1, 70])
def test_ungated_and_per_key_gate(gate, T):
    inp = make_inputs(B=2, T=T, H=1, HV=2, K=20, V=24, gate=gate, with_state=True)
    check(inp, 1e-9, scale=0.7, l2norm=True)


def test_unnormalised_keys_and_explicit_scale():
    inp = make_inputs(T=40, K=8, V=8)
    inp["k"] = inp["k"] * 0.5  # |k| != 1, beta in (0, 1): still contracting
    check(inp, 1e-9, scale=0.25)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gate", ["scalar", "per_key", None])
def test_chunked_calls_carrying_the_state_equal_one_call(dtype, gate):
    # To rounding: a call keeps a scalar decay out of the state (a running factor, multiplied in at the
    # sequence's end), so a sequence cut into calls rounds differently from one call. Per-key decays are
    # multiplied in at every step, and without gate there is nothing to keep: those stay bitwise equal.
    inp = make_inputs(B=2, T=150, H=2, HV=4, K=24, V=40, gate=gate, with_state=True, dtype=dtype)
    q, k, v, g, beta, init = (inp[n] for n in ["q", "k", "v", "g", "beta", "initial_state"])
    o, s = torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True)
    outs, state = [], init
    for a, b in [(0, 1), (1, 64), (64, 65), (65, 149), (149, 150)]:
        oc, state = torch_rnn_ext.gated_delta_rule(q[:, a:b], k[:, a:b], v[:, a:b],
                                                   g[:, a:b] if g is not None else None, beta[:, a:b],
                                                   initial_state=state, output_final_state=True,
                                                   use_qk_l2norm_in_kernel=True)
        outs.append(oc)
    if gate == "scalar":
        rtol = 1e-13 if dtype == torch.float64 else 2e-6
        assert_close_rel(torch.cat(outs, 1), o, rtol, "o")
        assert_close_rel(state, s, rtol, "final_state")
    else:
        assert torch.equal(torch.cat(outs, 1), o)
        assert torch.equal(state, s)


@pytest.mark.parametrize("log_decay", [math.log(0.5), 0.05])
def test_running_decay_factor_past_its_bounds(log_decay):
    # A constant decay of 1/2 takes the running factor under 2^-20 every 21 steps (forward and backward);
    # one of exp(0.05) (g > 0: growing) over 2^20 at step 278 of the forward: multiplied in each time.
    inp = make_inputs(B=1, T=300, H=1, HV=2, K=16, V=20, with_state=True)
    inp["g"] = torch.full_like(inp["g"], log_decay)
    check(inp, 1e-9, l2norm=True)


@pytest.mark.parametrize("gate", ["scalar", "per_key", None])
def test_cu_seqlens_equal_separate_calls(gate):
    cu = [0, 1, 64, 65, 200, 203]
    inp = make_inputs(B=1, T=203, H=1, HV=2, K=16, V=20, gate=gate, with_state=True, cu=cu)
    x = {n: (t.clone().requires_grad_(n in DIFF) if t is not None else None) for n, t in inp.items()}
    o, s = torch_rnn_ext.gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"],
                                          output_final_state=True, use_qk_l2norm_in_kernel=True,
                                          cu_seqlens=x["cu_seqlens"])
    (o.sum() + s.square().sum()).backward()
    for n in range(len(cu) - 1):
        a, b = cu[n], cu[n + 1]
        y = {m: (inp[m][:, a:b].clone().requires_grad_() if inp[m] is not None else None)
             for m in ["q", "k", "v", "g", "beta"]}
        init = inp["initial_state"][n:n + 1].clone().requires_grad_()
        on, sn = torch_rnn_ext.gated_delta_rule(y["q"], y["k"], y["v"], y["g"], y["beta"], initial_state=init,
                                                output_final_state=True, use_qk_l2norm_in_kernel=True)
        (on.sum() + sn.square().sum()).backward()
        assert torch.equal(on, o[:, a:b])
        assert torch.equal(sn, s[n:n + 1])
        for m in ["q", "k", "v", "g", "beta"]:
            if y[m] is not None:
                torch.testing.assert_close(y[m].grad, x[m].grad[:, a:b], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(init.grad, x["initial_state"].grad[n:n + 1], rtol=1e-12, atol=1e-12)


def test_cu_seqlens_against_reference():
    inp = make_inputs(B=1, T=140, H=2, HV=4, K=16, V=16, with_state=True, cu=[0, 70, 71, 140])
    check(inp, 1e-9, l2norm=True)


def test_long_sequence_is_finite_with_bounded_saved_memory():
    T, K, V = 100_000, 8, 8
    inp = make_inputs(B=1, T=T, H=1, HV=1, K=K, V=V, dtype=torch.float32, decay=0.1)
    q, k, v, g, beta = (inp[n].requires_grad_() for n in ["q", "k", "v", "g", "beta"])
    o, s = torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
    (o.sum() + s.sum()).backward()
    for t in [o, s, q.grad, k.grad, v.grad, g.grad, beta.grad]:
        assert torch.isfinite(t).all()
    # What backward keeps: the state at every 64th step, not at every step.
    _, _, ckpt = OPS._gated_delta_rule_forward(q.detach(), k.detach(), v.detach(), g.detach(), beta.detach(), None,
                                               None, True, None)
    assert ckpt.numel() == math.ceil(T / 64) * K * V
    assert ckpt.numel() * 32 < T * K * V


def test_gradcheck():
    inp = make_inputs(B=2, T=9, H=1, HV=2, K=3, V=18, with_state=True, gate="per_key")
    args = [inp[n].requires_grad_() for n in ["q", "k", "v", "g", "beta", "initial_state"]]

    def f(q, k, v, g, beta, init):
        return torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, 0.6, init, True, True)

    assert torch.autograd.gradcheck(f, args)


def test_double_backward_is_refused():
    inp = make_inputs(T=5, K=4, V=4)
    q = inp["q"].requires_grad_()
    o, _ = torch_rnn_ext.gated_delta_rule(q, inp["k"], inp["v"], inp["g"], inp["beta"])
    with pytest.raises(RuntimeError, match="gated_delta_rule .*does not support double backward"):
        torch.autograd.grad(o.sum(), q, create_graph=True)


def test_bitwise_across_threads_and_runs():
    inp = make_inputs(B=2, T=130, H=2, HV=4, K=32, V=40, with_state=True, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in [1, 2, 3, 2]:
            torch.set_num_threads(threads)
            o, s, gr = run("ours", inp, l2norm=True)
            results.append([o, s] + [gr[n] for n in sorted(gr)])
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], r))


def test_output_final_state_false_returns_none():
    inp = make_inputs(T=5, K=4, V=4)
    o, s = torch_rnn_ext.gated_delta_rule(inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"])
    assert s is None and o.shape == (1, 5, 2, 4)


def test_torchscript_in_fresh_process(tmp_path):
    code = textwrap.dedent("""
        import torch, torch_rnn_ext
        from typing import Optional

        @torch.jit.script
        def f(q, k, v, g: Optional[torch.Tensor], beta, state: Optional[torch.Tensor]):
            return torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, None, state, True, True)

        q, k, v = torch.randn(1, 7, 2, 4), torch.randn(1, 7, 2, 4), torch.randn(1, 7, 2, 5)
        g, beta = -torch.rand(1, 7, 2), torch.rand(1, 7, 2)
        q.requires_grad_()
        o, s = f(q, k, v, g, beta, None)
        o2, s2 = torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, None, None, True, True)
        assert torch.equal(o, o2) and torch.equal(s, s2)
        o.sum().backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
        print("ok")
    """)
    script = tmp_path / "scripted.py"  # TorchScript reads the function's source from its file
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _base(**over):
    inp = make_inputs(B=2, T=6, H=2, HV=4, K=4, V=5, with_state=True)
    args = dict(q=inp["q"], k=inp["k"], v=inp["v"], g=inp["g"], beta=inp["beta"], initial_state=inp["initial_state"],
                cu_seqlens=None)
    args.update(over)
    return args


def _call(a):
    return torch_rnn_ext.gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], initial_state=a["initial_state"],
                                          cu_seqlens=a["cu_seqlens"])


D = torch.float64
BAD = [
    ("q 3-D", dict(q=torch.randn(2, 6, 4, dtype=D)), r"q: expected a 4-D tensor \(batch, T, H, K\)"),
    ("q int", dict(q=torch.ones(2, 6, 2, 4, dtype=torch.long)), "q: expected dtype float32 or float64"),
    ("k size", dict(k=torch.randn(2, 6, 2, 3, dtype=D)), r"k: expected size \[2, 6, 2, 4\]"),
    ("k dtype", dict(k=torch.randn(2, 6, 2, 4)), r"k: expected dtype Double \(the dtype of q\)"),
    ("v batch", dict(v=torch.randn(1, 6, 4, 5, dtype=D)), r"v: expected size \(2, 6, HV, V\)"),
    ("H does not divide HV", dict(v=torch.randn(2, 6, 3, 5, dtype=D), beta=torch.rand(2, 6, 3, dtype=D),
                                  g=None, initial_state=None), "H = 2 .* does not divide .* HV = 3"),
    ("g size", dict(g=torch.randn(2, 6, 3, dtype=D)), r"g: expected size \[2, 6, 4\]"),
    ("g per-key size", dict(g=torch.randn(2, 6, 4, 3, dtype=D)), r"g: expected size \[2, 6, 4, 4\]"),
    ("g 2-D", dict(g=torch.randn(2, 6, dtype=D)), r"g: expected \(batch, T, HV\) or \(batch, T, HV, K\)"),
    ("beta size", dict(beta=torch.rand(2, 6, 2, dtype=D)), r"beta: expected size \[2, 6, 4\]"),
    ("state size", dict(initial_state=torch.randn(2, 4, 5, 4, dtype=D)), r"initial_state: expected size \[2, 4, 4, 5\]"),
    ("state dtype", dict(initial_state=torch.randn(2, 4, 4, 5)), r"initial_state: expected dtype Double"),
    ("empty T", dict(q=torch.randn(2, 0, 2, 4, dtype=D)), "at least one step"),
    ("cu with batch 2", dict(cu_seqlens=torch.tensor([0, 6])), "cu_seqlens: .* batch of one, but q has batch size 2"),
]


@pytest.mark.parametrize("name,over,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(name, over, msg):
    with pytest.raises(RuntimeError, match=msg):
        _call(_base(**over))


def _varlen(cu, dtype=torch.long, n_states=None):
    inp = make_inputs(B=1, T=6, H=1, HV=1, K=4, V=4)
    n = n_states if n_states is not None else len(cu) - 1
    return dict(inp, initial_state=torch.zeros(n, 1, 4, 4, dtype=D), cu_seqlens=torch.tensor(cu, dtype=dtype))


BAD_CU = [
    ("not increasing", _varlen([0, 4, 2, 6]), "cu_seqlens: expected strictly increasing offsets, got 2 after 4"),
    ("repeated", _varlen([0, 3, 3, 6]), "strictly increasing offsets, got 3 after 3"),
    ("not ending at T", _varlen([0, 3, 5]), "cu_seqlens: expected the last offset to be T = 6 .*, got 5"),
    ("not starting at 0", _varlen([1, 3, 6]), "cu_seqlens: expected the first offset to be 0, got 1"),
    ("int32", _varlen([0, 3, 6], dtype=torch.int32), "cu_seqlens: expected dtype int64"),
    ("one offset", _varlen([0], n_states=1), r"cu_seqlens: expected a 1-D tensor of N \+ 1 >= 2 offsets"),
    ("states per sequence", _varlen([0, 3, 6], n_states=1), r"initial_state: expected size \[2, 1, 4, 4\]"),
]


@pytest.mark.parametrize("name,args,msg", BAD_CU, ids=[b[0] for b in BAD_CU])
def test_bad_cu_seqlens_raise(name, args, msg):
    with pytest.raises(RuntimeError, match=msg):
        _call(args)


def test_none_arguments_are_named():
    inp = make_inputs(T=3, K=4, V=4)
    with pytest.raises(RuntimeError, match="beta: expected a tensor, got None"):
        OPS.gated_delta_rule(inp["q"], inp["k"], inp["v"], inp["g"], None)


def test_empty_batch_forward_and_backward():
    inp = make_inputs(B=0, T=5, H=1, HV=2, K=3, V=4, with_state=True)
    o, s, grads = run("ours", inp, l2norm=True)
    assert o.shape == (0, 5, 2, 4) and s.shape == (0, 2, 3, 4)
    assert all(grads[n].shape == inp[n].shape for n in grads)


def test_strided_inputs_equal_contiguous_ones():
    inp = make_inputs(B=2, T=9, H=3, HV=3, K=4, V=5, with_state=True)
    strided = {}
    for n, t in inp.items():  # the same values behind transposed, then sliced, storage
        if t is None or t.dtype == torch.long:
            strided[n] = t
            continue
        big = torch.zeros(*reversed(t.shape[:2]), *t.shape[2:-1], 2 * t.shape[-1], dtype=t.dtype) if t.dim() > 2 \
            else None
        if big is None:
            strided[n] = t
            continue
        big = big.transpose(0, 1)[..., ::2]
        big.copy_(t)
        assert not big.is_contiguous()
        strided[n] = big
    a, b = run("ours", inp, l2norm=True), run("ours", strided, l2norm=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(a[2][n], b[2][n]) for n in a[2])


@pytest.mark.parametrize("kind", ["expanded", "strided"])
def test_output_gradient_read_with_its_strides(kind):
    # The backward reads grad_o where it is: an expanded one (the gradient of o.sum()) and a transposed,
    # sliced one give the bits of their contiguous copies.
    inp = make_inputs(B=2, T=70, H=1, HV=2, K=16, V=20, gate="scalar", with_state=True, dtype=torch.float32)
    args = [inp[n] for n in ("q", "k", "v", "g", "beta")]
    o, s, ck = OPS._gated_delta_rule_forward(*args, None, inp["initial_state"], True, None)
    if kind == "expanded":
        go = torch.full((), 0.37).expand_as(o)
    else:
        big = torch.randn(o.shape[1], o.shape[0], o.shape[2], 2 * o.shape[3]).transpose(0, 1)[..., ::2]
        go = big
    assert not go.is_contiguous()
    gs = torch.randn_like(s)
    call = lambda g: OPS._gated_delta_rule_backward(g, gs, *args, None, inp["initial_state"], True, None, ck,  # noqa: E731
                                                    [True] * 6)
    for a, b in zip(call(go), call(go.contiguous())):
        assert torch.equal(a, b)


def test_huge_page_advice_changes_no_result():
    # Outputs of 2 MiB and more are advised as huge pages unless TORCH_RNN_EXT_HUGE_PAGES=0: the same bits.
    inp = make_inputs(B=1, T=2400, H=2, HV=4, K=64, V=128, gate="scalar", dtype=torch.float32)
    results = []
    old = os.environ.pop("TORCH_RNN_EXT_HUGE_PAGES", None)
    try:
        for value in (None, "0"):
            if value is not None:
                os.environ["TORCH_RNN_EXT_HUGE_PAGES"] = value
            results.append(run("ours", inp, l2norm=True))
    finally:
        os.environ.pop("TORCH_RNN_EXT_HUGE_PAGES", None)
        if old is not None:
            os.environ["TORCH_RNN_EXT_HUGE_PAGES"] = old
    (o1, s1, g1), (o2, s2, g2) = results
    assert o1.numel() * o1.element_size() > 4 * 2 ** 20  # o is 4.7 MiB: advised
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    assert all(torch.equal(g1[n], g2[n]) for n in g1)


def test_nan_in_a_key_reaches_every_later_step_only():
    inp = make_inputs(B=1, T=6, H=1, HV=1, K=4, V=4)
    inp["k"][0, 2, 0, 1] = float("nan")
    o, s, _ = run("ours", inp)
    steps_with_nan = torch.isnan(o).flatten(2).any(-1)[0].tolist()
    assert steps_with_nan == [False, False, True, True, True, True]
    assert torch.isnan(s).any()
