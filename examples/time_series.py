"""Forecasting a noisy multi-seasonal signal with torch_rnn_ext.LSTM and GRU, then streaming it.

The signal is hourly-like: a daily (24-step) and a weekly (168-step) season, a 12-step harmonic and
Gaussian noise. Each forecaster reads the series step by step and, at every step t, predicts the next
HORIZON values x[t+1 .. t+HORIZON]. It is compared, by MAE on the held-out last part of the series, with
the seasonal naive forecast x[t+k] ~ x[t+k-24]. Then the trained LSTM is fed one sample at a time, as a
sensor feed would, with its recurrent state carried from one sample to the next; the live forecast is
plotted against the truth and checked against the full-sequence forward.

    python3 examples/time_series.py [--quick] [--threads N]
"""
import time
from typing import Optional

import torch
from torch import Tensor, nn

import torch_rnn_ext
import _common

HORIZON = 12
DAY, WEEK = 24, 168


def make_series(n, gen, noise=0.25):
    t = torch.arange(n, dtype=torch.float32)
    tau = 2 * torch.pi
    clean = (torch.sin(tau * t / DAY) + 0.6 * torch.sin(tau * t / WEEK + 0.5)
             + 0.3 * torch.sin(tau * t / 12 + 1.0))
    return clean + noise * torch.randn(n, generator=gen), clean


def future(x, start, stop):
    """(stop - start, HORIZON): row i holds x[start + i + 1 .. start + i + HORIZON]."""
    return x[start + 1:stop + HORIZON].unfold(0, HORIZON, 1)


class Forecaster(nn.Module):
    """x (B, T, 1) -> forecasts (B, T, HORIZON) of the next HORIZON values at every step, and the state."""

    def __init__(self, kind, hidden):
        super().__init__()
        self.rnn = {"LSTM": torch_rnn_ext.LSTM, "GRU": torch_rnn_ext.GRU}[kind](1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, HORIZON)

    def forward(self, x: Tensor, state: Optional[tuple] = None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def naive_forecast(x, start, stop):
    """Seasonal naive: x[t+k] ~ x[t+k-DAY], for every t in [start, stop) and k = 1..HORIZON."""
    return x[start + 1 - DAY:stop + HORIZON - DAY].unfold(0, HORIZON, 1)


def main():
    args = _common.parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--steps", type=int, default=None, help="training steps per model (default 500; quick 80)"),
        p.add_argument("--hidden", type=int, default=None, help="hidden size (default 64; quick 32)")))
    steps = args.steps or (80 if args.quick else 500)
    hidden = args.hidden or (32 if args.quick else 64)
    n_train, n_test = (2000, 500) if args.quick else (8 * WEEK * 4, 4 * WEEK)
    window, warmup, batch, lr = 256, 48, 32, 5e-3
    gen = torch.Generator().manual_seed(args.seed)
    x, clean = make_series(n_train + n_test + HORIZON, gen)
    train_x = x[:n_train]
    print("Series: %d training and %d test steps; seasons %d and %d, noise sd 0.25. Each model predicts the "
          "next %d values at every step; %d training steps of %d windows of %d, Adam lr %g." % (
              n_train, n_test, DAY, WEEK, HORIZON, steps, batch, window, lr))

    def loss_fn_for(model):
        def loss_fn(step):
            starts = torch.randint(0, n_train - window - HORIZON, (batch,), generator=gen)
            inp = torch.stack([train_x[s:s + window] for s in starts]).unsqueeze(-1)
            tgt = torch.stack([future(train_x, s, s + window) for s in starts])
            pred, _ = model(inp)
            return nn.functional.mse_loss(pred[:, warmup:], tgt[:, warmup:]), {}
        return loss_fn

    models, results = {}, {}
    test_slice = slice(n_train, n_train + n_test)
    truth = future(x, n_train, n_train + n_test)
    naive = naive_forecast(x, n_train, n_train + n_test)
    naive_mae = (naive - truth).abs().mean(0)
    results["naive seasonal"] = {"mae": naive_mae.mean().item(), "mae_by_horizon": naive_mae.tolist()}
    for kind in ("LSTM", "GRU"):
        torch.manual_seed(args.seed)
        model = Forecaster(kind, hidden)
        secs = _common.train(model, loss_fn_for(model), steps, lr, "train %s" % kind).seconds
        with torch.no_grad():  # one pass over the whole series, so the state is warm when the test part starts
            pred, _ = model(x[:n_train + n_test].view(1, -1, 1))
        mae = (pred[0, test_slice] - truth).abs().mean(0)
        results[kind] = {"mae": mae.mean().item(), "mae_by_horizon": mae.tolist(), "train_seconds": round(secs, 2),
                         "params": _common.count_params(model)}
        models[kind] = (model, pred[0])

    # Live: the LSTM sees one sample per call, as from a sensor; its recurrent state is carried between calls.
    model, full_pred = models["LSTM"]
    live = torch.empty(n_train + n_test, HORIZON)
    use_streamer = hasattr(torch_rnn_ext, "Streamer")
    t0 = time.perf_counter()
    with torch.no_grad():
        if use_streamer:
            stream = torch_rnn_ext.Streamer(model)
            for t in _common.tqdm(range(n_train + n_test), desc="live feed", leave=False, mininterval=0.5):
                live[t] = stream(x[t].view(1, 1, 1))[0].view(HORIZON)
        else:
            # Streamer: replace this branch by stream = torch_rnn_ext.Streamer(model) and
            #           live[t] = stream(x[t].view(1, 1, 1))[0].view(HORIZON) inside the loop.
            state = None
            for t in _common.tqdm(range(n_train + n_test), desc="live feed", leave=False, mininterval=0.5):
                out, state = model(x[t].view(1, 1, 1), state)
                live[t] = out.view(HORIZON)
    per_sample_us = (time.perf_counter() - t0) / (n_train + n_test) * 1e6
    stream_diff = (live - full_pred).abs().max().item()
    live_mae = (live[test_slice] - truth).abs().mean().item()

    fig, (ax1, ax2) = _common.plt.subplots(2, 1, figsize=(8, 6.5))
    shown = slice(n_train + n_test - 2 * WEEK, n_train + n_test)
    ts = torch.arange(n_train + n_test)
    ax1.plot(ts[shown], x[shown], color="0.7", lw=0.8, label="observed (noisy)")
    ax1.plot(ts[shown], clean[shown], "k", lw=1, label="clean signal")
    # The forecast for time t + 1 was made at time t, from samples up to t.
    ax1.plot(ts[shown], live[shown.start - 1:shown.stop - 1, 0], "C0", lw=1.2, label="LSTM live 1-step forecast")
    ax1.plot(ts[shown], x[shown.start - DAY:shown.stop - DAY], "C3--", lw=0.8, label="seasonal naive")
    last = n_train + n_test - 1
    ax1.plot(range(last + 1, last + 1 + HORIZON), live[last], "C2o-", ms=3, label="LSTM %d-step forecast" % HORIZON)
    ax1.set(xlabel="time step", ylabel="value", title="Live forecast, one sample per call (last two test weeks)")
    ax1.legend(fontsize=7, ncol=3, loc="lower left")
    hs = range(1, HORIZON + 1)
    for name, style in (("LSTM", "C0o-"), ("GRU", "C1s-"), ("naive seasonal", "C3^--")):
        ax2.plot(hs, results[name]["mae_by_horizon"], style, label="%s (MAE %.3f)" % (name, results[name]["mae"]))
    ax2.set(xlabel="forecast horizon (steps ahead)", ylabel="test MAE", title="Error by horizon")
    ax2.legend(fontsize=8)
    fig_path = _common.save_figure(fig, args, "time_series.png")

    rows = [[name, r.get("params", "-"), "%.4f" % r["mae"], "%.4f" % r["mae_by_horizon"][0],
             "%.4f" % r["mae_by_horizon"][-1], "%.1f" % r["train_seconds"] if "train_seconds" in r else "-"]
            for name, r in results.items()]
    table = _common.format_table(["forecaster", "params", "test MAE (mean of %d horizons)" % HORIZON, "MAE 1 step",
                                  "MAE %d steps" % HORIZON, "train s"], rows)
    table += "\nLive LSTM feed (%s): %.0f us per sample, max |live - full-sequence forecast| = %.1e, live MAE %.4f" % (
        "torch_rnn_ext.Streamer" if use_streamer else "state carried by hand", per_sample_us, stream_diff, live_mae)
    _common.finish(args, "time_series", {
        "horizon": HORIZON, "n_train": n_train, "n_test": n_test, "hidden": hidden, "steps": steps,
        "results": results, "live": {"streamer": use_streamer, "us_per_sample": per_sample_us,
                                     "max_abs_diff_vs_full": stream_diff, "mae": live_mae},
    }, table, [fig_path])


if __name__ == "__main__":
    main()
