"""wkv4 (RWKV-4) against a float64 reference written here (the defining weighted average, as a softmax
over past tokens, so it is exact for any k): outputs, states and every gradient; extreme k; gradcheck;
chunked and step-by-step calls; threads; TorchScript; RWKV4TimeMix; bad input; a long sequence."""
import io

import pytest
import torch

import torch_rnn_ext

RWKV4TimeMix = torch_rnn_ext.RWKV4TimeMix
wkv4 = torch_rnn_ext.wkv4

OPS = torch.ops.torch_rnn_ext


def reference(time_decay, time_first, k, v, state=None):
    """y_t as the softmax-weighted average over tokens i <= t (and the carried state as one more token),
    in float64. Returns y and, per batch and channel, the invariants of the state after the last step:
    (mean aa/bb, log(bb) + pp)."""
    w = -torch.exp(time_decay.double())
    u, k, v = time_first.double(), k.double(), v.double()
    batch, T, C = k.shape
    ys = []
    for t in range(T):
        i = torch.arange(t, dtype=torch.float64)[None, :, None]
        logw = [(t - 1 - i) * w + k[:, :t], (u + k[:, t])[:, None]]
        vals = [v[:, :t], v[:, t:t + 1]]
        if state is not None:
            aa, bb, pp = state.double().unbind(1)
            logw.append((pp + t * w + torch.log(bb))[:, None])
            vals.append((aa / bb)[:, None])
        weights = torch.softmax(torch.cat(logw, 1), dim=1)
        ys.append((weights * torch.cat(vals, 1)).sum(1))
    # The state after step T-1: sum over i < T of e^{(T-1-i) w + k_i} (v_i, 1), plus the decayed old state.
    i = torch.arange(T, dtype=torch.float64)[None, :, None]
    logw, vals = [(T - 1 - i) * w + k], [v]
    if state is not None:
        aa, bb, pp = state.double().unbind(1)
        logw.append((pp + T * w + torch.log(bb))[:, None])
        vals.append((aa / bb)[:, None])
    logw, vals = torch.cat(logw, 1), torch.cat(vals, 1)
    mean = (torch.softmax(logw, 1) * vals).sum(1)
    return torch.stack(ys, 1), mean, torch.logsumexp(logw, 1)


def make_args(batch, T, C, dtype=torch.float64, k_scale=1.0, seed=0, state=False):
    g = torch.Generator().manual_seed(seed)
    args = dict(
        time_decay=torch.randn(C, dtype=dtype, generator=g),
        time_first=torch.randn(C, dtype=dtype, generator=g),
        k=((torch.rand(batch, T, C, dtype=torch.float64, generator=g) * 2 - 1) * k_scale).to(dtype),
        v=torch.randn(batch, T, C, dtype=dtype, generator=g),
        state=None,
    )
    if state:
        aa = torch.randn(batch, C, dtype=dtype, generator=g)
        bb = torch.rand(batch, C, dtype=dtype, generator=g) + 1.0
        pp = torch.randn(batch, C, dtype=dtype, generator=g) * 3
        args["state"] = torch.stack([aa, bb, pp], 1)
    for t in args.values():
        if t is not None:
            t.requires_grad_(True)
    return args


def leaves(args):
    return [t for t in args.values() if t is not None]


def grads_of(y, args, seed=1):
    wy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    return torch.autograd.grad((y * wy).sum(), leaves(args))


def check_against_reference(args, rtol, atol, ref_args=None):
    ref_args = ref_args or args
    y, new_state = wkv4(**args, return_state=True)
    ry, mean, lse = reference(**ref_args)
    torch.testing.assert_close(y.double(), ry, rtol=rtol, atol=atol)
    aa, bb, pp = new_state.double().unbind(1)
    torch.testing.assert_close(aa / bb, mean, rtol=rtol, atol=atol)
    torch.testing.assert_close(torch.log(bb) + pp, lse, rtol=rtol, atol=atol)
    names = [n for n, t in args.items() if t is not None]
    for name, a, b in zip(names, grads_of(y, args), grads_of(ry, ref_args)):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("T,C", [(15, 60), (150, 67), (1, 3)])
@pytest.mark.parametrize("state", [False, True])
def test_matches_reference_float64(T, C, state):
    check_against_reference(make_args(2, T, C, seed=T + C, state=state), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("state", [False, True])
def test_float32_matches_float64_reference(state):
    a32 = make_args(2, 150, 67, dtype=torch.float32, seed=3, state=state)
    a64 = {n: (t.detach().double().requires_grad_() if t is not None else None) for n, t in a32.items()}
    check_against_reference(a32, rtol=2e-5, atol=2e-5, ref_args=a64)


@pytest.mark.parametrize("k_scale", [40.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_keys_are_finite_and_correct(k_scale, dtype):
    args = make_args(2, 40, 19, dtype=dtype, k_scale=k_scale, seed=int(k_scale))
    y, s = wkv4(**args, return_state=True)
    g = grads_of(y, args)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert all(torch.isfinite(t).all() for t in g)
    ref_args = {n: (t.detach().double().requires_grad_() if t is not None else None) for n, t in args.items()}
    # float32 keys near +-1000 are themselves only known to 6e-5 (their ulp), and so are the exponents
    # formed from them; the tolerance follows that resolution.
    tol = 1e-9 if dtype == torch.float64 else (2e-5 if k_scale < 100 else 1e-3)
    check_against_reference(args, rtol=tol, atol=tol, ref_args=ref_args)


def test_gradcheck_with_state_in_and_out():
    # 70 steps cross a saved-state boundary (every 64 steps); the loss reaches y and the new state.
    args = make_args(1, 70, 3, seed=5, state=True)
    fn = lambda td, tf, k, v, s: OPS.wkv4(td, tf, k, v, s)
    assert torch.autograd.gradcheck(fn, tuple(leaves(args)), eps=1e-6, atol=1e-6)


def test_gradcheck_without_state():
    args = make_args(2, 6, 4, seed=6)
    fn = lambda td, tf, k, v: OPS.wkv4(td, tf, k, v, None)
    assert torch.autograd.gradcheck(fn, tuple(leaves(args)))


def test_chunked_equals_full_with_gradients():
    args = make_args(2, 100, 70, seed=7, state=True)
    y, s = wkv4(**args, return_state=True)
    wy, ws = torch.randn_like(y), torch.randn_like(s)
    full = [y, s] + list(torch.autograd.grad((y * wy).sum() + (s * ws).sum(), leaves(args)))
    st, ys = args["state"], []
    for a, b in [(0, 33), (33, 34), (34, 100)]:
        yc, st = wkv4(args["time_decay"], args["time_first"], args["k"][:, a:b], args["v"][:, a:b], st, True)
        ys.append(yc)
    yc = torch.cat(ys, 1)
    chunked = [yc, st] + list(torch.autograd.grad((yc * wy).sum() + (st * ws).sum(), leaves(args)))
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_equals_full_bitwise():
    args = {n: (t.detach().float() if t is not None else None) for n, t in make_args(2, 30, 33).items()}
    y, s = wkv4(**args, return_state=True)
    st = None
    for t in range(30):
        yt, st = wkv4(args["time_decay"], args["time_first"], args["k"][:, t:t + 1], args["v"][:, t:t + 1],
                      st, True)
        assert torch.equal(yt[:, 0], y[:, t])
    assert torch.equal(st, s)


def test_results_do_not_depend_on_thread_count(threads):
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        args = make_args(3, 150, 200, dtype=torch.float32, seed=8, state=True)
        y, s = wkv4(**args, return_state=True)
        results.append([y, s] + list(torch.autograd.grad(y.sum() + s.sum(), leaves(args))))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_empty_state_equals_no_state():
    args = make_args(1, 5, 4)
    empty = torch.zeros(1, 3, 4, dtype=torch.float64)
    empty[:, 2] = -1e38
    y1 = wkv4(**{**args, "state": None})
    y2 = wkv4(**{**args, "state": empty})
    assert torch.equal(y1, y2)


def test_double_backward_raises():
    args = make_args(1, 3, 2)
    y = wkv4(**args)
    with pytest.raises(RuntimeError, match="wkv4.*does not support double backward"):
        torch.autograd.grad(y.sum(), [args["k"]], create_graph=True)


def test_long_sequence_forward_and_backward():
    args = make_args(1, 100_000, 8, dtype=torch.float32, k_scale=5.0, seed=9)
    y, s = wkv4(**args, return_state=True)
    (y.sum() + s[:, :2].sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(args["k"].grad).all()
    assert torch.isfinite(args["time_decay"].grad).all() and torch.isfinite(args["time_first"].grad).all()


def test_torchscript_function():
    scripted = torch.jit.script(wkv4)
    args = {n: (t.detach() if t is not None else None) for n, t in make_args(2, 7, 5).items()}
    y, s = scripted(**args, return_state=True)
    torch.testing.assert_close(y, reference(**args)[0])


def bad_input_cases():
    f = dict(dtype=torch.float32)
    ok = dict(time_decay=torch.randn(5, **f), time_first=torch.randn(5, **f), k=torch.randn(2, 4, 5, **f),
              v=torch.randn(2, 4, 5, **f))
    cases = [
        (dict(k=torch.randn(4, 5, **f)), "k: expected a 3-D tensor (batch, T, C)"),
        (dict(k=torch.randn(2, 4, 5).int()), "k: expected dtype float32 or float64"),
        (dict(k=torch.randn(2, 0, 5, **f)), "at least one step"),
        (dict(v=torch.randn(2, 4, 6, **f)), "v: expected size [2, 4, 5]"),
        (dict(v=torch.randn(2, 4, 5, dtype=torch.float64)), "v: expected dtype Float"),
        (dict(time_decay=torch.randn(4, **f)), "time_decay: expected size [5]"),
        (dict(time_decay=torch.randn(5, dtype=torch.float64)), "time_decay: expected dtype Float"),
        (dict(time_first=torch.randn(1, 5, **f)), "time_first: expected size [5]"),
        (dict(state=torch.randn(2, 2, 5, **f)), "state: expected size [2, 3, 5]"),
        (dict(state=torch.randn(2, 3, 5, dtype=torch.float64)), "state: expected dtype Float"),
        # A meta argument sends the call to the Meta kernel, which names the first argument not on meta.
        (dict(k=torch.randn(2, 4, 5, device="meta")), "v: expected a tensor on meta (the device of the other arguments), got a tensor on cpu"),
        (dict(v=torch.randn(2, 4, 5, device="meta")), "k: expected a tensor on meta (the device of the other arguments), got a tensor on cpu"),
    ]
    return [({**ok, **change}, msg) for change, msg in cases]


@pytest.mark.parametrize("kwargs,message", bad_input_cases())
def test_bad_input_raises(kwargs, message):
    with pytest.raises(RuntimeError) as info:
        wkv4(**kwargs)
    assert message in str(info.value)


def test_backward_op_checks_its_saved_tensors():
    a = {n: (t.detach() if t is not None else None) for n, t in make_args(1, 4, 3).items()}
    with pytest.raises(RuntimeError, match=r"checkpoints: expected size \[1, 1, 3, 3\]"):
        OPS._wkv4_backward(torch.ones(1, 4, 3, dtype=torch.float64), None, a["time_decay"], a["time_first"],
                           a["k"], a["v"], None, torch.zeros(1, 2, 3, 3, dtype=torch.float64), [True] * 5)


# RWKV4TimeMix

def test_time_mix_parameters_match_rwkv4():
    m = RWKV4TimeMix(48, layer_id=1, n_layer=4)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"time_decay": (48,), "time_first": (48,), "time_mix_k": (1, 1, 48),
                      "time_mix_v": (1, 1, 48), "time_mix_r": (1, 1, 48), "key.weight": (48, 48),
                      "value.weight": (48, 48), "receptance.weight": (48, 48), "output.weight": (48, 48)}
    torch.testing.assert_close(m.time_decay[0], torch.tensor(-5.0))
    torch.testing.assert_close(m.time_decay[-1], torch.tensor(3.0))


def test_time_mix_matches_reference_forward_and_backward():
    torch.manual_seed(0)
    m = RWKV4TimeMix(20, layer_id=0, n_layer=2).double()
    x = torch.randn(2, 9, 20, dtype=torch.float64, requires_grad=True)
    xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    k = m.key(x * m.time_mix_k + xx * (1 - m.time_mix_k))
    v = m.value(x * m.time_mix_v + xx * (1 - m.time_mix_v))
    r = torch.sigmoid(m.receptance(x * m.time_mix_r + xx * (1 - m.time_mix_r)))
    ref = m.output(r * reference(m.time_decay, m.time_first, k, v)[0])
    y = m(x)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    params = [x] + list(m.parameters())
    for a, b in zip(torch.autograd.grad(y.square().sum(), params), torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_time_mix_step_matches_forward_and_scripts():
    torch.manual_seed(1)
    m = RWKV4TimeMix(32, layer_id=2, n_layer=3)
    x = torch.randn(2, 13, 32)
    full = m(x)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(m), buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    torch.testing.assert_close(loaded(x), full, rtol=0, atol=0)
    last_x, state = loaded.allocate_state(2)
    for t in range(13):
        y, last_x, state = loaded.step(x[:, t], last_x, state)
        torch.testing.assert_close(y, full[:, t], rtol=1e-5, atol=1e-6)
