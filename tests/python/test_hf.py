"""convert() on Hugging Face transformers' Mamba and RWKV-4 models: the converted model (scans by our ops)
against the same model unconverted (transformers' pure-PyTorch CPU paths), on small random-config models
(nothing is downloaded). transformers is pinned in the torch 2.x environment: in the 1.13 leg these are
reported as skipped, with the reason."""
import copy
import pickle

import pytest
import torch
from torch import nn

import torch_rnn_ext

HAS_PT2 = int(torch.__version__.split(".")[0]) >= 2
pytestmark = pytest.mark.skipif(not HAS_PT2, reason="needs torch 2.x and the transformers pinned with it in "
                                f"requirements.txt; runs in the 2.x leg, this is torch {torch.__version__}")
if HAS_PT2:
    import transformers  # the 2.x leg must have it: an ImportError here fails the file loudly
    from transformers.models.mamba import modeling_mamba
    from transformers.models.rwkv import modeling_rwkv

    transformers.logging.set_verbosity_error()  # RWKV warns that it ignores attention_mask

VOCAB = 50
TOL = {torch.float32: 1e-4, torch.float64: 1e-9}


def mamba(dtype=torch.float32, layers=2):
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=layers,
                                      expand=2, conv_kernel=4, use_cache=True)
    return transformers.MambaForCausalLM(config).to(dtype).eval()


def rwkv(dtype=torch.float32, layers=2):
    torch.manual_seed(0)
    config = transformers.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers,
                                     attention_hidden_size=32, intermediate_size=64, context_length=1024,
                                     rescale_every=0, use_cache=True)
    model = transformers.RwkvForCausalLM(config).to(dtype).eval()
    with torch.no_grad():  # transformers' init leaves time_first / time_decay near 0: give them a spread
        for block in model.rwkv.blocks:
            block.attention.time_decay.uniform_(-3, 1)
            block.attention.time_first.uniform_(-1, 1)
    return model


FAMILIES = {"mamba": mamba, "rwkv": rwkv}
MIXER = {"mamba": "MambaMixer", "rwkv": "RwkvSelfAttention"}


def pair(family, dtype=torch.float32, layers=2):
    ref = FAMILIES[family](dtype, layers)
    ours = torch_rnn_ext.convert(copy.deepcopy(ref))
    return ref, ours


def assert_close(actual, expected, dtype, what):
    tol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} x {scale:.3g}"


def run(model, ids, **kw):
    """(logits, the last hidden state): transformers' Mamba returns float32 logits even for a float64 model,
    so the float64 comparison is made on the hidden state."""
    out = model(ids, output_hidden_states=True, **kw)
    return out.logits, out.hidden_states[-1], out


def assert_same_outputs(actual, expected, dtype, what):
    assert actual[0].dtype == expected[0].dtype and actual[1].dtype == dtype
    assert_close(actual[0], expected[0], torch.float32, what + " logits")
    assert_close(actual[1], expected[1], dtype, what + " last hidden state")


def prompt(batch, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_converts_only_the_mixers_in_place(family):
    ref, ours = pair(family)
    keys_before = list(ours.state_dict())
    params_before = [p for p in ours.parameters()]
    assert torch_rnn_ext.convert(ours) is ours
    converted = [m for m in ours.modules() if type(m).__module__ == "torch_rnn_ext.modules.hf"]
    assert len(converted) == 2 and all(type(m).__name__ == MIXER[family] for m in converted)
    hf_class = getattr(modeling_mamba if family == "mamba" else modeling_rwkv, MIXER[family])
    assert all(isinstance(m, hf_class) for m in converted)
    # everything else keeps its class; parameters, keys, dtype and mode unchanged
    for a, b in zip(ref.modules(), ours.modules()):
        if type(a) is not hf_class:
            assert type(a) is type(b)
    assert list(ours.state_dict()) == list(ref.state_dict()) == keys_before
    assert [p for p in ours.parameters()] == params_before
    assert not ours.training


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_is_idempotent_and_leaves_unknown_models(family):
    _, ours = pair(family)
    classes = [type(m) for m in ours.modules()]
    torch_rnn_ext.convert(ours)
    assert [type(m) for m in ours.modules()] == classes
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    assert torch_rnn_ext.convert(plain) is plain and [type(m) for m in plain] == [nn.Linear, nn.ReLU]

    hf_class = getattr(modeling_mamba if family == "mamba" else modeling_rwkv, MIXER[family])

    class Custom(hf_class):  # a user's subclass keeps its own forward
        pass

    m = FAMILIES[family]()
    first = next(x for x in m.modules() if type(x) is hf_class)
    first.__class__ = Custom
    torch_rnn_ext.convert(m)
    assert type(first) is Custom


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 7, 300])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_unconverted(family, length, dtype):
    ref, ours = pair(family, dtype)
    ids = prompt(2, length)
    with torch.no_grad():
        expected = run(ref, ids, use_cache=False)
        actual = run(ours, ids, use_cache=False)
    assert_same_outputs(actual, expected, dtype, f"{family}, length {length}:")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_with_padding_mask(family, dtype):
    ref, ours = pair(family, dtype)
    ids = prompt(3, 20)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as generate pads
    mask[2, :12] = 0
    with torch.no_grad():
        expected = run(ref, ids, attention_mask=mask, use_cache=False)
        actual = run(ours, ids, attention_mask=mask, use_cache=False)
    assert_same_outputs(actual, expected, dtype, f"{family} with padding:")


def states(family, out, layers=2):
    if family == "rwkv":
        return list(out.state)
    cache = out.cache
    return [t for i in range(layers) for t in (cache.get_conv_state(i), cache.get_recurrent_state(i))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_state_after_prompt(family, dtype):
    ref, ours = pair(family, dtype)
    ids = prompt(2, 33)
    with torch.no_grad():
        expected, actual = run(ref, ids, use_cache=True), run(ours, ids, use_cache=True)
    assert_same_outputs(actual, expected, dtype, family)
    for i, (a, e) in enumerate(zip(states(family, actual[2]), states(family, expected[2]))):
        assert a.dtype == e.dtype and a.shape == e.shape, f"state {i}"
        assert_close(a.to(dtype), e.to(dtype), dtype, f"{family} state {i}")


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_same_tokens(family):
    ref, ours = pair(family)
    # transformers' RWKV decodes batch 1 only: with state and one token, extract_key_value broadcasts the
    # (batch, hidden) shift state against (batch, 1, hidden) into (batch, batch, hidden)
    batch = 1 if family == "rwkv" else 2
    ids = prompt(batch, 9)
    kwargs = dict(max_new_tokens=32, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = ref.generate(ids, **kwargs)
        actual = ours.generate(ids, **kwargs)
    assert expected.shape == (batch, 9 + 32)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("cuts", [(8, 9, 10, 11), (6, 13)], ids=["prompt-then-tokens", "prompt-in-pieces"])
@pytest.mark.parametrize("family", FAMILIES)
def test_calls_with_the_cache_continue_the_sequence(family, cuts):
    # A prompt then one token per call (decoding), or a prompt in multi-token pieces, with the cache carried,
    # gives what one call over the whole sequence gives. (transformers' own Mamba path starts a multi-token
    # call's scan from zeros; its RWKV path continues too.)
    _, ours = pair(family, torch.float64)
    ids = prompt(2 if family == "mamba" else 1, 14)  # RWKV: batch 1 (see test_generate_same_tokens)
    bounds = (0,) + cuts + (14,)
    with torch.no_grad():
        whole = run(ours, ids, use_cache=False)[1]
        pieces, out = [], None
        for a, b in zip(bounds, bounds[1:]):
            kw = {} if out is None else ({"state": out.state} if family == "rwkv" else {"cache": out.cache})
            _, last, out = run(ours, ids[:, a:b], use_cache=True, **kw)
            pieces.append(last)
    # RWKV keeps its state between calls in float32 (transformers' layout): exact to float32 rounding there
    tol = torch.float32 if family == "rwkv" else torch.float64
    assert_close(torch.cat(pieces, 1), whole, tol, f"{family} pieces {bounds}")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_gradients_equal(family):
    ref, ours = pair(family, torch.float64)
    ref.train(), ours.train()
    ids = prompt(2, 40)
    grads = []
    for model in (ref, ours):
        model.zero_grad()
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    # transformers' float64 RWKV computes with float32 keys, so the keys' gradients are rounded to float32
    # (in pieces, per use; ours rounds their sum once): they agree to float32 rounding
    tol = 1e-7 if family == "rwkv" else 1e-8
    for name in grads[0]:
        scale = max(1.0, grads[0][name].abs().max().item())
        err = (grads[1][name] - grads[0][name]).abs().max().item()
        assert err <= tol * scale, f"{family} grad {name}: {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_model_pickles(family):
    _, ours = pair(family)
    ids = prompt(1, 5)
    back = pickle.loads(pickle.dumps(ours))
    assert type(back) is type(ours)
    assert [type(m) for m in back.modules()] == [type(m) for m in ours.modules()]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_model_runs_close_to_unconverted(family):
    # bfloat16 models: the scans run in float32 and cast back (transformers' paths also compute in float32)
    ref, ours = pair(family, torch.bfloat16)
    ids = prompt(1, 30)
    with torch.no_grad():
        expected, actual = ref(ids, use_cache=False).logits, ours(ids, use_cache=False).logits
    assert actual.dtype == expected.dtype and torch.isfinite(actual).all()
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= 0.05 * max(1.0, expected.float().abs().max().item()), err


@pytest.mark.parametrize("family", FAMILIES)
def test_benchmark_floor_removes_the_recurrence_and_restores_it(family):
    # benchmarks/bench_hf.py's bound: the converted model with its recurrence replaced by a no-op
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
    import bench_hf

    _, ours = pair(family)
    ids = prompt(1, 10)
    with torch.no_grad():
        before = ours(ids, use_cache=True).logits
        with bench_hf._NoRecurrence():
            floor = ours(ids, use_cache=True)
            kw = {"state": floor.state} if family == "rwkv" else {"cache": floor.cache}
            step = ours(ids[:, -1:], use_cache=True, **kw).logits  # decode runs under it too
        after = ours(ids, use_cache=True).logits
    assert floor.logits.shape == before.shape and step.shape == (1, 1, VOCAB)
    assert not torch.allclose(floor.logits, before)
    assert torch.equal(after, before)
