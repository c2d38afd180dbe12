"""LSTM (with and without projection), GRU, RNN-tanh and RNN-relu, and their cells, against torch.nn:
values, final states and every gradient over the whole configuration matrix; dropout; convert;
chunked state carrying; TorchScript; bad input."""
import io
import itertools
import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import torch_rnn_ext

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# float32 values reach ~30 here, where 1e-5 is 3 ulp: pair the absolute bound with torch's standard float32
# relative tolerance (assert_close's default), as any change of summation order needs.
RTOL = {torch.float64: 0.0, torch.float32: 1.3e-6}
KINDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
INPUTS = ["padded", "batch_first", "packed_sorted", "packed_unsorted", "unbatched"]
I, H, P, T = 5, 6, 3, 7
LENGTHS_SORTED = [7, 5, 5, 2, 1, 1]
LENGTHS_UNSORTED = [5, 7, 1, 5, 2, 1]


def make_pair(kind, dtype=torch.float64, **kw):
    """(torch.nn module, ours) with identical arguments and weights."""
    if kind.startswith("lstm"):
        if kind == "lstm_proj":
            kw["proj_size"] = P
        ref, ours = nn.LSTM(I, H, **kw), torch_rnn_ext.LSTM(I, H, **kw)
    elif kind == "gru":
        ref, ours = nn.GRU(I, H, **kw), torch_rnn_ext.GRU(I, H, **kw)
    else:
        nl = kind.split("_")[1]
        ref, ours = nn.RNN(I, H, nonlinearity=nl, **kw), torch_rnn_ext.RNN(I, H, nonlinearity=nl, **kw)
    ref = ref.to(dtype)
    ours = ours.to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_input(input_kind, dtype, gen):
    B = len(LENGTHS_SORTED)
    if input_kind == "unbatched":
        return torch.randn(T, I, generator=gen, dtype=dtype), None
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    if input_kind == "batch_first":
        return x.transpose(0, 1).contiguous(), None
    if input_kind == "packed_sorted":
        return x, (LENGTHS_SORTED, True)
    if input_kind == "packed_unsorted":
        return x, (LENGTHS_UNSORTED, False)
    return x, None


def make_hx(kind, ref, input_kind, dtype, gen):
    D = 2 if ref.bidirectional else 1
    lead = (ref.num_layers * D,) if input_kind == "unbatched" else (ref.num_layers * D, len(LENGTHS_SORTED))
    hsize = P if kind == "lstm_proj" else H
    h = torch.randn(*lead, hsize, generator=gen, dtype=dtype)
    if kind.startswith("lstm"):
        return (h, torch.randn(*lead, H, generator=gen, dtype=dtype))
    return h


def tensors_of(result):
    """Flattens (output, hidden) with PackedSequence/tuple members into a list of tensors."""
    out, hidden = result
    outs = [out.data if isinstance(out, PackedSequence) else out]
    return outs + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def forward_and_grads(module, x, packing, hx, gen_seed):
    x = x.detach().clone().requires_grad_()
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple) \
            else hx.detach().clone().requires_grad_()
    inp = x if packing is None else pack_padded_sequence(x, packing[0], enforce_sorted=packing[1])
    outs = tensors_of(module(inp, hx))
    g = torch.Generator().manual_seed(gen_seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    leaves = [x] + ([] if hx is None else (list(hx) if isinstance(hx, tuple) else [hx])) + list(module.parameters())
    return outs, torch.autograd.grad(loss, leaves)


def assert_same(ref, ours, x, packing, hx, dtype):
    r_outs, r_grads = forward_and_grads(ref, x, packing, hx, 1)
    o_outs, o_grads = forward_and_grads(ours, x, packing, hx, 1)
    assert len(r_outs) == len(o_outs) and len(r_grads) == len(o_grads)
    for i, (a, b) in enumerate(itertools.chain(zip(o_outs, r_outs), zip(o_grads, r_grads))):
        assert a.shape == b.shape, i
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=RTOL[dtype], msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("input_kind", INPUTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_parity_float64(kind, num_layers, bidirectional, bias, input_kind, given_hx):
    dtype = torch.float64
    gen = torch.Generator().manual_seed(hash((kind, num_layers, bidirectional, bias, input_kind)) % 2 ** 31)
    torch.manual_seed(0)
    ref, ours = make_pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                          batch_first=input_kind == "batch_first")
    x, packing = make_input(input_kind, dtype, gen)
    hx = make_hx(kind, ref, input_kind, dtype, gen) if given_hx else None
    assert_same(ref, ours, x, packing, hx, dtype)


@pytest.mark.parametrize("input_kind", INPUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_parity_float32(kind, bidirectional, input_kind):
    dtype = torch.float32
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    ref, ours = make_pair(kind, dtype, num_layers=2, bidirectional=bidirectional,
                          batch_first=input_kind == "batch_first")
    x, packing = make_input(input_kind, dtype, gen)
    assert_same(ref, ours, x, packing, make_hx(kind, ref, input_kind, dtype, gen), dtype)


# --- dropout ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_follows_torch_rng_and_masks(kind, bidirectional):
    ref, ours = make_pair(kind, torch.float64, num_layers=3, dropout=0.5, bidirectional=bidirectional)
    x = torch.randn(T, 4, I, dtype=torch.float64)
    # Training: same seed, same masks as torch.nn (same RNG calls in the same order), and gradients too.
    for seed in (1, 2):
        torch.manual_seed(seed)
        r_outs, r_grads = forward_and_grads(ref, x, None, None, 3)
        torch.manual_seed(seed)
        o_outs, o_grads = forward_and_grads(ours, x, None, None, 3)
        for a, b in zip(o_outs + list(o_grads), r_outs + list(r_grads)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.manual_seed(1)
    a = tensors_of(ours(x))[0]
    torch.manual_seed(2)
    b = tensors_of(ours(x))[0]
    assert not torch.allclose(a, b), "different seeds must give different dropout masks"
    # Eval: no dropout, and no random numbers drawn.
    ours.eval()
    ref.eval()
    torch.manual_seed(5)
    out_eval = tensors_of(ours(x))[0]
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after), "eval mode must not consume random numbers"
    torch.testing.assert_close(out_eval, tensors_of(ref(x))[0], atol=1e-10, rtol=0)


def test_dropout_zero_in_training_draws_no_random_numbers():
    _, ours = make_pair("lstm", num_layers=2, dropout=0.0)
    x = torch.randn(T, 2, I, dtype=torch.float64)
    torch.manual_seed(9)
    ours(x)
    after = torch.rand(1)
    torch.manual_seed(9)
    assert torch.equal(torch.rand(1), after)


@pytest.mark.parametrize("loss_of", ["sum_of_output", "final_state_only"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_for_expanded_or_absent_output_grads(kind, loss_of):
    # .sum() hands the op an expanded (stride 0) grad_output, and a loss on the final state alone hands
    # it none: the paths where the backward works in its own copy of grad_output.
    ref, ours = make_pair(kind, torch.float64, num_layers=2)
    x = torch.randn(T, 3, I, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, hidden = m(xi)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        loss = out.sum() if loss_of == "sum_of_output" else (h * h).sum()
        grads.append(torch.autograd.grad(loss, [xi] + list(m.parameters())))
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


# --- ops: gradcheck --------------------------------------------------------------------------------

def _leaf(*s, gen):
    return (torch.randn(*s, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()


@pytest.mark.parametrize("op,gates", [("gru_layer", 3), ("rnn_tanh_layer", 1), ("rnn_relu_layer", 1)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_single_state_layers(op, gates, reverse, packed):
    gen = torch.Generator().manual_seed(11)
    B, h = 3, 4
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    x = _leaf(int(batch_sizes.sum()), I, gen=gen) if packed else _leaf(4, B, I, gen=gen)
    args = (x, _leaf(B, h, gen=gen), _leaf(gates * h, I, gen=gen), _leaf(gates * h, h, gen=gen),
            _leaf(gates * h, gen=gen), _leaf(gates * h, gen=gen))
    fn = getattr(torch.ops.torch_rnn_ext, op)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, batch_sizes, reverse), args, atol=1e-7)


@pytest.mark.parametrize("layer", ["lstm_layer", "gru_layer", "rnn_tanh_layer"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_backward_reads_strided_output_grads_in_place(layer, packed):
    """The output grad is read with its strides, not copied: an expanded grad (a .sum() loss), a transposed
    one (batch_first), a column slice (one direction of a bidirectional output) and a contiguous one with
    the same values give bitwise the same gradients."""
    gen = torch.Generator().manual_seed(14)
    g = {"lstm_layer": 4, "gru_layer": 3, "rnn_tanh_layer": 1}[layer]
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    x = _leaf(8, I, gen=gen) if packed else _leaf(4, 3, I, gen=gen)
    weights = [_leaf(g * H, I, gen=gen), _leaf(g * H, H, gen=gen), _leaf(g * H, gen=gen), _leaf(g * H, gen=gen)]
    states = [_leaf(3, H, gen=gen)] * (2 if layer == "lstm_layer" else 1)
    out = getattr(torch.ops.torch_rnn_ext, layer)(x, *states, *weights, batch_sizes, False)[0]
    leaves = [x, *weights]
    base = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    if packed:
        strided = [torch.randn(2 * out.size(1), out.size(0), generator=gen, dtype=out.dtype).t()[:, ::2]]
    else:
        strided = [torch.randn(out.size(1), out.size(0), 2 * out.size(2), generator=gen,
                               dtype=out.dtype)[..., ::2].transpose(0, 1)]
    cases = [torch.ones(1, dtype=out.dtype).expand(out.shape), base] + strided
    for i, grad in enumerate(cases):
        assert grad.shape == out.shape and grad.is_contiguous() == (i == 1)
        got = torch.autograd.grad(out, leaves, grad, retain_graph=True)
        want = torch.autograd.grad(out, leaves, grad.contiguous(), retain_graph=True)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_rnn_input_grad_written_over_its_buffer_matches_nn(num_layers, threads):
    """An RNN layer whose input is as wide as its hidden state writes dx over the pre-activation grads,
    a block of rows at a time: its gradients equal torch.nn's (float64), for N rows not a multiple of the
    block and at 1 and 2 threads."""
    ref, ours = nn.RNN(H, H, num_layers=num_layers).double(), torch_rnn_ext.RNN(H, H, num_layers=num_layers).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(37, 3, H, dtype=torch.float64)  # N = 111 rows: blocks of 28, the last of 27
    want = forward_and_grads(ref, x, None, None, 3)
    for n in (1, 2):
        torch.set_num_threads(n)
        got = forward_and_grads(ours, x, None, None, 3)
        for a, b in zip(got[0] + list(got[1]), want[0] + list(want[1])):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("gates,shape", [(4, (7, 1, I)), (3, (5, 6, I)), (1, (9, 20, H)), (4, (3, 40, I))])
def test_layer_products_alone_make_the_layers_products(gates, shape, threads):
    """The benchmark's floor op runs a layer's products with states of ones: forward returns the
    projection plus every step's product, x W_ih^T + 1 W_hh^T; backward returns dx = that times W_ih (it
    stands in for dgi), at 1 and 2 threads, for batches taking each step kernel (1 row, 2..16, more) and an
    RNN whose dx is written over its buffer."""
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    w_ih = torch.randn(gates * H, shape[2], dtype=torch.float64, generator=gen)
    w_hh = torch.randn(gates * H, H, dtype=torch.float64, generator=gen)
    proj = x.reshape(-1, shape[2]) @ w_ih.t() + w_hh.sum(1)
    ones = torch.ones(shape[0] * shape[1], H, dtype=torch.float64)
    for n in (1, 2):
        torch.set_num_threads(n)
        fwd = torch.ops.torch_rnn_ext._layer_products(x, w_ih, w_hh, ones.clone(), False)
        torch.testing.assert_close(fwd, proj, atol=1e-10, rtol=1e-12)
        states = ones.clone()
        bwd = torch.ops.torch_rnn_ext._layer_products(x, w_ih, w_hh, states, True)
        torch.testing.assert_close(bwd.reshape(-1, shape[2]), proj @ w_ih, atol=1e-9, rtol=1e-12)
        torch.testing.assert_close(states, ones + proj @ w_hh, atol=1e-9, rtol=1e-12)  # the dh products


def test_layer_products_check_their_arguments():
    x, w_ih, w_hh, states = torch.randn(4, 3, I), torch.randn(4 * H, I), torch.randn(4 * H, H), torch.ones(12, H)
    products = torch.ops.torch_rnn_ext._layer_products
    with pytest.raises(RuntimeError, match=r"weight_hh: expected \(G \* hidden_size, hidden_size\) with G = 1, 3"):
        products(x, w_ih, torch.randn(5 * H, H), states, False)
    with pytest.raises(RuntimeError, match=r"input: expected a 3-D tensor"):
        products(x[0], w_ih, w_hh, states, False)
    with pytest.raises(RuntimeError, match=r"weight_ih: expected 24 rows"):
        products(x, w_ih[:-1], w_hh, states, False)
    with pytest.raises(RuntimeError, match=r"weight_hh: expected dtype"):
        products(x, w_ih, w_hh.double(), states, False)
    with pytest.raises(RuntimeError, match=r"states: expected size \[12, 6\]"):
        products(x, w_ih, w_hh, states[1:], False)
    with pytest.raises(RuntimeError, match=r"states: expected a contiguous tensor"):
        products(x, w_ih, w_hh, torch.ones(H, 12).t(), False)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_lstm_layer_with_projection(reverse):
    gen = torch.Generator().manual_seed(12)
    B, h, p = 3, 5, 2
    args = (_leaf(4, B, I, gen=gen), _leaf(B, p, gen=gen), _leaf(B, h, gen=gen), _leaf(4 * h, I, gen=gen),
            _leaf(4 * h, p, gen=gen), _leaf(4 * h, gen=gen), _leaf(4 * h, gen=gen), _leaf(p, h, gen=gen))
    fn = lambda x, hx, cx, wi, wh, bi, bh, wr: torch_rnn_ext.lstm_layer(  # noqa: E731
        x, hx, cx, wi, wh, bi, bh, None, reverse, wr)
    assert torch.autograd.gradcheck(fn, args, atol=1e-7)


@pytest.mark.parametrize("stack", ["gru", "rnn_tanh", "lstm"])
def test_gradcheck_stacks(stack):
    gen = torch.Generator().manual_seed(13)
    g = 3 if stack == "gru" else 4 if stack == "lstm" else 1
    h, L, D = 3, 2, 2
    params = []
    for layer in range(L):
        for _ in range(D):
            params += [_leaf(g * h, I if layer == 0 else D * h, gen=gen), _leaf(g * h, h, gen=gen),
                       _leaf(g * h, gen=gen), _leaf(g * h, gen=gen)]
    x = _leaf(3, 2, I, gen=gen)
    if stack == "lstm":
        fn = lambda x, *p: torch_rnn_ext.lstm(x, [], list(p), True, L, 0.0, True, True, False)  # noqa: E731
    else:
        op = getattr(torch_rnn_ext, stack)
        fn = lambda x, *p: op(x, None, list(p), True, L, 0.0, True, True, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params), atol=1e-7)


@pytest.mark.parametrize("op,gates,two_states", [("lstm_cell", 4, True), ("gru_cell", 3, False),
                                                 ("rnn_tanh_cell", 1, False), ("rnn_relu_cell", 1, False)])
def test_gradcheck_cells(op, gates, two_states):
    gen = torch.Generator().manual_seed(14)
    B, h = 3, 4
    states = (_leaf(B, h, gen=gen), _leaf(B, h, gen=gen)) if two_states else (_leaf(B, h, gen=gen),)
    args = (_leaf(B, I, gen=gen), *states, _leaf(gates * h, I, gen=gen), _leaf(gates * h, h, gen=gen),
            _leaf(gates * h, gen=gen), _leaf(gates * h, gen=gen))
    assert torch.autograd.gradcheck(getattr(torch.ops.torch_rnn_ext, op), args, atol=1e-7)


# --- cells -----------------------------------------------------------------------------------------

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_hx", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name,kw", CELLS)
def test_cells_match_nn(name, kw, bias, given_hx, batched, dtype):
    torch.manual_seed(15)
    ref = getattr(nn, name)(I, H, bias=bias, **kw).to(dtype)
    ours = getattr(torch_rnn_ext, name)(I, H, bias=bias, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    lead = (4,) if batched else ()
    x = torch.randn(*lead, I, dtype=dtype)
    hx = None
    if given_hx:
        hx = (torch.randn(*lead, H, dtype=dtype), torch.randn(*lead, H, dtype=dtype)) if name == "LSTMCell" \
            else torch.randn(*lead, H, dtype=dtype)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out = m(xi, hx)
        outs = list(out) if isinstance(out, tuple) else [out]
        loss = sum((o * (k + 1)).sum() for k, o in enumerate(outs))
        results.append(outs + list(torch.autograd.grad(loss, [xi] + list(m.parameters()))))
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=RTOL[dtype])


@pytest.mark.parametrize("name,kw", CELLS)
def test_cell_is_one_op_call(name, kw):
    cell = getattr(torch_rnn_ext, name)(I, H, **kw)
    graph = str(torch.jit.trace(cell, (torch.randn(2, I),)).graph)
    calls = [line for line in graph.splitlines() if "torch_rnn_ext::" in line]
    assert len(calls) == 1, graph


@pytest.mark.parametrize("name,kw", CELLS)
def test_cells_raise_instead_of_crashing_on_malformed_shapes(name, kw):
    cell = getattr(torch_rnn_ext, name)(I, H, **kw)
    x = torch.randn(3, I)
    bad_states = [torch.randn(2, H), torch.randn(3, H + 1), torch.randn(3, H, 1)]
    for bad in bad_states:
        hx = (bad, torch.randn(3, H)) if name == "LSTMCell" else bad
        with pytest.raises(RuntimeError, match=r"hx"):
            cell(x, hx)
    if name == "LSTMCell":
        with pytest.raises(RuntimeError, match=r"cx: expected size \[3, 6\]"):
            cell(x, (torch.randn(3, H), torch.randn(3, H + 2)))
    with pytest.raises(RuntimeError, match=r"input: expected input_size 5"):
        cell(torch.randn(3, I + 1))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(2, 3, I))


# --- modules: construction, state, chunks, convert ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_names_shapes_order_init_and_all_weights_match_nn(kind):
    kw = dict(num_layers=2, bidirectional=True)
    torch.manual_seed(16)
    ref, _ = make_pair(kind, torch.float32, **kw)
    torch.manual_seed(16)
    _, ours = make_pair(kind, torch.float32, **kw)  # second construction under the same seed
    torch.manual_seed(16)
    fresh_ref = type(ref)(I, H, **dict(kw, **({"proj_size": P} if kind == "lstm_proj" else {}),
                                       **({"nonlinearity": kind.split("_")[1]} if kind.startswith("rnn") else {})))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    assert [[p.shape for p in layer] for layer in ours.all_weights] == \
        [[p.shape for p in layer] for layer in ref.all_weights]
    ours.flatten_parameters()
    # Initialisation: ours built under a seed equals torch.nn built under the same seed.
    torch.manual_seed(16)
    ours_seeded = type(ours)(I, H, **dict(kw, **({"proj_size": P} if kind == "lstm_proj" else {}),
                                          **({"nonlinearity": kind.split("_")[1]} if kind.startswith("rnn") else {})))
    for a, b in zip(ours_seeded.parameters(), fresh_ref.parameters()):
        assert torch.equal(a, b)
    # state_dict both ways
    ref.load_state_dict(ours_seeded.state_dict())
    ours.load_state_dict(fresh_ref.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_omitted_state_equals_zeros_and_chunks_equal_one_run(kind):
    _, ours = make_pair(kind, num_layers=2)
    x = torch.randn(10, 3, I, dtype=torch.float64)
    full_out, full_h = ours(x)
    ref_zero = make_hx(kind, ours, "padded", torch.float64, torch.Generator())
    zeros = tuple(torch.zeros_like(h) for h in ref_zero) if isinstance(ref_zero, tuple) else torch.zeros(
        2, 3, H, dtype=torch.float64)
    zeros = zeros if not isinstance(zeros, tuple) else tuple(z[:, :3] for z in zeros)
    z_out, z_h = ours(x, zeros)
    assert torch.equal(full_out, z_out)
    out1, h1 = ours(x[:4])
    out2, h2 = ours(x[4:], h1)
    torch.testing.assert_close(torch.cat([out1, out2]), full_out, atol=1e-12, rtol=0)
    for a, b in zip(tensors_of((out2, h2))[1:], tensors_of((full_out, full_h))[1:]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


class SmallModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, I)
        self.lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(2 * H, H, batch_first=True)
        self.cell = nn.GRUCell(H, H)
        self.head = nn.Linear(H, 3)

    def forward(self, tokens):
        y, _ = self.lstm(self.emb(tokens))
        y, h = self.gru(y)
        return self.head(self.cell(y[:, -1], h[0]))


def test_convert_keeps_outputs_weights_mode_and_identity():
    torch.manual_seed(17)
    model = SmallModel().double().train()
    tokens = torch.randint(0, 20, (4, 9))
    expected = model(tokens)
    lstm_obj, weight = model.lstm, model.lstm.weight_ih_l0
    assert torch_rnn_ext.convert(model) is model
    assert type(model.lstm) is torch_rnn_ext.LSTM and type(model.gru) is torch_rnn_ext.GRU
    assert type(model.cell) is torch_rnn_ext.GRUCell and type(model.head) is nn.Linear
    assert model.lstm is lstm_obj and model.lstm.weight_ih_l0 is weight
    assert model.training and weight.dtype == torch.float64
    torch.testing.assert_close(model(tokens), expected, atol=1e-10, rtol=0)
    model.eval()
    assert not model.lstm.training


def test_convert_replaces_a_bare_module_and_all_cell_kinds():
    m = nn.ModuleList([nn.LSTM(2, 3), nn.RNN(2, 3), nn.LSTMCell(2, 3), nn.RNNCell(2, 3, nonlinearity="relu")])
    torch_rnn_ext.convert(m)
    assert [type(x) for x in m] == [torch_rnn_ext.LSTM, torch_rnn_ext.RNN, torch_rnn_ext.LSTMCell,
                                    torch_rnn_ext.RNNCell]
    bare = torch_rnn_ext.convert(nn.GRU(2, 3))
    assert type(bare) is torch_rnn_ext.GRU


class ReversedLSTM(nn.LSTM):
    """A subclass of nn.LSTM with its own forward (runs the sequence backwards): convert must keep it."""

    def forward(self, x, hx=None):
        y, state = super().forward(x.flip(0), hx)
        return y.flip(0), state


class ScaledGRUCell(nn.GRUCell):
    def forward(self, x, hx=None):
        return 0.5 * super().forward(x, hx)


class WithSubclasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.custom = ReversedLSTM(I, H)
        self.plain = nn.LSTM(H, H)
        self.custom_cell = ScaledGRUCell(H, H)
        self.plain_cell = nn.GRUCell(H, H)

    def forward(self, x):
        y, _ = self.custom(x)
        y, _ = self.plain(y)
        return self.plain_cell(y[-1], self.custom_cell(y[-1]))


def test_convert_leaves_subclasses_alone_and_converts_the_plain_module_beside_them():
    torch.manual_seed(23)
    model = WithSubclasses().double()
    x = torch.randn(T, 3, I, dtype=torch.float64)
    expected, custom_out = model(x), model.custom(x)[0]
    modules = dict(model.named_modules())
    custom_weight = model.custom.weight_ih_l0
    assert torch_rnn_ext.convert(model) is model
    assert type(model.custom) is ReversedLSTM and type(model.custom_cell) is ScaledGRUCell
    assert type(model.plain) is torch_rnn_ext.LSTM and type(model.plain_cell) is torch_rnn_ext.GRUCell
    assert dict(model.named_modules()) == modules                    # every object kept, none replaced
    assert model.custom.weight_ih_l0 is custom_weight
    assert "forward" not in vars(model.custom)                       # its own class's forward, untouched
    assert torch.equal(model.custom(x)[0], custom_out)               # still torch.nn's kernels, reversed
    assert not torch.allclose(custom_out, nn.LSTM.forward(model.custom, x)[0])
    torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)
    bare = ReversedLSTM(I, H)
    assert torch_rnn_ext.convert(bare) is bare and type(bare) is ReversedLSTM


def test_convert_docstring_says_subclasses_are_left_alone():
    doc = " ".join(torch_rnn_ext.convert.__doc__.split())
    assert "Only exact instances are converted: subclasses of the torch.nn classes are left alone" in doc


# --- TorchScript, tracing, serialisation -----------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_script_trace_and_save_load(kind, tmp_path):
    ref, ours = make_pair(kind, torch.float32, num_layers=2, bidirectional=True)
    ours.eval()
    x = torch.randn(T, 2, I)
    expected = tensors_of(ours(x))
    scripted = torch.jit.script(ours)
    traced = torch.jit.trace(ours, (x,))
    for m in (scripted, traced):
        for a, b in zip(tensors_of(m(x)), expected):
            assert torch.equal(a, b)
    path = tmp_path / "m.pt"
    scripted.save(str(path))
    for a, b in zip(tensors_of(torch.jit.load(str(path))(x)), expected):
        assert torch.equal(a, b)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    for a, b in zip(tensors_of(torch.load(buf, weights_only=False)(x)), expected):
        assert torch.equal(a, b)
    assert sum("torch_rnn_ext::" in line for line in str(traced.graph).splitlines()) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_scripted_module_called_repeatedly_with_its_own_state(kind):
    # TorchScript specialises a graph on its first calls: hx=None first, then the carried state, must keep
    # working and equal eager (a streaming loop does exactly this).
    _, ours = make_pair(kind, torch.float32, num_layers=2, batch_first=True)
    scripted = torch.jit.script(ours)
    x = torch.randn(2, 3, I)
    s_state, e_state = None, None
    with torch.no_grad():
        for _ in range(4):
            s_out, s_state = scripted(x, s_state)
            e_out, e_state = ours(x, e_state)
            assert torch.equal(s_out, e_out)
    for a, b in zip(tensors_of((s_out, s_state)), tensors_of((e_out, e_state))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,kw", CELLS)
def test_cells_script(name, kw):
    cell = getattr(torch_rnn_ext, name)(I, H, **kw)
    x = torch.randn(3, I)
    out, ref = torch.jit.script(cell)(x), cell(x)
    for a, b in zip(out if isinstance(out, tuple) else [out], ref if isinstance(ref, tuple) else [ref]):
        assert torch.equal(a, b)


def assert_identical_across_threads(module, x, counts=(1, 2), lengths=None):
    """Runs module(x) (x packed with `lengths` when given) and the gradients of its outputs' sum at each
    torch thread count, asserts every tensor is bitwise equal across them, and returns the outputs (of the
    first run)."""
    results = []
    for n in counts:
        torch.set_num_threads(n)
        outs = tensors_of(module(x if lengths is None else pack_padded_sequence(x, lengths)))
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [x] + list(module.parameters()))
        results.append(outs + list(grads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    return results[0][:len(outs)]


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "lstm_proj"])
def test_identical_at_one_and_two_threads(kind, threads):
    _, ours = make_pair(kind, torch.float32, num_layers=2, bidirectional=True)
    assert_identical_across_threads(ours, torch.randn(12, 5, I, requires_grad=True))


@pytest.mark.parametrize("module,shape,counts", [
    # a step product of 16 rows (16 x 1024 x 256) large enough to be split over threads; its dW_hh
    # (1024 x 256 x 64) is above the BLAS size, made by BLAS at 1 thread (equal to 2 threads only to
    # rounding, as documented): bitwise from 2 threads up
    (lambda: torch_rnn_ext.LSTM(64, 256), (4, 16, 64), (2, 3)),
    # all-timestep products below the BLAS threshold (2^22 multiply-adds), split over threads
    # (240 x 256 x 64, 256 x 64 x 240, ...)
    (lambda: torch_rnn_ext.LSTM(64, 64), (60, 4, 64), (1, 2)),
    (lambda: torch_rnn_ext.GRU(64, 64), (60, 4, 64), (1, 2)),
    # steps of 64 x 1536 x 512 (2^25 multiply-adds): on MKL (torch 2.x) not shared out over the threads
    # but multiplied through fixed blocks (kernels::unshared_steps_on_mkl), elsewhere shared out
    (lambda: torch_rnn_ext.GRU(64, 512), (5, 64, 64), (2, 3, 4)),
])
def test_identical_across_thread_counts_where_products_split(module, shape, counts, threads):
    torch.manual_seed(5)
    m = module()
    x = torch.randn(*shape, requires_grad=True)
    outs = assert_identical_across_threads(m, x, counts)
    ref = (nn.LSTM if m.mode == "LSTM" else nn.GRU)(m.input_size, m.hidden_size)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(tensors_of(ref(x.detach())), [t.detach() for t in outs], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_identical_across_threads_for_packed_sequences(kind, threads):
    """From 2 threads up the time loop shares out the batch rows; with a PackedSequence the shares have
    different lengths and the last steps have one active row (the single-row kernel)."""
    torch.manual_seed(7)
    ref, ours = make_pair(kind, torch.float32, bidirectional=True)
    x = torch.randn(9, 5, I, requires_grad=True)
    lengths = [9, 6, 6, 2, 1]
    outs = assert_identical_across_threads(ours, x, counts=(1, 2, 3), lengths=lengths)
    torch.testing.assert_close(tensors_of(ref(pack_padded_sequence(x, lengths))), outs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,I,H", [("lstm", 256, 256), ("rnn", 2048, 64)])
def test_identical_across_thread_counts_above_one_where_products_are_large(kind, I, H, threads):
    """Products above kOwnProductMaxMacs (the input projection, 3200 x 1024 x 256) and steps of more than
    16 rows go to BLAS whole at 1 torch thread; from 2 threads up they run on our kernels over torch's
    threads or, on MKL (torch 2.x), as BLAS calls on fixed blocks of rows or columns (RNN(2048, 64)'s
    dW_ih, 64 x 2048 x 3200, by columns), bitwise identical for every count either way, and within float
    tolerance of the 1-thread result and nn."""
    torch.manual_seed(6)
    m = torch_rnn_ext.LSTM(I, H) if kind == "lstm" else torch_rnn_ext.RNN(I, H)
    x = torch.randn(100, 32, I, requires_grad=True)
    outs = assert_identical_across_threads(m, x, counts=(2, 3, 4))
    torch.set_num_threads(1)
    one = tensors_of(m(x))
    ref = nn.LSTM(I, H) if kind == "lstm" else nn.RNN(I, H)
    ref.load_state_dict(m.state_dict())
    for got in (one, outs):
        torch.testing.assert_close(tensors_of(ref(x.detach())), [t.detach() for t in got], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_identical_across_threads_for_large_packed_steps(kind, threads):
    """Steps of 2^25-2^26 multiply-adds (64 rows, hidden 512): on MKL not shared out over the threads, each
    step's product in fixed blocks and the backward's rows over the threads; with a PackedSequence (unsorted
    lengths, bidirectional) the steps' row counts vary. The same bits at 2, 3 and 4 threads; nn's values."""
    torch.manual_seed(3)
    ours, ref = getattr(torch_rnn_ext, kind)(64, 512, bidirectional=True), getattr(nn, kind)(64, 512, bidirectional=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(7, 64, 64, requires_grad=True)
    lengths = torch.randint(1, 8, (64,), generator=torch.Generator().manual_seed(4))
    lengths[0] = 7

    def run(module):
        out, h = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
        h = h[0] if isinstance(h, tuple) else h
        grads = torch.autograd.grad((out.data * out.data).sum() + h.sum(), [x] + list(module.parameters()))
        return [out.data, h] + list(grads)
    results = []
    for n in (2, 3, 4):
        torch.set_num_threads(n)
        results.append(run(ours))
    for n, other in zip((3, 4), results[1:]):
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), (kind, n)
    torch.testing.assert_close(results[0], run(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_steps_identical_across_thread_counts(cell, threads):
    """A cell's one step of 64 rows. On MKL (torch 2.x) it is not shared out over the threads but multiplied
    in fixed blocks (kernels::unshared_steps_on_mkl): the same bits at 2, 3 and 4 threads, and at 1 thread too
    while each product is one block (under 2^21 multiply-adds: 64 x 256 x 64 for the LSTM). Elsewhere
    (OpenBLAS) its rows are shared out like a layer's: the same bits from 2 threads up. Within float
    tolerance of nn either way."""
    torch.manual_seed(8)
    ours, ref = getattr(torch_rnn_ext, cell)(64, 64), getattr(nn, cell)(64, 64)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(64, 64, requires_grad=True)
    state = [torch.randn(64, 64, requires_grad=True) for _ in range(2 if cell == "LSTMCell" else 1)]
    hx = tuple(state) if cell == "LSTMCell" else state[0]
    counts = (1, 2, 3, 4) if torch.backends.mkl.is_available() else (2, 3, 4)
    results = []
    for n in counts:
        torch.set_num_threads(n)
        out = ours(x, hx)
        outs = list(out) if isinstance(out, tuple) else [out]
        grads = torch.autograd.grad(sum((o * o).sum() for o in outs), [x] + state + list(ours.parameters()))
        results.append(outs + list(grads))
    for n, other in zip(counts[1:], results[1:]):
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), (cell, counts[0], n)
    out = ref(x, hx)
    outs = list(out) if isinstance(out, tuple) else [out]
    grads = torch.autograd.grad(sum((o * o).sum() for o in outs), [x] + state + list(ref.parameters()))
    torch.testing.assert_close(results[0], outs + list(grads), rtol=1e-4, atol=1e-4)


# --- inference: no graph to record ----------------------------------------------------------------

@pytest.mark.parametrize("input_kind", INPUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_inference_runs_below_autograd_with_the_training_values(kind, bidirectional, input_kind):
    """Under no_grad, or with nothing requiring grad, the stack records nothing and makes no tracked views
    (its outputs are plain tensors, not views); the values are bitwise those of the forward that records
    a graph, and torch.nn's."""
    dtype = torch.float64
    gen = torch.Generator().manual_seed(11)
    ref, ours = make_pair(kind, dtype, num_layers=2, bidirectional=bidirectional,
                          batch_first=input_kind == "batch_first")
    x, packing = make_input(input_kind, dtype, gen)
    hx = make_hx(kind, ref, input_kind, dtype, gen)

    def run(module):
        inp = x if packing is None else pack_padded_sequence(x, packing[0], enforce_sorted=packing[1])
        return tensors_of(module(inp, hx))
    recorded = run(ours)
    assert all(t.grad_fn is not None for t in recorded)
    with torch.no_grad():
        no_grad, expected = run(ours), run(ref)
    ours.requires_grad_(False)
    frozen = run(ours)
    for r, n, f, e in zip(recorded, no_grad, frozen, expected):
        for t in (n, f):
            assert t.grad_fn is None and not t.requires_grad and not t._is_view()
            assert torch.equal(t, r.detach())
        torch.testing.assert_close(n, e, atol=TOL[dtype], rtol=RTOL[dtype])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_state_rank_must_match_the_input_like_nn(kind):
    ref, ours = make_pair(kind, torch.float64)
    for batched in (True, False):
        x = torch.randn(T, 3, I, dtype=torch.float64) if batched else torch.randn(T, I, dtype=torch.float64)
        lead = (1,) if batched else (1, 3)  # the other rank's states
        h = torch.zeros(*lead, H, dtype=torch.float64)
        hx = (h, h.clone()) if kind == "lstm" else h
        with pytest.raises(RuntimeError) as from_nn:
            ref(x, hx)
        with pytest.raises(RuntimeError, match=re.escape(str(from_nn.value))):
            ours(x, hx)
        with torch.no_grad(), pytest.raises(RuntimeError, match=re.escape(str(from_nn.value))):
            ours(x, hx)


def test_stack_op_rejects_input_of_other_ranks():
    _, ours = make_pair("lstm", torch.float64)
    for shape in [(I,), (2, T, 3, I)]:
        with pytest.raises(RuntimeError, match=r"input: expected a 3-D tensor \(seq_len, batch, input_size\) "
                                               r"or, unbatched, a 2-D tensor"):
            ours(torch.randn(*shape, dtype=torch.float64))


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
def test_module_hidden_size_message_like_nn(kind):
    _, ours = make_pair(kind, torch.float32, num_layers=2)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 3, 6\), got \[1, 3, 6\]"):
        ours(torch.randn(4, 3, I), torch.zeros(1, 3, H))


def test_constructor_arguments_checked_like_nn():
    with pytest.raises(ValueError, match="dropout"):
        torch_rnn_ext.LSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        torch_rnn_ext.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="nonlinearity"):
        torch_rnn_ext.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="proj_size"):
        torch_rnn_ext.GRU(3, 4, proj_size=2)


def test_stack_op_checks_hidden_and_params():
    w = [torch.randn(18, I), torch.randn(18, H)]
    x = torch.randn(4, 3, I)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 3, 6\), got \[1, 2, 6\]"):
        torch_rnn_ext.gru(x, torch.zeros(1, 2, H), w, False, 1, 0.0, False, False, False)
    with pytest.raises(RuntimeError, match=r"params: expected 2 tensors"):
        torch_rnn_ext.gru(x, None, w + w, False, 1, 0.0, False, False, False)
    with pytest.raises(RuntimeError, match=r"dropout: expected a probability"):
        torch_rnn_ext.gru(x, None, w, False, 1, 2.0, False, False, False)
    with pytest.raises(RuntimeError, match=r"weight_hr: only LSTM layers have a projection|params"):
        torch_rnn_ext.gru(x, None, w + [torch.randn(2, H)], False, 1, 0.0, False, False, False)
