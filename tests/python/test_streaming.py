"""Streamer (torch_rnn_ext.streaming) and the scan layers' forward_with_state: chunk-by-chunk equals the
full-sequence forward for every recurrent kind, layout and chunking; independent streams over shared
weights; explicit hx; reset/detach/state; gradients within and across chunks; a truncated-BPTT loop that
learns; bad models."""
import pytest
import torch
from torch import nn

import torch_rnn_ext
from torch_rnn_ext import Streamer

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
I, H, P = 5, 6, 3
SCHEDULES = {"ones": [1] * 11, "mixed": [3, 1, 4, 1, 2], "whole": [11]}
KINDS = ["lstm", "lstm_proj_2layers", "gru", "rnn_tanh", "rnn_relu", "mamba", "rwkv", "gated_deltanet"]


def make_layer(kind, dtype, batch_first=True):
    torch.manual_seed(0)
    if kind == "lstm":
        m = torch_rnn_ext.LSTM(I, H, batch_first=batch_first)
    elif kind == "lstm_proj_2layers":
        m = torch_rnn_ext.LSTM(I, H, num_layers=2, proj_size=P, batch_first=batch_first)
    elif kind == "gru":
        m = torch_rnn_ext.GRU(I, H, num_layers=2, batch_first=batch_first)
    elif kind.startswith("rnn"):
        m = torch_rnn_ext.RNN(I, H, nonlinearity=kind.split("_")[1], batch_first=batch_first)
    elif kind == "mamba":
        m = torch_rnn_ext.MambaMixer(I, d_state=4, d_conv=3)
    elif kind == "gated_deltanet":
        m = torch_rnn_ext.GatedDeltaNet(I, num_k_heads=1, num_v_heads=2, head_k_dim=3, head_v_dim=2,
                                        conv_kernel_size=3)
    else:
        m = torch_rnn_ext.RWKV4TimeMix(I, layer_id=1, n_layer=3)
    return m.to(dtype)


def output_of(result):
    return result[0] if isinstance(result, tuple) else result


def assert_close(a, b, dtype):
    torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=0)


def run_chunks(stream, x, sizes, dim=1):
    assert sum(sizes) == x.size(dim)
    return [stream(chunk) for chunk in x.split(sizes, dim=dim)]


# --- parity: chunk by chunk equals one call ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", KINDS)
def test_chunks_equal_full_sequence(kind, schedule, dtype):
    layer = make_layer(kind, dtype)
    x = torch.randn(2, 11, I, dtype=dtype)
    with torch.no_grad():
        full = layer(x)
        stream = Streamer(layer)
        results = run_chunks(stream, x, SCHEDULES[schedule])
    assert_close(torch.cat([output_of(r) for r in results], 1), output_of(full), dtype)
    if isinstance(full, tuple):  # LSTM/GRU/RNN: the returned and carried final states equal the full run's
        for got in (results[-1][1], stream.state[""]):
            for a, b in zip(got if isinstance(got, tuple) else [got], full[1] if isinstance(full[1], tuple)
                            else [full[1]]):
                assert_close(a, b, dtype)
    else:  # scans: the carried states equal forward_with_state's over the whole sequence
        with torch.no_grad():
            _, *states = layer.forward_with_state(x, *layer.allocate_state(2))
        for a, b in zip(stream.state[""], states):
            assert_close(a, b, dtype)


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("kind", ["lstm_proj_2layers", "gru", "rnn_tanh"])
def test_rnn_layouts_carry_state_in_the_shape_the_layer_returns(kind, layout):
    dtype = torch.float64
    layer = make_layer(kind, dtype, batch_first=(layout == "batch_first"))
    x = torch.randn(3, 11, I, dtype=dtype) if layout == "batch_first" else \
        torch.randn(11, 3, I, dtype=dtype) if layout == "time_major" else torch.randn(11, I, dtype=dtype)
    tdim = 1 if layout == "batch_first" else 0
    full_out, full_h = layer(x)
    stream = Streamer(layer)
    results = run_chunks(stream, x, SCHEDULES["mixed"], dim=tdim)
    assert_close(torch.cat([r[0] for r in results], tdim), full_out, dtype)
    carried = stream.state[""]
    for a, b in zip(carried if isinstance(carried, tuple) else [carried],
                    full_h if isinstance(full_h, tuple) else [full_h]):
        assert a.shape == b.shape
        assert_close(a, b, dtype)


class Mixed(nn.Module):
    """Per-timestep layers (Linear, LayerNorm, a residual) around every recurrent kind; one LSTMCell
    (not a sequence layer: left alone) used per timestep on a fixed state."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(I, 8)
        self.lstm = torch_rnn_ext.LSTM(8, 8, num_layers=2, proj_size=4, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.mamba = torch_rnn_ext.MambaMixer(4, d_state=4, d_conv=4)
        self.gru = torch_rnn_ext.GRU(4, 6, batch_first=True)
        self.rwkv = torch_rnn_ext.RWKV4TimeMix(6)
        self.rnn = torch_rnn_ext.RNN(6, 5, nonlinearity="relu", batch_first=True)
        self.cell = torch_rnn_ext.LSTMCell(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y, _ = self.lstm(torch.tanh(self.inp(x)))
        y = self.after_lstm(y)
        y = y + self.mamba(self.norm(y))
        y, _ = self.gru(y)
        y = y + self.rwkv(y)
        y, _ = self.rnn(y)
        b, t, c = y.shape
        h, _ = self.cell(y.reshape(b * t, c))
        return self.head(h.reshape(b, t, c))

    def after_lstm(self, y):
        """A per-timestep hook between the LSTM and the rest (test_concurrency pauses a thread there)."""
        return y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixed_model_chunks_equal_full_sequence(dtype):
    torch.manual_seed(1)
    model = Mixed().to(dtype)
    x = torch.randn(2, 11, I, dtype=dtype)
    stream = Streamer(model)
    assert [n for n, _, _ in stream._layers] == ["lstm", "mamba", "gru", "rwkv", "rnn"]
    with torch.no_grad():
        full = model(x)
        for schedule in SCHEDULES.values():
            stream.reset()
            got = torch.cat(run_chunks(stream, x, schedule), 1)
            assert_close(got, full, dtype)
    assert sorted(stream.state) == ["gru", "lstm", "mamba", "rnn", "rwkv"]


def test_nn_layers_stream_too():
    torch.manual_seed(2)
    model = nn.Sequential(nn.LSTM(I, H, batch_first=True))
    x = torch.randn(2, 11, I, dtype=torch.float32)
    full = model(x)[0]
    got = torch.cat([r[0] for r in run_chunks(Streamer(model), x, SCHEDULES["mixed"])], 1)
    assert_close(got, full, torch.float32)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch_rnn_ext.GRU(I, I, batch_first=True)

    def forward(self, x):
        return self.gru(self.gru(x)[0])[0]


def test_a_layer_called_twice_has_one_state_per_call():
    model = Twice().double()
    x = torch.randn(2, 11, I, dtype=torch.float64)
    stream = Streamer(model)
    got = torch.cat(run_chunks(stream, x, SCHEDULES["mixed"]), 1)
    assert_close(got, model(x), torch.float64)
    assert sorted(stream.state) == ["gru", "gru#1"]


# --- streams, the model object, explicit hx -------------------------------------------------------

def test_streams_are_independent_and_the_model_is_unchanged_between_calls():
    torch.manual_seed(3)
    model = Mixed().double()
    x1, x2 = torch.randn(2, 11, I, dtype=torch.float64), torch.randn(1, 11, I, dtype=torch.float64)
    s1, s2 = Streamer(model), Streamer(model)
    out1, out2 = [], []
    for a, b in zip(x1.split(SCHEDULES["mixed"], 1), x2.split(SCHEDULES["mixed"], 1)):  # interleaved
        out1.append(s1(a))
        out2.append(s2(b))
        for m in model.modules():
            assert "forward" not in m.__dict__
    assert_close(torch.cat(out1, 1), model(x1), torch.float64)
    assert_close(torch.cat(out2, 1), model(x2), torch.float64)
    assert s1.state["lstm"][0].shape[1] == 2 and s2.state["lstm"][0].shape[1] == 1


class ExplicitHx(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch_rnn_ext.GRU(I, H, batch_first=True)
        self.dec = torch_rnn_ext.LSTM(I, H, batch_first=True)

    def forward(self, x, h0, c0):
        y, _ = self.dec(x, (h0, c0))  # its own state: kept
        z, _ = self.enc(x)            # hx=None: carried
        return y, z


def test_explicit_hx_is_kept_and_not_carried():
    model = ExplicitHx().double()
    x = torch.randn(2, 11, I, dtype=torch.float64)
    h0, c0 = torch.randn(1, 2, H, dtype=torch.float64), torch.randn(1, 2, H, dtype=torch.float64)
    stream = Streamer(model)
    ys, zs = zip(*[stream(chunk, h0, c0) for chunk in x.split(SCHEDULES["mixed"], 1)])
    for chunk, y in zip(x.split(SCHEDULES["mixed"], 1), ys):
        assert_close(y, model.dec(chunk, (h0, c0))[0], torch.float64)
    assert_close(torch.cat(zs, 1), model.enc(x)[0], torch.float64)
    assert list(stream.state) == ["enc"]


def test_reset_and_state_restore():
    torch.manual_seed(4)
    model = Mixed().double()
    x = torch.randn(2, 8, I, dtype=torch.float64)
    stream = Streamer(model)
    first = stream(x[:, :3])
    saved = stream.state
    second = stream(x[:, 3:])
    stream.state = saved                 # rewind one chunk
    assert_close(stream(x[:, 3:]), second, torch.float64)
    stream.reset()
    assert stream.state == {}
    assert_close(stream(x[:, :3]), first, torch.float64)


def test_changing_batch_size_without_reset_raises():
    stream = Streamer(torch_rnn_ext.LSTM(I, H, batch_first=True))
    stream(torch.randn(2, 3, I))
    with pytest.raises(RuntimeError):
        stream(torch.randn(3, 3, I))
    stream.reset()
    stream(torch.randn(3, 3, I))


# --- gradients and truncated BPTT -----------------------------------------------------------------

def test_without_detach_gradients_equal_full_bptt():
    torch.manual_seed(5)
    model = Mixed().double()
    x = torch.randn(2, 11, I, dtype=torch.float64)
    w = torch.randn(2, 11, 2, dtype=torch.float64)
    full = torch.autograd.grad((model(x) * w).sum(), list(model.parameters()))
    stream = Streamer(model)
    outs = torch.cat(run_chunks(stream, x, SCHEDULES["mixed"]), 1)
    chunked = torch.autograd.grad((outs * w).sum(), list(model.parameters()))
    for a, b in zip(chunked, full):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_detach_cuts_the_graph_and_keeps_values(kind):
    layer = make_layer(kind, torch.float64)
    x = torch.randn(2, 7, I, dtype=torch.float64, requires_grad=True)
    stream = Streamer(layer)
    output_of(stream(x[:, :4]))
    before = stream.state[""]
    tensors = before if isinstance(before, tuple) else (before,)
    assert any(t.grad_fn is not None for t in tensors)
    stream.detach()
    after = stream.state[""]
    after = after if isinstance(after, tuple) else (after,)
    for a, b in zip(after, tensors):
        assert a.grad_fn is None and not a.requires_grad and torch.equal(a, b)
    # The next chunk's gradient flows within the chunk (to its input and the weights), not to x[:, :4].
    out = output_of(stream(x[:, 4:]))
    gx, = torch.autograd.grad(out.sum(), [x])
    assert gx[:, :4].abs().max() == 0 and gx[:, 4:].abs().max() > 0
    # Equal to running the layer by hand on the detached state.
    if isinstance(layer, nn.RNNBase):
        by_hand = layer(x[:, 4:], before.detach() if not isinstance(before, tuple)
                        else tuple(t.detach() for t in before))
    else:
        by_hand = layer.forward_with_state(x[:, 4:], *(t.detach() for t in before))
    assert_close(out, output_of(by_hand), torch.float64)


def test_no_grad_leaves_no_graph():
    model = Mixed()
    x = torch.randn(2, 5, I)
    stream = Streamer(model)
    with torch.no_grad():
        y = stream(x)
    assert not y.requires_grad
    for state in stream.state.values():
        assert all(t.grad_fn is None for t in state)


def test_truncated_bptt_loop_learns_a_delay_across_chunk_boundaries():
    # Target: the input's first channel two steps ago. Chunks of 4 steps, so half the targets depend on
    # the previous chunk, reached only through the carried state.
    torch.manual_seed(6)
    model = nn.Sequential()
    model.rnn = torch_rnn_ext.LSTM(1, 16, batch_first=True)
    head = nn.Linear(16, 1)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=0.03)
    stream = Streamer(model)
    x = torch.randn(8, 200, 1)
    target = torch.cat([torch.zeros(8, 2, 1), x[:, :-2]], 1)
    losses = []
    for epoch in range(4):
        stream.reset()
        total = 0.0
        for xc, tc in zip(x.split(4, 1), target.split(4, 1)):
            loss = ((head(stream(xc)[0]) - tc) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            stream.detach()
            total += loss.item()
        losses.append(total / 50)
    assert losses[-1] < 0.2 * losses[0], losses


# --- the scan layers' forward_with_state ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["mamba", "rwkv", "gated_deltanet"])
def test_forward_with_state_equals_forward_interleaves_with_step_and_scripts(kind):
    layer = make_layer(kind, torch.float64)
    x = torch.randn(2, 9, I, dtype=torch.float64)
    full = layer(x)
    out, *states = layer.forward_with_state(x, *layer.allocate_state(2))
    assert_close(out, full, torch.float64)
    # chunk, one step, chunk: the states are the same kind as step()'s
    s = layer.allocate_state(2)
    a, *s = layer.forward_with_state(x[:, :4], *s)
    b, *s = layer.step(x[:, 4], *s)
    c, *s = layer.forward_with_state(x[:, 5:], *s)
    assert_close(torch.cat([a, b.unsqueeze(1), c], 1), full, torch.float64)
    for got, want in zip(s, states):
        assert_close(got, want, torch.float64)
    scripted = torch.jit.script(layer)
    s_out, *s_states = scripted.forward_with_state(x, *scripted.allocate_state(2))
    assert torch.equal(s_out, out)


# --- bad models -------------------------------------------------------------------------------------

def test_bidirectional_layer_is_refused_by_name():
    model = nn.Sequential(nn.Linear(I, I))
    model.add_module("enc", torch_rnn_ext.GRU(I, H, bidirectional=True))
    with pytest.raises(ValueError, match=r"'enc' \(GRU\) is bidirectional"):
        Streamer(model)
    with pytest.raises(ValueError, match=r"the model itself \(LSTM\) is bidirectional"):
        Streamer(torch_rnn_ext.LSTM(I, H, bidirectional=True))


def test_torchscript_models_are_refused():
    with pytest.raises(TypeError, match="TorchScript"):
        Streamer(torch.jit.script(torch_rnn_ext.LSTM(I, H)))
    model = nn.Sequential(torch.jit.script(torch_rnn_ext.GRU(I, H)))
    with pytest.raises(TypeError, match=r"'0' \(RecursiveScriptModule\) is a TorchScript module"):
        Streamer(model)


class Nested(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inner_stream = Streamer(inner)

    def forward(self, x):
        return self.inner_stream(x)


def test_overlapping_calls_on_one_model_raise():
    inner = nn.Sequential(torch_rnn_ext.LSTM(I, H))
    outer = Streamer(Nested(inner))
    with pytest.raises(RuntimeError, match="already being streamed"):
        outer(torch.randn(3, 2, I))
    for m in inner.modules():  # and everything was uninstalled
        assert "forward" not in m.__dict__
    inner(torch.randn(3, 2, I))
