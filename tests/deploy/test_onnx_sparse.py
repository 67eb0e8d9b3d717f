"""Pruned weights stored sparse in the ONNX file: smaller file, the dense model's computation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _deploy_nets import Residual, _trained_looking, inputs
from hypothesis import given
from torch import nn

import dfcompress as dfc
from dfcompress.deploy import Artifact
from dfcompress.deploy._onnx_runtime import _session
from dfcompress.deploy._onnx_sparse import encode, encode_initializer, worth_encoding
from dfcompress.errors import DfcompressError
from strategies import sparse_arrays

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

_DECODER_OPS = {"BitShift", "Mod", "CumSum", "Gather"}


def _wide_resnet() -> nn.Module:
    torch.manual_seed(0)
    c = 32
    return _trained_looking(
        nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            Residual(c),
            Residual(c),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, 2),
        )
    )


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return inputs(32, 32, 0)


@pytest.fixture(scope="module")
def p50(data: torch.Tensor) -> nn.Module:
    return dfc.compress(_wide_resnet(), "p50", data, progress=False)


@pytest.fixture(scope="module")
def p50_files(
    tmp_path_factory: pytest.TempPathFactory, data: torch.Tensor, p50: nn.Module
) -> dict[str, Artifact]:
    d = tmp_path_factory.mktemp("sparse")
    x = data[:8]
    return {
        "float": dfc.export(_wide_resnet(), d / "float.onnx", x, target="onnxruntime"),
        "auto": dfc.export(p50, d / "p50.onnx", x, target="onnxruntime"),
        "off": dfc.export(p50, d / "p50_off.onnx", x, target="onnxruntime", sparse_weights="off"),
    }


def test_a_p50_file_is_at_most_0_6x_the_float_file(p50_files: dict[str, Artifact]) -> None:
    sparse, dense, float_file = p50_files["auto"], p50_files["off"], p50_files["float"]
    assert dense.size_bytes >= 0.99 * float_file.size_bytes  # the problem: zeros take room
    assert sparse.size_bytes <= 0.60 * float_file.size_bytes
    assert sparse.agreement is not None and sparse.agreement.agreement == 1.0
    assert sparse.details["sparse_tensors"] >= 3
    assert sparse.details["sparse_bytes_saved"] == dense.size_bytes - sparse.size_bytes
    assert "sparse_tensors" not in dense.details


def test_the_sparse_file_computes_exactly_what_the_dense_file_does(
    p50_files: dict[str, Artifact],
) -> None:
    x = inputs(64, 32, 1)
    assert torch.equal(p50_files["auto"].run(x), p50_files["off"].run(x))


def _runtime_ops(path: Path, tmp_path: Path) -> Counter[str]:
    optimized = tmp_path / f"{path.stem}.optimized.onnx"
    _session(str(path), optimized_path=str(optimized))
    return Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


def test_onnx_runtime_rebuilds_the_weights_once_at_load(
    p50_files: dict[str, Artifact], tmp_path: Path
) -> None:
    written = {n.op_type for n in onnx.load(str(p50_files["auto"].path)).graph.node}
    assert written >= _DECODER_OPS
    runs = _runtime_ops(p50_files["auto"].path, tmp_path)
    assert runs == _runtime_ops(p50_files["off"].path, tmp_path)
    assert not _DECODER_OPS & set(runs)


def test_a_dense_net_is_written_as_with_sparse_weights_off(tmp_path: Path) -> None:
    net, x = _wide_resnet(), inputs(8, 32, 0)
    auto = dfc.export_onnx(net, tmp_path / "auto.onnx", x)
    off = dfc.export_onnx(net, tmp_path / "off.onnx", x, sparse_weights="off")
    assert auto.path.read_bytes() == off.path.read_bytes()
    assert auto.sparse_tensors == 0 and auto.sparse_bytes_saved == 0


def test_files_below_opset_11_stay_dense(tmp_path: Path, p50: nn.Module) -> None:
    r = dfc.export_onnx(p50, tmp_path / "old.onnx", inputs(8, 32, 0), opset=10)
    assert r.sparse_tensors == 0
    assert not _DECODER_OPS & {n.op_type for n in onnx.load(str(r.path)).graph.node}


@pytest.mark.parametrize("int8_weights", ["int8", "uint8"])
def test_int8_codes_are_stored_sparse_and_still_run_as_int8_kernels(
    tmp_path: Path, data: torch.Tensor, int8_weights: str
) -> None:
    q = dfc.compress(_wide_resnet(), "q8-p50", data, progress=False, target="onnxruntime")
    x = data[:8]
    opts = {"target": "onnxruntime", "int8_weights": int8_weights}
    sparse = dfc.export(q, tmp_path / "q.onnx", x, **opts)
    dense = dfc.export(q, tmp_path / "q_off.onnx", x, sparse_weights="off", **opts)
    assert sparse.details["weights"] == int8_weights
    assert sparse.details["int8_kernels"] == dense.details["int8_kernels"]
    assert dense.details["int8_kernels"].get("QLinearConv", 0) >= 4
    graph = onnx.load(str(sparse.path)).graph
    values = [numpy_helper.to_array(t) for t in graph.initializer if "values" in t.name]
    assert values and all(v.dtype == np.dtype(int8_weights) for v in values)
    assert sparse.details["sparse_bytes_saved"] == dense.size_bytes - sparse.size_bytes > 0
    assert torch.equal(sparse.run(data), dense.run(data))


def _identity_model(w: np.ndarray) -> Any:
    y = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(w.dtype), w.shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [y],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


@given(sparse_arrays())
def test_onnx_runtime_decodes_every_tensor_bit_for_bit(w: np.ndarray) -> None:
    model = _identity_model(w)
    assert encode_initializer(model, "w", always=True)
    assert "w" not in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model)
    (got,) = _session(model.SerializeToString()).run(None, {})
    assert got.dtype == w.dtype and got.shape == w.shape
    if w.dtype.kind == "f":
        w = np.where(w == 0, np.zeros((), w.dtype), w)  # -0.0 comes back as 0.0
    assert got.tobytes() == w.tobytes()  # NaN payloads included


def test_negative_zeros_are_stored_as_zeros() -> None:
    w = np.arange(1, 4097, dtype=np.float32)
    w[:1024], w[1024:2048] = 0.0, -0.0  # a BatchNorm fold with a negative scale gives -0.0
    _, values = encode(w)
    assert values.tolist() == [0.0, *range(2049, 4097)]


@pytest.mark.parametrize(
    ("dtype", "size", "zeros", "worth"),
    [
        ("float32", 1023, 1.0, False),  # too small: the decoder would eat the saving
        ("float32", 4096, 0.10, False),
        ("float32", 4096, 0.20, True),  # a layer pruned by 20 %
        ("float16", 4096, 0.50, True),
        ("int8", 4096, 0.20, False),  # int8 codes need more zeros
        ("int8", 4096, 0.40, True),
    ],
)
def test_only_weights_the_encoding_makes_smaller_are_encoded(
    dtype: str, size: int, zeros: float, worth: bool
) -> None:
    w = np.arange(1, size + 1).astype(dtype)
    w[: int(zeros * size)] = 0
    assert worth_encoding(w) == worth


@pytest.mark.parametrize("bad", ["on", "AUTO", True, None, 0])
def test_a_bad_sparse_weights_value_is_refused(tmp_path: Path, bad: object) -> None:
    net, x = nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(2, 3, 8, 8)
    with pytest.raises(DfcompressError, match=r"sparse_weights=.*use 'auto' or 'off'") as e:
        dfc.export(net, tmp_path / "n.onnx", x, target="onnxruntime", sparse_weights=bad)
    assert repr(bad) in str(e.value)
    with pytest.raises(DfcompressError, match="sparse_weights"):
        dfc.export_onnx(net, tmp_path / "n.onnx", x, sparse_weights=bad)  # type: ignore[arg-type]
