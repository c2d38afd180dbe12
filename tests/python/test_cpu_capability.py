"""The kernel variants per CPU capability (base, avx2, avx512) and TORCH_RNN_EXT_CPU_CAPABILITY.

Each variant runs in a process of its own (the choice is made once per process). The avx2 and avx512
variants must give bitwise-identical results (same formulas with FMA, no reassociation: only the vector
width differs); base (no FMA) must agree with them to rounding.
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

ORDER = ["base", "avx2", "avx512"]

# Runs every kernel family in float32 and float64, forward and backward, at 1 and 2 torch threads, on
# shapes that reach each product path (one row, packed rows, BLAS), and saves the results.
CHILD = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import torch_rnn_ext as tre
results = {"info": torch.ops.torch_rnn_ext._kernel_info()}
for threads in (1, 2):
    torch.set_num_threads(threads)
    for cls in (tre.LSTM, tre.GRU, tre.RNN):
        for (T, B, I, H) in [(7, 1, 5, 33), (6, 5, 7, 20), (5, 24, 9, 40), (4, 40, 33, 70)]:
            for dt in (torch.float32, torch.float64):
                torch.manual_seed(1)
                kw = {"proj_size": 11} if cls is tre.LSTM and B == 5 else {}
                m = cls(I, H, num_layers=2, bidirectional=True, **kw).to(dt)
                x = torch.randn(T, B, I, dtype=dt, requires_grad=True)
                y, _ = m(x)
                y.pow(2).sum().backward()
                key = (threads, cls.__name__, T, B, I, H, str(dt))
                results[key] = [y.detach(), x.grad] + [p.grad for p in m.parameters()]
    for dt in (torch.float32, torch.float64):
        torch.manual_seed(2)
        b, d, L, n = 2, 37, 50, 16
        leaves = [torch.randn(b, d, L, dtype=dt), torch.randn(b, d, L, dtype=dt), -torch.rand(d, n, dtype=dt),
                  torch.randn(b, n, L, dtype=dt), torch.randn(b, n, L, dtype=dt), torch.randn(d, dtype=dt),
                  torch.randn(b, d, L, dtype=dt), torch.randn(d, dtype=dt), torch.randn(b, d, n, dtype=dt)]
        for t in leaves:
            t.requires_grad_()
        u, delta, A, B, C, D, z, bias, h0 = leaves
        y, h = tre.selective_scan(u, delta, A, B, C, D, z, bias, True, True, h0)
        (y.pow(2).sum() + h.pow(2).sum()).backward()
        results[(threads, "selective_scan", str(dt))] = [y.detach(), h.detach()] + [t.grad for t in leaves]
        with torch.no_grad():  # a decode step (L = 1) of 37 channels: the vectorised blocks and the rest
            y1, h1 = tre.selective_scan(u[..., :1], delta[..., :1], A * 30, B[..., :1], C[..., :1], D, z[..., :1],
                                        bias, True, True, h0)
        results[(threads, "selective_scan step", str(dt))] = [y1, h1]
        w, u4 = torch.randn(64, dtype=dt, requires_grad=True), torch.randn(64, dtype=dt, requires_grad=True)
        k, v = torch.randn(2, 30, 64, dtype=dt, requires_grad=True), torch.randn(2, 30, 64, dtype=dt, requires_grad=True)
        s0 = torch.randn(2, 3, 64, dtype=dt).abs_()
        y, s = tre.wkv4(w, u4, k, v, s0, return_state=True)
        (y.pow(2).sum() + s.sum()).backward()
        results[(threads, "wkv4", str(dt))] = [y.detach(), s.detach(), w.grad, u4.grad, k.grad, v.grad]
        for gate_shape in [(2, 70, 4), (2, 70, 4, 24)]:  # one decay per head, one per key
            leaves = [torch.randn(2, 70, 2, 24, dtype=dt), torch.randn(2, 70, 2, 24, dtype=dt),
                      torch.randn(2, 70, 4, 40, dtype=dt), -torch.rand(gate_shape, dtype=dt),
                      torch.rand(2, 70, 4, dtype=dt), torch.randn(2, 4, 24, 40, dtype=dt)]
            for t in leaves:
                t.requires_grad_()
            o, s = tre.gated_delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True,
                                        use_qk_l2norm_in_kernel=True)
            (o.pow(2).sum() + s.pow(2).sum()).backward()
            results[(threads, "gated_delta_rule", len(gate_shape), str(dt))] = [o.detach(), s.detach()] + \
                [t.grad for t in leaves]
torch.save(results, sys.argv[2])
"""


def cpu_supports():
    """The best capability this CPU has, read from /proc/cpuinfo (the library asks cpuid itself)."""
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    if all(x in flags for x in ("avx512f", "avx512vl", "avx512bw", "avx512dq", "fma")):
        return "avx512"
    if all(x in flags for x in ("avx2", "fma")):
        return "avx2"
    return "base"


def run_child(tmp_path, capability):
    out = tmp_path / ("%s.pt" % (capability or "default"))
    env = dict(os.environ, TORCH_RNN_EXT_CPU_CAPABILITY=capability)
    proc = subprocess.run([sys.executable, "-c", CHILD, REPO_ROOT, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(str(out))


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capability")
    return {c: run_child(tmp, c) for c in ORDER + [""]}


def test_variant_is_the_one_asked_for_or_the_best_the_cpu_has(variants):
    best = cpu_supports()
    assert variants[""]["info"].startswith(best + " time loops"), variants[""]["info"]
    for c in ORDER:
        expect = ORDER[min(ORDER.index(c), ORDER.index(best))]
        assert variants[c]["info"].startswith(expect + " time loops"), (c, variants[c]["info"])


def assert_same(a, b, exact, what):
    assert a.keys() == b.keys()
    for key in a:
        if key == "info":
            continue
        for i, (x, y) in enumerate(zip(a[key], b[key])):
            if exact:
                assert torch.equal(x, y), (what, key, i, (x - y).abs().max().item())
            else:
                tol = 2e-4 if x.dtype == torch.float32 else 1e-10
                torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: "%s %s %d: %s" % (what, key, i, m))


def test_avx2_and_avx512_variants_are_bitwise_identical(variants):
    # On a CPU without AVX-512 both run the avx2 variant; without AVX2, both base.
    assert_same(variants["avx2"], variants["avx512"], True, "avx2 vs avx512")
    assert_same(variants[""], variants["avx512"], True, "default vs avx512")


def test_base_variant_agrees_to_rounding(variants):
    assert_same(variants["base"], variants["avx2"], False, "base vs avx2")


def test_unknown_capability_is_a_clear_error(tmp_path):
    env = dict(os.environ, TORCH_RNN_EXT_CPU_CAPABILITY="avx1024")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import torch_rnn_ext as tre;"
            "tre.LSTM(3, 4)(torch.randn(2, 1, 3))")
    proc = subprocess.run([sys.executable, "-c", code, REPO_ROOT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "RuntimeError: TORCH_RNN_EXT_CPU_CAPABILITY must be base, avx2 or avx512" in proc.stderr, proc.stderr
