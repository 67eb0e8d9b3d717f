"""Bias correction of a PT2E-converted graph: each int8 layer's mean weight error, removed.

For every conv/linear node whose weight is dequantized from int8 codes, the
output error its rounded weights cause, ``layer(x, W_q) - layer(x, W)``, is
averaged per output channel over the calibration data, on the inputs the
converted graph itself gives the layer, and subtracted from the layer's bias.
The bias is still float in the graph; XNNPACK rounds it to int32 as it does any
bias, so the file gets the corrected bias too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from dfcompress.deploy._bias_grid import on_int32_grid

__all__ = [
    "LAYER_OPS",
    "correct_bias",
    "float_weights",
    "mean_errors",
    "shift_biases",
    "snap_biases",
]

LAYER_OPS = (
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
    torch.ops.aten.linear.default,
)


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _replace_attr(gm: fx.GraphModule, target: str, new: torch.Tensor) -> None:
    """Set the tensor a ``get_attr`` node reads (a parameter stays one, trainable or not)."""
    owner, _, leaf = target.rpartition(".")
    parent = _attr(gm, owner) if owner else gm
    old = getattr(parent, leaf)
    if isinstance(old, torch.nn.Parameter):
        new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
    setattr(parent, leaf, new)


def _source_weight(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The float weight a prepared graph's observer (or fake quant) of ``node`` reads."""
    arg = node.args[1] if len(node.args) > 1 else None
    while isinstance(arg, fx.Node) and arg.op == "call_module":
        arg = arg.args[0] if arg.args else None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = _attr(gm, str(arg.target))
        return value.detach().clone() if isinstance(value, torch.Tensor) else None
    return None


def float_weights(prepared: fx.GraphModule) -> dict[str, torch.Tensor]:
    """``{node name: float weight}`` of the prepared graph's observed conv/linear nodes."""
    out: dict[str, torch.Tensor] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in LAYER_OPS:
            arg = node.args[1] if len(node.args) > 1 else None
            if isinstance(arg, fx.Node) and arg.op == "call_module":
                w = _source_weight(prepared, node)
                if w is not None:
                    out[node.name] = w
    return out


class _MeanError(fx.Interpreter):
    """Runs the graph, adding up each corrected layer's per-channel weight error."""

    def __init__(self, gm: fx.GraphModule, weights: dict[str, torch.Tensor]) -> None:
        super().__init__(gm)
        self.weights = weights
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.weights:
            args, _ = self.fetch_args_kwargs_from_env(n)
            x, wq = args[0], args[1]
            delta = wq - self.weights[n.name].to(wq.dtype)
            err = n.target(x, delta, None, *args[3:])  # type: ignore[operator]
            if n.target is torch.ops.aten.linear.default:
                flat = err.reshape(-1, err.shape[-1])
            else:
                flat = err.movedim(1, -1).reshape(-1, err.shape[1])
            self.sums[n.name] = self.sums.get(n.name, 0) + flat.sum(0)
            self.counts[n.name] = self.counts.get(n.name, 0) + flat.shape[0]
        return result


def mean_errors(
    gm: fx.GraphModule, weights: dict[str, torch.Tensor], data: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``{node name: per-channel mean output error}`` of ``gm``'s int8 layers on ``data``.

    ``weights`` are the float weights the layers' codes were rounded from
    (:func:`float_weights` of the prepared graph).
    """
    names = {n.name for n in gm.graph.nodes if n.name in weights}
    if not names:
        return {}
    run = _MeanError(gm, {k: v for k, v in weights.items() if k in names})
    with torch.no_grad():
        for x in data:
            run.run(x)
    return {k: (v / run.counts[k]).to(torch.float32) for k, v in run.sums.items()}


def shift_biases(gm: fx.GraphModule, errors: dict[str, torch.Tensor]) -> int:
    """Subtract ``errors[name]`` from the bias of each conv/linear node ``name``; the count.

    A layer without a bias gets one (a buffer). ``gm`` may be a converted graph or
    the prepared graph it came from (node names are kept by ``convert_pt2e``); a
    trainable bias stays trainable.
    """
    nodes = {n.name: n for n in gm.graph.nodes if n.name in errors}
    done = 0
    for name, node in nodes.items():
        mean = errors[name]
        bias_arg = node.args[2] if len(node.args) > 2 else None
        if isinstance(bias_arg, fx.Node) and bias_arg.op == "get_attr":
            old = _attr(gm, str(bias_arg.target))
            _replace_attr(gm, str(bias_arg.target), (old.detach() - mean.to(old.dtype)).clone())
        elif bias_arg is None:
            attr = f"_dfc_bias_{name}"
            gm.register_buffer(attr, -mean)
            with gm.graph.inserting_before(node):
                got = gm.graph.get_attr(attr)
            args = list(node.args) + [None] * (3 - len(node.args))
            args[2] = got
            node.args = tuple(args)
        else:
            continue
        done += 1
    gm.recompile()
    return done


def correct_bias(
    gm: fx.GraphModule, weights: dict[str, torch.Tensor], data: Iterable[torch.Tensor]
) -> int:
    """Subtract each layer's mean weight error from its bias in ``gm``; returns layers corrected."""
    return shift_biases(gm, mean_errors(gm, weights, data))


def _scale_of(gm: fx.GraphModule, dq: object) -> torch.Tensor | None:
    """The scale a dequantize node of the converted graph reads (tensor or float)."""
    per_tensor = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    per_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default
    if not isinstance(dq, fx.Node) or dq.op != "call_function":
        return None
    if dq.target not in (per_tensor, per_channel):
        return None
    scale = dq.args[1]
    if isinstance(scale, fx.Node) and scale.op == "get_attr":
        scale = _attr(gm, str(scale.target))
    if isinstance(scale, (int, float)):
        return torch.tensor([float(scale)], dtype=torch.float64)
    return scale.detach().reshape(-1) if isinstance(scale, torch.Tensor) else None


def snap_biases(gm: fx.GraphModule) -> int:
    """Put each int8 layer's float bias on the int32 grid XNNPACK adds it on.

    XNNPACK's int8 convolutions and linear layers take the bias as int32 codes of
    step ``s_x * s_w`` (input scale times each channel's weight scale), and
    ExecuTorch's lowering rounds the graph's float bias to them. The graph's bias
    is moved to the nearest code, so the converted graph and the ``.pte`` add the
    same bias. Returns the number of biases moved.
    """
    done = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in LAYER_OPS:
            continue
        bias_arg = node.args[2] if len(node.args) > 2 else None
        s_x, s_w = _scale_of(gm, node.args[0]), _scale_of(gm, node.args[1])
        if not isinstance(bias_arg, fx.Node) or bias_arg.op != "get_attr":
            continue
        if s_x is None or s_w is None or s_x.numel() != 1:
            continue
        old = _attr(gm, str(bias_arg.target))
        if not isinstance(old, torch.Tensor) or s_w.numel() not in (1, old.numel()):
            continue
        # the step as the lowering computes it: the weight scales times the input scale
        _replace_attr(gm, str(bias_arg.target), on_int32_grid(old, s_w * float(s_x)))
        done += 1
    gm.recompile()
    return done
