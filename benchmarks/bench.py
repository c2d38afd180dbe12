"""torch_rnn_ext against torch.nn (LSTM, GRU, RNN), side by side in one process.

    python3 benchmarks/bench.py            quick default (the README's table)
    python3 benchmarks/bench.py --full     every regime at 1 and 2 torch threads

Each row: median time of torch.nn and of ours, forward (inference, under no_grad) and forward+backward
(training step without the optimizer), the ratio nn/ours (> 1 means we are faster), and our GFLOP/s with
its fraction of the sgemm rate measured in the same run. Results go to benchmarks/results/.
"""
import argparse
import datetime
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from common import machine_info, median_time, save_json, set_blas_threads, sgemm_gflops  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress is a nicety; the numbers do not depend on it
    def tqdm(it, **kw):
        return it

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}
# (module kind, (T, B, I, H), layers, bidirectional)
REGIMES = [(1000, 1, 64, 64), (512, 8, 128, 128), (100, 32, 256, 256), (50, 64, 512, 512)]
QUICK_CASES = ([("LSTM", s, 1, False) for s in (REGIMES[0], REGIMES[2], REGIMES[3])]
               + [(k, s, 1, False) for k in ("GRU", "RNN_TANH") for s in (REGIMES[0], REGIMES[2])]
               + [("LSTM", REGIMES[2], 2, True)])
FULL_CASES = ([(k, s, 1, False) for k in ("LSTM", "GRU", "RNN_TANH") for s in REGIMES]
              + [("LSTM", REGIMES[2], 2, True)])


def make_modules(kind, I, H, layers, bidirectional):
    kw = dict(num_layers=layers, bidirectional=bidirectional)
    if kind == "LSTM":
        return nn.LSTM(I, H, **kw), torch_rnn_ext.LSTM(I, H, **kw)
    if kind == "GRU":
        return nn.GRU(I, H, **kw), torch_rnn_ext.GRU(I, H, **kw)
    return nn.RNN(I, H, **kw), torch_rnn_ext.RNN(I, H, **kw)


def rnn_flops(kind, T, B, I, H, layers=1, directions=1):
    """2 x multiply-adds of the forward's matrix products (the pointwise work is not counted)."""
    f, inp = 0, I
    for _ in range(layers):
        f += directions * 2 * T * B * GATES[kind] * H * (inp + H)
        inp = H * directions
    return f


def _outputs(result):
    out, hidden = result
    return [out] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def bench_pair(ref, ours, x, repeats, flops):
    """Times forward (no_grad) and forward+backward for both modules on the same input."""
    ours.load_state_dict(ref.state_dict())
    xg = x.clone().requires_grad_()

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        sum(o.sum() for o in _outputs(m(xg))).backward()

    row = {}
    for mode, fn, fl in (("forward", fwd, flops), ("forward+backward", fwd_bwd, 3 * flops)):
        t_ref = median_time(lambda: fn(ref), repeats=repeats)
        t_ours = median_time(lambda: fn(ours), repeats=repeats)
        row[mode] = {"nn_ms": t_ref * 1e3, "ours_ms": t_ours * 1e3, "speedup": t_ref / t_ours,
                     "ours_gflops": fl / t_ours / 1e9}
    return row


def run(full: bool, torch_threads, repeats: int):
    rows = []
    cases = [(n, *c) for n in torch_threads for c in (FULL_CASES if full else QUICK_CASES)]
    sgemm = {}
    for threads, kind, (T, B, I, H), layers, bidir in tqdm(cases, desc="benchmark", unit="row"):
        torch.set_num_threads(threads)
        if threads not in sgemm:
            sgemm[threads] = sgemm_gflops()
        torch.manual_seed(0)
        ref, ours = make_modules(kind, I, H, layers, bidir)
        x = torch.randn(T, B, I)
        r = bench_pair(ref, ours, x, repeats, rnn_flops(kind, T, B, I, H, layers, 2 if bidir else 1))
        for v in r.values():
            v["sgemm_fraction"] = v["ours_gflops"] / sgemm[threads]
        name = kind if layers == 1 and not bidir else f"{kind} {layers}-layer{' bidirectional' if bidir else ''}"
        rows.append({"module": name, "T": T, "B": B, "I": I, "H": H, "torch_threads": threads, **r})
    return rows, sgemm


def markdown(rows, sgemm, info, command):
    lines = [f"Command: `{command}`  ",
             f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}; {info['blas']} "
             f"with {info['blas_threads']} BLAS threads; sgemm (1024^3, float32) "
             + ", ".join(f"{v:.0f} GFLOP/s at {k} torch thread(s)" for k, v in sgemm.items()) + ".",
             "",
             "| module | T, B, I, H | torch threads | fwd nn ms | fwd ours ms | fwd speedup | "
             "fwd+bwd nn ms | fwd+bwd ours ms | fwd+bwd speedup | ours fwd GFLOP/s (of sgemm) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["forward"], r["forward+backward"]
        lines.append(
            f"| {r['module']} | {r['T']}, {r['B']}, {r['I']}, {r['H']} | {r['torch_threads']} | "
            f"{f['nn_ms']:.2f} | {f['ours_ms']:.2f} | **{f['speedup']:.2f}x** | {b['nn_ms']:.2f} | "
            f"{b['ours_ms']:.2f} | **{b['speedup']:.2f}x** | {f['ours_gflops']:.1f} "
            f"({100 * f['sgemm_fraction']:.0f}%) |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="every regime, at 1 and 2 torch threads")
    p.add_argument("--threads", type=str, default=None, help="torch thread counts, e.g. 1,2")
    p.add_argument("--blas-threads", type=int, default=None, help="OpenBLAS threads (default: its own)")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else ([1, 2] if args.full else [1])
    repeats = args.repeats or (9 if args.full else 7)
    if args.blas_threads:
        set_blas_threads(args.blas_threads)
    info = machine_info()
    command = "python3 benchmarks/bench.py " + " ".join(sys.argv[1:])
    rows, sgemm = run(args.full, threads, repeats)
    info = dict(info, torch_threads=threads)
    table = markdown(rows, sgemm, info, command.strip())
    print()
    print(table)
    name = "full" if args.full else "quick"
    save_json(os.path.join(RESULTS, f"{name}.json"),
              {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command.strip(),
               "machine": info, "sgemm_gflops": sgemm, "rows": rows})
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
