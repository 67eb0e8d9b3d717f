"""Calibration and training data, read once and checked before a verb uses them.

Refused with a :class:`~dfcompress.errors.DfcompressError`: objects that are not
data (a string, a dict, a number, a module), no samples, NaN or Inf values,
scalar, bool or complex batches, batches of different sample shapes or dtypes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from dfcompress._data import batch_input
from dfcompress._validate import short
from dfcompress.errors import DfcompressError

__all__ = ["calibration_inputs", "check_batch", "checked_inputs", "training_batches"]


def check_batch(x: torch.Tensor, i: int, first: torch.Tensor | None, name: str) -> None:
    """Refuse input batch ``i``: a scalar, bool/complex, NaN/Inf, or unlike batch ``first``."""
    where = f"{name}: batch {i}"
    if x.dim() == 0:
        raise DfcompressError(f"{where} is a scalar {short(x)}: yield batches of shape (N, ...)")
    if x.dtype == torch.bool or x.is_complex():
        raise DfcompressError(
            f"{where} has dtype {str(x.dtype).removeprefix('torch.')}: model inputs must be "
            "real numbers (floating point, or integers such as uint8 images)"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DfcompressError(
            f"{where} {short(x)} holds NaN or Inf: calibration data must be finite"
        )
    if first is not None and x.dtype != first.dtype:
        raise DfcompressError(
            f"{where} has dtype {str(x.dtype).removeprefix('torch.')} but batch 0 has "
            f"{str(first.dtype).removeprefix('torch.')}: give batches of one dtype"
        )
    if first is not None and x.shape[1:] != first.shape[1:]:
        raise DfcompressError(
            f"{where} has samples of shape {tuple(x.shape[1:])} but batch 0 has "
            f"{tuple(first.shape[1:])}: give batches of one sample shape"
        )


def _refuse_kind(data: Any, name: str) -> None:
    if isinstance(data, (str, bytes, Mapping, nn.Module)) or not isinstance(data, Iterable):
        raise DfcompressError(
            f"{name}={short(data)} is not calibration data: pass a tensor (N, ...) or an "
            "iterable of batches (tensors, (input, label) tuples or dicts)"
        )


class _CheckedInputs:
    """A re-iterable loader whose input batches are checked as they are read."""

    def __init__(self, data: Iterable[Any], name: str) -> None:
        self.data = data
        self.name = name

    def __iter__(self) -> Iterator[torch.Tensor]:
        first: torch.Tensor | None = None
        seen = 0
        for i, batch in enumerate(self.data):
            x = batch_input(batch)
            check_batch(x, i, first, self.name)
            first = x if first is None else first
            seen += int(x.shape[0])
            yield x
        if not seen:
            raise DfcompressError(
                f"{self.name}={short(self.data)} yielded no samples: pass at least one batch"
            )


def checked_inputs(data: Any, *, name: str = "calibration") -> Iterable[torch.Tensor] | None:
    """All input batches of ``data``, checked like :func:`calibration_inputs`, read lazily.

    A re-iterable loader is checked batch by batch as it is read (nothing is
    held in memory); a tensor or a one-shot iterator (a generator) is read once
    into a list so it can be iterated again.
    """
    if data is None:
        return None
    if isinstance(data, (torch.Tensor, Iterator)):
        return calibration_inputs(data, limit=sys.maxsize, name=name)
    _refuse_kind(data, name)
    return _CheckedInputs(data, name)


def training_batches(data: Any, *, epochs: float, name: str = "data") -> Iterable[Any]:
    """``data`` checked for training: batches in a re-iterable, non-empty container.

    A tensor is taken as one batch. A one-shot iterator is refused when more
    than one pass is asked for; a list or tuple has every input batch checked
    now (a loader's batches are checked by the training loop as they come).
    """
    if isinstance(data, torch.Tensor):
        data = [data]
    _refuse_kind(data, name)
    if isinstance(data, Iterator) and epochs > 1:
        raise DfcompressError(
            f"{name}={short(data)} is a one-shot iterator but epochs={epochs!r} needs "
            f"{math.ceil(epochs)} passes: pass a list of batches or a DataLoader"
        )
    if isinstance(data, (list, tuple)):
        first: torch.Tensor | None = None
        for i, batch in enumerate(data):
            x = batch_input(batch)
            check_batch(x, i, first, name)
            first = x if first is None else first
        if first is None or not sum(batch_input(b).shape[0] for b in data):
            raise DfcompressError(f"{name}={short(data)} is empty: pass at least one batch")
    checked: Iterable[Any] = data
    return checked


def calibration_inputs(
    data: Any, *, limit: int, name: str = "calibration"
) -> list[torch.Tensor] | None:
    """The first ``limit`` input samples of ``data``, read once and checked.

    ``data`` is a tensor, or an iterable (list, loader, generator) of tensors,
    ``(input, label, ...)`` tuples or dicts. Reading it once lets a generator
    serve several steps. Refused: an object that is neither, no samples,
    NaN/Inf, batches of different sample shapes or dtypes.

    Returns:
        None for None, else a list of input batches holding at most ``limit`` samples.

    >>> [x.shape[0] for x in calibration_inputs(iter([torch.zeros(4, 2)] * 3), limit=6)]
    [4, 2]
    >>> calibration_inputs([], limit=8)
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: calibration=[] yielded no samples: pass at least one batch
    """
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        batches: Iterable[Any] = [data]
    else:
        _refuse_kind(data, name)
        batches = data
    out: list[torch.Tensor] = []
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if seen >= limit:
                break
            x = batch_input(batch)
            if x.dim():
                x = x[: limit - seen]  # only what is used is checked (and kept)
            check_batch(x, i, out[0] if out else None, name)
            if x.shape[0]:
                out.append(x)
                seen += int(x.shape[0])
    except DfcompressError:
        raise
    except Exception as e:  # a user's loader failing mid-iteration
        raise DfcompressError(
            f"reading {name}={short(data)} failed with {type(e).__name__}: {e}"
        ) from e
    if not seen:
        raise DfcompressError(f"{name}={short(data)} yielded no samples: pass at least one batch")
    return out
