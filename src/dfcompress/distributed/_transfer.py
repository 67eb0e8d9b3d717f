"""How models and functions travel to Ray workers: safe-format bytes and import names.

A model is sent as the bytes of a dfcompress file (:func:`dfcompress.io.serialize`)
and rebuilt in the worker with :func:`dfcompress.io.load`; nothing is unpickled.
Before sending, the driver loads the bytes back and checks that the copy
computes what the model computes, so a model that cannot travel fails here,
clearly, not in a worker. A function (a scan metric, a dataset factory) is sent
as its ``"package.module:name"`` and imported in the worker.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dfcompress._modes import restore_modes, training_flags
from dfcompress.errors import DfcompressError

__all__ = ["ModelBlob", "function_ref", "load_blob", "pack_model"]

# The rebuilt models a worker process keeps, by content hash: the units of one
# run share their model, so it is loaded once per worker, not once per unit.
_CACHE: OrderedDict[str, nn.Module] = OrderedDict()
_CACHE_SIZE = 2

ModelBlob = tuple[str, bytes, list[str]]
"""``(sha256, file bytes, packages its factory may be imported from)``."""


def _to_bytes(model: nn.Module) -> bytes:
    from safetensors.torch import save

    from dfcompress.io import serialize

    stored, header = serialize(model)
    return bytes(save(stored, metadata=header))


def _from_bytes(blob: bytes, allow: list[str]) -> nn.Module:
    from dfcompress.io import load

    fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="dfc-ray-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        return load(path, allow=allow)
    finally:
        os.unlink(path)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping) and list(a) == list(b):
        return all(_same(a[k], b[k]) for k in a)
    return a is None and b is None


def _constructor_refs(node: Any) -> list[str]:
    """Every ``"module:Name"`` a constructor node names (factories, classes, children)."""
    refs = [node[k] for k in ("factory", "class") if isinstance(node.get(k), str)]
    for child in node.get("children", []):
        refs += _constructor_refs(child[1])
    return sorted(set(refs))


def pack_model(model: nn.Module, what: str, probe: torch.Tensor) -> ModelBlob:
    """The bytes that rebuild ``model`` in a worker, checked on ``probe`` inputs.

    Raises:
        DfcompressError: naming ``what`` when the model cannot be saved, its file
            does not load (no recorded constructor), or the loaded copy computes
            something else on ``probe``.
    """
    try:
        blob = _to_bytes(model)
    except DfcompressError as e:
        raise DfcompressError(f"{what} cannot be sent to Ray workers: {e}") from e
    from dfcompress.io import load, read_manifest

    hint = (
        "record how to build it with dfcompress.set_constructor(model, 'package.module:factory', "
        "**json_kwargs) (dfcompress's own factories and timm models built through them "
        "already do), or evaluate it with executor=None"
    )
    fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="dfc-ray-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        refs = _constructor_refs(read_manifest(path)["constructor"])
        factory = ", ".join(refs)
        allow = sorted({r.partition(":")[0].split(".")[0] for r in refs} - {"dfcompress"})
        try:
            copy = load(path, allow=allow)
        except Exception as e:
            raise DfcompressError(
                f"{what} cannot be sent to Ray workers: its dfcompress file (factory "
                f"{factory!r}) does not load back ({type(e).__name__}: {e}); {hint}"
            ) from e
    finally:
        os.unlink(path)
    flags = training_flags(model)
    model.eval()
    try:
        with torch.inference_mode():
            same = _same(model(probe), copy(probe))
    finally:
        restore_modes(flags)
    if not same:
        raise DfcompressError(
            f"{what} cannot be sent to Ray workers: the copy rebuilt from its dfcompress file "
            f"(factory {factory!r}) computes different outputs; {hint}"
        )
    return hashlib.sha256(blob).hexdigest(), blob, allow


def load_blob(blob: ModelBlob) -> nn.Module:
    """The model of a :func:`pack_model` blob, rebuilt once per worker process."""
    key, data, allow = blob
    model = _CACHE.get(key)
    if model is None:
        model = _from_bytes(data, list(allow))
        _CACHE[key] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return model


def function_ref(fn: Any, what: str) -> str:
    """``"package.module:name"`` that imports back to ``fn`` itself, for a worker to import.

    >>> function_ref(function_ref, "f")
    'dfcompress.distributed._transfer:function_ref'
    """
    from dfcompress._imports import import_attr

    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    ref = f"{module}:{name}"
    ok = isinstance(module, str) and isinstance(name, str) and "<" not in name
    if ok and module != "__main__":
        try:
            ok = import_attr(ref, what) is fn
        except DfcompressError:
            ok = False
    else:
        ok = False
    if not ok:
        raise DfcompressError(
            f"{what}={fn!r} cannot be sent to Ray workers, which import it by name: "
            "give a function defined at the top level of an importable module (not a "
            "lambda, a local function or one defined in __main__)"
        )
    return ref
