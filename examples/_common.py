"""Shared plumbing for the examples: command line, threads and seed, the training loop with its
progress bar, parameter counts, the results table, and writing the JSON and figures.

Only the examples import this; it uses torch, tqdm and matplotlib (Agg backend, no display needed).
"""
import argparse
import collections
import json
import os
import platform
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")


def parse_args(description, add_arguments=None, argv=None):
    """The options every example takes (--quick, --threads, --seed, --out), plus its own ones."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few-second smoke run (what the tests use)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (default: torch's default, %d here)" % torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for <name>.json and <name>*.png (default: %(default)s)")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    args.start_time = time.perf_counter()
    return args


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def width_for_budget(build, budget, widths):
    """The width w in ``widths`` whose ``build(w)`` has the parameter count closest to ``budget``."""
    return min(widths, key=lambda w: abs(count_params(build(w)) - budget))


Trained = collections.namedtuple("Trained", "losses seconds steps median_step_seconds")


def train(model, loss_fn, steps, lr, desc, clip=1.0, stop=None, log_every=10):
    """Adam on ``loss_fn(step) -> (loss, metrics dict)`` for at most ``steps`` steps, with a tqdm bar.

    ``stop(metrics)`` returning True ends training early. Returns a ``Trained``: per-step losses, total
    seconds, steps run and the median seconds of one step (robust to the steps that also evaluate).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses, step_times = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)
    for step in bar:
        t_step = time.perf_counter()
        loss, metrics = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        step_times.append(time.perf_counter() - t_step)
        if step % log_every == 0:
            bar.set_postfix(refresh=False, loss="%.4f" % losses[-1], **{k: "%.3g" % v for k, v in metrics.items()})
        if stop is not None and stop(metrics):
            break
    bar.close()
    model.eval()
    return Trained(losses, time.perf_counter() - t0, len(losses), sorted(step_times)[len(step_times) // 2])


def format_table(headers, rows):
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else ("%.4g" % c if isinstance(c, float) else str(c))
                                            for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def save_figure(fig, args, filename):
    path = os.path.join(args.out, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish(args, name, results, table, figures):
    """Prints the table, writes <out>/<name>.json (results plus how they were measured), returns the dict."""
    elapsed = time.perf_counter() - args.start_time
    record = {
        "example": name,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "quick": args.quick,
        "threads": args.threads,
        "seed": args.seed,
        "torch": torch.__version__,
        "machine": "%s, %d cores" % (platform.machine(), os.cpu_count() or 0),
        "seconds": round(elapsed, 1),
        "figures": [os.path.relpath(f, args.out) for f in figures],
        "table": table,
        **results,
    }
    path = os.path.join(args.out, name + ".json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(table)
    print("\n%s: %.1f s with %d torch thread(s); wrote %s and %s" % (
        name, elapsed, args.threads, path, ", ".join(figures)))
    return record
