"""Data that workers open themselves: a dataset named by its factory, cut into whole batches.

Evaluation data at FF++/DFDC scale is too large to send from the driver. A
:class:`DatasetShards` *describes* it instead: ``factory(**kwargs)`` builds a
map-style dataset (``len`` and ``dataset[i]``) in every process that needs it,
and batch ``b`` is samples ``b * batch_size`` to ``(b + 1) * batch_size - 1``
collated with ``torch.utils.data.default_collate``. Iterating it locally yields
the same batches, so a local and a distributed evaluation see the same batch
composition, and the same scores.

A list of files is a factory argument: ``DatasetShards("mylab.data:frames",
{"paths": [...]})``. The built-in proxy task is :meth:`DatasetShards.proxy`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dfcompress.errors import DfcompressError

__all__ = ["DatasetShards"]


@functools.lru_cache(maxsize=2)
def _open(factory: str, kwargs_json: str) -> Any:
    from dfcompress._imports import import_attr

    fn = import_attr(factory, "the dataset factory")
    if not callable(fn):
        raise DfcompressError(f"the dataset factory {factory!r} is not callable")
    ds = fn(**json.loads(kwargs_json))
    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise DfcompressError(
            f"the dataset factory {factory!r} returned a {type(ds).__name__}: it must return "
            "a map-style dataset (len(ds) and ds[i])"
        )
    return ds


@dataclass(frozen=True)
class DatasetShards:
    """A map-style dataset named by ``"package.module:factory"`` and JSON kwargs, in batches.

    Args:
        factory: Imported by name in each process (``"package.module:function"``).
        kwargs: JSON values passed to the factory.
        batch_size: Samples per batch (the last batch may be smaller).

    Each sample is what ``default_collate`` can stack into ``(image, label)``,
    ``(image, label, name)`` or a dict (``image``/``label``/``name``).

    >>> data = DatasetShards.proxy("test", size=32, n=10, batch_size=4)
    >>> data.num_batches, [len(b[1]) for b in data]
    (3, [4, 4, 2])
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or ":" not in self.factory:
            raise DfcompressError(
                f"factory={self.factory!r} is invalid: use 'package.module:function'"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise DfcompressError(f"batch_size={self.batch_size!r} is invalid: use an integer")
        if self.batch_size < 1:
            raise DfcompressError(f"batch_size={self.batch_size} is invalid: use 1 or more")
        try:
            json.dumps(dict(self.kwargs), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise DfcompressError(
                f"kwargs={dict(self.kwargs)!r} is invalid: use JSON values only ({e})"
            ) from e
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @classmethod
    def proxy(
        cls,
        split: str = "test",
        *,
        size: int = 64,
        n: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
    ) -> DatasetShards:
        """The built-in proxy task (:func:`dfcompress.data.make_proxy`), rebuilt from its seed."""
        kwargs: dict[str, Any] = {"split": split, "size": size, "n": n, "seed": seed}
        return cls("dfcompress.data.proxy:make_proxy", kwargs, batch_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a worker (see :meth:`from_dict`)."""
        return {"factory": self.factory, "kwargs": dict(self.kwargs), "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetShards:
        """The shards described by :meth:`to_dict`."""
        return cls(str(d["factory"]), dict(d["kwargs"]), int(d["batch_size"]))

    def open(self) -> Any:
        """The dataset (built once per process for the same description)."""
        return _open(self.factory, json.dumps(dict(self.kwargs), sort_keys=True))

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.open())

    @property
    def num_batches(self) -> int:
        """Number of batches."""
        return math.ceil(len(self) / self.batch_size)

    def batch(self, b: int) -> Any:
        """Batch ``b``, collated."""
        from torch.utils.data import default_collate

        n = len(self)
        lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
        if not 0 <= lo < n:
            raise DfcompressError(f"batch {b} is out of range: the data has {self.num_batches}")
        ds = self.open()
        return default_collate([ds[i] for i in range(lo, hi)])

    def samples(self, index: list[int]) -> Any:
        """The samples at ``index``, collated."""
        from torch.utils.data import default_collate

        ds = self.open()
        return default_collate([ds[i] for i in index])

    def __iter__(self) -> Iterator[Any]:
        for b in range(self.num_batches):
            yield self.batch(b)
