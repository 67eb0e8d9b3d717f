"""Record a model's dataflow by running it once on a probe input.

A :class:`~torch.overrides.TorchFunctionMode` sees every torch function,
tensor method and operator the forward calls at the top level (the ops inside
``F.conv2d`` and friends are not seen, only the call). Each tensor an op
returns becomes a :class:`Node` naming the op, the nodes its tensor arguments
came from, its shape and its scalar arguments. A conv or linear op also names
the module that owns its weight, so a pattern over the graph maps back to
``named_modules()`` names. A module whose output no recorded op produced (a
custom autograd function, a C extension) becomes one opaque ``"module"`` node,
fed by its inputs, so the chain of producers is not broken there.

Running the model is what makes this robust: Python control flow, data-dependent
branches and untraceable code all run as they would. The run must not change
the model: it happens in eval mode under ``torch.no_grad()``, every module's
training flag is restored, the hooks are removed, and a parameter or buffer
that the forward writes in place is restored from a copy taken just before the
write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["CONV_OPS", "WEIGHT_OPS", "Graph", "Node", "record"]

#: Ops that apply a weight: their first input is the data, ``layer`` names the weight's owner.
CONV_OPS = frozenset({"conv1d", "conv2d", "conv3d", "linear"})
#: Nodes holding the model's own tensors rather than data computed from the input.
WEIGHT_OPS = frozenset({"param", "buffer"})

# Operators and aliases, so patterns need one name per operation.
_ALIASES = {
    "multiply": "mul",
    "rmul": "mul",
    "imul": "mul",
    "truediv": "div",
    "itruediv": "div",
    "true_divide": "div",
    "divide": "div",
    "radd": "add",
    "iadd": "add",
    "isub": "sub",
    "subtract": "sub",
    "rsub": "rsub",
    "getitem": "getitem",
    "expit": "sigmoid",
    "clip": "clamp",
}


@dataclass(frozen=True)
class Node:
    """One tensor of the recorded forward and the op that produced it.

    Attributes:
        op: normalised op name (``"mul"`` for ``*``, ``mul_`` and ``torch.mul``), or
            ``"input"``, ``"param"``, ``"buffer"`` for sources, ``"opaque"`` for a
            tensor no recorded op produced (it came from code the recorder
            cannot see into, such as a TorchScript module), or
            ``"module"`` for an opaque module call.
        inputs: the nodes of the op's tensor arguments, in argument order.
        shape: the tensor's shape.
        scalars: the op's plain number arguments (``3.0`` in ``x + 3``).
        dims: the ``dim`` argument of a reduction, when given.
        layer: for conv/linear ops the module owning the weight; for params and
            opaque modules the module's name; else None.
        unit_range: for opaque modules, whether every output value lies in [0, 1].
    """

    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    scalars: tuple[float, ...] = ()
    dims: tuple[int, ...] | None = None
    layer: str | None = None
    unit_range: bool = False


@dataclass
class Graph:
    """The recorded nodes, in execution order (a node's inputs come before it)."""

    nodes: list[Node]
    modules: dict[str, nn.Module]


def _op_name(func: Any) -> str:
    name = str(getattr(func, "__name__", "") or "")
    if name == "__get__":  # a tensor property such as .data or .T
        name = str(getattr(getattr(func, "__self__", None), "__name__", "get"))
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    elif name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return _ALIASES.get(name, name)


def _flat(x: Any) -> Iterator[Any]:
    if isinstance(x, (list, tuple)):
        for item in x:
            yield from _flat(item)
    else:
        yield x


def _dims(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    if op not in ("mean", "sum", "amax", "max"):
        return None
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if isinstance(dim, int) and not isinstance(dim, bool):
        return (dim,)
    if isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim):
        return tuple(dim)
    return None


def _in_place(func: Any, kwargs: dict[str, Any]) -> bool:
    name = str(getattr(func, "__name__", ""))
    dunder = name.startswith("__") and name.endswith("__")
    return (
        (name.endswith("_") and not dunder)
        or (dunder and name[2:3] == "i" and name not in ("__index__", "__int__", "__invert__"))
        or name == "__setitem__"
        or kwargs.get("inplace") is True
        or "out" in kwargs
    )


def _has_storage(t: Tensor) -> bool:
    return t.layout == torch.strided and t.device.type != "meta"


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self._of: dict[int, tuple[Tensor, int]] = {}  # id(tensor) -> (tensor kept alive, node)
        self._thread = threading.get_ident()
        self._owner: dict[int, tuple[str, str]] = {}
        for mname, mod in model.named_modules():
            for p in mod.parameters(recurse=False):
                self._owner.setdefault(id(p), ("param", mname))
            for b in mod.buffers(recurse=False):
                self._owner.setdefault(id(b), ("buffer", mname))
        self._state = {
            t.untyped_storage().data_ptr(): t
            for t in [*model.parameters(), *model.buffers()]
            if _has_storage(t)
        }
        self.saved: dict[int, tuple[Tensor, Tensor]] = {}
        self._quiet = False  # set while the recorder itself computes

    def add(self, t: Tensor, node: Node) -> int:
        self.nodes.append(node)
        self._of[id(t)] = (t, len(self.nodes) - 1)
        return len(self.nodes) - 1

    def node_of(self, t: Tensor) -> int:
        known = self._of.get(id(t))
        if known is not None and known[0] is t:
            return known[1]
        kind, owner = self._owner.get(id(t), ("opaque", None))
        return self.add(t, Node(kind, (), tuple(t.shape), layer=owner))

    def _protect(self, t: Any) -> None:
        if not isinstance(t, Tensor) or not _has_storage(t):
            return
        ptr = t.untyped_storage().data_ptr()
        state = self._state.get(ptr)
        if state is not None and ptr not in self.saved:
            self.saved[ptr] = (state, state.detach().clone())

    def _weight_owner(self, node: int, depth: int = 4) -> str | None:
        n = self.nodes[node]
        if n.op == "param":
            return n.layer
        if depth == 0:
            return None
        for i in n.inputs:
            owner = self._weight_owner(i, depth - 1)
            if owner is not None:
                return owner
        return None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._quiet or threading.get_ident() != self._thread:
            return func(*args, **kwargs)
        if _in_place(func, kwargs):
            self._protect(kwargs.get("out", args[0] if args else None))
        op = _op_name(func)
        if op in ("batch_norm", "instance_norm") and (
            kwargs.get("training") or (len(args) > 5 and args[5] is True)
        ):
            for stat in (*args[1:3], kwargs.get("running_mean"), kwargs.get("running_var")):
                self._protect(stat)
        out = func(*args, **kwargs)
        flat = [*_flat(args), *_flat(list(kwargs.values()))]
        tensors = [a for a in flat if isinstance(a, Tensor)]
        if not tensors and not isinstance(out, Tensor):
            return out
        inputs = tuple(self.node_of(t) for t in tensors)
        scalars = tuple(
            float(a) for a in flat if isinstance(a, (int, float)) and not isinstance(a, bool)
        )
        layer = None
        if op in CONV_OPS and len(inputs) > 1:
            layer = self._weight_owner(inputs[1])
        dims = _dims(op, args, kwargs)
        outs = [out] if isinstance(out, Tensor) else list(_flat(out))
        for k, o in enumerate(outs):
            if isinstance(o, Tensor):
                name = op if len(outs) == 1 else f"{op}[{k}]"
                self.add(o, Node(name, inputs, tuple(o.shape), scalars, dims, layer))
        return out

    def module_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, args: Any, output: Any) -> None:
            if threading.get_ident() != self._thread or not isinstance(output, Tensor):
                return
            known = self._of.get(id(output))
            if known is not None and known[0] is output:
                return
            inputs = tuple(self.node_of(t) for t in _flat(args) if isinstance(t, Tensor))
            self._quiet = True
            try:
                unit = bool(output.numel()) and bool(
                    (output.min() >= 0).item() and (output.max() <= 1).item()
                )
            finally:
                self._quiet = False
            self.add(
                output, Node("module", inputs, tuple(output.shape), layer=name, unit_range=unit)
            )

        return hook


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def record(model: nn.Module, example: Tensor) -> Graph:
    """Run ``model(example)`` once and return its dataflow graph.

    The model is left as it was: modes, hooks, parameters and buffers.
    Exceptions from the forward propagate.
    """
    rec = _Recorder(model)
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, mod in modules.items():
            if not isinstance(mod, torch.jit.ScriptModule):  # they take no hooks
                handles.append(mod.register_forward_hook(rec.module_hook(name)))
        rec.add(example, Node("input", (), tuple(example.shape)))
        with _eval_mode(model), torch.no_grad(), rec:
            model(example)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for state, copy in rec.saved.values():
                state.copy_(copy)
    return Graph(rec.nodes, modules)
