"""Compiles a sequence model (MambaMixer, a 2-layer LSTM stack and a bidirectional GRU, dynamic sequence
length) with torch.export and AOTInductor into OUT_DIR/model.pt2, and writes inputs of two lengths with
Python's outputs to OUT_DIR/data.pt (a TorchScript module of buffers, which C++ reads) for aoti_model.cpp.
Needs torch >= 2.6 (torch._inductor.aoti_compile_and_package)."""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch_rnn_ext  # noqa: E402

from make_model import Tensors  # noqa: E402


class SequenceModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.mamba = torch_rnn_ext.MambaMixer(8, d_state=4)
        self.lstm = torch_rnn_ext.LSTM(8, 8, num_layers=2, batch_first=True)
        self.gru = torch_rnn_ext.GRU(8, 4, bidirectional=True, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(self.mamba(x))
        y, h = self.gru(y)
        return y, h


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    model = SequenceModel().eval()
    seq = torch.export.Dim("seq", min=2, max=4096)
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(2, 10, 8),), dynamic_shapes=({1: seq},))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(out_dir, "model.pt2"))
        data = {}
        for name, L in (("a", 9), ("b", 31)):
            x = torch.randn(2, L, 8)
            y, h = model(x)
            data.update({f"input_{name}": x, f"output_{name}": y, f"h_n_{name}": h})
    torch.jit.script(Tensors(data)).save(os.path.join(out_dir, "data.pt"))
    print(f"saved {path} and data.pt to {out_dir} (op library {torch_rnn_ext.LIBRARY_PATH})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(sys.argv[1])
