"""Variable-length PackedSequence rows (GitHub issue 22): torch_rnn_ext's LSTM, GRU and RNN (tanh) against
torch.nn's on the same PackedSequence, forward (no_grad) and forward+backward, all in one process, interleaved.

    .venv/bin/python benchmarks/bench_packed.py [--full] [--threads 1 2]

Each row draws B lengths uniformly in [T/4, T] (fixed seed) and packs a padded (T, B, I) input with
pack_padded_sequence(x, lengths, enforce_sorted=False) once, outside the timed region: the times are those of
the module call on the PackedSequence and, for forward+backward, of the backward of the sum of the packed
output's data plus h_n (and c_n), the same for both implementations. Both modules are also timed on the full
padded tensor, which makes T * B steps where the packed call makes sum(lengths).

Targets (issue 22): ours at least MIN_SPEEDUP times faster than nn on the packed input, and our packed time at
most our padded time times the useful fraction sum(lengths) / (T * B), plus MAX_PADDED_RATIO - 1 (15%).

Bound: nn's packed time over the time of the layer's matrix products alone on the padded shape
(bench.products_floor, timed in the same rounds) times the useful fraction: the most any implementation
making those products on the useful rows could gain over nn. Where it sits under MIN_SPEEDUP, so must ours.

Before timing, each row checks that ours and nn agree (atol ATOL) on the packed output, the final states and
the gradient of the packed input, so that the times compare the same computation.

``run_packed_benchmarks(quick)`` returns the rows (used by benchmarks/bench.py), at torch's current thread count.
"""
import os
import sys
from typing import Dict, List

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from bench import products_floor, tqdm  # noqa: E402
from common import interleaved, thread_rows_main  # noqa: E402

SHAPES = [(200, 32, 128, 128), (100, 64, 256, 256)]  # (T, B, I, H)
KINDS = ("LSTM", "GRU", "RNN_TANH")
MODES = ("forward", "forward+backward")
LENGTHS_SEED = 0
MIN_SPEEDUP = 5.0
MAX_PADDED_RATIO = 1.15
ATOL = 1e-4
# (rounds, repeats per round and block): quick runs the first shape only.
QUICK_TIMING = (3, 3)
FULL_TIMING = (5, 3)


def make_modules(kind: str, I: int, H: int):
    """torch.nn's module and ours with the same weights."""
    if kind == "LSTM":
        ref, ours = nn.LSTM(I, H), torch_rnn_ext.LSTM(I, H)
    elif kind == "GRU":
        ref, ours = nn.GRU(I, H), torch_rnn_ext.GRU(I, H)
    else:
        ref, ours = nn.RNN(I, H, nonlinearity="tanh"), torch_rnn_ext.RNN(I, H, nonlinearity="tanh")
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def packed_input(T: int, B: int, I: int):
    """(padded (T, B, I) input, its PackedSequence, useful fraction sum(lengths) / (T * B)). Lengths are uniform
    in [T/4, T] from a fixed seed; the packed data is a leaf of its own, so that the timed backward ends at it
    (as the padded input's does) instead of going on through the packing's gather."""
    lengths = torch.randint(T // 4, T + 1, (B,), generator=torch.Generator().manual_seed(LENGTHS_SEED))
    x = torch.randn(T, B, I)
    p = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed = PackedSequence(p.data.detach(), p.batch_sizes, p.sorted_indices, p.unsorted_indices)
    return x, packed, lengths.sum().item() / (T * B)


def _loss(result):
    """The sum of the output (a PackedSequence's data) and of the final states h_n (and c_n)."""
    out, hidden = result
    out = out.data if isinstance(out, PackedSequence) else out  # (a Tensor's .data would be detached)
    return sum(t.sum() for t in [out] + (list(hidden) if isinstance(hidden, tuple) else [hidden]))


def _with_grad(inp):
    """A copy of the input (Tensor or PackedSequence) whose data requires grad."""
    if isinstance(inp, PackedSequence):
        return PackedSequence(inp.data.clone().requires_grad_(), inp.batch_sizes, inp.sorted_indices,
                              inp.unsorted_indices)
    return inp.clone().requires_grad_()


def check_agree(ref, ours, packed) -> float:
    """Max abs difference of ours and nn on the packed input (output data, final states, input gradient);
    raises if any exceeds ATOL."""
    results = []
    for m in (ref, ours):
        inp = _with_grad(packed)
        out, hidden = m(inp)
        _loss((out, hidden)).backward()
        states = list(hidden) if isinstance(hidden, tuple) else [hidden]
        results.append([out.data.detach()] + [s.detach() for s in states] + [inp.data.grad])
    diff = max((a - b).abs().max().item() for a, b in zip(*results))
    if diff > ATOL:
        raise AssertionError(f"{type(ours).__name__}: ours and torch.nn differ by {diff:.3g} on the packed input")
    return diff


def time_row(ref, ours, x, packed, mode: str, floor, rounds: int, repeats: int) -> Dict[str, float]:
    """ms of nn and ours on the packed and on the padded input, and of `floor` (the products alone),
    interleaved."""
    if mode == "forward":
        def call(m, inp):
            def run():
                with torch.no_grad():
                    m(inp)
            return run
    else:
        def call(m, inp):
            inp = _with_grad(inp)

            def run():
                _loss(m(inp)).backward()
            return run
    fns = {"nn_packed": call(ref, packed), "ours_packed": call(ours, packed),
           "ours_padded": call(ours, x), "nn_padded": call(ref, x), "products": floor}
    return {f"{k}_ms": s * 1e3 for k, s in interleaved(fns, rounds, repeats).items()}


def run_packed_benchmarks(quick: bool = True) -> List[Dict[str, object]]:
    """Rows {module, T, B, I, H, threads, mode, nn/ours packed/padded ms, speedup, fraction, padded_ratio,
    pass flags, max_abs_diff} at torch's current thread count; quick: the first shape, fewer runs."""
    rounds, repeats = QUICK_TIMING if quick else FULL_TIMING
    threads = torch.get_num_threads()
    rows = []
    cases = [(kind, shape) for shape in (SHAPES[:1] if quick else SHAPES) for kind in KINDS]
    for kind, (T, B, I, H) in tqdm(cases, desc=f"packed ({threads} thread(s))", unit="row"):
        torch.manual_seed(0)
        ref, ours = make_modules(kind, I, H)
        x, packed, fraction = packed_input(T, B, I)
        diff = check_agree(ref, ours, packed)
        floors = products_floor(kind, T, B, I, H, 1, 1)
        for mode in MODES:
            t = time_row(ref, ours, x, packed, mode, floors[mode], rounds, repeats)
            speedup = t["nn_packed_ms"] / t["ours_packed_ms"]
            ratio = t["ours_packed_ms"] / (t["ours_padded_ms"] * fraction)
            rows.append({"module": kind, "T": T, "B": B, "I": I, "H": H, "threads": threads, "mode": mode,
                         **t, "speedup": speedup, "fraction": fraction, "padded_ratio": ratio,
                         "bound": t["nn_packed_ms"] / (t["products_ms"] * fraction),
                         "speedup_ok": speedup >= MIN_SPEEDUP, "padded_ok": ratio <= MAX_PADDED_RATIO,
                         "max_abs_diff": diff, "rounds": rounds, "repeats": repeats})
    return rows


def markdown(rows: List[Dict[str, object]]) -> str:
    r0 = rows[0]
    lines = [f"Lengths uniform in [T/4, T] (seed {LENGTHS_SEED}), packed with enforce_sorted=False once outside the "
             "timed region; each time is the median of the module call on the PackedSequence (forward+backward: "
             "plus the backward of the sum of the packed output and the final states) or on the padded (T, B, I) "
             f"tensor, nn and ours timed in turn in {r0['rounds']} interleaved rounds of {r0['repeats']} run(s); "
             f"fraction = sum(lengths) / (T B); targets: speedup >= {MIN_SPEEDUP:g}x and ours packed / (ours padded "
             f"x fraction) <= {MAX_PADDED_RATIO:g}.",
             "",
             "| module | T, B, I, H | threads | mode | nn packed ms | ours packed ms | speedup | nn padded ms | "
             "ours padded ms | fraction | packed / (padded x fraction) | bound |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mark = {True: "pass", False: "FAIL"}
    for r in rows:
        lines.append(f"| {r['module']} | {r['T']}, {r['B']}, {r['I']}, {r['H']} | {r['threads']} | {r['mode']} | "
                     f"{r['nn_packed_ms']:.2f} | {r['ours_packed_ms']:.2f} | **{r['speedup']:.2f}x** "
                     f"({mark[r['speedup_ok']]}) | {r['nn_padded_ms']:.2f} | {r['ours_padded_ms']:.2f} | "
                     f"{r['fraction']:.3f} | **{r['padded_ratio']:.2f}** ({mark[r['padded_ok']]}) | "
                     f"{r['bound']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    thread_rows_main(__doc__, lambda quick: run_packed_benchmarks(quick=quick), markdown, "both shapes, more rounds")
