"""Re-run only the part of a network downstream of a changed layer.

The sensitivity scan changes one layer at a time and needs the network's
output each time. Everything computed before the layer's first use is the same
as in the unpruned model, so it is computed once and kept; only the nodes from
the layer on are re-run.

The model is traced with ``torch.fx``. A submodule whose Python code cannot be
traced (control flow on tensor values or shapes) is kept whole as one opaque
node and traced around, so most of the graph stays fine-grained even when a
front end or one block type is not traceable. The trace is checked against an
eager forward on the calibration batch (bit-for-bit). Values are freed as soon
as no later node needs them, so the memory held is that of one ordinary
forward plus one partial re-run.

When tracing fails, or a scanned layer sits inside an opaque submodule, the
passes are eager forwards in which every block that finished before the
layer's first call returns its recorded output instead of computing it
(blocks: the children of sequential containers and the top two levels of the
module tree, called once per forward). Only glue code outside those blocks
is re-run upstream of the layer.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from dfcompress._fx import ThreadSafeTracer, trace

__all__ = ["SuffixRunner", "trace_opaque"]

_MAX_RETRIES = 500
_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.setitem}


class _Tracer(ThreadSafeTracer):
    """A tracer treating the modules in ``opaque`` as leaves and naming a failing module."""

    def __init__(self, opaque: set[nn.Module]) -> None:
        super().__init__()
        self.opaque = opaque
        self.failed: nn.Module | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m in self.opaque or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module running when tracing broke
                self.failed = m
            raise


def trace_opaque(model: nn.Module) -> fx.Graph | None:
    """Trace ``model``, making untraceable submodules opaque; ``None`` if the root itself fails.

    >>> from torch import nn
    >>> g = trace_opaque(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> [n.op for n in g.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
    """
    opaque: set[nn.Module] = set()
    for _ in range(_MAX_RETRIES):
        tracer = _Tracer(opaque)
        try:
            return trace(tracer, model)
        except Exception:
            bad = tracer.failed
            if bad is None or bad is model or bad in opaque:
                return None
            opaque.add(bad)
    return None


def _is_mutating(node: fx.Node, model: nn.Module) -> bool:
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        t = str(node.target)
        return t.endswith("_") and not t.endswith("__")
    if node.op == "call_function":
        if node.target in _INPLACE_OPS:
            return True
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(str(node.target)), "inplace", False))
    return False


def _fetch(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class SuffixRunner:
    """Forward passes over one batch that recompute only what a changed layer affects.

    Use: ``reference()`` once, then for each layer from :meth:`walk` (in graph
    order) change the layer's weights and call the function it yields; restore
    the weights before advancing to the next layer.

    Attributes:
        traced: Whether the fx graph is used (else every pass is a full forward).
        calls: Forward passes run (full or partial).
        cost: The same in full-forward equivalents (share of graph nodes run).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.calls, self.cost = 0, 0.0
        for m in model.modules():  # in-place activations would overwrite cached values
            if isinstance(getattr(m, "inplace", None), bool):
                m.inplace = False  # type: ignore[assignment]
        graph = trace_opaque(model)
        self.nodes: list[fx.Node] = list(graph.nodes) if graph is not None else []
        self.traced = graph is not None and self._matches_eager()

    def _matches_eager(self) -> bool:
        try:
            eager = self.model(self.x)
            traced = self._run(0, {})
        except Exception:
            return False
        self.calls += 1
        self.cost += 1.0
        self._checked = traced  # the reference output, once the trace is known to be exact
        return _same(eager, traced)

    def _index(self) -> tuple[dict[fx.Node, int], dict[fx.Node, int]]:
        pos = {n: i for i, n in enumerate(self.nodes)}
        last = {n: max((pos[u] for u in n.users), default=pos[n]) for n in self.nodes}
        return pos, last

    def _exec(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        def value(n: fx.Node) -> Any:
            return env[n]

        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        op = node.op
        if op == "get_attr":
            return _fetch(self.model, str(node.target))
        if op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if op == "call_module":
            return self.model.get_submodule(str(node.target))(*args, **kwargs)
        return args[0]  # output

    def _run(self, start: int, cached: dict[fx.Node, Any]) -> Any:
        """Run nodes ``start..`` reading earlier values from ``cached`` (never written)."""
        env: dict[fx.Node, Any] = dict(cached)
        if self._last is None:
            self._last = self._index()[1]
        last = self._last
        out: Any = None
        for i, node in enumerate(self.nodes[start:], start):
            out = env[node] = self._value(node, env)
            # drop what no later node reads, as eager execution would: holding every
            # intermediate keeps the allocator from reusing memory and slows the pass
            for a in node.all_input_nodes:
                if last[a] <= i:
                    env.pop(a, None)
        return out

    def _value(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        if node.op != "placeholder":
            return self._exec(node, env)
        if node is self.nodes[0]:
            return self.x
        return node.args[0] if node.args else None  # a default argument

    def reference(self) -> Any:
        """The output of the unchanged model (one full pass)."""
        if self.traced and self._checked is not None:
            self._reference_cache = self._checked
            return self._reference_cache
        self.calls += 1
        self.cost += 1.0
        self._reference_cache = self._run(0, {}) if self.traced else self.model(self.x)
        return self._reference_cache

    def walk(self, names: list[str]) -> Iterator[tuple[str, Callable[[], Any]]]:
        """Yield ``(layer, run)`` in graph order; ``run()`` is the output with the layer as is."""
        start = {name: self._first_use(name) for name in names} if self.traced else {}
        if not self.traced or any(self._inside_opaque(n, start[n]) for n in names):
            yield from self._memo_walk(names)
            return
        pos, last = self._index()
        unsafe = self._unsafe_starts(pos)
        env: dict[fx.Node, Any] = {}
        done = 0
        for name in sorted(names, key=lambda n: (start[n] is None, start[n] or 0)):
            p = start[name]
            if p is None:  # not used by the forward: the output cannot change
                yield name, self._unchanged
                continue
            self.cost += (p - done) / len(self.nodes)  # the clean pass, spread over the walk
            while done < p:
                node = self.nodes[done]
                env[node] = self._value(node, env)
                for a in (*node.all_input_nodes, node):  # free values no later node reads
                    if last[a] <= done:
                        env.pop(a, None)
                done += 1
            if p in unsafe:
                yield name, self._full_traced
            else:
                yield name, self._suffix(p, env)

    def _suffix(self, p: int, env: dict[fx.Node, Any]) -> Callable[[], Any]:
        def run() -> Any:
            self.calls += 1
            self.cost += (len(self.nodes) - p) / len(self.nodes)
            return self._run(p, env)

        return run

    def _full(self) -> Any:
        self.calls += 1
        self.cost += 1.0
        return self.model(self.x)

    def _full_traced(self) -> Any:
        self.calls += 1
        self.cost += 1.0
        return self._run(0, {})

    def _unchanged(self) -> Any:
        return self._reference_cache

    def _inside_opaque(self, name: str, p: int | None) -> bool:
        if p is None:
            return False
        node = self.nodes[p]
        return node.op == "call_module" and name.startswith(str(node.target) + ".")

    def _memo_walk(self, names: list[str]) -> Iterator[tuple[str, Callable[[], Any]]]:
        rec = _Recording(self.model)
        with torch.no_grad():
            rec.record(self.x)
        self.calls += 1
        self.cost += 1.0
        for name in sorted(names, key=lambda n: rec.start.get(n, 1 << 60)):
            if name not in rec.start:
                yield name, self._unchanged
                continue
            clean = rec.clean_before(rec.start[name])
            share = 1.0 - rec.leaves_before(rec.start[name]) / max(rec.n_leaves, 1)
            yield name, self._memo_run(clean, rec, share)

    def _memo_run(self, clean: list[str], rec: _Recording, share: float) -> Callable[[], Any]:
        def run() -> Any:
            self.calls += 1
            self.cost += share
            patched = []
            try:
                for c in clean:
                    mod = self.model.get_submodule(c)
                    mod.forward = _Replay(rec.outputs[c])
                    patched.append(mod)
                return self.model(self.x)
            finally:
                for mod in patched:
                    del mod.forward

        return run

    def _first_use(self, name: str) -> int | None:
        for i, node in enumerate(self.nodes):
            if node.op in ("call_module", "get_attr"):
                t = str(node.target)
                if t == name or t.startswith(name + ".") or name.startswith(t + "."):
                    return i
        return None

    def _unsafe_starts(self, pos: dict[fx.Node, int]) -> set[int]:
        """Start points where a later in-place op would modify a cached value."""
        bad: set[int] = set()
        for node in self.nodes:
            if _is_mutating(node, self.model) and node.args and isinstance(node.args[0], fx.Node):
                lo, hi = pos[node.args[0]], pos[node]
                bad.update(range(lo + 1, hi + 1))
        return bad

    _reference_cache: Any = None
    _checked: Any = None
    _last: dict[fx.Node, int] | None = None


class _Replay:
    """A stand-in ``forward`` returning a recorded output (a copy: later code may write to it)."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.out.clone()


class _Recording:
    """One eager forward noting when each module call starts and ends, and block outputs."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        blocks = {n for n in self.names.values() if n and n.count(".") <= 1}
        for n, m in model.named_modules():
            if isinstance(m, (nn.Sequential, nn.ModuleList)):
                blocks |= {f"{n}.{c}" if n else c for c, _ in m.named_children()}
        self.blocks = blocks
        self.start: dict[str, int] = {}
        self.end: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.leaf_ends: list[int] = []
        self.n_leaves = 0

    def record(self, x: torch.Tensor) -> None:
        seq = [0]
        leaves = {m for m in self.names if not list(m.children())}

        def pre(mod: nn.Module, _args: Any) -> None:
            seq[0] += 1
            name = self.names[mod]
            self.start.setdefault(name, seq[0])
            self.count[name] = self.count.get(name, 0) + 1

        def post(mod: nn.Module, _args: Any, out: Any) -> None:
            seq[0] += 1
            name = self.names[mod]
            self.end[name] = seq[0]
            if mod in leaves:
                self.leaf_ends.append(seq[0])
            if name in self.blocks and isinstance(out, torch.Tensor):
                self.outputs[name] = out

        handles = [m.register_forward_pre_hook(pre) for m in self.names if m is not self.model]
        handles += [m.register_forward_hook(post) for m in self.names if m is not self.model]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        self.n_leaves = len(self.leaf_ends)
        for name, k in self.count.items():  # a block called twice has no single output
            if k != 1:
                self.outputs.pop(name, None)

    def clean_before(self, t: int) -> list[str]:
        """The outermost recorded blocks whose call ended before sequence point ``t``."""
        done = {n for n in self.outputs if self.end[n] < t}
        return [n for n in done if not any(n.startswith(o + ".") for o in done)]

    def leaves_before(self, t: int) -> int:
        return sum(1 for e in self.leaf_ends if e < t)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(u, v) for u, v in zip(a, b, strict=False))
    return type(a) is type(b) and not isinstance(a, torch.Tensor)
