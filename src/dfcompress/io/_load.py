"""Reading a model: :func:`load`.

The order is the point: the manifest and the tensor table are validated in
full (types, sizes, the decoded-bytes budget), the skeleton is built and checked
on the ``meta`` device (no memory), the data is read and its checksum
compared, and only then is the model built for real and filled.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfcompress.deploy._onnx_elementwise import has_rounding, install
from dfcompress.deploy._targets import TARGET_ATTR
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.io._encodings import checksum, decode, inflate
from dfcompress.io._format import TensorPlan, check_path, plan_tensors, read_manifest
from dfcompress.io._record import from_json
from dfcompress.io._registry import DEFAULT_ALLOW
from dfcompress.io._skeleton import NotOnMeta, build_skeleton, check_tensors

__all__ = ["load"]


def _allow_list(allow: object) -> tuple[str, ...]:
    if isinstance(allow, str) or not isinstance(allow, Iterable):
        raise DfcompressError(
            f"allow={allow!r} must be a list of package names, e.g. allow=['mypkg']"
        )
    names = tuple(allow)
    for a in names:
        if not isinstance(a, str) or not a or not all(p.isidentifier() for p in a.split(".")):
            raise DfcompressError(f"allow={names!r}: {a!r} is not a package name")
    return (*DEFAULT_ALLOW, *names)


def _stored_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            return {
                k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in names
            }
    except Exception as e:
        raise UnsafeFileError(f"{path} is not a readable safetensors file: {e}") from e


def _decode_all(
    plans: Mapping[str, TensorPlan], stored: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, plan in plans.items():
        parts = {
            part: inflate(key, stored[key], plan.parts[part][0], plan.parts[part][1])
            for part, key in plan.deflated.items()
        }
        parts.update({k: stored[k] for k in plan.parts if k not in parts})
        out[name] = decode(name, plan.shape, plan.dtype, plan.encoding, parts)
    return out


def _place_tensors(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
) -> None:
    placed: dict[str, torch.Tensor] = {}
    for name in sorted(tensors) + sorted(aliases):
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        value = placed[aliases[name]] if name in aliases else tensors[name]
        if attr in owner._parameters:
            old = owner._parameters[attr]
            if not isinstance(value, nn.Parameter):
                value = nn.Parameter(
                    value,
                    requires_grad=(old.requires_grad if old is not None else True)
                    and value.is_floating_point(),
                )
            owner._parameters[attr] = value
        elif attr in owner._buffers:
            owner._buffers[attr] = value
        else:  # extra state or unusual storage: the module's own loader
            owner.load_state_dict({attr: value}, strict=False)
        placed[name] = value


def load(
    path: str | os.PathLike[str],
    *,
    factory: Callable[..., nn.Module] | None = None,
    allow: Iterable[str] = (),
) -> nn.Module:
    """Rebuild a model written by :func:`dfcompress.save`, bit-exactly, without running its code.

    The file names how to build the model's skeleton; load honours only a factory
    registered with :func:`dfcompress.register_factory` or an ``nn.Module``
    subclass from an allowed package (``dfcompress`` and ``torch.nn`` always), with
    JSON keyword arguments that the factory or class declares. Every size the
    file declares is checked before memory is allocated, and every tensor must
    fit the rebuilt model's parameter or buffer (see :doc:`/security`).

    Args:
        path: the file.
        factory: build the skeleton with this callable (given the stored keyword
            arguments) instead of what the file names: your own code, your choice.
            Like any constructor it is called twice, first on the ``meta`` device
            to check the file without allocating.
        allow: more packages whose nn.Module classes a file may name, e.g.
            ``allow=["mypkg"]``; ``allow=["timm"]`` also enables
            ``timm.create_model``.

    Returns:
        The model, in eval mode, with the saved dtypes, shapes and values.

    Raises:
        DfcompressError: a bad argument or no such file.
        UnsafeFileError: a pickle/zip file, a corrupt or tampered file, or a
            constructor that is neither registered nor an allowed class.
    """
    from safetensors.torch import load_file

    p = check_path(path)
    if factory is not None and not callable(factory):
        raise DfcompressError(f"factory={factory!r} must be callable or None")
    trusted = _allow_list(allow)
    manifest = read_manifest(p)
    size = p.stat().st_size
    plans = plan_tensors(manifest, _stored_header(p), p, size)
    infos: dict[str, Any] = manifest["tensors"]
    aliases = {n: i["alias"] for n, i in infos.items() if "alias" in i}
    # A constructor that reads tensor values cannot run on meta: checked after the real build.
    with contextlib.suppress(NotOnMeta):
        check_tensors(build_skeleton(manifest, trusted, factory, meta=True), plans, aliases)
    try:
        stored = load_file(str(p))
    except Exception as e:
        raise UnsafeFileError(f"{p} is not a readable safetensors file: {e}") from e
    if checksum(stored) != manifest["checksum"]:
        raise UnsafeFileError(f"{p}: tensor data does not match the manifest's checksum")
    tensors = _decode_all(plans, stored)
    del stored
    model = build_skeleton(manifest, trusted, factory)
    check_tensors(model, plans, aliases)
    _place_tensors(model, tensors, aliases)
    if has_rounding(model):
        install(model)  # the saved operator quantizers round again
    model.dfc_history = copy.deepcopy(manifest["history"])
    if "target" in manifest:
        setattr(model, TARGET_ATTR, manifest["target"])
    node = manifest["constructor"]
    if "children" not in node:
        ref = node.get("factory", node.get("class"))
        model.dfc_constructor = {"factory": ref, "kwargs": from_json(node["kwargs"])}  # type: ignore[assignment]
    return model.eval()
