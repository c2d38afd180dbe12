"""Benchmarks of the linear-time scan ops (selective_scan, wkv4) against the sequential PyTorch loop a
user would write, forward and forward+backward, in one process after warm-up (medians). Also measures
this machine's exp throughput and copy bandwidth, and how close each scan's forward comes to them.

    /usr/bin/python3 benchmarks/bench_scans.py [--full] [--threads 1 2]

``run_scan_benchmarks(quick)`` returns the rows (used by benchmarks/bench.py), ``run_decode_benchmarks(quick)``
the streaming-step rows (L = 1 against torch.exp over the state; per element at L = 1, 8, 512).
"""
import argparse
import os
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402,F401  (loads the op library)
from common import interleaved, median_time  # noqa: E402

OPS = torch.ops.torch_rnn_ext


def machine_roofline() -> Dict[str, float]:
    """This machine's limits at the current thread count: torch.exp throughput (float32 elements/s, on an
    array that stays in cache, so it measures the arithmetic, not memory) and copy bandwidth (GB/s, bytes
    read + written, on arrays far larger than the caches)."""
    x = torch.randn(1 << 16)
    out = torch.empty_like(x)
    reps = 64
    t_exp = median_time(lambda: [torch.exp(x, out=out) for _ in range(reps)], warmup=2, repeats=9)
    src = torch.randn(1 << 24)
    dst = torch.empty_like(src)
    t_copy = median_time(lambda: dst.copy_(src), warmup=2, repeats=7)
    return {"exp_per_s": reps * x.numel() / t_exp, "copy_GB_per_s": 2 * src.numel() * 4 / t_copy / 1e9}


# The loops a user would write.

def scan_loop(u, delta, A, B, C, D, z, delta_bias):
    batch, dim, L = u.shape
    dt = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, :, t, None] * A)
        h = dA * h + dt[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * F.silu(z)


def wkv_loop(time_decay, time_first, k, v):
    w = -torch.exp(time_decay)
    aa = torch.zeros_like(k[:, 0])
    bb = torch.zeros_like(aa)
    pp = torch.full_like(aa, -1e38)
    ys = []
    for t in range(k.shape[1]):
        kk, vv = k[:, t], v[:, t]
        ww = time_first + kk
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        ys.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
        ww = w + pp
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    return torch.stack(ys, 1)


def scan_inputs(batch, dim, L, N):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, dim, L, generator=g), torch.randn(batch, dim, L, generator=g) * 0.5,
            -torch.rand(dim, N, generator=g), torch.randn(batch, N, L, generator=g),
            torch.randn(batch, N, L, generator=g), torch.randn(dim, generator=g),
            torch.randn(batch, dim, L, generator=g), torch.randn(dim, generator=g)]


def wkv_inputs(batch, C, T):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(C, generator=g), torch.randn(C, generator=g), torch.randn(batch, T, C, generator=g),
            torch.randn(batch, T, C, generator=g)]


def time_pair(ours, ref, inputs, repeats):
    """Medians (seconds) of forward and forward+backward of both functions on the same inputs."""
    def fwd(fn):
        with torch.no_grad():
            return median_time(lambda: fn(*inputs), warmup=1, repeats=repeats)

    def fwd_bwd(fn):
        leaves = [t.detach().requires_grad_() for t in inputs]
        return median_time(lambda: fn(*leaves).sum().backward(), warmup=1, repeats=repeats)

    return {"forward": (fwd(ours), fwd(ref)), "forward+backward": (fwd_bwd(ours), fwd_bwd(ref))}


def run_scan_benchmarks(quick: bool) -> List[dict]:
    """Rows {name, shape, ours_ms, ref_ms, speedup, ...} for forward and forward+backward of both ops, at
    the current torch thread count. Forward rows also give the bound the exp rate sets: min_ms = exps /
    machine exp rate, and max_speedup = ref_ms / min_ms.
    quick: sequences of 256 steps instead of 1024 (the reference loops are slow); the shape says so."""
    steps = 256 if quick else 1024
    repeats = 3 if quick else 5
    roof = machine_roofline()
    threads = torch.get_num_threads()
    rows = []

    def add_rows(name, shape, times, elems, bytes_fwd):
        # elems: exps in one forward; bytes_fwd: bytes it reads and writes.
        for mode, (ours, ref) in times.items():
            row = {"name": f"{name} {mode}", "shape": shape, "ours_ms": ours * 1e3, "ref_ms": ref * 1e3,
                   "speedup": ref / ours, "threads": threads}
            if mode == "forward":
                min_s = elems / roof["exp_per_s"]
                row.update(exp_per_s=elems / ours, exp_fraction=elems / ours / roof["exp_per_s"],
                           exp_bound_ms=min_s * 1e3, max_speedup=ref / min_s, GB_per_s=bytes_fwd / ours / 1e9,
                           bandwidth_fraction=bytes_fwd / ours / 1e9 / roof["copy_GB_per_s"])
            rows.append(row)

    note = " (quick: 256 steps)" if quick else ""
    batch, dim, N = 2, 256, 16
    scan_ours = lambda u, d, A, B, C, D, z, db: OPS.selective_scan(u, d, A, B, C, D, z, db, True, None)[0]
    add_rows("selective_scan", f"batch {batch}, dim {dim}, L {steps}, N {N}{note}",
             time_pair(scan_ours, scan_loop, scan_inputs(batch, dim, steps, N), repeats),
             elems=batch * dim * steps * N,  # one exp per (batch, channel, step, state)
             bytes_fwd=4 * (4 * batch * dim * steps + 2 * batch * N * steps))  # u, delta, z, out; B, C

    batch, C = 2, 512
    wkv_ours = lambda td, tf, k, v: OPS.wkv4(td, tf, k, v, None)[0]
    add_rows("wkv4", f"batch {batch}, C {C}, T {steps}{note}",
             time_pair(wkv_ours, wkv_loop, wkv_inputs(batch, C, steps), repeats),
             elems=2 * batch * steps * C,  # two exps per (batch, step, channel) (see kernels/wkv4.h)
             bytes_fwd=4 * 3 * batch * steps * C)  # k, v, y
    for row in rows:
        row.update(machine_exp_per_s=roof["exp_per_s"], machine_copy_GB_per_s=roof["copy_GB_per_s"])
    return rows


def run_decode_benchmarks(quick: bool) -> List[dict]:
    """The streaming step of both scans (L = 1 with the state carried, batch 1, a Mamba 130M mixer's and an
    RWKV-4 169M layer's shapes) against torch.exp over as many elements as the state has, and the time per
    step and state element at L = 1, 8 and 512, all interleaved in one process at the current thread count.
    The calls' fixed costs are timed too: the step at 16 channels and torch.exp over 16 elements; the
    per-element ratio is the two differences' (what the kernels take beyond a call)."""
    rounds, repeats = (3, 20) if quick else (5, 50)
    g = torch.Generator().manual_seed(0)
    rows = []

    def sel_args(L, dim=1536, N=16):
        r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
        return (r(1, dim, L), torch.rand(1, dim, L, generator=g), -torch.rand(dim, N, generator=g), r(1, N, L),
                r(1, N, L), r(dim), r(1, dim, L), r(dim), True, r(1, dim, N))

    def wkv_args(L, C=768):
        r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
        state = torch.cat([r(1, 2, C).abs(), r(1, 1, C)], 1)
        return (r(C), r(C), r(1, L, C), r(1, L, C), state)

    for name, op, make, small, shape, state_elems, small_elems in [
            ("selective_scan", OPS.selective_scan, sel_args, lambda: sel_args(1, dim=16), "dim 1536, N 16",
             1536 * 16, 16 * 16),
            ("wkv4", OPS.wkv4, wkv_args, lambda: wkv_args(1, C=16), "C 768", 3 * 768, 3 * 16)]:
        x, x_small = torch.randn(state_elems), torch.randn(small_elems)
        out, out_small = torch.empty_like(x), torch.empty_like(x_small)
        fns = {L: (lambda a=make(L): op(*a)) for L in (1, 8, 512)}
        fns["exp"] = lambda: torch.exp(x, out=out)
        fns["call"] = lambda a=small(): op(*a)
        fns["exp call"] = lambda: torch.exp(x_small, out=out_small)
        with torch.no_grad():
            t = interleaved(fns, rounds, repeats)
        kernel, exp_kernel = t[1] - t["call"], t["exp"] - t["exp call"]
        rows.append({"name": f"{name} decode", "shape": f"batch 1, {shape}", "threads": torch.get_num_threads(),
                     "step_us": t[1] * 1e6, "exp_us": t["exp"] * 1e6, "vs_exp": t[1] / t["exp"],
                     "call_us": t["call"] * 1e6, "exp_call_us": t["exp call"] * 1e6,
                     # both over state_elems - small_elems elements; None where a difference is not above
                     # zero (the kernel's time within the calls' noise)
                     "kernel_vs_exp": kernel / exp_kernel if kernel > 0 and exp_kernel > 0 else None,
                     "ns_per_step_element": {L: t[L] / (L * state_elems) * 1e9 for L in (1, 8, 512)}})
    return rows


def kernel_ratio(row: dict) -> str:
    r = row.get("kernel_vs_exp")
    return "within noise" if r is None else f"{r:.2f}x"


def decode_markdown(rows: List[dict]) -> List[str]:
    lines = ["| op | shape | threads | step us (L = 1) | torch.exp over the state us | step / exp | "
             "calls' fixed cost us (ours / exp) | per element beyond the call, step / exp | "
             "ns per step and state element at L = 1 / 8 / 512 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ns = r["ns_per_step_element"]
        lines.append(f"| {r['name']} | {r['shape']} | {r['threads']} | {r['step_us']:.1f} | {r['exp_us']:.1f} | "
                     f"**{r['vs_exp']:.2f}x** | {r['call_us']:.1f} / {r['exp_call_us']:.1f} | "
                     f"{kernel_ratio(r)} | {ns[1]:.2f} / {ns[8]:.2f} / {ns[512]:.2f} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="sequences of 1024 steps (default: quick, 256)")
    parser.add_argument("--threads", type=int, nargs="+",
                        help="torch thread counts to run at (default: 1 in quick mode, so it ends within a "
                             "minute; 1 and 2 with --full)")
    args = parser.parse_args()
    for n in args.threads or ([1, 2] if args.full else [1]):
        torch.set_num_threads(n)
        rows = run_scan_benchmarks(quick=not args.full)
        r0 = rows[0]
        print(f"\ntorch threads {r0['threads']}; torch.exp (in cache) {r0['machine_exp_per_s'] / 1e9:.2f} G elements/s; "
              f"copy {r0['machine_copy_GB_per_s']:.1f} GB/s")
        print(f"{'op':32s} {'shape':46s} {'ours ms':>8s} {'loop ms':>8s} {'speedup':>7s}  forward against the machine")
        for r in rows:
            extra = ""
            if "exp_fraction" in r:
                extra = (f"exp {r['exp_per_s'] / 1e9:.2f} G/s = {100 * r['exp_fraction']:.0f}% of torch.exp "
                         f"(bound {r['exp_bound_ms']:.2f} ms, max {r['max_speedup']:.0f}x); "
                         f"{r['GB_per_s']:.2f} GB/s = {100 * r['bandwidth_fraction']:.0f}% of copy")
            print(f"{r['name']:32s} {r['shape']:46s} {r['ours_ms']:8.2f} {r['ref_ms']:8.1f} {r['speedup']:6.0f}x  {extra}")
        print("\n".join(decode_markdown(run_decode_benchmarks(quick=not args.full))))


if __name__ == "__main__":
    main()
