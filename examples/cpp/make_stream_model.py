"""Saves what examples/cpp/stream_model.cpp steps through, into one directory:

  lstm_<H>.pt  a scripted torch_rnn_ext.LSTM(64, H), H in 64 and 256 (the weights the C++ program steps)
  data.pt      a scripted holder of tensors: input (T, 1, 64) and, per H, output_<H> / h_n_<H> / c_n_<H>,
               the module's output over the whole sequence in one call

Usage: python3 examples/cpp/make_stream_model.py OUT_DIR   (with the repository root on PYTHONPATH; ctest runs it)
"""
import os
import sys

import torch

import torch_rnn_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model import Tensors  # noqa: E402

INPUT, HIDDEN, STEPS = 64, (64, 256), 200


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(STEPS, 1, INPUT)
    tensors = {"input": x}
    for hidden in HIDDEN:
        model = torch_rnn_ext.LSTM(INPUT, hidden).eval()
        with torch.no_grad():
            out, (h, c) = model(x)
        tensors.update({f"output_{hidden}": out, f"h_n_{hidden}": h, f"c_n_{hidden}": c})
        torch.jit.script(model).save(os.path.join(out_dir, f"lstm_{hidden}.pt"))
    torch.jit.script(Tensors(tensors)).save(os.path.join(out_dir, "data.pt"))
    print(f"saved lstm_{{{','.join(map(str, HIDDEN))}}}.pt and data.pt to {out_dir} "
          f"(op library {torch_rnn_ext.LIBRARY_PATH})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(sys.argv[1])
