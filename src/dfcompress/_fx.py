"""torch.fx tracing that is safe next to other threads.

``torch.fx.Tracer.trace`` patches ``nn.Module.__call__`` and
``nn.Module.__getattr__`` process-wide while it runs. Two traces at once undo
each other's patches in the wrong order (leaving every later forward in the
process broken), and a forward in another thread during a trace is routed
into the tracer. Here every trace holds one module-level lock, the tracer hands
other threads' module calls straight to the real forward, and after each trace
the original methods are checked to be back in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import nn

__all__ = ["TRACE_LOCK", "ThreadSafeTracer", "trace"]

TRACE_LOCK = threading.RLock()
"""Held by every torch.fx trace and every dataflow probe (the SE search) dfcompress runs."""

_ORIGINAL_CALL = nn.Module.__call__
_ORIGINAL_GETATTR = nn.Module.__getattr__


class ThreadSafeTracer(fx.Tracer):
    """A tracer that records only its own thread's module calls.

    Other threads' calls arriving through the patched ``nn.Module.__call__`` run
    the real forward and see real attributes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.owner = threading.get_ident()

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if threading.get_ident() != self.owner:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self.owner:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _restore_module_methods() -> None:
    from torch.fx import _symbolic_trace

    if _symbolic_trace.CURRENT_PATCHER is not None:
        return  # a trace outside dfcompress is running: its patches are its own
    if nn.Module.__call__ is not _ORIGINAL_CALL:
        nn.Module.__call__ = _ORIGINAL_CALL  # type: ignore[method-assign]
    if nn.Module.__getattr__ is not _ORIGINAL_GETATTR:
        nn.Module.__getattr__ = _ORIGINAL_GETATTR  # type: ignore[method-assign]


def trace(tracer: ThreadSafeTracer, model: nn.Module) -> fx.Graph:
    """``tracer.trace(model)`` under :data:`TRACE_LOCK`, the module methods restored after.

    >>> g = trace(ThreadSafeTracer(), nn.Sequential(nn.Linear(2, 2)))
    >>> [n.op for n in g.nodes]
    ['placeholder', 'call_module', 'output']
    """
    with TRACE_LOCK:
        tracer.owner = threading.get_ident()
        try:
            return tracer.trace(model)
        finally:
            _restore_module_methods()
