"""Recording how to rebuild a model: its constructor tree and its modules' attributes.

A model records its constructor with :func:`dfcompress.set_constructor` (dfcompress's
builders do). Otherwise :func:`dfcompress.save` records one itself:

- ``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict``: the container and,
  recursively, each child;
- a ``torch.nn`` layer (Conv2d, Linear, BatchNorm2d, ...): its class and the
  constructor arguments read from its attributes (``in_channels``, ``stride``,
  ``bias`` present or not, ...), checked by rebuilding it;
- any other class that takes no required argument: the class alone.

What cannot be recorded is refused at save time, naming the module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dfcompress._rebuild import get_constructor, kind_of
from dfcompress.errors import DfcompressError
from dfcompress.io._registry import class_params, lookup_factory, resolve_class, split_ref

__all__ = ["attr_kwargs", "from_json", "module_attrs", "record", "to_json"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SCALARS = (int, float, bool, str, type(None))


def to_json(value: Any) -> Any:
    """A constructor argument as JSON: a tuple becomes ``{"__tuple__": [...]}``."""
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
            return tuple(from_json(v) for v in value["__tuple__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def _plain(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, _SCALARS):
        return True
    return isinstance(v, (tuple, list)) and all(isinstance(i, int) for i in v)


def module_attrs(module: nn.Module) -> dict[str, Any]:
    """The plain attributes of ``module`` (sizes, strides, flags) as JSON."""
    out: dict[str, Any] = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training" or not _plain(v):
            continue
        out[k] = to_json(v)
    return out


def attr_kwargs(module: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of a torch.nn layer read from its attributes, or None."""
    params, required = class_params(type(module))
    kwargs: dict[str, Any] = {}
    attrs = vars(module)
    for name in sorted(params):
        if name.startswith("_"):
            continue
        if name == "bias" and ("bias" in module._parameters or "bias" in attrs):
            kwargs[name] = module._parameters.get("bias") is not None
        elif name in attrs and _plain(attrs[name]):
            kwargs[name] = attrs[name]
        elif name in required:
            return None
    return kwargs


def _same_layout(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb) or module_attrs(a) != module_attrs(b):
        return False
    return all(
        sa[k].shape == sb[k].shape
        and (
            sa[k].dtype == sb[k].dtype or (sa[k].is_floating_point() and sb[k].is_floating_point())
        )
        for k in sa
    )


def _refuse(path: str, module: nn.Module, why: str) -> DfcompressError:
    where = f"module {path!r}" if path else "the model"
    return DfcompressError(
        f"save cannot record how to build {where} ({type(module).__qualname__}): {why}. "
        "Record it with dfcompress.set_constructor(model, factory_or_class, **kwargs), "
        "register its factory with dfcompress.register_factory, or pass constructor= to save"
    )


def canonical(ref: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded ``"module:Name"`` as a manifest node, checked to resolve under load's rules."""
    split_ref(ref)
    if lookup_factory(ref, None) is not None:
        return {"factory": ref, "kwargs": to_json(dict(kwargs))}
    module_name, attr = ref.split(":")
    import importlib

    try:
        obj = vars(importlib.import_module(module_name)).get(attr)
    except ImportError as e:
        raise DfcompressError(f"constructor {ref!r} does not import: {e}") from e
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise DfcompressError(
            f"constructor {ref!r} is neither a registered factory nor an nn.Module class: "
            "register it with dfcompress.register_factory"
        )
    cls_ref = f"{obj.__module__}:{obj.__qualname__}"
    resolve_class(cls_ref, None)  # nested or local classes cannot be named by a file
    return {"class": cls_ref, "kwargs": to_json(dict(kwargs))}


def record(module: nn.Module, path: str = "") -> dict[str, Any]:
    """The constructor node that rebuilds ``module``'s skeleton."""
    ctor = get_constructor(module)
    if ctor is not None:
        try:
            return canonical(ctor.get("factory"), ctor.get("kwargs", {}))  # type: ignore[arg-type]
        except DfcompressError as e:
            raise _refuse(path, module, str(e)) from e
    if path and kind_of(module) is not None:
        # A registered module (quantized wrapper, ...): the manifest's module list
        # rebuilds it in place of this placeholder.
        return {"class": "torch.nn.modules.linear:Identity", "kwargs": {}}
    cls = type(module)
    ref = f"{cls.__module__}:{cls.__qualname__}"
    if cls in _CONTAINERS:
        children = []
        for name, child in module._modules.items():
            if child is None:
                raise _refuse(path, module, f"its child {name!r} is None")
            children.append([name, record(child, f"{path}.{name}" if path else name)])
        return {"class": ref, "kwargs": {}, "children": children}
    if cls.__module__.startswith("torch.nn."):
        kwargs = attr_kwargs(module)
        if kwargs is None:
            raise _refuse(path, module, "its constructor arguments are not all attributes")
        try:
            with torch.device("meta"):
                again = cls(**kwargs)
        except Exception as e:
            raise _refuse(path, module, f"rebuilding it from its attributes failed: {e}") from e
        if not _same_layout(module, again):
            raise _refuse(path, module, "rebuilding it from its attributes gives another layout")
        return {"class": ref, "kwargs": to_json(kwargs)}
    _, required = class_params(cls)
    if required:
        raise _refuse(path, module, f"its class needs arguments {sorted(required)!r}")
    try:
        resolve_class(ref, None)
    except DfcompressError as e:
        raise _refuse(path, module, str(e)) from e
    return {"class": ref, "kwargs": {}}
