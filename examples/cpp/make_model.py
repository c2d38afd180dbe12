"""Saves the TorchScript models that examples/cpp/deploy_model.cpp loads, with their inputs and the outputs
Python computed, into one directory:

  model.pt    scripted, eval mode: 2-layer LSTM -> MambaMixer -> RWKV4TimeMix -> GRU -> Linear head
  trained.pt  the same architecture after 3 SGD steps, left in training mode
  data.pt     a scripted holder of tensors (C++ reads them as attributes): input, expected (model.pt's
              output), expected_trained (trained.pt's output, computed with autograd recording)

Usage: python3 examples/cpp/make_model.py OUT_DIR   (with the repository root on PYTHONPATH; ctest runs it)
"""
import os
import sys

import torch
from torch import Tensor, nn

import torch_rnn_ext


class SequenceModel(nn.Module):
    """(batch, T, n_in) -> (batch, T, n_out), every layer one of torch_rnn_ext's ops but the head."""

    def __init__(self, n_in: int = 6, width: int = 16, n_out: int = 3):
        super().__init__()
        self.lstm = torch_rnn_ext.LSTM(n_in, width, num_layers=2, batch_first=True)
        self.mamba = torch_rnn_ext.MambaMixer(width, d_state=4)
        self.rwkv = torch_rnn_ext.RWKV4TimeMix(width)
        self.gru = torch_rnn_ext.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(x)
        h = h + self.mamba(h)
        h = h + self.rwkv(h)
        h, _ = self.gru(h)
        return self.head(h)


class Tensors(nn.Module):
    """Holds named tensors as buffers, so that C++ reads a TorchScript file written by Python."""

    def __init__(self, tensors):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(2, 9, 6)

    model = SequenceModel().eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected = scripted(x)
        assert torch.equal(expected, model(x)), "scripted and eager outputs differ"
    scripted.save(os.path.join(out_dir, "model.pt"))

    trained = SequenceModel().train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.05)
    target = torch.randn(2, 9, 3)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(trained(x), target).backward()
        opt.step()
    scripted_trained = torch.jit.script(trained)
    expected_trained = scripted_trained(x).detach()  # recorded with autograd on (the saving forward)
    scripted_trained.save(os.path.join(out_dir, "trained.pt"))

    torch.jit.script(Tensors({"input": x, "expected": expected, "expected_trained": expected_trained})).save(
        os.path.join(out_dir, "data.pt"))
    print(f"saved model.pt, trained.pt and data.pt to {out_dir} (op library {torch_rnn_ext.LIBRARY_PATH})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(sys.argv[1])
