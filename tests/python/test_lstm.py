"""The LSTM op and module against torch.nn.LSTM: values, gradients, autograd wiring, TorchScript,
threads, bad input."""
import io
import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import torch_rnn_ext
from conftest import REPO_ROOT

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def twin(ref: nn.LSTM) -> torch_rnn_ext.LSTM:
    """Ours, with the same constructor arguments and weights as `ref`."""
    ours = torch_rnn_ext.LSTM(ref.input_size, ref.hidden_size, num_layers=ref.num_layers, bias=ref.bias,
                              batch_first=ref.batch_first, dropout=ref.dropout,
                              bidirectional=ref.bidirectional)
    ours.load_state_dict(ref.state_dict())
    return ours.to(next(ref.parameters()).dtype)


def run_both(ref, ours, x, hx, grad_seed=0):
    """Outputs and gradients (input, hx, every parameter) of both modules under one random loss."""
    results = []
    for m in (ref, ours):
        xi = x.detach().clone().requires_grad_()
        hxi = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
        out, (h, c) = m(xi, hxi)
        g = torch.Generator().manual_seed(grad_seed)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (out, h, c))
        inputs = [xi] + ([] if hxi is None else list(hxi)) + list(m.parameters())
        grads = torch.autograd.grad(loss, inputs)
        results.append(([out, h, c], grads))
    return results


SIZES = [  # (T, B, I, H)
    (1, 1, 1, 1), (1, 4, 3, 5), (7, 1, 3, 5), (5, 3, 4, 6), (9, 2, 13, 7), (3, 5, 2, 17), (16, 3, 8, 32),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,I,H", SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_nn_lstm(dtype, T, B, I, H, bias):
    torch.manual_seed(T * 31 + B * 7 + I * 3 + H)
    ref = nn.LSTM(I, H, bias=bias).to(dtype)
    ours = twin(ref)
    x = torch.randn(T, B, I, dtype=dtype)
    hx = (torch.randn(1, B, H, dtype=dtype), torch.randn(1, B, H, dtype=dtype))
    (ro, rg), (oo, og) = run_both(ref, ours, x, hx)
    for a, b in itertools.chain(zip(oo, ro), zip(og, rg)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given_hx", [False, True])
def test_batch_first_and_optional_state(batch_first, given_hx):
    torch.manual_seed(3)
    ref = nn.LSTM(4, 6, batch_first=batch_first).double()
    ours = twin(ref)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    hx = (torch.randn(1, 3 if batch_first else 5, 6, dtype=torch.float64),) * 2 if given_hx else None
    (ro, rg), (oo, og) = run_both(ref, ours, x, hx)
    for a, b in itertools.chain(zip(oo, ro), zip(og, rg)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_omitted_state_equals_explicit_zeros():
    torch.manual_seed(4)
    m = torch_rnn_ext.LSTM(3, 5).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    zeros = torch.zeros(1, 2, 5, dtype=torch.float64)
    a, (ah, ac) = m(x)
    b, (bh, bc) = m(x, (zeros, zeros))
    assert torch.equal(a, b) and torch.equal(ah, bh) and torch.equal(ac, bc)


def test_empty_batch_returns_empty_outputs_like_nn():
    ref = nn.LSTM(3, 4)
    ours = twin(ref)
    x = torch.randn(5, 0, 3)
    ro, (rh, rc) = ref(x)
    oo, (oh, oc) = ours(x)
    assert oo.shape == ro.shape == (5, 0, 4)
    assert oh.shape == rh.shape and oc.shape == rc.shape


def test_zero_length_sequence_raises_like_nn():
    ref = nn.LSTM(3, 4)
    ours = twin(ref)
    x = torch.randn(0, 2, 3)
    with pytest.raises(RuntimeError):
        ref(x)
    with pytest.raises(RuntimeError, match="input: expected a sequence of at least one timestep"):
        ours(x)


# --- the op itself -------------------------------------------------------------------------------

def layer_args(T=4, B=3, I=5, H=4, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=dtype) * 0.5).requires_grad_()  # noqa: E731
    return dict(input=r(T, B, I), hx=r(B, H), cx=r(B, H), weight_ih=r(4 * H, I), weight_hh=r(4 * H, H),
                bias_ih=r(4 * H) if bias else None, bias_hh=r(4 * H) if bias else None)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_op(reverse, bias):
    a = layer_args(bias=bias)
    names = list(a)

    def f(*tensors):
        kw = dict(zip(names, tensors))
        return torch_rnn_ext.lstm_layer(**kw, reverse=reverse)

    assert torch.autograd.gradcheck(f, tuple(a.values()), atol=1e-7)


def test_gradcheck_op_packed():
    torch.manual_seed(5)
    batch_sizes = torch.tensor([3, 3, 2, 1], dtype=torch.int64)
    a = layer_args(B=3)
    x = torch.randn(int(batch_sizes.sum()), 5, dtype=torch.float64, requires_grad=True)
    for reverse in (False, True):
        f = lambda x, h, c, wi, wh, bi, bh: torch_rnn_ext.lstm_layer(  # noqa: E731
            x, h, c, wi, wh, bi, bh, batch_sizes, reverse)
        assert torch.autograd.gradcheck(f, (x, a["hx"], a["cx"], a["weight_ih"], a["weight_hh"],
                                            a["bias_ih"], a["bias_hh"]), atol=1e-7)


def test_autograd_kernel_is_registered_and_grad_fn_is_ours():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("torch_rnn_ext::lstm_layer", "Autograd")
    a = layer_args()
    out, h, c = torch_rnn_ext.lstm_layer(**a)
    for t in (out, h, c):
        assert "RecurrentLayerFunction" in t.grad_fn.name()
    with torch.no_grad():
        out, _, _ = torch_rnn_ext.lstm_layer(**a)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("which", [0, 1, 2])
def test_gradient_through_one_output_only(which):
    torch.manual_seed(6)
    ref = nn.LSTM(3, 5).double()
    ours = twin(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        out, (h, c) = m(x)
        target = (out, h, c)[which]
        grads.append(torch.autograd.grad(target.pow(2).sum(), list(m.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_backward_twice_with_retain_graph():
    a = layer_args()
    out, h, c = torch_rnn_ext.lstm_layer(**a)
    loss = out.sum() + c.sum()
    g1 = torch.autograd.grad(loss, [a["weight_hh"], a["input"]], retain_graph=True)
    g2 = torch.autograd.grad(loss, [a["weight_hh"], a["input"]])
    for x, y in zip(g1, g2):
        assert torch.equal(x, y)


def test_double_backward_raises_clearly():
    a = layer_args()
    out, _, _ = torch_rnn_ext.lstm_layer(**a)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.sum(), [a["weight_ih"]], create_graph=True)
    # A plain backward of the same graph still works.
    (g,) = torch.autograd.grad(out.sum(), [a["weight_ih"]])
    assert g.shape == a["weight_ih"].shape


def test_non_contiguous_inputs_give_identical_results():
    a = layer_args(dtype=torch.float32)
    x = a["input"].detach().transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    w = a["weight_ih"].detach().t().contiguous().t()
    assert not x.is_contiguous() and not w.is_contiguous()
    base = dict(a, input=a["input"].detach().contiguous(), weight_ih=a["weight_ih"].detach().contiguous())
    r1 = torch_rnn_ext.lstm_layer(**dict(base, input=x, weight_ih=w))
    r2 = torch_rnn_ext.lstm_layer(**base)
    for p, q in zip(r1, r2):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case,match", [
    (lambda a: dict(a, input=a["input"][0]), r"input: expected a 3-D tensor"),
    (lambda a: dict(a, input=a["input"][:0]), r"at least one timestep"),
    (lambda a: dict(a, weight_ih=a["weight_ih"][:, :2]),
     r"input: expected input_size 2 \(the columns of weight_ih\), got input of size \[4, 3, 5\]"),
    (lambda a: dict(a, weight_ih=a["weight_ih"][:12]), r"weight_ih: expected 16 rows"),
    (lambda a: dict(a, weight_hh=a["weight_hh"][:12]), r"weight_hh: expected size"),
    (lambda a: dict(a, bias_ih=a["bias_ih"][:3]), r"bias_ih: expected size \[16\], got \[3\]"),
    (lambda a: dict(a, bias_hh=a["bias_hh"].view(4, 4)), r"bias_hh: expected size \[16\]"),
    (lambda a: dict(a, hx=a["hx"][:2]), r"hx: expected size \[3, 4\], got \[2, 4\]"),
    (lambda a: dict(a, cx=a["cx"][:, :1]), r"cx: expected size \[3, 4\], got \[3, 1\]"),
    (lambda a: dict(a, hx=a["hx"].float()), r"hx: expected dtype Double"),
    (lambda a: dict(a, weight_hh=a["weight_hh"].float()), r"weight_hh: expected dtype Double"),
    (lambda a: dict(a, input=a["input"].int()), r"input: expected dtype float32 or float64, got Int"),
    (lambda a: dict(a, input=a["input"].to("meta")), r"weight_hh: expected a tensor on meta .*, got a tensor on cpu"),
    (lambda a: dict(a, weight_ih=a["weight_ih"].to("meta")), r"input: expected a tensor on meta .*, got a tensor on cpu"),
])
def test_bad_input_raises(case, match):
    a = {k: (v.detach() if v is not None else None) for k, v in layer_args().items()}
    with pytest.raises(RuntimeError, match=match):
        torch_rnn_ext.lstm_layer(**case(a))


@pytest.mark.parametrize("batch_sizes,match", [
    (torch.tensor([3, 2, 1], dtype=torch.int32), "batch_sizes: expected dtype int64"),
    (torch.tensor([2, 3, 1]), "non-increasing"),
    (torch.tensor([3, 3]), "batch_sizes sum to 6 but input has 7 rows"),
    (torch.tensor([], dtype=torch.int64), "at least one timestep"),
])
def test_bad_batch_sizes_raise(batch_sizes, match):
    a = {k: v.detach() for k, v in layer_args().items()}
    with pytest.raises(RuntimeError, match=match):
        torch_rnn_ext.lstm_layer(torch.randn(7, 5, dtype=torch.float64), None, None, a["weight_ih"],
                                 a["weight_hh"], batch_sizes=batch_sizes)


def test_module_rejects_wrong_hidden_size_like_nn():
    ours = torch_rnn_ext.LSTM(3, 4)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 4\), got \[1, 3, 4\]"):
        ours(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))


# --- module: state_dict, TorchScript, threads ------------------------------------------------------

def test_state_dict_loads_both_ways_and_names_match():
    torch.manual_seed(7)
    ref, ours = nn.LSTM(5, 7, bias=False, batch_first=True), torch_rnn_ext.LSTM(5, 7, bias=False, batch_first=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=0)


def test_initialisation_follows_nn_under_a_seed():
    torch.manual_seed(8)
    ref = nn.LSTM(5, 7)
    torch.manual_seed(8)
    ours = torch_rnn_ext.LSTM(5, 7)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch_rnn_ext.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return self.head(out) + c.sum()


def test_scripted_model_saved_and_loaded_in_fresh_process_is_bitwise_identical(tmp_path):
    torch.manual_seed(9)
    model = Model().eval()
    scripted = torch.jit.script(model)
    x = torch.randn(3, 6, 4)
    expected = model(x)
    assert torch.equal(scripted(x), expected)
    path, xpath, ypath = tmp_path / "m.pt", tmp_path / "x.pt", tmp_path / "y.pt"
    scripted.save(str(path))
    torch.save(x, xpath)
    code = (f"import torch, torch_rnn_ext; m = torch.jit.load({str(path)!r}); "
            f"torch.save(m(torch.load({str(xpath)!r})), {str(ypath)!r})")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(tmp_path))
    assert torch.equal(torch.load(ypath), expected)


def test_scripted_module_trains():
    torch.manual_seed(10)
    m = torch.jit.script(torch_rnn_ext.LSTM(3, 4))
    out, (h, c) = m(torch.randn(5, 2, 3))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_torch_save_load_roundtrip():
    m = torch_rnn_ext.LSTM(3, 4)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)  # a whole module
    x = torch.randn(2, 1, 3)
    assert type(m2) is torch_rnn_ext.LSTM and torch.equal(m2(x)[0], m(x)[0])


def test_identical_results_at_one_and_two_threads(threads):
    torch.manual_seed(11)
    m = torch_rnn_ext.LSTM(32, 64)
    x = torch.randn(20, 8, 32, requires_grad=True)
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        out, (h, c) = m(x)
        grads = torch.autograd.grad(out.sum() + c.sum(), [x] + list(m.parameters()))
        results.append([out, h, c, *grads])
    for a, b in zip(*results):
        assert torch.equal(a, b)
