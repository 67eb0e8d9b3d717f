"""Pools, concats and reshapes rewritten into ops XNNPACK runs, with the same values.

ExecuTorch 1.5.1's XNNPACK partitioner leaves five shapes of graph to the portable
kernels, each one cutting the file into more partitions with float conversions
between them:

- an average pool in ceil mode (BNext's strided shortcut, ``AvgPool2d(2, 2,
  ceil_mode=True, count_include_pad=False)``). Where every pooled side divides,
  ``(side + 2 * padding - kernel) % stride == 0``, ceil mode adds no window and
  the pool is the same in floor mode, which XNNPACK runs;
- an int8 average pool: XNNPACK takes average pools in float only. With no padding
  (or zeros counted) an average pool is a depthwise convolution whose weights are
  all ``1 / (kh * kw)``; written as int8 code 64 with the per-channel scale
  ``1 / (64 * kh * kw)`` (exact for the powers of two of common pools), it reads
  the same codes and writes its output to the same range, and XNNPACK runs it;
- a concat of one tensor (BNext's pointwise stage when the channels stay the same):
  XNNPACK concatenates 2 or more tensors. It is the tensor itself;
- a reshape to a size computed from the dynamic batch (``flatten(x, 1)`` traces as
  ``view(x, [batch, 512])``): XNNPACK reshapes with static sizes and at most one
  inferred ``-1``. Where the batch is the only size not known when exporting,
  ``reshape(x, [-1, 512])`` is the same reshape;
- a global mean that drops its dimensions (``x.mean((2, 3))``): XNNPACK averages
  over height and width with ``keepdim=True`` only. It is that mean, then a
  reshape to ``[-1, channels]``.

And an integer scalar in float arithmetic (``mask * 2 - 1``) is lowered as an int64
constant cast to float on every run, outside XNNPACK; written as a float it is a
float constant (same values: type promotion converts it anyway).
"""

from __future__ import annotations

from typing import Any

import torch
import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers quantized_decomposed)
from torch import fx, nn

__all__ = [
    "drop_single_concats",
    "float_scalars",
    "floor_pools",
    "inferred_reshapes",
    "pools_as_convolutions",
    "unshare_parameters",
]

_aten = torch.ops.aten
#: the quantize/dequantize ops of converted PT2E graphs, shared by the xnnpack rewrites
_QT = torch.ops.quantized_decomposed.quantize_per_tensor.default
_DQ = torch.ops.quantized_decomposed.dequantize_per_tensor.default
_DQC = torch.ops.quantized_decomposed.dequantize_per_channel.default
_POOL = _aten.avg_pool2d.default
#: the int8 code of each weight of a pool written as a convolution
_CODE = 64


def _pool_args(node: fx.Node) -> tuple[list[int], list[int], list[int], bool, bool, object]:
    """``kernel, stride, padding, ceil_mode, count_include_pad, divisor_override``."""
    args = list(node.args[1:]) + [None] * (7 - len(node.args))
    kernel = _pair(args[0])
    stride = _pair(args[1]) if args[1] else kernel
    padding = _pair(args[2]) if args[2] is not None else [0, 0]
    ceil = bool(args[3]) if args[3] is not None else False
    count_pad = bool(args[4]) if args[4] is not None else True
    return kernel, stride, padding, ceil, count_pad, args[5]


def _pair(value: Any) -> list[int]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in (items * 2 if len(items) == 1 else items)]


def _sizes(node: object) -> list[int] | None:
    """``channels, height, width`` of a 4-d tensor node when all three are static."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        return None
    sizes = list(val.shape[1:])
    return [int(s) for s in sizes] if all(isinstance(s, int) for s in sizes) else None


def floor_pools(graph: fx.GraphModule) -> int:
    """Set ``ceil_mode=False`` on average pools where it changes nothing; the count."""
    done = 0
    for node in graph.graph.find_nodes(op="call_function", target=_POOL):
        kernel, stride, padding, ceil, _, _ = _pool_args(node)
        sizes = _sizes(node.args[0])
        if not ceil or sizes is None:
            continue
        spans = zip(sizes[1:], padding, kernel, stride, strict=True)
        if any((n + 2 * p - k) % s for n, p, k, s in spans):
            continue
        args = list(node.args) + [None] * (5 - len(node.args))
        args[2:5] = [stride, padding, False]
        node.args = tuple(args)
        done += 1
    if done:
        graph.recompile()
    return done


def pools_as_convolutions(graph: fx.GraphModule) -> int:
    """Write each int8 floor-mode average pool of a converted graph as a depthwise
    convolution; the count."""
    g = graph.graph
    done = 0
    for node in list(g.find_nodes(op="call_function", target=_POOL)):
        kernel, stride, padding, ceil, count_pad, divisor = _pool_args(node)
        src, sizes = node.args[0], _sizes(node)
        users = list(node.users)
        if ceil or divisor is not None or sizes is None or (any(padding) and not count_pad):
            continue
        if not isinstance(src, fx.Node) or src.target is not _DQ:
            continue
        if len(users) != 1 or users[0].target is not _QT:
            continue
        channels, area = sizes[0], kernel[0] * kernel[1]
        names = [f"_dfc_pool_{what}_{done}" for what in ("weight", "scale", "zero_point")]
        graph.register_buffer(names[0], torch.full((channels, 1, *kernel), _CODE, dtype=torch.int8))
        graph.register_buffer(names[1], torch.full((channels,), 1.0 / (_CODE * area)))
        graph.register_buffer(names[2], torch.zeros(channels, dtype=torch.int32))
        with g.inserting_before(node):
            code, scale, zero = (g.get_attr(n) for n in names)
            weight = g.call_function(_DQC, (code, scale, zero, 0, -127, 127, torch.int8))
            conv = g.call_function(
                _aten.conv2d.default, (src, weight, None, stride, padding, [1, 1], channels)
            )
        conv.meta.update(node.meta)
        node.replace_all_uses_with(conv)
        g.erase_node(node)
        done += 1
    if done:
        graph.recompile()
    return done


def drop_single_concats(graph: fx.GraphModule) -> int:
    """Replace each ``cat([x])`` by ``x``; the count."""
    done = 0
    for node in list(graph.graph.find_nodes(op="call_function", target=_aten.cat.default)):
        tensors = node.args[0]
        if (
            isinstance(tensors, (list, tuple))
            and len(tensors) == 1
            and isinstance(tensors[0], fx.Node)
        ):
            node.replace_all_uses_with(tensors[0])
            graph.graph.erase_node(node)
            done += 1
    if done:
        graph.recompile()
    return done


_RESHAPES = {
    _aten.flatten.using_ints,
    _aten.view.default,
    _aten.reshape.default,
    _aten._unsafe_view.default,
}


def inferred_reshapes(graph: fx.GraphModule) -> int:
    """Write each reshape whose output has one size not known when exporting as
    ``reshape(x, sizes)`` with ``-1`` for that size; the count."""
    done = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in _RESHAPES:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        sizes: list[int] = [s if isinstance(s, int) else -1 for s in val.shape]
        if sizes.count(-1) != 1:
            continue
        if node.target is not _aten.flatten.using_ints and node.args[1] == sizes:
            continue
        node.target = _aten.reshape.default
        node.args = (node.args[0], sizes)
        node.kwargs = {}
        done += 1
    if done:
        graph.graph.eliminate_dead_code()
        graph.recompile()
    return done


_ARITHMETIC = {_aten.add.Tensor, _aten.sub.Tensor, _aten.mul.Tensor, _aten.div.Tensor}


def float_scalars(graph: fx.GraphModule) -> int:
    """Write integer scalars of float32 arithmetic as floats; the count of ops."""
    done = 0
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in _ARITHMETIC or len(node.args) != 2:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
            continue
        args = [
            float(a) if isinstance(a, int) and not isinstance(a, bool) and abs(a) < 2**24 else a
            for a in node.args
        ]
        if any(type(a) is not type(b) for a, b in zip(args, node.args, strict=True)):
            node.args = tuple(args)
            done += 1
    if done:
        graph.recompile()
    return done


def unshare_parameters(graph: fx.GraphModule) -> int:
    """Give each reader of a float parameter or constant read by several ops its own
    copy; the count of copies.

    A module called twice in one forward (shared weights) reads one weight from two
    convolutions. ExecuTorch's quantizer observes that weight for the first of them
    only, so the second ran a float weight on int8 inputs, which XNNPACK refuses
    ("Failed to create convolution node"); and folding a BatchNorm into a shared
    weight would change it for the other reader. Each copy is quantized (and folded)
    for its own reader; the file stores each.
    """
    g = graph.graph
    copies = 0
    for node in list(g.find_nodes(op="get_attr")):
        value = _attr(graph, str(node.target))
        users = list(node.users)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or len(users) < 2:
            continue
        for user in users[1:]:
            name = f"_dfc_unshared_{copies}"
            graph.register_parameter(
                name, nn.Parameter(value.detach().clone(), requires_grad=False)
            )
            with g.inserting_before(user):
                twin = g.get_attr(name)
            twin.meta.update(node.meta)
            user.replace_input_with(node, twin)
            copies += 1
    if copies:
        graph.recompile()
    return copies


def _attr(graph: fx.GraphModule, target: str) -> object:
    value: object = graph
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def keepdim_means(graph: fx.GraphModule) -> int:
    """Write each ``mean(x, (2, 3))`` of a 4-d ``x`` as ``mean(x, (2, 3), keepdim=True)``
    reshaped to ``[-1, channels]``; the count."""
    g = graph.graph
    done = 0
    for node in list(g.find_nodes(op="call_function", target=_aten.mean.dim)):
        src, val = node.args[0], node.meta.get("val")
        sizes = _sizes(src)
        if sizes is None or not isinstance(val, torch.Tensor) or node.kwargs.get("dtype"):
            continue
        dims = node.args[1] if len(node.args) > 1 else None
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim"))
        if keepdim or not isinstance(dims, (list, tuple)) or sorted(d % 4 for d in dims) != [2, 3]:
            continue
        fake = getattr(val, "fake_mode", None)
        with g.inserting_before(node):
            mean = g.call_function(_aten.mean.dim, (src, list(dims), True))
            flat = g.call_function(_aten.reshape.default, (mean, [-1, sizes[0]]))
        if fake is not None:  # the quantizer reads the new nodes' example values
            with fake:
                mean.meta["val"] = torch.ops.aten.mean.dim(src.meta["val"], list(dims), True)
                flat.meta["val"] = mean.meta["val"].reshape(-1, sizes[0])
        for key in ("nn_module_stack", "stack_trace"):
            if key in node.meta:
                mean.meta[key] = flat.meta[key] = node.meta[key]
        node.replace_all_uses_with(flat)
        g.erase_node(node)
        done += 1
    if done:
        graph.recompile()
    return done
