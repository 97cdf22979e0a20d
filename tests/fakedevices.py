"""Two pretend devices on one CPU, for testing a model split over devices without a second device.

:class:`FakeDevices` is a torch function mode that gives every tensor a pretend device,
``cpu:1`` or ``cpu:2`` (``tensor.device`` reports it; plain CPU tensors are the host, ``cpu``),
and refuses what two real GPUs refuse: an operation whose tensors (other than 0-dim scalars)
live on different devices, except host index tensors in indexing. ``x.to("cpu:2")`` and
``torch.zeros(..., device="cpu:2")`` move a tensor; the numbers themselves never leave the CPU,
so a split run must equal the one-device run bit for bit. :func:`split` tags a model's
parameters and buffers like a sequential device map: the embeddings and layers below ``at`` on
``cpu:1``, the rest and the final norm and unembedding on ``cpu:2``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

_TAG = "_fake_device"
HOST = torch.device("cpu")
A, B = torch.device("cpu", 1), torch.device("cpu", 2)
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_CREATE = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.as_tensor,
           torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand, torch.randn,
           torch.eye, torch.linspace}


def device_of(t: torch.Tensor) -> torch.device:
    return getattr(t, _TAG, HOST)


def _dev(d: Any) -> torch.device | None:
    if isinstance(d, torch.Tensor):
        return device_of(d)
    if isinstance(d, (str, torch.device)):
        return torch.device(d)
    return None


def _target(func: Any, args: tuple, kwargs: dict) -> torch.device | None:
    """The device a ``to``/``cpu``/creation call asks for (None: keep the inputs')."""
    if func in (torch.Tensor.to, torch.Tensor.type_as) or getattr(func, "__name__", "") == "to":
        if "device" in kwargs:
            return _dev(kwargs["device"])
        for a in args[1:]:
            d = _dev(a)
            if d is not None:
                return d
        return None
    if func == torch.Tensor.cpu or func == torch.Tensor.numpy:
        return HOST
    if func in _CREATE or "device" in kwargs:
        return _dev(kwargs.get("device")) or (None if func in _CREATE and "like" in func.__name__ else HOST)
    if func is torch.from_numpy:
        return HOST
    return None


class FakeDevices(TorchFunctionMode):
    """See the module docstring. ``moves`` counts tensors moved between pretend devices."""

    def __init__(self) -> None:
        super().__init__()
        self.moves = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return device_of(args[0])
        target = _target(func, args, kwargs)
        if target is not None and func not in (torch.Tensor.to, torch.Tensor.type_as) and "device" in kwargs:
            kwargs = {**kwargs, "device": "cpu"}
        elif target is not None and func is torch.Tensor.to:
            args = tuple("cpu" if isinstance(a, (str, torch.device)) else a for a in args)
            if "device" in kwargs:
                kwargs = {**kwargs, "device": "cpu"}
        seen = set()
        if target is None or func in (torch.Tensor.to,):
            tensors, _ = tree_flatten((args, kwargs))
            keys: list[torch.Tensor] = []
            if func in _INDEXING and len(args) > 1:
                keys, _ = tree_flatten(args[1])
            for t in tensors:
                if not isinstance(t, torch.Tensor) or t.dim() == 0:
                    continue
                d = device_of(t)
                if d == HOST and any(t is k for k in keys):
                    continue  # a host index tensor indexes a tensor on any device
                seen.add(d)
            if len(seen) > 1 and func is not torch.Tensor.to:
                raise RuntimeError(f"fake devices: {getattr(func, '__name__', func)} mixes tensors on "
                                   f"{sorted(map(str, seen))}")
        if target is not None and func is torch.Tensor.to and next(iter(seen), HOST) != target:
            kwargs = {**kwargs, "copy": True}  # a move makes a new tensor (``to`` returns self otherwise)
            self.moves += 1
        out = func(*args, **kwargs)
        dev = target if target is not None else (next(iter(seen - {HOST}), None) or next(iter(seen), HOST))

        def tag(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and not isinstance(x, torch.nn.Parameter):
                try:
                    setattr(x, _TAG, dev)
                except (AttributeError, RuntimeError):
                    pass
            return x

        if func not in _INDEXING or func is torch.Tensor.__getitem__:
            tree_map(tag, out)
        return out


def split(model: Any, at: int) -> None:
    """Tag ``model``'s (an :class:`intervene.models.adapters.Adapter`) parameters and buffers:
    embeddings and layers below ``at`` on ``cpu:1``, later layers and the head on ``cpu:2``."""
    for t in list(model.hf.parameters()) + list(model.hf.buffers()):
        setattr(t, _TAG, B)
    for l in range(at):
        for t in list(model.layer(l).parameters()) + list(model.layer(l).buffers()):
            setattr(t, _TAG, A)
    lm_head = model.hf.get_output_embeddings()
    head = {id(p) for p in lm_head.parameters()} if lm_head is not None else set()
    emb = model.hf.get_input_embeddings()
    tied = any(id(p) in head for p in emb.parameters())
    for name, mod in model.hf.named_modules():  # token and position embeddings, rotary tables
        if mod is emb or "rotary" in name or name.endswith(("wpe", "embed_positions")):
            for t in list(mod.parameters()) + list(mod.buffers()):
                if not tied or "rotary" in name:  # tied: the embeddings stay with the unembedding
                    setattr(t, _TAG, A)
