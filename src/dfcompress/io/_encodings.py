"""Tensor encodings of the file: dense, bitmask + values, CSR, and deflated one-byte parts.

A tensor with many zeros (after unstructured pruning) is stored as a bitmask
plus its non-zero values, or in CSR form, whichever is smaller, so sparsity
shows in the file size; one-byte parts (int8/uint8 codes, bitmasks) are
zlib-compressed when that saves 10 %. Decoding trusts nothing: every part's
dtype, length and index range is checked by :mod:`dfcompress.io._format` before
this module allocates, and again here where a value is only known after reading.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dfcompress.errors import UnsafeFileError

__all__ = [
    "DEFLATED",
    "DTYPES",
    "SEP",
    "checksum",
    "decode",
    "deflate",
    "dtype_name",
    "encode",
    "inflate",
]

SEP = "::"
DEFLATED = f"{SEP}deflate"
_DEFLATE_MIN = 4096  # bytes: smaller parts are not worth a zlib stream
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}
# The dtypes a file may declare, by their manifest name (no lookup on ``torch``).
DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest name of ``dtype`` (``torch.float32`` -> ``"float32"``)."""
    return str(dtype).removeprefix("torch.")


def _bits_nonzero(t: torch.Tensor) -> torch.Tensor:
    """Mask of elements whose bit pattern is not all-zero (keeps -0.0 and NaN payloads)."""
    if t.dtype == torch.bool:
        return t.reshape(-1)
    return t.reshape(-1).view(_INT_VIEW[t.element_size()]) != 0


def csr_index_dtype(cols: int) -> torch.dtype:
    """Column-index dtype of a CSR tensor with ``cols`` columns."""
    return torch.int16 if cols <= 32767 else torch.int32


def rows_cols(shape: list[int]) -> tuple[int, int]:
    """The CSR view of a tensor: first dimension by the rest (1-D: one row)."""
    n = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    return rows, (n // rows if rows else 0)


def encode(name: str, t: torch.Tensor, sparse: bool) -> tuple[dict[str, torch.Tensor], str]:
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
    rows, cols = rows_cols(list(t.shape))
    idx_dtype = csr_index_dtype(cols)
    csr_bytes = 4 * (rows + 1) + nnz * (idx_dtype.itemsize + item)
    best = min(dense_bytes, mask_bytes, csr_bytes)
    if best > 0.95 * dense_bytes:
        return dense, "dense"
    flat = t.reshape(-1)
    if best == mask_bytes:
        packed = np.packbits(nz.numpy().astype(np.uint8))
        return {
            f"{name}{SEP}mask": torch.from_numpy(packed),
            f"{name}{SEP}values": flat[nz].clone(),
        }, "bitmask"
    nz2 = nz.reshape(rows, cols)
    counts = nz2.sum(dim=1, dtype=torch.int32)
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(counts, 0)
    col = nz2.nonzero()[:, 1].to(idx_dtype)
    return {
        f"{name}{SEP}crow": crow,
        f"{name}{SEP}col": col,
        f"{name}{SEP}values": flat[nz].clone(),
    }, "csr"


def deflate(parts: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
                out[key + DEFLATED] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
                info[key] = [dtype_name(t.dtype), t.numel()]
                continue
        out[key] = t
    return out, info


def inflate(key: str, blob: torch.Tensor, dtype: torch.dtype, count: int) -> torch.Tensor:
    """The ``count`` one-byte elements a deflated part holds; never inflates more."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(blob.numpy().tobytes(), count)
        done = inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data
    except zlib.error as e:
        raise UnsafeFileError(f"compressed part {key!r} does not inflate: {e}") from e
    if len(raw) != count or not done:
        raise UnsafeFileError(f"compressed part {key!r} does not hold exactly {count} bytes")
    return (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
        if count
        else (torch.zeros(0, dtype=dtype))
    )


def decode(
    name: str, shape: list[int], dtype: torch.dtype, enc: str, parts: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Rebuild a tensor from its parts (already checked for dtype and length)."""
    n = math.prod(shape)
    if enc == "dense":
        # A fresh allocation: kernels may vectorise differently on the
        # unaligned views safetensors returns, changing results in the last bit.
        return parts[name].clone().reshape(shape)
    values = parts[f"{name}{SEP}values"]
    t = torch.zeros(n, dtype=dtype)
    if enc == "bitmask":
        mask = np.unpackbits(parts[f"{name}{SEP}mask"].numpy(), count=n).astype(bool)
        if int(mask.sum()) != values.numel():
            raise UnsafeFileError(
                f"tensor {name!r}: its bitmask marks {int(mask.sum())} elements, "
                f"and {values.numel()} values are stored"
            )
        t[torch.from_numpy(mask)] = values
        return t.reshape(shape)
    crow = parts[f"{name}{SEP}crow"].long()
    col = parts[f"{name}{SEP}col"].long()
    rows, cols = rows_cols(shape)
    steps = crow[1:] - crow[:-1]
    if (
        int(crow[0]) != 0
        or int(crow[-1]) != values.numel()
        or col.numel() != values.numel()
        or bool((steps < 0).any())
        or bool((steps > cols).any())
        or (col.numel() and (int(col.min()) < 0 or int(col.max()) >= cols))
    ):
        raise UnsafeFileError(
            f"tensor {name!r}: its CSR indices are out of range for shape {shape} "
            f"({values.numel()} values)"
        )
    row_idx = torch.repeat_interleave(torch.arange(rows), steps)
    flat_idx = row_idx * cols + col
    if flat_idx.numel() > 1 and bool((flat_idx[1:] <= flat_idx[:-1]).any()):
        raise UnsafeFileError(f"tensor {name!r}: its CSR columns repeat or are unsorted")
    t[flat_idx] = values
    return t.reshape(shape)


def checksum(stored: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the stored parts: detects corruption (it authenticates nothing)."""
    h = hashlib.sha256()
    for k in sorted(stored):
        t = stored[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
