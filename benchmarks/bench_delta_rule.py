"""Benchmark of gated_delta_rule (Gated DeltaNet's recurrence) against what a user would otherwise run on
the CPU: the step-by-step PyTorch loop of the equation and the chunked PyTorch form (both written here),
and transformers' own fallbacks (torch_recurrent_gated_delta_rule, torch_chunk_gated_delta_rule of
Qwen3-Next) where the installed transformers has them. Forward (no_grad) and forward+backward, in one
process after warm-up, medians of interleaved rounds; decode (T = 1) against a copy of a tensor of the
state's size; prefill's rate in GFLOP/s (6 K V per token and value head: the recurrence's multiply-adds,
its scalar decay kept out of the state) against a 1024^3 sgemm timed in the same rounds. Forward+backward
counts 22 K V (FWD_BWD_FLOPS: the forward's 6, the backward's recomputation 4 and its two passes 12, from
kernels/delta_rule.h; chunks of decays under 0.8 add 2 in pass 2, which these inputs' decays, about 0.98, make
a quarter of them), and its bound is the chunked PyTorch form's time over that arithmetic at the sgemm rate:
the most our recurrence could gain over it if every operation ran as fast as sgemm's.

    .venv/bin/python benchmarks/bench_delta_rule.py [--full] [--threads 1 2]

``run_delta_benchmarks(quick)`` returns the rows (used by benchmarks/bench.py).
"""
import argparse
import os
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from common import interleaved  # noqa: E402


def l2norm(x):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def recurrent_loop(q, k, v, g, beta, initial_state=None):
    """The equation step by step: (B, T, H, K) q/k with H = HV here, (B, T, HV, V) v."""
    q, k = l2norm(q) * q.shape[-1] ** -0.5, l2norm(k)
    B, T, HV, V = v.shape
    S = initial_state if initial_state is not None else v.new_zeros(B, HV, q.shape[-1], V)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[:, :, None, None]
        p = torch.einsum("bhkv,bhk->bhv", S, k[:, t])
        u = beta[:, t, :, None] * (v[:, t] - p)
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, 1), S


def chunked(q, k, v, g, beta, chunk=64):
    """The chunked (WY) form: within a chunk of C steps, the delta rule's corrections are one triangular
    solve and matrix products; between chunks the state is carried. T must be a multiple of chunk."""
    q, k = l2norm(q) * q.shape[-1] ** -0.5, l2norm(k)
    B, T, H, K = q.shape
    V = v.shape[-1]
    n = T // chunk
    # (B, H, n, C, .)
    q, k, v = (x.transpose(1, 2).reshape(B, H, n, chunk, -1) for x in (q, k, v))
    g = g.transpose(1, 2).reshape(B, H, n, chunk).cumsum(-1)
    beta = beta.transpose(1, 2).reshape(B, H, n, chunk)
    decay = (g[..., :, None] - g[..., None, :]).tril().exp().tril()  # exp(g_i - g_j), j <= i
    kb = k * beta[..., None]
    strict = torch.ones(chunk, chunk, dtype=torch.bool).tril(-1)
    A = ((kb @ k.transpose(-1, -2)) * decay).masked_fill(~strict, 0)
    eye = torch.eye(chunk, dtype=q.dtype)
    Tinv = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    w = Tinv @ (kb * g.exp()[..., None])  # the state's contribution to each step's prediction
    u = Tinv @ (v * beta[..., None])
    attn = ((q @ k.transpose(-1, -2)) * decay).masked_fill(~torch.ones(chunk, chunk, dtype=torch.bool).tril(), 0)
    S = q.new_zeros(B, H, K, V)
    outs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ S
        outs.append((q[:, :, i] * g[:, :, i, :, None].exp()) @ S + attn[:, :, i] @ v_new)
        g_last = g[:, :, i, -1]
        S = S * g_last.exp()[..., None, None] + (k[:, :, i] * (g_last[..., None] - g[:, :, i]).exp()[..., None]
                                                 ).transpose(-1, -2) @ v_new
    o = torch.stack(outs, 2).reshape(B, H, T, V).transpose(1, 2)
    return o, S


def ours(q, k, v, g, beta, initial_state=None):
    return torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, initial_state=initial_state, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True)


def transformers_forms() -> Dict[str, Callable]:
    """transformers' Qwen3-Next fallbacks, as functions of our argument order, if installed."""
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next as m
    except ImportError:
        return {}
    out = {}
    for name, fn in [("transformers chunked", "torch_chunk_gated_delta_rule"),
                     ("transformers recurrent", "torch_recurrent_gated_delta_rule")]:
        f = getattr(m, fn, None)
        if f is not None:
            out[name] = (lambda f: lambda q, k, v, g, beta, initial_state=None: f(
                q, k, v, g, beta, initial_state=initial_state, output_final_state=True,
                use_qk_l2norm_in_kernel=True))(f)
    return out


def inputs(B, T, H, HV, K, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, HV, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, HV, generator=gen) + 4)
    beta = torch.rand(B, T, HV, generator=gen)
    return [q, k, v, g, beta]


def expand_heads(args, H, HV):
    """The PyTorch forms take one q/k head per value head."""
    q, k = (x.repeat_interleave(HV // H, dim=2) for x in args[:2])
    return [q, k] + list(args[2:])


FWD_FLOPS, FWD_BWD_FLOPS = 6, 22  # per token, value head and state element (K V)


SGEMM = "sgemm 1024^3"


def sgemm_rate() -> Callable[[], object]:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return lambda: torch.mm(a, b)


def pop_sgemm_flops(t: Dict[str, float]) -> float:
    """The sgemm's flop/s from interleaved's times (its entry taken out of them)."""
    return 2 * 1024 ** 3 / t.pop(SGEMM)


def run_delta_benchmarks(quick: bool, rounds: Optional[int] = None) -> List[dict]:
    """Rows {name, shape, mode, times (ms per implementation), speedups, ...} at the current thread count.
    quick: the loop forms at T = 512 only and fewer repeats; T = 4096 runs ours and the chunked forms."""
    rounds = rounds or (2 if quick else 3)
    threads = torch.get_num_threads()
    others = transformers_forms()
    rows = []

    # Decode: one step with the state carried, against copying a tensor of the state's size.
    B, H, HV, K, V = 1, 16, 32, 128, 128
    args = inputs(B, 1, H, HV, K, V)
    state = torch.randn(B, HV, K, V) * 0.1
    dst = torch.empty_like(state)
    rec_args = expand_heads(args, H, HV)
    with torch.no_grad():
        fns = {"ours": lambda: ours(*args, initial_state=state),
               "recurrent loop": lambda: recurrent_loop(*rec_args, initial_state=state),
               "state copy": lambda: dst.copy_(state)}
        if "transformers recurrent" in others:
            fns["transformers recurrent"] = lambda: others["transformers recurrent"](*rec_args, initial_state=state)
        t = interleaved(fns, rounds, 50 if quick else 200)
    rows.append({"name": "decode", "mode": "forward", "shape": f"B {B}, T 1, H {H}, HV {HV}, K {K}, V {V}",
                 "threads": threads, "ms": {n: s * 1e3 for n, s in t.items()},
                 "vs_state_copy": t["ours"] / t["state copy"]})

    # Prefill.
    B, H, HV, K, V = 1, 8, 16, 128, 128
    flops_per_token = FWD_FLOPS * HV * K * V
    for T in (512, 4096):
        args = inputs(B, T, H, HV, K, V)
        rec_args = expand_heads(args, H, HV)
        loops = T <= 512 or not quick
        forms = {"ours": lambda: ours(*args)}
        forms["chunked PyTorch"] = lambda: chunked(*rec_args)
        if loops:
            forms["recurrent loop"] = lambda: recurrent_loop(*rec_args)
        for name, f in others.items():
            if "chunked" in name or loops:
                forms[name] = (lambda f: lambda: f(*rec_args))(f)
        shape = f"B {B}, T {T}, H {H}, HV {HV}, K {K}, V {V}"
        mm = sgemm_rate()
        with torch.no_grad():
            fns = dict(forms)
            fns[SGEMM] = mm
            # Calls of 0.1-2.6 s at T = 4096: one warm-up and one timed call each in the quick run (a call
            # timed cold reads up to twice its warm time: its memory is faulted in).
            t = interleaved(fns, 1 if quick and T > 512 else rounds, 1 if T > 512 else 3)
        sgemm_flops = pop_sgemm_flops(t)
        gflops = flops_per_token * B * T / t["ours"] / 1e9
        rows.append({"name": f"prefill {T}", "mode": "forward", "shape": shape, "threads": threads,
                     "ms": {n: s * 1e3 for n, s in t.items()}, "gflops": gflops,
                     "sgemm_gflops": sgemm_flops / 1e9, "of_sgemm": gflops * 1e9 / sgemm_flops})

        def fwd_bwd(f, a):
            leaves = [x.detach().requires_grad_() for x in a]

            def run():
                o, s = f(*leaves)
                (o.sum() + s.sum()).backward()
            return run

        fns = {"ours": fwd_bwd(ours, args), "chunked PyTorch": fwd_bwd(chunked, rec_args)}
        if loops:
            fns["recurrent loop"] = fwd_bwd(recurrent_loop, rec_args)
        for name, f in others.items():
            if "chunked" in name or loops:
                fns[name] = fwd_bwd(f, rec_args)
        fns[SGEMM] = mm
        t = interleaved(fns, 1 if quick and T > 512 else rounds, 1)
        sgemm_flops = pop_sgemm_flops(t)
        flops = FWD_BWD_FLOPS * HV * K * V * B * T
        rows.append({"name": f"prefill {T}", "mode": "forward+backward", "shape": shape, "threads": threads,
                     "ms": {n: s * 1e3 for n, s in t.items()}, "gflops": flops / t["ours"] / 1e9,
                     "sgemm_gflops": sgemm_flops / 1e9, "of_sgemm": flops / t["ours"] / sgemm_flops,
                     "bound_vs_chunked": t["chunked PyTorch"] / (flops / sgemm_flops)})
    for row in rows:
        row["speedups"] = {n: ms / row["ms"]["ours"] for n, ms in row["ms"].items() if n != "ours"}
    return rows


def check_forms_agree():
    """The PyTorch forms compute what our op computes (so the benchmark compares like with like)."""
    args = inputs(1, 128, 2, 4, 32, 32)
    rec_args = expand_heads(args, 2, 4)
    o, s = ours(*args)
    for name, f in [("recurrent loop", recurrent_loop), ("chunked PyTorch", chunked)] + list(transformers_forms().items()):
        ro, rs = f(*rec_args)
        torch.testing.assert_close(ro, o, rtol=1e-3, atol=1e-3, msg=f"{name} output")
        torch.testing.assert_close(rs, s, rtol=1e-3, atol=1e-3, msg=f"{name} state")


def format_rows(rows: List[dict]) -> List[str]:
    lines = [f"| row | mode | threads | ours ms | vs recurrent loop | vs chunked PyTorch | vs transformers chunked | "
             f"vs transformers recurrent | against the machine |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["speedups"]
        cell = lambda n: f"{s[n]:.1f}x" if n in s else "-"  # noqa: E731
        if "of_sgemm" in r:
            machine = f"{r['gflops']:.1f} GFLOP/s = {100 * r['of_sgemm']:.0f}% of sgemm ({r['sgemm_gflops']:.0f})"
            if "bound_vs_chunked" in r:
                machine += f"; bound vs chunked PyTorch {r['bound_vs_chunked']:.1f}x"
        elif "vs_state_copy" in r:
            machine = f"{r['vs_state_copy']:.2f}x a state copy ({r['ms']['state copy'] * 1e3:.0f} us)"
        else:
            machine = ""
        lines.append(f"| {r['name']} ({r['shape']}) | {r['mode']} | {r['threads']} | {r['ms']['ours']:.3f} | "
                     f"{cell('recurrent loop')} | {cell('chunked PyTorch')} | {cell('transformers chunked')} | "
                     f"{cell('transformers recurrent')} | {machine} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the loop forms at T = 4096 too, more rounds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts (default 1)")
    args = parser.parse_args()
    check_forms_agree()
    for n in args.threads:
        torch.set_num_threads(n)
        print("\n".join(format_rows(run_delta_benchmarks(quick=not args.full))))


if __name__ == "__main__":
    main()
