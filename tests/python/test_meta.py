"""Every op, public and private, has a Meta kernel whose outputs have the CPU kernel's sizes, strides and
dtypes (and the same undefined outputs), and whose argument checks are the CPU kernel's. Runs on both
torch legs (device="meta"); under torch 2.x's FakeTensorMode, with dynamic shapes, in test_pt2.py."""
import pytest
import torch

import op_samples

SAMPLES = op_samples.all_samples()


def to_meta(x):
    # batch_sizes stays a CPU tensor, as torch.nn's PackedSequence keeps it.
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().to("meta")
    if isinstance(x, (list, tuple)):
        return type(x)(to_meta(v) for v in x)
    return x


def flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def assert_same_metadata(meta_out, cpu_out):
    assert len(meta_out) == len(cpu_out)
    for m, c in zip(meta_out, cpu_out):
        assert (m is None) == (c is None), (m, c)
        if c is None:
            continue
        assert m.device.type == "meta"
        assert (m.shape, m.stride(), m.dtype) == (c.shape, c.stride(), c.dtype)


@pytest.mark.parametrize("name,op,args,kwargs", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_meta_matches_cpu(name, op, args, kwargs):
    cpu_args = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
    cpu_out = flat(op(*cpu_args, **kwargs))
    meta_out = flat(op(*to_meta(args), **kwargs))
    assert_same_metadata(meta_out, cpu_out)


def test_meta_rejects_what_cpu_rejects():
    x, w_ih, w_hh = torch.randn(5, 3, 4), torch.randn(24, 4), torch.randn(24, 6)
    for device in ("cpu", "meta"):
        with pytest.raises(RuntimeError, match=r"weight_ih: expected 24 rows"):
            torch.ops.torch_rnn_ext.lstm_layer(x.to(device), None, None, w_ih[:20].to(device), w_hh.to(device))
        with pytest.raises(RuntimeError, match=r"hx: expected size \[3, 6\]"):
            torch.ops.torch_rnn_ext.lstm_layer(x.to(device), torch.zeros(2, 6, device=device), None,
                                               w_ih.to(device), w_hh.to(device))
        with pytest.raises(RuntimeError, match=r"selective_scan: A: expected size \(dim, d_state\)"):
            torch.ops.torch_rnn_ext.selective_scan(*(torch.randn(*s, device=device) for s in
                                                     [(2, 4, 7), (2, 4, 7), (3, 2), (4, 2), (4, 2)]))


def test_meta_with_cpu_arguments_names_the_argument():
    x = torch.randn(5, 3, 4, device="meta")
    with pytest.raises(RuntimeError, match=r"weight_hh: expected a tensor on meta .*got a tensor on cpu"):
        torch.ops.torch_rnn_ext.lstm_layer(x, None, None, torch.randn(24, 4, device="meta"), torch.randn(24, 6))
    with pytest.raises(RuntimeError, match=r"v: expected a tensor on meta .*got a tensor on cpu"):
        torch.ops.torch_rnn_ext.wkv4(torch.randn(5, device="meta"), torch.randn(5, device="meta"),
                                     torch.randn(2, 7, 5, device="meta"), torch.randn(2, 7, 5))


def test_meta_packed_layer_needs_cpu_batch_sizes_or_hx():
    x, w_ih, w_hh = (torch.randn(*s, device="meta") for s in [(6, 4), (24, 4), (24, 6)])
    bsz = torch.tensor([3, 2, 1])
    out, h, c = torch.ops.torch_rnn_ext.lstm_layer(x, None, None, w_ih, w_hh, None, None, bsz)
    assert (out.shape, h.shape, c.shape) == ((6, 6), (3, 6), (3, 6))
    out, h, c = torch.ops.torch_rnn_ext.lstm_layer(x, torch.zeros(3, 6, device="meta"), None, w_ih, w_hh, None, None,
                                                   bsz.to("meta"))
    assert h.shape == (3, 6)
    with pytest.raises(RuntimeError, match=r"batch_sizes: the batch size of a packed sequence is the value"):
        torch.ops.torch_rnn_ext.lstm_layer(x, None, None, w_ih, w_hh, None, None, bsz.to("meta"))
    with pytest.raises(RuntimeError,
                       match=r"batch_sizes sum to more than the 5 rows of input \(the first 3 values already do\)"):
        torch.ops.torch_rnn_ext.lstm_layer(x[:5], None, None, w_ih, w_hh, None, None, bsz)


def test_modules_run_on_meta():
    import torch_rnn_ext
    for m, x in [(torch_rnn_ext.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3), torch.randn(5, 2, 4)),
                 (torch_rnn_ext.GRU(4, 6, batch_first=True), torch.randn(2, 5, 4)),
                 (torch_rnn_ext.MambaMixer(8, d_state=4), torch.randn(2, 9, 8)),
                 (torch_rnn_ext.RWKV4TimeMix(8), torch.randn(2, 9, 8))]:
        ref = m(x)
        out = m.to("meta")(x.to("meta"))
        ref, out = flat(ref), flat(out)
        assert [o.shape for o in out if isinstance(o, torch.Tensor)] == \
            [r.shape for r in ref if isinstance(r, torch.Tensor)]
