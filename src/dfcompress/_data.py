"""Helpers to read model inputs out of whatever a user's loader yields."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, overload

import torch
from torch import nn

from dfcompress._modes import restore_modes, training_flags
from dfcompress.errors import DfcompressError

__all__ = [
    "batch_input",
    "batch_labels",
    "input_dtype",
    "iter_inputs",
    "model_float_dtype",
    "sample_count",
]

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


@overload
def batch_labels(batch: Any, *, required: Literal[True] = True) -> torch.Tensor: ...
@overload
def batch_labels(batch: Any, *, required: bool) -> torch.Tensor | None: ...
def batch_labels(batch: Any, *, required: bool = True) -> torch.Tensor | None:
    """The labels of one batch: the second item of a tuple/list, or a dict's ``label(s)``.

    Args:
        batch: One batch from a loader.
        required: Raise a :class:`DfcompressError` when the batch has no labels;
            otherwise return None.

    >>> batch_labels((torch.zeros(2, 3), [0, 1])).tolist()
    [0, 1]
    >>> batch_labels({"image": torch.zeros(1, 3), "label": 1}).tolist()
    1
    >>> batch_labels(torch.zeros(2, 3), required=False) is None
    True
    """
    y: Any = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        y = batch[1]
    elif isinstance(batch, Mapping):
        y = batch.get("label", batch.get("labels"))
    if isinstance(y, (torch.Tensor, list, tuple, int, float)):
        try:
            return torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            pass  # not numbers (e.g. names in the second place)
    if required:
        raise DfcompressError(
            f"cannot find labels in a batch of type {type(batch).__name__}: yield "
            "(input, label, ...) tuples or dicts with a 'label' key"
        )
    return None


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


def sample_count(data: Iterable[Any] | torch.Tensor, limit: int | None = None) -> int | None:
    """How many samples :func:`iter_inputs` will yield, or None when that is not known cheaply.

    Known for a tensor, a list or tuple of batches and a loader with a sized
    ``dataset`` (PyTorch's ``DataLoader``); capped at ``limit``.

    >>> sample_count(torch.zeros(10, 3), limit=256), sample_count([torch.zeros(4, 3)] * 3)
    (10, 12)
    >>> sample_count(iter([torch.zeros(4, 3)])) is None
    True
    """
    n: int | None = None
    if isinstance(data, torch.Tensor):
        n = int(data.shape[0])
    elif isinstance(data, (list, tuple)):
        n = sum(int(batch_input(b).shape[0]) for b in data)
    else:
        dataset = getattr(data, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            n = len(dataset)
    if n is not None and limit is not None:
        return min(n, limit)
    return n


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """float16 or bfloat16 if any parameter is held in it, else float32.

    >>> model_float_dtype(nn.Linear(2, 2).half())
    torch.float16
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for d in (torch.float16, torch.bfloat16):
        if d in dtypes:
            return d
    return torch.float32


def input_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype to feed ``model``: float32 unless only its own 16-bit dtype works.

    Mixed models (16-bit layers that cast their input) take float32; a model made
    16-bit throughout by ``.half()`` needs a 16-bit input. One trial forward of
    ``x[:1]`` in eval mode decides; the model's train/eval flags are restored.

    >>> input_dtype(nn.Linear(2, 2).half(), torch.zeros(1, 2))
    torch.float16
    """
    dtype = model_float_dtype(model)
    if dtype == torch.float32:
        return dtype
    flags = training_flags(model)
    model.eval()
    try:
        with torch.inference_mode():
            model(x[:1].float())
        return torch.float32
    except (RuntimeError, TypeError):
        return dtype
    finally:
        restore_modes(flags)
