"""The benchmark's timing harness (benchmarks/bench.py): which calls it makes and what it reports, not how
fast anything is (timings belong in the benchmark itself)."""
import os
import sys
import time

import pytest
import torch

BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")
sys.path.insert(0, BENCH_DIR)

import bench  # noqa: E402


@pytest.fixture
def fast_blocks(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    monkeypatch.setattr(bench, "SETTLE_ALONE_S", 0.0)
    monkeypatch.setattr(bench, "BLOCK_S", 0.0)


@pytest.mark.parametrize("torch_threads, blas_threads, long_pause", [
    (1, None, False), (1, 1, False), (1, 2, True), (2, None, True), (2, 1, True)])
def test_settle_pause_is_long_only_when_a_worker_pool_may_spin(monkeypatch, torch_threads, blas_threads, long_pause):
    monkeypatch.setattr(bench, "openblas_threads", lambda: blas_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        assert bench.settle_seconds() == (bench.SETTLE_S if long_pause else bench.SETTLE_ALONE_S)
    finally:
        torch.set_num_threads(before)
    assert bench.SETTLE_ALONE_S < bench.SETTLE_S


def test_interleaved_medians_runs_every_function_once_per_round_in_turn(fast_blocks):
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("nn", "ours", "floor")}
    medians = bench.interleaved_medians(fns, repeats=bench.ROUNDS * 2)
    assert set(medians) == {"nn", "ours", "floor"}
    assert all(m >= 0 for m in medians.values())
    # each block: one warm-up call and 2 timed ones; blocks go nn, ours, floor, nn, ...
    block = 1 + 2
    expected = [k for _ in range(bench.ROUNDS) for k in ("nn", "ours", "floor") for _ in range(block)]
    assert calls == expected


def test_bench_pair_reports_speedup_and_bound_from_the_same_rounds(fast_blocks, threads):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T, B, I, H = 5, 2, 8, 8
    ref, ours = bench.make_modules("GRU", I, H, 1, False)
    floor = bench.products_floor("GRU", T, B, I, H, 1, 1)
    calls = []

    class CountedSgemm(bench.Sgemm):
        def __call__(self):
            calls.append(1)
            super().__call__()
    row = bench.bench_pair(ref, ours, torch.randn(T, B, I), 3, bench.rnn_flops("GRU", T, B, I, H), floor,
                           CountedSgemm(64))
    assert set(row) == {"forward", "forward+backward"}
    for v in row.values():
        assert v["speedup"] == pytest.approx(v["nn_ms"] / v["ours_ms"])
        assert v["bound"] == pytest.approx(v["nn_ms"] / v["products_ms"])
    # the sgemm rate is timed in the forward's rounds only (a warm-up and one run per round), and the
    # forward's fraction divides our rate by it
    assert len(calls) == bench.ROUNDS * 2
    f = row["forward"]
    assert f["sgemm_gflops"] > 0
    assert f["sgemm_fraction"] == pytest.approx(f["ours_gflops"] / f["sgemm_gflops"])
    assert "sgemm_fraction" not in row["forward+backward"]
    # bench_pair loaded nn's weights into ours: the two modules compute the same function
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)


def test_rounds_setting_is_used_and_reported(fast_blocks, monkeypatch):
    monkeypatch.setattr(bench, "ROUNDS", 4)
    calls = []
    bench.interleaved_medians({"nn": lambda: calls.append(1)}, repeats=4)
    assert len(calls) == 4 * (1 + 1)  # 4 blocks of a warm-up and one timed run
    info = {"cpu": "cpu", "cores": 2, "torch": "1.13", "blas": "blas", "blas_threads": 2, "kernels": "k",
            "torch_blas": "mkl"}
    text = bench.markdown([], {1: (100.0, 120.0)}, info, "cmd", [], [])
    assert "4 interleaved rounds" in text


def test_nn_kernels_names_what_the_profiler_saw(threads):
    torch.set_num_threads(1)
    x = torch.randn(3, 2, 4)
    gru, _ = bench.make_modules("GRU", 4, 4, 1, False)
    assert bench.nn_kernels(gru, x) == {"forward": "ATen", "forward+backward": "ATen"}
    lstm, _ = bench.make_modules("LSTM", 4, 4, 1, False)
    with torch.backends.mkldnn.flags(enabled=False):  # no oneDNN: torch's own cells, whatever the version
        assert bench.nn_kernels(lstm, x) == {"forward": "ATen", "forward+backward": "ATen"}
    assert set(bench.nn_kernels(lstm, x).values()) <= {"oneDNN", "ATen"}


def test_anchors_are_timed_in_the_forward_rounds_and_reported(fast_blocks, threads):
    torch.set_num_threads(1)
    T, B, I, H = 5, 2, 8, 8
    ref, ours = bench.make_modules("LSTM", I, H, 1, False)
    calls = []
    row = bench.bench_pair(ref, ours, torch.randn(T, B, I), 3, bench.rnn_flops("LSTM", T, B, I, H),
                           anchors={"ort": lambda: calls.append(1)})
    assert len(calls) == bench.ROUNDS * 2  # a warm-up and one run per forward round
    f = row["forward"]
    assert f["ort_speedup"] == pytest.approx(f["ort_ms"] / f["ours_ms"])
    assert "ort_ms" not in row["forward+backward"]
    table = bench.ort_markdown([{"module": "LSTM", "T": T, "B": B, "I": I, "H": H, "torch_threads": 1, **row}],
                               None)
    assert "| LSTM | 5, 2, 8, 8 | 1 |" in table
    assert "not installed" in bench.ort_markdown([], "onnxruntime is not installed")


@pytest.mark.skipif(int(torch.__version__.split(".")[0]) < 2,
                    reason="onnxruntime is pinned in the torch 2.x environment; runs in the 2.x leg")
def test_onnxruntime_anchor_runs_the_rows_model():
    import bench_onnx
    assert bench_onnx.available() is None
    torch.manual_seed(0)
    ours = bench.make_modules("LSTM", 8, 8, 1, False)[1].eval()
    x = torch.randn(5, 2, 8)
    fns = bench_onnx.forward_functions(ours, x, 1, int8=True)
    assert set(fns) == {"ort", "ort_int8"}
    y, h, c = fns["ort"]()
    torch.testing.assert_close(torch.from_numpy(y), ours(x)[0].detach(), rtol=1e-5, atol=1e-5)
    assert fns["ort_int8"]()[0].shape == y.shape


def test_delta_rule_benchmark_forms_compute_what_the_op_computes():
    """bench_delta_rule's PyTorch recurrent and chunked forms (and transformers' fallbacks where installed)
    give the op's output and final state, so its speedups compare like with like."""
    from bench_delta_rule import check_forms_agree, format_rows
    check_forms_agree()
    row = {"name": "decode", "mode": "forward", "shape": "s", "threads": 1, "ms": {"ours": 1.0, "state copy": 0.5},
           "vs_state_copy": 2.0, "speedups": {"state copy": 0.5}}
    assert "2.00x a state copy (500 us)" in format_rows([row])[-1]
    train = {"name": "prefill 512", "mode": "forward+backward", "shape": "s", "threads": 1,
             "ms": {"ours": 2.0, "chunked PyTorch": 6.0}, "speedups": {"chunked PyTorch": 3.0}, "gflops": 40.0,
             "sgemm_gflops": 100.0, "of_sgemm": 0.4, "bound_vs_chunked": 7.5}
    line = format_rows([train])[-1]
    assert "| 3.0x |" in line and "40.0 GFLOP/s = 40% of sgemm (100); bound vs chunked PyTorch 7.5x" in line


def test_compile_rows_say_what_dynamo_made_of_each_module(fast_blocks, monkeypatch, threads):
    """bench_compile on one tiny row: every variant timed in each mode, compiled nn a graph break (dynamo refuses
    nn's RNN modules, so it runs eagerly), compiled ours one graph; on torch 1.13 no rows and a skip note."""
    import bench_compile
    if bench_compile.SKIPPED:
        assert bench_compile.run_compile_benchmarks(quick=True) == []
        assert bench_compile.markdown([]).startswith("skipped: torch.compile needs torch 2.x")
        return
    torch.set_num_threads(1)
    monkeypatch.setattr(bench_compile, "QUICK_CASES", [("LSTM", (5, 2, 4, 4))])
    try:
        rows = bench_compile.run_compile_benchmarks(quick=True, rounds=1)
    finally:
        torch._dynamo.reset()  # no compiled frames left for later tests
    (row,) = rows
    assert row["max_abs_diff"] <= bench_compile.ATOL
    for mode in bench_compile.MODES:
        m = row[mode]
        assert set(m["ms"]) == set(bench_compile.VARIANTS) and m["speedup"]["nn"] == 1.0
        compiled_nn, compiled_ours = m["first_call"]["compiled nn"], m["first_call"]["compiled ours"]
        assert compiled_nn["graphs"] == 0 and compiled_nn["graph_breaks"] >= 1
        assert (compiled_ours["graphs"], compiled_ours["graph_breaks"]) == (1, 0)
        assert m["compiled_nn_kernels"] in ("oneDNN", "ATen")
    assert "| LSTM | 5, 2, 4, 4 | 1 | forward |" in bench_compile.markdown(rows)


def test_packed_rows_time_the_same_packed_batch_and_report_both_targets(monkeypatch, threads):
    """bench_packed on one tiny row: lengths in [T/4, T], every time and ratio reported, and a disagreement
    between ours and nn raises instead of being timed."""
    import bench_packed
    monkeypatch.setattr(bench_packed, "SHAPES", [(12, 5, 4, 3)])
    monkeypatch.setattr(bench_packed, "KINDS", ("GRU",))
    monkeypatch.setattr(bench_packed, "QUICK_TIMING", (1, 1))
    torch.set_num_threads(1)
    rows = bench_packed.run_packed_benchmarks(quick=True)
    assert [r["mode"] for r in rows] == list(bench_packed.MODES)
    for r in rows:
        assert 0.25 <= r["fraction"] <= 1.0 and r["max_abs_diff"] <= bench_packed.ATOL
        assert r["padded_ratio"] == pytest.approx(r["ours_packed_ms"] / (r["ours_padded_ms"] * r["fraction"]))
        assert r["bound"] == pytest.approx(r["nn_packed_ms"] / (r["products_ms"] * r["fraction"]))
    assert "| GRU | 12, 5, 4, 3 | 1 | forward |" in bench_packed.markdown(rows)
    ref, ours = bench_packed.make_modules("GRU", 4, 3)
    with torch.no_grad():
        ours.weight_hh_l0.add_(1.0)
    with pytest.raises(AssertionError, match="differ"):
        bench_packed.check_agree(ref, ours, bench_packed.packed_input(12, 5, 4)[1])


def test_cpp_stepping_runs_the_built_example_and_reads_its_report():
    """bench_streaming.run_cpp_stepping runs examples/cpp/stream_model (built with the library) and parses
    every way it steps, at both hidden sizes."""
    import bench_streaming
    rows = bench_streaming.run_cpp_stepping(quick=True)
    assert [(r["input"], r["hidden"]) for r in rows] == [(64, 64), (64, 256)]
    for r in rows:
        assert r["threads"] == 1
        assert all(r[k] > 0 for k in ("stepper_us", "op_us", "module_us", "aten_lstm_cell_us"))
    assert "| 64, 64 | 1 |" in bench_streaming.cpp_markdown(rows)


def test_thread_ab_times_each_module_at_both_thread_counts_in_one_process(fast_blocks, monkeypatch):
    """bench_threads on one tiny row: ours and nn at 1 and 2 threads, the thread count set for each call and
    restored afterwards, the ratio time at 1 / time at 2."""
    import bench_threads
    monkeypatch.setattr(bench_threads, "QUICK_CASES", [("GRU", (6, 2, 4, 3), 1, False)])
    seen = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real_set(n)))
    real_set(3)
    rows = bench_threads.run_thread_ab(quick=True, repeats=bench.ROUNDS)
    assert torch.get_num_threads() == 3
    assert {1, 2} <= set(seen)
    assert [(r["mode"], r["impl"]) for r in rows] == [(m, i) for m in ("forward", "forward+backward")
                                                      for i in ("ours", "nn")]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["ms"][1] / r["ms"][2])
        assert r["slower"] == (r["ratio"] < 1 / bench_threads.SLOWER)
    assert "| GRU | 6, 2, 4, 3 | forward |" in bench_threads.markdown(rows)


def test_peak_memory_runs_in_a_fresh_process_and_counts_the_allocator():
    """bench.peak_memory_mb (make bench-full) on a tiny row: its subprocess runs on this torch (the profiler's
    event API differs between versions) and reports the allocator's peak and the RSS rise."""
    for impl in ("nn", "ours"):
        m = bench.peak_memory_mb("GRU", 10, 3, 4, 5, 1, False, impl)
        assert set(m) == {"allocated", "rss"}
        assert m["allocated"] > 0


def test_interleaved_medians_warms_up_long_calls_in_the_first_round_only(fast_blocks, monkeypatch):
    monkeypatch.setattr(bench, "LONG_CALL_S", 0.001)
    calls = {"long": 0, "short": 0}

    def long_call():
        calls["long"] += 1
        time.sleep(0.002)

    def short_call():
        calls["short"] += 1
    bench.interleaved_medians({"long": long_call, "short": short_call}, repeats=bench.ROUNDS * 2)
    # each block 2 timed calls; a warm-up before every short block, before the long one's first only
    assert calls == {"long": 1 + bench.ROUNDS * 2, "short": bench.ROUNDS * 3}
