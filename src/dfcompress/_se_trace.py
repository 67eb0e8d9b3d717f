"""Find squeeze-and-excitation branches by their dataflow, whatever the classes are called.

The model runs once on a probe input (:mod:`dfcompress._dataflow`) and the
recorded graph is searched, backwards from every multiplication, for

    global average pool -> [reshape] -> conv/linear "reduce" -> activation(s)
    -> conv/linear "expand" -> [affine] -> squashing gate -> [reshape] -> multiply

where the other factor of the multiplication is the pooled tensor itself or
close kin of it (an ancestor or a descendant within a few ops) and does not
depend on the branch's layers (``x * sigmoid(x)`` after a pooled conv is a
SiLU, not a gate). The pool is
``adaptive_avg_pool*`` to size 1, ``avg_pool*`` over the whole map, or a
``mean`` over all spatial dims; the activation slot takes any ops (ReLU, SiLU,
PReLU, BatchNorm, ``x * sigmoid(x)``, an opaque module) or none, and with no
"reduce" layer at all the branch is a one-layer gate (ECA, EffectiveSE); the
gate is sigmoid, hard-sigmoid, ``relu6(x + 3) / 6``, a clamp to both bounds, or
an opaque module whose output lies in [0, 1].
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dfcompress._dataflow import CONV_OPS, WEIGHT_OPS, Graph, Node, record
from dfcompress._fx import TRACE_LOCK

__all__ = ["SEBranch", "SelectionWarning", "find_branches", "probe_shapes", "trace_branches"]


class SelectionWarning(UserWarning):
    """A selector matched nothing where it was expected to, or fell back to a weaker method."""


@dataclass(frozen=True)
class SEBranch:
    """One squeeze-and-excitation branch found in a model's forward.

    Attributes:
        layers: the names of its conv/linear layers in forward order: the
            reducing and the expanding layer, or the one layer of an ECA-style gate.
        gate: the squashing op (``"sigmoid"``, ``"hardsigmoid"``, ``"relu6"``, ...).
    """

    layers: tuple[str, ...]
    gate: str


_SHAPE_OPS = frozenset(
    {
        "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose",
        "permute", "expand", "expand_as", "view_as", "reshape_as", "contiguous", "pad",
        "getitem", "to", "type", "type_as", "float", "half", "bfloat16", "clone", "detach",
        "data", "repeat",
    }
)  # fmt: skip
_FIRST_ONLY = frozenset({"expand_as", "view_as", "reshape_as", "type_as"})
_AFFINE = frozenset({"add", "sub", "rsub", "mul", "div"})
_SQUASH = frozenset({"sigmoid", "hardsigmoid", "relu6"})
_BOUNDED = frozenset({"hardtanh", "clamp"})  # a squash when both bounds are given
_POOLS = frozenset(
    {
        "mean", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "avg_pool1d", "avg_pool2d", "avg_pool3d",
    }
)  # fmt: skip
_WALK_LIMIT = 16
_KIN_LIMIT = 48


def _data(g: Graph, i: int) -> list[int]:
    n = g.nodes[i]
    if n.op in CONV_OPS or n.op in _FIRST_ONLY:
        return list(n.inputs[:1])
    return [j for j in n.inputs if g.nodes[j].op not in WEIGHT_OPS]


def _is_squash(n: Node) -> bool:
    if n.op in _SQUASH or (n.op == "module" and n.unit_range):
        return True
    return n.op in _BOUNDED and len(n.scalars) >= 2


def _walk(
    g: Graph, start: int, stop: Callable[[Node], bool], allowed: Callable[[Node], bool]
) -> set[int] | None:
    """The stop nodes reached backwards from ``start`` through allowed ops, or None."""
    frontier: set[int] = set()
    seen: set[int] = set()
    stack = [start]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        n = g.nodes[i]
        if stop(n):
            frontier.add(i)
            continue
        inputs = _data(g, i)
        if not allowed(n) or not inputs or len(seen) > _WALK_LIMIT:
            return None
        stack.extend(inputs)
    return frontier


def _one(found: set[int] | None) -> int | None:
    return next(iter(found)) if found is not None and len(found) == 1 else None


def _gate(g: Graph, start: int) -> tuple[int, str] | None:
    """``(expand layer node, gate op)`` if ``start`` is a squashed conv/linear output."""
    i = start
    for _ in range(_WALK_LIMIT):
        n = g.nodes[i]
        inputs = _data(g, i)
        if _is_squash(n) and len(inputs) == 1:
            conv = _one(
                _walk(
                    g,
                    inputs[0],
                    stop=lambda m: m.op in CONV_OPS,
                    allowed=lambda m: m.op not in _POOLS and m.op != "input",
                )
            )
            return None if conv is None else (conv, n.op if n.op != "module" else "module")
        if len(inputs) != 1 or not (n.op in _SHAPE_OPS or n.op in _AFFINE):
            return None
        i = inputs[0]
    return None


def _global_pool(g: Graph, i: int) -> int | None:
    """The pooled tensor's node if node ``i`` averages it over all spatial positions."""
    first = i
    while True:
        n = g.nodes[first]
        if n.op not in _POOLS or not _data(g, first):
            return None
        src = _data(g, first)[0]
        if g.nodes[src].op not in _POOLS:
            break
        first = src
    shape_in, shape_out = g.nodes[src].shape, g.nodes[i].shape
    if len(shape_in) < 3 or tuple(shape_out[:2]) != tuple(shape_in[:2]):
        return None
    if any(d != 1 for d in shape_out[2:]):
        return None
    for j in (i, first):
        dims = g.nodes[j].dims
        if g.nodes[j].op == "mean" and (
            dims is None or any(d % len(g.nodes[_data(g, j)[0]].shape) < 2 for d in dims)
        ):
            return None
    return src


def _ancestors(g: Graph, i: int) -> set[int]:
    """``i`` and its nearest ancestors (breadth first, at most ``_KIN_LIMIT``)."""
    out: set[int] = set()
    queue = deque([i])
    while queue and len(out) < _KIN_LIMIT:
        j = queue.popleft()
        if j not in out:
            out.add(j)
            queue.extend(_data(g, j))
    return out


def _branch(g: Graph, mul: int, gate_in: int, other: int) -> SEBranch | None:
    found = _gate(g, gate_in)
    if found is None:
        return None
    expand, gate_op = found
    before = _one(
        _walk(
            g,
            _data(g, expand)[0],
            stop=lambda m: m.op in CONV_OPS or m.op in _POOLS,
            allowed=lambda m: m.op != "input",
        )
    )
    if before is None:
        return None
    layers = [expand]
    pool = before
    if g.nodes[before].op in CONV_OPS:
        layers.insert(0, before)
        pool_at = _one(
            _walk(
                g,
                _data(g, before)[0],
                stop=lambda m: m.op in _POOLS,
                allowed=lambda m: m.op in _SHAPE_OPS,
            )
        )
        if pool_at is None:
            return None
        pool = pool_at
    pooled = _global_pool(g, pool)
    if pooled is None or tuple(g.nodes[mul].shape) != tuple(g.nodes[other].shape):
        return None
    kin = _ancestors(g, other)
    if any(k in kin for k in layers):  # x * sigmoid(x) after a pooled conv is a SiLU, not a gate
        return None
    if other != pooled and pooled not in kin and other not in _ancestors(g, pooled):
        return None
    names = tuple(n for n in (g.nodes[k].layer for k in layers) if n is not None)
    return SEBranch(names, gate_op)


def find_branches(g: Graph) -> list[SEBranch]:
    """Every squeeze-and-excitation branch of a recorded graph, in forward order."""
    out: dict[tuple[str, ...], SEBranch] = {}
    for i, n in enumerate(g.nodes):
        if n.op != "mul":
            continue
        inputs = _data(g, i)
        if len(inputs) != 2:
            continue
        for gate_in, other in ((inputs[0], inputs[1]), (inputs[1], inputs[0])):
            branch = _branch(g, i, gate_in, other)
            if branch is not None and branch.layers:
                out.setdefault(branch.layers, branch)
                break
    return list(out.values())


def probe_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes to try on ``model``, guessed from its first conv or linear layer.

    A ``Conv2d`` with ``C`` input channels gives ``(2, C, 64, 64)``, then
    ``(1, C, 224, 224)`` and ``(1, C, 256, 256)`` for models with a fixed input
    size; a ``Conv3d`` ``(2, C, 8, 64, 64)`` then
    ``(1, C, 16, 224, 224)``; a ``Conv1d`` ``(2, C, 256)``; a ``Linear``
    ``(2, in_features)``.

    >>> probe_shapes(nn.Sequential(nn.Conv2d(4, 8, 3)))
    [(2, 4, 64, 64), (1, 4, 224, 224), (1, 4, 256, 256)]
    """
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            return [(2, m.in_channels, 256)]
        if isinstance(m, nn.Conv2d):
            c = m.in_channels
            return [(2, c, 64, 64), (1, c, 224, 224), (1, c, 256, 256)]
        if isinstance(m, nn.Conv3d):
            c = m.in_channels
            return [(2, c, 8, 64, 64), (1, c, 16, 224, 224)]
        if isinstance(m, nn.Linear):
            return [(2, m.in_features)]
    return []


def _probe(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return x if ref is None else x.to(ref.device, ref.dtype)


Example = Tensor | tuple[int, ...] | None
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[object, list[SEBranch] | str]] = (
    weakref.WeakKeyDictionary()
)


def _key(model: nn.Module, example: Example) -> object:
    ex = (tuple(example.shape), example.dtype) if isinstance(example, Tensor) else example
    return (ex, tuple((n, type(m), id(m)) for n, m in model.named_modules()))


def trace_branches(model: nn.Module, example: Example = None) -> list[SEBranch] | str:
    """The SE branches of ``model``, or a sentence saying why its forward could not be run.

    ``example`` is an input tensor or an input shape; without one the shapes of
    :func:`probe_shapes` are tried in turn. Results are cached per model until
    its modules change.
    """
    with TRACE_LOCK:
        key = _key(model, example)
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        if isinstance(example, Tensor):
            tries: list[Tensor | tuple[int, ...]] = [example]
        else:
            tries = [tuple(example)] if example is not None else list(probe_shapes(model))
        result: list[SEBranch] | str = "it has no conv or linear layer to guess an input from"
        errors = []
        for t in tries:
            x = t if isinstance(t, Tensor) else _probe(model, t)
            try:
                graph = record(model, x)
            except Exception as e:  # any failure of the user's forward means: try the next shape
                errors.append(f"input {list(x.shape)}: {type(e).__name__}: {e}".strip())
                continue
            result = find_branches(graph)
            break
        else:
            if errors:
                result = "its forward failed on " + "; ".join(errors)
        _CACHE[model] = (key, result)
        return result
