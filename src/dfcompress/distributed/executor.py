"""Where long work runs: the local loop (``executor=None``) or a Ray cluster.

A run is cut into independent *units* (a variant on a data shard, a group of
layers at an amount). Each unit is one Ray task whose arguments and result are
plain data: bytes, numpy arrays, lists and dicts of JSON values. Models travel
as dfcompress files (the safe format), never as pickled modules.

Results are keyed by unit and assembled in the units' order, so the outcome
does not depend on which worker finished first or on how many there are. A
task whose worker process dies (killed, out of memory, node lost) is run again
by Ray, up to ``max_retries`` times; an exception raised by the task itself
(bad data, a model that fails) is not retried and fails the run with a
:class:`~dfcompress.DfcompressError` naming the unit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Union

from dfcompress.errors import DfcompressError, require

__all__ = ["Executor", "RayExecutor", "resolve_executor"]


@dataclass(frozen=True)
class RayExecutor:
    """Run units of work as Ray tasks.

    Args:
        address: The cluster to connect to (``"ray://head:10001"``,
            ``"head:6379"``, ``"auto"``); ``None`` uses ``RAY_ADDRESS`` when
            set, else starts a local Ray on this machine. Ray lets a set
            ``RAY_ADDRESS`` win over this. Ignored when this process is
            already connected to Ray (``ray.init`` was called).
        num_workers: Units in flight at once (default: as many as the
            cluster's CPUs allow at ``resources["CPU"]`` per task).
        resources: What one task needs: ``"CPU"`` (default 1; also the torch
            threads of the task), ``"GPU"``, and any custom resource of the
            cluster (``{"CPU": 4, "big_memory": 1}``).
        max_retries: Times a task is run again after its worker process died.

    >>> RayExecutor(num_workers=4, resources={"CPU": 2}).threads
    2
    """

    address: str | None = None
    num_workers: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.num_workers is not None and (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 1
        ):
            raise DfcompressError(
                f"num_workers={self.num_workers!r} is invalid: use an integer >= 1 or None"
            )
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise DfcompressError(f"max_retries={self.max_retries!r} is invalid: use 0 or more")
        res = dict(self.resources)
        for key, value in res.items():
            if not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
                raise DfcompressError(
                    f"resources[{key!r}]={value!r} is invalid: use a finite number >= 0"
                )
        if res.get("CPU", 1) <= 0:
            raise DfcompressError(f"resources['CPU']={res['CPU']!r} is invalid: use > 0")
        object.__setattr__(self, "resources", MappingProxyType(res))

    @property
    def threads(self) -> int:
        """Torch threads of one task: its CPUs, at least one."""
        return max(1, int(self.resources.get("CPU", 1)))

    def task_options(self) -> dict[str, Any]:
        """The options of every task (``num_cpus``, ``num_gpus``, custom resources, retries)."""
        res = dict(self.resources)
        opts: dict[str, Any] = {
            "num_cpus": res.pop("CPU", 1),
            "max_retries": self.max_retries,
            "retry_exceptions": False,  # only system failures (a dead worker) are retried
        }
        if "GPU" in res:
            opts["num_gpus"] = res.pop("GPU")
        if res:
            opts["resources"] = res
        return opts


Executor = Union[Literal["ray"], RayExecutor, None]  # noqa: UP007 - runtime alias
"""``None`` (the local loop), ``"ray"`` (``RayExecutor()``) or a :class:`RayExecutor`."""


def resolve_executor(executor: Executor) -> RayExecutor | None:
    """The :class:`RayExecutor` behind an ``executor=`` argument, or None for the local loop.

    >>> resolve_executor(None) is None, resolve_executor("ray") == RayExecutor()
    (True, True)
    """
    if executor is None or isinstance(executor, RayExecutor):
        return executor
    if executor == "ray":
        return RayExecutor()
    raise DfcompressError(
        f"executor={executor!r} is not known: use None (local), 'ray' or a RayExecutor(...)"
    )


def ray_module() -> Any:
    """Import ray, or fail naming the ``distributed`` extra."""
    return require("ray", "distributed")


def connect(ex: RayExecutor) -> Any:
    """Connect to (or start) Ray as ``ex`` says; return the ``ray`` module.

    A local Ray started here stays up for the process's later calls
    (``ray.shutdown()`` stops it).
    """
    ray = ray_module()
    if not ray.is_initialized():
        address = ex.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            ray.init(include_dashboard=False, logging_level="warning")
        else:
            ray.init(address=address, logging_level="warning")
    return ray


def workers(ray: Any, ex: RayExecutor) -> int:
    """Units to keep in flight: ``num_workers``, else what the cluster's CPUs allow."""
    if ex.num_workers is not None:
        return ex.num_workers
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_task = float(ex.task_options()["num_cpus"])
    return max(1, int(cpus // per_task) if per_task > 0 else 1)


def run_units(
    ray: Any,
    ex: RayExecutor,
    fn: Callable[..., Any],
    units: Sequence[tuple[Any, ...]],
    describe: Callable[[int], str],
    *,
    bar: Any = None,
) -> list[Any]:
    """Run ``fn(*unit)`` for every unit on Ray; the results in the units' order.

    At most :func:`workers` units are in flight; ``bar.update(1)`` follows each
    completed unit. A unit that raises fails the run with a DfcompressError
    naming it (``describe(i)``); the units still pending are cancelled.
    """
    remote = ray.remote(fn).options(**ex.task_options())
    limit = workers(ray, ex)
    results: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    todo = iter(range(len(units)))

    def submit() -> None:
        for i in todo:
            pending[remote.remote(*units[i])] = i
            if len(pending) >= limit:
                return

    submit()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None) or e
                    raise DfcompressError(f"{describe(i)} failed: {cause}") from e
                except ray.exceptions.RayError as e:
                    raise DfcompressError(f"{describe(i)} could not be run on Ray: {e}") from e
                if bar is not None:
                    bar.update(1)
            submit()
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(units))]
