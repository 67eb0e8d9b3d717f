"""Convolution (+ BatchNorm) + ReLU6/Hardtanh annotated as one int8 op for XNNPACK.

ExecuTorch's ``XNNPACKQuantizer`` fuses a convolution with a following ReLU
(one int8 output range, starting at 0), but a ReLU6 or any other Hardtanh only
shares the range observed at its convolution's output, negatives included.
After ImageNet MobileNetV2's 35 ReLU6s that leaves a sixth to two thirds of the
255 codes unused (a third at the median), and costs more top-1 agreement with
the float model than any other single choice (``docs/deploy.rst``).

XNNPACK itself fuses ``conv -> hardtanh`` into the convolution's output clamp
(its ``FuseActivationPass``) when nothing stands between them. So the pair is
annotated here the way the stock quantizer annotates ``conv -> relu``: the
convolution's inputs are quantized, the Hardtanh's output is, and nothing in
between. The ``.pte`` then runs one int8 convolution with a clamped output and
an output range observed after the clamp, which the converted graph (the eager
model) computes too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import fx
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpecBase,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

__all__ = ["annotate_conv_clamp"]

_CONVS = {
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv1d.padding,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv2d.padding,
}
# nn.ReLU6 exports as hardtanh, F.relu6 as relu6 (hardtanh once lowered to edge ops).
_CLAMPS = {
    torch.ops.aten.hardtanh.default,
    torch.ops.aten.hardtanh_.default,
    torch.ops.aten.relu6.default,
    torch.ops.aten.relu6_.default,
}
# BatchNorm stands between the two in the graph prepared for QAT (folded for PTQ).
_NORMS = {torch.ops.aten.batch_norm.default}


def _call(node: object, targets: Collection[object]) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _annotated(node: fx.Node) -> bool:
    annotation = node.meta.get(Q_ANNOTATION_KEY)
    return annotation is not None and bool(annotation._annotated)


def _conv_before(clamp: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The convolution feeding ``clamp`` alone (through one BatchNorm at most)."""
    between: list[fx.Node] = []
    node = clamp.args[0]
    if _call(node, _NORMS):
        assert isinstance(node, fx.Node)
        if len(node.users) != 1:
            return None
        between.append(node)
        node = node.args[0]
    if not _call(node, _CONVS):
        return None
    assert isinstance(node, fx.Node)
    if len(node.users) != 1:
        return None
    return node, between


def _spec(spec: QuantizationSpecBase | None, what: str) -> QuantizationSpecBase:
    if spec is None:
        raise AssertionError(f"the int8 config has no {what} spec")
    return spec


def annotate_conv_clamp(
    graph: fx.GraphModule,
    config: QuantizationConfig,
    keep: Callable[[fx.Node], bool] | None = None,
) -> int:
    """Annotate every ``conv [-> batch_norm] -> hardtanh`` chain as one fused int8 op.

    Args:
        graph: The exported graph, before the stock annotation (which then skips
            the nodes annotated here).
        config: The int8 config (its input, weight, bias and output specs).
        keep: Nodes for which it returns False are left alone (layers kept float).

    Returns:
        How many chains were annotated.
    """
    done = 0
    for clamp in list(graph.graph.nodes):
        if not _call(clamp, _CLAMPS):
            continue
        found = _conv_before(clamp)
        if found is None:
            continue
        conv, between = found
        x, weight = conv.args[0], conv.args[1]
        bias = conv.args[2] if len(conv.args) > 2 else None
        if not isinstance(x, fx.Node) or not isinstance(weight, fx.Node):
            continue
        params = [weight] + ([bias] if isinstance(bias, fx.Node) else [])
        chain = [conv, clamp, *between, *params]
        if any(_annotated(n) for n in chain):
            continue
        if keep is not None and not all(keep(n) for n in chain):
            continue
        inputs: dict[fx.Node, QuantizationSpecBase] = {
            x: _spec(config.input_activation, "input"),
            weight: _spec(config.weight, "weight"),
        }
        if isinstance(bias, fx.Node) and config.bias is not None:
            inputs[bias] = config.bias
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map=inputs, _annotated=True
        )
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            output_qspec=_spec(config.output_activation, "output"), _annotated=True
        )
        for node in [*between, *params]:
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
        done += 1
    return done
