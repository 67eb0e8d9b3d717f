"""The file format: a safetensors file whose header carries a JSON manifest, and its checks.

Reading validates before anything is allocated from what the file declares:
the manifest's size and nesting depth, every field's type, the constructor
tree, and the tensor table against the stored parts (dtype and length of each
part, deflated sizes, the total bytes decoding would produce, capped by the
file size times :data:`MAX_EXPANSION`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.io._encodings import DEFLATED, DTYPES, SEP, csr_index_dtype, rows_cols

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_EXPANSION",
    "META_KEY",
    "META_KEY_Z",
    "TensorPlan",
    "check_path",
    "plan_tensors",
    "read_manifest",
]

FORMAT = "dfcompress"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
META_KEY = "dfcompress"
# The manifest is stored zlib-compressed (base64) under this key: its JSON is
# repetitive and would otherwise add ~1 % to a small model's file.
META_KEY_Z = "dfcompress-zlib"
MAX_MANIFEST = 16 * 1024 * 1024  # bytes of manifest JSON, whatever the file size
MAX_DEPTH = 64  # JSON nesting of the manifest
MAX_HISTORY = 1000  # entries of the compression history
MAX_NDIM = 8
# Decoding may produce at most this many bytes per byte of file (plus a fixed
# allowance for small files): sparse and deflated parts expand, but not without bound.
MAX_EXPANSION = 256
_SLACK = 64 * 1024 * 1024
_ZLIB_MAX_RATIO = 1100  # zlib cannot compress better than ~1032:1
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}
_ENCODINGS = ("dense", "bitmask", "csr")


def check_path(path: object, what: str = "path") -> Path:
    """``path`` as a Path, or a DfcompressError naming the argument."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or str(path) == "":
        raise DfcompressError(
            f"{what}={path!r} is not a file path: pass a str or os.PathLike naming a "
            ".safetensors file"
        )
    p = Path(path)
    if p.is_dir():
        raise DfcompressError(f"{what}={str(p)!r} is a directory, not a file")
    return p


def _bad(where: Path, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"{where}: tampered or corrupt file: {what}")


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


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((v, d + 1) for v in value if isinstance(v, (dict, list)))
    return deepest


def _manifest_text(meta: Mapping[str, str], p: Path, cap: int) -> str:
    try:
        if META_KEY_Z in meta:
            blob = meta[META_KEY_Z]
            if len(blob) > cap * 2:
                raise _bad(p, f"the compressed manifest has {len(blob)} characters")
            inflater = zlib.decompressobj()
            raw = inflater.decompress(base64.b64decode(blob, validate=True), cap)
            if inflater.unconsumed_tail or not inflater.eof:
                raise _bad(p, f"the manifest is larger than {cap} bytes")
            return raw.decode("utf-8")
        if META_KEY in meta:
            text = meta[META_KEY]
            if len(text) > cap:
                raise _bad(p, f"the manifest is larger than {cap} bytes")
            return text
    except (binascii.Error, zlib.error, UnicodeError, ValueError) as e:
        raise UnsafeFileError(f"{p}: the manifest does not decode: {e}") from e
    raise UnsafeFileError(f"{p} has no dfcompress manifest (was it written by dfcompress.save?)")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the manifest of a file written by :func:`dfcompress.save`.

    Raises:
        DfcompressError: ``path`` is not a path, or no such file.
        UnsafeFileError: not a safetensors file of dfcompress, or a manifest that
            is malformed, too large, too deeply nested or inconsistent.
    """
    from safetensors import safe_open

    p = check_path(path)
    if not p.is_file():
        raise DfcompressError(f"no such file: {p}")
    _check_not_pickle(p)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise UnsafeFileError(f"{p} is not a readable safetensors file: {e}") from e
    cap = min(MAX_MANIFEST, 64 * p.stat().st_size + 65536)
    text = _manifest_text(meta, p, cap)
    try:
        manifest = json.loads(text)
    except RecursionError as e:
        raise _bad(p, f"the manifest nests deeper than {MAX_DEPTH} levels") from e
    except json.JSONDecodeError as e:
        raise UnsafeFileError(f"{p}: the manifest is not valid JSON: {e}") from e
    validate_manifest(manifest, p)
    return manifest  # type: ignore[no-any-return]


def _is_attr_value(v: Any) -> bool:
    if isinstance(v, (bool, int, str, type(None))):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return set(v) == {"__tuple__"} and _is_int_list(v["__tuple__"])
    return _is_int_list(v)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 64 and all(isinstance(i, int) for i in v)


def _validate_node(node: Any, p: Path) -> None:
    """A constructor node: ``{"factory"|"class": ref, "kwargs": {...}[, "children": [...]]}``."""
    stack = [node]
    while stack:
        n = stack.pop()
        if not isinstance(n, dict) or not isinstance(n.get("kwargs"), dict):
            raise _bad(p, f"constructor {n!r}")
        refs = [k for k in ("factory", "class") if k in n]
        if len(refs) != 1 or not isinstance(n[refs[0]], str):
            raise _bad(p, f"constructor {n!r} needs one 'factory' or 'class' string")
        if set(n) - {"factory", "class", "kwargs", "children"}:
            raise _bad(p, f"constructor keys {sorted(n)!r}")
        if "children" in n:
            kids = n["children"]
            if refs[0] != "class" or not isinstance(kids, list):
                raise _bad(p, f"constructor children {kids!r}")
            for pair in kids:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise _bad(p, f"constructor child {pair!r}")
                stack.append(pair[1])


def validate_manifest(m: Any, p: Path) -> None:
    """Check every field's type; raise UnsafeFileError naming the first bad one."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _bad(p, "missing format marker")
    if m.get("format_version") not in _READABLE_VERSIONS:
        raise _bad(p, f"format_version {m.get('format_version')!r} is not one of 1, 2")
    if _depth(m) > MAX_DEPTH:
        raise _bad(p, f"the manifest nests deeper than {MAX_DEPTH} levels")
    for key, typ in (
        ("modules", list),
        ("structure", dict),
        ("tensors", dict),
        ("history", list),
        ("metadata", dict),
        ("checksum", str),
    ):
        if not isinstance(m.get(key), typ):
            raise _bad(p, f"{key!r} should be a {typ.__name__}")
    if "target" in m:
        from dfcompress.deploy._targets import TARGETS

        if m["target"] not in TARGETS:
            raise _bad(p, f"target {m['target']!r} is not one of {', '.join(TARGETS)}")
    if len(m["history"]) > MAX_HISTORY:
        raise _bad(p, f"the history has {len(m['history'])} entries (at most {MAX_HISTORY})")
    _validate_node(m.get("constructor"), p)
    for e in m["modules"]:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and isinstance(e.get("kind"), str)
            and isinstance(e.get("spec"), dict)
        ):
            raise _bad(p, f"module entry {e!r}")
    for name, attrs in m["structure"].items():
        if not isinstance(attrs, dict) or not all(
            isinstance(k, str) and _is_attr_value(v) for k, v in attrs.items()
        ):
            raise _bad(p, f"structure of module {name!r}: {attrs!r}")
    for name, info in m["tensors"].items():
        _validate_tensor_entry(name, info, m["tensors"], p)


def _validate_tensor_entry(name: str, info: Any, table: Mapping[str, Any], p: Path) -> None:
    if not isinstance(info, dict):
        raise _bad(p, f"tensor entry {name!r}: {info!r}")
    if "alias" in info:
        target = info["alias"]
        if (
            set(info) != {"alias"}
            or not isinstance(target, str)
            or not isinstance(table.get(target), dict)
            or "alias" in table[target]
        ):
            raise _bad(p, f"tensor {name!r} aliases {target!r}, which is not a stored tensor")
        return
    if set(info) - {"shape", "dtype", "encoding", "deflate"}:
        raise _bad(p, f"tensor {name!r} has keys {sorted(info)!r}")
    shape = info.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise _bad(p, f"tensor {name!r} shape {shape!r}")
    if not isinstance(info.get("dtype"), str) or info["dtype"] not in DTYPES:
        raise _bad(p, f"tensor {name!r} dtype {info.get('dtype')!r}: use one of {sorted(DTYPES)}")
    if info.get("encoding") not in _ENCODINGS:
        raise _bad(p, f"tensor {name!r} encoding {info.get('encoding')!r}")
    deflated = info.get("deflate", {})
    if not isinstance(deflated, dict) or not all(
        isinstance(v, list)
        and len(v) == 2
        and v[0] in ("int8", "uint8")
        and isinstance(v[1], int)
        and v[1] >= 0
        for v in deflated.values()
    ):
        raise _bad(p, f"tensor {name!r} compressed parts {deflated!r}")


@dataclass(frozen=True)
class TensorPlan:
    """A validated tensor entry: what to decode, from which stored parts."""

    name: str
    shape: list[int]
    dtype: torch.dtype
    encoding: str
    parts: dict[str, tuple[torch.dtype, int]]  # part -> (dtype, elements), after inflating
    deflated: dict[str, str]  # part -> key of its stored zlib stream


def _expected_parts(
    name: str, shape: list[int], dtype: torch.dtype, enc: str
) -> dict[str, tuple[torch.dtype, int | None]]:
    """Each part's dtype and exact length (None: at most the tensor's element count)."""
    n = math.prod(shape)
    if enc == "dense":
        return {name: (dtype, n)}
    if enc == "bitmask":
        return {
            f"{name}{SEP}mask": (torch.uint8, math.ceil(n / 8)),
            f"{name}{SEP}values": (dtype, None),
        }
    rows, cols = rows_cols(shape)
    return {
        f"{name}{SEP}crow": (torch.int32, rows + 1),
        f"{name}{SEP}col": (csr_index_dtype(cols), None),
        f"{name}{SEP}values": (dtype, None),
    }


def plan_tensors(
    manifest: Mapping[str, Any],
    stored: Mapping[str, tuple[str, list[int]]],
    p: Path,
    file_size: int,
) -> dict[str, TensorPlan]:
    """Check the tensor table against the stored parts and the decoded-size budget.

    ``stored`` maps each safetensors entry to its dtype code and shape, read from
    the header without touching the data.
    """
    budget = MAX_EXPANSION * file_size + _SLACK
    total = 0
    used: set[str] = set()
    plans: dict[str, TensorPlan] = {}
    for name, info in manifest["tensors"].items():
        if "alias" in info:
            continue
        shape, dtype, enc = info["shape"], DTYPES[info["dtype"]], info["encoding"]
        n = math.prod(shape)
        total += n * dtype.itemsize
        if total > budget:
            raise _bad(
                p,
                f"tensor {name!r} {shape} would decode past {budget} bytes "
                f"({MAX_EXPANSION}x the file size)",
            )
        if enc != "dense" and (len(shape) == 0 or dtype == torch.bool):
            raise _bad(p, f"tensor {name!r}: {enc!r} does not encode {info['dtype']} {shape}")
        deflate = info.get("deflate", {})
        expected = _expected_parts(name, shape, dtype, enc)
        if set(deflate) - set(expected):
            raise _bad(p, f"tensor {name!r} lists compressed parts {sorted(deflate)!r}")
        parts: dict[str, tuple[torch.dtype, int]] = {}
        deflated: dict[str, str] = {}
        for part, (want_dtype, want_count) in expected.items():
            if part in deflate:
                key = part + DEFLATED
                code, pshape = stored.get(key, (None, None))
                if code != "U8" or pshape is None or len(pshape) != 1:
                    raise _bad(p, f"tensor {name!r} is missing its compressed part {key!r}")
                dname, count = deflate[part]
                if DTYPES[dname] != want_dtype or count > _ZLIB_MAX_RATIO * pshape[0] + 64:
                    raise _bad(p, f"compressed part {part!r} declares {dname} x {count}")
                deflated[part] = key
                total += count
            else:
                key = part
                code, pshape = stored.get(key, (None, None))
                if code is None or pshape is None:
                    raise _bad(p, f"tensor {name!r} is missing its stored part {key!r}")
                if _SAFETENSORS_DTYPES.get(code) != want_dtype:
                    raise _bad(p, f"stored part {key!r} is {code}, expected {want_dtype}")
                count = math.prod(pshape)
                if part != name and len(pshape) != 1:
                    raise _bad(p, f"stored part {key!r} has shape {pshape}, expected 1-D")
                if part == name and pshape != shape:
                    raise _bad(p, f"stored tensor {key!r} has shape {pshape}, manifest {shape}")
            if count != want_count if want_count is not None else count > n:
                raise _bad(p, f"part {part!r} holds {count} elements for shape {shape}")
            if key in used:
                raise _bad(p, f"stored part {key!r} is used twice")
            used.add(key)
            parts[part] = (want_dtype, count)
        if total > budget:
            raise _bad(p, f"decoding would take more than {budget} bytes")
        if enc == "csr" and parts[f"{name}{SEP}col"][1] != parts[f"{name}{SEP}values"][1]:
            raise _bad(p, f"tensor {name!r}: CSR columns and values differ in length")
        plans[name] = TensorPlan(name, list(shape), dtype, enc, parts, deflated)
    extra = sorted(set(stored) - used)
    if extra:
        raise _bad(p, f"stored tensors {extra[:5]} are not in the manifest")
    return plans
