"""Property-based fuzz tests of every public op and module (issue 18).

Every op (the layer ops, the multi-layer stacks, the cells, selective_scan, wkv4; through
torch_rnn_ext.functional / torch_rnn_ext.scans and through torch.ops.torch_rnn_ext) and every module
(LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell, MambaMixer, RWKV4TimeMix) is called on random shapes (sizes
0, 1 and near int64 overflow), dtypes, layouts (transposed, strided, offset, stride-0 expanded,
self-overlapping), NaN/Inf and one wrong argument at a time. Each call must either raise a Python
exception (RuntimeError, ValueError, TypeError, IndexError) whose message names the bad argument, or
return what torch.nn or the float64 reference returns -- NaN and Inf exactly where it has them -- with
the same gradients. The cases, the references and the verdicts are in fuzz_cases.py.

One generator per family serves both legs: torch 2.x draws through hypothesis (derandomized, so the
examples are the same every run; no shrinking, a failure prints the whole case and a one-line replay
command instead), torch 1.13 draws from random.Random seeded per case and reports every failing seed
(up to 5 in full). Every case runs in a persistent worker subprocess, so a segfault or a hang fails that
case (a crash costs a worker restart) instead of the run.

Cases per leg (EXAMPLES): 15 op variants (the gated delta rule among them) x 3 aspects (valid values,
NaN/Inf, one bad argument) x 80 = 3,600; 8 torch.nn-twinned module variants x 3 x 50 = 1,200; MambaMixer
and RWKV4TimeMix x 3 x 30 = 180; 5 near-overflow families x 40 = 200; 16 reproducers: 5,196 cases, about a minute on one core (when
everything passes; a hang costs its timeout). FUZZ_SCALE=k multiplies the counts for a longer hunt. A
failure prints the case as JSON with a replay command: PY tests/python/fuzz_cases.py --replay 'JSON'.
"""
import os
import tempfile
import time

import pytest
import torch

import fuzz_cases as fc

# hypothesis drives the torch 2.x leg; the 1.13 leg runs the seeded generator (as issue 18 specifies, and
# whether or not the interpreter has hypothesis: Debian's python3 may). FUZZ_DRIVER=random|hypothesis
# overrides.
DRIVER = os.environ.get("FUZZ_DRIVER") or ("hypothesis" if not torch.__version__.startswith("1.") else "random")
if DRIVER == "hypothesis":
    # No example database (database=None below), and hypothesis' other caches outside the repository.
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "torch_rnn_ext_fuzz"))
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
HAVE_HYPOTHESIS = DRIVER == "hypothesis"

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
EXAMPLES = {"layer": 80, "stack": 80, "cell": 80, "scan": 80, "rnn_module": 50, "cell_module": 50,
            "seq_module": 30, "huge": 40}
MAX_CRASHES = 2  # per test on the seeded leg: each crash or hang costs a worker restart (and a timeout)

CASES = [(family, variant, aspect) for family, (_, variants) in fc.GENERATORS.items() if family != "huge"
         for variant in variants for aspect in fc.ASPECTS]
CASES += [("huge", variant, "errors") for variant in fc.GENERATORS["huge"][1]]


def count(family):
    return max(1, int(EXAMPLES[family] * SCALE))


@pytest.fixture(scope="module")
def worker():
    w = fc.Worker()
    t0 = time.time()
    yield w
    w.close()
    # Shown with pytest -s (or -rP): how many cases ran, and the worker restarts that crashes and hangs cost.
    print(f"\ntest_fuzz: {w.cases} cases in {time.time() - t0:.0f} s, {w.starts} worker starts")


def run_cases(worker, family, variant, aspect):
    n = count(family)
    if HAVE_HYPOTHESIS:
        def prop(data):
            spec = fc.generate(family, variant, aspect, fc.HypothesisDraw(data))
            res = worker.run(spec)
            assert res["status"] == "pass", fc.describe_failure(spec, res)

        # derandomize seeds from the test function's name and source: a name per case gives each its own
        # examples.
        prop.__name__ = prop.__qualname__ = f"fuzz_{family}_{variant}_{aspect}"
        test = settings(max_examples=n, deadline=None, derandomize=True, database=None,
                        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                        report_multiple_bugs=False)(given(st.data())(prop))
        test()
        return
    failures, crashes, ran = [], 0, 0
    for seed in range(n):
        spec = fc.generate(family, variant, aspect, fc.random_draw(family, variant, aspect, seed))
        res = worker.run(spec)
        ran += 1
        if res["status"] != "pass":
            failures.append(f"seed {seed} (fuzz_cases.py --seed {family} {variant} {aspect} {seed}): "
                            + fc.describe_failure(spec, res))
            crashes += res["kind"] in ("crash", "hang")
            if crashes >= MAX_CRASHES:
                break
    assert not failures, f"{len(failures)} of {ran} cases failed (of {n}):\n" + "\n".join(failures[:5])


@pytest.mark.parametrize("family,variant,aspect", CASES, ids=["-".join(c) for c in CASES])
def test_fuzz(worker, family, variant, aspect):
    run_cases(worker, family, variant, aspect)


@pytest.mark.parametrize("name", list(fc.REGRESSIONS))
def test_reproducer(worker, name):
    """The defects listed in issue 18 and those this fuzzing found, one minimal call each (in the worker:
    some crashed or hung)."""
    res = worker.run({"family": "regress", "variant": name, "timeout": 8})
    assert res["status"] == "pass", f"{fc.REGRESSIONS[name].__doc__}\n[{res['kind']}] {res['detail']}"


def test_worker_reports_crash_and_hang_and_recovers():
    """The harness itself: a segfault and a hang fail their case and the next case runs."""
    w = fc.Worker()
    try:
        crash = w.run({"family": "regress", "variant": "_selftest_crash"})
        assert crash["status"] == "fail" and crash["kind"] == "crash" and "signal" in crash["detail"]
        t0 = time.time()
        hang = w.run({"family": "regress", "variant": "_selftest_hang", "timeout": 2})
        assert hang["status"] == "fail" and hang["kind"] == "hang" and time.time() - t0 < 30
        ok = w.run({"family": "regress", "variant": "_selftest_ok"})
        assert ok["status"] == "pass", ok
        assert w.starts == 3
    finally:
        w.close()
