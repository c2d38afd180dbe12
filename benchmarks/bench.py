"""torch_rnn_ext against torch.nn (LSTM, GRU, RNN), side by side in one process.

    python3 benchmarks/bench.py            quick default (the README's table)
    python3 benchmarks/bench.py --full     every regime at 1 and 2 torch threads

Each row: median time of torch.nn and of ours, forward (inference, under no_grad) and forward+backward
(training step without the optimizer), the ratio nn/ours (> 1 means we are faster), and our GFLOP/s with
its fraction of the sgemm rate measured in the same run, and which kernels torch.nn ran: torch 2.x runs
nn.LSTM/GRU/RNN on CPU through oneDNN's RNN primitives where it can (read from the profiler's op names),
1.13 through its own ATen cells. Results go to benchmarks/results/torch-<version>/.

Each ratio has a bound beside it: nn's time over the time of the layers' matrix products alone
(torch_rnn_ext::_layer_products: the input projection, every step's recurrent product and, for
forward+backward, the backward's, each by the kernel call our layer makes at that thread count, with no
pointwise work). No implementation that makes those products can beat nn by more than that.

nn, ours and the floor are timed in turn, in ROUNDS rounds of one block each, and each median pools its
blocks' runs: a change of the machine's speed during a row (this VM's move by 10-30% within seconds)
falls on all three alike. Each block (one module, one mode) starts after a pause of SETTLE_S: the worker
threads of the previous block (OpenBLAS's spin up to ~0.1 s after a product, libgomp's a few ms after a
parallel region) go idle first, so neither module is timed while the other's threads still occupy a core.
With one torch thread and no multi-threaded OpenBLAS (the quick run on torch 2.x, whose MKL follows
torch's thread count) there is no such pool, and the pause is SETTLE_ALONE_S.
"""
import argparse
import datetime
import functools
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from common import blas_info, machine_info, sample_times, save_json, set_blas_threads  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress is a nicety; the numbers do not depend on it
    def tqdm(it, **kw):
        return it

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}
SETTLE_S = 0.3
SETTLE_ALONE_S = 0.02
ROUNDS = 3  # --rounds; --full makes it FULL_ROUNDS
FULL_ROUNDS = 5
BLOCK_S = 0.1
LONG_CALL_S = 0.1
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


@functools.lru_cache(maxsize=None)
def openblas_threads():
    """OpenBLAS's thread count (None: none loaded), read once: main sets it before the first block."""
    return blas_info()["blas_threads"]


def settle_seconds():
    """The pause before a block (see the module docstring): SETTLE_S when a worker pool of torch's or
    OpenBLAS's may still spin from the previous block, SETTLE_ALONE_S when everything runs on one thread."""
    return SETTLE_S if torch.get_num_threads() > 1 or (openblas_threads() or 1) > 1 else SETTLE_ALONE_S


def settled_times(fn, repeats, min_seconds, warmup=1):
    """sample_times of fn after settle_seconds()'s pause."""
    time.sleep(settle_seconds())
    return sample_times(fn, warmup=warmup, repeats=repeats, min_seconds=min_seconds)


def interleaved_medians(fns, repeats, rounds=None):
    """Median time (s) of each of fns (a dict), timed in `rounds` (default ROUNDS) rounds that each run one
    block of every fn in turn: a drift of the machine's speed between blocks (this VM's move by 10-30% within
    seconds) then falls on every fn alike instead of on one. Each block lasts at least BLOCK_S: a few calls
    of a 1 ms function right after the pause would time the VM's wake-up. Every block starts with an untimed
    call (the caches the previous block took), but after the first round not for a fn whose calls take
    LONG_CALL_S or more: a cold start is a small part of such a call, and the warm-up was a third of the
    quick run's largest rows."""
    rounds = rounds or ROUNDS
    samples = {k: [] for k in fns}
    per_round = -(-repeats // rounds)
    for r in range(rounds):
        for k, fn in fns.items():
            warm = r == 0 or statistics.median(samples[k]) < LONG_CALL_S
            samples[k] += settled_times(fn, per_round, BLOCK_S, warmup=1 if warm else 0)
    return {k: statistics.median(v) for k, v in samples.items()}


def nn_kernels(ref, x):
    """Which kernels torch.nn's module runs, forward and forward+backward, from the profiler's op names:
    "oneDNN" when an mkldnn_rnn op ran, else "ATen". Profiles the first two steps: the choice does not depend
    on the length, and ATen's cells log several ops per step (seconds of profiling at T = 1000)."""
    x = x[:2]
    xg = x.clone().requires_grad_()
    found = {}
    for mode in ("forward", "forward+backward"):
        with torch.autograd.profiler.profile() as prof:
            if mode == "forward":
                with torch.no_grad():
                    ref(x)
            else:
                sum(o.sum() for o in _outputs(ref(xg))).backward()
        names = {e.name for e in prof.function_events}
        found[mode] = "oneDNN" if any("mkldnn_rnn" in n for n in names) else "ATen"
    return found


def mode_functions(x):
    """[(mode, fn)]: fn(module) runs one forward (no_grad) or forward+backward of the sum of its outputs on x."""
    xg = x.clone().requires_grad_()

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        sum(o.sum() for o in _outputs(m(xg))).backward()
    return [("forward", fwd), ("forward+backward", fwd_bwd)]


def bench_pair(ref, ours, x, repeats, flops, floor=None, sgemm=None, anchors=None):
    """Times forward (no_grad) and forward+backward for both modules on the same input, `floor`
    (products_floor's functions) in the same rounds when given, and `sgemm` (a Sgemm) in the forward's
    rounds when given: the "of sgemm" fraction then divides by the rate of the same seconds. `anchors`
    ({name: fn}, e.g. onnxruntime's run of the same model) are timed in the forward's rounds too:
    `<name>_ms` and `<name>_speedup` (their time over ours) in the row."""
    ours.load_state_dict(ref.state_dict())
    row = {}
    for (mode, fn), fl in zip(mode_functions(x), (flops, 3 * flops)):
        fns = {"nn": lambda: fn(ref), "ours": lambda: fn(ours)}
        if floor:
            fns["floor"] = floor[mode]
        if sgemm and mode == "forward":
            fns["sgemm"] = sgemm
        if anchors and mode == "forward":
            fns.update(anchors)
        t = interleaved_medians(fns, repeats)
        row[mode] = {"nn_ms": t["nn"] * 1e3, "ours_ms": t["ours"] * 1e3, "speedup": t["nn"] / t["ours"],
                     "ours_gflops": fl / t["ours"] / 1e9}
        if floor:
            row[mode]["products_ms"] = t["floor"] * 1e3
            row[mode]["bound"] = t["nn"] / t["floor"]
        if "sgemm" in t:
            row[mode]["sgemm_gflops"] = sgemm.flops / t["sgemm"] / 1e9
            row[mode]["sgemm_fraction"] = row[mode]["ours_gflops"] / row[mode]["sgemm_gflops"]
        for name in (anchors or {}) if mode == "forward" else ():
            row[mode][f"{name}_ms"] = t[name] * 1e3
            row[mode][f"{name}_speedup"] = t[name] / t["ours"]
    return row


class Sgemm:
    """One n^3 float32 product through torch (BLAS), timed beside the rows: flops per call."""

    def __init__(self, n=1024):
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        self.flops = 2 * n ** 3

    def __call__(self):
        torch.mm(self.a, self.b)


def products_floor(kind, T, B, I, H, layers, directions):
    """The matrix products alone of every layer and direction (see the module docstring), forward and
    forward+backward: {mode: function to time}."""
    g = GATES[kind]
    operands, width = [], I
    for _ in range(layers):
        operands += [(torch.randn(T, B, width), torch.randn(g * H, width) / width ** 0.5,
                      torch.randn(g * H, H) / H ** 0.5, torch.zeros(T * B, H))] * directions
        width = H * directions
    products = torch.ops.torch_rnn_ext._layer_products

    def run_all(backward):
        for x, w_ih, w_hh, states in operands:
            products(x, w_ih, w_hh, states, backward)
    return {"forward": lambda: run_all(False), "forward+backward": lambda: run_all(True)}


def run(full: bool, torch_threads, repeats: int, ort: bool = True):
    from bench_onnx import available, forward_functions
    ort_missing = available() if ort else "skipped (--no-ort)"
    rows = []
    cases = [(n, *c) for n in torch_threads for c in (FULL_CASES if full else QUICK_CASES)]
    sgemm = Sgemm()
    for threads, kind, (T, B, I, H), layers, bidir in tqdm(cases, desc="benchmark", unit="row"):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        ref, ours = make_modules(kind, I, H, layers, bidir)
        x = torch.randn(T, B, I)
        directions = 2 if bidir else 1
        floor = products_floor(kind, T, B, I, H, layers, directions)
        anchors = None
        if not ort_missing:  # onnxruntime on our export of the same weights, at torch's thread count
            ours.load_state_dict(ref.state_dict())
            anchors = forward_functions(ours, x, threads, int8=kind == "LSTM")
        r = bench_pair(ref, ours, x, repeats, rnn_flops(kind, T, B, I, H, layers, directions), floor, sgemm,
                       anchors)
        name = kind if layers == 1 and not bidir else f"{kind} {layers}-layer{' bidirectional' if bidir else ''}"
        rows.append({"module": name, "T": T, "B": B, "I": I, "H": H, "torch_threads": threads,
                     "nn_kernels": nn_kernels(ref, x), **r})
    rates = {}  # the range of the sgemm rates measured beside the rows, per thread count
    for r in rows:
        rates.setdefault(r["torch_threads"], []).append(r["forward"]["sgemm_gflops"])
    return rows, {k: (min(v), max(v)) for k, v in rates.items()}, ort_missing


_MEMORY_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
import torch_rnn_ext
from torch import nn
sys.path.insert(0, {bench!r})
from bench import make_modules, _outputs
torch.set_num_threads({threads})
torch.manual_seed(0)
ref, ours = make_modules({kind!r}, {I}, {H}, {layers}, {bidir})
m = ref if {impl!r} == "nn" else ours
x = torch.randn({T}, {B}, {I}, requires_grad=True)
def step():
    sum(o.sum() for o in _outputs(m(x))).backward()
def kib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field))
step()  # warm-up: one-time allocations are not the model's
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
base = kib("VmRSS:")
step()
rss = (kib("VmHWM:") - base) / 1024
# Every allocation and free of torch's CPU allocator (our kernels' scratch included) in order: the peak
# of the bytes live at once.
with torch.autograd.profiler.profile(profile_memory=True) as prof:
    step()
start = lambda e: e.start_ns() if hasattr(e, "start_ns") else e.start_us() * 1000  # start_us: torch < 2.x
events = sorted((start(e), i, e.nbytes()) for i, e in enumerate(prof.kineto_results.events())
                if e.name() == "[memory]")
live = peak = 0
for _, _, n in events:
    live += n
    peak = max(peak, live)
print(peak / 2 ** 20, rss)
"""


def peak_memory_mb(kind, T, B, I, H, layers, bidir, impl, threads=1):
    """Peak memory of one forward+backward after a warm-up one, in a fresh process (MiB):
    {"allocated": the most bytes of torch's CPU allocator live at once (tensors and our kernels' scratch,
    from the profiler's memory events), "rss": the rise of resident memory}. The RSS figure undercounts
    many small allocations: glibc serves them from heap pages the warm-up already touched (nn.LSTM at
    T=1000, B=1 allocates 24000 blocks of ~1 KiB per step), while ours are few and large."""
    code = _MEMORY_SCRIPT.format(root=os.path.dirname(HERE), bench=HERE, threads=threads, kind=kind, I=I, H=H,
                                 layers=layers, bidir=bidir, impl=impl, T=T, B=B)
    # glibc keeps small freed blocks mapped, so a second pass of many small allocations would not raise
    # RSS while large ones would: make every block of a page or more its own mapping, returned on free.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    allocated, rss = map(float, out.stdout.strip().splitlines()[-1].split())
    return {"allocated": allocated, "rss": rss}


def sweep(kind, shapes, repeats):
    """Speedups of ours over torch.nn along a sweep of shapes (for the plot)."""
    points = []
    for (T, B, I, H) in tqdm(shapes, desc=f"sweep {kind}", unit="pt"):
        torch.manual_seed(0)
        ref, ours = make_modules(kind, I, H, 1, False)
        r = bench_pair(ref, ours, torch.randn(T, B, I), repeats, rnn_flops(kind, T, B, I, H))
        points.append({"T": T, "B": B, "I": I, "H": H, "forward": r["forward"]["speedup"],
                       "forward+backward": r["forward+backward"]["speedup"]})
    return points


def plot(sweeps, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, xlabel) in zip(axes, (("H", "hidden size (T=200, B=8)"), ("T", "sequence length (H=128, B=8)"))):
        for kind, pts in sweeps[key].items():
            xs = [p[key] for p in pts]
            for mode, style in (("forward", "-o"), ("forward+backward", "--s")):
                ax.plot(xs, [p[mode] for p in pts], style, label=f"{kind} {mode}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speedup over torch.nn (x)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("torch_rnn_ext vs torch.nn, 1 torch thread, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows, sgemm, info, command, memory, scans):
    lines = [f"Command: `{command}`  ",
             f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} (its BLAS: "
             f"{info['torch_blas']}); ours: {info['blas']} "
             f"with {info['blas_threads']} BLAS threads; time loops: {info['kernels']}; sgemm (1024^3, float32, "
             "timed in each row's forward rounds; the row's own rate is what its fraction divides by) "
             + ", ".join(f"{lo:.0f}-{hi:.0f} GFLOP/s at {k} torch thread(s)" for k, (lo, hi) in sgemm.items())
             + ".",
             "",
             f"Timing: nn, ours and the products alone in turn, {ROUNDS} interleaved rounds of one block each; "
             "each time is the median over its rounds' runs.",
             "",
             "Bound: nn's time over that of the same layers' matrix products alone (our kernels, this thread "
             "count, no pointwise work), the most any implementation making those products could reach.",
             "",
             "nn kernels: what torch.nn ran in the row (forward / forward+backward), from the profiler's op names: "
             "oneDNN (aten::mkldnn_rnn_layer) or ATen's own cells.",
             "",
             "| module | T, B, I, H | torch threads | nn kernels | fwd nn ms | fwd ours ms | fwd speedup | fwd bound | "
             "fwd+bwd nn ms | fwd+bwd ours ms | fwd+bwd speedup | fwd+bwd bound | ours fwd GFLOP/s (of sgemm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["forward"], r["forward+backward"]
        kernels = r.get("nn_kernels", {})
        lines.append(
            f"| {r['module']} | {r['T']}, {r['B']}, {r['I']}, {r['H']} | {r['torch_threads']} | "
            f"{kernels.get('forward', '?')} / {kernels.get('forward+backward', '?')} | "
            f"{f['nn_ms']:.2f} | {f['ours_ms']:.2f} | **{f['speedup']:.2f}x** | {f['bound']:.2f}x | "
            f"{b['nn_ms']:.2f} | {b['ours_ms']:.2f} | **{b['speedup']:.2f}x** | {b['bound']:.2f}x | "
            f"{f['ours_gflops']:.1f} ({100 * f['sgemm_fraction']:.0f}%) |")
    if memory:
        lines += ["", "Peak memory of one forward+backward (fresh process, 1 torch thread): the most bytes of torch's "
                  "CPU allocator live at once (profiler memory events; our kernels' scratch included), and the "
                  "rise of resident memory (undercounts nn's many small blocks, reused from the heap):", "",
                  "| module | T, B, I, H | nn MiB | ours MiB | ours / nn | nn RSS MiB | ours RSS MiB |",
                  "|---|---|---|---|---|---|---|"]
        for m in memory:
            nn_m, ours_m = m["nn_mib"], m["ours_mib"]
            lines.append(f"| {m['module']} | {m['T']}, {m['B']}, {m['I']}, {m['H']} | {nn_m['allocated']:.2f} | "
                         f"{ours_m['allocated']:.2f} | **{ours_m['allocated'] / max(nn_m['allocated'], 1e-9):.2f}** | "
                         f"{nn_m['rss']:.1f} | {ours_m['rss']:.1f} |")
    if scans:
        r0 = scans[0]
        lines += ["", f"Scans against the sequential PyTorch loop ({r0['threads']} torch thread(s); torch.exp "
                  f"{r0['machine_exp_per_s'] / 1e9:.2f} G elements/s, copy {r0['machine_copy_GB_per_s']:.1f} GB/s "
                  "measured in the same run):", "",
                  "| op | shape | ours ms | loop ms | speedup | forward vs machine limit |",
                  "|---|---|---|---|---|---|"]
        for r in scans:
            lim = ""
            if "exp_fraction" in r:
                lim = (f"{r['exp_per_s'] / 1e9:.2f} G exp/s ({100 * r['exp_fraction']:.0f}% of torch.exp), "
                       f"{r['GB_per_s']:.2f} GB/s ({100 * r['bandwidth_fraction']:.0f}% of copy)")
            lines.append(f"| {r['name']} | {r['shape']} | {r['ours_ms']:.2f} | {r['ref_ms']:.1f} | "
                         f"**{r['speedup']:.0f}x** | {lim} |")
    return "\n".join(lines)


def ort_markdown(rows, missing):
    head = ("onnxruntime anchor, forward: the same weights exported by our ONNX path (standard LSTM/GRU/RNN "
            "nodes) run by onnxruntime's CPU execution provider, intra_op_num_threads = torch's thread count, "
            "timed in the forward's rounds; int8: onnxruntime.quantization.quantize_dynamic (LSTM -> "
            "DynamicQuantizeLSTM). Speedup = onnxruntime's time / ours (> 1: ours is faster):")
    if missing:
        return head + "\n\n" + missing
    try:
        import onnxruntime
        head = head.replace("onnxruntime's CPU", f"onnxruntime {onnxruntime.__version__}'s CPU")
    except ImportError:
        pass
    lines = [head, "",
             "| module | T, B, I, H | threads | ours ms | onnxruntime ms | speedup | onnxruntime int8 ms | "
             "speedup vs int8 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["forward"]
        if "ort_ms" not in f:
            continue
        int8 = (f"{f['ort_int8_ms']:.2f} | **{f['ort_int8_speedup']:.2f}x**" if "ort_int8_ms" in f else "- | -")
        lines.append(f"| {r['module']} | {r['T']}, {r['B']}, {r['I']}, {r['H']} | {r['torch_threads']} | "
                     f"{f['ours_ms']:.2f} | {f['ort_ms']:.2f} | **{f['ort_speedup']:.2f}x** | {int8} |")
    return "\n".join(lines)


MEMORY_CASES = [(kind, shape) for shape in ((100, 32, 256, 256), (1000, 1, 64, 64))
                for kind in ("LSTM", "GRU", "RNN_TANH")]


class Laps:
    """Prints how long each section of the run took (stderr, beside the progress bars)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()

    def __call__(self, section):
        now = time.perf_counter()
        print(f"[bench] {section}: {now - self.last:.0f} s (total {now - self.start:.0f} s)", file=sys.stderr,
              flush=True)
        self.last = now


def main():
    global ROUNDS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="every regime at 1 and 2 torch threads, memory, plot")
    p.add_argument("--threads", type=str, default=None, help="torch thread counts, e.g. 1,2")
    p.add_argument("--blas-threads", type=int, default=None, help="OpenBLAS threads (default: its own)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds per row (default {ROUNDS}, {FULL_ROUNDS} with --full)")
    p.add_argument("--no-scans", action="store_true", help="skip the scan rows")
    p.add_argument("--no-delta", action="store_true", help="skip the gated delta rule rows")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face model rows")
    p.add_argument("--no-ort", action="store_true", help="skip the onnxruntime columns")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else ([1, 2] if args.full else [1])
    repeats = args.repeats or (10 if args.full else 6)
    ROUNDS = max(1, args.rounds or (FULL_ROUNDS if args.full else ROUNDS))
    if args.blas_threads:
        set_blas_threads(args.blas_threads)
    info = dict(machine_info(), kernels=torch.ops.torch_rnn_ext._kernel_info())
    command = f"{sys.executable} benchmarks/bench.py " + " ".join(sys.argv[1:])
    lap = Laps()
    rows, sgemm, ort_missing = run(args.full, threads, repeats, ort=not args.no_ort)
    lap("torch.nn rows")
    memory = []
    if args.full:
        for kind, (T, B, I, H) in tqdm(MEMORY_CASES, desc="peak memory", unit="row"):
            memory.append({"module": kind, "T": T, "B": B, "I": I, "H": H,
                           "nn_mib": peak_memory_mb(kind, T, B, I, H, 1, False, "nn"),
                           "ours_mib": peak_memory_mb(kind, T, B, I, H, 1, False, "ours")})
        lap("peak memory")
    scans, scan_decode = [], []
    if not args.no_scans:
        from bench_scans import run_decode_benchmarks, run_scan_benchmarks
        torch.set_num_threads(threads[0])
        scans = run_scan_benchmarks(quick=not args.full)
        for n in threads:
            torch.set_num_threads(n)
            scan_decode += run_decode_benchmarks(quick=not args.full)
        lap("scans")
    thread_ab = []
    if args.full and set(threads) >= {1, 2}:
        from bench_threads import run_thread_ab
        thread_ab = run_thread_ab(quick=False)
        lap("threads A/B")
    float64 = []
    if args.full:
        from bench_float64 import run_float64_benchmarks
        for n in threads:
            torch.set_num_threads(n)
            float64 += run_float64_benchmarks(rounds=ROUNDS)
        lap("float64")
    delta = []
    if not args.no_delta:
        from bench_delta_rule import check_forms_agree, run_delta_benchmarks
        check_forms_agree()
        for n in threads:
            torch.set_num_threads(n)
            delta += run_delta_benchmarks(quick=not args.full)
        lap("gated delta rule")
    from bench_streaming import (cpp_markdown, markdown as streaming_markdown, run_cpp_stepping,
                                 run_streaming_benchmarks)
    torch.set_num_threads(threads[0])
    streaming = run_streaming_benchmarks(quick=not args.full)
    cpp_stepping = run_cpp_stepping(quick=not args.full)
    lap("streaming")
    from bench_packed import markdown as packed_markdown, run_packed_benchmarks
    packed = []
    for n in threads:
        torch.set_num_threads(n)
        packed += run_packed_benchmarks(quick=not args.full)
    lap("packed sequences")
    from bench_compile import SKIPPED as compile_note, markdown as compile_markdown, run_compile_benchmarks
    compile_rows = []
    if args.no_compile:
        compile_note = "skipped (--no-compile)"
    else:
        for n in threads:
            torch.set_num_threads(n)
            compile_rows += run_compile_benchmarks(quick=not args.full, rounds=ROUNDS)
        lap("torch.compile")
    hf_rows, hf_note = {}, ""
    if args.no_hf:
        hf_note = "skipped (--no-hf)"
    else:
        try:
            import transformers  # noqa: F401  (pinned in the torch 2.x environment only)
        except ImportError:
            hf_note = (f"skipped: transformers is not installed for this Python ({sys.executable}); it is pinned "
                       "in the torch 2.x environment (make bench)")
        if not hf_note:
            from bench_hf import run_hf_benchmarks
            # The quick run at its own thread count (a Mamba prefill through transformers takes 3-5 s a
            # call); --full at 1 and 2 threads whatever --threads says.
            hf_rows = run_hf_benchmarks(sorted(set(threads) | {1, 2}) if args.full else threads, quick=not args.full)
            lap("Hugging Face models")
    sweeps = {}
    if args.full:
        torch.set_num_threads(1)
        sweeps = {"H": {k: sweep(k, [(200, 8, h, h) for h in (32, 64, 128, 256, 512)], 5) for k in ("LSTM", "GRU")},
                  "T": {k: sweep(k, [(t, 8, 128, 128) for t in (10, 50, 200, 1000)], 5) for k in ("LSTM", "GRU")}}
        os.makedirs(os.path.join(RESULTS, torch_rnn_ext._library.torch_tag()), exist_ok=True)
        plot(sweeps, os.path.join(RESULTS, torch_rnn_ext._library.torch_tag(), "speedup.png"))
        lap("speedup sweeps")
    info = dict(info, torch_threads=threads, rounds=ROUNDS)
    table = markdown(rows, sgemm, info, command.strip(), memory, scans)
    table += "\n\n" + ort_markdown(rows, ort_missing)
    if thread_ab:
        from bench_threads import markdown as threads_markdown
        table += ("\n\n1 against 2 torch threads, each row's times in the same interleaved rounds (ratio = time at 1 "
                  "thread / time at 2; < 1: slower at 2 threads):\n\n" + threads_markdown(thread_ab))
    if float64:
        from bench_float64 import markdown as float64_markdown
        table += ("\n\nfloat64 layers and cells against torch.nn (medians of interleaved rounds; the cells at batch 97, "
                  "hidden 51, the shape of pytorch/examples' time_sequence_prediction):\n\n"
                  + "\n".join(float64_markdown(float64)))
    if scan_decode:
        from bench_scans import decode_markdown
        table += ("\n\nScan decode (the streaming step, L = 1, state carried) against torch.exp over as many elements "
                  "as the state has, and per step and state element at longer calls (medians of interleaved rounds):"
                  "\n\n" + "\n".join(decode_markdown(scan_decode)))
    if delta:
        from bench_delta_rule import format_rows as delta_markdown
        table += ("\n\nGated delta rule (Gated DeltaNet), float32, ms of ours and speedup over each PyTorch form "
                  "(written from the equation in benchmarks/bench_delta_rule.py; transformers' Qwen3-Next fallbacks), "
                  "medians of interleaved rounds; GFLOP/s count 6 K V per token and value head forward and 22 K V "
                  "forward+backward; the bound: chunked PyTorch's time over that arithmetic at the sgemm rate:\n\n"
                  + "\n".join(delta_markdown(delta)))
    table += ("\n\nStreaming, one step per call (batch 1, input 64, no_grad, state carried), median us per step:"
              "\n\n" + streaming_markdown(streaming)
              + "\n\nThe same from C++ (examples/cpp/stream_model: our Stepper, our lstm_cell op through the dispatcher, "
              "the scripted module, and ATen's at::lstm_cell for a LibTorch user without us), median us per step:\n\n"
              + cpp_markdown(cpp_stepping))
    table += ("\n\nVariable-length PackedSequence (GitHub issue 22), float32, ours against torch.nn on the same "
              "packed batch and each on the padded one:\n\n" + packed_markdown(packed))
    table += ("\n\ntorch.compile (GitHub issue 22): torch.nn's modules and ours, eager and compiled, float32, against "
              "torch.nn eager:\n\n" + (compile_markdown(compile_rows) if compile_rows else compile_note))
    from bench_hf import markdown as hf_markdown
    table += ("\n\nHugging Face transformers models, converted by torch_rnn_ext.convert vs unconverted "
              "(random weights of the real shapes, float32, batch 1, no_grad; bound: transformers' time over the "
              "converted model's with its recurrence replaced by a no-op):\n\n"
              + (hf_markdown(hf_rows) if hf_rows else hf_note))
    print()
    print(table)
    name = "full" if args.full else "quick"
    out_dir = os.path.join(RESULTS, torch_rnn_ext._library.torch_tag())
    save_json(os.path.join(out_dir, f"{name}.json"),
              {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command.strip(),
               "machine": info, "sgemm_gflops": sgemm, "rows": rows, "peak_memory": memory, "scans": scans,
               "scan_decode": scan_decode, "float64": float64, "gated_delta_rule": delta, "streaming": streaming,
               "cpp_stepping": cpp_stepping, "threads_ab": thread_ab,
               "packed": packed, "compile": compile_rows or compile_note,
               "hf_models": hf_rows or hf_note, "sweeps": sweeps})
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
