"""torch 2.x: the ops under FakeTensorMode with dynamic shapes, torch.library.opcheck, torch.compile
(fullgraph, aot_eager and inductor, dynamic shapes without recompiling) and torch.export (save and load in a
fresh process). These need torch 2.x: in the 1.13 leg they are reported as skipped, with the reason."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import op_samples
import torch_rnn_ext
from conftest import REPO_ROOT

HAS_PT2 = hasattr(torch, "compile") and hasattr(torch, "export") and hasattr(torch.library, "opcheck")
pytestmark = pytest.mark.skipif(not HAS_PT2, reason=f"needs torch 2.x (torch.compile, torch.export, "
                                f"torch.library.opcheck); runs in the 2.x leg, this is torch {torch.__version__}")

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# ---- FakeTensorMode with dynamic shapes -------------------------------------------------------------

SAMPLES = op_samples.all_samples()


@pytest.mark.parametrize("name,op,args,kwargs", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_fake_tensor_dynamic_shapes_match_cpu(name, op, args, kwargs):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    cpu_out = op(*[a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
    mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=False)

    def fake(x):
        if isinstance(x, torch.Tensor):
            return mode.from_tensor(x.detach())
        if isinstance(x, (list, tuple)):
            return type(x)(fake(v) for v in x)
        return x

    fake_args = fake(args)
    with mode:
        fake_out = op(*fake_args, **kwargs)
    cpu_out = list(cpu_out) if isinstance(cpu_out, (tuple, list)) else [cpu_out]
    fake_out = list(fake_out) if isinstance(fake_out, (tuple, list)) else [fake_out]
    assert len(cpu_out) == len(fake_out)
    symbolic = False
    for f, c in zip(fake_out, cpu_out):
        assert (f is None) == (c is None)
        if c is None:
            continue
        symbolic |= any(isinstance(s, torch.SymInt) for s in f.shape)
        assert [int(s) for s in f.shape] == list(c.shape)
        assert [int(s) for s in f.stride()] == list(c.stride())
        assert f.dtype == c.dtype
    assert symbolic, "the fake outputs' sizes should be symbolic"


# ---- torch.library.opcheck ----------------------------------------------------------------------------

PUBLIC = op_samples.public_samples(grad=True)
PRIVATE_FORWARD = [s for s in op_samples.private_samples() if s[0].split("[")[0].endswith("_forward")]


@pytest.mark.parametrize("name,op,args,kwargs", PUBLIC + PRIVATE_FORWARD,
                         ids=[s[0] for s in PUBLIC + PRIVATE_FORWARD])
def test_opcheck(name, op, args, kwargs):
    torch.library.opcheck(op, args, kwargs)


def test_ops_are_tagged_pt2_compliant():
    for name in ["lstm_layer", "gru_layer", "lstm", "gru", "lstm_cell", "selective_scan", "wkv4", "gated_delta_rule",
                 "_gated_delta_rule_forward", "_gated_delta_rule_backward",
                 "_recurrent_layer_forward", "_recurrent_layer_backward", "_layer_products"]:
        op = getattr(torch.ops.torch_rnn_ext, name).default
        assert torch.Tag.pt2_compliant_tag in op.tags, name


# ---- torch.compile --------------------------------------------------------------------------------------

class CellLoop(nn.Module):
    """An LSTMCell and a GRUCell stepped in a Python loop over time (batch-major input)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch_rnn_ext.LSTMCell(4, 6)
        self.gru = torch_rnn_ext.GRUCell(6, 5)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], 6, dtype=x.dtype)
        g = torch.zeros(x.shape[0], 5, dtype=x.dtype)
        outs = []
        for t in range(x.shape[1]):
            h, c = self.lstm(x[:, t], (h, c))
            g = self.gru(h, g)
            outs.append(g)
        return torch.stack(outs, 1)


class DeltaRuleBlock(nn.Module):
    """Projections around gated_delta_rule: 2 q/k heads of 4 key channels, 4 value heads of 5."""

    def __init__(self, width=8, K=4, V=5):
        super().__init__()
        self.K, self.V = K, V
        self.proj = nn.Linear(width, 4 * K + 4 * V + 8)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v, a, b = self.proj(x).split([2 * self.K, 2 * self.K, 4 * self.V, 4, 4], -1)
        o, s = torch_rnn_ext.gated_delta_rule(q.reshape(B, T, 2, self.K), k.reshape(B, T, 2, self.K),
                                              v.reshape(B, T, 4, self.V), nn.functional.logsigmoid(a),
                                              torch.sigmoid(b), output_final_state=True, use_qk_l2norm_in_kernel=True)
        return o.reshape(B, T, 4 * self.V), s


MODELS = {  # name -> (module factory, input (batch, seq) layout: "bt" batch-major, "tb" time-major, width)
    "lstm_stack": (lambda: torch_rnn_ext.LSTM(4, 8, num_layers=2, bidirectional=True, proj_size=3), "tb", 4),
    "gru_stack": (lambda: torch_rnn_ext.GRU(4, 8, num_layers=2, bidirectional=True, batch_first=True), "bt", 4),
    "rnn_stack": (lambda: torch_rnn_ext.RNN(4, 8, num_layers=2, nonlinearity="relu"), "tb", 4),
    "cell_loop": (CellLoop, "bt", 4),
    "mamba": (lambda: torch_rnn_ext.MambaMixer(8, d_state=4), "bt", 8),
    "rwkv4": (lambda: torch_rnn_ext.RWKV4TimeMix(8), "bt", 8),
    "gated_delta_rule": (DeltaRuleBlock, "bt", 8),
}


def make_input(layout, width, batch, seq, dtype):
    shape = (batch, seq, width) if layout == "bt" else (seq, batch, width)
    return torch.randn(*shape, dtype=dtype)


def outputs_and_grads(model, x):
    x = x.detach().clone().requires_grad_()
    outs = [t for t in torch.utils._pytree.tree_leaves(model(x)) if isinstance(t, torch.Tensor)]
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [x] + list(model.parameters()))
    return outs, grads


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_compile_fullgraph_matches_eager(name, dtype, backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    factory, layout, width = MODELS[name]
    model = factory().to(dtype)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    # A new batch size, and a new sequence length, must not recompile; but for the Python loop over time,
    # which unrolls, and for MambaMixer under inductor, whose depthwise nn.Conv1d inductor specialises on
    # the length (a plain nn.Conv1d recompiles there too, with no op of ours).
    same_length = name == "cell_loop" or (name == "mamba" and backend == "inductor")
    sizes = [(3, 7), (5, 7)] if same_length else [(3, 7), (5, 11)]
    compiled_frames = []
    for batch, seq in sizes:
        x = make_input(layout, width, batch, seq, dtype)
        ref_out, ref_grads = outputs_and_grads(model, x)
        out, grads = outputs_and_grads(compiled, x)
        for a, b in zip(out + list(grads), ref_out + list(ref_grads)):
            torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])
        compiled_frames.append(counter.frame_count)
    assert compiled_frames[0] >= 1 and compiled_frames[-1] == compiled_frames[0], \
        f"frames compiled after each size: {compiled_frames} (new sizes recompiled)"


def test_nn_lstm_graph_breaks_ours_do_not():
    """The README's claim: torch.compile(fullgraph=True) refuses torch.nn.LSTM (Dynamo breaks the graph on
    nn.RNN/GRU/LSTM modules); ours compile into one graph."""
    x = torch.randn(7, 3, 4)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="Dynamo does not support RNN, GRU, or LSTM"):
        torch.compile(nn.LSTM(4, 8), fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(torch_rnn_ext.LSTM(4, 8))(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


# ---- torch.export ---------------------------------------------------------------------------------------

# The model of examples/cpp/make_aoti_model.py (which AOTInductor compiles for the C++ example): a
# MambaMixer, a 2-layer LSTM stack and a bidirectional GRU on (batch, seq, 8) input.
sys.path.insert(0, os.path.join(REPO_ROOT, "examples", "cpp"))
from make_aoti_model import SequenceModel as ExportModel  # noqa: E402


def export_model():
    torch.manual_seed(0)
    model = ExportModel().eval()
    seq = torch.export.Dim("seq", min=2, max=4096)
    ep = torch.export.export(model, (torch.randn(2, 10, 8),), dynamic_shapes=({1: seq},))
    return model, ep


def test_export_dynamic_sequence_matches_eager():
    model, ep = export_model()
    for L in (10, 3, 37):
        x = torch.randn(2, L, 8)
        for a, b in zip(ep.module()(x), model(x)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("torch_rnn_ext" in t for t in targets), targets


def test_export_save_load_in_fresh_process(tmp_path):
    model, ep = export_model()
    x = torch.randn(2, 23, 8)
    torch.export.save(ep, str(tmp_path / "model.pt2"))
    torch.save({"x": x, "out": model(x)}, str(tmp_path / "ref.pt"))
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {REPO_ROOT!r})
        import torch_rnn_ext  # registers the ops the program calls
        ep = torch.export.load({str(tmp_path / "model.pt2")!r})
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        out = ep.module()(ref["x"])
        for a, b in zip(out, ref["out"]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_export_gated_delta_rule_dynamic_batch_and_length():
    torch.manual_seed(0)
    model = DeltaRuleBlock().eval()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=4096)
    ep = torch.export.export(model, (torch.randn(2, 10, 8),), dynamic_shapes=({0: batch, 1: seq},))
    for B, L in ((2, 10), (3, 37), (1, 130)):
        x = torch.randn(B, L, 8)
        for a, b in zip(ep.module()(x), model(x)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "torch_rnn_ext.gated_delta_rule.default" in targets, targets
