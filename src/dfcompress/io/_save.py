"""Writing a model: :func:`save`, :func:`serialize` and :func:`serialized_size`.

``save`` checks that its file loads back before writing it: the constructor it
records must resolve under :func:`dfcompress.load`'s rules and rebuild a model
whose every parameter and buffer fits the stored tensors (a dry run on the
``meta`` device, which allocates nothing).
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfcompress._rebuild import kind_of
from dfcompress._version import __version__
from dfcompress.deploy._targets import TARGET_ATTR
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.io._encodings import SEP, checksum, deflate, dtype_name, encode
from dfcompress.io._format import (
    FORMAT,
    FORMAT_VERSION,
    META_KEY_Z,
    check_path,
    plan_tensors,
    validate_manifest,
)
from dfcompress.io._record import canonical, module_attrs, record
from dfcompress.io._skeleton import NotOnMeta, build_skeleton, check_tensors

__all__ = ["save", "serialize", "serialized_size"]

_CODES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}


def _rebuilt_modules(model: nn.Module) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    taken: list[str] = []
    for name, m in model.named_modules():
        if any(name == t or name.startswith(t + ".") for t in taken):
            continue
        kind = kind_of(m)
        if kind is None:
            continue
        if not name:
            raise DfcompressError(
                f"the root module is a registered {kind!r}; wrap it in a container to save it"
            )
        out.append({"path": name, "kind": kind, "spec": m.dfc_spec()})
        taken.append(name)
    return out


def _constructor_node(
    model: nn.Module, constructor: str | Mapping[str, Any] | None
) -> dict[str, Any]:
    if constructor is None:
        return record(model)
    if isinstance(constructor, str):
        return canonical(constructor, {})
    if isinstance(constructor, Mapping) and isinstance(constructor.get("kwargs", {}), Mapping):
        return canonical(constructor.get("factory"), constructor.get("kwargs", {}))  # type: ignore[arg-type]
    raise DfcompressError(
        f"constructor={constructor!r} must be 'package.module:Name' or "
        "{'factory': 'package.module:Name', 'kwargs': {...}}"
    )


def _tensors(
    model: nn.Module, sparse: bool, deflate_parts: bool
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    stored: dict[str, torch.Tensor] = {}
    tensors: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if not isinstance(t, torch.Tensor):
            raise DfcompressError(f"state entry {name!r} is a {type(t).__name__}, not a tensor")
        if SEP in name:
            raise DfcompressError(f"state name {name!r} contains {SEP!r}, which save reserves")
        if t.dtype not in _CODES or t.device.type == "meta":
            raise DfcompressError(
                f"tensor {name!r} is {t.dtype} on {t.device.type}: save stores real tensors of "
                f"{', '.join(dtype_name(d) for d in _CODES)}"
            )
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            tensors[name] = {"alias": seen[key]}
            continue
        seen[key] = name
        parts, enc = encode(name, t, sparse)
        deflated: dict[str, Any] = {}
        if deflate_parts:
            parts, deflated = deflate(parts)
        stored.update(parts)
        tensors[name] = {"shape": list(t.shape), "dtype": dtype_name(t.dtype), "encoding": enc}
        if deflated:
            tensors[name]["deflate"] = deflated
    return stored, tensors


def _dry_run(manifest: Mapping[str, Any], stored: Mapping[str, torch.Tensor], size: int) -> None:
    """Refuse now what :func:`dfcompress.load` would refuse (allocates nothing)."""
    where = Path("<the file being saved>")
    try:
        validate_manifest(manifest, where)
        header = {k: (_CODES[t.dtype], list(t.shape)) for k, t in stored.items()}
        plans = plan_tensors(manifest, header, where, size)
        aliases = {n: i["alias"] for n, i in manifest["tensors"].items() if "alias" in i}
        try:
            skeleton = build_skeleton(manifest, None, meta=True)
        except NotOnMeta:  # a constructor that reads tensor values: build it for real
            skeleton = build_skeleton(manifest, None)
        check_tensors(skeleton, plans, aliases)
    except UnsafeFileError as e:
        raise DfcompressError(
            f"save refuses to write a file that load would refuse: {e}. Record the model's "
            "constructor with dfcompress.set_constructor or dfcompress.register_factory"
        ) from e


def serialize(
    model: nn.Module,
    *,
    constructor: str | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    sparse: bool = True,
    deflate: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata that :func:`save` writes (nothing is written)."""
    return _serialize(model, constructor, metadata, sparse, deflate, check=True)


def _serialize(
    model: nn.Module,
    constructor: str | Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    sparse: bool,
    deflate: bool,
    *,
    check: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not isinstance(model, nn.Module):
        raise DfcompressError(f"model={type(model).__name__} is not an nn.Module: save takes one")
    refusal = getattr(model, "dfc_save_refusal", None)
    if isinstance(refusal, str):  # a model that exists only as an exported graph
        raise DfcompressError(refusal)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise DfcompressError(f"metadata={metadata!r} must be a dict of JSON values or None")
    for flag, value in (("sparse", sparse), ("deflate", deflate)):
        if not isinstance(value, bool):
            raise DfcompressError(f"{flag}={value!r} must be True or False")
    if check:
        ctor = _constructor_node(model, constructor)
    else:
        try:
            ctor = _constructor_node(model, constructor)
        except DfcompressError:
            ctor = {"class": "torch.nn.modules.linear:Identity", "kwargs": {}}
    stored, tensors = _tensors(model, sparse, deflate)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dfcompress_version": __version__,
        "constructor": ctor,
        "modules": _rebuilt_modules(model),
        "structure": {n: module_attrs(m) for n, m in model.named_modules()},
        "tensors": tensors,
        "history": list(getattr(model, "dfc_history", [])),
        "metadata": dict(metadata or {}),
        "checksum": checksum(stored),
    }
    target = getattr(model, TARGET_ATTR, None)
    if isinstance(target, str):
        manifest["target"] = target  # what dfcompress.export writes the model for
    try:
        text = json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DfcompressError(f"the manifest is not JSON-serializable: {e}") from e
    if check:
        manifest = json.loads(text)
        size = sum(t.numel() * t.element_size() for t in stored.values()) + len(text)
        _dry_run(manifest, stored, size)
    packed = base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")
    return stored, {META_KEY_Z: packed}


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    constructor: str | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    sparse: bool = True,
    deflate: bool = True,
) -> Path:
    """Write ``model`` to one safetensors file with its manifest; return the path.

    The file loads back with :func:`dfcompress.load` (checked before writing): a
    model built by a registered factory (dfcompress's builders), by a class with
    its arguments recorded by :func:`dfcompress.set_constructor`, or made of
    ``torch.nn`` layers in ``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict``
    containers records how to rebuild itself; anything else is refused here,
    with the module named.

    Args:
        model: any nn.Module, float or compressed.
        path: the file to write (conventionally ``*.safetensors``).
        constructor: how :func:`dfcompress.load` rebuilds the skeleton,
            ``"package.module:Name"`` (a registered factory or an nn.Module class)
            or ``{"factory": ..., "kwargs": {...}}``. Defaults to what the model
            recorded, else its torch.nn structure, else its class with no arguments.
        metadata: extra JSON-able information stored in the manifest.
        sparse: store mostly-zero tensors as bitmask/CSR when that is smaller.
        deflate: zlib-compress one-byte parts (int8/uint8 codes, bitmasks) when
            that saves at least 10 %; lossless, undone by :func:`dfcompress.load`.

    Raises:
        DfcompressError: a bad argument, or a model whose file would not load back.
    """
    from safetensors.torch import save_file

    out = check_path(path)
    stored, header = serialize(
        model, constructor=constructor, metadata=metadata, sparse=sparse, deflate=deflate
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(stored, str(out), metadata=header)
    except OSError as e:
        raise DfcompressError(f"path={str(out)!r} cannot be written: {e}") from e
    return out


def serialized_size(model: nn.Module, *, sparse: bool = True) -> int:
    """Bytes of the file :func:`save` would write for ``model``."""
    from safetensors.torch import save as save_bytes

    stored, header = _serialize(model, None, None, sparse, True, check=False)
    return len(save_bytes(stored, metadata=header))
