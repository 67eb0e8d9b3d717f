"""Safe save and load of (compressed) models: safetensors plus a JSON manifest.

One file holds everything. Its tensors are stored with safetensors, and its
header metadata carries a JSON *manifest* under the key ``"dfcompress"``:

- how to build the model's skeleton: a factory ``"package.module:function"``
  and JSON keyword arguments (see :func:`dfcompress._rebuild.set_constructor`);
- the modules that compression swapped in (quantized wrappers, packed binary
  convolutions, ...) as ``kind`` + JSON ``spec`` (see
  :func:`dfcompress._rebuild.register_module`);
- the structural attributes of every module (``in_channels``,
  ``num_features``, ``num_heads``, ...) so that channel-pruned models come back
  with their smaller shapes;
- per tensor: shape, dtype and *encoding*. A tensor with many zeros (after
  unstructured pruning) is stored as a bitmask plus its non-zero values, or in
  CSR form, whichever is smaller, so sparsity shows in the file size; one-byte
  parts (int8/uint8 codes, bitmasks) are zlib-compressed when that saves 10 %;
- the compression history (recipes, configs) and a SHA-256 of the tensor data.

:func:`load` never unpickles: a pickle or ``torch.save`` file is refused, the
factory must live in an allowed package (``dfcompress`` unless you allow more),
and a manifest that does not match the tensors is refused.

>>> import tempfile, os, torch
>>> from torch import nn
>>> from dfcompress._rebuild import set_constructor
>>> net = set_constructor(nn.Linear(4, 2), "torch.nn:Linear", in_features=4, out_features=2)
>>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
>>> _ = save(net, path)
>>> back = load(path, allow=["torch"])
>>> torch.equal(back.weight, net.weight)
True
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfcompress._rebuild import get_constructor, import_ref, kind_of, rebuild
from dfcompress._version import __version__
from dfcompress.errors import DfcompressError, UnsafeFileError

__all__ = ["load", "read_manifest", "save", "serialize", "serialized_size"]

FORMAT = "dfcompress"
FORMAT_VERSION = 1
_META_KEY = "dfcompress"
# The manifest is stored zlib-compressed (base64) under this key: its JSON is
# repetitive and would otherwise add ~1 % to a small model's file.
_META_KEY_Z = "dfcompress-zlib"
_MAX_MANIFEST = 256 * 1024 * 1024
_SEP = "::"
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}
_ATTR_TYPES = (int, float, bool, str, type(None))


# --------------------------------------------------------------------------- encode


def _bits_nonzero(t: torch.Tensor) -> torch.Tensor:
    """Mask of elements whose bit pattern is not all-zero (keeps -0.0 and NaN payloads)."""
    if t.dtype == torch.bool:
        return t.reshape(-1)
    return t.reshape(-1).view(_INT_VIEW[t.element_size()]) != 0


def _encode(name: str, t: torch.Tensor, sparse: bool) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the smallest encoding of ``t``: dense, bitmask + values, or CSR."""
    t = t.detach().cpu().contiguous()
    n = t.numel()
    dense = {name: t}
    if not sparse or n < 64 or t.dtype == torch.bool or t.element_size() not in _INT_VIEW:
        return dense, "dense"
    nz = _bits_nonzero(t)
    nnz = int(nz.sum())
    item = t.element_size()
    dense_bytes = n * item
    mask_bytes = math.ceil(n / 8) + nnz * item
    rows = t.shape[0] if t.dim() >= 2 else 1
    cols = n // rows
    idx_dtype = torch.int16 if cols <= 32767 else torch.int32
    csr_bytes = 4 * (rows + 1) + nnz * (idx_dtype.itemsize + item)
    best = min(dense_bytes, mask_bytes, csr_bytes)
    if best > 0.95 * dense_bytes:
        return dense, "dense"
    flat = t.reshape(-1)
    if best == mask_bytes:
        packed = np.packbits(nz.numpy().astype(np.uint8))
        return {
            f"{name}{_SEP}mask": torch.from_numpy(packed),
            f"{name}{_SEP}values": flat[nz].clone(),
        }, "bitmask"
    nz2 = nz.reshape(rows, cols)
    counts = nz2.sum(dim=1, dtype=torch.int32)
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(counts, 0)
    col = nz2.nonzero()[:, 1].to(idx_dtype)
    return {
        f"{name}{_SEP}crow": crow,
        f"{name}{_SEP}col": col,
        f"{name}{_SEP}values": flat[nz].clone(),
    }, "csr"


_DEFLATED = f"{_SEP}deflate"
_DEFLATE_MIN = 4096  # bytes: smaller parts are not worth a zlib stream


def _deflate(parts: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Zlib-compress the one-byte parts (int8/uint8 codes, bitmasks) where that saves 10 %.

    Integer codes of trained weights are far from uniform, so they compress well;
    float parts do not and are left alone. Returns the parts to store and, per
    compressed part, its dtype and element count (``load`` inflates no more).
    """
    out: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    for key, t in parts.items():
        if t.dtype in (torch.int8, torch.uint8) and t.numel() >= _DEFLATE_MIN:
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            packed = zlib.compress(raw, 6)
            if len(packed) <= 0.9 * len(raw):
                out[key + _DEFLATED] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
                info[key] = [str(t.dtype).removeprefix("torch."), t.numel()]
                continue
        out[key] = t
    return out, info


def _inflate(
    name: str, deflated: Mapping[str, Any], stored: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """``stored`` with the parts that ``_deflate`` compressed restored (bounded in size)."""
    if not deflated:
        return stored
    view = dict(stored)
    for key, (dtype_name, count) in deflated.items():
        if key != name and not key.startswith(name + _SEP):
            raise UnsafeFileError(f"tensor {name!r} lists a compressed part {key!r} of another")
        dtype = _dtype(dtype_name)
        if dtype not in (torch.int8, torch.uint8):
            raise UnsafeFileError(f"compressed part {key!r} has dtype {dtype_name!r}")
        try:
            blob = stored[key + _DEFLATED].numpy().tobytes()
            inflate = zlib.decompressobj()
            raw = inflate.decompress(blob, count)
        except KeyError as e:
            raise UnsafeFileError(
                f"tensor {name!r} is missing its stored part {e.args[0]!r}"
            ) from e
        except zlib.error as e:
            raise UnsafeFileError(f"compressed part {key!r} does not inflate: {e}") from e
        if len(raw) != count or inflate.unconsumed_tail:
            raise UnsafeFileError(f"compressed part {key!r} does not hold {count} bytes")
        view[key] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
    return view


def _decode(name: str, info: Mapping[str, Any], stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
    shape = [int(s) for s in info["shape"]]
    dtype = _dtype(info["dtype"])
    enc = info["encoding"]
    n = math.prod(shape)
    try:
        if enc == "dense":
            # A fresh allocation: kernels may vectorise differently on the
            # unaligned views safetensors returns, changing results in the last bit.
            t = stored[name].clone()
        elif enc == "bitmask":
            mask = np.unpackbits(stored[f"{name}{_SEP}mask"].numpy(), count=n).astype(bool)
            values = stored[f"{name}{_SEP}values"]
            t = torch.zeros(n, dtype=dtype)
            t[torch.from_numpy(mask)] = values
        elif enc == "csr":
            crow = stored[f"{name}{_SEP}crow"].long()
            col = stored[f"{name}{_SEP}col"].long()
            values = stored[f"{name}{_SEP}values"]
            rows = crow.numel() - 1
            cols = n // max(rows, 1)
            row_idx = torch.repeat_interleave(torch.arange(rows), crow[1:] - crow[:-1])
            t = torch.zeros(n, dtype=dtype)
            t[row_idx * cols + col] = values
        else:
            raise UnsafeFileError(f"tensor {name!r} has unknown encoding {enc!r}")
    except KeyError as e:
        raise UnsafeFileError(f"tensor {name!r} is missing its stored part {e.args[0]!r}") from e
    except (RuntimeError, IndexError, ValueError) as e:
        raise UnsafeFileError(f"tensor {name!r} does not decode as {enc!r}: {e}") from e
    if t.dtype != dtype or t.numel() != n:
        raise UnsafeFileError(
            f"tensor {name!r} is {t.dtype} with {t.numel()} elements; "
            f"the manifest says {info['dtype']} {shape}"
        )
    return t.reshape(shape)


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise UnsafeFileError(f"unknown dtype {name!r} in the manifest")
    return dt


def _checksum(stored: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(stored):
        t = stored[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- manifest


def _module_attrs(module: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _ATTR_TYPES) and not (isinstance(v, float) and not math.isfinite(v)):
            out[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(i, (int, bool)) for i in v):
            out[k] = {"__tuple__": list(v)} if isinstance(v, tuple) else list(v)
    return out


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


def serialize(
    model: nn.Module,
    *,
    constructor: str | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    sparse: bool = True,
    deflate: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata that :func:`save` writes (nothing is written)."""
    if not isinstance(model, nn.Module):
        raise DfcompressError(f"save expects an nn.Module, got {type(model).__name__}")
    ctor = _constructor_of(model, constructor)
    state = model.state_dict(keep_vars=False)
    stored: dict[str, torch.Tensor] = {}
    tensors: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise DfcompressError(f"state entry {name!r} is a {type(t).__name__}, not a tensor")
        if _SEP in name:
            raise DfcompressError(f"state name {name!r} contains {_SEP!r}, which save reserves")
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            tensors[name] = {"alias": seen[key]}
            continue
        seen[key] = name
        parts, enc = _encode(name, t, sparse)
        deflated: dict[str, Any] = {}
        if deflate:
            parts, deflated = _deflate(parts)
        stored.update(parts)
        tensors[name] = {
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "encoding": enc,
        }
        if deflated:
            tensors[name]["deflate"] = deflated
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dfcompress_version": __version__,
        "constructor": ctor,
        "modules": _rebuilt_modules(model),
        "structure": {n: _module_attrs(m) for n, m in model.named_modules()},
        "tensors": tensors,
        "history": list(getattr(model, "dfc_history", [])),
        "metadata": dict(metadata or {}),
        "checksum": _checksum(stored),
    }
    try:
        text = json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DfcompressError(f"the manifest is not JSON-serializable: {e}") from e
    packed = base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")
    return stored, {_META_KEY_Z: packed}


def _constructor_of(
    model: nn.Module, constructor: str | Mapping[str, Any] | None
) -> dict[str, Any]:
    if isinstance(constructor, str):
        ctor: dict[str, Any] = {"factory": constructor, "kwargs": {}}
    elif constructor is not None:
        ctor = {
            "factory": constructor.get("factory"),
            "kwargs": dict(constructor.get("kwargs", {})),
        }
    else:
        ctor = get_constructor(model) or {
            "factory": f"{type(model).__module__}:{type(model).__qualname__}",
            "kwargs": {},
        }
    if not isinstance(ctor["factory"], str) or ":" not in ctor["factory"]:
        raise DfcompressError(
            f"constructor factory {ctor['factory']!r} must look like 'package.module:function'"
        )
    return ctor


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

    Args:
        model: any nn.Module, float or compressed.
        path: the file to write (conventionally ``*.safetensors``).
        constructor: how :func:`load` rebuilds the skeleton, ``"pkg.mod:fn"`` or
            ``{"factory": ..., "kwargs": {...}}``. Defaults to what the model's
            factory recorded, else the model's own class called with no arguments.
        metadata: extra JSON-able information stored in the manifest.
        sparse: store mostly-zero tensors as bitmask/CSR when that is smaller.
        deflate: zlib-compress one-byte parts (int8/uint8 codes, bitmasks) when
            that saves at least 10 %; lossless, undone by :func:`load`.
    """
    from safetensors.torch import save_file

    stored, header = serialize(
        model, constructor=constructor, metadata=metadata, sparse=sparse, deflate=deflate
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(stored, str(out), metadata=header)
    return out


def serialized_size(model: nn.Module, *, sparse: bool = True) -> int:
    """Bytes of the file :func:`save` would write for ``model``."""
    from safetensors.torch import save as save_bytes

    stored, header = serialize(model, constructor="builtins:object", sparse=sparse)
    return len(save_bytes(stored, metadata=header))


# --------------------------------------------------------------------------- load


def _check_not_pickle(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return  # a safetensors header: an 8-byte length, then JSON
    if head[:2] == b"PK":
        raise UnsafeFileError(
            f"{path} is a zip archive (torch.save format), which holds pickled code; "
            "dfcompress never unpickles. Re-save the model with dfcompress.save"
        )
    if head[:1] == b"\x80":
        raise UnsafeFileError(
            f"{path} looks like a Python pickle; dfcompress never unpickles. "
            "Re-save the model with dfcompress.save"
        )
    raise UnsafeFileError(f"{path} is not a safetensors file written by dfcompress.save")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the manifest of a file written by :func:`save`."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DfcompressError(f"no such file: {p}")
    _check_not_pickle(p)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise UnsafeFileError(f"{p} is not a readable safetensors file: {e}") from e
    try:
        if _META_KEY_Z in meta:
            inflate = zlib.decompressobj()
            raw = inflate.decompress(
                base64.b64decode(meta[_META_KEY_Z], validate=True), _MAX_MANIFEST
            )
            if inflate.unconsumed_tail:
                raise UnsafeFileError(f"{p}: the manifest is larger than {_MAX_MANIFEST} bytes")
            text = raw.decode("utf-8")
        elif _META_KEY in meta:
            text = meta[_META_KEY]
        else:
            raise UnsafeFileError(
                f"{p} has no dfcompress manifest (was it written by dfcompress.save?)"
            )
        manifest = json.loads(text)
    except (binascii.Error, zlib.error, UnicodeDecodeError) as e:
        raise UnsafeFileError(f"{p}: the manifest does not decode: {e}") from e
    except json.JSONDecodeError as e:
        raise UnsafeFileError(f"{p}: the manifest is not valid JSON: {e}") from e
    _validate_manifest(manifest, p)
    return manifest  # type: ignore[no-any-return]


def _validate_manifest(m: Any, p: Path) -> None:
    def bad(what: str) -> UnsafeFileError:
        return UnsafeFileError(f"{p}: tampered or corrupt manifest: {what}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad("missing format marker")
    if m.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {m.get('format_version')!r} is not {FORMAT_VERSION}")
    ctor = m.get("constructor")
    if (
        not isinstance(ctor, dict)
        or not isinstance(ctor.get("factory"), str)
        or ":" not in ctor["factory"]
        or not isinstance(ctor.get("kwargs"), dict)
    ):
        raise bad(f"constructor {ctor!r}")
    for key, typ in (
        ("modules", list),
        ("structure", dict),
        ("tensors", dict),
        ("history", list),
        ("metadata", dict),
        ("checksum", str),
    ):
        if not isinstance(m.get(key), typ):
            raise bad(f"{key!r} should be a {typ.__name__}")
    for e in m["modules"]:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and isinstance(e.get("kind"), str)
            and isinstance(e.get("spec"), dict)
        ):
            raise bad(f"module entry {e!r}")
    for name, info in m["tensors"].items():
        if not isinstance(info, dict):
            raise bad(f"tensor entry {name!r}")
        if "alias" in info:
            if info["alias"] not in m["tensors"]:
                raise bad(f"tensor {name!r} aliases unknown {info['alias']!r}")
            continue
        shape = info.get("shape")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise bad(f"tensor {name!r} shape {shape!r}")
        if info.get("encoding") not in ("dense", "bitmask", "csr"):
            raise bad(f"tensor {name!r} encoding {info.get('encoding')!r}")
        deflated = info.get("deflate", {})
        if not isinstance(deflated, dict) or not all(
            isinstance(v, list)
            and len(v) == 2
            and isinstance(v[0], str)
            and isinstance(v[1], int)
            and 0 <= v[1] <= 2**40
            for v in deflated.values()
        ):
            raise bad(f"tensor {name!r} compressed parts {deflated!r}")


def _resolve_factory(
    factory_ref: str, allow: Iterable[str], factory: Callable[..., nn.Module] | None
) -> Callable[..., nn.Module]:
    if factory is not None:
        if not callable(factory):
            raise DfcompressError(f"factory must be callable, got {factory!r}")
        return factory
    top = factory_ref.partition(":")[0].split(".")[0]
    allowed = {"dfcompress", *allow}
    if top not in allowed:
        raise UnsafeFileError(
            f"the file asks to build the model with {factory_ref!r}, and {top!r} is not an "
            f"allowed package ({', '.join(sorted(allowed))}); if you trust it, pass "
            f"allow=[{top!r}] or factory=<your constructor>"
        )
    obj = import_ref(factory_ref, "the model factory")
    if not callable(obj):
        raise UnsafeFileError(f"the model factory {factory_ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError as e:
        raise UnsafeFileError(f"manifest names module {path!r}, which the model lacks") from e
    if child not in parent._modules:
        raise UnsafeFileError(f"manifest names module {path!r}, which the model lacks")
    parent._modules[child] = new


def _apply_structure(model: nn.Module, structure: Mapping[str, Mapping[str, Any]]) -> None:
    mods = dict(model.named_modules())
    for name, attrs in structure.items():
        m = mods.get(name)
        if m is None or not isinstance(attrs, Mapping):
            continue
        for k, v in attrs.items():
            if k.startswith("_") or k == "training" or not hasattr(m, k):
                continue
            cur = getattr(m, k)
            if callable(cur) or isinstance(cur, (nn.Module, torch.Tensor)):
                continue
            if isinstance(v, dict) and "__tuple__" in v:
                v = tuple(v["__tuple__"])
            if cur != v:
                setattr(m, k, v)


def _place_tensors(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
) -> None:
    expected = set(model.state_dict().keys())
    given = set(tensors) | set(aliases)
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise UnsafeFileError(
            "the file's tensors do not fit the rebuilt model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
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
        else:  # extra state or unusual storage: fall back to the module's own loader
            owner.load_state_dict({attr: value}, strict=False)
        placed[name] = value


def load(
    path: str | os.PathLike[str],
    *,
    factory: Callable[..., nn.Module] | None = None,
    allow: Iterable[str] = (),
) -> nn.Module:
    """Rebuild a model written by :func:`save`, bit-exactly, without unpickling.

    Args:
        path: the file.
        factory: call this (with the stored keyword arguments) instead of the
            factory named in the file.
        allow: extra top-level packages whose factories may be imported by name
            (``dfcompress`` is always allowed).

    Returns:
        The model, in eval mode, with the saved dtypes, shapes and values.

    Raises:
        UnsafeFileError: a pickle/zip file, a manifest that does not match its
            tensors, or a factory outside the allowed packages.
    """
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    ctor = manifest["constructor"]
    fn = _resolve_factory(ctor["factory"], allow, factory)
    try:
        model = fn(**ctor["kwargs"])
    except DfcompressError:
        raise
    except Exception as e:
        raise DfcompressError(f"calling the model factory {ctor['factory']!r} failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise UnsafeFileError(f"{ctor['factory']!r} returned {type(model).__name__}, not a module")
    for entry in sorted(manifest["modules"], key=lambda e: e["path"].count(".")):
        _set_submodule(model, entry["path"], rebuild(entry["kind"], entry["spec"]))
    _apply_structure(model, manifest["structure"])

    stored = load_file(str(path))
    if _checksum(stored) != manifest["checksum"]:
        raise UnsafeFileError(f"{path}: tensor data does not match the manifest's checksum")
    infos: dict[str, Any] = manifest["tensors"]
    tensors = {
        n: _decode(n, i, _inflate(n, i.get("deflate", {}), stored))
        for n, i in infos.items()
        if "alias" not in i
    }
    aliases = {n: i["alias"] for n, i in infos.items() if "alias" in i}
    _place_tensors(model, tensors, aliases)
    model.dfc_history = copy.deepcopy(manifest["history"])
    if ctor["factory"] != "builtins:object":
        model.dfc_constructor = dict(ctor)  # type: ignore[assignment]
    return model.eval()
