"""Streaming inference and truncated BPTT: run a model chunk by chunk with its recurrent state carried.

:class:`Streamer` wraps an eager model. Each call runs ``model(*args)`` while every recurrent layer in
it starts from the state it ended with in the previous call; the states live in the Streamer, not in
the model, so several Streamers over one model are independent streams sharing the weights.
"""
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

from .modules.scans import MambaMixer, RWKV4TimeMix

__all__ = ["Streamer"]

_STREAMED_NAMES = {"LSTM", "GRU", "RNN", "MambaMixer", "RWKV4TimeMix"}


def _map_state(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


class Streamer:
    r"""Runs ``model`` on consecutive chunks of a stream, carrying the state of its recurrent layers.

    ``stream = Streamer(model); y = stream(chunk)`` returns ``model(chunk)``, computed as if each
    recurrent layer inside ``model`` had seen the previous chunks too. Streamed layers:

    - :class:`torch_rnn_ext.LSTM`, :class:`GRU`, :class:`RNN` (and torch.nn's ``LSTM``/``GRU``/``RNN``,
      which share their interface): unidirectional only. A call without ``hx`` gets the carried state,
      kept exactly as the layer returned it: (h_n, c_n) for LSTM (with ``proj_size``, h_n has width P),
      h_n otherwise; ``(L, B, H)`` batched (``batch_first`` does not change it), ``(L, H)`` for unbatched
      input. A call that passes its own ``hx`` runs untouched and updates nothing.
    - :class:`torch_rnn_ext.MambaMixer` (state ``(conv_state, ssm_state)``) and
      :class:`torch_rnn_ext.RWKV4TimeMix` (state ``(last_x, wkv_state)``), through their
      ``forward_with_state``; the first chunk starts from ``allocate_state(batch)``.

    Cells (``LSTMCell``, ...) are not sequence layers and are left alone. For chunked results to equal
    the full-sequence ``model(sequence)``, the model's other layers must work per timestep (Linear,
    LayerNorm, embeddings, ...). A layer called several times in one model call has one state per call
    (named ``name``, ``name#1``, ...).

    Args:
        model: an eager ``nn.Module`` (not a ScriptModule) containing the recurrent layers.

    Raises:
        ValueError: a bidirectional layer (it needs the future, so it cannot stream), naming the layer.
        TypeError: ``model`` or a recurrent submodule is a TorchScript module.

    Methods and attributes:
        ``stream(*args, **kwargs)``: ``model(*args, **kwargs)`` with the carried states.
        ``reset()``: forget the states (the next call starts a new stream).
        ``detach()``: keep the states' values, cut their autograd history (truncated BPTT).
        ``state``: a dict ``{layer name: state}`` (a copy; assign a dict from ``state`` to restore it).

    Gradients flow within a call and, until :meth:`detach`, across calls through the carried states.
    The batch size must stay the same between resets.

    Implementation and threads: during a call the Streamer sets an instance attribute ``forward`` on
    each streamed layer and removes it in a ``finally``, so the model is unchanged between calls. Hence
    one model must not run through two Streamers (or itself) at the same time from different threads;
    nesting or overlapping calls on one model raise RuntimeError. Use one model copy per thread.

    Example::

        >>> model = nn.Sequential(torch_rnn_ext.LSTM(10, 20, batch_first=True))
        >>> stream = torch_rnn_ext.Streamer(model)
        >>> with torch.no_grad():
        ...     for chunk in torch.randn(4, 50, 10).split(5, dim=1):
        ...         out, (h, c) = stream(chunk)      # equals model(full sequence) chunk by chunk
        >>> stream.reset()

    Truncated BPTT::

        >>> for chunk, target in zip(inputs, targets):
        ...     loss = loss_fn(stream(chunk)[0], target)
        ...     opt.zero_grad(); loss.backward(); opt.step()
        ...     stream.detach()
    """

    def __init__(self, model: nn.Module):
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError("Streamer needs an eager model, got a TorchScript module; stream a scripted "
                            "model by passing the states explicitly (hx, forward_with_state)")
        self.model = model
        # (name, layer, the forward installed on it during a call: made once, not per call)
        self._layers: List[Tuple[str, nn.Module, Callable]] = []
        for name, m in model.named_modules():
            label = f"'{name}' ({type(m).__name__})" if name else f"the model itself ({type(m).__name__})"
            if isinstance(m, torch.jit.ScriptModule):
                if getattr(m, "original_name", "") in _STREAMED_NAMES:
                    raise TypeError(f"Streamer: {label} is a TorchScript module; its state cannot be "
                                    "carried. Script the layer after streaming, or keep it eager")
                continue
            if isinstance(m, nn.RNNBase):
                if m.bidirectional:
                    raise ValueError(f"Streamer: {label} is bidirectional; a bidirectional layer needs the "
                                     "whole sequence and cannot stream")
                self._layers.append((name, m, self._wrap(name, m)))
            elif isinstance(m, (MambaMixer, RWKV4TimeMix)):
                self._layers.append((name, m, self._wrap(name, m)))
        self._state: Dict[str, Any] = {}
        self._calls: Dict[str, int] = {}

    # --- public API ---------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        installed: List[Tuple[nn.Module, Any]] = []
        self._calls = {}
        try:
            for name, m, wrapper in self._layers:
                previous = m.__dict__.get("forward")
                if getattr(previous, "_torch_rnn_ext_streamer", False):
                    raise RuntimeError(f"Streamer: '{name}' is already being streamed (a nested call, or "
                                       "another thread: Streamers are not thread-safe)")
                wrapper.inner = m.forward  # what the layer would run: an instance forward, or its class's
                m.__dict__["forward"] = wrapper
                installed.append((m, previous))
            return self.model(*args, **kwargs)
        finally:
            for m, previous in installed:
                if previous is None:
                    del m.__dict__["forward"]
                else:
                    m.__dict__["forward"] = previous

    def reset(self) -> None:
        """Forgets the carried states: the next call starts a new stream."""
        self._state = {}

    def detach(self) -> None:
        """Cuts the autograd history of the carried states, keeping their values (truncated BPTT)."""
        self._state = {k: _map_state(v, Tensor.detach) for k, v in self._state.items()}

    @property
    def state(self) -> Dict[str, Any]:
        """The carried states by layer name (empty after :meth:`reset`); a copy of the dict."""
        return dict(self._state)

    @state.setter
    def state(self, value: Dict[str, Any]) -> None:
        self._state = dict(value)

    def __repr__(self) -> str:
        names = ", ".join(repr(n) for n, _, _ in self._layers)
        return f"Streamer(layers=[{names}], carried={sorted(self._state)})"

    # --- per-layer forwards installed during a call --------------------------------------------------

    def _key(self, name: str) -> str:
        n = self._calls.get(name, 0)
        self._calls[name] = n + 1
        return name if n == 0 else f"{name}#{n}"

    def _wrap(self, name: str, m: nn.Module) -> Callable:
        """The forward installed on layer ``m`` during a call; ``__call__`` sets its ``inner`` (the
        forward the layer had) before each call."""
        if isinstance(m, nn.RNNBase):
            def rnn_forward(input, hx=None):
                if hx is not None:
                    return rnn_forward.inner(input, hx)  # the model's own state: not ours to carry
                key = self._key(name)
                output, hidden = rnn_forward.inner(input, self._state.get(key))
                self._state[key] = hidden
                return output, hidden
            wrapper = rnn_forward
        else:
            def scan_forward(x: Tensor) -> Tensor:
                key = self._key(name)
                carried = self._state.get(key)
                if carried is None:
                    carried = m.allocate_state(x.size(0))
                out, s0, s1 = m.forward_with_state(x, carried[0], carried[1])
                self._state[key] = (s0, s1)
                return out
            wrapper = scan_forward
        wrapper._torch_rnn_ext_streamer = True  # type: ignore[attr-defined]
        return wrapper
