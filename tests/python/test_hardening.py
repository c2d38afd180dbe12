"""Regression tests for the defects of the hardening issue: each input once crashed, hung, returned a
silently wrong answer or had undefined behaviour. Calls that crashed or hung run in a subprocess with a
timeout, so a regression fails the test instead of killing the run."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torch_rnn_ext
from torch_rnn_ext import LSTM, RNN, LSTMCell, RNNCell, GRU, GRUCell

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ops = torch.ops.torch_rnn_ext


def run_isolated(body: str, timeout: float = 60.0) -> dict:
    """Runs `body` (which sets `result`, a JSON-able value) in a fresh interpreter; returns
    {"result": ...} or {"error": type, "message": ...}. A crash or a hang fails the calling test."""
    script = textwrap.dedent("""
        import json, sys, torch
        sys.path.insert(0, {root!r})
        import torch_rnn_ext
        ops = torch.ops.torch_rnn_ext
        try:
        {body}
            out = {{"result": result}}
        except Exception as e:
            out = {{"error": type(e).__name__, "message": str(e)}}
        print("RESULT " + json.dumps(out))
    """).format(root=REPO_ROOT, body=textwrap.indent(textwrap.dedent(body), "    "))
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s:\n{body}")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, \
        f"the subprocess died (exit code {proc.returncode}):\n{body}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# --- 1. sizes multiplied before they were checked ----------------------------------------------------

@pytest.mark.parametrize("call", [
    "ops.lstm(torch.randn(3, 2, 4), [], [], True, 2**62, 0.0, False, False, False)",
    "ops.lstm(torch.randn(3, 2, 4), [], [torch.randn(8, 4), torch.randn(8, 2), torch.randn(8), torch.randn(8)], "
    "True, 2**62 + 1, 0.0, False, False, False)",
    "ops.gru(torch.randn(3, 2, 4), None, [torch.randn(6, 4), torch.randn(6, 2)], False, 2**62 + 1, 0.0, False, "
    "True, False)",
    "ops.rnn_tanh(torch.randn(3, 2, 4), None, [torch.randn(2, 4), torch.randn(2, 2)], False, 2**63 - 1, 0.0, "
    "False, False, False)",
])
def test_huge_num_layers_raise(call):
    out = run_isolated(f"result = [t.shape for t in {call}]")
    assert out.get("error") == "RuntimeError", out
    assert "params" in out["message"] and "num_layers" in out["message"], out


def test_weight_hh_size_overflow_raises():
    # (0, 2**62) has no elements, but 4 gates x 2**62 rows wraps int64 to 0 = its row count.
    out = run_isolated("""
        w_hh = torch.empty(0, 1).expand(0, 2**62)
        result = [t.shape for t in ops.lstm_layer(torch.randn(2, 1, 3), None, None, torch.randn(0, 3), w_hh)]
    """)
    assert out.get("error") == "RuntimeError" and "weight_hh" in out["message"] and "overflow" in out["message"], out


def test_scan_state_size_overflow_raises():
    out = run_isolated("""
        u = torch.randn(1).expand(2**31, 2**31, 1)
        A = torch.randn(1).expand(2**31, 2**10)
        result = list(torch_rnn_ext.selective_scan(u, u, A, A, A).shape)
    """)
    assert out.get("error") == "RuntimeError" and "u and A" in out["message"] and "overflow" in out["message"], out


# --- 2. batch_sizes summing past int64 ---------------------------------------------------------------

@pytest.mark.parametrize("rows,hidden", [(0, 0), (4, 2)])
def test_batch_sizes_wrapping_int64_raise(rows, hidden):
    out = run_isolated(f"""
        result = [t.shape for t in ops.lstm_layer(torch.randn({rows}, 4), None, None, torch.randn(4 * {hidden}, 4),
                                                  torch.randn(4 * {hidden}, {hidden}), None, None,
                                                  torch.tensor([2**62] * 4))]
    """)
    assert out.get("error") == "RuntimeError" and "batch_sizes" in out["message"], out


def test_long_stride0_input_fails_cheaply():
    # 2**31 steps of a stride-0 input: the layer's time layout needs no per-step arrays (it once built two
    # int64 arrays of 16 GB each before any allocation through torch); the gate buffer, 32 GB, cannot be
    # allocated and fails in torch's allocator at once.
    out = run_isolated("""
        x = torch.randn(1, 1, 1).expand(2**31, 1, 1)
        result = list(ops.lstm_layer(x, None, None, torch.randn(4, 1), torch.randn(4, 1))[0].shape)
    """, timeout=30)
    assert out.get("error") == "RuntimeError" and "allocate" in out["message"], out


# --- 3. NaN kept by relu (and every cell) ------------------------------------------------------------

def _nan_input(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    x.view(-1)[1] = float("nan")
    return x


@pytest.mark.parametrize("ours,theirs,kwargs", [
    (RNN, nn.RNN, {"nonlinearity": "relu"}), (RNN, nn.RNN, {"nonlinearity": "tanh"}), (GRU, nn.GRU, {}),
    (LSTM, nn.LSTM, {}),
])
def test_layers_propagate_nan_like_nn(ours, theirs, kwargs):
    torch.manual_seed(0)
    a = ours(3, 4, num_layers=2, dtype=torch.float64, **kwargs)
    b = theirs(3, 4, num_layers=2, dtype=torch.float64, **kwargs)
    b.load_state_dict(a.state_dict())
    x = _nan_input((5, 2, 3))
    out_a, h_a = a(x)
    out_b, h_b = b(x)
    assert out_a.isnan().any()
    torch.testing.assert_close(out_a, out_b, equal_nan=True)
    torch.testing.assert_close(h_a, h_b, equal_nan=True)
    # the gradient keeps NaN exactly where nn's does
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a(xa)[0].sum().backward()
    b(xb)[0].sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, equal_nan=True)


@pytest.mark.parametrize("ours,theirs,kwargs", [
    (RNNCell, nn.RNNCell, {"nonlinearity": "relu"}), (RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    (GRUCell, nn.GRUCell, {}), (LSTMCell, nn.LSTMCell, {}),
])
def test_cells_propagate_nan_like_nn(ours, theirs, kwargs):
    torch.manual_seed(0)
    a = ours(3, 4, dtype=torch.float64, **kwargs)
    b = theirs(3, 4, dtype=torch.float64, **kwargs)
    b.load_state_dict(a.state_dict())
    x = _nan_input((2, 3))
    torch.testing.assert_close(a(x), b(x), equal_nan=True)


def test_relu_rnn_nan_is_not_reset_to_zero_float32():
    torch.manual_seed(0)
    a = RNN(3, 4, nonlinearity="relu")
    out, h = a(torch.full((3, 1, 3), float("nan")))
    assert out.isnan().all() and h.isnan().all()


def test_scans_propagate_nan():
    torch.manual_seed(0)
    u = _nan_input((1, 2, 6)).float()
    delta, A = torch.rand(1, 2, 6), -torch.rand(2, 3)
    B, C = torch.randn(2, 3), torch.randn(2, 3)
    out = torch_rnn_ext.selective_scan(u, delta, A, B, C)
    # u[0, 0, 1] is NaN: channel 0 is NaN from step 1 on (the state carries it), channel 1 stays finite
    assert not out[0, 0, :1].isnan().any() and out[0, 0, 1:].isnan().all() and not out[0, 1].isnan().any()
    k = torch.randn(1, 6, 2)
    k[0, 1, 0] = float("nan")
    y = torch_rnn_ext.wkv4(-torch.rand(2), torch.rand(2), k, torch.randn(1, 6, 2))
    assert not y[0, :1, 0].isnan().any() and y[0, 1:, 0].isnan().all() and not y[0, :, 1].isnan().any()


# --- 4. backward on empty batches --------------------------------------------------------------------

@pytest.mark.parametrize("batch,dim", [(0, 3), (2, 0), (0, 0)])
def test_selective_scan_backward_empty(batch, dim):
    u = torch.randn(batch, dim, 5, requires_grad=True)
    delta = torch.rand(batch, dim, 5, requires_grad=True)
    A = (-torch.rand(dim, 4)).requires_grad_()
    B = torch.randn(batch, 4, 5, requires_grad=True)
    C = torch.randn(dim, 4, requires_grad=True)
    D = torch.randn(dim, requires_grad=True)
    out = torch_rnn_ext.selective_scan(u, delta, A, B, C, D)
    out.sum().backward()
    for t in (u, delta, A, B, C, D):
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()


def test_wkv4_and_mixers_backward_on_batch_zero():
    w, f = torch.rand(3, requires_grad=True), torch.rand(3, requires_grad=True)
    k, v = torch.randn(0, 5, 3, requires_grad=True), torch.randn(0, 5, 3, requires_grad=True)
    torch_rnn_ext.wkv4(w, f, k, v).sum().backward()
    assert k.grad.shape == (0, 5, 3) and torch.equal(w.grad, torch.zeros(3)) and torch.equal(f.grad, torch.zeros(3))
    for mixer in (torch_rnn_ext.MambaMixer(8), torch_rnn_ext.RWKV4TimeMix(8)):
        x = torch.randn(0, 5, 8, requires_grad=True)
        mixer(x).sum().backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None and not p.grad.any() for p in mixer.parameters())


# --- 7. LSTM state types as torch.nn's ---------------------------------------------------------------

def test_lstm_rejects_a_tensor_as_hx():
    with pytest.raises(TypeError, match="hx"):
        LSTM(3, 3)(torch.randn(2, 1, 3), torch.randn(2, 1, 1, 3))
    with pytest.raises(TypeError):  # nn's type for the same call
        nn.LSTM(3, 3)(torch.randn(2, 1, 3), torch.randn(2, 1, 1, 3))
    with pytest.raises(TypeError, match="hx"):
        LSTMCell(3, 3)(torch.randn(1, 3), torch.randn(2, 1, 3))
    with pytest.raises(TypeError, match="hx"):
        nn.LSTMCell(3, 3)(torch.randn(1, 3), torch.randn(2, 1, 3))


def test_lstm_one_state_raises_like_nn():
    with pytest.raises(RuntimeError, match="lstm_cell expects two hidden states"):
        LSTMCell(3, 3)(torch.randn(1, 3), (torch.randn(1, 3),))
    with pytest.raises(RuntimeError, match="lstm_cell expects two hidden states"):
        nn.LSTMCell(3, 3)(torch.randn(1, 3), (torch.randn(1, 3),))
    with pytest.raises(IndexError, match="two hidden states"):
        LSTM(3, 3)(torch.randn(2, 1, 3), (torch.randn(1, 1, 3),))
    with pytest.raises(IndexError):
        nn.LSTM(3, 3)(torch.randn(2, 1, 3), (torch.randn(1, 1, 3),))
    # a list of two is taken, as nn takes it
    h = (torch.randn(1, 1, 3), torch.randn(1, 1, 3))
    m = LSTM(3, 3)
    ref = nn.LSTM(3, 3)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 3)
    torch.testing.assert_close(m(x, list(h))[0], ref(x, h)[0])


def test_lstm_stack_missing_weight_hr_names_params():
    """Found by test_fuzz: an LSTM stack with projections given one tensor fewer reads as a stack without
    projection, whose c_0 check then failed first ("Expected hidden[1] size ..."), naming no parameter."""
    m = torch.nn.LSTM(1, 3, proj_size=1)
    params = [p.detach() for p in m.parameters()]
    x, h0, c0 = torch.randn(5, 1), torch.zeros(1, 1), torch.zeros(1, 3)
    with pytest.raises(RuntimeError, match=r"params\[1\] \(weight_hh_l0\): expected size \(4 \* hidden_size, "
                                           r"hidden_size\) with 4 tensors .*with proj_size, each layer and "
                                           r"direction has 5 tensors"):
        ops.lstm(x, [h0, c0], params[:-1], True, 1, 0.0, False, False, False)
    out = ops.lstm(x, [h0, c0], params, True, 1, 0.0, False, False, False)  # all five: as nn computes
    torch.testing.assert_close(out[0], m(x, (h0, c0))[0])
