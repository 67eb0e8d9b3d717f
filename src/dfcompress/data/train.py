"""A small, plain training loop and scoring pass for binary (real vs fake) detectors.

The model's raw output is read as fake-vs-real log-odds (one logit, or two
logits with class 1 = fake; see :func:`dfcompress.evaluate.gradcam.fake_logodds`)
and trained with binary cross-entropy on it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

from dfcompress._data import batch_input, batch_labels
from dfcompress._train import adamw_cosine
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.gradcam import fake_logodds

__all__ = ["Predictions", "predict", "train_detector"]


def _names_of(batch: Any, n: int) -> list[str]:
    names = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        names = batch[2]
    elif isinstance(batch, dict):
        names = batch.get("name")
    if isinstance(names, (list, tuple)) and len(names) == n:
        return [str(v) for v in names]
    return [""] * n


def train_detector(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    epochs: int = 5,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    progress: bool = True,
    inplace: bool = False,
    seed: int | None = 0,
) -> nn.Module:
    """Train a detector with AdamW, a cosine learning rate and BCE on its log-odds.

    Args:
        model: Outputs one logit (``[N]``/``[N, 1]``) or two logits (class 1 = fake).
        train_loader: Yields ``(inputs, labels, ...)`` batches (label 1 = fake).
        epochs: Passes over the loader.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        progress: Show a tqdm bar.
        inplace: Train ``model`` itself instead of a copy.
        seed: Seeds torch's global RNG for dropout etc.; ``None`` leaves it alone.

    Returns:
        The trained model, in eval mode.

    >>> from dfcompress.data import loader
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 1))
    >>> trained = train_detector(net, loader("val", size=32, n=16), epochs=1, progress=False)
    >>> trained is net, trained.training
    (False, False)
    """
    if epochs < 1:
        raise DfcompressError(f"epochs={epochs} must be at least 1")
    if not lr > 0:
        raise DfcompressError(f"lr={lr} must be positive")
    net = model if inplace else copy.deepcopy(model)

    def batch_loss(batch: Any) -> torch.Tensor:
        y = batch_labels(batch).to(torch.float32).flatten()
        return F.binary_cross_entropy_with_logits(fake_logodds(net(batch_input(batch))).float(), y)

    adamw_cosine(
        net,
        train_loader,
        batch_loss,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        progress=progress,
        desc="train",
    )
    net.eval()
    return net


class Predictions(NamedTuple):
    """Per-sample outputs of :func:`predict`.

    Attributes:
        labels: Labels from the loader (1 = fake).
        scores: ``P(fake)`` = sigmoid of the log-odds, float64.
        logodds: The raw fake-vs-real log-odds, float64 (NaN stays NaN).
        names: Sample names from the loader (``""`` where it has none).
    """

    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    logodds: npt.NDArray[np.float64]
    names: list[str]


def predict(
    model: nn.Module, data: Iterable[Any], *, progress: bool = True, limit: int | None = None
) -> Predictions:
    """Score every sample of a loader with the model in eval mode (flags restored after).

    >>> from dfcompress.data import loader
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    >>> p = predict(net, loader("val", size=32, n=6, batch_size=4), progress=False)
    >>> p.scores.shape, p.names[0].split("/")[0] in ("real", "fake")
    ((6,), True)
    """
    from tqdm.auto import tqdm

    flags = {m: m.training for m in model.modules()}
    labels: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    names: list[str] = []
    seen = 0
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(data, desc="predict", disable=not progress, leave=False):
                x = batch_input(batch)
                y = batch_labels(batch).flatten()
                if limit is not None:
                    x, y = x[: limit - seen], y[: limit - seen]
                logits.append(fake_logodds(model(x)).double().flatten())
                labels.append(y.long())
                names += _names_of(batch, len(batch_input(batch)))[: y.shape[0]]
                seen += y.shape[0]
                if limit is not None and seen >= limit:
                    break
    finally:
        for m, was_training in flags.items():
            m.train(was_training)
    z = torch.cat(logits).numpy() if logits else np.zeros(0)
    return Predictions(
        labels=torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64),
        scores=np.asarray(expit(z), dtype=np.float64),
        logodds=z,
        names=names,
    )
