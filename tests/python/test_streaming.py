"""The scan layers' forward_with_state: equals forward from allocate_state, interleaves with step, scripts."""
import pytest
import torch

import torch_rnn_ext

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
I, H, P = 5, 6, 3
SCHEDULES = {"ones": [1] * 11, "mixed": [3, 1, 4, 1, 2], "whole": [11]}
KINDS = ["lstm", "lstm_proj_2layers", "gru", "rnn_tanh", "rnn_relu", "mamba", "rwkv"]


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


# --- the scan layers' forward_with_state ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["mamba", "rwkv"])
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
