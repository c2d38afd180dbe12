"""Timing and machine-reporting helpers shared by the benchmarks."""
import ctypes
import json
import os
import platform
import re
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def sample_times(fn: Callable[[], object], warmup: int = 2, repeats: int = 7, min_seconds: float = 0.0) -> List[float]:
    """Wall times of fn() in seconds, after `warmup` untimed calls: `repeats` runs, more until
    `min_seconds` of timed runs are reached (at most 1000)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return times


def median_time(fn: Callable[[], object], warmup: int = 2, repeats: int = 7, min_seconds: float = 0.0) -> float:
    """Median of sample_times (seconds)."""
    return statistics.median(sample_times(fn, warmup, repeats, min_seconds))


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, repeats: int) -> Dict[str, float]:
    """Median seconds of each fn, timed in turn for `rounds` rounds of `repeats` runs (one warm-up call each
    first), so that a change of the machine's speed falls on all of them alike."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            times[name] += sample_times(fn, warmup=1 if r == 0 else 0, repeats=repeats)
    return {name: statistics.median(t) for name, t in times.items()}


def _openblas() -> Optional[ctypes.CDLL]:
    """The BLAS library loaded in this process (the one torch uses), if it is OpenBLAS."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return None
    for p in sorted(paths):
        if "blas" in os.path.basename(p).lower():
            try:
                lib = ctypes.CDLL(p)
                lib.openblas_get_num_threads  # noqa: B018  (raises AttributeError if not OpenBLAS)
                return lib
            except (OSError, AttributeError):
                continue
    return None


def blas_info() -> Dict[str, object]:
    lib = _openblas()
    if lib is None:
        return {"blas": "BLAS (not OpenBLAS, or not found)", "blas_threads": None}
    lib.openblas_get_config.restype = ctypes.c_char_p
    return {"blas": lib.openblas_get_config().decode().strip(),
            "blas_threads": lib.openblas_get_num_threads()}


def set_blas_threads(n: int) -> None:
    lib = _openblas()
    if lib is not None:
        lib.openblas_set_num_threads(n)


def machine_info() -> Dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    info.update(blas_info())
    # torch's own products (nn's) go through the BLAS torch was built with: MKL in PyPI's wheels,
    # libblas.so.3 (OpenBLAS here) in Debian's.
    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    info["torch_blas"] = m.group(1) if m else "unknown"
    if info["blas_threads"] is None:
        # No OpenBLAS in the process: PyPI's torch exports MKL's sgemm_ from libtorch_cpu, which our
        # library's BLAS calls then bind to (the link drops libblas.so.3), at torch's thread count.
        info["blas"] = f"{info['torch_blas']} inside torch"
        info["blas_threads"] = "torch's"
    return info


def save_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def thread_rows_main(doc: str, run_rows: Callable[[bool], list], markdown: Callable[[list], str],
                     full_help: str) -> None:
    """The command line of a benchmark module run on its own: --full (passed to run_rows as quick=False)
    and --threads (run_rows at each torch thread count); prints the machine and markdown(rows)."""
    import argparse
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--full", action="store_true", help=full_help)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts (default 1)")
    args = parser.parse_args()
    rows = []
    for n in args.threads:
        torch.set_num_threads(n)
        rows += run_rows(not args.full)
    info = machine_info()
    print(f"torch {info['torch']}, BLAS {info['blas']} with {info['blas_threads']} threads, {info['cores']} cores "
          f"({info['cpu']}); float32")
    print()
    print(markdown(rows))
