"""Lowering to an ExecuTorch ``.pte`` with the XNNPACK partitioner, and running one.

The program is exported with a dynamic batch dimension up to ``max_batch``;
ExecuTorch plans memory for the largest batch, so the runner splits bigger
batches into chunks of the largest one the file accepts.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower
from executorch.runtime import Runtime
from torch import nn

from dfcompress.deploy._xnnpack_sigmoid import partitioner_configs
from dfcompress.errors import DfcompressError

__all__ = ["export_program", "lower", "runner", "thread_pool"]

_PLUMBING = {"executorch_call_delegate", "getitem", "sym_size"}


def _trace_input(example: torch.Tensor) -> torch.Tensor:
    # Two samples: a batch of one would be specialised to a static size.
    x = example[:2].detach().to(torch.float32)
    return x if x.shape[0] == 2 else torch.cat([x, x])


def export_program(
    module: nn.Module, example: torch.Tensor, max_batch: int, *, training: bool = False
) -> Any:
    """``torch.export`` of ``module`` with a dynamic batch dimension of 1..``max_batch``.

    ``max_batch=1`` exports a static batch of one sample. The forward is traced with
    gradients off (what inference runs: a model's ``torch.is_grad_enabled()`` branch
    for training is left out) unless ``training``.
    """
    try:
        with torch.set_grad_enabled(training):
            if max_batch == 1:
                x = example[:1].detach().to(torch.float32)
                return torch.export.export(module, (x,))
            batch = torch.export.Dim("batch", min=1, max=max_batch)
            return torch.export.export(
                module, (_trace_input(example),), dynamic_shapes=({0: batch},)
            )
    except Exception as e:  # torch.export names the construct it cannot trace
        raise DfcompressError(
            f"torch.export cannot trace {type(module).__name__} for the 'xnnpack' target "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); make the "
            "forward traceable (no data-dependent Python control flow) or export to another target"
        ) from e


def _op_name(node: Any) -> str:
    name = str(getattr(node.target, "__name__", node.target))  # "aten.view_copy.default"
    return name.removeprefix("aten.").removesuffix(".default")


def lower(program: Any) -> tuple[bytes, dict[str, Any]]:
    """The ``.pte`` bytes of an exported program, and counts of what XNNPACK took."""
    edge = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner(configs=partitioner_configs())]
    )
    graph = edge.exported_program().graph_module.graph
    delegates = 0
    delegated = 0
    left: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith("lowered_module"):
            lowered = getattr(edge.exported_program().graph_module, str(node.target))
            inner = lowered.original_module.graph_module.graph
            delegates += 1
            delegated += sum(1 for n in inner.nodes if n.op == "call_function")
        elif node.op == "call_function":
            name = _op_name(node)
            if not any(p in str(node.target) for p in _PLUMBING):
                left[name] = left.get(name, 0) + 1
    details: dict[str, Any] = {
        "delegates": delegates,
        "delegated_ops": delegated,
        "non_delegated_ops": sum(left.values()),
        "non_delegated": dict(sorted(left.items())),
    }
    return bytes(edge.to_executorch().buffer), details


def runner(path: Path) -> tuple[Any, int]:
    """A function running the ``.pte`` at ``path`` on a batch, and its largest batch."""
    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as e:
        raise DfcompressError(f"ExecuTorch cannot load {str(path)!r}: {e}") from e
    sizes = list(method.metadata.input_tensor_meta(0).sizes())
    largest = int(sizes[0]) if sizes else 1

    def run(batch: torch.Tensor) -> torch.Tensor:
        if not isinstance(batch, torch.Tensor) or batch.dim() != len(sizes):
            raise DfcompressError(
                f"batch must be a tensor of {len(sizes)} dimensions like {tuple(sizes)}, "
                f"got {getattr(batch, 'shape', type(batch).__name__)}"
            )
        x = batch.detach().to(torch.float32).contiguous()
        outs = [
            method.execute([x[i : i + largest].contiguous()])[0]
            for i in range(0, int(x.shape[0]), largest)
        ]
        return torch.cat(outs) if len(outs) > 1 else outs[0].clone()

    return run, largest


@contextmanager
def thread_pool(threads: int) -> Iterator[None]:
    """ExecuTorch's thread pool, on which XNNPACK runs the files, at ``threads`` for the block.

    The pool is one per process and starts with a thread per core: a ``.pte`` file
    timed beside an ONNX Runtime session of one thread would otherwise run on all
    cores. The size the pool had is restored afterwards. The runtime's Python
    bindings resize it with a private function; where an ExecuTorch release lacks
    it, the pool is left as it is and a warning says so.
    """
    from executorch.extension.pybindings import portable_lib

    get = getattr(portable_lib, "_threadpool_get_thread_count", None)
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if get is None or reset is None:
        warnings.warn(
            "this ExecuTorch cannot resize its thread pool from Python: .pte files run "
            f"on its default pool, not on {threads} thread(s)",
            RuntimeWarning,
            stacklevel=3,
        )
        yield
        return
    before = int(get())
    if before != threads:
        reset(threads)
    try:
        yield
    finally:
        if int(get()) != before:
            reset(before)
