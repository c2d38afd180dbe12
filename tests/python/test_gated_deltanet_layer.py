"""GatedDeltaNet (Qwen3-Next's linear-attention layer) against a float64 reference written here (the
layer's equations from its state_dict, with the gated delta rule as a plain loop over time), and, in the 2.x
leg, against transformers' own ``Qwen3NextGatedDeltaNet`` (the same state_dict both ways); streaming
(forward_with_state, step, Streamer); gradients; TorchScript; bad input. Then ``convert`` of a small
random-config ``Qwen3NextForCausalLM`` (nothing is downloaded): logits, padding, cache, generate, gradients.

The layer tests run on both legs; the transformers tests need the transformers pinned with torch 2.x and are
reported as skipped, with the reason, on torch 1.13."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_rnn_ext
from torch_rnn_ext import GatedDeltaNet, Streamer

HAS_PT2 = int(torch.__version__.split(".")[0]) >= 2
needs_transformers = pytest.mark.skipif(
    not HAS_PT2, reason="needs torch 2.x and the transformers pinned with it in requirements.txt; runs in the 2.x "
    f"leg, this is torch {torch.__version__}")
if HAS_PT2:
    import transformers  # the 2.x leg must have it: an ImportError here fails the file loudly
    from transformers.models.qwen3_next import modeling_qwen3_next as hf_qwen3_next

    transformers.logging.set_verbosity_error()

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}

# (hidden_size, num_k_heads, num_v_heads, head_k_dim, head_v_dim, conv_kernel_size)
CONFIGS = {
    "grouped": (12, 2, 4, 4, 3, 4),    # each query/key head serves 2 value heads
    "equal_heads": (8, 3, 3, 5, 2, 2),
    "one_tap_conv": (6, 1, 2, 3, 4, 1),
}


def layer(config="grouped", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    hidden, h, hv, dk, dv, kernel = CONFIGS[config]
    m = GatedDeltaNet(hidden, num_k_heads=h, num_v_heads=hv, head_k_dim=dk, head_v_dim=dv,
                      conv_kernel_size=kernel, norm_eps=1e-5, dtype=dtype)
    with torch.no_grad():  # spread the parameters that start constant, so every term is exercised
        m.dt_bias.uniform_(-1, 1)
        m.norm.weight.uniform_(0.5, 1.5)
    return m


def inputs(m, batch=2, length=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, m.hidden_size, generator=g).to(m.A_log.dtype)


def assert_close(actual, expected, tol, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} x {scale:.3g}"


# --- the reference: float64, written from the equations ----------------------------------------------

def delta_rule_reference(q, k, v, g, beta, initial_state=None, l2norm=True):
    """The gated delta rule as a loop over time in float64. q, k (B, T, H, K); v (B, T, HV, V); g, beta
    (B, T, HV); state (B, HV, K, V). Returns (o (B, T, HV, V), final state)."""
    q, k, v, g, beta = (t.double() for t in (q, k, v, g, beta))
    batch, T, H, K = q.shape
    HV, V = v.shape[2:]
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    if l2norm:
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    S = torch.zeros(batch, HV, K, V, dtype=torch.float64) if initial_state is None else initial_state.double()
    outs = []
    for t in range(T):
        S = S * torch.exp(g[:, t])[:, :, None, None]
        kt = k[:, t]
        error = v[:, t] - torch.einsum("bhkv,bhk->bhv", S, kt)
        S = S + kt[:, :, :, None] * (beta[:, t, :, None] * error)[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * K ** -0.5))
    return torch.stack(outs, 1), S


def layer_reference(m, x, conv_state=None, state=None, params=None):
    """The Qwen3-Next Gated DeltaNet layer in float64 from m's parameters (or ``params``, a dict of the same
    names, e.g. tensors requiring grad): the in_proj_qkvz rows grouped per key head (q, k, then the head's
    value heads' v and z), the causal conv tap by tap from the carried inputs. Returns (out, conv_state,
    state)."""
    p = {n: t.double() for n, t in (params or dict(m.named_parameters())).items()}
    H, HV, dk, dv, K = m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim, m.conv_kernel_size
    r = HV // H
    x = x.double()
    batch, T, _ = x.shape
    per_head = (x @ p["in_proj_qkvz.weight"].t()).view(batch, T, H, 2 * dk + 2 * r * dv)
    q, k = per_head[..., :dk], per_head[..., dk:2 * dk]
    v = per_head[..., 2 * dk:2 * dk + r * dv].reshape(batch, T, HV, dv)
    z = per_head[..., 2 * dk + r * dv:].reshape(batch, T, HV, dv)
    ba = (x @ p["in_proj_ba.weight"].t()).view(batch, T, H, 2 * r)
    b, a = ba[..., :r].reshape(batch, T, HV), ba[..., r:].reshape(batch, T, HV)
    channels = torch.cat([q.reshape(batch, T, -1), k.reshape(batch, T, -1), v.reshape(batch, T, -1)], -1)
    past = torch.zeros(batch, K, channels.size(2), dtype=torch.float64) if conv_state is None \
        else conv_state.double().transpose(1, 2)
    seq = torch.cat([past, channels], 1)  # the K carried inputs, then the chunk
    w = p["conv1d.weight"][:, 0]  # (C, K): tap j multiplies the input K - 1 - j steps back
    conv = torch.stack([sum(w[:, j] * seq[:, t + 1 + j] for j in range(K)) for t in range(T)], 1)
    conv = F.silu(conv)
    qc, kc, vc = conv.split([H * dk, H * dk, HV * dv], -1)
    beta = torch.sigmoid(b)
    g = -torch.exp(p["A_log"]) * F.softplus(a + p["dt_bias"])
    o, S = delta_rule_reference(qc.reshape(batch, T, H, dk), kc.reshape(batch, T, H, dk),
                                vc.reshape(batch, T, HV, dv), g, beta, state)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + m.norm_eps) * p["norm.weight"] * F.silu(z)
    out = o.reshape(batch, T, HV * dv) @ p["out_proj.weight"].t()
    return out, seq[:, -K:].transpose(1, 2), S


# --- the layer against the reference ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_matches_float64_reference(config, dtype):
    m = layer(config, dtype)
    x = inputs(m, length=70)  # longer than one 64-step chunk
    with torch.no_grad():
        out = m(x)
    assert out.dtype == dtype and out.shape == x.shape
    expected = layer_reference(m, x)[0]
    assert expected.abs().max() > 0.1
    assert_close(out, expected, TOL[dtype], f"{config} {dtype}")


def test_parameters_shapes_and_initialisation():
    m = GatedDeltaNet(16, num_k_heads=2, num_v_heads=6, head_k_dim=4, head_v_dim=5, conv_kernel_size=3)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    conv_dim = 2 * 2 * 4 + 6 * 5
    assert shapes == {"dt_bias": (6,), "A_log": (6,), "conv1d.weight": (conv_dim, 1, 3),
                      "in_proj_qkvz.weight": (2 * 2 * 4 + 2 * 6 * 5, 16), "in_proj_ba.weight": (12, 16),
                      "norm.weight": (5,), "out_proj.weight": (16, 30)}
    assert list(m.state_dict()) == list(shapes)
    assert torch.equal(m.dt_bias, torch.ones(6)) and torch.equal(m.norm.weight, torch.ones(5))
    A = m.A_log.exp()
    assert (A >= 0.01 - 1e-6).all() and (A <= 16 + 1e-5).all() and A.std() > 0
    assert m.allocate_state(3)[0].shape == (3, conv_dim, 3) and m.allocate_state(3)[1].shape == (3, 6, 4, 5)
    d = GatedDeltaNet(8, 1, 1, 2, 2, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in d.parameters())
    assert d.allocate_state(1)[1].dtype == torch.float64
    assert "num_v_heads=1" in repr(d)


# --- streaming: forward_with_state, step, Streamer ----------------------------------------------------

@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_with_state_and_steps_equal_one_call(config):
    m = layer(config)
    x = inputs(m, length=11)
    with torch.no_grad():
        full = m(x)
        out, conv, state = m.forward_with_state(x, *m.allocate_state(2))
        assert_close(out, full, 1e-12, "forward_with_state from zeros")
        _, ref_conv, ref_state = layer_reference(m, x)
        assert_close(conv, ref_conv, 1e-12, "conv_state")
        assert_close(state, ref_state, TOL[torch.float64], "recurrent_state")
        # chunks of 3, 1 (a step), 5, then single steps
        s = m.allocate_state(2)
        a, *s = m.forward_with_state(x[:, :3], *s)
        b, *s = m.step(x[:, 3], *s)
        c, *s = m.forward_with_state(x[:, 4:9], *s)
        d, *s = m.step(x[:, 9], *s)
        e, *s = m.step(x[:, 10], *s)
    pieces = torch.cat([a, b.unsqueeze(1), c, d.unsqueeze(1), e.unsqueeze(1)], 1)
    assert_close(pieces, full, TOL[torch.float64], "chunks and steps")
    assert_close(s[0], conv, 1e-12, "final conv_state")
    assert_close(s[1], state, TOL[torch.float64], "final recurrent_state")


def test_states_from_outside_continue_the_sequence():
    # A nonzero starting state (the cache of an earlier prompt): our layer and the reference continue alike,
    # and the states passed in are left untouched.
    m = layer()
    x = inputs(m, length=6)
    g = torch.Generator().manual_seed(3)
    conv0 = torch.randn(2, m.conv_dim, m.conv_kernel_size, generator=g, dtype=torch.float64)
    state0 = torch.randn(2, m.num_v_heads, m.head_k_dim, m.head_v_dim, generator=g, dtype=torch.float64)
    keep = conv0.clone(), state0.clone()
    with torch.no_grad():
        out, conv, state = m.forward_with_state(x, conv0, state0)
        step_out = m.step(x[:, 0], conv0, state0)[0]
    ref_out, ref_conv, ref_state = layer_reference(m, x, conv0, state0)
    assert_close(out, ref_out, TOL[torch.float64], "out")
    assert_close(step_out, ref_out[:, 0], TOL[torch.float64], "step out")
    assert_close(conv, ref_conv, 1e-12, "conv_state")
    assert_close(state, ref_state, TOL[torch.float64], "state")
    assert torch.equal(conv0, keep[0]) and torch.equal(state0, keep[1])


class Block(nn.Module):
    """Per-timestep layers around two GatedDeltaNets (pre-norm residual blocks)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 12)
        self.norm = nn.LayerNorm(12)
        self.mixer = GatedDeltaNet(12, num_k_heads=2, num_v_heads=4, head_k_dim=4, head_v_dim=3)
        self.mixer2 = GatedDeltaNet(12, num_k_heads=1, num_v_heads=1, head_k_dim=6, head_v_dim=6,
                                    conv_kernel_size=3)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        y = self.inp(x)
        y = y + self.mixer(self.norm(y))
        y = y + self.mixer2(y)
        return self.head(y)


@pytest.mark.parametrize("schedule", [[1] * 9, [4, 1, 2, 2], [9]], ids=["ones", "mixed", "whole"])
def test_streamer_chunks_equal_full_sequence(schedule):
    torch.manual_seed(4)
    model = Block().double()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    stream = Streamer(model)
    assert [n for n, _, _ in stream._layers] == ["mixer", "mixer2"]
    with torch.no_grad():
        full = model(x)
        got = torch.cat([stream(c) for c in x.split(schedule, 1)], 1)
    assert_close(got, full, TOL[torch.float64], f"schedule {schedule}")
    assert sorted(stream.state) == ["mixer", "mixer2"]
    with torch.no_grad():
        _, conv, state = model.mixer.forward_with_state(model.norm(model.inp(x)), *model.mixer.allocate_state(2))
    assert_close(stream.state["mixer"][0], conv, 1e-12, "carried conv_state")
    assert_close(stream.state["mixer"][1], state, TOL[torch.float64], "carried recurrent_state")
    for m in model.modules():
        assert "forward" not in m.__dict__


def test_streamer_gradients_across_chunks_equal_full_bptt():
    torch.manual_seed(5)
    model = Block().double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    w = torch.randn(2, 7, 2, dtype=torch.float64)
    full = torch.autograd.grad((model(x) * w).sum(), list(model.parameters()))
    stream = Streamer(model)
    out = torch.cat([stream(c) for c in x.split([3, 4], 1)], 1)
    chunked = torch.autograd.grad((out * w).sum(), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), chunked, full):
        assert_close(a, b, 1e-10, name)


# --- gradients --------------------------------------------------------------------------------------

def test_gradients_match_float64_reference():
    m = layer("grouped")
    x = inputs(m, length=9).requires_grad_()
    g = torch.Generator().manual_seed(6)
    conv0 = torch.randn(2, m.conv_dim, m.conv_kernel_size, generator=g, dtype=torch.float64, requires_grad=True)
    state0 = torch.randn(2, m.num_v_heads, m.head_k_dim, m.head_v_dim, generator=g, dtype=torch.float64,
                         requires_grad=True)
    w = torch.randn(2, 9, m.hidden_size, generator=g, dtype=torch.float64)
    names, params = zip(*m.named_parameters())
    wrt = [x, conv0, state0] + list(params)
    out, conv, state = m.forward_with_state(x, conv0, state0)
    ours = torch.autograd.grad((out * w).sum() + state.sum() + conv.sum(), wrt)
    ref_params = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()}
    ref_wrt = [t.detach().clone().requires_grad_() for t in (x, conv0, state0)] + list(ref_params.values())
    r_out, r_conv, r_state = layer_reference(m, ref_wrt[0], ref_wrt[1], ref_wrt[2], params=ref_params)
    expected = torch.autograd.grad((r_out * w).sum() + r_state.sum() + r_conv.sum(), ref_wrt)
    for name, a, b in zip(["hidden_states", "conv_state", "recurrent_state"] + list(names), ours, expected):
        assert b.abs().max() > 0, name
        assert_close(a, b, 1e-9, f"grad of {name}")


def test_float32_training_step_runs_and_learns():
    torch.manual_seed(7)
    m = GatedDeltaNet(8, num_k_heads=1, num_v_heads=2, head_k_dim=4, head_v_dim=4)
    x, target = torch.randn(4, 10, 8), torch.randn(4, 10, 8)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(m(x), target)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


# --- TorchScript, pickling ------------------------------------------------------------------------

def test_scripted_layer_equals_eager():
    m = layer("grouped")
    x = inputs(m, length=5)
    scripted = torch.jit.script(m)
    with torch.no_grad():
        assert torch.equal(scripted(x), m(x))
        s_out, s_conv, s_state = scripted.forward_with_state(x, *scripted.allocate_state(2))
        out, conv, state = m.forward_with_state(x, *m.allocate_state(2))
        step = scripted.step(x[:, 0], *scripted.allocate_state(2))
        eager_step = m.step(x[:, 0], *m.allocate_state(2))
    assert torch.equal(s_out, out) and torch.equal(s_conv, conv) and torch.equal(s_state, state)
    assert all(torch.equal(a, b) for a, b in zip(step, eager_step))
    assert_close(step[0], out[:, 0], TOL[torch.float64], "scripted step")


def test_pickles():
    m = layer("equal_heads")
    back = pickle.loads(pickle.dumps(m))
    x = inputs(m, length=4)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(num_k_heads=2, num_v_heads=3), r"num_v_heads \(3\) must be a multiple of num_k_heads \(2\)"),
    (dict(num_k_heads=0), "num_k_heads must be a positive integer, got 0"),
    (dict(head_k_dim=-1), "head_k_dim must be a positive integer"),
    (dict(head_v_dim=2.0), "head_v_dim must be a positive integer, got 2.0"),
    (dict(conv_kernel_size=0), "conv_kernel_size must be a positive integer"),
    (dict(norm_eps=0.0), "norm_eps must be positive"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, match):
    args = dict(hidden_size=8, num_k_heads=1, num_v_heads=2, head_k_dim=2, head_v_dim=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GatedDeltaNet(**args)


def test_bad_inputs_and_states_name_the_argument():
    m = layer("grouped")  # hidden 12, float64
    conv, state = m.allocate_state(2)
    with pytest.raises(ValueError, match=r"GatedDeltaNet.forward: hidden_states: expected a tensor of size "
                                         r"\(batch, L, 12\), got \(2, 3, 11\)"):
        m(torch.randn(2, 3, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden_states"):
        m(torch.randn(3, 12, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"hidden_states: expected dtype torch.float64"):
        m(torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match=r"GatedDeltaNet.step: conv_state: expected size \(2, 28, 4\)"):
        m.step(torch.randn(2, 12, dtype=torch.float64), conv[:, :, :3], state)
    with pytest.raises(ValueError, match=r"GatedDeltaNet.step: recurrent_state: expected size \(2, 4, 4, 3\)"):
        m.step(torch.randn(2, 12, dtype=torch.float64), conv, state.transpose(2, 3))
    with pytest.raises(ValueError, match=r"recurrent_state: expected size \(3, 4, 4, 3\) \(batch 3"):
        m.forward_with_state(torch.randn(3, 2, 12, dtype=torch.float64), *m.allocate_state(3)[:1], state)
    with pytest.raises(TypeError, match=r"forward_with_state: recurrent_state: expected dtype torch.float64"):
        m.forward_with_state(torch.randn(2, 2, 12, dtype=torch.float64), conv, state.float())
    with pytest.raises(ValueError, match="forward_with_state: hidden_states: expected at least one token"):
        m.forward_with_state(torch.randn(2, 0, 12, dtype=torch.float64), conv, state)
    with pytest.raises(ValueError, match=r"forward: hidden_states: expected at least one token .* got \(2, 0, 12\)"):
        m(torch.randn(2, 0, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"step: hidden_states: expected a tensor of size \(batch, 12\)"):
        m.step(torch.randn(2, 1, 12, dtype=torch.float64), conv, state)


# --- transformers' Qwen3NextGatedDeltaNet --------------------------------------------------------------

def qwen3_next_config(config="grouped", **kw):
    hidden, h, hv, dk, dv, kernel = CONFIGS[config]
    args = dict(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, layer_types=["linear_attention"],
                linear_num_key_heads=h, linear_num_value_heads=hv, linear_key_head_dim=dk,
                linear_value_head_dim=dv, linear_conv_kernel_dim=kernel, rms_norm_eps=1e-5,
                num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    args.update(kw)
    return transformers.Qwen3NextConfig(**args)


def hf_delta_rule_float64(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
                          use_qk_l2norm_in_kernel=False, **kwargs):
    """transformers' torch_chunk/recurrent_gated_delta_rule (which compute in float32) in float64."""
    o, state = delta_rule_reference(query, key, value, g, beta, initial_state, use_qk_l2norm_in_kernel)
    return o.to(query.dtype), state if output_final_state else None


def hf_norm_float64(self, hidden_states, gate):
    """transformers' Qwen3NextRMSNormGated (which normalises in float32) in the input's dtype."""
    x = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * x * F.silu(gate)


@pytest.fixture
def hf_float64(monkeypatch):
    """transformers' Qwen3-Next with its recurrence in float64 (the rest of its code unchanged)."""
    monkeypatch.setattr(hf_qwen3_next, "torch_chunk_gated_delta_rule", hf_delta_rule_float64)
    monkeypatch.setattr(hf_qwen3_next, "torch_recurrent_gated_delta_rule", hf_delta_rule_float64)


@needs_transformers
def test_state_dict_round_trip_with_transformers():
    torch.manual_seed(0)
    theirs = hf_qwen3_next.Qwen3NextGatedDeltaNet(qwen3_next_config(), layer_idx=0)
    ours = layer("grouped", torch.float32, seed=1)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    x = inputs(ours, length=20)
    ours.load_state_dict(theirs.state_dict())          # theirs -> ours
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    with torch.no_grad():
        assert_close(ours(x), theirs(x), TOL[torch.float32], "after loading theirs")
    fresh = layer("grouped", torch.float32, seed=2)
    theirs.load_state_dict(fresh.state_dict())         # ours -> theirs
    with torch.no_grad():
        assert_close(theirs(x), fresh(x), TOL[torch.float32], "after loading ours")


@needs_transformers
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_transformers_layer_float32(config):
    # transformers' own layer as it runs on the CPU (its chunked torch fallback, in float32)
    m = layer(config, torch.float32)
    theirs = hf_qwen3_next.Qwen3NextGatedDeltaNet(qwen3_next_config(config), layer_idx=0)
    theirs.load_state_dict(m.state_dict())
    x = inputs(m, length=70)
    with torch.no_grad():
        expected = theirs(x)
        assert_close(m(x), expected, TOL[torch.float32], config)
    assert expected.abs().max() > 0.1


@needs_transformers
@pytest.mark.parametrize("config", list(CONFIGS))
def test_reference_is_transformers_layer_in_float64(config, hf_float64, monkeypatch):
    # transformers' layer in float64 (recurrence and gated norm taken in float64) against our layer and this
    # file's reference: the layout the reference assumes is transformers'. transformers still rounds A_log and
    # a to float32 in g (``-A_log.float().exp() * softplus(a.float() + dt_bias)``): agreement to that rounding
    # (a wrong layout is off by O(0.1)).
    monkeypatch.setattr(hf_qwen3_next.Qwen3NextRMSNormGated, "forward", hf_norm_float64)
    m = layer(config)
    theirs = hf_qwen3_next.Qwen3NextGatedDeltaNet(qwen3_next_config(config), layer_idx=0).double()
    theirs.load_state_dict(m.state_dict())
    x = inputs(m, length=10)
    with torch.no_grad():
        expected = theirs(x)
        assert_close(m(x), expected, 1e-6, f"{config}: ours")
    assert_close(layer_reference(m, x)[0], expected, 1e-6, f"{config}: reference")
    assert expected.abs().max() > 0.05


# --- convert() of a Qwen3-Next model --------------------------------------------------------------------

VOCAB = 50


def qwen3_next(dtype=torch.float32):
    torch.manual_seed(0)
    config = transformers.Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        mlp_only_layers=[1], use_cache=True, pad_token_id=0, experts_implementation="eager")
    model = transformers.Qwen3NextForCausalLM(config).to(dtype).eval()
    with torch.no_grad():  # transformers' init leaves dt_bias at 1, the norms at their identity: spread them
        for m in model.modules():
            if isinstance(m, hf_qwen3_next.Qwen3NextGatedDeltaNet):
                m.dt_bias.uniform_(-1, 1)
                m.norm.weight.uniform_(0.5, 1.5)
            elif isinstance(m, hf_qwen3_next.Qwen3NextRMSNorm):
                m.weight.uniform_(-0.5, 0.5)
    return model


def pair(dtype=torch.float32):
    ref = qwen3_next(dtype)
    return ref, torch_rnn_ext.convert(copy.deepcopy(ref))


def prompt(batch, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=g)


def run(model, ids, **kw):
    out = model(ids, output_hidden_states=True, **kw)
    return out.logits, out.hidden_states[-1], out


def assert_same_outputs(actual, expected, dtype, what):
    assert actual[0].dtype == expected[0].dtype == dtype
    assert_close(actual[0], expected[0], 1e-4 if dtype == torch.float32 else 1e-9, what + " logits")
    assert_close(actual[1], expected[1], 1e-4 if dtype == torch.float32 else 1e-9, what + " last hidden state")


def mixers(model):
    return [layer.linear_attn for layer in model.model.layers if hasattr(layer, "linear_attn")]


@needs_transformers
def test_convert_replaces_only_the_gated_deltanets_in_place():
    ref, ours = pair()
    keys, params = list(ours.state_dict()), list(ours.parameters())
    assert torch_rnn_ext.convert(ours) is ours
    converted = [m for m in ours.modules() if type(m).__module__ == "torch_rnn_ext.modules.hf"]
    assert converted == mixers(ours) and len(converted) == 3
    assert all(type(m).__name__ == "Qwen3NextGatedDeltaNet" and isinstance(m, hf_qwen3_next.Qwen3NextGatedDeltaNet)
               for m in converted)
    for a, b in zip(ref.modules(), ours.modules()):
        if type(a) is not hf_qwen3_next.Qwen3NextGatedDeltaNet:
            assert type(a) is type(b)
    assert list(ours.state_dict()) == list(ref.state_dict()) == keys and list(ours.parameters()) == params
    classes = [type(m) for m in ours.modules()]
    torch_rnn_ext.convert(ours)  # idempotent
    assert [type(m) for m in ours.modules()] == classes

    class Custom(hf_qwen3_next.Qwen3NextGatedDeltaNet):  # a user's subclass keeps its own forward
        pass

    m = qwen3_next()
    mixers(m)[0].__class__ = Custom
    torch_rnn_ext.convert(m)
    assert type(mixers(m)[0]) is Custom and type(mixers(m)[1]).__module__ == "torch_rnn_ext.modules.hf"


@needs_transformers
@pytest.mark.parametrize("length", [1, 9, 70])
def test_logits_equal_unconverted_float32(length):
    ref, ours = pair(torch.float32)
    ids = prompt(2, length)
    with torch.no_grad():
        expected, actual = run(ref, ids, use_cache=False), run(ours, ids, use_cache=False)
    assert_same_outputs(actual, expected, torch.float32, f"length {length}:")


@needs_transformers
@pytest.mark.parametrize("length", [1, 9, 70])
def test_logits_equal_unconverted_float64(length, hf_float64):
    # transformers computes the recurrence in float32 even in a float64 model: its recurrence is taken in
    # float64 here (everything else is its code), and then the converted model agrees to 1e-9
    ref, ours = pair(torch.float64)
    ids = prompt(2, length)
    with torch.no_grad():
        expected, actual = run(ref, ids, use_cache=False), run(ours, ids, use_cache=False)
    assert_same_outputs(actual, expected, torch.float64, f"length {length}:")


@needs_transformers
def test_float64_model_agrees_with_transformers_float32_recurrence():
    # unpatched transformers (its recurrence in float32): the converted float64 model agrees to float32 rounding
    ref, ours = pair(torch.float64)
    ids = prompt(2, 30)
    with torch.no_grad():
        expected, actual = run(ref, ids, use_cache=False), run(ours, ids, use_cache=False)
    assert_close(actual[0], expected[0], 1e-4, "logits")
    assert_close(actual[1], expected[1], 1e-4, "last hidden state")


@needs_transformers
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_with_padding_mask(dtype, request):
    if dtype == torch.float64:
        request.getfixturevalue("hf_float64")
    ref, ours = pair(dtype)
    ids = prompt(3, 20)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as generate pads
    mask[2, :12] = 0
    with torch.no_grad():
        expected = run(ref, ids, attention_mask=mask, use_cache=False)
        actual = run(ours, ids, attention_mask=mask, use_cache=False)
        unmasked = run(ours, ids, use_cache=False)
    assert_same_outputs(actual, expected, dtype, "with padding:")
    assert (unmasked[0][1:] - actual[0][1:]).abs().max() > 1e-3  # the mask matters


def cache_states(out, model):
    idx = [i for i, layer in enumerate(model.model.layers) if hasattr(layer, "linear_attn")]
    return [t for i in idx for t in (out.cache.get_conv_state(i), out.cache.get_recurrent_state(i))]


@needs_transformers
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cache_states_after_prompt(dtype, request):
    if dtype == torch.float64:
        request.getfixturevalue("hf_float64")
    ref, ours = pair(dtype)
    ids = prompt(2, 33)
    with torch.no_grad():
        expected, actual = run(ref, ids, use_cache=True), run(ours, ids, use_cache=True)
    assert_same_outputs(actual, expected, dtype, "prompt with cache:")
    states_a, states_e = cache_states(actual[2], ours), cache_states(expected[2], ref)
    assert len(states_a) == 6
    for i, (a, e) in enumerate(zip(states_a, states_e)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"state {i}: {a.dtype} {e.dtype}"
        assert_close(a, e, 1e-4 if dtype == torch.float32 else 1e-9, f"state {i}")


@needs_transformers
@pytest.mark.parametrize("cuts", [(8, 9, 10, 11), (6, 13)], ids=["prompt-then-tokens", "prompt-in-pieces"])
def test_calls_with_the_cache_continue_the_sequence(cuts, hf_float64):
    # A prompt then one token per call (the cached decode step), or a prompt in multi-token pieces, with the
    # cache carried, give what one call over the whole sequence gives; the same as transformers' own.
    ref, ours = pair(torch.float64)
    ids = prompt(2, 14)
    bounds = (0,) + cuts + (14,)
    with torch.no_grad():
        whole = run(ours, ids, use_cache=False)[1]
        for model in (ours, ref):
            pieces, out = [], None
            for a, b in zip(bounds, bounds[1:]):
                kw = {} if out is None else {"cache": out.cache}
                _, last, out = run(model, ids[:, a:b], use_cache=True, **kw)
                pieces.append(last)
            assert_close(torch.cat(pieces, 1), whole, 1e-9, f"pieces {bounds}")


@needs_transformers
def test_generate_same_tokens():
    ref, ours = pair(torch.float32)
    ids = prompt(2, 9)
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = ref.generate(ids, **kwargs)
        actual = ours.generate(ids, **kwargs)
    assert expected.shape == (2, 9 + 24)
    assert torch.equal(actual, expected)
    assert len(set(expected[0, 9:].tolist())) > 1  # not a constant continuation


@needs_transformers
def test_generate_left_padded_batch(hf_float64):
    ref, ours = pair(torch.float64)
    ids = prompt(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    ids[1, :4] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kwargs), ref.generate(ids, **kwargs))


@needs_transformers
def test_training_gradients_equal(hf_float64):
    ref, ours = pair(torch.float64)
    ref.train(), ours.train()
    ids = prompt(2, 20)
    grads = []
    for model in (ref, ours):
        model.zero_grad()
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("linear_attn.A_log" in n for n in grads[0]) and len(grads[0]) > 20
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], 1e-8, f"grad {name}")


@needs_transformers
def test_converted_model_pickles():
    _, ours = pair()
    ids = prompt(1, 5)
    back = pickle.loads(pickle.dumps(ours))
    assert [type(m) for m in back.modules()] == [type(m) for m in ours.modules()]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)


@needs_transformers
def test_bfloat16_model_runs_close_to_unconverted():
    # the recurrence runs in float32 and casts back, as transformers' fallback does; its state stays float32
    ref, ours = pair(torch.bfloat16)
    ids = prompt(1, 30)
    with torch.no_grad():
        expected, actual = ref(ids, use_cache=True), ours(ids, use_cache=True)
    assert actual.logits.dtype == expected.logits.dtype == torch.bfloat16
    assert torch.isfinite(actual.logits).all()
    err = (actual.logits.float() - expected.logits.float()).abs().max().item()
    assert err <= 0.05 * max(1.0, expected.logits.float().abs().max().item()), err
    assert actual.cache.get_recurrent_state(0).dtype == expected.cache.get_recurrent_state(0).dtype == torch.float32
