"""A model saved with torch_rnn_ext's ops needs the op library where it is loaded: in a fresh Python
process without it, torch.jit.load fails with PyTorch's "Unknown builtin op: torch_rnn_ext::..." error;
after torch.ops.load_library(torch_rnn_ext.LIBRARY_PATH) (and nothing else of the package) it loads and
gives the same outputs, bit for bit."""
import os
import subprocess
import sys

import torch
from torch import Tensor, nn

import torch_rnn_ext

# Run in a fresh interpreter, deliberately without the repository on sys.path: argv = model, input, library
# (or "" for none), output path. Prints whether torch_rnn_ext (the package) was imported.
LOADER = r"""
import sys
import torch
model_path, input_path, library, out_path = sys.argv[1:]
if library:
    torch.ops.load_library(library)
try:
    model = torch.jit.load(model_path)
except Exception as e:
    print("LOAD FAILED:", type(e).__name__, e)
    sys.exit(3)
torch.save(model(torch.load(input_path)), out_path)
print("package imported:", "torch_rnn_ext" in sys.modules)
"""


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch_rnn_ext.GRU(4, 8, num_layers=2, batch_first=True)
        self.rwkv = torch_rnn_ext.RWKV4TimeMix(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.gru(x)
        return self.head(h + self.rwkv(h))


def run_loader(tmp_path, model_path, input_path, library):
    out_path = tmp_path / f"out_{bool(library)}.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TORCH_RNN_EXT_LIBRARY")}
    r = subprocess.run([sys.executable, "-c", LOADER, str(model_path), str(input_path), library, str(out_path)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    return r, out_path


def test_loading_needs_the_op_library_and_works_with_it_alone(tmp_path):
    torch.manual_seed(0)
    model = Model().eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 7, 4)
    with torch.no_grad():
        expected = scripted(x)
    model_path, input_path = tmp_path / "model.pt", tmp_path / "x.pt"
    scripted.save(str(model_path))
    torch.save(x, input_path)

    r, _ = run_loader(tmp_path, model_path, input_path, "")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "LOAD FAILED" in r.stdout
    assert "Unknown builtin op: torch_rnn_ext::" in r.stdout, r.stdout

    r, out_path = run_loader(tmp_path, model_path, input_path, torch_rnn_ext.LIBRARY_PATH)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "package imported: False" in r.stdout
    assert torch.equal(torch.load(out_path), expected)


def test_library_path_is_the_loaded_library():
    assert os.path.isabs(torch_rnn_ext.LIBRARY_PATH) and os.path.exists(torch_rnn_ext.LIBRARY_PATH)
    assert torch_rnn_ext.LIBRARY_PATH in torch.ops.loaded_libraries
