"""Saving and loading models that contain torch_rnn_ext's modules, as README's "Saving and loading models"
documents, each load in a fresh Python process:

- a ``state_dict`` loads with ``torch.load``'s default (and with ``weights_only=True``) on every torch, into
  the model rebuilt in the new process, and into the torch.nn twins;
- a pickled whole model (``torch.save(model)``) needs ``torch_rnn_ext`` importable where it is loaded (not
  imported: the unpickler imports it), else ``ModuleNotFoundError: No module named 'torch_rnn_ext'``;
- from torch 2.6, ``torch.load(path)`` (``weights_only=True``) refuses a whole model, ours as torch.nn's,
  even after ``import torch_rnn_ext`` (which registers no safe globals); ``weights_only=False`` loads it,
  and so does ``torch.serialization.safe_globals`` with the classes that
  ``get_unsafe_globals_in_checkpoint`` lists;
- torch 1.13 (default ``weights_only=False``) loads a whole model with ``torch.load(path)`` and refuses it
  with ``weights_only=True``.

Saving happens in a fresh process too, so that the model's class lives in a module (``tagger_models.py``,
written to tmp_path) that the loading process can import, as it would in a user's project."""
import ast
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torch_rnn_ext

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TORCH_VERSION = tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
WEIGHTS_ONLY_DEFAULT = TORCH_VERSION >= (2, 6)
HAS_SAFE_GLOBALS_CM = hasattr(torch.serialization, "safe_globals")

MODELS = textwrap.dedent("""
    import torch
    from torch import nn
    import torch_rnn_ext


    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.mamba = torch_rnn_ext.MambaMixer(8)
            self.lstm = torch_rnn_ext.LSTM(8, 16, num_layers=2, batch_first=True, proj_size=12)
            self.gru = torch_rnn_ext.GRU(12, 8, batch_first=True, bidirectional=True)
            self.rwkv = torch_rnn_ext.RWKV4TimeMix(16)
            self.cell = torch_rnn_ext.LSTMCell(16, 16)
            self.rnn = torch_rnn_ext.RNN(16, 16, nonlinearity="relu")
            self.head = nn.Linear(16, 4)

        def forward(self, x):                     # x (batch, seq, 8)
            y, _ = self.lstm(self.mamba(x))
            y, _ = self.gru(y)
            y = y + self.rwkv(y)
            h, _ = self.cell(y[:, -1])
            out, _ = self.rnn(y.transpose(0, 1), h.unsqueeze(0))
            return self.head(out[-1])
""")

# Saves, in a fresh process with torch_rnn_ext importable: the state_dict, the whole model, a bare
# torch_rnn_ext.LSTM, the input and the model's output.
SAVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from tagger_models import Tagger
    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(3, 6, 8)
    torch.save(model.state_dict(), "state.pt")
    torch.save(model, "model.pt")
    torch.save(model.lstm, "bare_lstm.pt")
    with torch.no_grad():
        torch.save({"x": x, "out": model(x)}, "ref.pt")
""")

PRELUDE = textwrap.dedent("""
    import sys, torch
    repo = sys.argv[1]
    if repo:
        sys.path.insert(0, repo)                  # torch_rnn_ext importable, not imported
    ref = torch.load("ref.pt")
    def check(model):
        with torch.no_grad():
            assert torch.equal(model.eval()(ref["x"]), ref["out"])
""")


def child_env():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(tmp_path, code, importable=True):
    """Runs code in a fresh interpreter in tmp_path, deliberately without the repository on sys.path unless
    `importable` (then sys.argv[1] is the repository root, which the code puts on sys.path)."""
    return subprocess.run([sys.executable, "-c", code, REPO_ROOT if importable else ""], capture_output=True,
                          text=True, cwd=str(tmp_path), env=child_env(), timeout=300)


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("pickle")
    (d / "tagger_models.py").write_text(MODELS)
    ok(run(d, SAVER))
    return d


def test_torch_rnn_ext_is_not_importable_without_the_repository(saved):
    """The premise of the fresh-process checks below: torch_rnn_ext is not installed in this Python."""
    r = run(saved, "import torch_rnn_ext", importable=False)
    assert r.returncode != 0 and "No module named 'torch_rnn_ext'" in r.stderr, r.stderr


def test_state_dict_round_trip_into_a_fresh_process(saved):
    out = ok(run(saved, PRELUDE + textwrap.dedent("""
        from tagger_models import Tagger
        for kwargs in ({}, {"weights_only": True}):  # torch.load's default, and the safe loader explicitly
            state = torch.load("state.pt", **kwargs)
            model = Tagger()
            model.load_state_dict(state)
            check(model)
        # our layers' entries are torch.nn's: they load into the twins
        lstm = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True, proj_size=12)
        lstm.load_state_dict({k[len("lstm."):]: v for k, v in state.items() if k.startswith("lstm.")})
        with torch.no_grad():
            mine = Tagger()
            mine.load_state_dict(state)
            y = mine.mamba(ref["x"])
            torch.testing.assert_close(lstm(y)[0], mine.lstm(y)[0], atol=1e-5, rtol=1e-5)  # other kernels
        print("ok")
    """)))
    assert out.strip() == "ok"


@pytest.mark.parametrize("name", ["model.pt", "bare_lstm.pt"])
def test_whole_model_needs_torch_rnn_ext_importable(saved, name):
    """model.pt's own module (tagger_models, in the cwd) imports torch_rnn_ext; bare_lstm.pt references only
    torch_rnn_ext.modules.rnn.LSTM, so there the unpickler's own import fails."""
    r = run(saved, f"import torch; torch.load({name!r}, weights_only=False)", importable=False)
    assert r.returncode != 0
    assert "ModuleNotFoundError: No module named 'torch_rnn_ext'" in r.stderr, r.stderr[-3000:]


def test_whole_model_loads_with_weights_only_false_and_imports_the_package(saved):
    out = ok(run(saved, PRELUDE + textwrap.dedent("""
        assert "torch_rnn_ext" not in sys.modules
        model = torch.load("model.pt", weights_only=False)
        assert "torch_rnn_ext" in sys.modules     # the unpickler imported it
        import torch_rnn_ext
        assert type(model.lstm) is torch_rnn_ext.LSTM and type(model.cell) is torch_rnn_ext.LSTMCell
        assert type(model.mamba) is torch_rnn_ext.MambaMixer and type(model.rwkv) is torch_rnn_ext.RWKV4TimeMix
        check(model)
        model.train()
        model(ref["x"]).sum().backward()          # and trains
        assert all(p.grad is not None for p in model.parameters())
        print("ok")
    """)))
    assert out.strip() == "ok"


def test_default_torch_load_of_a_whole_model(saved):
    """From torch 2.6 the default (weights_only=True) refuses our classes, also after import torch_rnn_ext;
    on older torch (1.13) the default unpickles the model and weights_only=True refuses it."""
    code = PRELUDE + textwrap.dedent("""
        import pickle, torch_rnn_ext
        results = []
        for name, kwargs in (("model.pt", {}), ("bare_lstm.pt", {}), ("model.pt", {"weights_only": True})):
            try:
                m = torch.load(name, **kwargs)
            except pickle.UnpicklingError as e:
                results.append("refused: " + " ".join(str(e).split()))
            else:
                if name == "model.pt":
                    check(m)
                results.append("loaded " + type(m).__qualname__)
        print("\\n".join(results))
    """)
    lines = ok(run(saved, code)).strip().split("\n")
    assert len(lines) == 3, lines
    if WEIGHTS_ONLY_DEFAULT:
        assert lines[0].startswith("refused: ") and "Unsupported global: GLOBAL tagger_models.Tagger" in lines[0]
        assert lines[1].startswith("refused: ")
        assert ("Unsupported global: GLOBAL torch_rnn_ext.modules.rnn.LSTM was not an allowed global by default"
                in lines[1]), lines[1]
    else:
        assert lines[0] == "loaded Tagger" and lines[1] == "loaded LSTM", lines
    assert lines[2].startswith("refused: ") and "Unsupported" in lines[2], lines[2]


@pytest.mark.skipif(not HAS_SAFE_GLOBALS_CM, reason=f"torch {torch.__version__} has no "
                    "torch.serialization.safe_globals / get_unsafe_globals_in_checkpoint (torch 2.x API)")
def test_safe_globals_with_the_listed_classes_loads_a_whole_model(saved):
    out = ok(run(saved, PRELUDE + textwrap.dedent("""
        import torch_rnn_ext
        from tagger_models import Tagger
        print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("model.pt")))
        with torch.serialization.safe_globals([Tagger, torch_rnn_ext.LSTM, torch_rnn_ext.GRU, torch_rnn_ext.RNN,
                                               torch_rnn_ext.LSTMCell, torch_rnn_ext.MambaMixer,
                                               torch_rnn_ext.RWKV4TimeMix, torch.nn.Linear, torch.nn.Conv1d,
                                               torch.nn.ZeroPad2d]):
            model = torch.load("model.pt", weights_only=True)
        check(model)
        print("ok")
    """)))
    listed, status = out.strip().split("\n")
    assert status == "ok"
    assert ast.literal_eval(listed) == sorted([
        "tagger_models.Tagger", "torch_rnn_ext.modules.rnn.LSTM", "torch_rnn_ext.modules.rnn.GRU",
        "torch_rnn_ext.modules.rnn.RNN", "torch_rnn_ext.modules.cells.LSTMCell",
        "torch_rnn_ext.modules.scans.MambaMixer", "torch_rnn_ext.modules.scans.RWKV4TimeMix",
        "torch.nn.modules.linear.Linear", "torch.nn.modules.conv.Conv1d", "torch.nn.modules.padding.ZeroPad2d"])


@pytest.mark.skipif(not hasattr(torch.serialization, "get_safe_globals"),
                    reason=f"torch {torch.__version__} has no safe-globals registry (torch 2.x API)")
def test_import_registers_no_safe_globals(saved):
    out = ok(run(saved, textwrap.dedent("""
        import sys, torch
        before = list(torch.serialization.get_safe_globals())
        sys.path.insert(0, sys.argv[1])
        import torch_rnn_ext
        print(before == list(torch.serialization.get_safe_globals()))
    """)))
    assert out.strip() == "True"


def test_our_scan_layers_hold_torch_nn_layers():
    """Why registering our classes alone would not make the default load work: ours hold torch.nn's."""
    kinds = {type(m) for m in torch_rnn_ext.MambaMixer(8).modules()}
    assert nn.Conv1d in kinds and nn.Linear in kinds
    kinds = {type(m) for m in torch_rnn_ext.RWKV4TimeMix(8).modules()}
    assert nn.ZeroPad2d in kinds and nn.Linear in kinds
