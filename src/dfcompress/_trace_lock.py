"""One process-wide lock for code that traces or probes a model.

Tracing patches global state (``torch.fx`` wraps functions while it traces) or
attaches hooks to the model for the length of one forward; holding this lock
keeps two traces in different threads from seeing each other's patches or
hooks.
"""

from __future__ import annotations

import threading

__all__ = ["TRACE_LOCK"]

TRACE_LOCK = threading.RLock()
