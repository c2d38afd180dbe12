"""torch.compile columns (GitHub issue 22): torch.nn's LSTM / GRU / RNN (tanh) and ours, each eager and under
torch.compile, against nn eager, forward (no_grad) and forward+backward, all in one process, interleaved.

    .venv/bin/python benchmarks/bench_compile.py [--full] [--threads 1 2]

torch.compile(module) with its defaults (inductor, fullgraph=False), what a 2.x user tries first, on the same
weights as the eager modules. Each compiled module's first call in each mode is timed on its own (compilation
plus one run) in a fresh inductor cache, so no earlier run's artefacts are reused; a throwaway compile before
the first row pays dynamo's and inductor's one-time start-up (imports), reported apart. Dynamo's counters over
that first call tell what the compiled module runs: its graphs and graph breaks (torch.nn's RNN modules break
the graph: "Dynamo does not support RNN, GRU, or LSTM", so the call falls back to eager), and the profiler's
op names which kernels torch.nn then ran (bench.nn_kernels: oneDNN's aten::mkldnn_rnn_layer or ATen's cells).
Dynamo is reset before each row: its caches (and the shapes it has seen, which would make a later shape
dynamic) do not carry over from one row to the next.

Before timing, each row checks that every compiled module gives its eager module's outputs (no_grad) and
input gradient within ATOL. The four variants are then timed in turn like the main table
(bench.interleaved_medians: rounds of one settled block each); speedup = nn eager's time / the variant's.

``run_compile_benchmarks(quick)`` returns the rows (used by benchmarks/bench.py), at torch's current thread
count; on torch 1.13 (no torch.compile) none, and ``markdown`` says why.
"""
import functools
import os
import re
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import (FULL_ROUNDS, REGIMES, ROUNDS, _outputs, interleaved_medians, make_modules,  # noqa: E402
                   nn_kernels, tqdm)
from common import thread_rows_main  # noqa: E402

SKIPPED = (None if hasattr(torch, "compile")
           else f"skipped: torch.compile needs torch 2.x (this is torch {torch.__version__})")
QUICK_CASES = [("LSTM", REGIMES[2])]
FULL_CASES = [(kind, shape) for kind in ("LSTM", "GRU", "RNN_TANH") for shape in REGIMES]
MODES = ("forward", "forward+backward")
VARIANTS = ("nn", "compiled nn", "ours", "compiled ours")  # the first is the reference of the speedups
ATOL = 1e-4
QUICK_REPEATS, FULL_REPEATS = 6, 10  # timed runs per variant and mode over all rounds: 2 per block


def _step(module, x, mode):
    """One call of `mode` (as bench.bench_pair): the forward under no_grad, or the forward and the backward of
    the sum of every output (x requires grad). Returns the outputs."""
    if mode == "forward":
        with torch.no_grad():
            return _outputs(module(x))
    outs = _outputs(module(x))
    sum(o.sum() for o in outs).backward()
    return outs


def _reason(key: str) -> str:
    """The short reason of a dynamo graph-break counter key (its "Reason: ..." sentence, else its first line)."""
    m = re.search(r"Reason: (.*?)(\.\s|$)", key)
    return m.group(1) if m else key.splitlines()[0]


@functools.lru_cache(maxsize=None)
def startup_seconds() -> float:
    """Wall time of this process's first torch.compile (of a transpose: no kernel to build), dynamo's and
    inductor's one-time imports and set-up, which the rows' first-call times then leave out."""
    from torch._inductor.utils import fresh_cache
    t0 = time.perf_counter()
    with fresh_cache():
        torch.compile(lambda a: a.t())(torch.randn(4, 4))
    return time.perf_counter() - t0


def compile_module(module, x, xg):
    """torch.compile(module) and its first call in each mode (x for the forward, xg, which requires grad, for
    forward+backward), timed, in a fresh inductor cache: (compiled module, {mode: {first_call_s, graphs,
    graph_breaks, break_reasons}}) from dynamo's counters over that call."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache
    compiled = torch.compile(module)
    first = {}
    with fresh_cache():
        for mode, inp in zip(MODES, (x, xg)):
            counters.clear()
            t0 = time.perf_counter()
            _step(compiled, inp, mode)
            first[mode] = {"first_call_s": time.perf_counter() - t0, "graphs": counters["stats"]["unique_graphs"],
                           "graph_breaks": sum(counters["graph_break"].values()),
                           "break_reasons": sorted({_reason(k) for k in counters["graph_break"]})}
    return compiled, first


def check_agree(eager, compiled, x) -> float:
    """Max abs difference of the compiled module and its eager one (no_grad outputs, and the input gradient of
    forward+backward); raises if it exceeds ATOL."""
    diffs = []
    for mode in MODES:
        results = []
        for m in (eager, compiled):
            inp = x if mode == "forward" else x.clone().requires_grad_()
            outs = _step(m, inp, mode)
            results.append([o.detach() for o in outs] if mode == "forward" else [inp.grad])
        diffs += [(a - b).abs().max().item() for a, b in zip(*results)]
    if max(diffs) > ATOL:
        raise AssertionError(f"torch.compile({type(eager).__name__}) and eager differ by {max(diffs):.3g}")
    return max(diffs)


def run_compile_benchmarks(quick: bool = True, rounds: Optional[int] = None) -> List[Dict[str, object]]:
    """Rows {module, T, B, I, H, threads, rounds, startup_s, max_abs_diff, forward, forward+backward} at torch's
    current thread count, each mode {ms, speedup: {variant: ...}, first_call: {compiled variant: compile_module's},
    compiled_nn_kernels}; rounds defaults to bench.py's (ROUNDS, FULL_ROUNDS when not quick). No rows on torch
    1.13 (SKIPPED says why)."""
    if SKIPPED:
        return []
    rounds = rounds or (ROUNDS if quick else FULL_ROUNDS)
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    startup = startup_seconds()
    threads = torch.get_num_threads()
    rows = []
    for kind, (T, B, I, H) in tqdm(QUICK_CASES if quick else FULL_CASES, desc=f"compile ({threads} thread(s))",
                                   unit="row"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        ref, ours = make_modules(kind, I, H, 1, False)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I)
        xg = x.clone().requires_grad_()
        modules = {"nn": ref, "ours": ours}
        first = {}
        for name, eager in (("nn", ref), ("ours", ours)):
            modules[f"compiled {name}"], first[f"compiled {name}"] = compile_module(eager, x, xg)
        diff = max(check_agree(modules[name], modules[f"compiled {name}"], x) for name in ("nn", "ours"))
        row = {"module": kind, "T": T, "B": B, "I": I, "H": H, "threads": threads, "rounds": rounds,
               "startup_s": startup, "max_abs_diff": diff}
        for mode in MODES:
            inp = x if mode == "forward" else xg
            t = interleaved_medians({v: functools.partial(_step, modules[v], inp, mode) for v in VARIANTS},
                                    repeats, rounds)
            row[mode] = {"ms": {v: t[v] * 1e3 for v in VARIANTS}, "speedup": {v: t["nn"] / t[v] for v in VARIANTS},
                         "first_call": {v: f[mode] for v, f in first.items()}}
        # What the compiled nn module ran, after the timing (its new shape recompiles it): on the first steps
        # only, as nn's choice of kernels does not depend on the length and the profiler's bookkeeping of
        # nn's per-step ATen ops takes seconds at T = 1000.
        for mode, kernels in nn_kernels(modules["compiled nn"], x[:2]).items():
            row[mode]["compiled_nn_kernels"] = kernels
        rows.append(row)
    return rows


def _cell(mode_row, variant: str) -> str:
    """A variant's ms and speedup over nn eager."""
    return f"{mode_row['ms'][variant]:.2f} (**{mode_row['speedup'][variant]:.2f}x**)"


def markdown(rows: List[Dict[str, object]]) -> str:
    if not rows:
        return SKIPPED or "no rows"
    r0 = rows[0]
    reasons = sorted({reason for r in rows for mode in MODES for f in r[mode]["first_call"].values()
                      for reason in f["break_reasons"]})
    lines = [f"torch.compile(module) with its defaults (inductor), same weights; each time is the median of "
             f"{r0['rounds']} interleaved rounds of the four variants (as the main table); speedup = nn eager's "
             "time / the variant's; first call: wall time of the compiled module's first call in that mode "
             "(compilation plus one run, fresh inductor cache), after a throwaway compile that paid the process's "
             f"one-time start-up ({r0['startup_s']:.1f} s); graphs / breaks: dynamo's over that call; compiled nn "
             "ran: the kernels in the profiler's op names; compiled and eager outputs and input gradients agree "
             f"within {ATOL:g}." + (f" Graph breaks: {'; '.join(reasons)}." if reasons else ""),
             "",
             "| module | T, B, I, H | threads | mode | nn ms | compiled nn ms | ours ms | compiled ours ms | "
             "first call s (compiled nn / ours) | compiled nn: graphs, breaks, ran | compiled ours: graphs, breaks |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for mode in MODES:
            m = r[mode]
            first = m["first_call"]
            dyn = {v: f"{f['graphs']}, {f['graph_breaks']}" for v, f in first.items()}
            lines.append(f"| {r['module']} | {r['T']}, {r['B']}, {r['I']}, {r['H']} | {r['threads']} | {mode} | "
                         f"{m['ms']['nn']:.2f} | {_cell(m, 'compiled nn')} | {_cell(m, 'ours')} | "
                         f"{_cell(m, 'compiled ours')} | "
                         f"{first['compiled nn']['first_call_s']:.2f} / {first['compiled ours']['first_call_s']:.2f} | "
                         f"{dyn['compiled nn']}, {m['compiled_nn_kernels']} | {dyn['compiled ours']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    thread_rows_main(__doc__, lambda quick: run_compile_benchmarks(quick=quick), markdown, "every kind at every regime of bench.py, more rounds")
