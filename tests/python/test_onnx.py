"""ONNX export of our LSTM / GRU / RNN modules and cells as standard ONNX LSTM / GRU / RNN nodes, checked
with onnx.checker and run in onnxruntime's CPU execution provider (without our library) against eager.

torch 2.x: the default (dynamo-based) exporter and the TorchScript-based one (dynamo=False). torch 1.13:
its (TorchScript-based) exporter; onnx and onnxruntime are pinned in the torch 2.x environment only, so
the 1.13 leg writes the model and the expected outputs and checks them with the .venv's Python."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import torch_rnn_ext

HAS_PT2 = int(torch.__version__.split(".")[0]) >= 2
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
EXPORTERS = ["dynamo", "torchscript"] if HAS_PT2 else ["torchscript"]
I, H = 4, 6
SIZES = [(5, 3), (9, 2), (1, 4)]  # (T, batch): exported at the first, run at all three
SCAN_SIZES = [(7, 2), (12, 1), (33, 3)]  # the scans' (L, batch): exported at the first, run at all three

VERIFY = r"""
import json, sys
import numpy as np, onnx, onnxruntime as ort
path, data = sys.argv[1], sys.argv[2]
model = onnx.load(path)
onnx.checker.check_model(model)
arrays = np.load(data)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
runs = []
for k in range(int(arrays["runs"])):
    feeds = {n: arrays[f"in{k}_{j}"] for j, n in enumerate(names)}
    runs.append([o.tolist() for o in session.run(None, feeds)])
print(json.dumps({"nodes": [[n.op_type, n.domain] for n in model.graph.node], "runs": runs}))
"""


def flat(x):
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in flat(y)]
    return [x]


def inputs(kind, T, B, batch_first, with_state, layers_dirs, cell):
    g = torch.Generator().manual_seed(T * 100 + B)
    if cell:
        x = torch.randn(B, I, generator=g)
        if not with_state:
            return (x,)
        h = torch.randn(B, H, generator=g)
        return (x, (h, torch.randn(B, H, generator=g))) if kind == "LSTM" else (x, h)
    x = torch.randn(B, T, I, generator=g) if batch_first else torch.randn(T, B, I, generator=g)
    if not with_state:
        return (x,)
    h = torch.randn(layers_dirs, B, H, generator=g)
    return (x, (h, torch.randn(layers_dirs, B, H, generator=g))) if kind == "LSTM" else (x, h)


def export(model, args, path, exporter, batch_first, cell):
    n_in = len(flat(args))
    names = [f"in{j}" for j in range(n_in)]
    # dims of each flat input: x (T, B, I) / (B, T, I) / cell (B, I); states (dirs, B, H) / cell (B, H)
    x_axes = {0: "batch"} if cell else ({0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"})
    s_axes = {0: "batch"} if cell else {1: "batch"}
    axes = [x_axes] + [s_axes] * (n_in - 1)
    if exporter == "dynamo":
        dims = {"batch": torch.export.Dim("batch", min=1), "time": torch.export.Dim("time", min=1)}
        spec = [{k: dims[v] for k, v in a.items()} for a in axes]
        shapes = (spec[0],) if n_in == 1 else ((spec[0], tuple(spec[1:])) if n_in == 3 else (spec[0], spec[1]))
        torch.onnx.export(model, args, path, dynamo=True, dynamic_shapes=shapes, input_names=names)
    else:
        kw = {"dynamo": False} if HAS_PT2 else {}
        torch.onnx.export(model, args, path, input_names=names, dynamic_axes=dict(zip(names, axes)),
                          opset_version=14, **kw)


def run_onnx(path, feeds_per_run):
    """onnx.checker and onnxruntime on the exported file (in the .venv's Python on torch 1.13)."""
    data = path + ".npz"
    arrays = {"runs": np.array(len(feeds_per_run))}
    for k, feeds in enumerate(feeds_per_run):
        for j, t in enumerate(feeds):
            arrays[f"in{k}_{j}"] = t.numpy()
    np.savez(data, **arrays)
    py = sys.executable if HAS_PT2 else VENV_PY
    assert os.path.exists(py), f"{py} is missing: make deps creates the torch 2.x environment with onnxruntime"
    out = subprocess.run([py, "-c", VERIFY, path, data], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


STACKS = [  # (kind, kwargs, batch_first, with_state)
    ("LSTM", dict(num_layers=1), False, False),
    ("LSTM", dict(num_layers=2, bidirectional=True), False, True),
    ("LSTM", dict(num_layers=2, batch_first=True), True, True),
    ("LSTM", dict(num_layers=1, bidirectional=True, batch_first=True, bias=False), True, False),
    ("GRU", dict(num_layers=2, bidirectional=True), False, True),
    ("GRU", dict(num_layers=1, batch_first=True), True, False),
    ("RNN_TANH", dict(num_layers=2), False, True),
    ("RNN_RELU", dict(num_layers=1, bidirectional=True, nonlinearity="relu", batch_first=True), True, False),
]
CELLS = [("LSTM", True), ("LSTM", False), ("GRU", True), ("RNN_TANH", False), ("RNN_RELU", True)]


def make_stack(kind, kw):
    torch.manual_seed(0)
    cls = {"LSTM": torch_rnn_ext.LSTM, "GRU": torch_rnn_ext.GRU}.get(kind, torch_rnn_ext.RNN)
    return cls(I, H, **kw).eval()


def make_cell(kind):
    torch.manual_seed(0)
    if kind == "LSTM":
        return torch_rnn_ext.LSTMCell(I, H).eval()
    if kind == "GRU":
        return torch_rnn_ext.GRUCell(I, H).eval()
    return torch_rnn_ext.RNNCell(I, H, nonlinearity="tanh" if kind == "RNN_TANH" else "relu").eval()


def check(model, kind, exporter, batch_first, with_state, layers, dirs, cell, tmp_path):
    make = lambda T, B: inputs(kind, T, B, batch_first, with_state, layers * dirs, cell)  # noqa: E731
    path = str(tmp_path / "model.onnx")
    export(model, make(*SIZES[0]), path, exporter, batch_first, cell)
    result = run_onnx(path, [flat(make(T, B)) for T, B in SIZES])
    node = {"LSTM": "LSTM", "GRU": "GRU"}.get(kind, "RNN")
    ops = [op for op, _ in result["nodes"]]
    assert ops.count(node) == layers, ops
    assert all(domain in ("", "ai.onnx") for _, domain in result["nodes"]), result["nodes"]
    for (T, B), got in zip(SIZES, result["runs"]):
        with torch.no_grad():
            want = flat(model(*make(T, B)))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            g = np.asarray(g, dtype=np.float32)
            assert g.shape == tuple(w.shape), (T, B, g.shape, w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"T={T}, batch={B}")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind,kw,batch_first,with_state", STACKS)
def test_stack_exports_to_standard_nodes(kind, kw, batch_first, with_state, exporter, tmp_path):
    model = make_stack(kind, kw)
    check(model, kind, exporter, batch_first, with_state, kw.get("num_layers", 1),
          2 if kw.get("bidirectional") else 1, False, tmp_path)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind,with_state", CELLS)
def test_cell_exports_to_a_one_step_node(kind, with_state, exporter, tmp_path):
    check(make_cell(kind), kind, exporter, False, with_state, 1, 1, True, tmp_path)


def test_converted_model_exports(tmp_path):
    # convert() an nn model, then export: the graph has the standard node and no custom domain
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(I, I), torch.nn.GRU(I, H, batch_first=True)).eval()
    torch_rnn_ext.convert(model)
    assert type(model[1]) is torch_rnn_ext.GRU
    x = torch.randn(2, 5, I)
    path = str(tmp_path / "seq.onnx")
    kw = {"dynamo": False} if HAS_PT2 else {}
    torch.onnx.export(model, (x,), path, input_names=["in0"], opset_version=14, **kw)
    result = run_onnx(path, [[x]])
    assert "GRU" in [op for op, _ in result["nodes"]]
    np.testing.assert_allclose(np.asarray(result["runs"][0][0], dtype=np.float32), model(x)[0].detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def raised_naming(fn, text):
    """fn() raises, and our ValueError naming `text` is the exception or in its chain (the dynamo-based
    exporter wraps what the model raised)."""
    with pytest.raises(Exception) as info:
        fn()
    e, seen = info.value, []
    while e is not None and len(seen) < 20:
        seen.append(f"{type(e).__name__}: {e}")
        if isinstance(e, ValueError) and text in str(e):
            return
        e = e.__cause__ or e.__context__
    pytest.fail(f"no ValueError naming {text!r} in {seen}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unsupported_configurations_raise_clear_errors(exporter, tmp_path):
    kw = {"dynamo": exporter == "dynamo"} if HAS_PT2 else {}
    path = str(tmp_path / "bad.onnx")
    proj = torch_rnn_ext.LSTM(I, H, proj_size=3).eval()
    raised_naming(lambda: torch.onnx.export(proj, (torch.randn(5, 2, I),), path, **kw), "proj_size")
    training = torch_rnn_ext.GRU(I, H, num_layers=2, dropout=0.5).train()
    raised_naming(lambda: torch.onnx.export(training, (torch.randn(5, 2, I),), path,
                                            training=torch.onnx.TrainingMode.TRAINING, **kw), "eval mode")


def test_packed_sequence_export_raises():
    from torch_rnn_ext import _onnx_export
    packed = pack_padded_sequence(torch.randn(5, 2, I), [5, 3])
    with pytest.raises(ValueError, match="PackedSequence"):
        _onnx_export.rnn_forward(torch_rnn_ext.LSTM(I, H), packed, None)


# ---- The scans: the recurrence as an ONNX Scan (the dynamo-based exporter, torch 2.x)

class FunctionalScans(torch.nn.Module):
    """selective_scan (grouped B, varying C, initial state, last state) and wkv4 (state in and out)."""

    def __init__(self, dim=8, N=4):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = torch.nn.Parameter(-torch.rand(dim, N, generator=g))
        self.D = torch.nn.Parameter(torch.randn(dim, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(dim, generator=g) * 0.3)
        self.td = torch.nn.Parameter(torch.randn(dim, generator=g))
        self.tf = torch.nn.Parameter(torch.randn(dim, generator=g))

    def forward(self, u, delta, B, C, z, h0, k, v, s0):
        y, h = torch_rnn_ext.selective_scan(u, delta, self.A, B, C, self.D, z, self.bias, True, True, h0)
        w, s = torch_rnn_ext.wkv4(self.td, self.tf, k, v, s0, return_state=True)
        return y, h, w, s


def scan_inputs(L, b):
    g = torch.Generator().manual_seed(L * 100 + b)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    s0 = torch.stack([r(b, 8).abs(), r(b, 8).abs() + 1, r(b, 8)], 1)
    return (r(b, 8, L), r(b, 8, L) * 0.5, r(b, 2, 4, L), r(b, 4, L), r(b, 8, L), r(b, 8, 4), r(b, L, 8), r(b, L, 8),
            s0)


class Streaming(torch.nn.Module):
    """MambaMixer and RWKV4TimeMix's forward_with_state (a chunk with the carried states)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.mamba, self.rwkv = torch_rnn_ext.MambaMixer(16, d_state=8), torch_rnn_ext.RWKV4TimeMix(16)

    def forward(self, x, conv_state, ssm_state, last_x, wkv_state):
        y1, c, s = self.mamba.forward_with_state(x, conv_state, ssm_state)
        y2, lx, w = self.rwkv.forward_with_state(x, last_x, wkv_state)
        return y1, c, s, y2, lx, w


def streaming_inputs(L, b):
    g = torch.Generator().manual_seed(L * 100 + b)
    m = Streaming()
    conv, ssm = m.mamba.allocate_state(b)
    last_x, wkv = m.rwkv.allocate_state(b)
    return (torch.randn(b, L, 16, generator=g), torch.randn(conv.shape, generator=g),
            torch.randn(ssm.shape, generator=g), torch.randn(last_x.shape, generator=g), wkv)


class Steps(Streaming):
    """MambaMixer and RWKV4TimeMix's step (one token with the carried states)."""

    def forward(self, x, conv_state, ssm_state, last_x, wkv_state):
        y1, c, s = self.mamba.step(x, conv_state, ssm_state)
        y2, lx, w = self.rwkv.step(x, last_x, wkv_state)
        return y1, c, s, y2, lx, w


def step_inputs(L, b):
    x, *states = streaming_inputs(L, b)  # L only varies the values: a step is one token
    return (x[:, 0], *states)


def sequence(L, b):
    return (torch.randn(b, L, 16, generator=torch.Generator().manual_seed(L * 100 + b)),)


class FunctionalDelta(torch.nn.Module):
    """gated_delta_rule with a per-head gate, initial state and L2 norm; a per-key gate and a scale; no gate."""

    def forward(self, q, k, v, g, gk, beta, s0):
        o1, s1 = torch_rnn_ext.gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
        o2, s2 = torch_rnn_ext.gated_delta_rule(q, k, v, gk, beta, scale=0.3, output_final_state=True)
        o3, _ = torch_rnn_ext.gated_delta_rule(q, k, v, None, beta)
        return o1, s1, o2, s2, o3


def delta_inputs(L, b, H=2, HV=4, K=8, V=6):
    g = torch.Generator().manual_seed(L * 100 + b)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    logsig = torch.nn.functional.logsigmoid
    return (r(b, L, H, K), r(b, L, H, K) * 0.3, r(b, L, HV, V), logsig(r(b, L, HV)), logsig(r(b, L, HV, K)),
            torch.rand(b, L, HV, generator=g), r(b, HV, K, V))


def small_deltanet():
    return torch_rnn_ext.GatedDeltaNet(16, num_k_heads=2, num_v_heads=4, head_k_dim=8, head_v_dim=6)


class DeltaStreaming(torch.nn.Module):
    """GatedDeltaNet's forward_with_state (a chunk with the carried states)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.layer = small_deltanet()

    def forward(self, x, conv_state, recurrent_state):
        return self.layer.forward_with_state(x, conv_state, recurrent_state)


class DeltaSteps(DeltaStreaming):
    """GatedDeltaNet's step (one token with the carried states)."""

    def forward(self, x, conv_state, recurrent_state):
        return self.layer.step(x, conv_state, recurrent_state)


def delta_streaming_inputs(L, b):
    g = torch.Generator().manual_seed(L * 100 + b)
    conv, rec = DeltaStreaming().layer.allocate_state(b)
    return (torch.randn(b, L, 16, generator=g), torch.randn(conv.shape, generator=g),
            torch.randn(rec.shape, generator=g) * 0.3)


def delta_step_inputs(L, b):
    x, *states = delta_streaming_inputs(L, b)
    return (x[:, 0], *states)


SCAN_MODELS = {  # name: (model, inputs(L, batch), each input's time dim (its batch dim is 0))
    "MambaMixer": (lambda: torch_rnn_ext.MambaMixer(16, d_state=8), sequence, [1]),
    "RWKV4TimeMix": (lambda: torch_rnn_ext.RWKV4TimeMix(16), sequence, [1]),
    "functional": (FunctionalScans, scan_inputs, [2, 2, 3, 2, 2, None, 1, 1, None]),
    "forward_with_state": (Streaming, streaming_inputs, [1, None, None, None, None]),
    "step": (Steps, step_inputs, [None] * 5),
    "gated_delta_rule": (FunctionalDelta, delta_inputs, [1, 1, 1, 1, 1, 1, None]),
    "GatedDeltaNet": (small_deltanet, sequence, [1]),
    "GatedDeltaNet.forward_with_state": (DeltaStreaming, delta_streaming_inputs, [1, None, None]),
    "GatedDeltaNet.step": (DeltaSteps, delta_step_inputs, [None] * 3),
}


@pytest.mark.skipif(not HAS_PT2, reason="the scans export through torch 2.x's dynamo-based exporter (torch.onnx "
                                        f"export's scan op); runs in the 2.x leg, this is torch {torch.__version__}")
@pytest.mark.parametrize("name", list(SCAN_MODELS))
def test_scans_export_as_an_onnx_scan(name, tmp_path):
    # exported with a dynamic length and batch at the first size, run at two other lengths and batches
    make, make_inputs, time_dims = SCAN_MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    L, batch = torch.export.Dim("L", min=2), torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} if d is None else {0: batch, d: L} for d in time_dims)
    path = str(tmp_path / "scan.onnx")
    torch.onnx.export(model, make_inputs(*SCAN_SIZES[0]), path, dynamo=True, dynamic_shapes=shapes)
    result = run_onnx(path, [list(make_inputs(n, b)) for n, b in SCAN_SIZES])
    ops = [op for op, _ in result["nodes"]]
    if any(d is not None for d in time_dims):  # (a one-token step may unroll its one step)
        assert "Scan" in ops, ops
    assert all(domain in ("", "ai.onnx") for _, domain in result["nodes"]), result["nodes"]
    for (n, b), got in zip(SCAN_SIZES, result["runs"]):
        with torch.no_grad():
            want = flat(model(*make_inputs(n, b)))  # the final states included
        assert len(got) == len(want)
        for g, w in zip(got, want):
            g = np.asarray(g, dtype=np.float32)
            assert g.shape == tuple(w.shape), (name, n, b, g.shape, w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{name}, L={n}, batch={b}")


def test_gated_delta_rule_export_with_cu_seqlens_raises():
    from torch_rnn_ext import _onnx_export
    q, k, v, g, _, beta, _ = delta_inputs(5, 1)
    with pytest.raises(ValueError, match="cu_seqlens"):
        _onnx_export.gated_delta_rule(q, k, v, g, beta, None, None, False, torch.tensor([0, 2, 5]))


def test_scans_with_the_torchscript_exporter_raise_a_clear_error(tmp_path):
    kw = {"dynamo": False} if HAS_PT2 else {}
    model = torch_rnn_ext.RWKV4TimeMix(16).eval()
    raised_naming(lambda: torch.onnx.export(model, (torch.randn(2, 5, 16),), str(tmp_path / "s.onnx"), **kw),
                  "dynamo")
