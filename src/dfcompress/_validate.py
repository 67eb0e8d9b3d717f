"""Checks the public verbs run on their arguments before any work starts.

Every check raises :class:`~dfcompress.errors.DfcompressError` naming the
argument, a short repr of the value given and what is allowed. Data sets are
checked in :mod:`dfcompress._calibration`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dfcompress.errors import DfcompressError

__all__ = [
    "check_bool",
    "check_callable",
    "check_file_path",
    "check_int",
    "check_model",
    "check_number",
    "check_shape",
    "check_tensor",
    "has_layers",
    "refused_input",
    "short",
    "tied_layers",
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
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DfcompressError(
            f"{name}={short(value)}: {parent!r} is a file, not a folder: pick another path"
        )
    return path


@contextmanager
def refused_input(name: str, value: Any, model: nn.Module) -> Iterator[None]:
    """Turn the errors torch raises for an input a model cannot take into a DfcompressError.

    >>> with refused_input("example", torch.zeros(1, 3), nn.Linear(2, 2)):
    ...     nn.Linear(2, 2)(torch.zeros(1, 3))
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: example=tensor(shape=(1, 3), dtype=float32) does not ...
    """
    try:
        yield
    except DfcompressError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise DfcompressError(
            f"{name}={short(value)} does not run through {type(model).__name__} "
            f"({type(e).__name__}: {str(e)[:200]}): pass an input the model accepts"
        ) from e
