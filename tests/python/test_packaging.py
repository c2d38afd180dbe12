"""`pip wheel` yields a wheel that installs into a fresh virtualenv and runs there."""
import glob
import os
import subprocess
import sys
import textwrap

import torch

from conftest import REPO_ROOT


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_wheel_installs_and_runs_in_fresh_virtualenv(tmp_path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheels), "."],
        cwd=REPO_ROOT)
    (wheel,) = glob.glob(str(wheels / "torch_rnn_ext-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    # The fresh environment sees this one's torch (a .venv's or Debian's), not a copy of it.
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(site, "parent_torch.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    # Neither step sees this checkout: with it on PYTHONPATH, pip takes the torch_rnn_ext.egg-info that
    # `pip wheel` leaves in it for an installed copy and installs nothing.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TORCH_RNN_EXT_LIBRARY")}
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", wheel], env=env)
    check = textwrap.dedent("""
        import torch, torch_rnn_ext
        assert "site-packages" in torch_rnn_ext.__file__, torch_rnn_ext.__file__
        ref = torch.nn.LSTM(3, 4)
        ours = torch_rnn_ext.LSTM(3, 4)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(5, 2, 3)
        assert torch.allclose(ours(x)[0], ref(x)[0], atol=1e-5)
        print("ok", torch_rnn_ext.LIBRARY_PATH, torch.__version__)
    """)
    out = run([py, "-c", check], cwd=str(tmp_path), env=env)
    assert out.startswith("ok ") and str(venv) in out
    assert out.split()[-1] == torch.__version__, out  # the wheel's library is the one for this torch
