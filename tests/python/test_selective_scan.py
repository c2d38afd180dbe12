"""selective_scan (Mamba S6) against a float64 sequential loop written here: outputs, last state and
every gradient for every B/C layout and option; gradcheck; streaming; threads; TorchScript; MambaMixer;
bad input; a long sequence."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

import torch_rnn_ext

MambaMixer = torch_rnn_ext.MambaMixer
selective_scan = torch_rnn_ext.selective_scan

OPS = torch.ops.torch_rnn_ext


def reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """The scan as a plain loop over time, in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, L = u.shape
    dt = delta + (delta_bias.double()[:, None] if delta_bias is not None else 0)
    if delta_softplus:
        dt = F.softplus(dt)

    def at(X, t):  # B_t or C_t as (batch or 1, dim or 1, N)
        if X.dim() == 2:
            return X[None]
        if X.dim() == 3:
            return X[:, None, :, t]
        return X[:, :, :, t].repeat_interleave(dim // X.shape[1], dim=1)

    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64) if initial_state is None \
        else initial_state.double()
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * at(B, t) * u[:, :, t, None]
        y = (h * at(C, t)).sum(-1)
        if D is not None:
            y = y + D.double() * u[:, :, t]
        ys.append(y)
    out = torch.stack(ys, -1)
    if z is not None:
        out = out * F.silu(z.double())
    return out, h


def operand(kind, batch, dim, N, L, dtype, G=3):
    shape = {"const": (dim, N), "varying": (batch, N, L), "grouped": (batch, G, N, L)}[kind]
    return torch.randn(*shape, dtype=dtype)


def make_args(batch, dim, L, N, B_kind, C_kind, D=True, z=True, bias=True, init=True, dtype=torch.float64,
              seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    args = dict(
        u=torch.randn(batch, dim, L, dtype=dtype, generator=g),
        delta=torch.randn(batch, dim, L, dtype=dtype, generator=g) * 0.5,
        A=-torch.rand(dim, N, dtype=dtype, generator=g) * 2,
        B=operand(B_kind, batch, dim, N, L, dtype),
        C=operand(C_kind, batch, dim, N, L, dtype, G=2),
        D=torch.randn(dim, dtype=dtype, generator=g) if D else None,
        z=torch.randn(batch, dim, L, dtype=dtype, generator=g) if z else None,
        delta_bias=torch.randn(dim, dtype=dtype, generator=g) * 0.5 if bias else None,
        initial_state=torch.randn(batch, dim, N, dtype=dtype, generator=g) if init else None,
    )
    for t in args.values():
        if t is not None:
            t.requires_grad_(True)
    return args


def outputs_and_grads(fn, args, softplus, seed=1):
    out, last = fn(**args, delta_softplus=softplus)
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, dtype=torch.float64, generator=g).to(out.dtype)
    w_last = torch.randn(last.shape, dtype=torch.float64, generator=g).to(out.dtype)
    leaves = [t for t in args.values() if t is not None]
    grads = torch.autograd.grad((out * w_out).sum() + (last * w_last).sum(), leaves)
    return [out, last] + list(grads)


def ours(**kw):
    return selective_scan(**kw, return_last_state=True)


def assert_matches(args, softplus, rtol, atol, ref_args=None):
    got = outputs_and_grads(ours, args, softplus)
    want = outputs_and_grads(reference, ref_args or args, softplus)
    names = ["out", "last_state"] + [k for k, v in args.items() if v is not None]
    for name, a, b in zip(names, got, want):
        assert a.dtype == next(iter(args.values())).dtype
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


KINDS = ["const", "varying", "grouped"]


@pytest.mark.parametrize("B_kind", KINDS)
@pytest.mark.parametrize("C_kind", KINDS)
@pytest.mark.parametrize("N", [1, 16])
def test_every_layout_matches_reference_float64(B_kind, C_kind, N):
    args = make_args(2, 60, 15, N, B_kind, C_kind, seed=N)
    assert_matches(args, True, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("off", ["D", "z", "bias", "init", "softplus", "all"])
@pytest.mark.parametrize("kind", ["const", "varying"])
def test_optional_arguments(off, kind):
    flags = dict(D=True, z=True, bias=True, init=True)
    if off == "all":
        flags = dict(D=False, z=False, bias=False, init=False)
    elif off != "softplus":
        flags[off] = False
    args = make_args(3, 60, 15, 16, kind, kind, **flags, seed=3)
    assert_matches(args, off not in ("softplus", "all"), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("B_kind,C_kind", [("const", "varying"), ("grouped", "grouped")])
def test_float32_matches_float64_reference(B_kind, C_kind):
    # Longer than one backward chunk (64 steps), so the recomputation between saved states is exercised.
    args32 = make_args(2, 60, 150, 16, B_kind, C_kind, dtype=torch.float32, seed=7)
    args64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in args32.items()}
    assert_matches(args32, True, rtol=2e-5, atol=2e-5, ref_args=args64)


def test_sequence_longer_than_a_chunk_float64():
    args = make_args(1, 6, 200, 4, "varying", "grouped", seed=11)
    assert_matches(args, True, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("B_kind,C_kind", [("const", "const"), ("varying", "grouped")])
def test_gradcheck(B_kind, C_kind):
    # 70 steps cross a saved-state boundary (every 64 steps).
    args = make_args(1, 6, 70, 2, B_kind, C_kind, seed=5)
    names = list(args)

    def fn(*ts):
        out, last = OPS.selective_scan(*ts[:5], ts[5], ts[6], ts[7], True, ts[8])
        return out, last

    assert torch.autograd.gradcheck(fn, tuple(args[n] for n in names), eps=1e-6, atol=1e-6)


def test_gradcheck_short_without_options():
    args = make_args(2, 3, 5, 3, "grouped", "varying", D=False, z=False, bias=False, init=False, seed=6)
    fn = lambda u, delta, A, B, C: OPS.selective_scan(u, delta, A, B, C, None, None, None, False, None)
    assert torch.autograd.gradcheck(fn, tuple(args[n] for n in ["u", "delta", "A", "B", "C"]))


STEP_CASES = [  # (dtype, N, B kind, C kind, D, z, bias, softplus)
    (torch.float32, 16, "varying", "varying", True, True, True, True),
    (torch.float64, 16, "varying", "varying", True, True, True, True),
    (torch.float32, 16, "grouped", "const", False, True, False, True),
    (torch.float32, 5, "varying", "grouped", True, False, True, False),
    (torch.float64, 5, "const", "varying", False, False, False, True),
    (torch.float32, 16, "const", "const", True, True, True, False),
]


@pytest.mark.parametrize("dtype,N,B_kind,C_kind,D,z,bias,softplus", STEP_CASES)
def test_step_mode_equals_full_scan(dtype, N, B_kind, C_kind, D, z, bias, softplus):
    # L = 1 calls (the streaming step, which runs blocks of channels) carrying the state give the full
    # scan's bits; 72 channels: blocks of up to 32, cut at the groups of grouped B (3) and C (2)
    args = {k: (v.detach().to(dtype) if v is not None else None)
            for k, v in make_args(2, 72, 20, N, B_kind, C_kind, D=D, z=z, bias=bias, init=False).items()}
    args.pop("initial_state")
    full, last = selective_scan(**args, delta_softplus=softplus, return_last_state=True)
    h = None
    for t in range(20):
        sl = {k: (args[k][..., t:t + 1] if args[k] is not None and args[k].dim() >= 3 and args[k].shape[-1] == 20
                  else args[k]) for k in ("u", "delta", "B", "C", "z")}
        y, h = selective_scan(**sl, A=args["A"], D=args["D"], delta_bias=args["delta_bias"],
                              delta_softplus=softplus, return_last_state=True, initial_state=h)
        assert torch.equal(y[..., 0], full[..., t]), t
    assert torch.equal(h, last)


def test_step_mode_equals_full_scan_at_the_ends_of_exp():
    # The decode step takes exp(delta A) in vectors of channels (N = 16, float32) with its own clamps:
    # arguments below -87.3 (exp 0), between 88 and 88.72 (e^88), above (inf), infinite and NaN give the
    # full scan's states bit for bit (a NaN's sign aside: compared as NaN), and its outputs
    torch.manual_seed(3)
    dim, N = 70, 16
    ends = torch.tensor([-1e30, -100., -88.1, -88., -87.6, -87.31, -87.3, -87.29, -50., 0., 1., 87.9, 88.,
                         88.3, 88.72, 88.73, 89., 1e30, math.inf, -math.inf, math.nan])
    A = ends[torch.randint(len(ends), (dim, N))]
    u, delta, z = torch.randn(1, dim, 2), torch.rand(1, dim, 2) + 0.5, torch.randn(1, dim, 2)
    # the first step: exp(A) itself times the state; the second keeps it (exp(0 A) = 1, no input)
    u[..., 0], delta[..., 0], delta[..., 1] = 0, 1, 0
    B, C, D, h0 = torch.randn(1, N, 2), torch.randn(1, N, 2), torch.randn(dim), torch.randn(1, dim, N)
    full, last = selective_scan(u, delta, A, B, C, D, z, return_last_state=True, initial_state=h0)
    h = h0
    for t in range(2):
        y, h = selective_scan(u[..., t:t + 1], delta[..., t:t + 1], A, B[..., t:t + 1], C[..., t:t + 1], D,
                              z[..., t:t + 1], return_last_state=True, initial_state=h)
        torch.testing.assert_close(y[..., 0], full[..., t], rtol=0, atol=0, equal_nan=True)
    assert torch.isinf(last).any() and torch.isnan(last).any()
    bits = lambda x: torch.where(torch.isnan(x), math.nan, x).view(torch.int32)  # noqa: E731
    assert torch.equal(bits(h), bits(last))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [16, 5])
def test_short_pieces_equal_full_scan_bitwise(dtype, N):
    # A scan of 150 steps (the long path, chunk by chunk) run as pieces of 64, 1, 37 and 48 steps carrying the
    # state (each piece one chunk: the short-scan path, blocks of channels) gives the same bits
    args = {k: (v.detach().to(dtype) if v is not None else None)
            for k, v in make_args(2, 72, 150, N, "grouped", "varying", init=True, seed=12).items()}
    full, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    h, outs, t0 = args["initial_state"], [], 0
    for n in (64, 1, 37, 48):
        sl = {k: (args[k][..., t0:t0 + n] if args[k] is not None and args[k].dim() >= 3 and args[k].shape[-1] == 150
                  else args[k]) for k in ("u", "delta", "B", "C", "z")}
        y, h = selective_scan(**sl, A=args["A"], D=args["D"], delta_bias=args["delta_bias"], delta_softplus=True,
                              return_last_state=True, initial_state=h)
        outs.append(y)
        t0 += n
    assert torch.equal(torch.cat(outs, -1), full)
    assert torch.equal(h, last)


def test_step_gradients_equal_full_scan():
    args = make_args(2, 40, 6, 16, "varying", "grouped", init=True, seed=4)
    full = outputs_and_grads(ours, args, True)

    def stepped(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        h, outs = initial_state, []
        for t in range(u.shape[-1]):
            o, h = selective_scan(u[..., t:t + 1], delta[..., t:t + 1], A, B[..., t:t + 1], C[..., t:t + 1], D,
                                  z[..., t:t + 1], delta_bias, delta_softplus, True, h)
            outs.append(o)
        return torch.cat(outs, -1), h

    for a, b in zip(full, outputs_and_grads(stepped, args, True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_equals_full_with_gradients():
    args = make_args(2, 6, 40, 4, "varying", "const", init=True, seed=9)
    full = outputs_and_grads(ours, args, True)

    def chunked(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        o1, h1 = selective_scan(u[..., :17], delta[..., :17], A, B[..., :17], C, D, z[..., :17], delta_bias,
                                delta_softplus, True, initial_state)
        o2, h2 = selective_scan(u[..., 17:], delta[..., 17:], A, B[..., 17:], C, D, z[..., 17:], delta_bias,
                                delta_softplus, True, h1)
        return torch.cat([o1, o2], -1), h2

    for a, b in zip(full, outputs_and_grads(chunked, args, True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_results_do_not_depend_on_thread_count(threads):
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        args = make_args(2, 64, 150, 16, "varying", "grouped", dtype=torch.float32, seed=2)
        results.append(outputs_and_grads(ours, args, True))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_no_graph_without_grad_and_gradient_flags():
    args = {k: (v.detach() if v is not None else None) for k, v in make_args(1, 4, 6, 3, "const", "const").items()}
    out, last = selective_scan(**args, return_last_state=True)
    assert out.grad_fn is None and last.grad_fn is None
    args["B"].requires_grad_(True)
    out = selective_scan(**args)
    (gB,) = torch.autograd.grad(out.sum(), [args["B"]])
    assert gB.shape == args["B"].shape


def test_double_backward_raises():
    args = make_args(1, 3, 4, 2, "const", "const")
    out = selective_scan(**args)
    with pytest.raises(RuntimeError, match="selective_scan.*does not support double backward"):
        torch.autograd.grad(out.sum(), [args["u"]], create_graph=True)


def test_long_sequence_forward_and_backward():
    L = 100_000
    args = make_args(1, 2, L, 16, "varying", "varying", D=True, z=False, bias=True, init=False,
                     dtype=torch.float32, seed=4)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    (out.sum() + last.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(args["u"].grad).all()
    assert torch.isfinite(args["B"].grad).all() and torch.isfinite(args["A"].grad).all()
    # The tail equals a scan of the tail started from the state there.
    with torch.no_grad():
        s = {k: (v.detach() if v is not None else None) for k, v in args.items()}
        _, h = selective_scan(s["u"][..., :-50], s["delta"][..., :-50], s["A"], s["B"][..., :-50],
                              s["C"][..., :-50], s["D"], None, s["delta_bias"], True, True)
        tail = selective_scan(s["u"][..., -50:], s["delta"][..., -50:], s["A"], s["B"][..., -50:],
                              s["C"][..., -50:], s["D"], None, s["delta_bias"], True, False, h)
        assert torch.equal(tail, out[..., -50:])


def test_torchscript_function():
    scripted = torch.jit.script(selective_scan)
    args = {k: (v.detach() if v is not None else None) for k, v in make_args(2, 4, 6, 3, "varying", "const").items()}
    out, last = scripted(**args, delta_softplus=True, return_last_state=True)
    ref_out, ref_last = reference(**args, delta_softplus=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)


def bad_input_cases():
    f = dict(dtype=torch.float32)
    u = torch.randn(2, 6, 5, **f)
    ok = dict(u=u, delta=torch.rand(2, 6, 5, **f), A=-torch.rand(6, 4, **f), B=torch.randn(6, 4, **f),
              C=torch.randn(2, 4, 5, **f))
    cases = [
        (dict(u=torch.randn(6, 5, **f)), "u: expected a 3-D tensor"),
        (dict(u=u.int()), "u: expected dtype float32 or float64"),
        (dict(u=torch.randn(2, 6, 0, **f)), "at least one step"),
        (dict(delta=torch.rand(2, 6, 4, **f)), "delta: expected size [2, 6, 5]"),
        (dict(delta=torch.rand(2, 6, 5, dtype=torch.float64)), "delta: expected dtype Float"),
        (dict(A=-torch.rand(5, 4, **f)), "A: expected size (dim, d_state) = (6, d_state)"),
        (dict(A=-torch.rand(6, **f)), "A: expected a 2-D tensor"),
        (dict(B=torch.randn(6, 3, **f)), "B: expected size [6, 4]"),
        (dict(B=torch.randn(2, 3, 5, **f)), "B: d_state (size 1) is 3 but A has d_state 4"),
        (dict(B=torch.randn(2, 4, 7, **f)), "B: expected size [2, 4, 5]"),
        (dict(B=torch.randn(2, 4, 4, 5, **f)), "B: the number of groups G = 4"),
        (dict(B=torch.randn(2, 2, 3, 5, **f)), "B: d_state (size 2) is 3 but A has d_state 4"),
        (dict(B=torch.randn(3, 2, 4, 5, **f)), "B: expected size [2, 2, 4, 5]"),
        (dict(B=torch.randn(4, **f)), "B: expected (dim, d_state), (batch, d_state, L) or (batch, G, d_state, L)"),
        (dict(C=torch.randn(2, 4, 5, dtype=torch.float64)), "C: expected dtype Float"),
        (dict(C=torch.randn(2, 5, 5, **f)), "C: d_state (size 1) is 5 but A has d_state 4"),
        (dict(D=torch.randn(5, **f)), "D: expected size [6]"),
        (dict(z=torch.randn(2, 6, 4, **f)), "z: expected size [2, 6, 5]"),
        (dict(delta_bias=torch.randn(6, 1, **f)), "delta_bias: expected size [6]"),
        (dict(initial_state=torch.randn(2, 6, 3, **f)), "initial_state: expected size [2, 6, 4]"),
        (dict(initial_state=torch.randn(2, 6, 4, dtype=torch.float64)), "initial_state: expected dtype Float"),
        # A meta argument sends the call to the Meta kernel, which names the first argument not on meta.
        (dict(u=u.to("meta")), "delta: expected a tensor on meta (the device of the other arguments), got a tensor on cpu"),
        (dict(B=torch.randn(6, 4, device="meta")), "u: expected a tensor on meta (the device of the other arguments), got a tensor on cpu"),
    ]
    return [({**ok, **change}, msg) for change, msg in cases]


@pytest.mark.parametrize("kwargs,message", bad_input_cases())
def test_bad_input_raises(kwargs, message):
    with pytest.raises(RuntimeError) as info:
        selective_scan(**kwargs)
    assert message in str(info.value)


def test_backward_op_checks_its_saved_tensors():
    args = {k: (v.detach() if v is not None else None) for k, v in make_args(1, 3, 4, 2, "const", "const").items()}
    with pytest.raises(RuntimeError, match=r"checkpoints: expected size \[1, 3, 1, 2\]"):
        OPS._selective_scan_backward(torch.ones(1, 3, 4, dtype=torch.float64), None, args["u"], args["delta"],
                                     args["A"], args["B"], args["C"], None, None, None, False, None,
                                     torch.zeros(1, 3, 2, 2, dtype=torch.float64), [True] * 9)


# MambaMixer

def test_mamba_mixer_parameters_match_mamba():
    m = MambaMixer(40)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    d_inner, dt_rank = 80, math.ceil(40 / 16)
    assert shapes == {
        "A_log": (d_inner, 16), "D": (d_inner,), "in_proj.weight": (2 * d_inner, 40),
        "conv1d.weight": (d_inner, 1, 4), "conv1d.bias": (d_inner,), "x_proj.weight": (dt_rank + 32, d_inner),
        "dt_proj.weight": (d_inner, dt_rank), "dt_proj.bias": (d_inner,), "out_proj.weight": (40, d_inner)}
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(d_inner, 1))
    dt = F.softplus(m.dt_proj.bias)
    assert (dt >= 1e-4 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    assert torch.equal(m.D, torch.ones(d_inner))


def mamba_reference(m, x):
    """The mixer with the scan done by the float64 loop (mamba_ssm's slow path)."""
    L = x.shape[1]
    xz = m.in_proj(x)
    xi, z = xz.chunk(2, dim=-1)
    xi = F.silu(m.conv1d(xi.transpose(1, 2))[..., :L])
    x_dbl = m.x_proj(xi.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = dt @ m.dt_proj.weight.t()
    y, _ = reference(xi, dt.transpose(1, 2), -torch.exp(m.A_log), B.transpose(1, 2), C.transpose(1, 2), m.D,
                     z.transpose(1, 2), m.dt_proj.bias, True)
    return m.out_proj(y.transpose(1, 2).to(x.dtype))


def test_mamba_mixer_forward_backward_match_reference():
    torch.manual_seed(0)
    m = MambaMixer(24).double()
    x = torch.randn(2, 11, 24, dtype=torch.float64, requires_grad=True)
    y, ry = m(x), mamba_reference(m, x)
    torch.testing.assert_close(y, ry, rtol=1e-10, atol=1e-12)
    params = [x] + list(m.parameters())
    g1 = torch.autograd.grad(y.square().sum(), params)
    g2 = torch.autograd.grad(ry.square().sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_mamba_mixer_step_matches_forward_and_scripts():
    torch.manual_seed(1)
    m = MambaMixer(32)
    x = torch.randn(2, 13, 32)
    full = m(x)
    scripted = torch.jit.script(m)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    torch.testing.assert_close(loaded(x), full, rtol=0, atol=0)
    conv, ssm = loaded.allocate_state(2)
    for t in range(13):
        y, conv, ssm = loaded.step(x[:, t], conv, ssm)
        torch.testing.assert_close(y, full[:, t], rtol=1e-5, atol=1e-6)
