"""The one training loop behind ``train_detector`` and ``distill``: AdamW, cosine learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn

from dfcompress.errors import DfcompressError

__all__ = ["adamw_cosine"]


def adamw_cosine(
    net: nn.Module,
    data: Iterable[Any],
    batch_loss: Callable[[Any], torch.Tensor],
    *,
    epochs: float,
    lr: float,
    weight_decay: float,
    seed: int | None,
    progress: bool,
    desc: str,
) -> int:
    """Train ``net`` in place on ``batch_loss(batch)``; returns the number of steps taken.

    The learning rate follows a cosine from ``lr`` to 0 over the run when ``data``
    has a length (constant otherwise). A fractional ``epochs`` runs that share of
    the batches of the last pass, so it needs ``data`` with a length. ``net`` is
    put in training mode; the caller puts it back.

    >>> net = nn.Linear(2, 1)
    >>> data = [torch.ones(4, 2)] * 3
    >>> adamw_cosine(net, data, lambda x: net(x).pow(2).mean(), epochs=1.5, lr=0.1,
    ...              weight_decay=0.0, seed=0, progress=False, desc="fit")
    5
    """
    from tqdm.auto import tqdm

    if seed is not None:
        torch.manual_seed(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise DfcompressError("the model has no trainable parameters")
    per_epoch = len(data) if isinstance(data, Sized) else None
    total = math.ceil(epochs * per_epoch) if per_epoch else None
    if total is None and epochs != int(epochs):
        raise DfcompressError(
            f"epochs={epochs!r} is fractional but the data has no length: use whole epochs"
        )
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    net.train()
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        for _ in range(math.ceil(epochs)):
            for batch in data:
                if total is not None and step >= total:
                    break
                if total:
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = batch_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        bar.close()
    return step
