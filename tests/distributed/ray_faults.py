"""Dataset factories that fail on purpose (imported by name in Ray workers); a model that cannot
travel."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch

from dfcompress.data.proxy import make_proxy


class _Broken:
    """The proxy test split whose sample ``bad`` cannot be read."""

    def __init__(self, bad: int, **kwargs: Any) -> None:
        self.data = make_proxy(**kwargs)
        self.bad = bad

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        if i == self.bad:
            raise OSError(f"sample {i} is truncated")
        return self.data[i]


def broken_proxy(bad: int, **kwargs: Any) -> _Broken:
    return _Broken(bad, **kwargs)


def killing_proxy(marker: str, driver_pid: int, **kwargs: Any) -> Any:
    """The proxy split; the first worker process to build it dies (SIGKILL) instead."""
    if os.getpid() != driver_pid and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return make_proxy(**kwargs)


def late_echo(delay: float, value: int) -> int:
    """``value`` after ``delay`` seconds (so tasks finish out of order)."""
    import time

    time.sleep(delay)
    return value


def unsendable_model() -> torch.nn.Module:
    """A model of a class defined in a function: no dfcompress file can name it."""

    class Local(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(12, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    return Local()
