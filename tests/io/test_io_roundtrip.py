"""save/load: bit-exact round trips, sparse storage, recorded constructors."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from io_files import rewrite_manifest
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.io import read_manifest, register_factory, serialized_size
from dfcompress.io._encodings import decode, encode
from strategies import SmallNet, small_nets, tensors


class Basic(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


@register_factory
def resnet_like(width: int = 8) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        Basic(width),
        Basic(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 2),
    )
    return dfc.set_constructor(net, resnet_like, width=width)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.block = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.block(t)).mean(1))


def vit_like() -> nn.Module:
    return Tiny()


def video_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(3, 4, (2, 3, 3)),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(
            sa[k].view(-1).view(torch.uint8) if sa[k].numel() else sa[k],
            sb[k].view(-1).view(torch.uint8) if sb[k].numel() else sb[k],
        ), k


@pytest.mark.parametrize("build", [resnet_like, vit_like, video_net, SmallNet])
def test_round_trip_is_bit_exact(build: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build()
    path = dfc.save(model, tmp_path / "m.safetensors")
    back = dfc.load(path, allow=["strategies", "test_io_roundtrip"])
    assert_same_state(model, back)
    x = torch.randn(2, 3, 4, 8, 8) if build is video_net else torch.randn(2, 3, 8, 8)
    model.eval()
    assert torch.equal(model(x), back(x))


def test_dtypes_and_special_values_survive(tmp_path: Path) -> None:
    model = SmallNet().half()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = -0.0
        model.conv1.weight[0, 0, 0, 1] = float("nan")
        model.conv1.weight[0, 0, 0, 2] = float("inf")
    back = dfc.load(dfc.save(model, tmp_path / "h.safetensors"), factory=SmallNet)
    assert back.conv1.weight.dtype == torch.float16
    assert_same_state(model, back)


@settings(max_examples=25)
@given(t=tensors(zeros=0.7))
def test_sparse_encodings_round_trip(t: torch.Tensor) -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = t.to(dtype)
        parts, enc = encode("w", x, sparse=True)
        y = decode("w", list(x.shape), dtype, enc, parts)
        assert y.dtype == x.dtype and y.shape == x.shape
        assert torch.equal(
            y.view(-1).view(torch.int16 if dtype != torch.float32 else torch.int32),
            x.reshape(-1).view(torch.int16 if dtype != torch.float32 else torch.int32),
        )


def test_pruned_model_is_smaller_on_disk(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    dense = serialized_size(model)
    with torch.no_grad():
        for layer in model:
            w = layer.weight
            w[w.abs() < w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    assert serialized_size(model) <= 0.6 * dense
    assert serialized_size(model, sparse=False) >= 0.99 * dense
    with torch.no_grad():
        for layer in model:
            w = layer.weight
            w[w.abs() < w.abs().flatten().kthvalue(int(w.numel() * 0.97)).values] = 0
    very_sparse = dfc.save(model, tmp_path / "s.safetensors")
    encodings = {v.get("encoding") for v in read_manifest(very_sparse)["tensors"].values()}
    assert "csr" in encodings
    assert serialized_size(model) <= 0.12 * dense
    back = dfc.load(very_sparse)  # a torch.nn structure needs no argument
    assert_same_state(model, back)


def test_structurally_smaller_model_reloads(tmp_path: Path) -> None:
    small = SmallNet(c1=2, c2=3, hidden=5)
    back = dfc.load(dfc.save(small, tmp_path / "s.safetensors"), factory=SmallNet)
    assert back.conv1.out_channels == 2 and back.bn1.num_features == 2
    assert back.fc1.in_features == 3 and back.fc1.out_features == 5
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(small.eval()(x), back(x))


@settings(max_examples=10)
@given(net=small_nets())
def test_round_trip_property(net: SmallNet, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("rt") / "n.safetensors"
    assert_same_state(net, dfc.load(dfc.save(net, path), factory=SmallNet))


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    def build() -> nn.Module:
        m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
        m[1].weight = m[0].weight
        return m

    back = dfc.load(dfc.save(build(), tmp_path / "t.safetensors"), factory=build)
    assert back[1].weight is back[0].weight


def test_recorded_constructor_is_used(tmp_path: Path) -> None:
    net = dfc.set_constructor(nn.Linear(3, 2), "torch.nn:Linear", in_features=3, out_features=2)
    path = dfc.save(net, tmp_path / "l.safetensors")
    assert read_manifest(path)["constructor"]["class"] == "torch.nn.modules.linear:Linear"
    assert torch.equal(dfc.load(path).weight, net.weight)


def test_own_classes_need_allow(tmp_path: Path) -> None:
    path = dfc.save(SmallNet(), tmp_path / "s.safetensors")
    with pytest.raises(UnsafeFileError, match=r"allow=\['strategies'\]"):
        dfc.load(path)
    back = dfc.load(path, allow=["strategies"])
    assert type(back) is SmallNet


def test_plain_sequential_loads_with_no_argument(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1, groups=2), nn.GELU()),
        nn.ModuleList([nn.Identity()]),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(4, 2),
    ).eval()
    back = dfc.load(dfc.save(net, tmp_path / "seq.safetensors"))
    assert_same_state(net, back)
    assert repr(back) == repr(net)


def test_unrecordable_model_is_refused_at_save(tmp_path: Path) -> None:
    net = nn.Sequential(Basic(4))
    with pytest.raises(DfcompressError, match=r"module '0' \(Basic\).*set_constructor"):
        dfc.save(net, tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()
    with pytest.raises(DfcompressError, match=r"TransformerEncoderLayer.*register_factory"):
        dfc.save(nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16)), tmp_path / "t.safetensors")


def test_bnext_built_from_its_class_reloads(tmp_path: Path) -> None:
    from dfcompress.models import BNext

    torch.manual_seed(0)
    net = BNext((8, 16, 32), num_classes=2).eval()
    back = dfc.load(dfc.save(net, tmp_path / "b.safetensors"))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(back(x), net(x))


def test_pickle_and_torch_save_are_refused(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("unpickled!",))

    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UnsafeFileError, match="pickle"):
        dfc.load(p, factory=SmallNet)
    torch.save(SmallNet().state_dict(), p)
    with pytest.raises(UnsafeFileError, match="never unpickles"):
        dfc.load(p, factory=SmallNet)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(constructor={"factory": "os:system", "kwargs": {}}), "allowed"),
        (lambda m: m.update(checksum="0" * 64), "checksum"),
        (lambda m: m["tensors"]["fc1.weight"].update(encoding="exec"), "encoding"),
        (lambda m: m.update(format_version=99), "format_version"),
        (lambda m: m["modules"].append({"path": "fc1", "kind": "evil", "spec": {}}), "evil"),
        (lambda m: m["tensors"].pop("fc1.weight"), "not in the manifest"),
    ],
)
def test_tampered_manifest_is_refused(edit: Any, match: str, tmp_path: Path) -> None:
    path = dfc.save(SmallNet(), tmp_path / "m.safetensors")
    rewrite_manifest(path, edit)
    with pytest.raises(DfcompressError, match=match):
        dfc.load(path, factory=None if "allowed" in match else SmallNet)


def test_manifest_is_compressed_and_garbage_refused(tmp_path: Path) -> None:
    path = dfc.save(SmallNet(), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(header["__metadata__"]) == {"dfcompress-zlib"}
    header["__metadata__"]["dfcompress-zlib"] = "not base64!"
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    with pytest.raises(UnsafeFileError, match="does not decode"):
        dfc.load(path, factory=SmallNet)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=r"nn\.Module"):
        dfc.save("not a model", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="no such file"):
        dfc.load(tmp_path / "missing.safetensors")
    with pytest.raises(DfcompressError, match=r"package\.module:Name"):
        dfc.save(SmallNet(), tmp_path / "x", constructor="nocolon")


class _Codes(nn.Module):
    """Int8 buffers (bell-shaped codes, half of them zero) next to a float layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)
        g = torch.Generator().manual_seed(0)
        codes = torch.randn(96, 96, generator=g).mul(20).round().clamp(-127, 127)
        codes[torch.rand(96, 96, generator=g) < 0.5] = 0
        self.register_buffer("q", codes.to(torch.int8))
        self.register_buffer("u", (codes.abs() * 2).to(torch.uint8))


def test_one_byte_codes_are_compressed_and_restored_exactly(tmp_path: Path) -> None:
    model = _Codes()
    small = dfc.save(model, tmp_path / "z.safetensors")
    plain = dfc.save(model, tmp_path / "p.safetensors", deflate=False)
    assert small.stat().st_size < 0.9 * plain.stat().st_size
    infos = read_manifest(small)["tensors"]
    assert infos["q"].get("deflate") and "deflate" not in infos["fc.weight"]
    for path in (small, plain):
        back = dfc.load(path, factory=_Codes)
        assert_same_state(model, back)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda i: i.update(deflate={"q::values": ["int8", 10**6]}), "holds 1000000 elements"),
        (lambda i: i.update(deflate={"other": ["int8", 10]}), "lists compressed parts"),
        (lambda i: i.update(deflate={"q::values": ["float32", 10]}), "compressed parts"),
        (lambda i: i.update(deflate="x"), "compressed parts"),
    ],
)
def test_tampered_compressed_parts_are_refused(edit: Any, match: str, tmp_path: Path) -> None:
    path = dfc.save(_Codes(), tmp_path / "z.safetensors")
    info = read_manifest(path)["tensors"]["q"]
    assert info["encoding"] == "bitmask" and "q::values" in info["deflate"]
    rewrite_manifest(path, lambda m: edit(m["tensors"]["q"]))
    with pytest.raises(UnsafeFileError, match=match):
        dfc.load(path, factory=_Codes)
