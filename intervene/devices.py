"""Devices: which one a run uses, checked before anything loads, and where a split model lives.

What it owns: the device names a user may write (``auto``, ``cpu``, ``cuda``, ``cuda:N``,
``mps``), checked against what this machine has (:func:`resolve_device`: a clear error with code
E090 instead of a raw torch error or an assertion), the ``model.device_map`` values accelerate
understands (``auto``, ``balanced``, ``sequential``, or a table of module name -> device;
:func:`check_device_map`, E091), and the placement logic of a model split over devices
(:func:`module_device`, :func:`layer_devices`: which device holds each layer, read from the
map accelerate filled in, ``hf.hf_device_map``), and moving a chunk's activations to the next
layer's device when the executor crosses from one device to the next (:func:`move`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from intervene.errors import ErrorCode
from intervene.models.support import ModelLoadError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceError(ModelLoadError):
    """A device or device map this machine cannot use (E090, E091); the message says what it has."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.E090, field: str = "device",
                 value: object = None) -> None:
        super().__init__(message, code, field, value)


def _have() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    cuda = f"cuda:0-{n - 1}" if n > 1 else "cuda:0" if n else ""
    return ", ".join(x for x in ("cpu", cuda, "mps" if mps else "") if x)


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for a user's name; ``auto`` is CUDA when available, else CPU.
    :class:`DeviceError` (E090) for a name that is not a device or one this machine lacks."""
    name = str(device)
    if not _DEVICE.match(name):
        raise DeviceError(f'"{name}" is not a device: use one of {DEVICE_NAMES} (this machine has {_have()})',
                          value=name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this build of torch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f'device "{name}": {why} (this machine has {_have()}); use --device cpu or auto',
                              value=name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f'device "{name}": there are {torch.cuda.device_count()} CUDA GPUs '
                              f'(cuda:0-{torch.cuda.device_count() - 1})', value=name)
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f'device "mps": Apple\'s Metal backend is not available here (this machine has {_have()})',
                          value=name)
    return dev


def check_device_map(device_map: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """A device map accelerate can place a model with: one of :data:`DEVICE_MAP_NAMES`, or a
    table module name -> device (``cpu``, ``cuda:N``, an int N, ``mps``) whose devices exist here.
    Offloading (``disk``, ``meta``) is refused: the executor reads weights directly."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_NAMES:
            raise DeviceError(f'device_map "{device_map}" is not one of {", ".join(DEVICE_MAP_NAMES)} or a table '
                              'of module -> device', ErrorCode.E091, "device_map", device_map)
        return device_map
    out: dict[str, Any] = {}
    for module, dev in device_map.items():
        if isinstance(dev, int) and not isinstance(dev, bool):
            dev = f"cuda:{dev}"
        if dev in ("disk", "meta"):
            raise DeviceError(f'device_map puts "{module}" on {dev}: offloaded weights are not supported; '
                              'give it a GPU or cpu', ErrorCode.E091, "device_map", dev)
        try:
            out[module] = str(resolve_device(str(dev)))
        except DeviceError as e:
            raise DeviceError(f'device_map entry "{module}": {e}', ErrorCode.E091, "device_map", dev) from None
    return out


def module_device(device_map: Mapping[str, Any], module: str) -> torch.device | None:
    """The device a module (a dotted name, e.g. ``model.layers.3``) is placed on by a device map
    whose keys are module names (the longest key that is the module or one of its parents;
    ``""`` is the whole model); None when the map does not place it."""
    best: str | None = None
    for key in device_map:
        if key == "" or module == key or module.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    if best is None:
        return None
    dev = device_map[best]
    return torch.device(f"cuda:{dev}" if isinstance(dev, int) and not isinstance(dev, bool) else dev)


def layer_devices(device_map: Mapping[str, Any], layer_names: list[str]) -> list[torch.device]:
    """The device of every layer (``layer_names[l]`` is layer l's module name), in layer order.
    :class:`DeviceError` (E091) for a layer the map does not place."""
    out = []
    for name in layer_names:
        dev = module_device(device_map, name)
        if dev is None:
            raise DeviceError(f'device_map places no module holding layer "{name}"', ErrorCode.E091, "device_map")
        out.append(dev)
    return out


def split_devices(devices: list[torch.device]) -> list[tuple[int, torch.device]]:
    """Where activations move: (first layer, device) for each run of consecutive layers on one
    device, in layer order (one entry when the whole model is on one device)."""
    out: list[tuple[int, torch.device]] = []
    for l, dev in enumerate(devices):
        if not out or out[-1][1] != dev:
            out.append((l, dev))
    return out


def layer_devices_of(model: Any) -> list[torch.device] | None:
    """Each layer's device for a model split over several (its parameters say where), None
    when the whole model is on one device (nothing ever moves)."""
    devs = [next(model.layer(l).parameters()).device for l in range(model.shape.n_layers)]
    return devs if len(set(devs)) > 1 or devs and devs[0] != model.device else None


def move(dev: torch.device, x: Tensor, rot: tuple[Tensor, Tensor] | None, mask: Any, *index: Tensor
         ) -> tuple[Any, ...]:
    """A chunk's activations moved to the next layer's device: the residual, the rotary
    cos/sin, the attention mask (rebuilt there) and any index tensors."""
    from intervene.models.block import Mask

    rot = None if rot is None else (rot[0].to(dev), rot[1].to(dev))
    mask = Mask(mask.keep.to(dev), mask.dtype, mask.start)
    return (x.to(dev), rot, mask, *(t.to(dev) for t in index))
