"""Building a model's skeleton from a checked manifest, and checking it against the tensors.

Every constructor of the tree is resolved (and its keyword arguments checked
against what it declares) before any of them is called. The modules the
manifest lists (quantized wrappers, ...) are rebuilt from their specs in place
of what the constructor built there; a wrapper that runs a layer's own forward
keeps the constructor's layer, whose class must be the recorded one. Attribute values from
the file must have the type of the rebuilt module's own value and may only
shrink sizes (what channel pruning does); a torch.nn layer whose sizes changed
is rebuilt from its attributes, so its parameters take the pruned shapes. Then
every tensor the file holds must match the skeleton's parameter or buffer in
shape and dtype.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dfcompress._rebuild import added_as, rebuild
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.io._format import TensorPlan
from dfcompress.io._record import attr_kwargs, from_json
from dfcompress.io._registry import check_kwargs, class_params, lookup_factory, resolve_class

__all__ = ["NotOnMeta", "build_skeleton", "check_tensors"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
Builder = Callable[[], nn.Module]


def _resolve(node: Mapping[str, Any], allow: Iterable[str] | None, where: str) -> Builder:
    """A zero-argument builder for ``node``; nothing is called yet."""
    kwargs = from_json(node["kwargs"])
    ref = node.get("factory", node.get("class"))
    if "factory" in node:
        found = lookup_factory(ref, allow)
        if found is not None:
            check_kwargs(f"factory {ref!r}", kwargs, found.params, found.required)
            fn = found.fn
            return lambda: fn(**kwargs)
    cls = resolve_class(ref, allow)
    params, required = class_params(cls)
    check_kwargs(f"class {ref!r}", kwargs, params, required)
    children = node.get("children")
    if children is None:
        return lambda: cls(**kwargs)
    if not issubclass(cls, _CONTAINERS) or kwargs:
        raise UnsafeFileError(f"{where}: only torch.nn containers hold recorded children")
    kids = [(name, _resolve(child, allow, f"{where}.{name}")) for name, child in children]

    def container() -> nn.Module:
        module = cls()
        for name, build in kids:
            module.add_module(name, build())
        return module

    return container


class NotOnMeta(Exception):
    """The constructor cannot run on the meta device (it reads tensor values)."""


def _device(meta: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.device("meta") if meta else contextlib.nullcontext()


def _call(build: Builder, what: str, meta: bool) -> nn.Module:
    try:
        with _device(meta):
            model = build()
    except DfcompressError:
        raise
    except Exception as e:
        if meta:
            raise NotOnMeta(str(e)) from e
        raise DfcompressError(f"building the model with {what} failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise UnsafeFileError(f"{what} returned {type(model).__name__}, not an nn.Module")
    return model


def _parent(model: nn.Module, path: str, added: str | None = None) -> tuple[nn.Module, str]:
    """The module holding ``path`` and the child's name; ``added``: a child name that
    may be new (a module compression adds), never to a container's children."""
    parent_name, _, child = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError as e:
        raise UnsafeFileError(f"the manifest names module {path!r}, which the model lacks") from e
    if child and child == added and child not in parent._modules:
        if isinstance(parent, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            raise UnsafeFileError(f"the manifest adds module {path!r} to a container")
        return parent, child
    if not child or child not in parent._modules:
        raise UnsafeFileError(f"the manifest names module {path!r}, which the model lacks")
    return parent, child


def _set_submodule(model: nn.Module, path: str, new: nn.Module, added: str | None = None) -> None:
    parent, child = _parent(model, path, added)
    parent._modules[child] = new


def _check_value(where: str, cur: Any, new: Any) -> None:
    """``new`` may replace ``cur``: same type, sizes only shrink, floats finite."""
    ok = type(new) is type(cur)
    if ok and isinstance(cur, (tuple, list)):
        ok = len(new) == len(cur) and all(
            type(a) is type(b) and (a == b or (type(a) is int and 1 <= a <= b))
            for a, b in zip(new, cur, strict=True)
        )
    elif ok and type(cur) is int:
        ok = new == cur or 1 <= new <= cur
    elif ok and type(cur) is float:
        ok = math.isfinite(new) and (new > 0 or cur <= 0)
    elif ok and isinstance(cur, str):
        ok = new == cur
    if not ok:
        raise UnsafeFileError(
            f"{where} = {new!r} does not fit the rebuilt model's {cur!r} "
            "(same type, sizes may only shrink)"
        )


def _apply_structure(model: nn.Module, structure: Mapping[str, Mapping[str, Any]]) -> None:
    mods = dict(model.named_modules())
    for name, attrs in structure.items():
        m = mods.get(name)
        if m is None:
            raise UnsafeFileError(f"the manifest describes module {name!r}, which the model lacks")
        own = vars(m)
        changed = False
        for k, v in attrs.items():
            if k.startswith("_") or k == "training":
                where = name or "the model"
                raise UnsafeFileError(f"the manifest sets {where}.{k}, a private name")
            if k not in own:
                continue  # set after construction (by a compression step): nothing to restore
            new = from_json(v)
            if new != own[k]:
                _check_value(f"{name or 'the model'}.{k}", own[k], new)
                setattr(m, k, new)
                changed = True
        if changed and name and type(m).__module__.startswith("torch.nn."):
            _rebuild_layer(model, name, m)


def _rebuild_layer(model: nn.Module, name: str, m: nn.Module) -> None:
    """Rebuild a torch.nn layer from its (pruned) attributes, so its tensors take those sizes."""
    kwargs = attr_kwargs(m)
    if kwargs is None:
        return
    try:
        new = type(m)(**kwargs)
    except Exception as e:
        raise UnsafeFileError(f"module {name!r} does not rebuild with {kwargs!r}: {e}") from e
    new.train(m.training)
    _set_submodule(model, name, new)


def build_skeleton(
    manifest: Mapping[str, Any],
    allow: Iterable[str] | None,
    factory: Callable[..., nn.Module] | None = None,
    *,
    meta: bool = False,
) -> nn.Module:
    """The model described by ``manifest``, its tensors not yet loaded.

    ``allow=None`` trusts every package (save checking its own file). With
    ``meta=True`` everything is built on the meta device (nothing allocated); a
    constructor that cannot run there raises :class:`NotOnMeta`.
    """
    node = manifest["constructor"]
    if factory is not None:
        kwargs = from_json(node["kwargs"])
        build: Builder = lambda: factory(**kwargs)  # noqa: E731
        what = f"factory={getattr(factory, '__qualname__', factory)!r}"
    else:
        build = _resolve(node, allow, "constructor")
        what = repr(node.get("factory", node.get("class")))
    modules = [
        (e["path"], e["kind"], e["spec"])
        for e in sorted(manifest["modules"], key=lambda e: e["path"].count("."))
    ]
    model = _call(build, what, meta)
    for path, kind, spec in modules:
        try:
            added = added_as(kind)
        except DfcompressError as e:
            raise UnsafeFileError(f"module {path!r}: {e}") from e
        parent, child = _parent(model, path, added)
        try:
            with _device(meta):
                new = rebuild(kind, spec, parent._modules.get(child))
        except DfcompressError as e:
            raise UnsafeFileError(f"module {path!r}: {e}") from e
        _set_submodule(model, path, new, added)
    with _device(meta):
        _apply_structure(model, manifest["structure"])
    return model


def _owner_is_torch_nn(model: nn.Module, name: str) -> bool:
    owner = name.rpartition(".")[0]
    return type(model.get_submodule(owner)).__module__.startswith("torch.nn.")


def check_tensors(
    model: nn.Module, plans: Mapping[str, TensorPlan], aliases: Mapping[str, str]
) -> None:
    """Every stored tensor fits the skeleton's parameter or buffer of that name."""
    state = model.state_dict(keep_vars=True)
    expected = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
    given = set(plans) | set(aliases)
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise UnsafeFileError(
            "the file's tensors do not fit the rebuilt model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name in sorted(given):
        plan = plans[aliases.get(name, name)]
        have = state[name]
        exact = _owner_is_torch_nn(model, name)
        shape_ok = list(have.shape) == plan.shape or (
            not exact
            and len(have.shape) == len(plan.shape)
            and all(a <= b for a, b in zip(plan.shape, have.shape, strict=True))
        )
        dtype_ok = plan.dtype == have.dtype or (
            plan.dtype.is_floating_point and have.dtype.is_floating_point
        )
        if not (shape_ok and dtype_ok):
            raise UnsafeFileError(
                f"tensor {name!r} is {str(plan.dtype).removeprefix('torch.')} {plan.shape} in "
                f"the file; the rebuilt model has {str(have.dtype).removeprefix('torch.')} "
                f"{list(have.shape)}"
            )
