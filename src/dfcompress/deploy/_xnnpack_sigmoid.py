"""SiLU and sigmoid gates in int8 for XNNPACK: a table lookup and an int8 multiply.

Left to ExecuTorch's quantizer, a SiLU between two int8 convolutions runs in
float inside the int8 file: the delegate converts the int8 codes to float,
computes ``sigmoid`` and the product in float and converts back, four passes
over the activation, two of them in float. On an EfficientNet-B0 at 224 px
those conversions made the int8 file's SiLUs cost 1.6x the float file's, and
the whole file ran 1.19x the float one's speed (1.41x with ReLUs instead).

XNNPACK runs an int8 sigmoid as a 256-entry table and an int8 multiply in one
pass each. So every ``silu(x)`` is written as ``x * sigmoid(x)`` before
annotation; when ``x`` is int8, the sigmoid gets the fixed output range of
XNNPACK's classic int8 sigmoid (scale 1/256, zero point -128: codes 0 to 255/256)
and the product an observed int8 range. The converted graph (the eager model)
computes the same: the table is the sigmoid of each input code, rounded to the
fixed range, and the product is rounded to the multiply's range. EfficientNet-B0
baseline at 64 px, batch 1: int8 file 1.17x -> 1.70x the float file's speed,
deployed AUC 0.9870 -> 0.9863 (float 0.9876).

A squeeze-and-excitation gate (``features * sigmoid(pooled)``) keeps the stock
annotation: its gate is quantized with an observed range where the product
reads it, and the partition configs let XNNPACK run that sigmoid in int8 too.
Given the fixed range instead, BNext's gates lost 0.0014 AUC and the file agreed
with the eager model on 99.4 % of decisions. A sigmoid whose input stays float
(its producer kept float by a rule) is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
from executorch.backends.xnnpack.partition.config.generic_node_configs import SigmoidConfig
from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
from torch import fx
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

__all__ = ["SIGMOID_RANGE", "annotate_sigmoids", "partitioner_configs", "split_silu"]

_SILU = {torch.ops.aten.silu.default, torch.ops.aten.silu_.default}
_SIGMOID = {torch.ops.aten.sigmoid.default, torch.ops.aten.sigmoid_.default}
_MUL = {torch.ops.aten.mul.Tensor, torch.ops.aten.mul_.Tensor}

#: XNNPACK's int8 sigmoid writes codes of scale 1/256 and zero point -128 (0 to 255/256).
SIGMOID_RANGE = (1.0 / 256.0, -128)


def split_silu(graph: fx.GraphModule) -> int:
    """Write every ``silu(x)`` as ``x * sigmoid(x)``; the count.

    The same values up to float rounding; the two ops can each be annotated.
    """
    done = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in _SILU:
            continue
        x = node.args[0]
        if not isinstance(x, fx.Node) or node.kwargs:
            continue
        with graph.graph.inserting_after(node):
            gate = graph.graph.call_function(torch.ops.aten.sigmoid.default, (x,))
        with graph.graph.inserting_after(gate):
            product = graph.graph.call_function(torch.ops.aten.mul.Tensor, (x, gate))
        for new in (gate, product):
            new.meta.update({k: v for k, v in node.meta.items() if k != Q_ANNOTATION_KEY})
        node.replace_all_uses_with(product)
        graph.graph.erase_node(node)
        done += 1
    if done:
        graph.recompile()
    return done


def _int8_output(node: object) -> bool:
    """Whether ``node``'s output is annotated with an int8 range."""
    if not isinstance(node, fx.Node):
        return False
    annotation = node.meta.get(Q_ANNOTATION_KEY)
    spec = None if annotation is None else annotation.output_qspec
    return spec is not None and getattr(spec, "dtype", torch.int8) in (torch.int8, torch.uint8)


def _call(node: fx.Node, targets: set[Any]) -> bool:
    return node.op == "call_function" and node.target in targets


def annotate_sigmoids(
    graph: fx.GraphModule,
    output: QuantizationSpecBase,
    keep: Callable[[fx.Node], bool] | None = None,
) -> tuple[int, int]:
    """Annotate the sigmoid and the product of each SiLU ``x * sigmoid(x)`` of an int8 ``x``.

    Runs after the stock annotation, which decides which tensors are int8.

    Args:
        graph: The graph being annotated (SiLUs already split).
        output: The activation spec of the products' outputs.
        keep: Nodes for which it returns False are left alone (layers kept float).

    Returns:
        ``(sigmoids, products)`` annotated.
    """
    scale, zero_point = SIGMOID_RANGE
    fixed = FixedQParamsQuantizationSpec(
        dtype=torch.int8,
        scale=scale,
        zero_point=zero_point,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
    )
    gates = products = 0
    for node in list(graph.graph.nodes):
        if not _call(node, _SIGMOID) or node.meta.get(Q_ANNOTATION_KEY) is not None:
            continue
        x = node.args[0]
        if not isinstance(x, fx.Node) or not _int8_output(x):
            continue
        if keep is not None and not keep(node):
            continue
        # SiLUs only: a squeeze-and-excitation gate (a sigmoid of a few pooled values)
        # is cheap in float, and the fixed range on its gates cost BNext 0.0014 AUC.
        silu = [
            m
            for m in node.users
            if _call(m, _MUL) and not m.kwargs and len(m.args) == 2 and set(m.args) == {x, node}
        ]
        if not silu:
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={x: SharedQuantizationSpec(x)}, output_qspec=fixed, _annotated=True
        )
        gates += 1
        for mul in silu:
            if keep is not None and not keep(mul):
                continue
            # replaces the stock annotation, which would observe the gate a second time
            mul.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map={x: SharedQuantizationSpec(x), node: SharedQuantizationSpec(node)},
                output_qspec=output,
                _annotated=True,
            )
            products += 1
    return gates, products


class _Int8Sigmoid(SigmoidConfig):  # type: ignore[misc]
    """ExecuTorch's sigmoid partition config, taking int8 sigmoids too (XNNPACK runs them).

    ExecuTorch 1.5.1 lists sigmoid as float only; its XNNPACK runtime builds the
    int8 table from the tensors' ranges, and the files agree with the converted
    graph (``tests/deploy/test_xnnpack_sigmoid.py``).
    """

    def supported_precision_types(self) -> list[ConfigPrecisionType]:
        return [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]


def partitioner_configs() -> list[Any]:
    """ExecuTorch's XNNPACK partition configs, with int8 sigmoids delegated."""
    return [_Int8Sigmoid if c is SigmoidConfig else c for c in ALL_PARTITIONER_CONFIGS]
