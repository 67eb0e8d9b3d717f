"""Helpers that read and rewrite dfcompress files the way an attacker would."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def tiny_net() -> nn.Sequential:
    """A torch.nn model that loads with no argument (conv, BN, linear; 64+ element tensors)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 64),
        nn.ReLU(),
        nn.Linear(64, 128),
        nn.Linear(128, 2),
    ).eval()


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """The safetensors header (JSON) and the data that follows it."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header: dict[str, Any], data: bytes) -> bytes:
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    return struct.pack("<Q", len(new)) + new + data


def manifest_of(raw: bytes) -> dict[str, Any]:
    meta = split(raw)[0]["__metadata__"]
    if "dfcompress-zlib" in meta:
        return json.loads(zlib.decompress(base64.b64decode(meta["dfcompress-zlib"])))  # type: ignore[no-any-return]
    return json.loads(meta["dfcompress"])  # type: ignore[no-any-return]


def with_manifest(raw: bytes, manifest: Any, *, text: str | None = None) -> bytes:
    """``raw`` with its manifest replaced (stored uncompressed: load reads both forms)."""
    header, data = split(raw)
    header["__metadata__"] = {"dfcompress": json.dumps(manifest) if text is None else text}
    return join(header, data)


def rewrite_manifest(path: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    raw = path.read_bytes()
    manifest = manifest_of(raw)
    edit(manifest)
    path.write_bytes(with_manifest(raw, manifest))


def craft(path: Path, manifest: Any, tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors file holding ``tensors`` and a hand-made manifest."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"dfcompress": json.dumps(manifest)})
    return path


def restore(
    path: Path,
    edit_tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    edit_manifest: Callable[[dict[str, Any]], Any] | None = None,
) -> Path:
    """Rewrite the stored tensors and manifest, with a fresh checksum (a careful attacker)."""
    from safetensors.torch import load_file, save_file

    from dfcompress.io._encodings import checksum

    manifest = manifest_of(path.read_bytes())
    stored = load_file(str(path))
    if edit_tensors is not None:
        edit_tensors(stored)
    if edit_manifest is not None:
        edit_manifest(manifest)
    manifest["checksum"] = checksum(stored)
    save_file(stored, str(path), metadata={"dfcompress": json.dumps(manifest)})
    return path


def zlib_of_zeros(n: int) -> bytes:
    """A zlib stream that inflates to ``n`` zero bytes, built without holding them."""
    z = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    out = [z.compress(chunk) for _ in range(n >> 20)]
    out.append(z.compress(bytes(n % (1 << 20))))
    out.append(z.flush())
    return b"".join(out)
