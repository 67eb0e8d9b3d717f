"""Registry of module classes that :func:`dfcompress.load` can rebuild from JSON.

A compressed model contains modules that its original constructor does not
build (quantized wrappers, packed binary convolutions, ...). So that a saved
model can be rebuilt without unpickling code, each such class registers itself
under a stable *kind* string and implements two methods::

    @register_module("quant.conv2d")
    class QuantConv2d(nn.Module):
        def dfc_spec(self) -> dict[str, Any]:      # JSON-able constructor arguments
            ...
        @classmethod
        def dfc_from_spec(cls, spec: dict[str, Any]) -> QuantConv2d:  # empty module, same structure
            ...

``dfc_from_spec(m.dfc_spec())`` must give a module with exactly the same
state-dict keys, shapes and dtypes as ``m`` (values are loaded afterwards).

A class may also define ``dfc_adopt(self, spec, current)``: :func:`rebuild`
then hands it the module that the model's own constructor built at the same
path, before the rebuilt module takes its place. A quantized wrapper of a layer
with its own forward keeps that layer this way (checking that its class is the
recorded one): the file never names code to import, only the model's skeleton
is reused.
:func:`dfcompress.save` records the spec of every registered module that is
not inside another registered module; :func:`dfcompress.load` rebuilds them in
place after calling the model's constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from torch import nn

from dfcompress.errors import DfcompressError

__all__ = [
    "Rebuildable",
    "added_as",
    "get_constructor",
    "kind_of",
    "rebuild",
    "register_module",
    "registered_kinds",
    "set_constructor",
]


@runtime_checkable
class Rebuildable(Protocol):
    """What a registered module class provides."""

    def dfc_spec(self) -> dict[str, Any]: ...


_M = TypeVar("_M", bound=type[nn.Module])
_KINDS: dict[str, type[nn.Module]] = {}
_CLASS_TO_KIND: dict[type[nn.Module], str] = {}


def register_module(kind: str) -> Callable[[_M], _M]:
    """Class decorator: make a module class rebuildable by :func:`dfcompress.load`."""

    def deco(cls: _M) -> _M:
        if not hasattr(cls, "dfc_spec") or not hasattr(cls, "dfc_from_spec"):
            raise DfcompressError(
                f"{cls.__qualname__} cannot be registered as {kind!r}: it needs "
                "dfc_spec() and a dfc_from_spec(spec) classmethod"
            )
        old = _KINDS.get(kind)
        if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
            raise DfcompressError(
                f"kind {kind!r} is already registered by {old.__module__}.{old.__qualname__}"
            )
        _KINDS[kind] = cls
        _CLASS_TO_KIND[cls] = kind
        return cls

    return deco


def kind_of(module: nn.Module) -> str | None:
    """The registered kind of ``module``'s exact class, or None."""
    return _CLASS_TO_KIND.get(type(module))


def added_as(kind: str) -> str | None:
    """The child name under which a module of ``kind`` may be added to any module.

    Most registered modules replace a module the model's constructor built; a class
    with ``dfc_added_as = "name"`` is instead added as a new child of that name
    (e.g. the output quantizers of the operators a module calls).
    """
    _import_builtin_kinds()
    name = getattr(_KINDS.get(kind), "dfc_added_as", None)
    return name if isinstance(name, str) else None


def registered_kinds() -> list[str]:
    """All registered kinds, sorted."""
    return sorted(_KINDS)


def rebuild(kind: str, spec: dict[str, Any], current: nn.Module | None = None) -> nn.Module:
    """Build an empty module of a registered kind from its JSON spec.

    ``current`` is the module the model's constructor built where this one goes
    (offered to the class's ``dfc_adopt``, if it has one).
    """
    _import_builtin_kinds()
    cls = _KINDS.get(kind)
    if cls is None:
        raise DfcompressError(
            f"unknown module kind {kind!r} in the manifest: known kinds are "
            f"{', '.join(registered_kinds()) or '(none)'}"
        )
    try:
        module = cls.dfc_from_spec(spec)  # type: ignore[attr-defined]
        adopt = getattr(module, "dfc_adopt", None)
        if callable(adopt):
            adopt(spec, current)
    except DfcompressError:
        raise
    except Exception as e:
        raise DfcompressError(f"cannot rebuild a {kind!r} module from spec {spec!r}: {e}") from e
    if not isinstance(module, nn.Module):
        raise DfcompressError(f"{kind!r} rebuilt into {type(module).__name__}, not an nn.Module")
    # A spec the class does not reproduce was not written by dfc_spec: values of
    # the wrong type would otherwise be accepted here and fail later, in forward.
    if _as_json(module.dfc_spec()) != _as_json(spec):  # type: ignore[operator]
        raise DfcompressError(
            f"the {kind!r} spec {spec!r} does not rebuild into the same module; "
            "it was not written by dfcompress.save"
        )
    return module


def _as_json(value: Any) -> Any:
    import json

    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise DfcompressError(f"a module spec is not JSON: {e}") from e


# Subpackages that register kinds. Imported lazily so that `load` finds every
# built-in kind even when the user never imported that subpackage.
_BUILTIN_PROVIDERS = (
    "dfcompress.quant",
    "dfcompress.prune",
    "dfcompress.models",
    "dfcompress.features",
    "dfcompress.deploy._onnx_elementwise",
)


def _import_builtin_kinds() -> None:
    import importlib

    for name in _BUILTIN_PROVIDERS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


def set_constructor(
    model: nn.Module, factory: str | Callable[..., nn.Module], **kwargs: Any
) -> nn.Module:
    """Record how to rebuild ``model``: a registered factory or an nn.Module class, plus kwargs.

    ``factory`` is a function registered with :func:`dfcompress.register_factory`
    or an ``nn.Module`` subclass (or its ``"package.module:Name"``); ``kwargs`` are
    JSON values (tuples are kept as tuples). :func:`dfcompress.save` writes this
    into the manifest and checks that it rebuilds the model's structure;
    :func:`dfcompress.load` calls ``factory(**kwargs)`` to get the skeleton it
    loads the tensors into. dfcompress's own builders call this; users can too.

    >>> from torch import nn
    >>> net = set_constructor(nn.Linear(3, 2), nn.Linear, in_features=3, out_features=2)
    >>> net.dfc_constructor["factory"]
    'torch.nn.modules.linear:Linear'
    """
    if isinstance(factory, str):
        ref = factory
    elif isinstance(factory, type) or callable(factory):
        from dfcompress.io._registry import factory_for

        registered = factory_for(factory)
        qualname = getattr(factory, "__qualname__", "")
        ref = registered.name if registered else f"{factory.__module__}:{qualname}"
    else:
        raise DfcompressError(
            f"factory={factory!r} must be a registered factory, an nn.Module class, "
            "or their 'package.module:Name'"
        )
    if ":" not in ref:
        raise DfcompressError(f"factory {ref!r} must look like 'package.module:Name'")
    model.dfc_constructor = {"factory": ref, "kwargs": dict(kwargs)}  # type: ignore[assignment]
    return model


def get_constructor(model: nn.Module) -> dict[str, Any] | None:
    """The constructor recorded by :func:`set_constructor`, or None."""
    c = getattr(model, "dfc_constructor", None)
    return dict(c) if isinstance(c, dict) else None
