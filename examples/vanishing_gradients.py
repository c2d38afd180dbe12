"""Vanishing gradients: how far back can a vanilla RNN, an LSTM, a GRU and a Mamba mixer remember?

Task (recall / copy of one symbol): the first step shows one of K symbols, then ``lag - 1`` blank steps,
then a "go" marker; at the go step the model must name the symbol. Chance is 1/K. Every model gets the
same parameter budget (printed), the same optimizer and the same step budget per lag; a run stops early
once it is solved. Then, for the models trained at the longest lag (and the same models at
initialisation), the figure shows the norm of d loss / d h_t against the distance from the loss,
computed step by step with the *Cell modules (the trained layer's weights) and ``retain_grad``.

    python3 examples/vanishing_gradients.py [--quick] [--threads N]
"""
import copy
import math

import torch
from torch import nn

import torch_rnn_ext
import _common

K = 8                       # symbols to remember
BLANK, GO = K, K + 1        # extra input channels
IN = K + 2
MAX_LAG = 200              # chrono initialisation's longest time scale


def make_batch(batch, lag, gen):
    """Inputs (batch, lag + 1, IN) one-hot and the targets (batch,): symbol at t = 0, GO at t = lag."""
    sym = torch.randint(0, K, (batch,), generator=gen)
    idx = torch.full((batch, lag + 1), BLANK, dtype=torch.long)
    idx[:, 0] = sym
    idx[:, -1] = GO
    return nn.functional.one_hot(idx, IN).float(), sym


def chrono_init(rnn, kind, hidden, t_max=MAX_LAG):
    """Tallec & Ollivier's chrono initialisation of the gates that keep memory (ICLR 2018): the forget
    gate bias of an LSTM (and minus it on the input gate), the update gate bias of a GRU, drawn as
    log(U(1, t_max - 1)), so that memory time scales up to t_max exist from the start. Without it, the
    gated models sit on the chance plateau for thousands of steps at lags >= 50 on this blank-input task."""
    with torch.no_grad():
        b = torch.log(torch.empty(hidden).uniform_(1, t_max - 1))
        for name in ("bias_ih_l0", "bias_hh_l0"):
            getattr(rnn, name).zero_()
        if kind == "LSTM":  # gate order i, f, g, o
            rnn.bias_ih_l0[hidden:2 * hidden] = b
            rnn.bias_ih_l0[:hidden] = -b
        else:  # GRU gate order r, z, n; h' = (1 - z) n + z h
            rnn.bias_ih_l0[hidden:2 * hidden] = b


class Recurrent(nn.Module):
    """torch_rnn_ext.RNN / LSTM / GRU (one layer, batch_first) and a linear read-out at the last step."""

    def __init__(self, kind, hidden):
        super().__init__()
        self.kind = kind
        cls = {"RNN": torch_rnn_ext.RNN, "LSTM": torch_rnn_ext.LSTM, "GRU": torch_rnn_ext.GRU}[kind]
        self.rnn = cls(IN, hidden, batch_first=True)
        self.head = nn.Linear(hidden, K)
        if kind in ("LSTM", "GRU"):
            chrono_init(self.rnn, kind, hidden)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])

    def per_step_states(self, x):
        """Runs the matching *Cell step by step on the layer's weights; returns (logits, [h_t])."""
        cell_cls = {"RNN": torch_rnn_ext.RNNCell, "LSTM": torch_rnn_ext.LSTMCell, "GRU": torch_rnn_ext.GRUCell}
        cell = cell_cls[self.kind](IN, self.rnn.hidden_size)
        cell.load_state_dict({k[:-3]: v for k, v in self.rnn.state_dict().items()})  # weight_ih_l0 -> weight_ih
        hs, state = [], None
        for t in range(x.size(1)):
            state = cell(x[:, t], state)
            h = state[0] if isinstance(state, tuple) else state
            h.retain_grad()
            hs.append(h)
        return self.head(hs[-1]), hs


class Mamba(nn.Module):
    """Linear embedding, one torch_rnn_ext.MambaMixer with a residual and LayerNorm, read-out at the end."""

    kind = "Mamba"

    def __init__(self, d_model):
        super().__init__()
        self.embed = nn.Linear(IN, d_model)
        self.mixer = torch_rnn_ext.MambaMixer(d_model)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, K)

    def forward(self, x):
        u = self.embed(x)
        return self.head(self.norm(u + self.mixer(u))[:, -1])

    def per_step_states(self, x):
        """Runs MambaMixer.step token by token; the hidden state h_t is the SSM state (batch, d_inner, N).

        The last state is left out (None): the last output is read from it inside the op, so the returned
        tensor gets no gradient, and PyTorch 1.13 fails on retain_grad of an output that gets none.
        """
        conv, ssm = self.mixer.allocate_state(x.size(0))
        hs = []
        for t in range(x.size(1)):
            u = self.embed(x[:, t])
            y, conv, ssm = self.mixer.step(u, conv, ssm)
            if t < x.size(1) - 1:
                ssm.retain_grad()
            hs.append(ssm if t < x.size(1) - 1 else None)
        return self.head(self.norm(u + y)), hs


BUILDERS = {
    "vanilla RNN": lambda w: Recurrent("RNN", w),
    "LSTM": lambda w: Recurrent("LSTM", w),
    "GRU": lambda w: Recurrent("GRU", w),
    "Mamba": lambda w: Mamba(w),
}


def accuracy(model, lag, gen, n=1000):
    with torch.no_grad():
        x, y = make_batch(n, lag, gen)
        return (model(x).argmax(-1) == y).float().mean().item()


def grad_norms(model, lag, gen, n=256):
    """Mean over the batch of ||d loss / d h_t||, indexed by distance from the loss (0 = the last step)."""
    x, y = make_batch(n, lag, gen)
    logits, hs = model.per_step_states(x)
    nn.functional.cross_entropy(logits, y, reduction="sum").backward()
    norms = [h.grad.reshape(n, -1).norm(dim=1).mean().item() if h is not None and h.grad is not None
             else float("nan") for h in hs]
    return norms[::-1]


def plot(lags, acc, params, norms, probe_lag, args):
    """Figure 1: accuracy against lag; figure 2: ||d loss / d h_t|| against distance. Returns their paths.

    Also redraws the figures of a saved run: ``r = json.load(...); plot(r["lags"], r["accuracy"], r["params"],
    r["grad_norm_by_distance"], r["lags"][-1], args)`` (accuracy keys may be ints or strings)."""
    fig, ax = _common.plt.subplots(figsize=(6, 4))
    for i, name in enumerate(BUILDERS):
        a = acc[name]
        ax.plot(lags, [a.get(lag, a.get(str(lag))) for lag in lags], ["o-", "s-", "^--", "D:"][i],
                ms=9 - 1.5 * i, lw=1.5, label="%s (%d params)" % (name, params[name]))
    ax.axhline(1 / K, color="gray", ls=":", label="chance")
    ax.set(xscale="log", xlabel="lag (steps between the symbol and the question)", ylabel="test accuracy",
           title="Recall after a lag, equal parameter budgets", ylim=(0, 1.05))
    ax.set_xticks(lags)
    ax.set_xticklabels([str(lag) for lag in lags])
    ax.legend(fontsize=8)
    fig1 = _common.save_figure(fig, args, "vanishing_gradients_accuracy.png")

    fig, ax = _common.plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(BUILDERS):
        for when, ls in (("trained", "-"), ("init", "--")):
            n = norms[name][when]
            # exact zeros (float32 underflow) cannot be drawn on a log axis: the line stops there
            ax.plot(range(len(n)), [v if v > 0 else float("nan") for v in n], ls, color="C%d" % i,
                    label="%s, %s" % (name, "trained" if when == "trained" else "at init"))
            zero = next((d for d, v in enumerate(n) if v == 0.0), None)
            if zero is not None:
                ax.annotate("exactly 0 from %d" % zero, (zero - 1, n[zero - 1]), fontsize=7, color="C%d" % i,
                            xytext=(4, 0), textcoords="offset points")
    ax.set(yscale="log", xlabel="distance from the loss (steps)", ylabel="mean ||d loss / d h_t||",
           title="Gradient reaching h_t, lag %d task (Mamba: SSM state)" % probe_lag)
    ax.legend(fontsize=7, ncol=2, loc="center right")
    fig2 = _common.save_figure(fig, args, "vanishing_gradients_grad_norm.png")
    return fig1, fig2


def main():
    args = _common.parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--budget", type=int, default=None, help="parameters per model (default 10000; quick 3000)"),
        p.add_argument("--steps", type=int, default=None, help="max training steps per (model, lag)"),
        p.add_argument("--lags", default=None, help="comma-separated lags (default 5,10,20,50,100,200)")))
    lags = [int(s) for s in (args.lags or ("5,50" if args.quick else "5,10,20,50,100,200")).split(",")]
    budget = args.budget or (3000 if args.quick else 10000)
    steps = args.steps or (150 if args.quick else 600)
    batch, lr = 64, 1e-2
    gen = torch.Generator().manual_seed(args.seed + 1)

    widths = {name: _common.width_for_budget(b, budget, range(4, 257)) for name, b in BUILDERS.items()}
    params = {name: _common.count_params(BUILDERS[name](w)) for name, w in widths.items()}
    print("Recall task: K=%d symbols (chance %.3f), lags %s, batch %d, Adam lr %g, grad clip 1, "
          "at most %d steps per (model, lag), stop when 10 batches in a row are 100%% right." % (
              K, 1 / K, lags, batch, lr, steps))
    print("Equal parameter budget (~%d):" % budget)
    for name in BUILDERS:
        print("  %-12s width %3d  %6d parameters" % (name, widths[name], params[name]))

    acc = {name: {} for name in BUILDERS}
    steps_used = {name: {} for name in BUILDERS}
    seconds = {name: {} for name in BUILDERS}
    probes = {}
    for name, build in BUILDERS.items():
        for lag in lags:
            torch.manual_seed(args.seed)
            model = build(widths[name])
            if lag == lags[-1]:
                probes[name] = {"init": copy.deepcopy(model)}
            streak = [0]

            def loss_fn(step):
                x, y = make_batch(batch, lag, gen)
                logits = model(x)
                batch_acc = (logits.argmax(-1) == y).float().mean().item()
                return nn.functional.cross_entropy(logits, y), {"acc": batch_acc}

            def stop(m):
                streak[0] = streak[0] + 1 if m["acc"] == 1.0 else 0
                return streak[0] >= 10

            trained = _common.train(model, loss_fn, steps, lr, "%s lag %d" % (name, lag), stop=stop)
            secs, used = trained.seconds, trained.steps
            acc[name][lag] = accuracy(model, lag, gen)
            steps_used[name][lag] = used
            seconds[name][lag] = round(secs, 2)
            if lag == lags[-1]:
                probes[name]["trained"] = model

    probe_lag = lags[-1]
    norms = {name: {when: grad_norms(m, probe_lag, gen) for when, m in p.items()} for name, p in probes.items()}

    fig1, fig2 = plot(lags, acc, params, norms, probe_lag, args)

    def at(n, d):
        return n[d] if d < len(n) else float("nan")

    rows = []
    for name in BUILDERS:
        rows.append([name, params[name]] + ["%.3f" % acc[name][lag] for lag in lags]
                    + [sum(steps_used[name].values()), "%.1f" % sum(seconds[name].values())]
                    + ["%.1e" % at(norms[name]["init"], probe_lag), "%.1e" % at(norms[name]["trained"], probe_lag)])
    table = _common.format_table(
        ["model", "params"] + ["acc lag %d" % lag for lag in lags] + ["steps", "train s",
                                                                      "|dL/dh| at %d, init" % probe_lag,
                                                                      "trained"], rows)
    ratio = lambda n: at(n, probe_lag) / n[1] if n[1] else float("nan")  # noqa: E731
    _common.finish(args, "vanishing_gradients", {
        "lags": lags, "chance": 1 / K, "budget": budget, "params": params, "widths": widths,
        "accuracy": {n: {str(k): v for k, v in d.items()} for n, d in acc.items()},
        "steps": {n: {str(k): v for k, v in d.items()} for n, d in steps_used.items()},
        "train_seconds": {n: {str(k): v for k, v in d.items()} for n, d in seconds.items()},
        "grad_norm_by_distance": norms,
        "grad_ratio_far_over_near": {n: {w: ratio(v) for w, v in d.items()} for n, d in norms.items()},
    }, table, [fig1, fig2])


if __name__ == "__main__":
    main()
