"""Squeeze-and-excitation layers: the registry of SE classes and the traced branches.

:func:`register_se` marks a class whose every conv/linear layer the ``"se"``
selector takes, whatever its forward does; :func:`find_se` lists the branches
found by structure (:mod:`dfcompress._se_trace`).
"""

from __future__ import annotations

import warnings
from typing import TypeVar

from torch import nn

from dfcompress._se_trace import Example, SEBranch, SelectionWarning, trace_branches
from dfcompress.errors import DfcompressError

__all__ = ["find_se", "is_se_module", "register_se", "se_layer_names"]

# Fully qualified class names of known squeeze-and-excitation blocks, so that
# timm / torchvision need not be imported to recognise them.
_SE_CLASS_NAMES: set[str] = {
    "timm.layers.squeeze_excite.SEModule",
    "timm.layers.squeeze_excite.EffectiveSEModule",
    "timm.layers.squeeze_excite.SqueezeExcite",
    "timm.models._efficientnet_blocks.SqueezeExcite",
    "timm.models.layers.squeeze_excite.SEModule",
    "timm.models.layers.squeeze_excite.EffectiveSEModule",
    "timm.models.efficientnet_blocks.SqueezeExcite",
    "torchvision.ops.misc.SqueezeExcitation",
}
_SE_CLASSES: set[type[nn.Module]] = set()

_T = TypeVar("_T", bound=type[nn.Module])


def register_se(cls: _T) -> _T:
    """Class decorator: mark a squeeze-and-excitation block for the ``"se"`` preset.

    Every conv and linear layer inside an instance is then selected by
    ``"se"``, whatever its forward does; use it for gates the structural
    search does not recognise.

    >>> from torch import nn
    >>> from dfcompress.select import preset
    >>> @register_se
    ... class MySE(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.reduce, self.expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
    ...     def forward(self, x):
    ...         return x * self.expand(self.reduce(x)).tanh()
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), MySE())
    >>> list(preset("se").resolve(net))
    ['1.reduce', '1.expand']
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DfcompressError(f"register_se expects an nn.Module subclass, got {cls!r}")
    _SE_CLASSES.add(cls)
    return cls


def is_se_module(module: nn.Module) -> bool:
    """Whether ``module`` is a known squeeze-and-excitation block."""
    cls = type(module)
    if cls in _SE_CLASSES:
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in _SE_CLASS_NAMES for c in cls.__mro__)


def se_layer_names(model: nn.Module, example: Example = None) -> set[str]:
    """Names of the submodules of registered SE classes and of the traced SE branches' layers.

    When the forward cannot run, a :class:`SelectionWarning` says why and only
    the registered classes count.
    """
    out: set[str] = set()
    for n, m in model.named_modules():
        if n and is_se_module(m):
            out.update(f"{n}.{cn}" for cn, _ in m.named_modules() if cn)
    found = trace_branches(model, example)
    if isinstance(found, str):
        warnings.warn(
            f"preset('se') could not trace {type(model).__name__}: {found}. Only classes "
            "registered with register_se count; give an input with preset('se', example=x)",
            SelectionWarning,
            stacklevel=3,
        )
        return out
    for branch in found:
        out.update(branch.layers)
    return out


def find_se(model: nn.Module, *, example: Example = None) -> list[SEBranch]:
    """The squeeze-and-excitation branches found in ``model``'s forward, in forward order.

    Args:
        model: The model; it is run once on a probe input and left as it was.
        example: An input tensor or input shape; guessed from the first conv or
            linear layer when omitted.

    Raises:
        DfcompressError: when the forward fails on every probe input (the
            message says why).

    >>> class Block(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)
    ...     def forward(self, x):
    ...         w = self.fc2(self.fc1(x.mean((2, 3))).relu()).sigmoid()
    ...         return x * w[:, :, None, None]
    >>> find_se(nn.Sequential(nn.Conv2d(3, 8, 1), Block()))
    [SEBranch(layers=('1.fc1', '1.fc2'), gate='sigmoid')]
    """
    found = trace_branches(model, example)
    if isinstance(found, str):
        raise DfcompressError(f"cannot trace {type(model).__name__}: {found}")
    return found
