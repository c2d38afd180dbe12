"""Streaming inference and truncated BPTT: run a model chunk by chunk with its recurrent state carried.

:class:`Streamer` wraps an eager model. Each call runs ``model(*args)`` while every recurrent layer in
it starts from the state it ended with in the previous call; the states live in the Streamer, not in
the model, so several Streamers over one model are independent streams sharing the weights.
"""
import contextvars
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .modules.gated_deltanet import GatedDeltaNet
from .modules.scans import MambaMixer, RWKV4TimeMix

__all__ = ["Streamer"]

_STREAMED_NAMES = {"LSTM", "GRU", "RNN", "MambaMixer", "RWKV4TimeMix", "GatedDeltaNet"}


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
    - :class:`torch_rnn_ext.MambaMixer` (state ``(conv_state, ssm_state)``),
      :class:`torch_rnn_ext.RWKV4TimeMix` (state ``(last_x, wkv_state)``) and
      :class:`torch_rnn_ext.GatedDeltaNet` (state ``(conv_state, recurrent_state)``), through their
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

    Implementation and threads: while a call runs, each streamed layer has an instance attribute
    ``forward`` that looks up which Streamer call, if any, streams the layer in the calling thread (a
    ``contextvars.ContextVar``): that call's state is used and updated only by layer calls made inside
    it; any other call of the layer (a plain ``model(x)``, e.g. from another thread) runs the layer's
    own forward untouched. The attribute is installed under a lock by the first call running over the
    layer, shared (counted) by the calls running at the same time, and removed when the last one ends,
    so the model is unchanged between calls. Hence one model may serve, at the same time from different
    threads, plain calls and several Streamers (each with its own state). One Streamer is one stream: a
    call while another call of the same Streamer runs (in another thread) raises RuntimeError, as does a
    nested call (a Streamer call inside another Streamer call over the same layer, in one thread).

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
        # (name, layer, how this Streamer runs the layer during its calls: made once, not per call)
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
            elif isinstance(m, (MambaMixer, RWKV4TimeMix, GatedDeltaNet)):
                self._layers.append((name, m, self._wrap(name, m)))
        self._state: Dict[str, Any] = {}
        self._calls: Dict[str, int] = {}  # in the running call: how many times each layer ran
        self._running: Optional[int] = None  # the thread running a call of this Streamer (under _LOCK)
        # What a call of this Streamer marks active in its context: {id(layer): how to run it}. Never
        # mutated (a nested call over other layers sets a merged copy).
        self._active: Dict[int, Callable] = {id(m): run for _, m, run in self._layers}
        # The forward to install on each layer that has no instance forward of its own: made once
        self._forwards: Dict[int, Callable] = {id(m): _make_forward(m, None) for _, m, _ in self._layers}

    # --- public API ---------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        active = _ACTIVE.get()
        if active:
            for name, m, _ in self._layers:
                if id(m) in active:
                    raise RuntimeError(f"Streamer: '{name}' is already being streamed by a call running in "
                                       "this thread (a nested call: a Streamer called inside another "
                                       "Streamer's call over the same layer)")
            mine = {**active, **self._active}
        else:
            mine = self._active
        with _LOCK:
            if self._running is not None:
                where = "this thread (a nested call)" if self._running == threading.get_ident() else \
                    "another thread"
                raise RuntimeError(f"Streamer: this stream is already running a call in {where}; a stream's "
                                   "chunks are sequential. Give each thread its own Streamer (several "
                                   "Streamers over one model may run at the same time)")
            done = 0
            try:
                for _, m, _ in self._layers:
                    _install(m, self._forwards[id(m)])
                    done += 1
            except BaseException:
                for _, m, _ in self._layers[:done]:
                    _uninstall(m)
                raise
            self._running = threading.get_ident()
        try:
            self._calls = {}
            token = _ACTIVE.set(mine)
            try:
                return self.model(*args, **kwargs)
            finally:
                _ACTIVE.reset(token)
        finally:
            with _LOCK:
                for _, m, _ in self._layers:
                    _uninstall(m)
                self._running = None

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

    # --- how a streamed layer runs inside this Streamer's calls --------------------------------------

    def _key(self, name: str) -> str:
        n = self._calls.get(name, 0)
        self._calls[name] = n + 1
        return name if n == 0 else f"{name}#{n}"

    def _wrap(self, name: str, m: nn.Module) -> Callable:
        """What the installed forward of layer ``m`` runs inside this Streamer's calls, given the layer's
        own forward and the layer's arguments."""
        if isinstance(m, nn.RNNBase):
            def rnn_forward(original: Callable, input, hx=None):
                if hx is not None:
                    return original(input, hx)  # the model's own state: not ours to carry
                key = self._key(name)
                output, hidden = original(input, self._state.get(key))
                self._state[key] = hidden
                return output, hidden
            return rnn_forward

        def scan_forward(original: Callable, x: Tensor) -> Tensor:
            key = self._key(name)
            carried = self._state.get(key)
            if carried is None:
                carried = m.allocate_state(x.size(0))
            out, s0, s1 = m.forward_with_state(x, carried[0], carried[1])
            self._state[key] = (s0, s1)
            return out
        return scan_forward


# --- the forward installed on a layer while Streamer calls over it run --------------------------------
#
# Which Streamer call (if any) streams a layer is per thread (per context): inside a Streamer call,
# _ACTIVE maps id(layer) to that Streamer's way of running the layer; elsewhere it is empty. The
# installed forward is one per layer, shared by all threads: it looks _ACTIVE up and runs the layer's
# own forward when no call of this context streams the layer. _INSTALLED counts, per layer, the
# Streamer calls running over it (in any thread): the first installs the forward, the last removes it.
# Both under _LOCK.

_ACTIVE: "contextvars.ContextVar[Dict[int, Callable]]" = contextvars.ContextVar(
    "torch_rnn_ext_streamer_active", default={})  # never mutated
_LOCK = threading.Lock()


# id(layer) -> [count, the instance forward the layer had before (or None), the installed forward], while
# Streamer calls over the layer run
_INSTALLED: Dict[int, List[Any]] = {}


def _make_forward(m: nn.Module, previous: Optional[Callable]) -> Callable:
    """The forward to install on ``m``; ``previous``: the instance forward it had, if any (else its
    class's forward runs)."""
    key = id(m)
    if previous is None:
        def original(*args, **kwargs):
            return type(m).forward(m, *args, **kwargs)
    else:
        original = previous

    def forward(*args, **kwargs):
        run = _ACTIVE.get().get(key)
        if run is None:  # no Streamer call of this thread streams this layer
            return original(*args, **kwargs)
        return run(original, *args, **kwargs)

    return forward


def _install(m: nn.Module, forward: Callable) -> None:
    """One more Streamer call over ``m``: the first installs ``forward`` (made for a layer without an
    instance forward; one is made around it otherwise)."""
    record = _INSTALLED.get(id(m))
    if record is None:
        d = m.__dict__
        previous = d.get("forward")
        if previous is not None:
            forward = _make_forward(m, previous)
        _INSTALLED[id(m)] = [1, previous, forward]
        d["forward"] = forward
    else:
        record[0] += 1


def _uninstall(m: nn.Module) -> None:
    record = _INSTALLED[id(m)]
    record[0] -= 1
    if record[0] == 0:
        del _INSTALLED[id(m)]
        d = m.__dict__
        if d.get("forward") is record[2]:  # (unless someone replaced it meanwhile)
            if record[1] is None:
                del d["forward"]
            else:
                d["forward"] = record[1]
