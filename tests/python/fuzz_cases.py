"""Case generators, executors and the crash-isolating worker of the fuzz tests (test_fuzz.py, issue 18).

A *generator* ``gen_<family>(d, variant, aspect)`` turns draws into a *spec*: a JSON-able dict of sizes,
dtype, tensor layouts (contiguous, transposed, strided, offset, stride-0 expanded, self-overlapping),
injected NaN/Inf, the one bad argument (and the argument names its error must name), seeds for the
tensor values. ``d`` is a :class:`Draw`: :class:`RandomDraw` over a seeded ``random.Random`` (the torch
1.13 leg, which has no hypothesis, and this file's command line) or the tests' hypothesis-backed draw
(2.x leg), so one generator serves both legs.

``run_spec(spec)`` builds the tensors, calls ours and the reference (the ATen functionals torch.nn
calls -- torch.lstm, torch.gru, torch.lstm_cell, ... -- with the same weights in float64; torch.nn
modules with a copied state_dict; the float64 loops of test_selective_scan / test_wkv4), and returns a
verdict ``{"status": "pass"}`` or ``{"status": "fail", "kind": ..., "detail": ...}``. A call must either
raise a Python exception (RuntimeError, ValueError, TypeError, IndexError) whose message names the bad
argument, or return what the reference returns: same shapes and dtype, values within tolerance, NaN/Inf
exactly where the reference has them, and (when the spec asks) the same gradients.

Every spec runs in a :class:`Worker`, a persistent subprocess (memory-limited, one JSON line per case),
so a segfault, an abort or a hang fails the case that caused it instead of killing the test run; the
worker is restarted after it. The process start is paid once, and again only after a crash.

Command line (from the repository root; any torch environment):
    PY tests/python/fuzz_cases.py --replay 'SPEC_JSON'        # run one spec in this process, show details
    PY tests/python/fuzz_cases.py --seed FAMILY VARIANT ASPECT SEED [--show]   # the 1.13 leg's case
    PY tests/python/fuzz_cases.py --sweep FAMILY VARIANT ASPECT START COUNT    # many seeds, in a worker
"""
import json
import math
import os
import random
import re
import select
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

# ----------------------------------------------------------------------------------------------------
# Draws


class RandomDraw:
    """The draws of a seeded random.Random: uniform over choices."""

    def __init__(self, rng):
        self.rng = rng

    def int(self, lo, hi):
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        seq = list(seq)
        return seq[self.rng.randrange(len(seq))]

    def bool(self, p=0.5):
        return self.rng.random() < p

    def seed(self):
        return self.rng.randrange(2 ** 31)


def random_draw(family, variant, aspect, seed):
    return RandomDraw(random.Random(f"{family}/{variant}/{aspect}/{seed}"))


class HypothesisDraw:
    """The same interface over hypothesis' ``data.draw``; each draw shrinks toward the first choice,
    False, and the low end of a range."""

    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def int(self, lo, hi):
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def bool(self, p=0.5):
        return self.data.draw(self.st.integers(0, 999)) >= 1000 - round(p * 1000)

    def seed(self):
        return self.data.draw(self.st.integers(0, 2 ** 31 - 1))


# ----------------------------------------------------------------------------------------------------
# Shared vocabulary

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
MODES = list(GATES)
LAYOUTS = ["contiguous", "transposed", "strided", "offset", "expanded", "overlapping"]
SPECIALS = ["nan", "inf", "-inf"]
ALLOWED_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
ASPECTS = ["values", "specials", "errors"]


def draw_layouts(d, names, p=0.35):
    """A layout per tensor name: contiguous mostly, any other with probability p each."""
    return {n: (d.choice(LAYOUTS[1:]) if d.bool(p) else "contiguous") for n in names}


def draw_specials(d, names, count_max=2):
    """NaN/Inf injected into one (sometimes two) of the named tensors: [[name, kind, position], ...]."""
    out = []
    for _ in range(1 if not d.bool(0.25) else 2):
        name = d.choice(names)
        for _ in range(d.int(1, count_max)):
            out.append([name, d.choice(SPECIALS), d.int(0, 10 ** 6)])
    return out


# ----------------------------------------------------------------------------------------------------
# Generators. Each returns a spec; "expect" is None (the call must succeed) or the list of argument
# names of which the error message must contain one.


def _lengths(d, T, B):
    """Sequence lengths (sorted, longest first, the longest T) of a packed batch of B >= 1."""
    lens = sorted([T] + [d.int(1, T) for _ in range(B - 1)], reverse=True)
    return lens


def batch_sizes_of(lengths):
    T = lengths[0]
    return [sum(1 for n in lengths if n > t) for t in range(T)]


def gen_layer(d, variant, aspect):
    """variant: lstm_layer, gru_layer, rnn_tanh_layer, rnn_relu_layer."""
    mode = variant[:-len("_layer")]
    s = dict(family="layer", variant=variant, aspect=aspect, mode=mode, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=2 if d.bool(0.15) else 1, entry=d.choice(["functional", "ops"]))
    T = d.choice([1, 2, 3, 5, 8, 0, 13])
    B = d.choice([1, 2, 3, 0, 5])
    s["I"] = d.choice([1, 2, 4, 0, 7])
    H = d.choice([1, 2, 3, 5, 8, 0])
    s["P"] = d.int(1, H - 1) if mode == "lstm" and H >= 2 and d.bool(0.3) else None
    packed = B >= 1 and d.bool(0.35)
    s["lengths"] = (_lengths(d, T, B) if T >= 1 else []) if packed else None
    s.update(T=T, B=B, H=H, reverse=d.bool())
    opt = ["hx", "cx", "bias_ih", "bias_hh"] if mode == "lstm" else ["hx", "bias_ih", "bias_hh"]
    s["present"] = [n for n in opt if d.bool(0.6 if n in ("hx", "cx") else 0.8)]
    tensors = ["input", "weight_ih", "weight_hh"] + s["present"] + (["weight_hr"] if s["P"] else [])
    s["layouts"] = draw_layouts(d, tensors)
    s["grad"] = d.bool(0.5)
    s["specials"] = draw_specials(d, tensors) if aspect == "specials" else []
    s["fault"] = None
    expect = set()
    if T == 0:
        expect |= {"batch_sizes"} if packed else {"input"}
    if aspect == "errors":
        s["fault"] = _layer_fault(d, s, tensors)
        expect |= set(s["fault"]["names"])
    s["expect"] = sorted(expect) or None
    return s


def _type_fault(d, names):
    arg = d.choice(names)
    return dict(arg=arg, kind=d.choice(["list", "string"]), names=[arg])


def _layer_fault(d, s, tensors):
    mode, packed = s["mode"], s["lengths"] is not None
    choices = ["input.int", "input.dim", "input.size", "weight_ih.rows", "weight_ih.dtype", "weight_ih.dim",
               "weight_hh.cols", "weight_hh.rows", "weight_hh.dtype", "weight_hh.dim", "hx.shape", "hx.dtype",
               "hx.dim", "bias_ih.size", "bias_ih.dtype", "bias_hh.size", "bias_hh.dim", "meta", "type",
               "reverse.type", "required.none"]
    if mode == "lstm":
        choices += ["cx.shape", "cx.dtype", "cx.dim", "weight_hr.shape", "weight_hr.dtype", "weight_hr.square"]
    if packed:
        choices += ["batch_sizes.int32", "batch_sizes.float", "batch_sizes.dim2", "batch_sizes.dim0",
                    "batch_sizes.zero", "batch_sizes.negative", "batch_sizes.sum", "batch_sizes.increasing",
                    "batch_sizes.empty", "batch_sizes.meta"]
    kind = d.choice(choices)
    arg = kind.split(".")[0]
    names = {
        "input": ["input", "weight_ih"], "weight_ih": ["weight_ih"],
        "weight_hh": ["weight_hh", "weight_ih", "weight_hr"], "hx": ["hx"], "cx": ["cx"],
        "bias_ih": ["bias_ih"], "bias_hh": ["bias_hh"], "weight_hr": ["weight_hr", "weight_hh"],
        "batch_sizes": ["batch_sizes"], "reverse": ["reverse"],
    }.get(arg)
    f = dict(arg=arg, kind=kind, names=names, r=d.int(0, 10 ** 6))
    if kind == "input.int":
        f["names"] = ["input"]
    elif kind == "batch_sizes.sum":
        f["names"] = ["batch_sizes", "input"]
    elif kind in ("meta", "batch_sizes.meta"):
        f["arg"] = d.choice(tensors) if kind == "meta" else "batch_sizes"
        f["names"] = tensors + ["batch_sizes"]
    elif kind == "type":
        f.update(_type_fault(d, tensors))
        f["kind"] = "type." + f["kind"]
    elif kind == "required.none":
        f["arg"] = d.choice(["input", "weight_ih", "weight_hh"])
        f["names"] = [f["arg"]]
    return f


def gen_stack(d, variant, aspect):
    """variant: lstm, gru, rnn_tanh, rnn_relu (the multi-layer ops)."""
    mode = variant
    s = dict(family="stack", variant=variant, aspect=aspect, mode=mode, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=2 if d.bool(0.15) else 1, entry=d.choice(["functional", "ops"]))
    s["L"] = d.choice([1, 2, 3])
    s["bidirectional"] = d.bool()
    s["bias"] = d.bool(0.8)
    T = d.choice([1, 2, 3, 5, 8, 0])
    B = d.choice([1, 2, 3, 0, 4])
    H = d.choice([1, 2, 3, 5, 0])
    s["I"] = d.choice([1, 2, 4, 0, 5])
    s["P"] = d.int(1, H - 1) if mode == "lstm" and H >= 2 and d.bool(0.3) else None
    s["input_kind"] = d.choice(["padded", "batch_first", "unbatched", "packed"] if B >= 1 else
                               ["padded", "batch_first"])
    s["batch_first"] = s["input_kind"] == "batch_first" or (s["input_kind"] == "packed" and d.bool(0.3))
    s["lengths"] = (_lengths(d, T, B) if T >= 1 else []) if s["input_kind"] == "packed" else None
    s.update(T=T, B=B, H=H)
    s["hx"] = d.bool(0.6)
    s["train"] = d.bool(0.3)
    s["dropout"] = d.choice([0.0, 0.0, 0.3, 1.0]) if s["train"] and s["L"] > 1 else 0.0
    s["layouts"] = draw_layouts(d, ["input", "hx", "params"])
    s["grad"] = d.bool(0.5)
    names = ["input", "params"] + (["hx"] if s["hx"] else [])
    s["specials"] = draw_specials(d, names) if aspect == "specials" else []
    s["fault"] = None
    expect = set()
    if T == 0:
        expect |= {"batch_sizes"} if s["lengths"] is not None else {"input"}
    if aspect == "errors":
        s["fault"] = _stack_fault(d, s)
        expect |= set(s["fault"]["names"])
    s["expect"] = sorted(expect) or None
    return s


PARAM_NAMES = ["params", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]


def _stack_fault(d, s):
    choices = ["num_layers.zero", "num_layers.negative", "num_layers.more", "dropout.negative", "dropout.big",
               "dropout.nan", "params.drop", "params.extra", "params.shape", "params.dtype", "params.dim",
               "input.dim1", "input.dim4", "input.int", "hx.shape", "hx.dim", "hx.dtype", "has_biases.flip",
               "type.hx", "type.params", "type.num_layers", "type.dropout"]
    if s["mode"] == "lstm":
        choices += ["hx.one", "hx.three"]
    if s["lengths"] is not None:
        choices += ["batch_sizes.int32", "batch_sizes.dim2", "batch_sizes.empty", "batch_sizes.zero",
                    "batch_sizes.sum"]
    kind = d.choice(choices)
    arg = kind.split(".")[0]
    names = {"num_layers": ["num_layers", "params"], "dropout": ["dropout"], "params": PARAM_NAMES,
             "input": ["input"], "hx": ["hx", "hidden", "hidden[0]", "hidden[1]"], "has_biases": PARAM_NAMES,
             "batch_sizes": ["batch_sizes"]}.get(arg)
    if kind == "batch_sizes.sum":
        names = ["batch_sizes", "input"]
    if kind == "params.shape":
        names = PARAM_NAMES + ["input", "hx", "hidden", "hidden[0]", "hidden[1]"]
    if arg == "type":
        names = [kind.split(".")[1]]
    return dict(arg=arg, kind=kind, names=names, r=d.int(0, 10 ** 6))


def gen_cell(d, variant, aspect):
    """variant: lstm_cell, gru_cell, rnn_tanh_cell, rnn_relu_cell (the ops)."""
    mode = variant[:-len("_cell")]
    s = dict(family="cell", variant=variant, aspect=aspect, mode=mode, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=1)
    s.update(B=d.choice([1, 2, 3, 0, 6]), I=d.choice([1, 3, 0, 5]), H=d.choice([1, 2, 4, 0, 7]))
    opt = ["hx", "cx", "bias_ih", "bias_hh"] if mode == "lstm" else ["hx", "bias_ih", "bias_hh"]
    s["present"] = [n for n in opt if d.bool(0.7)]
    tensors = ["input", "weight_ih", "weight_hh"] + s["present"]
    s["layouts"] = draw_layouts(d, tensors)
    s["grad"] = d.bool(0.5)
    s["specials"] = draw_specials(d, tensors) if aspect == "specials" else []
    s["fault"] = None
    s["expect"] = None
    if aspect == "errors":
        choices = ["input.dim1", "input.dim3", "input.size", "input.int", "hx.shape", "hx.dim", "hx.dtype",
                   "weight_ih.rows", "weight_hh.rows", "weight_hh.dtype", "bias_ih.size", "bias_hh.dtype",
                   "type.input", "type.hx", "type.weight_ih"]
        if mode == "lstm":
            choices += ["cx.shape", "cx.dtype", "cx.dim"]
        kind = d.choice(choices)
        arg = kind.split(".")[0]
        names = {"input": ["input", "weight_ih"], "weight_ih": ["weight_ih"],
                 "weight_hh": ["weight_hh", "weight_ih"]}.get(arg, [arg])
        if arg == "type":
            names = [kind.split(".")[1]]
        s["fault"] = dict(arg=arg, kind=kind, names=names, r=d.int(0, 10 ** 6))
        s["expect"] = names
    return s


def gen_scan(d, variant, aspect):
    """variant: selective_scan, wkv4, gated_delta_rule."""
    s = dict(family="scan", variant=variant, aspect=aspect, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=2 if d.bool(0.15) else 1, entry=d.choice(["functional", "ops"]))
    s["batch"] = d.choice([1, 2, 0, 3])
    long_ = d.bool(0.08)
    s["grad"] = d.bool(0.5)
    if variant == "selective_scan":
        s["L"] = d.choice([64, 65, 130]) if long_ else d.choice([1, 2, 5, 0, 17])
        s["dim"] = d.choice([1, 2, 4, 0, 6])
        s["N"] = d.choice([1, 2, 3, 8])
        divisors = [g for g in range(1, 7) if s["dim"] % g == 0]
        for op in ("B", "C"):
            s[op + "_kind"] = d.choice(["constant", "varying", "grouped"])
            s[op + "_G"] = d.choice(divisors) if s[op + "_kind"] == "grouped" else 1
        s["present"] = [n for n in ["D", "z", "delta_bias", "initial_state"] if d.bool(0.5)]
        s["softplus"] = d.bool()
        s["return_last_state"] = d.bool(0.7)
        tensors = ["u", "delta", "A", "B", "C"] + s["present"]
        first = "u"
        if s["L"] == 0:
            s["expect_size"] = ["u"]
    elif variant == "gated_delta_rule":
        s["T"] = d.choice([63, 64, 65, 130]) if long_ else d.choice([1, 2, 5, 0, 9])
        s["H"], s["G"] = d.choice([1, 2]), d.choice([1, 2, 3])  # q/k heads, value heads per q/k head
        s["K"], s["V"] = d.choice([1, 3, 16, 17]), d.choice([1, 5, 16, 33])  # V: whole and partial panels
        s["gate"] = d.choice(["scalar", "per_key", None])
        s["l2norm"], s["scale"] = d.bool(), d.choice([None, 0.5])
        s["cu"] = None
        if s["T"] >= 2 and d.bool(0.3):  # packed sequences in a batch of one
            s["batch"] = 1
            cut = d.int(1, s["T"] - 1)
            s["cu"] = [0, cut, s["T"]]
        s["present"] = ["initial_state"] if d.bool(0.5) else []
        s["output_final_state"] = d.bool(0.7)
        tensors = ["q", "k", "v", "beta"] + (["g"] if s["gate"] else []) + s["present"]
        first = "q"
        if s["T"] == 0:
            s["expect_size"] = ["q"]
    else:
        s["T"] = d.choice([63, 64, 65, 130]) if long_ else d.choice([1, 2, 5, 0, 9])
        s["C"] = d.choice([1, 2, 3, 0, 8, 17])
        s["k_scale"] = d.choice([1.0, 5.0, 40.0])
        s["present"] = ["state"] if d.bool(0.5) else []
        s["return_state"] = d.bool(0.7)
        tensors = ["time_decay", "time_first", "k", "v"] + s["present"]
        first = "k"
        if s["T"] == 0:
            s["expect_size"] = ["k"]
    s["layouts"] = draw_layouts(d, tensors)
    s["specials"] = draw_specials(d, tensors) if aspect == "specials" else []
    if variant == "wkv4":
        # The float64 reference is a softmax over log-weights: a +Inf log-weight (k, time_first, the state's pp)
        # makes it NaN where the kernel's stable form returns the limit, and an Inf value (v, aa) meets
        # weights that underflow to 0 (0 * Inf) at other steps in float64 than in the kernel. A NaN time_decay
        # meets the empty state's zeros (NaN * 0) where the exact result does not depend on w. NaN in the
        # other tensors, -Inf log-weights and an infinite time_decay (w = -0 or -Inf) have one answer.
        s["specials"] = [[n, ("inf" if k == "nan" else k) if n == "time_decay" else
                          "nan" if n == "v" or k == "inf" else k, p] for n, k, p in s["specials"]]
    if variant == "gated_delta_rule":
        # NaN only: an infinity meets zeros (0 * Inf) in other places in the reference's einsums than in the
        # kernel's panels; a NaN reaches the same outputs in both.
        s["specials"] = [[n, "nan", p] for n, k, p in s["specials"]]
    s["fault"] = None
    expect = set(s.get("expect_size", []))
    if aspect == "errors" and variant == "gated_delta_rule":
        kinds = ["dim", "size", "dtype", "meta", "type", "none", "int"] + (["heads"] if s["H"] > 1 else []) + \
            (["cu"] if s["cu"] else [])
        kind = d.choice(kinds)
        # g and initial_state are optional (None is valid); v's V (size 3) and HV define them, so a v of
        # another V or HV may be valid: its batch or T is resized instead
        arg = d.choice(tensors if kind not in ("none",) else ["q", "k", "v", "beta"])
        r = d.int(0, 10 ** 6)
        names = [arg]
        if kind == "size" and arg == "v":
            r = r // 4 * 4 + r % 2
        if kind in ("size", "dtype") and arg == first or kind == "meta":
            names = tensors
        if kind == "heads":
            arg, names = "v", ["q", "v"]
        if kind == "cu":
            arg, names = "cu_seqlens", ["cu_seqlens"]
        s["fault"] = dict(arg=arg, kind=kind, names=names, r=r)
        expect |= set(names)
    elif aspect == "errors":
        kind = d.choice(["dim", "size", "dtype", "meta", "type", "none", "int"] +
                        (["groups", "d_state", "softplus.type"] if variant == "selective_scan" else []))
        arg = d.choice(tensors if kind != "none" else tensors[:5 if variant == "selective_scan" else 4])
        if kind in ("groups", "d_state"):
            arg = d.choice(["B", "C"])
        names = [arg]
        if kind == "meta":
            names = tensors
        if kind == "int":
            arg = first if d.bool() else arg
            names = [arg] if arg == first else [arg]
        if kind == "softplus.type":
            arg, names = "delta_softplus", ["delta_softplus"]
        if kind == "size" and arg == first:
            names = tensors  # the first tensor's sizes define the others: any mismatch may be reported
        if kind == "size" and arg == "A":
            names = ["A", "B", "C", "initial_state"]  # A's size 1 is d_state, which B, C and the state follow
        if kind == "dtype" and arg == first:
            names = tensors
        s["fault"] = dict(arg=arg, kind=kind, names=names, r=d.int(0, 10 ** 6))
        expect |= set(names)
    s["expect"] = sorted(expect) or None
    return s


def gen_rnn_module(d, variant, aspect):
    """variant: LSTM, GRU, RNN_TANH, RNN_RELU modules against torch.nn twins."""
    s = dict(family="rnn_module", variant=variant, aspect=aspect, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=1)
    s["L"] = d.choice([1, 2])
    s["bidirectional"] = d.bool()
    s["bias"] = d.bool(0.8)
    s["I"] = d.choice([1, 3, 4])
    s["H"] = d.choice([1, 2, 5])
    s["P"] = d.int(1, s["H"] - 1) if variant == "LSTM" and s["H"] >= 2 and d.bool(0.3) else 0
    s["T"] = d.choice([1, 2, 4, 7])
    s["B"] = d.choice([1, 2, 3, 0])
    kinds = ["padded", "batch_first", "unbatched", "packed", "packed_unsorted"]
    s["input_kind"] = d.choice(kinds if s["B"] >= 1 else kinds[:2])
    s["batch_first"] = s["input_kind"] == "batch_first" or (s["input_kind"].startswith("packed") and d.bool(0.3))
    s["lengths"] = [d.int(1, s["T"]) for _ in range(s["B"])] if s["input_kind"].startswith("packed") else None
    if s["lengths"]:
        s["lengths"][d.int(0, s["B"] - 1)] = s["T"]
        if s["input_kind"] == "packed":
            s["lengths"].sort(reverse=True)
    s["hx"] = d.bool(0.6)
    s["train"] = d.bool(0.3)
    s["dropout"] = d.choice([0.0, 0.5]) if s["train"] and s["L"] > 1 else 0.0
    s["grad"] = d.bool(0.5)
    s["specials"] = draw_specials(d, ["input", "hx"] if s["hx"] else ["input"]) if aspect == "specials" else []
    s["fault"] = None
    if aspect == "errors":
        choices = ["hx.shape", "hx.dim", "hx.dtype", "hx.list", "input.dim1", "input.dim4", "input.dtype",
                   "input.size"]
        if variant == "LSTM":
            choices += ["hx.tensor", "hx.one", "hx.three", "hx.cshape"]
        else:
            choices += ["hx.tuple"]
        s["fault"] = dict(kind=d.choice(choices), r=d.int(0, 10 ** 6))
    s["expect"] = None  # decided by the torch.nn twin
    return s


def gen_cell_module(d, variant, aspect):
    """variant: LSTMCell, GRUCell, RNNCell_TANH, RNNCell_RELU modules against torch.nn twins."""
    s = dict(family="cell_module", variant=variant, aspect=aspect, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=1)
    s.update(I=d.choice([1, 3, 4]), H=d.choice([1, 2, 5]), B=d.choice([1, 2, 3, 0]), bias=d.bool(0.8))
    s["batched"] = d.bool(0.75)
    s["hx"] = d.bool(0.6)
    s["grad"] = d.bool(0.5)
    s["specials"] = draw_specials(d, ["input", "hx"] if s["hx"] else ["input"]) if aspect == "specials" else []
    s["fault"] = None
    if aspect == "errors":
        choices = ["hx.shape", "hx.dim", "hx.dtype", "input.dim0", "input.dim3", "input.dtype", "input.size"]
        if variant == "LSTMCell":
            choices += ["hx.tensor", "hx.one", "hx.three", "hx.cshape", "hx.list"]
        else:
            choices += ["hx.tuple"]
        s["fault"] = dict(kind=d.choice(choices), r=d.int(0, 10 ** 6))
    s["expect"] = None
    return s


def gen_seq_module(d, variant, aspect):
    """variant: MambaMixer, RWKV4TimeMix: forward, step-by-step and chunked, against the float64 loops."""
    s = dict(family="seq_module", variant=variant, aspect=aspect, dtype=d.choice(["float64", "float32"]),
             seed=d.seed(), threads=1)
    s["batch"] = d.choice([1, 2, 0])
    s["L"] = d.choice([1, 2, 5, 9])
    s["mode"] = d.choice(["forward", "step", "chunks"])
    if variant == "MambaMixer":
        s.update(d_model=d.choice([4, 8, 16]), d_state=d.choice([1, 4, 16]), d_conv=d.choice([1, 2, 4]),
                 expand=d.choice([1, 2]), dt_rank=d.choice(["auto", 1, 3]))
    else:
        s.update(n_embd=d.choice([4, 8, 12]), attn_sz=d.choice([None, 4, 6]), layer_id=d.int(0, 2), n_layer=3)
    s["cut"] = d.int(1, max(1, s["L"] - 1))
    s["grad"] = s["mode"] == "forward" and d.bool(0.5)
    # An Inf in RWKV's x reaches v, where the float64 softmax reference turns 0 * Inf into NaN (see
    # gen_scan): NaN only there.
    kinds = SPECIALS if variant == "MambaMixer" else ["nan"]
    s["specials"] = [["x", d.choice(kinds), d.int(0, 10 ** 6)]] if aspect == "specials" else []
    s["fault"] = None
    s["expect"] = None
    if aspect == "errors":
        s["mode"] = d.choice(["step", "chunks"])
        if variant == "MambaMixer":
            kind = d.choice(["ssm_state.shape", "ssm_state.dtype", "conv_state.shape", "conv_state.dtype"])
            s["expect"] = {"ssm_state": ["ssm_state", "initial_state"], "conv_state": ["conv_state"]}[
                kind.split(".")[0]]
        else:
            kind = d.choice(["state.shape", "state.dtype", "last_x.shape", "last_x.dtype"])
            s["expect"] = {"state": ["state"], "last_x": ["last_x"]}[kind.split(".")[0]]
        if kind.endswith(".dtype") and kind.split(".")[0] in ("conv_state", "last_x") and s["dtype"] == "float64":
            kind = kind.split(".")[0] + ".shape"  # a float32 one in float64 arithmetic is only promoted
        s["fault"] = dict(kind=kind, r=d.int(0, 10 ** 6))
    return s


HUGE = [2 ** 62, 2 ** 63 - 1, 2 ** 61 + 1, 2 ** 32 + 1, 3 * 2 ** 61, 2 ** 31, -2 ** 63, 2 ** 40]


def gen_huge(d, variant, aspect):
    """Sizes near overflow (crash- and hang-prone): variant num_layers, batch_sizes, long_input,
    empty_long, scan_huge, cell_huge."""
    s = dict(family="huge", variant=variant, aspect=aspect, dtype=d.choice(["float32", "float64"]),
             seed=d.seed(), threads=1, timeout=6)
    if variant == "num_layers":
        s.update(op=d.choice(MODES), num_layers=d.choice(HUGE), bidirectional=d.bool(), bias=d.bool(),
                 hx=d.bool(0.3))
        s["expect"] = ["num_layers", "params"]
    elif variant == "batch_sizes":
        s["op"] = d.choice([m + "_layer" for m in MODES] + MODES)
        v = d.choice([[2 ** 62] * 4, [2 ** 63 - 1, 1], [2 ** 62, 2 ** 62], [2 ** 40] * 3, [2 ** 63 - 1],
                      [2 ** 61] * 8, [2 ** 62, 3], [2 ** 32] * 2])
        s.update(batch_sizes=v, rows=d.choice([0, 3]), H=d.choice([0, 1, 4]), I=d.choice([0, 2]), hx=d.bool(0.3))
        s["expect"] = ["batch_sizes", "input", "hx"]
    elif variant == "long_input":
        # A stride-0 input whose output cannot be allocated, with (mostly) one bad argument that the
        # checks must report before anything is allocated.
        s["op"] = d.choice([m + "_layer" for m in MODES] + MODES + [m + "_cell" for m in MODES])
        s["steps"] = d.choice([2 ** 31, 2 ** 33, 2 ** 40])
        s["wide"] = d.bool()  # the huge size is the batch instead of the steps
        s["H"] = d.choice([1, 4])
        s["fault"] = d.choice(["hx.shape", "weight_hh.dtype", "bias_ih.size", "weight_ih.rows", None])
        s["expect"] = {"hx.shape": ["hx", "hidden"], "weight_hh.dtype": ["weight_hh", "params"],
                       "bias_ih.size": ["bias_ih", "params"], "weight_ih.rows": ["weight_ih", "params"],
                       None: ["input"]}[s["fault"]]
        s["alloc_ok"] = s["fault"] is None
    elif variant == "empty_long":
        # Zero elements but a huge other size: returns empty results at once (or names the argument).
        s["op"] = d.choice([m + "_layer" for m in MODES] + ["selective_scan", "wkv4"])
        s["size"] = d.choice([2 ** 60, 2 ** 40, 2 ** 50])  # (.., 3, size) outputs have strides < 2^63
        s["where"] = d.choice(["T", "I"]) if s["op"].endswith("_layer") else d.choice(["L", "dim"])
        s["expect"] = ["input", "u", "k", "weight_ih", "A", "delta"]
        s["may_return"] = True
        s["alloc_ok"] = True  # e.g. a stride-0 weight copied: a clean RuntimeError; a hang is the failure
    elif variant == "scan_huge":
        s["op"] = d.choice(["selective_scan", "wkv4"])
        s["dims"] = d.choice([[2 ** 31, 2 ** 31, 1], [1, 2 ** 31, 2 ** 31], [2 ** 20, 2 ** 20, 2 ** 20],
                              [2 ** 40, 1, 1], [1, 1, 2 ** 40]])
        s["N"] = d.choice([1, 16])
        s["fault"] = d.choice([None, "last.dtype"])
        s["expect"] = ["u", "k", "delta", "A", "B", "C", "v", "time_decay", "time_first", "D", "state",
                       "initial_state"] if s["fault"] is None else (["D"] if s["op"] == "selective_scan"
                                                                   else ["state"])
        s["alloc_ok"] = s["fault"] is None
    return s


GENERATORS = {
    "layer": (gen_layer, ["lstm_layer", "gru_layer", "rnn_tanh_layer", "rnn_relu_layer"]),
    "stack": (gen_stack, ["lstm", "gru", "rnn_tanh", "rnn_relu"]),
    "cell": (gen_cell, ["lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"]),
    "scan": (gen_scan, ["selective_scan", "wkv4", "gated_delta_rule"]),
    "rnn_module": (gen_rnn_module, ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]),
    "cell_module": (gen_cell_module, ["LSTMCell", "GRUCell", "RNNCell_TANH", "RNNCell_RELU"]),
    "seq_module": (gen_seq_module, ["MambaMixer", "RWKV4TimeMix"]),
    "huge": (gen_huge, ["num_layers", "batch_sizes", "long_input", "empty_long", "scan_huge"]),
}


def generate(family, variant, aspect, d):
    return GENERATORS[family][0](d, variant, aspect)


# ----------------------------------------------------------------------------------------------------
# Execution (in the worker): everything below needs torch.

_torch = None


def _import_torch():
    global _torch, torch, nn, F, torch_rnn_ext, OPS
    if _torch is None:
        import torch as _t
        import torch.nn.functional as _F
        from torch import nn as _nn
        import torch_rnn_ext as _ext
        torch, nn, F, torch_rnn_ext = _t, _nn, _F, _ext
        OPS = torch.ops.torch_rnn_ext
        _torch = _t
    return _torch


class Fail(Exception):
    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def _dtype(name):
    return {"float32": torch.float32, "float64": torch.float64}[name]


TOL = {"float64": (1e-9, 1e-9), "float32": (2e-4, 2e-4)}     # (rtol, atol) against float64
GRAD_TOL = {"float64": (1e-7, 1e-8), "float32": (2e-3, 1e-3)}


def layout_strides(shape, layout):
    """(strides, storage_offset, storage size) of a view of the layout over a 1-D storage."""
    n = len(shape)

    def contiguous(sh):
        st, acc = [0] * len(sh), 1
        for i in range(len(sh) - 1, -1, -1):
            st[i] = acc
            acc *= max(sh[i], 1)
        return st

    offset = 0
    if layout == "transposed" and n >= 2:
        strides, acc = [0] * n, 1
        for i in range(n):
            strides[i] = acc
            acc *= max(shape[i], 1)
    elif layout == "strided" and n >= 1:
        strides = contiguous(list(shape[:-1]) + [2 * shape[-1]])
        strides[-1] = 2
    elif layout == "offset":
        strides, offset = contiguous(shape), 3
    elif layout == "expanded" and n >= 1:
        big = [i for i in range(n) if shape[i] > 1]
        k = big[0] if big else 0
        strides = contiguous([1 if i == k else s for i, s in enumerate(shape)])
        strides[k] = 0
    elif layout == "overlapping" and n >= 2 and shape[-1] > 1 and any(s > 1 for s in shape[:-1]):
        strides = contiguous(shape)
        k = [i for i in range(n - 1) if shape[i] > 1][0]
        strides[k] = 1
    else:
        strides = contiguous(shape)
    size = 0 if any(s == 0 for s in shape) else 1 + sum((s - 1) * st for s, st in zip(shape, strides))
    return strides, offset, offset + size


MULTI = ("params", "hx")


class Maker:
    """Builds the tensors of a spec: values from the spec's seed, in the spec's layouts, with its NaN/Inf."""

    def __init__(self, spec):
        self.spec = spec
        self.gen = torch.Generator().manual_seed(spec["seed"])
        self.dtype = _dtype(spec["dtype"])
        self.grad = spec.get("grad", False)
        self.layouts = spec.get("layouts", {})
        self.specials = spec.get("specials", [])
        self.calls = {}

    def __call__(self, name, shape, dist="normal", scale=0.5, layout=None, grad=None, dtype=None):
        shape = [int(s) for s in shape]
        layout = layout or self.layouts.get(name, "contiguous")
        strides, offset, size = layout_strides(shape, layout)
        raw = torch.randn(size, generator=self.gen, dtype=torch.float64)
        if dist == "normal":
            base = raw * scale
        elif dist == "uniform":  # in [-scale, scale]
            base = (torch.rand(size, generator=self.gen, dtype=torch.float64) * 2 - 1) * scale
        elif dist == "positive":
            base = torch.rand(size, generator=self.gen, dtype=torch.float64) * scale + 0.05
        elif dist == "negative":
            base = -(torch.rand(size, generator=self.gen, dtype=torch.float64) * scale + 0.05)
        else:
            raise ValueError(dist)
        base = base.to(dtype or self.dtype)
        t = base.as_strided(shape, strides, offset)
        numel = t.numel()
        call = self.calls[name] = self.calls.get(name, -1) + 1
        for sp_name, kind, pos in self.specials:
            # A name given to several tensors (a stack's params, h_0 and c_0) gets its NaN/Inf in one of them.
            if sp_name != name or numel == 0 or call != (pos % 5 if name in MULTI else 0):
                continue
            idx, flat = [], pos % numel
            for s in reversed(shape):
                idx.append(flat % s)
                flat //= s
            idx.reverse()
            base[offset + sum(i * st for i, st in zip(idx, strides))] = float(kind)
        if grad if grad is not None else self.grad:
            t.requires_grad_()
        return t


def ref_copy(t, dtype=None):
    """A contiguous float64 (or dtype) copy with the same requires_grad, for the reference."""
    if t is None:
        return None
    c = t.detach().to(dtype or torch.float64).contiguous()
    return c.requires_grad_(t.requires_grad)


def message_names(msg, names):
    """Whether the error message names one of the arguments (as a whole word)."""
    msg = msg.replace("(the dtype of input)", "")
    for n in names:
        if re.search(r"(?<![A-Za-z0-9_])" + re.escape(n) + r"(?![A-Za-z0-9_])", msg) or \
                (n.endswith("]") and n in msg):
            return True
    return False


def first_line(e, n=300):
    m = str(e).strip().split("\n")[0]
    return f"{type(e).__name__}: {m[:n]}"


def check_error(e, names, need_meta=False):
    if not isinstance(e, ALLOWED_ERRORS):
        raise Fail("error-type", f"{first_line(e)} (expected one of RuntimeError/ValueError/TypeError/"
                                 f"IndexError naming {names})")
    msg = str(e)
    if not message_names(msg, names):
        raise Fail("error-message", f"{first_line(e, 600)} (does not name any of {names})")
    if need_meta and "meta" not in msg:
        raise Fail("error-message", f"{first_line(e, 600)} (a meta tensor among CPU ones, not said)")


def assert_close(name, got, want, dtype, tol=None, check_dtype=True):
    if (got is None) != (want is None):
        raise Fail("mismatch", f"{name}: got {'None' if got is None else 'a tensor'}, reference "
                               f"{'None' if want is None else 'a tensor'}")
    if got is None:
        return
    if tuple(got.shape) != tuple(want.shape):
        raise Fail("shape", f"{name}: shape {tuple(got.shape)}, reference {tuple(want.shape)}")
    if check_dtype and got.dtype != _dtype(dtype):
        raise Fail("dtype", f"{name}: dtype {got.dtype}, expected {dtype}")
    rtol, atol = tol or TOL[dtype]
    # The reference rounded to the result's dtype first: a float64 value beyond float32's range is the
    # inf that any float32 computation of it gives.
    g, w = got.detach().double(), want.detach().to(got.dtype if got.is_floating_point() else want.dtype).double()
    if got.dtype == torch.float32:
        # float32 may overflow in an intermediate step where the float64 reference ends just inside float32's
        # range: an infinity of the right sign where the reference is within 1/300 of float32's largest value
        near = torch.isinf(g) & (w.abs() > 1e36) & (torch.sign(g) == torch.sign(w))
        w = torch.where(near, g, w)
    try:
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as e:
        nan_g, nan_w = torch.isnan(g), torch.isnan(w)
        inf_g, inf_w = torch.isinf(g), torch.isinf(w)
        extra = ""
        if not torch.equal(nan_g, nan_w):
            extra += f" NaN at {int(nan_g.sum())} places, reference at {int(nan_w.sum())};"
            where = (nan_g != nan_w).nonzero()[:1].tolist()
            if where:
                i = tuple(where[0])
                extra += f" e.g. {list(i)}: got {g[i].item()}, reference {w[i].item()};"
        if not torch.equal(inf_g, inf_w):
            extra += f" Inf at {int(inf_g.sum())} places, reference at {int(inf_w.sum())};"
        detail = " ".join(str(e).split("\n")[:4])
        raise Fail("mismatch", f"{name}:{extra} {detail[:500]}")


def compare_results(names, got, want, dtype, tol=None):
    for n, a, b in zip(names, got, want):
        assert_close(n, a, b, dtype, tol)


def loss_weights(outputs, seed):
    g = torch.Generator().manual_seed(seed + 1)
    return [None if o is None else torch.randn(tuple(o.shape), generator=g, dtype=torch.float64)
            for o in outputs]


def weighted_loss(outputs, ws):
    total = None
    for o, w in zip(outputs, ws):
        if o is None or o.numel() == 0 and not o.requires_grad:
            continue
        term = (o * w.to(o.dtype)).sum()
        total = term if total is None else total + term
    return total


def grads(outputs, leaves, ws):
    loss = weighted_loss(outputs, ws)
    if loss is None or not loss.requires_grad:
        return None
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def compare_grads(spec, ours_out, ref_out, leaves, ref_leaves, names, dtype):
    """Gradients of one random weighting of all outputs, ours against the reference's."""
    if not leaves:
        return
    ws = loss_weights(ref_out, spec["seed"])
    try:
        g_ours = grads(ours_out, leaves, ws)
    except Exception as e:  # noqa: BLE001
        raise Fail("backward", first_line(e, 600))
    g_ref = grads(ref_out, ref_leaves, ws)
    if g_ref is None:
        return
    if g_ours is None:
        raise Fail("backward", "ours is not connected to the autograd graph; the reference is")
    for n, a, b, leaf in zip(names, g_ours, g_ref, leaves):
        if b is None:
            b = torch.zeros(leaf.shape, dtype=torch.float64)
        if a is None:
            a = torch.zeros(leaf.shape, dtype=leaf.dtype)
        if spec.get("specials") and a.shape == b.shape:
            # With NaN/Inf in the inputs a gradient's NaN and Inf placement depends on how each formula is
            # factored (0 * Inf = NaN in autograd's chain or in an analytic backward, a product skipped for a
            # zero initial state): gradients are compared where both are finite. Forward results are
            # compared exactly.
            finite = torch.isfinite(b) & torch.isfinite(a.detach().double())
            a, b = a.detach().double()[finite], b[finite]
        assert_close("grad " + n, a, b, dtype, GRAD_TOL[dtype], check_dtype=not spec.get("specials"))


# --- bad-argument machinery -------------------------------------------------------------------------

def _other_dtype(t):
    return t.detach().to(torch.float32 if t.dtype == torch.float64 else torch.float64)


def _resize(t, dim, delta):
    shape = list(t.shape)
    shape[dim] = max(shape[dim] + delta, 0) if shape[dim] + delta >= 0 else shape[dim] + 1
    if shape[dim] == t.shape[dim]:
        shape[dim] += 1
    return torch.zeros(shape, dtype=t.dtype)


def _wrong_type(kind):
    return ["not", "a", "tensor"] if kind == "list" else "tensor"


def apply_tensor_fault(args, arg, kind, r, maker_shape=None):
    """Replaces args[arg] according to `kind` (shape, dtype, dim, size, ...)."""
    t = args.get(arg)
    if t is None:  # an absent optional made present, wrongly sized
        t = torch.zeros(maker_shape or [1], dtype=args["__dtype"])
    t = t.detach()
    if kind in ("dtype",):
        args[arg] = _other_dtype(t)
    elif kind in ("int",):
        args[arg] = t.to(torch.int32)
    elif kind == "dim":
        args[arg] = t.unsqueeze(0) if t.dim() <= 1 or r % 2 else t[0] if t.shape[0] > 0 else t.sum(0)
    elif kind in ("shape", "size", "rows"):
        args[arg] = _resize(t, (r % t.dim()) if kind != "rows" else 0, 1 if r % 3 else -1) if t.dim() else \
            torch.zeros(2, dtype=t.dtype)
    elif kind == "cols":
        args[arg] = _resize(t, 1, 1)
    elif kind == "meta":
        args[arg] = t.to("meta")
    else:
        raise ValueError(kind)


def call_checked(spec, fn):
    """Runs fn; an exception is the verdict when the spec expects one, else a failure."""
    expect = spec.get("expect")
    fault = spec.get("fault") or {}
    try:
        out = fn()
    except Fail:
        raise
    except Exception as e:  # noqa: BLE001
        if expect:
            check_error(e, expect, need_meta="meta" in str(fault.get("kind", "")) and not spec.get("expect_size")
                        and spec.get("T", 1) != 0)
            return None
        raise Fail("raised", first_line(e, 600))
    if expect:
        raise Fail("accepted", f"returned normally, but the call has a bad argument (expected an error naming "
                               f"one of {expect}; fault {fault.get('kind')} on {fault.get('arg')})")
    return out


# --- recurrent layers -------------------------------------------------------------------------------

def _flat_params(mode, w_ih, w_hh, b_ih, b_hh, w_hr):
    GH = w_ih.shape[0]
    b_ih = b_ih if b_ih is not None else torch.zeros(GH, dtype=torch.float64)
    b_hh = b_hh if b_hh is not None else torch.zeros(GH, dtype=torch.float64)
    return [w_ih, w_hh, b_ih, b_hh] + ([w_hr] if w_hr is not None else [])


def aten_stack(mode, x, hx, cx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
               batch_sizes):
    """torch.nn's computation: the ATen functional its modules call."""
    try:
        return _aten_stack(mode, x, hx, cx, params, has_biases, num_layers, dropout, train, bidirectional,
                           batch_first, batch_sizes)
    except RuntimeError as e:
        if "primitive descriptor" not in str(e):
            raise
        # oneDNN's LSTM (float32, torch 2.x) has no hidden size 0: ATen's own loop then.
        with torch.backends.mkldnn.flags(enabled=False):
            return _aten_stack(mode, x, hx, cx, params, has_biases, num_layers, dropout, train, bidirectional,
                               batch_first, batch_sizes)


def _aten_stack(mode, x, hx, cx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                batch_sizes):
    fn = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}[mode]
    if mode == "lstm":
        h = [hx, cx]
        if batch_sizes is not None:
            return fn(x, batch_sizes, h, params, has_biases, num_layers, dropout, train, bidirectional)
        return fn(x, h, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    if batch_sizes is not None:
        return fn(x, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)
    return fn(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


def reversed_rows(batch_sizes):
    """The permutation (an involution) of packed rows that reverses every sequence within its length."""
    bsz = batch_sizes.tolist()
    offsets = [sum(bsz[:t]) for t in range(len(bsz))]
    lengths = [sum(1 for n in bsz if n > b) for b in range(bsz[0])] if bsz else []
    perm = [0] * sum(bsz)
    for t, n in enumerate(bsz):
        for b in range(n):
            perm[offsets[t] + b] = offsets[lengths[b] - 1 - t] + b
    return torch.tensor(perm, dtype=torch.long)


def layer_reference(mode, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, B, H, P):
    """One layer through torch.nn's functional in float64; the reverse direction as the forward one over
    each sequence reversed (torch.nn's reverse direction of a bidirectional layer computes exactly that)."""
    packed = batch_sizes is not None
    hx = hx if hx is not None else torch.zeros(B, P, dtype=torch.float64)
    cx = cx if cx is not None else torch.zeros(B, H, dtype=torch.float64)
    params = _flat_params(mode, w_ih, w_hh, b_ih, b_hh, w_hr)
    if reverse:
        if packed:
            perm = reversed_rows(batch_sizes)
            flip = lambda t: t[perm]  # noqa: E731
        else:
            flip = lambda t: t.flip(0)  # noqa: E731
        x = flip(x)
    out = aten_stack(mode, x, hx.unsqueeze(0), cx.unsqueeze(0), params, True, 1, 0.0, False, False, False,
                     batch_sizes if packed else None)
    output, h = out[0], out[1]
    c = out[2] if mode == "lstm" else None
    if reverse:
        output = flip(output)
    return output, h[0], (c[0] if c is not None else None)


def run_layer(s):
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    mode, G = s["mode"], GATES[s["mode"]]
    T, B, I, H = s["T"], s["B"], s["I"], s["H"]
    P = s["P"] or H
    packed = s["lengths"] is not None
    bsz_list = batch_sizes_of(s["lengths"]) if packed and s["lengths"] else []
    N = sum(bsz_list) if packed else T * B
    if packed:
        B = bsz_list[0] if bsz_list else 0
    shapes = {"input": (N, I) if packed else (T, B, I), "hx": (B, P), "cx": (B, H), "weight_ih": (G * H, I),
              "weight_hh": (G * H, P), "bias_ih": (G * H,), "bias_hh": (G * H,), "weight_hr": (P, H)}
    a = {"__dtype": dtype}
    for n in ["input", "weight_ih", "weight_hh"] + s["present"] + (["weight_hr"] if s["P"] else []):
        a[n] = mk(n, shapes[n])
    a["batch_sizes"] = torch.tensor(bsz_list, dtype=torch.long) if packed else None
    a["reverse"] = s["reverse"]
    originals = {k: v for k, v in a.items() if isinstance(v, torch.Tensor)}
    f = s.get("fault")
    if f:
        _apply_layer_fault(a, f, shapes, packed)
    order = ["input", "hx", "cx", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "batch_sizes", "reverse",
             "weight_hr"]
    if mode != "lstm":
        order = [n for n in order if n not in ("cx", "weight_hr")]
    op = getattr(torch_rnn_ext.functional if s["entry"] == "functional" else OPS, s["variant"])
    out = call_checked(s, lambda: op(*[a.get(n) for n in order]))
    if out is None:
        return
    out = list(out) + ([None] if mode != "lstm" else [])
    r = {k: ref_copy(v) for k, v in originals.items() if k != "batch_sizes"}
    want = layer_reference(mode, r["input"], r.get("hx"), r.get("cx"), r["weight_ih"], r["weight_hh"],
                           r.get("bias_ih"), r.get("bias_hh"), r.get("weight_hr"), a["batch_sizes"], s["reverse"],
                           B, H, P)
    compare_results(["output", "h_n", "c_n"], out, want, s["dtype"])
    if s["grad"]:
        names = [k for k in originals if k != "batch_sizes"]
        compare_grads(s, out, want, [originals[k] for k in names], [r[k] for k in names], names, s["dtype"])


def _apply_layer_fault(a, f, shapes, packed):
    kind, r = f["kind"], f["r"]
    arg, sub = (kind.split(".") + [""])[:2]
    if kind == "input.int":
        a["input"] = a["input"].detach().to(torch.int32)
    elif kind == "input.dim":
        x = a["input"].detach()
        a["input"] = x.unsqueeze(0) if packed or r % 2 else (x[0] if x.shape[0] else x.sum(0))
    elif kind == "input.size":
        x = a["input"].detach()
        a["input"] = torch.zeros(list(x.shape[:-1]) + [x.shape[-1] + 1], dtype=x.dtype)
    elif kind == "weight_hr.square":
        H = shapes["weight_hr"][1]
        a["weight_hh"] = torch.zeros(shapes["weight_hh"][0], H, dtype=a["__dtype"])
        a["weight_hr"] = torch.zeros(H, H, dtype=a["__dtype"])
    elif kind == "meta":
        a[f["arg"]] = a[f["arg"]].detach().to("meta")
    elif kind.startswith("type."):
        a[f["arg"]] = _wrong_type(sub)
    elif kind == "required.none":
        a[f["arg"]] = None
    elif kind == "reverse.type":
        a["reverse"] = "yes"
    elif arg == "batch_sizes":
        b = a["batch_sizes"]
        if sub == "int32":
            a["batch_sizes"] = b.int()
        elif sub == "float":
            a["batch_sizes"] = b.double()
        elif sub == "dim2":
            a["batch_sizes"] = b.unsqueeze(0)
        elif sub == "dim0":
            a["batch_sizes"] = b.sum()
        elif sub == "zero":
            a["batch_sizes"] = torch.cat([b, torch.zeros(1, dtype=torch.long)])
        elif sub == "negative":
            a["batch_sizes"] = torch.cat([b, torch.tensor([-1, 1])])
        elif sub == "sum":
            x = a["input"].detach()
            a["input"] = x[:-1] if x.shape[0] else torch.zeros(1, x.shape[1], dtype=x.dtype)
        elif sub == "increasing":
            a["batch_sizes"] = torch.cat([b, b[-1:] + 1])
        elif sub == "empty":
            a["batch_sizes"] = torch.zeros(0, dtype=torch.long)
        elif sub == "meta":
            a["batch_sizes"] = b.to("meta")
    else:
        apply_tensor_fault(a, arg, sub, r, shapes.get(arg))


# --- stacks -----------------------------------------------------------------------------------------

def stack_params(mk, mode, L, D, I, H, P, bias):
    G, out, names = GATES[mode], [], []
    for layer in range(L):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            width = I if layer == 0 else (P or H) * D
            shapes = [("weight_ih", (G * H, width)), ("weight_hh", (G * H, P or H))]
            if bias:
                shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
            if P:
                shapes.append(("weight_hr", (P, H)))
            for n, sh in shapes:
                out.append(mk("params", sh))
                names.append(n + sfx)
    return out, names


def run_stack(s):
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    mode, L = s["mode"], s["L"]
    D = 2 if s["bidirectional"] else 1
    T, B, I, H, P = s["T"], s["B"], s["I"], s["H"], s["P"]
    packed = s["lengths"] is not None
    kind = s["input_kind"]
    bsz_list = batch_sizes_of(s["lengths"]) if packed and s["lengths"] else []
    if packed:
        B = bsz_list[0] if bsz_list else 0
    shape = {"padded": (T, B, I), "batch_first": (B, T, I), "unbatched": (T, I),
             "packed": (sum(bsz_list), I)}[kind]
    x = mk("input", shape)
    lead = (L * D,) if kind == "unbatched" else (L * D, B)
    h0 = mk("hx", lead + (P or H,)) if s["hx"] else None
    c0 = mk("hx", lead + (H,)) if s["hx"] and mode == "lstm" else None
    params, pnames = stack_params(mk, mode, L, D, I, H, P, s["bias"])
    bsz = torch.tensor(bsz_list, dtype=torch.long) if packed else None
    a = dict(input=x, hx=([h0, c0] if h0 is not None else []) if mode == "lstm" else h0, params=list(params),
             has_biases=s["bias"], num_layers=L, dropout=s["dropout"], train=s["train"],
             bidirectional=s["bidirectional"], batch_first=s["batch_first"], batch_sizes=bsz)
    if s.get("fault"):
        _apply_stack_fault(a, s, dtype)
    op = getattr(torch_rnn_ext.functional if s["entry"] == "functional" else OPS, mode)
    order = ["input", "hx", "params", "has_biases", "num_layers", "dropout", "train", "bidirectional",
             "batch_first", "batch_sizes"]
    dropout = s["dropout"] > 0 and s["train"]
    torch.manual_seed(s["seed"])
    out = call_checked(s, lambda: op(*[a[n] for n in order]))
    if out is None:
        return
    out = list(out) + ([None] if mode != "lstm" else [])
    # The reference: float64, or ours's dtype when dropout draws masks (the same draws only then).
    rdt = dtype if dropout else torch.float64
    rx, rh, rc = ref_copy(x, rdt), ref_copy(h0, rdt), ref_copy(c0, rdt)
    rparams = [ref_copy(p, rdt) for p in params]
    if rx.dim() == 2 and not packed:
        rx1 = rx.unsqueeze(1)
        rh1 = rh.unsqueeze(1) if rh is not None else None
        rc1 = rc.unsqueeze(1) if rc is not None else None
    else:
        rx1, rh1, rc1 = rx, rh, rc
    Bref = 1 if kind == "unbatched" else B
    if rh1 is None:
        rh1 = torch.zeros(L * D, Bref, P or H, dtype=rdt)
        rc1 = torch.zeros(L * D, Bref, H, dtype=rdt)
    torch.manual_seed(s["seed"])
    want = list(aten_stack(mode, rx1, rh1, rc1, rparams, s["bias"], L, s["dropout"], s["train"],
                           s["bidirectional"], s["batch_first"] and not packed, bsz))
    if kind == "unbatched":
        want = [w.squeeze(1) for w in want]
    want += [None] if mode != "lstm" else []
    tol = {"float64": (1e-12, 1e-12), "float32": (1e-5, 1e-5)}[s["dtype"]] if dropout else None
    compare_results(["output", "h_n", "c_n"], out, want, s["dtype"], tol)
    if s["grad"]:
        leaves = [x] + ([h0] if h0 is not None else []) + ([c0] if c0 is not None else []) + list(params)
        rleaves = [rx] + ([rh] if rh is not None else []) + ([rc] if rc is not None else []) + rparams
        names = ["input"] + (["h_0"] if h0 is not None else []) + (["c_0"] if c0 is not None else []) + pnames
        compare_grads(s, out, want, leaves, rleaves, names, s["dtype"])


def _apply_stack_fault(a, s, dtype):
    f = s["fault"]
    kind, r = f["kind"], f["r"]
    arg, sub = kind.split(".")
    p = a["params"]
    if kind == "num_layers.zero":
        a["num_layers"] = 0
    elif kind == "num_layers.negative":
        a["num_layers"] = -1 - r % 3
    elif kind == "num_layers.more":
        a["num_layers"] = s["L"] + 1
    elif arg == "dropout":
        a["dropout"] = {"negative": -0.25, "big": 1.5, "nan": float("nan")}[sub]
    elif kind == "params.drop":
        a["params"] = p[:-1]
    elif kind == "params.extra":
        a["params"] = p + [p[-1].detach().clone()]
    elif kind in ("params.shape", "params.dtype", "params.dim"):
        i = r % len(p)
        t = p[i].detach()
        a["params"] = list(p)
        if sub == "shape":
            a["params"][i] = _resize(t, r % t.dim(), 1)
        elif sub == "dtype":
            a["params"][i] = _other_dtype(t)
        else:
            a["params"][i] = t.unsqueeze(0)
    elif kind == "input.dim1":
        a["input"] = torch.zeros(3, dtype=dtype)
    elif kind == "input.dim4":
        x = a["input"].detach()
        a["input"] = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))
    elif kind == "input.int":
        a["input"] = a["input"].detach().to(torch.int64)
    elif arg == "hx":
        L, D, B = s["L"], 2 if s["bidirectional"] else 1, s["B"]
        if s["lengths"] is not None:
            B = len(s["lengths"])
        lead = [L * D] + ([] if s["input_kind"] == "unbatched" else [B])
        P, H = s["P"] or s["H"], s["H"]
        h = a["hx"][0] if s["mode"] == "lstm" and a["hx"] else a["hx"] if s["mode"] != "lstm" else None
        h = h.detach() if h is not None else torch.zeros(lead + [P], dtype=dtype)
        c = a["hx"][1].detach() if s["mode"] == "lstm" and a["hx"] else torch.zeros(lead + [H], dtype=dtype)
        if sub == "shape":
            which = r % 2 if s["mode"] == "lstm" else 0
            bad = _resize(h if which == 0 else c, r % h.dim(), 1)
            h, c = (bad, c) if which == 0 else (h, bad)
        elif sub == "dim":
            h, c = h.unsqueeze(0), c.unsqueeze(0)
        elif sub == "dtype":
            h, c = _other_dtype(h), _other_dtype(c)
        if s["mode"] == "lstm":
            a["hx"] = {"one": [h], "three": [h, c, c]}.get(sub, [h, c])
        else:
            a["hx"] = h
    elif kind == "has_biases.flip":
        a["has_biases"] = not a["has_biases"]
    elif arg == "type":
        a[sub] = {"hx": (torch.zeros(1) if s["mode"] == "lstm" else [torch.zeros(1)]),
                  "params": torch.zeros(2), "num_layers": "two", "dropout": "half"}[sub]
    elif arg == "batch_sizes":
        b = a["batch_sizes"]
        if sub == "int32":
            a["batch_sizes"] = b.int()
        elif sub == "dim2":
            a["batch_sizes"] = b.unsqueeze(0)
        elif sub == "empty":
            a["batch_sizes"] = torch.zeros(0, dtype=torch.long)
        elif sub == "zero":
            a["batch_sizes"] = torch.cat([b, torch.zeros(1, dtype=torch.long)])
        elif sub == "sum":
            x = a["input"].detach()
            a["input"] = x[:-1] if x.shape[0] else torch.zeros(1, x.shape[1], dtype=x.dtype)


# --- cells ------------------------------------------------------------------------------------------

def run_cell(s):
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    mode, G = s["mode"], GATES[s["mode"]]
    B, I, H = s["B"], s["I"], s["H"]
    shapes = {"input": (B, I), "hx": (B, H), "cx": (B, H), "weight_ih": (G * H, I), "weight_hh": (G * H, H),
              "bias_ih": (G * H,), "bias_hh": (G * H,)}
    a = {"__dtype": dtype}
    for n in ["input", "weight_ih", "weight_hh"] + s["present"]:
        a[n] = mk(n, shapes[n])
    originals = {k: v for k, v in a.items() if isinstance(v, torch.Tensor)}
    f = s.get("fault")
    if f:
        arg, sub = f["kind"].split(".")
        if arg == "type":
            a[sub] = ["not", "a", "tensor"]
        elif f["kind"] == "input.dim1":
            a["input"] = a["input"].detach()[0] if B else torch.zeros(I, dtype=dtype)
        elif f["kind"] == "input.dim3":
            a["input"] = a["input"].detach().unsqueeze(0)
        elif f["kind"] == "input.size":
            a["input"] = torch.zeros(B, I + 1, dtype=dtype)
        else:
            apply_tensor_fault(a, arg, sub, f["r"], shapes.get(arg))
    order = ["input", "hx", "cx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    if mode != "lstm":
        order.remove("cx")
    op = getattr(OPS, s["variant"])
    out = call_checked(s, lambda: op(*[a.get(n) for n in order]))
    if out is None:
        return
    out = list(out) if mode == "lstm" else [out]
    r = {k: ref_copy(v) for k, v in originals.items()}
    z = torch.zeros(B, H, dtype=torch.float64)
    hx, cx = r.get("hx", z), r.get("cx", z)
    ref_args = (r["weight_ih"], r["weight_hh"], r.get("bias_ih"), r.get("bias_hh"))
    if mode == "lstm":
        want = list(torch.lstm_cell(r["input"], (hx, cx), *ref_args))
    else:
        want = [getattr(torch, s["variant"])(r["input"], hx, *ref_args)]
    compare_results(["h", "c"], out, want, s["dtype"])
    if s["grad"]:
        names = list(originals)
        compare_grads(s, out, want, [originals[k] for k in names], [r[k] for k in names], names, s["dtype"])


# --- scans ------------------------------------------------------------------------------------------

def _refs():
    sys.path.insert(0, HERE)
    import test_gated_delta_rule
    import test_selective_scan
    import test_wkv4
    return test_selective_scan, test_wkv4, test_gated_delta_rule


def _times(n, w):
    """n * w with 0 * w = 0: an exponent of no decay steps is 0 whatever w (even NaN or -Inf)."""
    return torch.where(n == 0, torch.zeros_like(n * w), n * w)


def _wkv_reference(time_decay, time_first, k, v, state=None):
    """test_wkv4's float64 reference (the softmax-weighted average over tokens i <= t and the carried
    state), with the decay of zero steps read as e^0 = 1 for any w."""
    w = -torch.exp(time_decay.double())
    u, k, v = time_first.double(), k.double(), v.double()
    batch, T, C = k.shape
    if state is not None:
        aa, bb, pp = state.double().unbind(1)
    ys = []
    for t in range(T + 1):  # the last round gives the state after step T-1
        i = torch.arange(t, dtype=torch.float64)[None, :, None]
        logw, vals = [_times(t - 1 - i, w) + k[:, :t]], [v[:, :t]]
        if t < T:
            logw.append((u + k[:, t])[:, None])
            vals.append(v[:, t:t + 1])
        if state is not None:
            logw.append((pp + _times(torch.tensor(float(t if t < T else T)), w) + torch.log(bb))[:, None])
            vals.append((aa / bb)[:, None])
        logw, vals = torch.cat(logw, 1), torch.cat(vals, 1)
        mean = (torch.softmax(logw, dim=1) * vals).sum(1)
        if t < T:
            ys.append(mean)
    return torch.stack(ys, 1), mean, torch.logsumexp(logw, 1)


def run_scan(s):
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    a = {"__dtype": dtype}
    f = s.get("fault")
    if s["variant"] == "selective_scan":
        b, dim, L, N = s["batch"], s["dim"], s["L"], s["N"]
        soft = s["softplus"]
        a["u"] = mk("u", (b, dim, L), scale=1.0)
        a["delta"] = mk("delta", (b, dim, L), "normal" if soft else "positive", scale=0.5)
        a["A"] = mk("A", (dim, N), "negative", scale=2.0)
        for op in ("B", "C"):
            shape = {"constant": (dim, N), "varying": (b, N, L), "grouped": (b, s[op + "_G"], N, L)}[s[op + "_kind"]]
            a[op] = mk(op, shape, scale=1.0)
        shapes = {"D": (dim,), "z": (b, dim, L), "delta_bias": (dim,), "initial_state": (b, dim, N)}
        for n in s["present"]:
            # without softplus, dt = delta + delta_bias must stay >= 0 (else exp(dt A) grows and the
            # state leaves float32's range, where float32 and the float64 reference part ways)
            kind = "positive" if n == "delta_bias" and not soft else "normal"
            a[n] = mk(n, shapes[n], kind, scale=0.5 if n == "delta_bias" else 1.0)
        order = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    elif s["variant"] == "gated_delta_rule":
        b, T, H, K, V = s["batch"], s["T"], s["H"], s["K"], s["V"]
        HV = H * s["G"]
        a["q"] = mk("q", (b, T, H, K), scale=1.0)
        # |k| < 1 without the L2 norm, beta in (0, 1): the delta rule's transition stays a contraction
        a["k"] = mk("k", (b, T, H, K), scale=1.0 if s["l2norm"] else 0.5 / K ** 0.5)
        a["v"] = mk("v", (b, T, HV, V), scale=1.0)
        a["beta"] = mk("beta", (b, T, HV), "positive", scale=0.9)
        if s["gate"]:
            a["g"] = mk("g", (b, T, HV, K) if s["gate"] == "per_key" else (b, T, HV), "negative", scale=1.0)
        N = len(s["cu"]) - 1 if s["cu"] else b
        if s["present"]:
            a["initial_state"] = mk("initial_state", (N, HV, K, V), scale=0.5)
        a["cu_seqlens"] = torch.tensor(s["cu"], dtype=torch.long) if s["cu"] else None
        order = ["q", "k", "v", "g", "beta", "initial_state"]
    else:
        b, T, C = s["batch"], s["T"], s["C"]
        a["time_decay"] = mk("time_decay", (C,), scale=1.0)
        a["time_first"] = mk("time_first", (C,), scale=1.0)
        a["k"] = mk("k", (b, T, C), "uniform", scale=s["k_scale"])
        a["v"] = mk("v", (b, T, C), scale=1.0)
        if s["present"]:
            aa = mk("state", (b, 1, C), scale=1.0, layout="contiguous", grad=False)
            bb = mk("state", (b, 1, C), "positive", scale=1.0, layout="contiguous", grad=False)
            pp = mk("state", (b, 1, C), scale=3.0, layout="contiguous", grad=False)
            st = torch.cat([aa, bb, pp], 1)
            # NaN/Inf go into aa or pp only: bb > 0 in every state a call returns (log(bb) is the reference's).
            for sp_name, kind, pos in s["specials"]:
                if sp_name == "state" and st.numel():
                    st[pos % b, 2 * (pos // b % 2), pos // (2 * b) % C] = float(kind)
            lay = s["layouts"].get("state", "contiguous")
            if lay not in ("expanded", "overlapping"):  # aliasing elements would break bb > 0
                strides, off, size = layout_strides(list(st.shape), lay)
                view = torch.zeros(size, dtype=dtype).as_strided(list(st.shape), strides, off)
                view.copy_(st)
                st = view
            if s["grad"]:
                st.requires_grad_()
            a["state"] = st
        order = ["time_decay", "time_first", "k", "v", "state"]
    originals = {k: v for k, v in a.items() if isinstance(v, torch.Tensor)}
    if f:
        _apply_scan_fault(a, f, dtype)
    call = _scan_call(s, a)
    out = call_checked(s, call)
    if out is None:
        return
    out = list(out)
    r = {k: ref_copy(v) for k, v in originals.items()}
    if s["variant"] == "selective_scan":
        ref_mod = _refs()[0]
        want = list(ref_mod.reference(r["u"], r["delta"], r["A"], r["B"], r["C"], r.get("D"), r.get("z"),
                                      r.get("delta_bias"), s["softplus"], r.get("initial_state"))) \
            if s["L"] > 0 else None
        compare_results(["out", "last_state"], out, want, s["dtype"])
        names = [n for n in order + ["initial_state"] if n in originals]
        if s["grad"]:
            compare_grads(s, out, want, [originals[n] for n in names], [r[n] for n in names], names, s["dtype"])
    elif s["variant"] == "gated_delta_rule":
        ref = _refs()[2].reference
        want = list(ref(r["q"], r["k"], r["v"], r.get("g"), r["beta"], s["scale"], r.get("initial_state"),
                        s["l2norm"], a["cu_seqlens"]))
        compare_results(["o", "final_state"], out, want, s["dtype"])
        names = [n for n in order if n in originals]
        if s["grad"]:
            compare_grads(s, out, want, [originals[n] for n in names], [r[n] for n in names], names, s["dtype"])
    else:
        y, new_state = out
        ry, mean, lse = _wkv_reference(r["time_decay"], r["time_first"], r["k"], r["v"], r.get("state"))
        assert_close("y", y, ry, s["dtype"])
        if tuple(new_state.shape) != (s["batch"], 3, s["C"]):
            raise Fail("shape", f"new_state: shape {tuple(new_state.shape)}, expected {(s['batch'], 3, s['C'])}")
        aa, bb, pp = new_state.detach().double().unbind(1)
        assert_close("new_state aa/bb", aa / bb, mean, s["dtype"], check_dtype=False)
        assert_close("new_state log(bb)+pp", torch.log(bb) + pp, lse, s["dtype"], check_dtype=False)
        names = [n for n in order if n in originals]
        if s["grad"]:
            compare_grads(s, [y], [ry], [originals[n] for n in names], [r[n] for n in names], names, s["dtype"])


def _scan_call(s, a):
    if s["variant"] == "selective_scan":
        rest = (a.get("D"), a.get("z"), a.get("delta_bias"))
        soft = a.get("delta_softplus", s["softplus"])
        if s["entry"] == "ops":
            return lambda: OPS.selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], *rest, soft,
                                              a.get("initial_state"))

        def call():
            r = torch_rnn_ext.selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], *rest, soft,
                                             s["return_last_state"], a.get("initial_state"))
            if s["return_last_state"]:
                return r
            return r, _last_state_of(s, a)
        return call
    if s["variant"] == "gated_delta_rule":
        args = (a["q"], a["k"], a["v"], a.get("g"), a["beta"])
        ops_call = lambda: OPS.gated_delta_rule(*args, s["scale"], a.get("initial_state"), s["l2norm"],  # noqa: E731
                                                a.get("cu_seqlens"))
        if s["entry"] == "ops":
            return ops_call

        def call():
            o, final = torch_rnn_ext.gated_delta_rule(*args, s["scale"], a.get("initial_state"),
                                                      s["output_final_state"], s["l2norm"], a.get("cu_seqlens"))
            return (o, final) if s["output_final_state"] else (o, ops_call()[1])
        return call
    if s["entry"] == "ops":
        return lambda: OPS.wkv4(a["time_decay"], a["time_first"], a["k"], a["v"], a.get("state"))

    def call():
        r = torch_rnn_ext.wkv4(a["time_decay"], a["time_first"], a["k"], a["v"], a.get("state"), s["return_state"])
        return r if s["return_state"] else (r, OPS.wkv4(a["time_decay"], a["time_first"], a["k"], a["v"],
                                                        a.get("state"))[1])
    return call


def _last_state_of(s, a):
    return OPS.selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a.get("D"), a.get("z"),
                              a.get("delta_bias"), s["softplus"], a.get("initial_state"))[1]


def _apply_scan_fault(a, f, dtype):
    arg, kind, r = f["arg"], f["kind"], f["r"]
    if kind == "heads":  # a number of value heads that the q/k heads do not divide
        v = a["v"].detach()
        a["v"] = torch.zeros(v.shape[0], v.shape[1], v.shape[2] + 1, v.shape[3], dtype=dtype)
    elif kind == "cu":
        T = a["q"].shape[1]
        cut = int(a["cu_seqlens"][1])  # N stays 2 (the states are sized by it): only the offsets go wrong
        a["cu_seqlens"] = [torch.tensor([0, T, cut]), torch.tensor([0, cut, cut]), torch.tensor([1, cut, T]),
                           torch.tensor([0, cut, T - 1]), torch.tensor([0, cut, T], dtype=torch.int32),
                           torch.tensor([0, cut, T]).float()][r % 6]
    elif kind == "type":
        a[arg] = ["not", "a", "tensor"]
    elif kind == "none":
        a[arg] = None
    elif kind == "softplus.type":
        a["delta_softplus"] = "yes"
    elif kind == "groups" and a["u"].shape[1] > 0:  # G that does not divide dim (every G divides 0)
        dim = a["u"].shape[1]
        a[arg] = torch.zeros(a["u"].shape[0], dim + 1, a["A"].shape[1], a["u"].shape[2], dtype=dtype)
    elif kind in ("groups", "d_state"):
        a[arg] = torch.zeros(a["u"].shape[0], a["A"].shape[1] + 1, a["u"].shape[2], dtype=dtype)
    elif kind == "dim" and arg in ("B", "C"):
        # B and C take 2, 3 or 4 dimensions (a (batch, N, L) with one more leading 1 is a valid (1, G, N, L)):
        # a 1-D or 5-D one is wrong for sure
        t = a[arg].detach()
        a[arg] = t.reshape(-1) if r % 2 else t.reshape((1,) * (5 - t.dim()) + tuple(t.shape))
    else:
        apply_tensor_fault(a, arg, kind, r, [1])


# --- modules ----------------------------------------------------------------------------------------

def _rnn_pair(s, dtype):
    v = s["variant"]
    kw = dict(num_layers=s["L"], bias=s["bias"], batch_first=s["batch_first"], dropout=s["dropout"],
              bidirectional=s["bidirectional"])
    torch.manual_seed(s["seed"])
    if v == "LSTM":
        ref, ours = nn.LSTM(s["I"], s["H"], proj_size=s["P"], **kw), torch_rnn_ext.LSTM(s["I"], s["H"],
                                                                                         proj_size=s["P"], **kw)
    elif v == "GRU":
        ref, ours = nn.GRU(s["I"], s["H"], **kw), torch_rnn_ext.GRU(s["I"], s["H"], **kw)
    else:
        nl = v.split("_")[1].lower()
        ref, ours = nn.RNN(s["I"], s["H"], nonlinearity=nl, **kw), torch_rnn_ext.RNN(s["I"], s["H"],
                                                                                     nonlinearity=nl, **kw)
    ref, ours = ref.to(dtype), ours.to(dtype)
    ours.load_state_dict(ref.state_dict())
    ref.train(s["train"])
    ours.train(s["train"])
    return ref, ours


def _seeded_call(seed, fn):
    """(fn(), None) or (None, the exception it raised), torch's generator seeded first."""
    torch.manual_seed(seed)
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001
        return None, e


def _call_both(s, ref_fn, ours_fn, names):
    """Calls the torch.nn twin and ours on the same arguments: both raise (ours naming an argument, or
    with nn's own message or exception type), or both return. With a bad argument (every fault but a list
    for the tuple of states) ours may also raise, naming it, where nn returns: nn splits a Tensor hx of
    unbatched input into (h_0, c_0), drops a third state, and does not check c_0 of packed input."""
    want, ref_exc = _seeded_call(s["seed"], ref_fn)
    got, exc = _seeded_call(s["seed"], ours_fn)
    if ref_exc is not None and exc is None:
        raise Fail("accepted", f"returned normally where torch.nn raises {first_line(ref_exc)}")
    bad = s.get("fault") and s["fault"]["kind"] != "hx.list"
    if ref_exc is None and exc is not None:
        if bad and isinstance(exc, ALLOWED_ERRORS) and message_names(str(exc), names):
            return None, None
        raise Fail("raised", f"{first_line(exc, 600)}; torch.nn returns")
    if exc is not None:
        if type(exc) is type(ref_exc):
            return None, None  # nn's own exception (its AttributeError for a tuple hx of GRUCell included)
        if not isinstance(exc, ALLOWED_ERRORS):
            raise Fail("error-type", f"{first_line(exc)}; torch.nn raises {first_line(ref_exc)}")
        if not message_names(str(exc), names):
            raise Fail("error-message", f"{first_line(exc, 600)} names none of {names}; torch.nn raises "
                                        f"{first_line(ref_exc)}")
        return None, None
    return got, want


def _flat(result):
    from torch.nn.utils.rnn import PackedSequence
    out = []
    for r in (result if isinstance(result, (tuple, list)) else [result]):
        if isinstance(r, PackedSequence):
            out += [r.data]
        elif isinstance(r, (tuple, list)):
            out += list(r)
        else:
            out.append(r)
    return out


def _module_input(s, mk, dtype, kind_key="input_kind"):
    from torch.nn.utils.rnn import pack_padded_sequence
    T, B, I = s["T"], s["B"], s["I"]
    kind = s[kind_key]
    if kind == "unbatched":
        x = mk("input", (T, I), layout="contiguous")
    else:
        x = mk("input", (B, T, I) if s["batch_first"] else (T, B, I), layout="contiguous")

    def wrap(t):
        if kind.startswith("packed"):
            return pack_padded_sequence(t, s["lengths"], batch_first=s["batch_first"],
                                        enforce_sorted=kind == "packed")
        return t
    return x, wrap


def _float64_twin(pair, s, ref, x, hx):
    """The torch.nn module `ref` as float64 (made by `pair`, its weights copied), with x and hx copied to
    float64 for it."""
    ref64 = pair(s, torch.float64)[0]
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    rhx = None if hx is None else (type(hx)(ref_copy(t) for t in hx) if isinstance(hx, (tuple, list))
                                   else ref_copy(hx))
    return ref64, ref_copy(x), rhx


def run_rnn_module(s):
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    ref, ours = _rnn_pair(s, dtype)
    D = 2 if s["bidirectional"] else 1
    x, wrap = _module_input(s, mk, dtype)
    lead = (s["L"] * D,) if s["input_kind"] == "unbatched" else (s["L"] * D, s["B"])
    is_lstm = s["variant"] == "LSTM"
    hx = None
    if s["hx"] or (s["fault"] and s["fault"]["kind"].startswith("hx")):
        h = mk("hx", lead + (s["P"] or s["H"],), layout="contiguous")
        c = mk("hx", lead + (s["H"],), layout="contiguous") if is_lstm else None
        hx = (h, c) if is_lstm else h
    leaves = [x] + ([t for t in (hx if isinstance(hx, tuple) else [hx])] if hx is not None else [])
    if s["fault"]:
        x, hx = _module_fault(s, x, hx, is_lstm, dtype)
    names = ["input", "hx", "hidden", "hidden[0]", "hidden[1]", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
             "weight_hr", "params"]
    def ref_fn():
        inp = wrap(x)
        if hx is not None and not isinstance(inp, torch.Tensor):
            # torch.nn (2.15) skips its state checks for a PackedSequence and segfaults on a wrong h_0: its
            # own check first, as for padded input.
            ref.check_forward_args(inp.data, ref.permute_hidden(hx, inp.sorted_indices), inp.batch_sizes)
        return ref(inp, hx)

    got, want = _call_both(s, ref_fn, lambda: ours(wrap(x), hx), names)
    if got is None:
        return
    got, want = _flat(got), _flat(want)
    if s["dropout"] and s["train"]:
        compare_results(["output", "h_n", "c_n"], got, want, s["dtype"],
                        {"float64": (1e-12, 1e-12), "float32": (1e-5, 1e-5)}[s["dtype"]])
        return
    # Values against the float64 twin.
    ref64, rx, rhx = _float64_twin(_rnn_pair, s, ref, x, hx)
    want = _flat(ref64(wrap(rx), rhx))
    compare_results(["output", "h_n", "c_n"], got, want, s["dtype"])
    if s["grad"] and not s["fault"]:
        rleaves = [rx] + (list(rhx) if isinstance(rhx, tuple) else [rhx] if rhx is not None else [])
        pn = [n for n, _ in ours.named_parameters()]
        compare_grads(s, got, want, leaves + list(ours.parameters()), rleaves + list(ref64.parameters()),
                      ["input", "h_0", "c_0"][:len(leaves)] + pn, s["dtype"])


def _module_fault(s, x, hx, is_lstm, dtype):
    kind, r = s["fault"]["kind"], s["fault"]["r"]
    x = x.detach()
    if kind == "input.dim1":
        x = torch.zeros(x.shape[-1], dtype=dtype)
    elif kind == "input.dim0":
        x = torch.zeros((), dtype=dtype)
    elif kind in ("input.dim3", "input.dim4"):
        x = x.unsqueeze(0)
    elif kind == "input.dtype":
        x = _other_dtype(x)
    elif kind == "input.size":
        x = torch.zeros(list(x.shape[:-1]) + [x.shape[-1] + 1], dtype=dtype)
    hs = (list(hx) if isinstance(hx, tuple) else [hx]) if hx is not None else []
    hs = [h.detach() for h in hs]
    if kind == "hx.shape":
        hs[0] = _resize(hs[0], r % hs[0].dim(), 1)
    elif kind == "hx.cshape":
        hs[1] = _resize(hs[1], r % hs[1].dim(), 1)
    elif kind == "hx.dim":
        hs = [h.unsqueeze(0) for h in hs]
    elif kind == "hx.dtype":
        hs = [_other_dtype(h) for h in hs]
    if kind.startswith("hx"):
        if kind == "hx.tensor":
            hx = torch.stack([hs[0], hs[0]]) if hs[0].shape == hs[1].shape else hs[0]
        elif kind == "hx.one":
            hx = (hs[0],)
        elif kind == "hx.three":
            hx = (hs[0], hs[1], hs[1])
        elif kind == "hx.list":
            hx = list(hs) if is_lstm else [hs[0]]
        elif kind == "hx.tuple":
            hx = (hs[0],)
        else:
            hx = tuple(hs) if is_lstm else hs[0]
    return x, hx


def _cell_pair(s, dtype):
    v = s["variant"]
    torch.manual_seed(s["seed"])
    if v == "LSTMCell":
        ref, ours = nn.LSTMCell(s["I"], s["H"], bias=s["bias"]), torch_rnn_ext.LSTMCell(s["I"], s["H"], bias=s["bias"])
    elif v == "GRUCell":
        ref, ours = nn.GRUCell(s["I"], s["H"], bias=s["bias"]), torch_rnn_ext.GRUCell(s["I"], s["H"], bias=s["bias"])
    else:
        nl = v.split("_")[1].lower()
        ref = nn.RNNCell(s["I"], s["H"], bias=s["bias"], nonlinearity=nl)
        ours = torch_rnn_ext.RNNCell(s["I"], s["H"], bias=s["bias"], nonlinearity=nl)
    ref, ours = ref.to(dtype), ours.to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run_cell_module(s):
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    ref, ours = _cell_pair(s, dtype)
    is_lstm = s["variant"] == "LSTMCell"
    lead = (s["B"],) if s["batched"] else ()
    x = mk("input", lead + (s["I"],), layout="contiguous")
    hx = None
    if s["hx"] or (s["fault"] and s["fault"]["kind"].startswith("hx")):
        h = mk("hx", lead + (s["H"],), layout="contiguous")
        hx = (h, mk("hx", lead + (s["H"],), layout="contiguous")) if is_lstm else h
    leaves = [x] + ([t for t in (hx if isinstance(hx, tuple) else [hx])] if hx is not None else [])
    if s["fault"]:
        x, hx = _module_fault(s, x, hx, is_lstm, dtype)
    names = ["input", "hx", "cx", "hidden", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    ref_fn = lambda: ref(x, hx)  # noqa: E731
    if s["fault"] and s["fault"]["kind"] == "hx.dim" and torch.__version__ < "2":
        def ref_fn():  # torch 1.13's nn.GRUCell and RNNCell segfault on a 3-D hx
            raise RuntimeError("hx: torch 1.13's cells crash on a hidden state of the wrong rank")
    got, want = _call_both(s, ref_fn, lambda: ours(x, hx), names)
    if got is None:
        return
    ref64, rx, rhx = _float64_twin(_cell_pair, s, ref, x, hx)
    got, want = _flat(got), _flat(ref64(rx, rhx))
    compare_results(["h", "c"], got, want, s["dtype"])
    if s["grad"] and not s["fault"]:
        rleaves = [rx] + (list(rhx) if isinstance(rhx, tuple) else [rhx] if rhx is not None else [])
        pn = [n for n, _ in ours.named_parameters()]
        compare_grads(s, got, want, leaves + list(ours.parameters()), rleaves + list(ref64.parameters()),
                      ["input", "h_0", "c_0"][:len(leaves)] + pn, s["dtype"])


def _seq_module(s, dtype):
    torch.manual_seed(s["seed"])
    if s["variant"] == "MambaMixer":
        m = torch_rnn_ext.MambaMixer(s["d_model"], d_state=s["d_state"], d_conv=s["d_conv"], expand=s["expand"],
                                     dt_rank=s["dt_rank"], dtype=dtype)
    else:
        m = torch_rnn_ext.RWKV4TimeMix(s["n_embd"], attn_sz=s["attn_sz"], layer_id=s["layer_id"],
                                       n_layer=s["n_layer"], dtype=dtype)
    return m


def _seq_reference(s, m64, x):
    ts, tw, _ = _refs()
    if s["variant"] == "MambaMixer":
        return ts.mamba_reference(m64, x)
    xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    k = m64.key(x * m64.time_mix_k + xx * (1 - m64.time_mix_k))
    v = m64.value(x * m64.time_mix_v + xx * (1 - m64.time_mix_v))
    r = torch.sigmoid(m64.receptance(x * m64.time_mix_r + xx * (1 - m64.time_mix_r)))
    return m64.output(r * _wkv_reference(m64.time_decay, m64.time_first, k, v)[0])


def run_seq_module(s):
    import copy
    dtype = _dtype(s["dtype"])
    mk = Maker(s)
    m = _seq_module(s, dtype)
    width = s["d_model"] if s["variant"] == "MambaMixer" else s["n_embd"]
    x = mk("x", (s["batch"], s["L"], width), layout="contiguous", scale=1.0)
    state = m.allocate_state(s["batch"])
    if s["fault"]:
        kind, r = s["fault"]["kind"], s["fault"]["r"]
        which = 0 if kind.split(".")[0] in ("conv_state", "last_x") else 1
        st = list(state)
        st[which] = _resize(st[which], r % st[which].dim(), 1) if kind.endswith("shape") else _other_dtype(st[which])
        state = tuple(st)
    mode = s["mode"]

    def ours():
        if mode == "forward":
            return m(x)
        if mode == "step":
            ys, a, b = [], state[0], state[1]
            for t in range(s["L"]):
                y, a, b = m.step(x[:, t], a, b)
                ys.append(y)
            return torch.stack(ys, 1)
        c = min(s["cut"], s["L"])
        y1, a, b = m.forward_with_state(x[:, :c], *state)
        if c == s["L"]:
            return y1
        y2, a, b = m.forward_with_state(x[:, c:], a, b)
        return torch.cat([y1, y2], 1)

    y = call_checked(s, ours)
    if y is None:
        return
    m64 = copy.deepcopy(m).double()
    rx = ref_copy(x)
    want = _seq_reference(s, m64, rx)
    tol = None if mode == "forward" else {"float64": (1e-9, 1e-9), "float32": (1e-4, 1e-4)}[s["dtype"]]
    assert_close("y", y, want, s["dtype"], tol)
    if s["grad"]:
        names = ["x"] + [n for n, _ in m.named_parameters()]
        compare_grads(s, [y], [want], [x] + list(m.parameters()), [rx] + list(m64.parameters()), names,
                      s["dtype"])


# --- sizes near overflow ----------------------------------------------------------------------------

def run_huge(s):
    dtype = _dtype(s["dtype"])
    v = s["variant"]
    f = s.get("fault")

    def expect_error(fn):
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if s.get("alloc_ok") and isinstance(e, (RuntimeError, MemoryError)) and \
                    re.search(r"allocat|memory|overflow", msg, re.I):
                return
            check_error(e, s["expect"])
            return
        if s.get("may_return"):
            return out
        raise Fail("accepted", f"returned normally (expected an error naming one of {s['expect']})")

    if v == "num_layers":
        mode = s["op"]
        G, H, I = GATES[mode], 3, 2
        D = 2 if s["bidirectional"] else 1
        params = []
        for _ in range(D):
            params += [torch.randn(G * H, I, dtype=dtype), torch.randn(G * H, H, dtype=dtype)]
            if s["bias"]:
                params += [torch.zeros(G * H, dtype=dtype)] * 2
        x = torch.randn(3, 2, I, dtype=dtype)
        if mode == "lstm":
            hx = [torch.zeros(D, 2, H, dtype=dtype)] * 2 if s["hx"] else []
        else:
            hx = torch.zeros(D, 2, H, dtype=dtype) if s["hx"] else None
        op = getattr(OPS, mode)
        expect_error(lambda: op(x, hx, params, s["bias"], s["num_layers"], 0.0, False, s["bidirectional"], False))
    elif v == "batch_sizes":
        op = s["op"]
        mode = op[:-6] if op.endswith("_layer") else op
        G, H, I = GATES[mode], s["H"], s["I"]
        x = torch.zeros(s["rows"], I, dtype=dtype)
        w_ih, w_hh = torch.zeros(G * H, I, dtype=dtype), torch.zeros(G * H, H, dtype=dtype)
        bsz = torch.tensor(s["batch_sizes"], dtype=torch.long)
        if op.endswith("_layer"):
            hx = torch.zeros(2, H, dtype=dtype) if s["hx"] else None
            if mode == "lstm":
                expect_error(lambda: OPS.lstm_layer(x, hx, None, w_ih, w_hh, None, None, bsz))
            else:
                expect_error(lambda: getattr(OPS, op)(x, hx, w_ih, w_hh, None, None, bsz))
        else:
            fn = getattr(OPS, mode)
            hx = torch.zeros(1, 2, H, dtype=dtype) if s["hx"] else None
            h = ([hx, hx] if hx is not None else []) if mode == "lstm" else hx
            expect_error(lambda: fn(x, h, [w_ih, w_hh], False, 1, 0.0, False, False, False, bsz))
    elif v == "long_input":
        op = s["op"]
        cell = op.endswith("_cell")
        mode = op[:-6] if op.endswith("_layer") else op[:-5] if cell else op
        G, H, I = GATES[mode], s["H"], 2
        n = s["steps"]
        if cell:
            x = torch.zeros(1, I, dtype=dtype).expand(n, I)
            B = n
        elif s["wide"]:
            x = torch.zeros(1, 1, I, dtype=dtype).expand(2, n, I)
            B = n
        else:
            x = torch.zeros(1, 1, I, dtype=dtype).expand(n, 1, I)
            B = 1
        w_ih, w_hh = torch.zeros(G * H, I, dtype=dtype), torch.zeros(G * H, H, dtype=dtype)
        b_ih = b_hh = torch.zeros(G * H, dtype=dtype)
        hx = torch.zeros(1, H, dtype=dtype).expand(B, H)
        if f == "hx.shape":
            hx = torch.zeros(1, H + 1, dtype=dtype).expand(B, H + 1)
        elif f == "weight_hh.dtype":
            w_hh = _other_dtype(w_hh)
        elif f == "bias_ih.size":
            b_ih = torch.zeros(G * H + 1, dtype=dtype)
        elif f == "weight_ih.rows":
            w_ih = torch.zeros(G * H + 1, I, dtype=dtype)
        if cell:
            args = (x, hx) + ((hx,) if mode == "lstm" else ()) + (w_ih, w_hh, b_ih, b_hh)
            expect_error(lambda: getattr(OPS, op)(*args))
        elif op.endswith("_layer"):
            args = (x, hx) + ((hx,) if mode == "lstm" else ()) + (w_ih, w_hh, b_ih, b_hh)
            expect_error(lambda: getattr(OPS, op)(*args))
        else:
            h0 = hx.unsqueeze(0)
            h = [h0, h0] if mode == "lstm" else h0
            expect_error(lambda: getattr(OPS, op)(x, h, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False,
                                                  False))
    elif v == "empty_long":
        op, n = s["op"], s["size"]
        if s["where"] in ("I", "dim"):
            n = min(n, 2 ** 40)  # a weight or A of n columns or rows must itself have fewer than 2^63 elements
        if op.endswith("_layer"):
            mode = op[:-6]
            G, H = GATES[mode], 3
            if s["where"] == "T":
                x, I = torch.zeros(1, 1, 1, dtype=dtype).expand(n, 0, 2), 2
            else:
                x, I = torch.zeros(1, 1, 1, dtype=dtype).expand(2, 0, n), n
            w_ih = torch.zeros(1, 1, dtype=dtype).expand(G * H, I)
            w_hh = torch.zeros(G * H, H, dtype=dtype)
            args = (x, None) + ((None,) if mode == "lstm" else ()) + (w_ih, w_hh)
            out = expect_error(lambda: getattr(OPS, op)(*args))
            want = [(x.shape[0], 0, H), (0, H)] + ([(0, H)] if mode == "lstm" else [])
        elif op == "selective_scan":
            L, dim = (n, 3) if s["where"] == "L" else (2, n)
            u = torch.zeros(1, 1, 1, dtype=dtype).expand(0, dim, L)
            A = torch.full((1, 2), -1.0, dtype=dtype).expand(dim, 2)
            out = expect_error(lambda: OPS.selective_scan(u, u, A, A, A, None, None, None, False, None))
            want = [(0, dim, L), (0, dim, 2)]
        else:
            T, C = (n, 3) if s["where"] == "L" else (2, n)
            k = torch.zeros(1, 1, 1, dtype=dtype).expand(0, T, C)
            w = torch.zeros(1, dtype=dtype).expand(C)
            out = expect_error(lambda: OPS.wkv4(w, w, k, k, None))
            want = [(0, T, C), (0, 3, C)]
        if out is not None:
            got = [tuple(o.shape) for o in out]
            if got != [tuple(w) for w in want]:
                raise Fail("shape", f"returned shapes {got}, expected {want}")
    elif v == "scan_huge":
        b, dim, L = s["dims"]
        N = s["N"]
        if s["op"] == "selective_scan":
            u = torch.zeros(1, 1, 1, dtype=dtype).expand(b, dim, L)
            A = torch.full((1, 1), -1.0, dtype=dtype).expand(dim, N)
            D = torch.zeros(1, dtype=_other_dtype(torch.zeros(1, dtype=dtype)).dtype if f else dtype).expand(dim)
            expect_error(lambda: OPS.selective_scan(u, u, A, A, A, D, None, None, True, None))
        else:
            k = torch.zeros(1, 1, 1, dtype=dtype).expand(b, dim, L)
            w = torch.zeros(1, dtype=dtype).expand(L)
            st = torch.zeros(1, 1, 1, dtype=_other_dtype(torch.zeros(1, dtype=dtype)).dtype if f else
                             dtype).expand(b, 3, L)
            expect_error(lambda: OPS.wkv4(w, w, k, k, st))


# --- explicit reproducers: the defects of issue 18's list and those the fuzzing found -----------------

def _expect_raise(fn, names, types=ALLOWED_ERRORS):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, types):
            raise Fail("error-type", f"{first_line(e)} (expected {' or '.join(t.__name__ for t in types)})")
        check_error(e, names)
        return e
    raise Fail("accepted", f"returned normally (expected an error naming one of {names})")


def _nan_where(name, got, want):
    if not torch.equal(torch.isnan(got), torch.isnan(want)):
        raise Fail("mismatch", f"{name}: NaN at {torch.isnan(got).flatten().tolist()}, expected at "
                               f"{torch.isnan(want).flatten().tolist()} (got {got.flatten().tolist()})")


def _r(*shape, dtype=None, grad=False):
    return torch.randn(*shape, dtype=dtype or torch.float64, generator=_r.gen).requires_grad_(grad)


def reg_num_layers_overflow():
    """(1) num_layers = 2^62: num_layers * directions * tensors overflowed (a segfault)."""
    x = torch.randn(3, 2, 4)
    _expect_raise(lambda: OPS.lstm(x, [], [], True, 2 ** 62, 0.0, False, False, False), ["num_layers", "params"])
    _expect_raise(lambda: OPS.gru(x, None, [torch.randn(3, 4), torch.randn(3, 1)], False, 2 ** 62, 0.0, False, True,
                                  False), ["num_layers", "params"])


def reg_batch_sizes_overflow():
    """(2) batch_sizes [2^62] * 4 sum to 2^64 = 0 rows: with hidden size 0 the layer looped ~forever."""
    for H in (0, 2):
        _expect_raise(lambda: OPS.lstm_layer(torch.zeros(0, 3), None, None, torch.zeros(4 * H, 3),
                                             torch.zeros(4 * H, H), None, None, torch.tensor([2 ** 62] * 4)),
                      ["batch_sizes"])


def reg_relu_nan():
    """(3) relu RNN turned NaN into 0 (torch.relu keeps NaN)."""
    x = torch.tensor([[float("nan"), 1.0]], dtype=torch.float64)
    w, hw = torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    _nan_where("rnn_relu_cell", OPS.rnn_relu_cell(x, None, w, hw, None, None), torch.rnn_relu_cell(x, torch.zeros(1, 2,
               dtype=torch.float64), w, hw))
    _nan_where("rnn_relu_layer", OPS.rnn_relu_layer(x[None], None, w, hw)[0], torch.full((1, 1, 2), float("nan")))
    cell = torch_rnn_ext.RNNCell(2, 2, nonlinearity="relu").double()
    _nan_where("RNNCell(relu)", cell(x), torch.full((1, 2), float("nan")))


def reg_scan_backward_empty():
    """(4) backward of selective_scan (batch 0, dim 0) and wkv4 (batch 0): a reshape error, not empty grads."""
    for b, dim in ((0, 3), (2, 0)):
        u, delta = _r(b, dim, 5, grad=True), _r(b, dim, 5, grad=True)
        A, B, C = _r(dim, 2, grad=True), _r(dim, 2, grad=True), _r(b, 2, 5, grad=True)
        try:
            gs = torch.autograd.grad(torch_rnn_ext.selective_scan(u, delta, A, B, C).sum(), [u, delta, A, B, C])
        except Exception as e:  # noqa: BLE001
            raise Fail("backward", f"selective_scan batch={b} dim={dim}: {first_line(e)}")
        for g, t in zip(gs, [u, delta, A, B, C]):
            if g.shape != t.shape or (g.numel() and g.abs().sum() != 0):
                raise Fail("backward", f"selective_scan batch={b} dim={dim}: gradient {tuple(g.shape)} for "
                                       f"{tuple(t.shape)}")
    k, v = _r(0, 4, 3, grad=True), _r(0, 4, 3, grad=True)
    td, tf = _r(3, grad=True), _r(3, grad=True)
    try:
        gs = torch.autograd.grad(torch_rnn_ext.wkv4(td, tf, k, v).sum(), [td, tf, k, v])
    except Exception as e:  # noqa: BLE001
        raise Fail("backward", f"wkv4 batch=0: {first_line(e)}")
    if [tuple(g.shape) for g in gs] != [(3,), (3,), (0, 4, 3), (0, 4, 3)] or gs[0].abs().sum() or gs[1].abs().sum():
        raise Fail("backward", f"wkv4 batch=0: gradients {[tuple(g.shape) for g in gs]}")


def reg_fast_exp_nan():
    """(6) NaN into the float32 fast exp (undefined behaviour): NaN must come out where it went in."""
    u, delta = torch.ones(1, 2, 3), torch.ones(1, 2, 3)
    delta[0, 0, 1] = float("nan")
    out = torch_rnn_ext.selective_scan(u, delta, -torch.ones(2, 1), torch.ones(2, 1), torch.ones(2, 1),
                                       delta_softplus=True)
    want = torch.zeros(1, 2, 3, dtype=torch.bool)
    want[0, 0, 1:] = True
    if not torch.equal(torch.isnan(out), want):
        raise Fail("mismatch", f"selective_scan float32 NaN delta: NaN at {torch.isnan(out).tolist()}")
    k = torch.zeros(1, 3, 2)
    k[0, 1, 0] = float("nan")
    y = torch_rnn_ext.wkv4(torch.zeros(2), torch.zeros(2), k, torch.ones(1, 3, 2))
    want = torch.zeros(1, 3, 2, dtype=torch.bool)
    want[0, 1:, 0] = True
    if not torch.equal(torch.isnan(y), want):
        raise Fail("mismatch", f"wkv4 float32 NaN k: NaN at {torch.isnan(y).tolist()}")


def reg_lstm_tensor_hx():
    """(7) LSTMCell / LSTM took a single Tensor as hx (nn: TypeError) and a 1-tuple (nn: 'lstm_cell expects
    two hidden states')."""
    cell, x, h = torch_rnn_ext.LSTMCell(3, 4), torch.randn(2, 3), torch.zeros(2, 4)
    _expect_raise(lambda: cell(x, torch.stack([h, h])), ["hx"], (TypeError,))
    e = _expect_raise(lambda: cell(x, (h,)), ["hx", "hidden"], (RuntimeError, TypeError, IndexError, ValueError))
    if "expects two hidden states" not in str(e):
        raise Fail("error-message", f"LSTMCell (h,): {first_line(e)} (nn: 'lstm_cell expects two hidden states')")
    lstm = torch_rnn_ext.LSTM(3, 4)
    _expect_raise(lambda: lstm(torch.randn(5, 2, 3), torch.zeros(2, 1, 2, 4)), ["hx"], (TypeError,))


def reg_long_input_checks_first():
    """(7b) a stride-0 input of 2^31 steps: a bad hx is reported before 32 GB of gates are allocated."""
    x = torch.zeros(1, 1, 4).expand(2 ** 31, 1, 4)
    _expect_raise(lambda: OPS.lstm_layer(x, torch.zeros(2, 3), None, torch.zeros(12, 4), torch.zeros(12, 3)), ["hx"])
    _expect_raise(lambda: OPS.gru_layer(x, None, torch.zeros(9, 4), torch.zeros(9, 3), torch.zeros(8)), ["bias_ih"])


def reg_empty_strided_backward():
    """An empty tensor with a non-unit stride (zero batch, or hidden size 0): backward's gemm_into asserted
    unit column strides (INTERNAL ASSERT at recurrent_layer.h)."""
    x = torch.randn(2, 0, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.zeros(0, 4, dtype=torch.float64)[:, ::2].requires_grad_()
    w_ih, w_hh = _r(8, 3, grad=True), _r(8, 2, grad=True)
    try:
        out, h, c = OPS.lstm_layer(x, hx, None, w_ih, w_hh)
        torch.autograd.grad(out.sum() + h.sum() + c.sum(), [x, hx, w_ih, w_hh], allow_unused=True)
    except Exception as e:  # noqa: BLE001
        raise Fail("backward", f"lstm_layer, batch 0, hx (0, 2) of strides (4, 2): {first_line(e)}")


def reg_none_for_a_tensor():
    """None for a required tensor argument: 'tensor does not have a device', naming no argument."""
    x, w_ih, w_hh = torch.randn(2, 1, 3), torch.randn(4, 3), torch.randn(4, 4)
    _expect_raise(lambda: OPS.rnn_tanh_layer(x, None, None, w_hh), ["weight_ih"])
    _expect_raise(lambda: OPS.lstm_cell(None, None, None, torch.randn(16, 3), torch.randn(16, 4)), ["input"])
    u = torch.randn(1, 2, 3)
    _expect_raise(lambda: torch_rnn_ext.selective_scan(u, None, -torch.ones(2, 1), torch.ones(2, 1), torch.ones(2, 1)),
                  ["delta"])
    _expect_raise(lambda: torch_rnn_ext.wkv4(torch.zeros(2), None, torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)),
                  ["time_first"])


def reg_cell_input_rank():
    """Cell modules once checked the input's rank with assert (AssertionError, gone under python -O). Ours
    raise torch.nn 2.x's ValueError on every torch (1.13's nn.*Cell still asserts)."""
    for ours in [torch_rnn_ext.LSTMCell(3, 4), torch_rnn_ext.GRUCell(3, 4), torch_rnn_ext.RNNCell(3, 4)]:
        x = torch.randn(1, 2, 3)
        want = ValueError
        try:
            ours(x)
        except Exception as e:  # noqa: BLE001
            if type(e) is not want:
                raise Fail("error-type", f"{type(ours).__name__} on 3-D input: {first_line(e)}; torch.nn raises "
                                         f"{want.__name__}")
            continue
        raise Fail("accepted", f"{type(ours).__name__} took 3-D input")


def reg_fast_exp_infinite():
    """The float32 fast exp clamps its argument, so exp(-inf) > 0 and exp(+inf) is finite: silu(-inf) of the
    gate z is -inf (torch: NaN), wkv4's e^(time_first + k) = e^-inf is not 0, selective_scan's e^(delta A)
    = e^inf is 1.65e38. float64 is exact."""
    for dt in (torch.float64, torch.float32):
        o = torch.ones(1, 1, 1, dtype=dt)
        A, B = -torch.ones(1, 1, dtype=dt), torch.ones(1, 1, dtype=dt)
        z = torch.full((1, 1, 1), float("-inf"), dtype=dt)
        out = torch_rnn_ext.selective_scan(o, o, A, B, B, None, z)
        want = torch_rnn_ext.selective_scan(o, o, A, B, B) * F.silu(z)
        _nan_where(f"selective_scan {dt} z=-inf", out, want)
        k, v = torch.tensor([[[0.3], [0.1]]], dtype=dt), torch.tensor([[[2.0], [5.0]]], dtype=dt)
        y = torch_rnn_ext.wkv4(torch.zeros(1, dtype=dt), torch.full((1,), float("-inf"), dtype=dt), k, v)
        _nan_where(f"wkv4 {dt} time_first=-inf", y, torch.tensor([[[float("nan")], [2.0]]]))
        out = torch_rnn_ext.selective_scan(o, o, torch.full((1, 1), float("inf"), dtype=dt), B, B, initial_state=o)
        if out.item() != float("inf"):
            raise Fail("mismatch", f"selective_scan {dt} A=+inf, initial_state 1: {out.item()}, expected inf "
                                   "(e^(delta A) h = inf)")


def reg_wkv4_instant_decay():
    """w = -e^time_decay = -inf (time_decay = +inf, or >= 89 in float32) with a key of -inf: the stable form
    computes (-inf) - (-inf) = NaN, where the exact y_t is v_t (the past weighs nothing)."""
    k = torch.tensor([[[0.5], [float("-inf")], [0.2]]], dtype=torch.float64)
    v = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=torch.float64)
    inf = torch.full((1,), float("inf"), dtype=torch.float64)
    y = torch_rnn_ext.wkv4(inf, torch.zeros(1, dtype=torch.float64), k, v)
    want = _wkv_reference(torch.full((1,), float("inf"), dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                          k, v)[0]
    _nan_where("wkv4 time_decay=+inf, k_1=-inf", y, want)


def reg_empty_long_sequence():
    """A layer with batch 0 walks every timestep: a stride-0 (2^40, 0, I) input does not return (torch.nn
    raises std::bad_alloc at once). Must return the empty output, or raise naming input, promptly."""
    x = torch.zeros(1, 1, 1).expand(2 ** 40, 0, 2)
    try:
        out = OPS.gru_layer(x, None, torch.zeros(9, 2), torch.zeros(9, 3))
    except Exception as e:  # noqa: BLE001
        check_error(e, ["input"])
        return
    if tuple(out[0].shape) != (2 ** 40, 0, 3):
        raise Fail("shape", f"{tuple(out[0].shape)}")


def reg_streaming_states():
    """The modules' streaming calls take conv_state / last_x unchecked: a wrong one raises torch's messages
    from torch.cat or F.conv1d (naming no argument), or is broadcast: RWKV4TimeMix.step takes a (1, n_embd)
    last_x for a batch of 2, MambaMixer(d_conv=1).step a conv_state 2 wide."""
    m = torch_rnn_ext.MambaMixer(8, d_state=4, d_conv=4)
    conv, ssm = m.allocate_state(2)
    x = torch.randn(2, 5, 8)
    _expect_raise(lambda: m.step(x[:, 0], torch.zeros(3, 16, 4), ssm), ["conv_state"])
    _expect_raise(lambda: m.forward_with_state(x, torch.zeros(2, 16, 5), ssm), ["conv_state"])
    r = torch_rnn_ext.RWKV4TimeMix(8)
    last_x, state = r.allocate_state(2)
    _expect_raise(lambda: r.step(x[:, 0], torch.zeros(1, 8), state), ["last_x"])
    _expect_raise(lambda: r.forward_with_state(x, torch.zeros(2, 9), state), ["last_x"])
    m1 = torch_rnn_ext.MambaMixer(4, d_state=1, d_conv=1)
    _expect_raise(lambda: m1.step(torch.randn(1, 4), torch.zeros(1, 8, 2), m1.allocate_state(1)[1]), ["conv_state"])


def reg_stack_param_rank():
    """The LSTM stack reads hidden_size from the projection (recognised by the count of params) before any
    check of its rank: a 1-D 5th tensor is an IndexError naming nothing, a 3-D weight_hr is reported as a
    wrong c_0 ('Expected hidden[1] size')."""
    x = torch.randn(2, 1, 3)
    _expect_raise(lambda: OPS.lstm(x, [], [torch.randn(8, 3), torch.randn(8, 2), torch.randn(8), torch.randn(8),
                                           torch.randn(8)], True, 1, 0.0, False, False, False),
                  ["params", "weight_hr", "params[4]"])
    h0, c0 = torch.zeros(1, 1, 1), torch.zeros(1, 1, 2)
    _expect_raise(lambda: OPS.lstm(x, [h0, c0], [torch.randn(8, 3), torch.randn(8, 1), torch.randn(8), torch.randn(8),
                                                 torch.randn(1, 1, 2)], True, 1, 0.0, False, False, False),
                  ["params", "weight_hr", "params[4]"])


def reg_scan_absent_D():
    """selective_scan without D adds 0 * u_t (D defaults to 0 in the kernel): u = Inf gives NaN, where the
    scan without the D term gives Inf."""
    for dt in (torch.float64, torch.float32):
        o, A, B = torch.ones(1, 1, 1, dtype=dt), -torch.ones(1, 1, dtype=dt), torch.ones(1, 1, dtype=dt)
        u = torch.full((1, 1, 1), float("inf"), dtype=dt)
        y = torch_rnn_ext.selective_scan(u, o, A, B, B)
        if not torch.equal(y, torch.full_like(y, float("inf"))):
            raise Fail("mismatch", f"{dt}: selective_scan(u=inf, delta=1, A=-1, B=C=1) = {y.item()}, expected inf")


REGRESSIONS = {
    "stack_param_rank": reg_stack_param_rank, "scan_absent_D": reg_scan_absent_D,
    "num_layers_overflow": reg_num_layers_overflow, "batch_sizes_overflow": reg_batch_sizes_overflow,
    "relu_nan": reg_relu_nan, "scan_backward_empty": reg_scan_backward_empty, "fast_exp_nan": reg_fast_exp_nan,
    "lstm_tensor_hx": reg_lstm_tensor_hx, "long_input_checks_first": reg_long_input_checks_first,
    "empty_strided_backward": reg_empty_strided_backward, "none_for_a_tensor": reg_none_for_a_tensor,
    "cell_input_rank": reg_cell_input_rank, "fast_exp_infinite": reg_fast_exp_infinite,
    "wkv4_instant_decay": reg_wkv4_instant_decay, "empty_long_sequence": reg_empty_long_sequence,
    "streaming_states": reg_streaming_states,
}


def _selftest(kind):
    if kind == "crash":
        import ctypes
        ctypes.string_at(0)  # a segfault
    elif kind == "hang":
        time.sleep(3600)


def run_regress(s):
    _r.gen = torch.Generator().manual_seed(0)
    if s["variant"].startswith("_selftest_"):
        return _selftest(s["variant"][len("_selftest_"):])
    REGRESSIONS[s["variant"]]()


RUNNERS = {"regress": run_regress, "layer": run_layer, "stack": run_stack, "cell": run_cell, "scan": run_scan,
           "rnn_module": run_rnn_module, "cell_module": run_cell_module, "seq_module": run_seq_module,
           "huge": run_huge}


def run_spec(spec):
    """The verdict of one spec, in this process."""
    _import_torch()
    torch.set_num_threads(spec.get("threads", 1))
    try:
        RUNNERS[spec["family"]](spec)
    except Fail as e:
        return {"status": "fail", "kind": e.kind, "detail": e.detail}
    except Exception as e:  # noqa: BLE001  (the harness itself, or an unexpected exception of ours)
        return {"status": "fail", "kind": "exception", "detail": first_line(e, 600),
                "traceback": traceback.format_exc()[-3000:]}
    return {"status": "pass"}


# ----------------------------------------------------------------------------------------------------
# The worker: a subprocess that runs specs one JSON line at a time.

def _worker_main():
    import faulthandler
    import resource
    faulthandler.enable()
    _import_torch()
    torch.set_num_threads(1)
    # Cap the address space a little above what torch itself maps, so a huge allocation fails cleanly
    # (a RuntimeError) instead of taking the machine's memory.
    with open("/proc/self/status") as fh:
        vm = int(re.search(r"VmSize:\s+(\d+) kB", fh.read()).group(1)) * 1024
    limit = vm + int(os.environ.get("FUZZ_WORKER_EXTRA_BYTES", 3 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        spec = json.loads(line)
        sys.stderr.write("CASE " + line)
        sys.stderr.flush()
        res = run_spec(spec)
        out.write(json.dumps(res) + "\n")
        out.flush()


class Worker:
    """Runs specs in a persistent subprocess; a crash or a hang fails that spec and restarts it."""

    def __init__(self, python=None, timeout=30.0):
        self.python = python or sys.executable
        self.timeout = timeout
        self.proc = None
        self.starts = 0
        self.cases = 0

    def _start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                 else []))
        env.setdefault("OMP_NUM_THREADS", "2")
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([self.python, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env, cwd=REPO_ROOT)
        self.starts += 1
        line = self._readline(180.0)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"fuzz worker did not start: {self._stderr_tail()}")

    def _readline(self, timeout):
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline().decode()

    def _stderr_tail(self, n=1500):
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace")
        except Exception:  # noqa: BLE001
            return ""
        lines = [ln for ln in text.splitlines() if not ln.startswith("CASE ")]
        return "\n".join(lines)[-n:]

    def _kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, spec):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.cases += 1
        timeout = spec.get("timeout", self.timeout)
        t0 = time.time()
        try:
            self.proc.stdin.write((json.dumps(spec) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(timeout)
        if line is None:
            self._kill()
            return {"status": "fail", "kind": "hang", "detail": f"no result after {timeout:.0f} s (killed)"}
        if not line:
            rc = self.proc.wait()
            tail = self._stderr_tail()
            self.proc = None
            sig = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            return {"status": "fail", "kind": "crash", "detail": f"the worker died ({sig}) after "
                                                                 f"{time.time() - t0:.1f} s: {tail[-800:]}"}
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None


def replay_command(spec, python=None):
    py = python or sys.executable
    return f"{py} tests/python/fuzz_cases.py --replay '{json.dumps(spec, separators=(',', ':'))}'"


def describe_failure(spec, res, python=None):
    return (f"[{res.get('kind')}] {res.get('detail')}\n    spec: {json.dumps(spec, separators=(',', ':'))}\n"
            f"    replay: {replay_command(spec, python)}")


def _cli(argv):
    if argv[:1] == ["--worker"]:
        _worker_main()
        return 0
    sys.path.insert(0, REPO_ROOT)
    if argv[:1] == ["--replay"]:
        spec = json.loads(argv[1])
        res = run_spec(spec)
        print(json.dumps(res, indent=1))
        if "traceback" in res:
            print(res["traceback"])
        return 0 if res["status"] == "pass" else 1
    if argv[:1] == ["--seed"]:
        family, variant, aspect, seed = argv[1:5]
        spec = generate(family, variant, aspect, random_draw(family, variant, aspect, int(seed)))
        print(json.dumps(spec))
        if "--show" in argv:
            return 0
        res = run_spec(spec)
        print(json.dumps(res, indent=1))
        return 0 if res["status"] == "pass" else 1
    if argv[:1] == ["--sweep"]:
        family, variant, aspect, start, count = argv[1:6]
        w = Worker()
        fails = 0
        t0 = time.time()
        for seed in range(int(start), int(start) + int(count)):
            spec = generate(family, variant, aspect, random_draw(family, variant, aspect, seed))
            res = w.run(spec)
            if res["status"] != "pass":
                fails += 1
                if "--brief" in argv:
                    print(f"seed {seed}: [{res.get('kind')}] {res.get('detail', '')[:300]}", flush=True)
                else:
                    print(f"seed {seed}: {describe_failure(spec, res)}", flush=True)
        w.close()
        print(f"{family}/{variant}/{aspect}: {count} cases, {fails} failures, {time.time() - t0:.1f} s, "
              f"{w.starts} worker starts", flush=True)
        return 1 if fails else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
