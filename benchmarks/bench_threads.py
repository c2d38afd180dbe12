"""Does anything get slower at 2 torch threads than at 1? An A/B in one process (GitHub issue 22).

    .venv/bin/python benchmarks/bench_threads.py [--full]

For each of bench.py's rows, ours and torch.nn's module are timed at 1 and at 2 torch threads in turn, in
interleaved rounds of one block each (bench.interleaved_medians; the thread count is set at every call, and
each block starts after bench's settling pause), forward (no_grad) and forward+backward. Separate runs at each
thread count, as `make bench-full` makes its two tables, put minutes between the two timings of a row, and this
VM's speed moves by 10-30% in that time; here both thread counts see the same minute.
``ratio`` = time at 1 thread / time at 2 threads: > 1 means 2 threads are faster; a row is flagged when ours
is slower at 2 threads beyond SLOWER (5%), the noise of such a pair on this machine.

``run_thread_ab(quick)`` returns the rows (used by benchmarks/bench.py --full).
"""
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import FULL_CASES, QUICK_CASES, interleaved_medians, make_modules, mode_functions, tqdm  # noqa: E402

SLOWER = 1.05
THREADS = (1, 2)


def _at(n: int, fn):
    def run():
        torch.set_num_threads(n)
        fn()
    return run


def run_thread_ab(quick: bool = False, repeats: int = 7) -> List[Dict[str, object]]:
    """Rows {module, T, B, I, H, mode, impl (ours / nn), ms at each thread count, ratio, slower}."""
    saved = torch.get_num_threads()
    rows = []
    try:
        for kind, (T, B, I, H), layers, bidir in tqdm(QUICK_CASES if quick else FULL_CASES, desc="threads A/B",
                                                       unit="row"):
            torch.manual_seed(0)
            ref, ours = make_modules(kind, I, H, layers, bidir)
            ours.load_state_dict(ref.state_dict())
            x = torch.randn(T, B, I)
            name = kind if layers == 1 and not bidir else f"{kind} {layers}-layer{' bidirectional' if bidir else ''}"
            for mode, fn in mode_functions(x):
                fns = {(impl, n): _at(n, (lambda m: lambda: fn(m))(m))
                       for impl, m in (("ours", ours), ("nn", ref)) for n in THREADS}
                t = interleaved_medians(fns, repeats)
                for impl in ("ours", "nn"):
                    ms = {n: t[(impl, n)] * 1e3 for n in THREADS}
                    ratio = ms[THREADS[0]] / ms[THREADS[1]]
                    rows.append({"module": name, "T": T, "B": B, "I": I, "H": H, "mode": mode, "impl": impl,
                                 "ms": ms, "ratio": ratio, "slower": ratio < 1 / SLOWER})
    finally:
        torch.set_num_threads(saved)
    return rows


def markdown(rows: List[Dict[str, object]]) -> str:
    a, b = THREADS
    lines = [f"| module | T, B, I, H | mode | ours {a} thr ms | ours {b} thr ms | ours {a}/{b} | nn {a} thr ms | "
             f"nn {b} thr ms | nn {a}/{b} |", "|---|---|---|---|---|---|---|---|---|"]
    by_key = {}
    for r in rows:
        by_key.setdefault((r["module"], r["T"], r["B"], r["I"], r["H"], r["mode"]), {})[r["impl"]] = r
    for (module, T, B, I, H, mode), d in by_key.items():
        o, n = d["ours"], d["nn"]
        flag = " (slower)" if o["slower"] else ""
        lines.append(f"| {module} | {T}, {B}, {I}, {H} | {mode} | {o['ms'][a]:.2f} | {o['ms'][b]:.2f} | "
                     f"**{o['ratio']:.2f}x**{flag} | {n['ms'][a]:.2f} | {n['ms'][b]:.2f} | {n['ratio']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every row of bench.py --full (default: the quick rows)")
    args = parser.parse_args()
    print(markdown(run_thread_ab(quick=not args.full)))
