"""What a file may ask :func:`dfcompress.load` to call: allowed classes and registered factories.

A file names its constructor by a string ``"package.module:Name"``. It is
honoured in exactly two cases:

- ``Name`` is a function registered with :func:`register_factory` (dfcompress's
  own model builders are; ``timm:create_model`` is registered lazily when
  ``"timm"`` is allowed);
- ``Name`` is an :class:`torch.nn.Module` subclass *defined* in ``package.module``
  (its ``__module__`` says so), and that module lies in an allowed package
  (``dfcompress`` and ``torch.nn`` always; more with ``allow=``).

Resolution imports the module and reads one attribute from its namespace:
no attribute path is walked, so ``"dfcompress.io:os.system"`` names nothing.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

from dfcompress.errors import DfcompressError, UnsafeFileError

__all__ = [
    "DEFAULT_ALLOW",
    "Factory",
    "check_kwargs",
    "is_allowed",
    "lookup_factory",
    "register_factory",
    "resolve_class",
    "split_ref",
]

DEFAULT_ALLOW = ("dfcompress", "torch.nn")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*|_[A-Za-z0-9][A-Za-z0-9_]*")
# Keyword names a file may never set, whatever a factory declares: they would
# widen what load trusts or point it at another file.
_RESERVED = frozenset({"allow", "factory", "path", "checkpoint_path", "pretrained_cfg_overlay"})


@dataclass(frozen=True)
class Factory:
    """A registered model factory and the keyword arguments a file may pass it."""

    name: str
    fn: Callable[..., nn.Module]
    params: frozenset[str]
    required: frozenset[str]


_FACTORIES: dict[str, Factory] = {}
_IO_VERBS = frozenset({"load", "save", "serialize", "serialized_size", "read_manifest"})
_F = TypeVar("_F", bound=Callable[..., Any])


def split_ref(ref: object, what: str = "constructor") -> tuple[str, str]:
    """``"package.module:Name"`` -> ``("package.module", "Name")``, or UnsafeFileError."""
    if not isinstance(ref, str) or len(ref) > 300:
        raise UnsafeFileError(f"{what} {ref!r} is not a 'package.module:Name' string")
    module_name, _, attr = ref.partition(":")
    if not _MODULE_RE.fullmatch(module_name) or not _NAME_RE.fullmatch(attr):
        raise UnsafeFileError(
            f"{what} {ref!r} must be 'package.module:Name', one name after the colon"
        )
    return module_name, attr


def is_allowed(module_name: str, allow: Iterable[str]) -> bool:
    """Whether ``module_name`` lies in one of the ``allow`` packages."""
    return any(module_name == a or module_name.startswith(a + ".") for a in allow)


def _signature_params(fn: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str]]:
    """Named keyword parameters of ``fn`` and those without a default."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise DfcompressError(f"cannot read the signature of {fn!r}: {e}") from e
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in sig.parameters.values() if p.kind in kinds and p.name != "self"]
    return (
        frozenset(p.name for p in named),
        frozenset(p.name for p in named if p.default is inspect.Parameter.empty),
    )


@overload
def register_factory(
    fn: _F, *, name: str | None = ..., params: Iterable[str] | None = ...
) -> _F: ...
@overload
def register_factory(
    fn: None = ..., *, name: str | None = ..., params: Iterable[str] | None = ...
) -> Callable[[_F], _F]: ...
def register_factory(
    fn: _F | None = None, *, name: str | None = None, params: Iterable[str] | None = None
) -> _F | Callable[[_F], _F]:
    """Let files name ``fn`` as the function that builds a model's skeleton.

    A file names a factory as ``"package.module:function"`` (``name``, by default
    ``fn``'s own module and qualified name) and passes it JSON keyword arguments,
    only those in ``params`` (by default every named parameter of ``fn``; a
    ``**kwargs`` catch-all is never exposed). :func:`dfcompress.load` calls a
    registered factory without needing ``allow=``; the factory's module is imported
    by name only when its package is allowed.

    Usable as a decorator, with or without arguments:

    >>> import dfcompress as dfc
    >>> from torch import nn
    >>> @dfc.register_factory(name="mypkg.heads:tiny_head")
    ... def tiny_head(features: int = 4) -> nn.Module:
    ...     return dfc.set_constructor(nn.Linear(features, 1), tiny_head, features=features)
    >>> tiny_head(8).dfc_constructor
    {'factory': 'mypkg.heads:tiny_head', 'kwargs': {'features': 8}}
    """

    def deco(f: _F) -> _F:
        if not callable(f):
            raise DfcompressError(f"register_factory expects a function, got {f!r}")
        key = name if name is not None else f"{f.__module__}:{f.__qualname__}"
        if f.__module__.startswith("dfcompress.io.") and f.__qualname__ in _IO_VERBS:
            raise DfcompressError(f"{key} is part of save/load and cannot be a factory")
        split_ref(key, "factory name")
        declared, required = _signature_params(f)
        if params is not None:
            wanted = frozenset(params)
            unknown = wanted - declared
            if unknown and not _has_var_keyword(f):
                raise DfcompressError(
                    f"params={sorted(wanted)!r} names {sorted(unknown)!r}, which "
                    f"{key} does not take: use some of {sorted(declared)!r}"
                )
            declared = wanted
        bad = declared & _RESERVED
        if bad:
            raise DfcompressError(
                f"{key} cannot be registered with parameter(s) {sorted(bad)!r}: a file may "
                f"never set {sorted(_RESERVED)!r}"
            )
        _FACTORIES[key] = Factory(key, f, declared, required & declared)
        return f

    return deco(fn) if fn is not None else deco


def _has_var_keyword(fn: Callable[..., Any]) -> bool:
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
    )


def factory_for(fn: Callable[..., Any]) -> Factory | None:
    """The registration of ``fn``, if it is registered."""
    return next((f for f in _FACTORIES.values() if f.fn is fn), None)


# ----------------------------------------------------------------------- timm (lazy)

_TIMM_PARAMS = (
    "model_name",
    "pretrained",
    "num_classes",
    "in_chans",
    "global_pool",
    "drop_rate",
    "drop_path_rate",
    "img_size",
)


def _register_timm() -> None:
    timm: Any = importlib.import_module("timm")

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained is not False:
            raise UnsafeFileError(
                f"pretrained={pretrained!r}: a file may not ask load to download weights"
            )
        model: nn.Module = timm.create_model(model_name, pretrained=False, **kwargs)
        return model

    register_factory(create_model, name="timm:create_model", params=_TIMM_PARAMS)


_LAZY: Mapping[str, tuple[str, Callable[[], None]]] = {
    "timm:create_model": ("timm", _register_timm)
}


def lookup_factory(ref: str, allow: Iterable[str] | None) -> Factory | None:
    """The factory registered as ``ref``, importing its module if its package is allowed.

    ``allow=None`` trusts every package (what :func:`dfcompress.save` uses to check
    its own constructor).
    """
    if ref in _LAZY:
        # Needs its package allowed on every call, even once registered (an earlier
        # save in this process registers it without asking).
        package, register = _LAZY[ref]
        if allow is not None and not is_allowed(package, allow):
            return None
        if ref not in _FACTORIES:
            try:
                register()
            except ImportError as e:
                raise DfcompressError(f"{ref} needs {package!r}, which is not installed") from e
        return _FACTORIES.get(ref)
    found = _FACTORIES.get(ref)
    if found is not None:
        return found
    module_name, _ = split_ref(ref)
    if allow is None or is_allowed(module_name, allow):
        try:
            importlib.import_module(module_name)
        except ImportError:
            return None
    return _FACTORIES.get(ref)


def resolve_class(ref: str, allow: Iterable[str] | None) -> type[nn.Module]:
    """The nn.Module subclass ``ref`` names, defined in that module of an allowed package."""
    module_name, attr = split_ref(ref)
    if allow is not None and not is_allowed(module_name, allow):
        top = module_name.split(".")[0]
        raise UnsafeFileError(
            f"the file asks to build {ref!r}, and {module_name!r} is not in an allowed "
            f"package ({', '.join(sorted(allow))}); if you trust its nn.Module classes, "
            f"pass allow=[{top!r}], or factory=<your constructor>"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnsafeFileError(f"cannot import {module_name!r} for {ref!r}: {e}") from e
    obj = vars(module).get(attr)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UnsafeFileError(
            f"{ref!r} is not an nn.Module class nor a registered factory; "
            "register factories with dfcompress.register_factory"
        )
    if obj.__module__ != module_name or obj.__qualname__ != attr:
        raise UnsafeFileError(
            f"{ref!r} is {obj.__module__}:{obj.__qualname__}, defined elsewhere; "
            "a file must name a class where it is defined"
        )
    return obj


def check_kwargs(
    what: str, kwargs: Mapping[str, Any], params: frozenset[str], required: frozenset[str]
) -> None:
    """Refuse keyword arguments the target does not declare, or missing required ones."""
    unknown = sorted(set(kwargs) - params)
    if unknown:
        raise UnsafeFileError(
            f"{what} does not take {unknown!r} from a file: it takes {sorted(params)!r}"
        )
    missing = sorted(required - set(kwargs))
    if missing:
        raise UnsafeFileError(f"{what} needs {missing!r}, which the file does not give")
    reserved = sorted(set(kwargs) & _RESERVED)
    if reserved:
        raise UnsafeFileError(f"{what}: a file may never set {reserved!r}")


def class_params(cls: type[nn.Module]) -> tuple[frozenset[str], frozenset[str]]:
    """Keyword parameters of ``cls.__init__`` (``device``/``dtype`` excluded)."""
    params, required = _signature_params(cls.__init__)
    return params - {"device", "dtype"} - _RESERVED, required
