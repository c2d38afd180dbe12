"""onnxruntime as an anchor for the LSTM / GRU / RNN rows of benchmarks/bench.py: our module (with the
row's weights) exported by our ONNX path (standard LSTM / GRU / RNN nodes, torch_rnn_ext/_onnx_export.py)
and run by onnxruntime's CPU execution provider with intra_op_num_threads equal to torch's thread count;
for LSTM also onnxruntime's own int8 path (onnxruntime.quantization.quantize_dynamic, which turns the
LSTM node into DynamicQuantizeLSTM). onnx and onnxruntime are pinned in the torch 2.x environment.
"""
import os
import tempfile
from typing import Callable, Dict, Optional

import torch


def available() -> Optional[str]:
    """None when onnxruntime can be used here, else why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed for this Python ({e.name}); it is pinned in the torch 2.x environment"
    return None


def forward_functions(model: torch.nn.Module, x: torch.Tensor, threads: int, int8: bool) -> Dict[str, Callable]:
    """{"ort": fn[, "ort_int8": fn]}: one onnxruntime run of the exported model on x each."""
    import onnxruntime as ort
    folder = tempfile.mkdtemp(prefix="tre_ort_")
    path = os.path.join(folder, "model.onnx")
    kw = {"dynamo": False} if int(torch.__version__.split(".")[0]) >= 2 else {}
    with torch.no_grad():
        torch.onnx.export(model.eval(), (x,), path, input_names=["x"], opset_version=14, **kw)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    paths = {"ort": path}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        paths["ort_int8"] = os.path.join(folder, "model_int8.onnx")
        quantize_dynamic(path, paths["ort_int8"], weight_type=QuantType.QInt8)
    feed = {"x": x.numpy()}
    fns = {}
    for name, p in paths.items():
        session = ort.InferenceSession(p, options, providers=["CPUExecutionProvider"])
        fns[name] = (lambda s=session: s.run(None, feed))
    return fns
