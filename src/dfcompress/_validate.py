"""Checks the public verbs run on their arguments before any work starts.

Every check raises :class:`~dfcompress.errors.DfcompressError` naming the
argument, a short repr of the value given and what is allowed.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from dfcompress._data import batch_input
from dfcompress.errors import DfcompressError

__all__ = [
    "calibration_inputs",
    "check_batch",
    "check_bool",
    "check_callable",
    "check_file_path",
    "check_int",
    "check_model",
    "check_number",
    "check_shape",
    "check_tensor",
    "checked_inputs",
    "has_layers",
    "short",
    "tied_layers",
    "training_batches",
]

_MAX_REPR = 60


def short(value: Any) -> str:
    """A repr of ``value`` short enough for an error message.

    >>> short(torch.zeros(2, 3))
    'tensor(shape=(2, 3), dtype=float32)'
    >>> short("x" * 100)[-5:]
    "x...'"
    """
    if isinstance(value, torch.Tensor):
        return (
            f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).removeprefix('torch.')})"
        )
    if isinstance(value, nn.Module):
        return f"<{type(value).__name__} module>"
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 4] + "..." + text[-1]
    return text


def check_model(model: Any, name: str = "model") -> nn.Module:
    """``model`` as an ``nn.Module`` whose tensors are all materialised (not on ``meta``).

    >>> check_model(nn.Linear(2, 2)).out_features
    2
    >>> check_model("net")
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: model='net' is not a torch.nn.Module: pass the model itself
    """
    if not isinstance(model, nn.Module):
        raise DfcompressError(
            f"{name}={short(model)} is not a torch.nn.Module: pass the model itself"
        )
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise DfcompressError(
                f"{name} holds {pname!r} on the meta device (no values): load its weights "
                "first, e.g. model.to_empty(device='cpu') and load_state_dict(...)"
            )
    return model


def has_layers(model: nn.Module, name: str = "model", *, what: str = "compress") -> None:
    """Refuse a model with no conv or linear layer holding parameters: nothing to ``what``."""
    from dfcompress.select import CONV_TYPES, LINEAR_TYPES

    if not any(
        isinstance(m, CONV_TYPES + LINEAR_TYPES) and any(True for _ in m.parameters())
        for m in model.modules()
    ):
        raise DfcompressError(
            f"{name}={short(model)} has no conv or linear layer with weights: there is nothing "
            f"to {what} (give a model with nn.Conv1d/2d/3d or nn.Linear layers)"
        )


def tied_layers(model: nn.Module) -> list[tuple[str, str]]:
    """Pairs of conv/linear layers (or a layer and another module) sharing a parameter.

    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    >>> net[1].weight = net[0].weight
    >>> tied_layers(net)
    [('0', '1')]
    """
    from dfcompress.select import CONV_TYPES, LINEAR_TYPES

    owner: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    layers = {n for n, m in model.named_modules() if isinstance(m, CONV_TYPES + LINEAR_TYPES)}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            first = owner.setdefault(id(p), name)
            if first != name and (first in layers or name in layers):
                pairs.append((first, name))
    return pairs


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise DfcompressError(f"{name}={short(value)} is not a bool: use True or False")
    return value


def check_int(value: Any, name: str, *, low: int, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``.

    >>> check_int(0, "steps", low=1)
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: steps=0 is out of range: use an integer >= 1
    """
    allowed = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise DfcompressError(f"{name}={short(value)} is not an integer: use {allowed}")
    if value < low or (high is not None and value > high):
        raise DfcompressError(f"{name}={value!r} is out of range: use {allowed}")
    return value


def check_number(
    value: Any, name: str, *, low: float | None = None, positive: bool = False
) -> float:
    """``value`` as a finite float, ``> 0`` if ``positive``, ``>= low`` if given."""
    allowed = "a positive number" if positive else "a finite number"
    if low is not None:
        allowed = f"a number >= {low}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DfcompressError(f"{name}={short(value)} is not a number: use {allowed}")
    v = float(value)
    bad = not math.isfinite(v) or (positive and v <= 0) or (low is not None and v < low)
    if bad:
        raise DfcompressError(f"{name}={value!r} is out of range: use {allowed}")
    return v


_MAX_SAMPLE_ELEMENTS = 1 << 26


def check_shape(value: Any, name: str) -> tuple[int, ...]:
    """``value`` as one sample's shape: positive ints, at most 2**26 elements.

    >>> check_shape([3, 32, 32], "input_shape")
    (3, 32, 32)
    """
    allowed = "a tuple of positive ints such as (3, 224, 224)"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise DfcompressError(f"{name}={short(value)} is not a shape: use {allowed}")
    dims = tuple(value)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise DfcompressError(f"{name}={short(value)} is not a valid shape: use {allowed}")
    if math.prod(dims) > _MAX_SAMPLE_ELEMENTS:
        raise DfcompressError(
            f"{name}={short(value)} has {math.prod(dims)} elements per sample: use at most "
            f"{_MAX_SAMPLE_ELEMENTS}"
        )
    return dims


def check_callable(value: Any, name: str, signature: str) -> None:
    """Refuse a non-callable ``value`` (None is allowed: the option is off)."""
    if value is not None and not callable(value):
        raise DfcompressError(f"{name}={short(value)} is not callable: pass a function {signature}")


def check_tensor(value: Any, name: str, *, finite: bool = True) -> torch.Tensor:
    """``value`` if it is a non-empty tensor with a batch dimension (and finite values)."""
    if not isinstance(value, torch.Tensor):
        raise DfcompressError(f"{name}={short(value)} is not a tensor: pass an input batch")
    if value.dim() == 0 or value.shape[0] == 0 or value.numel() == 0:
        raise DfcompressError(
            f"{name}={short(value)} is empty: pass a batch of at least one sample (N, ...)"
        )
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise DfcompressError(f"{name}={short(value)} holds NaN or Inf: pass finite values")
    return value


def check_file_path(value: Any, name: str) -> str:
    """``value`` as a path that is not an existing directory (the file is written there)."""
    if not isinstance(value, (str, os.PathLike)):
        raise DfcompressError(f"{name}={short(value)} is not a path: pass a file name")
    path = os.fspath(value)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path or os.path.isdir(path):
        raise DfcompressError(f"{name}={short(value)} is a directory: pass a file name")
    return path


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
