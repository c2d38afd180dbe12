"""float64 rows (make bench-full): our LSTM/GRU/RNN layers and cells against torch.nn in float64, forward
(no_grad) and forward+backward, interleaved in one process. The cells at batch 97, hidden 51 are the shape
of pytorch/examples' time_sequence_prediction, which trains in float64.

    .venv/bin/python benchmarks/bench_float64.py [--threads 1 2]

``run_float64_benchmarks()`` returns the rows (used by benchmarks/bench.py --full).
"""
import argparse
import os
import sys
from typing import List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from common import interleaved  # noqa: E402

LAYERS = [(1000, 1, 64, 64), (512, 8, 128, 128), (100, 32, 256, 256), (50, 64, 512, 512)]
CELL = (97, 51, 51)  # batch, input, hidden


def _pair(nn_cls, ours_cls, *args, **kw):
    ref = nn_cls(*args, **kw).double()
    ours = ours_cls(*args, **kw).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _times(ref, ours, x, rounds, repeats):
    def fwd(m):
        def run():
            with torch.no_grad():
                m(x)
        return run

    def fwd_bwd(m):
        xg = x.detach().requires_grad_()

        def run():
            out = m(xg)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
        return run

    t = interleaved({"nn fwd": fwd(ref), "ours fwd": fwd(ours), "nn fwd+bwd": fwd_bwd(ref),
                     "ours fwd+bwd": fwd_bwd(ours)}, rounds, repeats)
    return {mode: {"nn_ms": t[f"nn {mode}"] * 1e3, "ours_ms": t[f"ours {mode}"] * 1e3,
                   "speedup": t[f"nn {mode}"] / t[f"ours {mode}"]} for mode in ("fwd", "fwd+bwd")}


def run_float64_benchmarks(rounds: int = 3) -> List[dict]:
    threads = torch.get_num_threads()
    rows = []
    torch.manual_seed(0)
    for name, nn_cls, ours_cls in [("LSTM", torch.nn.LSTM, torch_rnn_ext.LSTM), ("GRU", torch.nn.GRU, torch_rnn_ext.GRU),
                                   ("RNN_TANH", torch.nn.RNN, torch_rnn_ext.RNN)]:
        for T, B, I, H in LAYERS:
            ref, ours = _pair(nn_cls, ours_cls, I, H)
            x = torch.randn(T, B, I, dtype=torch.float64)
            rows.append({"module": name, "shape": f"{T}, {B}, {I}, {H}", "threads": threads,
                         **_times(ref, ours, x, rounds, 3 if T * B * H < 10 ** 6 else 1)})
    for name, nn_cls, ours_cls in [("LSTMCell", torch.nn.LSTMCell, torch_rnn_ext.LSTMCell),
                                   ("GRUCell", torch.nn.GRUCell, torch_rnn_ext.GRUCell),
                                   ("RNNCell", torch.nn.RNNCell, torch_rnn_ext.RNNCell)]:
        B, I, H = CELL
        ref, ours = _pair(nn_cls, ours_cls, I, H)
        x = torch.randn(B, I, dtype=torch.float64)
        rows.append({"module": name, "shape": f"batch {B}, {I}, {H}", "threads": threads,
                     **_times(ref, ours, x, rounds, 100)})
    return rows


def markdown(rows: List[dict]) -> List[str]:
    lines = ["| module | T, B, I, H | threads | fwd nn ms | fwd ours ms | fwd speedup | fwd+bwd nn ms | "
             "fwd+bwd ours ms | fwd+bwd speedup |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["fwd"], r["fwd+bwd"]
        lines.append(f"| {r['module']} | {r['shape']} | {r['threads']} | {f['nn_ms']:.3f} | {f['ours_ms']:.3f} | "
                     f"**{f['speedup']:.2f}x** | {b['nn_ms']:.3f} | {b['ours_ms']:.3f} | **{b['speedup']:.2f}x** |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts (default 1)")
    args = parser.parse_args()
    for n in args.threads:
        torch.set_num_threads(n)
        print("\n".join(markdown(run_float64_benchmarks())))


if __name__ == "__main__":
    main()
