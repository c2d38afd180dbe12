"""Per-step latency of streaming one step at a time (batch 1, input 64, float32, inference under no_grad)
with the state carried between calls: our paths against torch.nn's, all in one process, interleaved.

    /usr/bin/python3 benchmarks/bench_streaming.py [--full]

Ours: (a) torch_rnn_ext.LSTM called per step with hx, (b) torch_rnn_ext.Streamer over a model holding
our LSTM, (c) torch.jit.script(torch_rnn_ext.LSTM) called per step with hx, (d) the lean floor: the
op torch.ops.torch_rnn_ext.lstm_cell called directly on the weights. References: nn.LSTM called per
step with hx, and nn.LSTMCell. Every step is timed on its own (a median over single steps shrugs off the
preemptions of a shared machine); the variants take turns in rounds of `block` steps (so drifts in
machine load hit all alike), and a row reports the median over rounds of each round's median, after
warm-up. ``ratio`` = nn.LSTM time / ours (> 1: ours is faster).

``run_streaming_benchmarks(quick)`` returns the rows. ``run_cpp_stepping(quick)`` runs the C++ example
examples/cpp/stream_model (built with the library, in build/torch-<version>/) on the weights
examples/cpp/make_stream_model.py saves, and returns the microseconds per step it reports: our Stepper
(csrc/api/stepper.h), our lstm_cell op through the dispatcher, the scripted module, and ATen's at::lstm_cell.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from common import machine_info, median_time  # noqa: E402

INPUT = 64
HIDDEN = (64, 256)


def _carrying(module: Callable, x: torch.Tensor) -> Callable[[], None]:
    """One step of `module(x, hx)` with hx carried from the previous step (the module's own output)."""
    state = [None]

    def step():
        state[0] = module(x, state[0])[1]
    return step


def step_functions(hidden: int) -> Dict[str, Callable[[], None]]:
    """name -> a function doing one streaming step; the models share one set of weights."""
    torch.manual_seed(0)
    ref = nn.LSTM(INPUT, hidden)
    ours = torch_rnn_ext.LSTM(INPUT, hidden)
    ours.load_state_dict(ref.state_dict())
    ref_cell = nn.LSTMCell(INPUT, hidden)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref_cell, name).copy_(getattr(ref, name + "_l0"))
    x = torch.randn(1, 1, INPUT)  # (T=1, B=1, I)
    x_cell = x[0]

    stream = torch_rnn_ext.Streamer(nn.Sequential(ours))

    def streamer_step():
        stream(x)

    cell_state = [None]

    def nn_cell_step():
        cell_state[0] = ref_cell(x_cell, cell_state[0])

    weights = [ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0]
    hc = [torch.zeros(1, hidden), torch.zeros(1, hidden)]
    lstm_cell = torch.ops.torch_rnn_ext.lstm_cell

    def op_step():
        hc[0], hc[1] = lstm_cell(x_cell, hc[0], hc[1], *weights)

    return {
        "nn.LSTM": _carrying(ref, x),
        "nn.LSTMCell": nn_cell_step,
        "(a) torch_rnn_ext.LSTM, hx carried": _carrying(ours, x),
        "(b) Streamer(model with our LSTM)": streamer_step,
        "(c) torch.jit.script(our LSTM), hx carried": _carrying(torch.jit.script(ours), x),
        "(d) op lstm_cell direct (lean floor)": op_step,
    }


def run_streaming_benchmarks(quick: bool = True) -> List[Dict[str, object]]:
    """Rows: name, hidden, ours_us, nn_us (nn.LSTM), nn_cell_us (nn.LSTMCell), ratio = nn_us / ours_us."""
    block, rounds = (200, 5) if quick else (1000, 9)
    rows = []
    for hidden in HIDDEN:
        fns = step_functions(hidden)
        times: Dict[str, List[float]] = {name: [] for name in fns}
        with torch.no_grad():
            for fn in fns.values():  # warm-up (the scripted module profiles its first calls)
                for _ in range(50):
                    fn()
            for _ in range(rounds):
                for name, fn in fns.items():
                    times[name].append(median_time(fn, warmup=5, repeats=block) * 1e6)
        med = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
        for name in fns:
            if name.startswith("nn."):
                continue
            rows.append({"name": name, "hidden": hidden, "input": INPUT, "batch": 1,
                         "ours_us": round(med[name], 1), "nn_us": round(med["nn.LSTM"], 1),
                         "nn_cell_us": round(med["nn.LSTMCell"], 1),
                         "ratio": round(med["nn.LSTM"] / med[name], 2)})
    return rows


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP_LINE = re.compile(r"LSTM\((\d+), (\d+)\), batch 1, us per step \((\d+) torch thread\(s\)\): Stepper ([\d.]+), "
                      r"lstm_cell op ([\d.]+), scripted module forward ([\d.]+); ATen's at::lstm_cell ([\d.]+)")


def run_cpp_stepping(quick: bool = True) -> List[Dict[str, object]]:
    """Rows of the C++ example's report: input, hidden, threads and us per step of each way it steps.
    Raises when the example is not built or fails (make bench builds it with the library)."""
    exe = os.path.join(ROOT, "build", torch_rnn_ext._library.torch_tag(), "stream_model")
    if not os.path.exists(exe):
        raise FileNotFoundError(f"{exe} is missing: build the library with its tests (make build-one)")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    def run(cmd):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
        return p.stdout

    with tempfile.TemporaryDirectory() as d:
        run([sys.executable, os.path.join(ROOT, "examples", "cpp", "make_stream_model.py"), d])
        out = run([exe, d, "20000" if quick else "200000"])
    rows = []
    for m in CPP_LINE.finditer(out):
        i, h, threads = (int(v) for v in m.groups()[:3])
        stepper, op, module, aten = (float(v) for v in m.groups()[3:])
        rows.append({"input": i, "hidden": h, "threads": threads, "stepper_us": stepper, "op_us": op,
                     "module_us": module, "aten_lstm_cell_us": aten})
    if not rows:
        raise RuntimeError(f"{exe} printed no timing line:\n{out}")
    return rows


def cpp_markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| I, H | torch threads | Stepper us | our lstm_cell op us | scripted module us | ATen at::lstm_cell us |"
             " at::lstm_cell / Stepper |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input']}, {r['hidden']} | {r['threads']} | {r['stepper_us']} | {r['op_us']} | "
                     f"{r['module_us']} | {r['aten_lstm_cell_us']} | "
                     f"**{r['aten_lstm_cell_us'] / r['stepper_us']:.1f}x** |")
    return "\n".join(lines)


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| path (per step, hx carried) | I, H | ours us | nn.LSTM us | nn.LSTMCell us | nn.LSTM / ours |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['input']}, {r['hidden']} | {r['ours_us']} | {r['nn_us']} | "
                     f"{r['nn_cell_us']} | **{r['ratio']}x** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="more and longer rounds")
    args = parser.parse_args()
    info = machine_info()
    rows = run_streaming_benchmarks(quick=not args.full)
    print(f"torch {info['torch']}, torch threads {info['torch_threads']}, BLAS {info['blas']} with "
          f"{info['blas_threads']} threads, {info['cores']} cores ({info['cpu']}); batch 1, input {INPUT}, "
          "float32, no_grad; median us per step")
    print()
    print(markdown(rows))
    print()
    print("From C++ (examples/cpp/stream_model), median us per step:")
    print()
    print(cpp_markdown(run_cpp_stepping(quick=not args.full)))


if __name__ == "__main__":
    main()
