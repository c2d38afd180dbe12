"""Character-level language model on the GNU GPL v3 text that ships with Debian.

Two models of similar size are trained with the same batches and budget and compared on validation
bits per character (bpc, lower is better; the last 10% of the text is held out): an LSTM
(torch_rnn_ext.LSTM) and an RWKV-4 style model (torch_rnn_ext.RWKV4TimeMix blocks, each followed by a
simple channel-mix MLP, with pre-LayerNorm and residuals). The same LSTM model is also built from
torch.nn.LSTM with the same weights (torch_rnn_ext.convert turns a copy of it into ours) and trained on
the same batches, to compare training time. Finally the best model writes some text.

    python3 examples/char_lm.py [--quick] [--threads N] [--text PATH]
"""
import copy
import math
import os
import sys

import torch
from torch import nn

import torch_rnn_ext
import _common

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


class LSTMLM(nn.Module):
    def __init__(self, vocab, emb, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, batch_first=True)  # torch.nn; convert() makes it ours
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx):
        return self.head(self.rnn(self.embed(idx))[0])


class ChannelMix(nn.Module):
    """The position-wise MLP of each block: d -> 4d -> d with squared ReLU, as RWKV-4's channel mix."""

    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)) ** 2)


class RWKVLM(nn.Module):
    def __init__(self, vocab, d, n_layer):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.ln_in = nn.LayerNorm(d)
        self.blocks = nn.ModuleList()
        for i in range(n_layer):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(d), "time_mix": torch_rnn_ext.RWKV4TimeMix(d, layer_id=i, n_layer=n_layer),
                "ln2": nn.LayerNorm(d), "channel_mix": ChannelMix(d)}))
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.ln_in(self.embed(idx))
        for b in self.blocks:
            x = x + b["time_mix"](b["ln1"](x))
            x = x + b["channel_mix"](b["ln2"](x))
        return self.head(self.ln_out(x))


def bpc(model, data, seq, batch=64):
    """Validation bits per character, every character predicted with up to ``seq`` characters of context."""
    with torch.no_grad():
        n = (data.numel() - 1) // seq
        x = data[:n * seq].view(n, seq)
        y = data[1:n * seq + 1].view(n, seq)
        total = sum(nn.functional.cross_entropy(model(x[i:i + batch]).flatten(0, 1), y[i:i + batch].flatten(),
                                                reduction="sum").item() for i in range(0, n, batch))
    return total / (n * seq) / math.log(2)


def sample(model, prompt_idx, n, chars, gen, context, temperature=0.8):
    """Generates ``n`` characters after the prompt, re-reading the last ``context`` characters each time."""
    idx = prompt_idx.tolist()
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([idx[-context:]]))[0, -1] / temperature
            idx.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    return "".join(chars[i] for i in idx)


def main():
    args = _common.parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--text", default=DEFAULT_TEXT, help="training text (default: %(default)s)"),
        p.add_argument("--steps", type=int, default=None, help="training steps per model (default 500; quick 40)")))
    if not os.path.isfile(args.text):
        sys.exit("char_lm: the text %s does not exist. On Debian it comes with the base-files package; "
                 "pass another plain-text file with --text PATH." % args.text)
    text = open(args.text, encoding="utf-8", errors="replace").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text])
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    steps = args.steps or (40 if args.quick else 500)
    emb, hidden, n_layer = (32, 64, 1) if args.quick else (48, 128, 2)
    seq, batch, lr, eval_every = (64 if args.quick else 128), 32, 3e-3, (20 if args.quick else 50)
    print("Text %s: %d characters, vocabulary %d (uniform: %.3f bpc); %d training, %d validation characters; "
          "%d steps of %d x %d characters, Adam lr %g." % (args.text, len(text), len(chars), math.log2(len(chars)),
                                                           split, len(text) - split, steps, batch, seq, lr))

    torch.manual_seed(args.seed)
    nn_lstm = LSTMLM(len(chars), emb, hidden)
    ours_lstm = torch_rnn_ext.convert(copy.deepcopy(nn_lstm))   # same weights, torch_rnn_ext.LSTM inside
    assert type(ours_lstm.rnn) is torch_rnn_ext.LSTM
    lstm_params = _common.count_params(nn_lstm)
    width = _common.width_for_budget(lambda d: RWKVLM(len(chars), d, n_layer), lstm_params, range(16, 257, 4))
    torch.manual_seed(args.seed)
    rwkv = RWKVLM(len(chars), width, n_layer)

    models = {"LSTM (torch_rnn_ext)": ours_lstm, "LSTM (torch.nn)": nn_lstm, "RWKV-4 (torch_rnn_ext)": rwkv}
    results, curves = {}, {}
    for name, model in models.items():
        gen = torch.Generator().manual_seed(args.seed)  # the same batches for every model
        curve, best = [], [float("inf"), None]

        def loss_fn(step):
            starts = torch.randint(0, split - seq - 1, (batch,), generator=gen)
            x = torch.stack([train_data[s:s + seq] for s in starts])
            y = torch.stack([train_data[s + 1:s + seq + 1] for s in starts])
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            if step % eval_every == eval_every - 1 or step == steps - 1:
                # evaluated on the weights before this step's update; the loss above is already computed
                model.eval()
                v = bpc(model, val_data, seq)
                model.train()
                curve.append((step, v))
                if v < best[0]:
                    best[:] = [v, copy.deepcopy(model.state_dict())]
                return loss, {"val_bpc": v}
            return loss, {}

        trained = _common.train(model, loss_fn, steps, lr, "train %s" % name)
        model.load_state_dict(best[1])  # early stopping: keep the weights with the best validation bpc
        curves[name] = curve
        results[name] = {"params": _common.count_params(model), "best_val_bpc": best[0],
                         "final_train_bpc": sum(trained.losses[-20:]) / len(trained.losses[-20:]) / math.log(2),
                         "train_seconds": round(trained.seconds, 2),
                         "median_step_ms": round(trained.median_step_seconds * 1000, 2)}
    speedup = results["LSTM (torch.nn)"]["median_step_ms"] / results["LSTM (torch_rnn_ext)"]["median_step_ms"]

    best_name = min(("LSTM (torch_rnn_ext)", "RWKV-4 (torch_rnn_ext)"), key=lambda k: results[k]["best_val_bpc"])
    prompt = "This License"
    text_out = sample(models[best_name], torch.tensor([stoi[c] for c in prompt]), 120 if args.quick else 400, chars,
                      torch.Generator().manual_seed(args.seed), seq)

    fig, ax = _common.plt.subplots(figsize=(6.5, 4))
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot([s + 1 for s, _ in curve], [v for _, v in curve], "x--" if "torch.nn" in name else "o-", ms=3,
                color="C%d" % i, label="%s, %d params" % (name, results[name]["params"]))
    ax.axhline(math.log2(len(chars)), color="gray", ls=":", label="uniform (%.2f)" % math.log2(len(chars)))
    ax.set(xlabel="training step", ylabel="validation bits per character", title="Char-LM on %s" %
           os.path.basename(args.text), ylim=(0, math.log2(len(chars)) + 0.3))
    ax.legend(fontsize=8)
    fig_path = _common.save_figure(fig, args, "char_lm.png")

    table = _common.format_table(["model", "params", "best val bpc", "train bpc (last 20 steps)",
                                  "median ms/step", "train s"],
                                 [[n, r["params"], "%.3f" % r["best_val_bpc"], "%.3f" % r["final_train_bpc"],
                                   "%.1f" % r["median_step_ms"], "%.1f" % r["train_seconds"]] for n, r in results.items()])
    table += ("\nLSTM training step: torch_rnn_ext %.2fx faster than torch.nn (same weights and batches)."
              "\nSample from %s (temperature 0.8):\n%s" % (speedup, best_name, text_out))
    _common.finish(args, "char_lm", {
        "text": args.text, "vocab": len(chars), "uniform_bpc": math.log2(len(chars)), "steps": steps,
        "seq": seq, "batch": batch, "rwkv_width": width, "rwkv_layers": n_layer, "lstm_hidden": hidden,
        "results": results, "curves": curves, "lstm_step_speedup_vs_torch_nn": speedup, "best": best_name,
        "sample": text_out,
    }, table, [fig_path])


if __name__ == "__main__":
    main()
