"""Scale-out on Ray: evaluations, sensitivity scans and sweeps as independent tasks.

Pass ``executor="ray"`` or a :class:`RayExecutor` to :func:`dfcompress.compare`,
:func:`dfcompress.prune` (``sensitivity=True``), :class:`dfcompress.Pruner` or
:func:`dfcompress.prune.scan`. Ray is imported only when an executor is used
(``pip install 'dfcompress[distributed]'``). See :doc:`/scaleout`.
"""

from __future__ import annotations

from dfcompress.distributed.executor import Executor as Executor
from dfcompress.distributed.executor import RayExecutor as RayExecutor
from dfcompress.distributed.executor import resolve_executor as resolve_executor
from dfcompress.distributed.shards import DatasetShards as DatasetShards

__all__ = ["DatasetShards", "Executor", "RayExecutor", "resolve_executor"]
