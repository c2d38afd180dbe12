"""Hugging Face transformers' Mamba and RWKV-4 language models on the CPU: converted by
``torch_rnn_ext.convert`` against the same model unconverted (transformers' pure-PyTorch CPU paths), in one
process, the two taking turns. Random weights of the real shapes (nothing is downloaded): Mamba 130M
(hidden 768, 24 layers, state 16) and RWKV-4 169M (hidden 768, 12 layers), float32, batch 1, no_grad.

    .venv/bin/python benchmarks/bench_hf.py [--full] [--threads 1,2]

Prefill: one forward over a prompt of 512 (quick) or also 2048 tokens building the cache, logits of the last token only
(as ``generate`` does). Decode: one forward of one token with the cache of a 32-token prompt (the step
``generate`` repeats), median over single steps.

Bound: the converted model with its recurrence replaced by a no-op of the same output shapes (everything
else of the model: projections, convolution, norms, head), the floor of any scan kernel; transformers' time
over it is the most any replacement of the recurrence could gain. Scan alone: transformers' own recurrence
function (``mamba_selective_scan``, ``rwkv_linear_attention_cpu``) against our op on one layer's operands.
``run_hf_benchmarks(threads, quick)`` returns the rows.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_rnn_ext  # noqa: E402
from common import machine_info  # noqa: E402

PREFILL = (512, 2048)
QUICK_PREFILL = (512,)  # transformers' own path takes about 15 s per 2048-token Mamba call: full runs only


def models() -> Dict[str, torch.nn.Module]:
    """The two models, their weights drawn uniformly in +-0.05 (seed 0) instead of by their own
    initialisation, which takes 13 s here (RWKV's orthogonal matrices: 7 s of QR); the times do not depend
    on the values."""
    import transformers
    from transformers.initialization import no_init_weights
    transformers.logging.set_verbosity_error()
    with no_init_weights():
        mamba = transformers.MambaForCausalLM(transformers.MambaConfig(
            vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=24, expand=2, conv_kernel=4))
        rwkv = transformers.RwkvForCausalLM(transformers.RwkvConfig(
            vocab_size=50277, hidden_size=768, num_hidden_layers=12, attention_hidden_size=768,
            intermediate_size=3072, context_length=4096))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in (mamba, rwkv):
            model.tie_weights()  # which no_init_weights skips: Mamba's head is its embedding
            for p in model.parameters():
                p.uniform_(-0.05, 0.05, generator=g)
    return {"Mamba (130M shape)": mamba.eval(), "RWKV-4 (169M shape)": rwkv.eval()}


def _prefill(model, ids):
    return lambda: model(ids, use_cache=True, logits_to_keep=1)


def _decoder(model, family_is_rwkv: bool, prompt) -> Callable[[], None]:
    """One decode step with the cache carried (the cache of `prompt`, then of each step before)."""
    out = [model(prompt, use_cache=True, logits_to_keep=1)]
    token = prompt[:, -1:]

    def step():
        prev = out[0]
        kw = {"state": prev.state} if family_is_rwkv else {"cache": prev.cache}
        out[0] = model(token, use_cache=True, **kw)
    return step


class _NoRecurrence:
    """While entered, the converted layers' recurrence (modules/hf.py's _selective_scan / _wkv4) returns
    outputs and states of the right shapes without computing them."""

    def __enter__(self):
        from torch_rnn_ext.modules import hf
        self.hf, self.saved = hf, (hf._selective_scan, hf._wkv4)
        hf._selective_scan = lambda u, dt, A, B, C, D, z, bias, h0: (u, u.new_zeros(u.shape[0], u.shape[1], A.shape[1]))
        hf._wkv4 = lambda td, tf, k, v, state, ret: (v, [k[:, -1]] * 3 if ret or state is not None else None)

    def __exit__(self, *exc):
        self.hf._selective_scan, self.hf._wkv4 = self.saved


def _floor(fn):
    def call():
        with _NoRecurrence():
            fn()
    return call


def _turns(fns: Dict[str, Callable[[], None]], rounds: int, per_round: int, warmup: bool = True
           ) -> Dict[str, float]:
    """Median seconds per call of each fn, the fns taking turns for `rounds` rounds of `per_round` calls,
    after one untimed call each (`warmup`)."""
    times = {k: [] for k in fns}
    for f in fns.values() if warmup else ():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _row(name, phase, n, t, tokens):
    return {"model": name, "phase": phase, "torch_threads": n, "hf_ms": 1e3 * t["ref"],
            "ours_ms": 1e3 * t["ours"], "floor_ms": 1e3 * t["floor"], "speedup": t["ref"] / t["ours"],
            "bound": t["ref"] / t["floor"], "hf_tok_s": tokens / t["ref"], "ours_tok_s": tokens / t["ours"]}


def _scan_alone(name, n, L, rows):
    """transformers' recurrence function against our op on one layer's operands (prefill, no state)."""
    g = torch.Generator().manual_seed(1)
    if name.startswith("Mamba"):
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan
        dim, N = 1536, 16
        u, dt, z = (torch.randn(1, dim, L, generator=g) for _ in range(3))
        A, D, bias = -torch.rand(dim, N, generator=g), torch.randn(dim, generator=g), torch.randn(dim, generator=g)
        B, C = torch.randn(1, N, L, generator=g), torch.randn(1, N, L, generator=g)
        ref = lambda: mamba_selective_scan(u, dt, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,  # noqa: E731
                                           return_last_state=True)
        ours = lambda: torch.ops.torch_rnn_ext.selective_scan(u, dt, A, B, C, D, z, bias, True, None)  # noqa: E731
        shape = f"(1, {dim}, {L}, {N})"
    else:
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu
        C = 768
        td, tf = torch.randn(C, generator=g), torch.randn(C, generator=g)
        k, v = torch.randn(1, L, C, generator=g), torch.randn(1, L, C, generator=g)
        ref = lambda: rwkv_linear_attention_cpu(td, tf, k, v, return_state=True)  # noqa: E731
        ours = lambda: torch.ops.torch_rnn_ext.wkv4(td, tf, k, v, None)  # noqa: E731
        shape = f"(1, {L}, {C})"
    t = _turns({"ref": ref, "ours": ours}, rounds=2, per_round=2)
    rows.append({"model": name, "op": "selective_scan" if name.startswith("Mamba") else "wkv4", "shape": shape,
                 "torch_threads": n, "hf_ms": 1e3 * t["ref"], "ours_ms": 1e3 * t["ours"],
                 "speedup": t["ref"] / t["ours"]})


def run_hf_benchmarks(threads: List[int], quick: bool = True) -> Dict[str, List[dict]]:
    rows, scans = [], []
    prefills = len(QUICK_PREFILL if quick else PREFILL)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, ref in models().items():
            ours = torch_rnn_ext.convert(copy.deepcopy(ref))
            is_rwkv = name.startswith("RWKV")
            for n in threads:
                torch.set_num_threads(n)
                for L in QUICK_PREFILL if quick else PREFILL:
                    ids = torch.randint(0, 50000, (1, L), generator=g)
                    # transformers' path takes seconds per call at 2048 tokens: no warm-up there, one round
                    # (a call timed cold reads slower, transformers' more than ours: with a warm-up at 512)
                    t = _turns({"ref": _prefill(ref, ids), "ours": _prefill(ours, ids),
                                "floor": _floor(_prefill(ours, ids))},
                               rounds=1 if quick or L > 1024 else 2, per_round=1, warmup=L <= 1024)
                    rows.append(_row(name, f"prefill {L}", n, t, L))
                    _scan_alone(name, n, L, scans)
                prompt = torch.randint(0, 50000, (1, 32), generator=g)
                t = _turns({"ref": _decoder(ref, is_rwkv, prompt), "ours": _decoder(ours, is_rwkv, prompt),
                            "floor": _floor(_decoder(ours, is_rwkv, prompt))},
                           rounds=3 if quick else 8, per_round=4)
                rows.append(_row(name, "decode", n, t, 1))
                print(f"  {name}, {n} thread(s): " + ", ".join(
                    f"{r['phase']} {r['speedup']:.1f}x (bound {r['bound']:.1f}x)" for r in rows[-prefills - 1:])
                    + "; scan alone " + ", ".join(f"{r['speedup']:.0f}x" for r in scans[-prefills:]), flush=True)
    return {"models": rows, "scan_alone": scans}


def markdown(result: Dict[str, List[dict]]) -> str:
    lines = ["| model | phase | torch threads | transformers ms | converted ms | speedup | bound | "
             "transformers tok/s | converted tok/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        lines.append(f"| {r['model']} | {r['phase']} | {r['torch_threads']} | {r['hf_ms']:.1f} | {r['ours_ms']:.1f} | "
                     f"**{r['speedup']:.1f}x** | {r['bound']:.1f}x | {r['hf_tok_s']:.0f} | {r['ours_tok_s']:.0f} |")
    lines += ["", "The recurrence alone, one layer's operands (transformers' function vs our op):", "",
              "| op | shape | torch threads | transformers ms | ours ms | speedup |", "|---|---|---|---|---|---|"]
    for r in result["scan_alone"]:
        lines.append(f"| {r['op']} | {r['shape']} | {r['torch_threads']} | {r['hf_ms']:.1f} | {r['ours_ms']:.2f} | "
                     f"**{r['speedup']:.0f}x** |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="more rounds")
    p.add_argument("--threads", type=str, default="1,2", help="torch thread counts, e.g. 1,2")
    args = p.parse_args()
    info = machine_info()
    print(f"torch {info['torch']}, {info['cpu']}, BLAS {info['blas']}")
    rows = run_hf_benchmarks([int(t) for t in args.threads.split(",")], quick=not args.full)
    print(markdown(rows))


if __name__ == "__main__":
    main()
