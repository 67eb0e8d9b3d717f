"""Train/eval flags restored module by module.

``model.train(was_training)`` on the top module would overwrite every
submodule's own flag: a BatchNorm a user froze in eval mode inside a model in
train mode would come back in train mode. The helpers here remember and
restore each module's flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode", "restore_modes", "training_flags"]


def training_flags(model: nn.Module) -> dict[nn.Module, bool]:
    """Each module's ``training`` flag."""
    return {m: m.training for m in model.modules()}


def restore_modes(flags: dict[nn.Module, bool]) -> None:
    """Set each module's ``training`` flag back to its own value.

    Modules are visited parents first, so a child's flag is set after its
    parent's recursive ``train()``; a module's own ``train()`` override still runs.
    """
    for m, was in flags.items():
        if m.training != was:
            m.train(was)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; every module's flag is restored afterwards.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    >>> net[1].eval() and None
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training, net[1].training
    (True, False)
    """
    flags = training_flags(model)
    model.eval()
    try:
        yield model
    finally:
        restore_modes(flags)
