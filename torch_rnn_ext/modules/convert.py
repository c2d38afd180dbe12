"""torch_rnn_ext.convert: swap torch.nn's recurrent modules for ours inside any model."""
from torch import nn

from . import hf
from .cells import GRUCell, LSTMCell, RNNCell
from .rnn import GRU, LSTM, RNN

__all__ = ["convert"]

_OURS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell,
         nn.RNNCell: RNNCell}


def convert(model: nn.Module) -> nn.Module:
    r"""Replaces, in place, every ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell``, ``nn.GRUCell`` and
    ``nn.RNNCell`` inside ``model`` (the model itself included) with torch_rnn_ext's twin, and returns
    the model.

    Each of our classes has its torch.nn twin's base class and layout and adds no state, so the module object is kept and
    only its class changes: parameters (the same tensors), buffers, device, dtype, training mode, hooks
    and any reference to the module stay as they were. Only exact instances are converted: subclasses of
    the torch.nn classes are left alone, class and forward unchanged (their forward may be custom), while
    the plain torch.nn modules beside or inside them are converted.

    Hugging Face transformers' recurrent mixers are converted too: ``MambaMixer`` (in ``MambaModel`` /
    ``MambaForCausalLM``), ``RwkvSelfAttention`` (in ``RwkvModel`` / ``RwkvForCausalLM``) and
    ``Qwen3NextGatedDeltaNet`` (in ``Qwen3NextModel`` / ``Qwen3NextForCausalLM``) get a subclass of their own
    class whose forward computes the recurrence with our ``selective_scan`` / ``wkv4`` / ``gated_delta_rule``
    ops instead of transformers' PyTorch fallbacks, prefill and cached generation alike (see modules/hf.py). Everything
    else of the model is untouched. Converting twice changes nothing; a model with none of these classes
    is returned unchanged.

    Example::

        >>> model = nn.Sequential(nn.Embedding(100, 16), nn.LSTM(16, 32, batch_first=True))
        >>> torch_rnn_ext.convert(model)  # model[1] is now a torch_rnn_ext.LSTM
    """
    for module in model.modules():
        ours = _OURS.get(type(module)) or hf.converted_class(type(module))
        if ours is not None:
            module.__class__ = ours
    return model
