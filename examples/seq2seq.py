"""Encoder-decoder with attention: rewriting dates written in many ways as ISO dates.

"tuesday, march 3, 1994", "3rd of mar 1994", "03/03/1994", ... -> "1994-03-03". The encoder is a
bidirectional torch_rnn_ext.GRU over characters; the decoder a torch_rnn_ext.LSTM with Luong ("general")
attention over the encoder outputs, trained with teacher forcing and decoded greedily. Exact-match
accuracy is measured on held-out dates (no date of the test set is seen in training). The greedy
decoder is then scripted (torch.jit.script), saved and loaded back (torch.jit.save / torch.jit.load),
and the loaded model must give the same predictions.

    python3 examples/seq2seq.py [--quick] [--threads N]
"""
import datetime
import os
import random
import tempfile
from typing import Tuple

import torch
from torch import Tensor, nn

import torch_rnn_ext
import _common

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
PAD, BOS = 0, 1
SRC_CHARS = "".join(sorted(set("".join(MONTHS + DAYS) + "0123456789 ,/.-'")))
SRC_VOCAB = {c: i + 1 for i, c in enumerate(SRC_CHARS)}             # 0 = pad
TGT_CHARS = "0123456789-"
TGT_VOCAB = {c: i + 2 for i, c in enumerate(TGT_CHARS)}             # 0 = pad, 1 = begin
TGT_LEN = 10                                                        # "YYYY-MM-DD"


def ordinal(d):
    return "%d%s" % (d, "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th"))


def spell(date, rng):
    """One of 12 human ways of writing ``date``."""
    m, mon, d, y = MONTHS[date.month - 1], MONTHS[date.month - 1][:3], date.day, date.year
    return rng.choice([
        "%s %d, %d" % (m, d, y), "%d %s %d" % (d, m, y), "%s, %s %d, %d" % (DAYS[date.weekday()], m, d, y),
        "%s of %s %d" % (ordinal(d), m, y), "%s %d %d" % (mon, d, y), "%d %s %d" % (d, mon, y),
        "%02d/%02d/%d" % (date.month, d, y), "%d.%d.%d" % (d, date.month, y), "%d %s '%02d" % (d, mon, y % 100),
        "%s %s, %d" % (m, ordinal(d), y), "%d-%s-%d" % (d, mon, y), "%d %s %d" % (y, m, d)])


def make_pairs(dates, rng):
    return [(spell(d, rng), d.isoformat()) for d in dates]


def encode(pairs):
    """Source (N, S) and target (N, TGT_LEN) index tensors, sources right-padded with PAD."""
    s_len = max(len(s) for s, _ in pairs)
    src = torch.zeros(len(pairs), s_len, dtype=torch.long)
    for i, (s, _) in enumerate(pairs):
        src[i, :len(s)] = torch.tensor([SRC_VOCAB[c] for c in s])
    tgt = torch.tensor([[TGT_VOCAB[c] for c in t] for _, t in pairs])
    return src, tgt


class Seq2Seq(nn.Module):
    __constants__ = ["pad", "bos"]

    def __init__(self, emb=32, hidden=64):
        super().__init__()
        self.pad, self.bos = PAD, BOS
        self.src_embed = nn.Embedding(len(SRC_VOCAB) + 1, emb, padding_idx=PAD)
        self.encoder = torch_rnn_ext.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, 2 * hidden)
        self.tgt_embed = nn.Embedding(len(TGT_VOCAB) + 2, emb)
        self.decoder = torch_rnn_ext.LSTM(emb, 2 * hidden, batch_first=True)
        self.attn = nn.Linear(2 * hidden, 2 * hidden, bias=False)
        self.combine = nn.Linear(4 * hidden, 2 * hidden)
        self.out = nn.Linear(2 * hidden, len(TGT_VOCAB) + 2)

    def encode(self, src: Tensor) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor]]:
        """src (B, S) -> encoder outputs (B, S, 2H), pad mask (B, S), decoder's initial (h, c)."""
        mask = src == self.pad
        enc, h_n = self.encoder(self.src_embed(src))
        h0 = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], dim=-1))).unsqueeze(0)
        return enc, mask, (h0, torch.zeros_like(h0))

    def decode(self, tokens: Tensor, enc: Tensor, mask: Tensor, state: Tuple[Tensor, Tensor]
               ) -> Tuple[Tensor, Tuple[Tensor, Tensor], Tensor]:
        """tokens (B, T) -> logits (B, T, V), new state, attention weights (B, T, S)."""
        dec, state = self.decoder(self.tgt_embed(tokens), state)
        scores = torch.bmm(self.attn(dec), enc.transpose(1, 2)).masked_fill(mask.unsqueeze(1), -1e9)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, enc)
        return self.out(torch.tanh(self.combine(torch.cat([dec, context], dim=-1)))), state, weights

    def forward(self, src: Tensor, tgt: Tensor) -> Tuple[Tensor, Tensor]:
        """Teacher forcing: the decoder reads BOS, y_1 .. y_{T-1} and predicts y_1 .. y_T."""
        enc, mask, state = self.encode(src)
        tgt_in = torch.cat([torch.full_like(tgt[:, :1], self.bos), tgt[:, :-1]], dim=1)
        logits, _, weights = self.decode(tgt_in, enc, mask, state)
        return logits, weights


class GreedyTranslator(nn.Module):
    """The inference module: src (B, S) -> predicted target indices (B, TGT_LEN), one decoder step per token."""

    __constants__ = ["bos", "tgt_len"]

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model
        self.bos, self.tgt_len = BOS, TGT_LEN

    def forward(self, src: Tensor) -> Tensor:
        enc, mask, state = self.model.encode(src)
        token = torch.full((src.size(0), 1), self.bos, dtype=torch.long, device=src.device)
        outputs = []
        for _ in range(self.tgt_len):
            logits, state, _ = self.model.decode(token, enc, mask, state)
            token = logits.argmax(-1)
            outputs.append(token)
        return torch.cat(outputs, dim=1)


def exact_match(translate, src, tgt):
    with torch.no_grad():
        return (translate(src) == tgt).all(dim=1).float().mean().item()


def to_text(indices):
    return "".join(TGT_CHARS[i - 2] if i >= 2 else "?" for i in indices.tolist())


def main():
    args = _common.parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--steps", type=int, default=None, help="training steps (default 800; quick 200)"),))
    steps = args.steps or (200 if args.quick else 800)
    n_train, n_test, batch, lr = (4000, 500, 64, 3e-3) if args.quick else (20000, 2000, 64, 3e-3)
    rng = random.Random(args.seed)
    all_dates = [datetime.date(1950, 1, 1) + datetime.timedelta(days=i) for i in range(365 * 100)]
    rng.shuffle(all_dates)
    test_dates, train_dates = all_dates[:n_test], all_dates[n_test:]
    train_src, train_tgt = encode(make_pairs([rng.choice(train_dates) for _ in range(n_train)], rng))
    test_pairs = make_pairs(test_dates, rng)
    test_src, test_tgt = encode(test_pairs)
    print("Dates 1950-2049 in 12 formats -> YYYY-MM-DD; %d training pairs, %d held-out dates never seen in "
          "training; %d steps of batch %d, Adam lr %g." % (n_train, n_test, steps, batch, lr))

    torch.manual_seed(args.seed)
    model = Seq2Seq()
    translator = GreedyTranslator(model)
    gen = torch.Generator().manual_seed(args.seed)
    curve = []

    def loss_fn(step):
        idx = torch.randint(0, n_train, (batch,), generator=gen)
        src, tgt = train_src[idx], train_tgt[idx]
        src = src[:, :int((src != PAD).sum(1).max())]  # trim the batch's padding
        logits, _ = model(src, tgt)
        if step % 100 == 99 or step == steps - 1:
            model.eval()
            curve.append((step + 1, exact_match(translator, test_src[:500], test_tgt[:500])))
            model.train()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1)), {}

    trained = _common.train(model, loss_fn, steps, lr, "train seq2seq")
    losses, train_secs = trained.losses, trained.seconds
    model.eval()
    acc_eager = exact_match(translator, test_src, test_tgt)
    with torch.no_grad():
        char_acc = (translator(test_src) == test_tgt).float().mean().item()

    scripted = torch.jit.script(translator)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "translator.pt")
        torch.jit.save(scripted, path)
        size_kb = os.path.getsize(path) / 1024
        loaded = torch.jit.load(path)
    with torch.no_grad():
        pred_eager, pred_loaded = translator(test_src), loaded(test_src)
    same = bool(torch.equal(pred_eager, pred_loaded))
    acc_loaded = (pred_loaded == test_tgt).all(dim=1).float().mean().item()

    samples = [(test_pairs[i][0], test_pairs[i][1], to_text(pred_loaded[i])) for i in range(8)]
    wrong = [(s, t, to_text(p)) for (s, t), p in zip(test_pairs, pred_loaded) if to_text(p) != t][:5]

    fig, (ax1, ax2) = _common.plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(losses, color="C0", lw=0.7)
    ax1.set(xlabel="training step", ylabel="cross-entropy", yscale="log", title="Training")
    ax1b = ax1.twinx()
    ax1b.plot([s for s, _ in curve], [a for _, a in curve], "C1o-", ms=3)
    ax1b.set_ylabel("held-out exact match (500 dates)", color="C1")
    ax1b.set_ylim(0, 1.02)
    example = test_pairs[2][0]
    s1, t1 = encode([test_pairs[2]])
    with torch.no_grad():
        _, weights = model(s1, pred_loaded[2:3])
    ax2.imshow(weights[0].numpy(), aspect="auto", cmap="viridis")
    ax2.set_xticks(range(len(example)))
    ax2.set_xticklabels(list(example), fontsize=7)
    ax2.set_yticks(range(TGT_LEN))
    ax2.set_yticklabels(list(to_text(pred_loaded[2])))
    ax2.set(title="Attention while writing %s" % to_text(pred_loaded[2]), xlabel="source", ylabel="output")
    fig_path = _common.save_figure(fig, args, "seq2seq.png")

    table = _common.format_table(
        ["model", "params", "train steps", "train s", "held-out exact match", "char accuracy",
         "scripted+reloaded exact match", "same predictions"],
        [["biGRU encoder + LSTM/attention decoder", _common.count_params(model), steps, "%.1f" % train_secs,
          "%.4f" % acc_eager, "%.4f" % char_acc, "%.4f" % acc_loaded, str(same)]])
    table += "\n\n" + _common.format_table(["input", "truth", "prediction (reloaded TorchScript)"], samples)
    if wrong:
        table += "\n\nSome errors:\n" + _common.format_table(["input", "truth", "prediction"], wrong)
    _common.finish(args, "seq2seq", {
        "n_train": n_train, "n_test": n_test, "steps": steps, "params": _common.count_params(model),
        "exact_match": acc_eager, "char_accuracy": char_acc, "exact_match_reloaded": acc_loaded,
        "reloaded_same_predictions": same, "scripted_size_kb": round(size_kb, 1), "curve": curve,
        "train_seconds": round(train_secs, 2), "samples": samples, "errors": wrong,
    }, table, [fig_path])


if __name__ == "__main__":
    main()
