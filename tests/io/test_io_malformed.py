"""Corrupt, tampered and oversized files: each refused with UnsafeFileError, fast and small.

Every case starts from a valid file and changes one thing, keeping the
checksum valid where the attack would; each load is timed and its peak
resident memory bounded.
"""

from __future__ import annotations

import base64
import resource
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from io_files import (
    craft,
    manifest_of,
    restore,
    rewrite_manifest,
    tiny_net,
    with_manifest,
    zlib_of_zeros,
)
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.quant import quantize

MAX_SECONDS = 5.0
MAX_GROWTH_MB = 300.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def refused(path: Path, match: str, **kwargs: Any) -> None:
    """``load(path)`` raises UnsafeFileError matching ``match``, quickly and in bounded memory."""
    before, start = _peak_mb(), time.perf_counter()
    with pytest.raises(UnsafeFileError, match=match):
        dfc.load(path, **kwargs)
    assert time.perf_counter() - start < MAX_SECONDS
    assert _peak_mb() - before < MAX_GROWTH_MB


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    return dfc.save(tiny_net(), tmp_path / "net.safetensors")


def _sparse_linear() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        net[0].weight[torch.rand(8, 8) < 0.9] = 0
    return net


def _edit(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m["tensors"]["0.weight"][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["tensors"]["0.weight"].pop("dtype"), "dtype None"),
        (_edit("dtype", "object"), "dtype 'object'"),
        (_edit("shape", [2**32, 2**32]), "would decode past"),
        (_edit("shape", [2**62, 4]), "would decode past"),
        (_edit("shape", [-1, 3, 3, 3]), "shape"),
        (_edit("shape", [8, 3, 3, 3.0]), "shape"),
        (_edit("encoding", "pickle"), "encoding"),
        (lambda m: m["tensors"].update({"x": {"alias": {"a": 1}}}), "aliases"),
        (lambda m: m["tensors"].update({"x": {"alias": "x"}}), "aliases"),
        (lambda m: m["tensors"].update({"x": {"alias": "y"}, "y": {"alias": "0.bias"}}), "aliases"),
        (lambda m: m["structure"]["0"].update(kernel_size={"__tuple__": 5}), "structure"),
        (lambda m: m["structure"]["0"].update(kernel_size={"__tuple__": [5, 5]}), "kernel_size"),
        (lambda m: m["structure"]["0"].update(kernel_size={"__tuple__": [1, 1]}), "0.weight"),
        (lambda m: m["structure"]["0"].update(kernel_size="3"), "kernel_size"),
        (lambda m: m["structure"]["0"].update(stride={"__tuple__": [0, 0]}), "stride"),
        (lambda m: m["structure"]["0"].update(dilation={"__tuple__": [0, 1]}), "dilation"),
        (lambda m: m["structure"]["0"].update(padding={"__tuple__": [-1, -1]}), "padding"),
        (lambda m: m["structure"]["0"].update(padding_mode="exec"), "padding_mode"),
        (lambda m: m["structure"]["4"].update(start_dim=0), "start_dim"),
        (lambda m: m["structure"]["1"].update(eps=-1.0), "eps"),
        (lambda m: m["structure"]["0"].update(_forward=1), "_forward"),
        (lambda m: m["structure"].update(ghost={}), "ghost"),
        (lambda m: _nest(m, 500), "nest"),
        (lambda m: _nest(m, 600, key="history"), "nest"),
        (lambda m: m.update(history=[{}] * 5000), "history"),
        (
            lambda m: m.update(constructor={"class": "torch.nn.modules.linear:Identity"}),
            "constructor",
        ),
        (lambda m: m.update(constructor={"factory": 1, "kwargs": {}}), "constructor"),
        (
            lambda m: m["modules"].append({"path": "0", "kind": "quant.conv2d", "spec": "x"}),
            "module",
        ),
    ],
)
def test_tampered_manifest_is_refused(
    edit: Callable[[dict[str, Any]], Any], match: str, net_file: Path
) -> None:
    rewrite_manifest(net_file, edit)
    refused(net_file, match)


def _nest(m: dict[str, Any], depth: int, key: str = "metadata") -> None:
    value: Any = []
    for _ in range(depth):
        value = [value]
    m[key] = {"deep": value} if key == "metadata" else [value]


def test_a_manifest_nested_past_the_parser_is_refused(net_file: Path) -> None:
    raw = net_file.read_bytes()
    text = '{"format": "dfcompress", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    net_file.write_bytes(with_manifest(raw, None, text=text))
    refused(net_file, "nests deeper|not valid JSON")


@pytest.mark.parametrize(
    "meta",
    [
        {"dfcompress-zlib": "ü" * 12},
        {"dfcompress-zlib": "not base64!"},
        {"dfcompress-zlib": base64.b64encode(b"not zlib").decode()},
        {"dfcompress": "{not json"},
        {"other": "x"},
    ],
)
def test_an_undecodable_manifest_is_refused(meta: dict[str, str], net_file: Path) -> None:
    from io_files import join, split

    header, data = split(net_file.read_bytes())
    header["__metadata__"] = meta
    net_file.write_bytes(join(header, data))
    refused(net_file, "manifest")


def test_a_manifest_bomb_is_refused(net_file: Path) -> None:
    from io_files import join, split

    header, data = split(net_file.read_bytes())
    text = zlib.compressobj(9)
    blob = text.compress(b'{"pad": "') + b"".join(
        text.compress(b" " * (1 << 20)) for _ in range(250)
    )
    blob += text.compress(b'"}') + text.flush()
    header["__metadata__"] = {"dfcompress-zlib": base64.b64encode(blob).decode()}
    net_file.write_bytes(join(header, data))
    refused(net_file, "larger than")


def test_a_bitmask_part_of_the_wrong_dtype_or_count_is_refused(tmp_path: Path) -> None:
    path = dfc.save(_sparse_linear(), tmp_path / "s.safetensors")
    assert manifest_of(path.read_bytes())["tensors"]["0.weight"]["encoding"] == "bitmask"
    restore(path, lambda t: t.update({"0.weight::mask": t["0.weight::mask"].view(torch.int8)}))
    refused(path, "is I8")
    path = dfc.save(_sparse_linear(), tmp_path / "s.safetensors")
    restore(path, edit_manifest=_edit("shape", [8, 9]))
    refused(path, "holds 8 elements")
    path = dfc.save(_sparse_linear(), tmp_path / "s.safetensors")
    restore(path, lambda t: t["0.weight::mask"].fill_(255))
    refused(path, "marks 64 elements")


def test_a_bitmask_declaring_2_to_the_31_elements_is_refused(tmp_path: Path) -> None:
    path = dfc.save(_sparse_linear(), tmp_path / "s.safetensors")
    mask = torch.frombuffer(bytearray(zlib_of_zeros(2**28)), dtype=torch.uint8)

    def edit(m: dict[str, Any]) -> None:
        m["tensors"]["0.weight"].update(shape=[2**31], deflate={"0.weight::mask": ["uint8", 2**28]})

    restore(
        path, lambda t: t.update({"0.weight::mask::deflate": mask}) or t.pop("0.weight::mask"), edit
    )
    refused(path, "would decode past")


def test_sparse_indices_out_of_range_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256, bias=False))
    with torch.no_grad():
        net[0].weight[torch.rand(256, 256) < 0.99] = 0
    path = dfc.save(net, tmp_path / "c.safetensors")
    assert manifest_of(path.read_bytes())["tensors"]["0.weight"]["encoding"] == "csr"
    restore(path, lambda t: t["0.weight::col"].add_(300))
    refused(path, "out of range")
    path = dfc.save(net, tmp_path / "c.safetensors")
    restore(path, lambda t: t["0.weight::crow"].mul_(3))
    refused(path, "out of range")


class Codes(nn.Module):
    """Int8 codes that deflate well (bell-shaped, like trained weights)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        codes = torch.randn(96, 96, generator=g).mul(20).round().clamp(-127, 127)
        self.register_buffer("q", codes.to(torch.int8))


def test_a_deflate_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = dfc.save(Codes(), tmp_path / "q.safetensors")
    assert manifest_of(path.read_bytes())["tensors"]["q"]["deflate"] == {"q": ["int8", 9216]}
    bomb = torch.frombuffer(bytearray(zlib_of_zeros(2**28)), dtype=torch.uint8)
    restore(
        path,
        lambda t: t.update({"q::deflate": bomb}),
        lambda m: m["tensors"]["q"].update(shape=[2**14, 2**14], deflate={"q": ["int8", 2**28]}),
    )
    refused(path, "decode past", allow=["test_io_malformed"])
    path = dfc.save(Codes(), tmp_path / "q.safetensors")
    twice = torch.frombuffer(bytearray(zlib_of_zeros(2 * 9216)), dtype=torch.uint8)
    restore(path, lambda t: t.update({"q::deflate": twice}))
    refused(path, "does not hold exactly", allow=["test_io_malformed"])
    path = dfc.save(Codes(), tmp_path / "q.safetensors")
    restore(path, lambda t: t["q::deflate"][10:].fill_(7))
    refused(path, "inflate|does not hold", allow=["test_io_malformed"])


def test_a_tensor_must_fit_the_rebuilt_parameter(tmp_path: Path) -> None:
    path = dfc.save(nn.Sequential(nn.Linear(8, 1)), tmp_path / "l.safetensors")
    restore(
        path,
        lambda t: t.update({"0.weight": torch.zeros(5, 8, dtype=torch.float64)}),
        lambda m: m["tensors"]["0.weight"].update(shape=[5, 8], dtype="float64"),
    )
    refused(path, r"float64 \[5, 8\].*float32 \[1, 8\]")
    path = dfc.save(nn.Sequential(nn.Linear(8, 1)), tmp_path / "l.safetensors")
    restore(
        path,
        lambda t: t.update({"0.bias": torch.zeros(1, dtype=torch.int64)}),
        lambda m: m["tensors"]["0.bias"].update(dtype="int64"),
    )
    refused(path, "int64")


def test_a_quantizer_spec_replaced_by_a_string_is_refused(tmp_path: Path) -> None:
    q = quantize(tiny_net(), "int8", calibration=torch.rand(4, 3, 8, 8), progress=False)
    path = dfc.save(q, tmp_path / "q.safetensors")
    rewrite_manifest(path, lambda m: m["modules"][0]["spec"].update(config="int8"))
    refused(path, "module")


def test_stored_tensors_must_all_be_listed(tmp_path: Path, net_file: Path) -> None:
    restore(net_file, lambda t: t.update(extra=torch.zeros(3)))
    refused(net_file, "not in the manifest")


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1])
def test_truncated_and_garbage_files_are_refused(cut: int, net_file: Path) -> None:
    raw = net_file.read_bytes()
    net_file.write_bytes(raw[:cut] if cut >= 0 else raw[: len(raw) // 2])
    refused(net_file, ".")
    net_file.write_bytes(bytes(range(256)) * 4)
    refused(net_file, "not a safetensors file")


def test_bad_arguments_name_the_argument(tmp_path: Path, net_file: Path) -> None:
    with pytest.raises(DfcompressError, match="path=None"):
        dfc.load(None)  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="path=None"):
        dfc.save(tiny_net(), None)  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="is a directory"):
        dfc.load(tmp_path)
    with pytest.raises(DfcompressError, match="is a directory"):
        dfc.save(tiny_net(), tmp_path)
    with pytest.raises(DfcompressError, match="allow='timm'"):
        dfc.load(net_file, allow="timm")
    with pytest.raises(DfcompressError, match="factory=5"):
        dfc.load(net_file, factory=5)  # type: ignore[arg-type]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DfcompressError, match="cannot be written"):
        dfc.save(tiny_net(), tmp_path / "file" / "x.safetensors")
    with pytest.raises(DfcompressError, match="sparse='yes'"):
        dfc.save(tiny_net(), tmp_path / "x.safetensors", sparse="yes")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match=r"model=str"):
        dfc.save("model", tmp_path / "x.safetensors")  # type: ignore[arg-type]
    craft(tmp_path / "c.safetensors", {"format": "dfcompress"}, {"w": torch.zeros(1)})
    refused(tmp_path / "c.safetensors", "format_version")
