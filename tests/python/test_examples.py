"""The examples in examples/ run end to end (--quick, in a fresh process, as a user would start them) and
their numbers say what the examples claim: gated models remember past where a vanilla RNN forgets, the
translator is right and survives TorchScript save/load, the forecasters beat the seasonal naive forecast
and streaming equals the full-sequence forward, and the char-LMs learn something."""
import json
import math
import os
import subprocess
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run_example(name, out_dir, timeout=180):
    """Runs examples/<name>.py --quick --threads 1 --out out_dir; returns its JSON (fails loudly)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join("examples", name + ".py"), "--quick", "--threads", "1",
                           "--out", str(out_dir)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, "%s failed (exit %d):\n%s\n%s" % (name, proc.returncode, proc.stdout[-3000:],
                                                                 proc.stderr[-3000:])
    with open(os.path.join(out_dir, name + ".json")) as f:
        result = json.load(f)
    assert result["quick"] is True and result["threads"] == 1
    for fig in result["figures"]:
        path = os.path.join(out_dir, fig)
        assert fig.endswith(".png") and os.path.getsize(path) > 1000, path
    assert result["table"].splitlines()[0] in proc.stdout  # the results table is printed
    return result


def test_vanishing_gradients(tmp_path):
    r = run_example("vanishing_gradients", tmp_path)
    longest = str(r["lags"][-1])
    acc = r["accuracy"]
    # The gated models learn the longest lag (chance is 1/8). The vanilla RNN's accuracy there is not
    # asserted: in the quick run's 150 steps it learns the lag too for some seeds and rounding (seeds 0-2
    # on torch 2.15: 0.61-1.0 at lag 50, 0.48-0.88 at lag 100), so a gap between them would test the
    # draw, not the library. What does not vary is the gradient at initialisation, below.
    assert acc["LSTM"][longest] > 0.5 and acc["GRU"][longest] > 0.5, acc
    # Every model solves the shortest lag (chance is far below; Mamba reached 0.88 in the quick run on torch 2.15,
    # whose initialisation draws differ from 1.13's).
    assert all(a[str(r["lags"][0])] > 0.85 for a in acc.values()), acc
    params = list(r["params"].values())
    assert max(params) < 1.1 * min(params), r["params"]  # equal budgets
    # At initialisation the vanilla RNN's gradient has vanished at the longest lag, the gated models' has not.
    # (After training it varies from run to run: the RNN may start to learn and its gradient may even explode.)
    norms = r["grad_norm_by_distance"]
    rnn, lstm, gru = (norms[m]["init"] for m in ("vanilla RNN", "LSTM", "GRU"))
    far = int(longest)
    assert len(rnn) == far + 1 and rnn[far] < 1e-4 * min(lstm[far], gru[far]), (rnn[far], lstm[far], gru[far])
    assert rnn[far] < 1e-6 * rnn[1], rnn


def test_seq2seq(tmp_path):
    r = run_example("seq2seq", tmp_path)
    assert r["exact_match"] > 0.8, r["exact_match"]
    assert r["reloaded_same_predictions"] is True
    assert r["exact_match_reloaded"] == r["exact_match"]


def test_time_series(tmp_path):
    r = run_example("time_series", tmp_path)
    res = r["results"]
    assert res["LSTM"]["mae"] < 0.95 * res["naive seasonal"]["mae"], res
    assert res["GRU"]["mae"] < res["naive seasonal"]["mae"], res
    assert r["live"]["max_abs_diff_vs_full"] < 1e-4, r["live"]  # one sample at a time == whole sequence
    assert abs(r["live"]["mae"] - res["LSTM"]["mae"]) < 1e-4


def test_char_lm(tmp_path):
    r = run_example("char_lm", tmp_path)
    res = r["results"]
    uniform = r["uniform_bpc"]
    assert math.isclose(uniform, math.log2(r["vocab"]))
    for name, m in res.items():
        assert m["best_val_bpc"] < uniform - 1.0, (name, m, uniform)
    ours, ref = res["LSTM (torch_rnn_ext)"], res["LSTM (torch.nn)"]
    assert ours["params"] == ref["params"]
    assert abs(ours["best_val_bpc"] - ref["best_val_bpc"]) < 0.02, (ours, ref)  # same weights, same batches
    assert r["sample"].startswith("This License") and len(r["sample"]) > len("This License") + 50
