"""Helpers to read model inputs out of whatever a user's loader yields."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from dfcompress.errors import DfcompressError

__all__ = ["batch_input", "iter_inputs"]

_INPUT_KEYS = ("image", "images", "input", "inputs", "x", "pixel_values", "video", "frames")


def batch_input(batch: Any) -> torch.Tensor:
    """The model input of one batch: a tensor, the first item of a tuple/list, or a dict entry.

    >>> batch_input((torch.zeros(2, 3), torch.ones(2))).shape
    torch.Size([2, 3])
    >>> batch_input({"image": torch.zeros(1, 3, 4, 4), "label": 1}).shape
    torch.Size([1, 3, 4, 4])
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for k in _INPUT_KEYS:
            v = batch.get(k)
            if isinstance(v, torch.Tensor):
                return v
    raise DfcompressError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: yield a "
        f"tensor, an (input, label) tuple, or a dict with one of the keys {', '.join(_INPUT_KEYS)}"
    )


def iter_inputs(
    data: Iterable[Any] | torch.Tensor, *, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield input batches from a loader (or one tensor), at most ``limit`` samples in all."""
    if isinstance(data, torch.Tensor):
        data = [data]
    seen = 0
    for batch in data:
        x = batch_input(batch)
        if limit is not None:
            if seen >= limit:
                return
            x = x[: limit - seen]
        seen += x.shape[0]
        yield x
