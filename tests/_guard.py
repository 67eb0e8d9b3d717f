"""Test helpers: the model a user holds, a deep snapshot of it (to prove a verb left it
alone) and a time limit."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything of ``model`` a user could notice changing.

    State-dict bytes, each module's training flag, hook dicts, ``requires_grad``,
    ``.grad`` and plain attributes.
    """
    state = {
        k: (v.dtype, tuple(v.shape), v.detach().cpu().contiguous().numpy().tobytes())
        for k, v in model.state_dict(keep_vars=True).items()
    }
    modules: dict[str, Any] = {}
    for name, m in model.named_modules():
        attrs = {
            k: repr(v)
            for k, v in vars(m).items()
            if not k.startswith("_") and not isinstance(v, torch.Tensor)
        }
        hooks = {h: tuple(getattr(m, h, {}).keys()) for h in _HOOK_DICTS}
        modules[name] = (type(m), m.training, attrs, hooks)
    grads = {
        n: (p.requires_grad, None if p.grad is None else p.grad.detach().numpy().tobytes())
        for n, p in model.named_parameters()
    }
    return {"state": state, "modules": modules, "params": grads}


class Hang(BaseException):
    """A call ran past its time limit (a BaseException, so no ``except Exception`` hides it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread once ``seconds`` have passed."""

    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"the call ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def user_model() -> Net:
    """A model as a user holds it mid-training: train mode, one BN frozen, a frozen bias, a hook."""
    torch.manual_seed(0)
    m = Net().train()
    m.bn2.eval()
    m.conv1.bias.requires_grad_(False)  # type: ignore[union-attr]
    m.head.register_forward_hook(lambda mod, args, out: None)
    return m
