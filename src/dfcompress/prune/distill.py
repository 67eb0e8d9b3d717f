"""Fine-tuning a pruned model by knowledge distillation from the unpruned one.

A pruned detector recovers faster when it learns to reproduce the dense
model's outputs (soft targets carry how confident the teacher is on every
sample, a much richer signal than a 0/1 label) than from the labels alone.
:func:`distill` trains a student on ``alpha * distillation + (1 - alpha) *
label loss`` for a few epochs; the label term is used only when the batches
carry labels. :func:`distill_finetune` wraps it as the ``finetune(model,
step)`` callback of an iterative schedule, so structured pruning can go in
several steps with a short distillation after each.

Outputs are read as one logit (binary: binary cross-entropy against the
teacher's probability ``sigmoid(t / T)``) or several (softmax: KL divergence
at temperature ``T``, scaled by ``T**2`` so gradients keep their size).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress._calibration import check_batch, training_batches
from dfcompress._data import batch_input, batch_labels
from dfcompress._modes import restore_modes, training_flags
from dfcompress._train import adamw_cosine
from dfcompress._validate import check_bool, check_int, check_model, check_number, short
from dfcompress.errors import DfcompressError
from dfcompress.prune.schedule import Finetune

__all__ = ["distill", "distill_finetune", "distillation_loss"]


def _logits(out: Any) -> torch.Tensor:
    t: Any = out
    if isinstance(out, (tuple, list)) and out:
        t = out[0]
    elif not isinstance(out, torch.Tensor):
        t = getattr(out, "logits", None)
    if not isinstance(t, torch.Tensor):
        raise DfcompressError(f"cannot read logits from a model output of type {type(out)}")
    return t.reshape(t.shape[0], -1).float()


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """``alpha`` x soft-target loss + ``(1 - alpha)`` x label loss (when labels are given).

    One logit per sample is read as binary log-odds (binary cross-entropy with
    the teacher's ``sigmoid(t / T)``); several as class logits (KL divergence of
    the tempered softmaxes). Both are scaled by ``T**2``. The soft term is
    smallest when the student's logits equal the teacher's.

    >>> import torch
    >>> t = torch.tensor([[2.0], [-1.0]])
    >>> bool(distillation_loss(t, t) < distillation_loss(-t, t))
    True
    """
    if not temperature > 0:
        raise DfcompressError(f"temperature={temperature!r} is invalid: use a positive number")
    if not 0.0 <= alpha <= 1.0:
        raise DfcompressError(f"alpha={alpha!r} is out of range: use a fraction in [0, 1]")
    s = student.reshape(student.shape[0], -1).float()
    t = teacher.reshape(teacher.shape[0], -1).float().detach()
    if s.shape != t.shape:
        raise DfcompressError(
            f"student output {tuple(s.shape)} and teacher output {tuple(t.shape)} differ"
        )
    temp = float(temperature)
    if s.shape[1] == 1:
        soft = F.binary_cross_entropy_with_logits(s / temp, torch.sigmoid(t / temp))
        # the teacher's own entropy is a constant: remove it so a perfect match scores 0
        soft = soft - F.binary_cross_entropy_with_logits(t / temp, torch.sigmoid(t / temp))
    else:
        soft = F.kl_div(
            F.log_softmax(s / temp, 1),
            F.log_softmax(t / temp, 1),
            log_target=True,
            reduction="batchmean",
        )
    loss = alpha * temp * temp * soft
    if labels is not None and alpha < 1.0:
        y = labels.reshape(-1).to(s.device)
        if s.shape[1] == 1:
            hard = F.binary_cross_entropy_with_logits(s[:, 0], y.float())
        else:
            hard = F.cross_entropy(s, y.long())
        loss = loss + (1.0 - alpha) * hard
    return loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any],
    *,
    epochs: float = 1.0,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    temperature: float = 2.0,
    alpha: float = 0.7,
    seed: int | None = 0,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train ``student`` to match ``teacher`` on ``data`` (AdamW, cosine learning rate).

    Args:
        student: The model to train, typically a pruned copy of ``teacher``.
        teacher: The reference model (run in eval mode, never trained).
        data: A re-iterable loader of batches: tensors, ``(input, label, ...)``
            tuples or dicts; labels add the label loss.
        epochs: Passes over ``data``; a fraction runs that share of the batches
            of one pass (``0.5`` = the first half).
        lr: Peak learning rate (cosine decay to 0 over the run).
        weight_decay: AdamW weight decay.
        temperature: Softening of both models' outputs.
        alpha: Weight of the distillation term (``1`` ignores labels).
        seed: Seeds torch before training (``None`` leaves the RNG alone).
        inplace: Train ``student`` itself instead of a copy.
        progress: Show a progress bar.

    Returns:
        The trained student, in eval mode.

    >>> import torch
    >>> from torch import nn
    >>> teacher = nn.Linear(4, 1)
    >>> student = nn.Linear(4, 1)
    >>> data = [torch.randn(8, 4) for _ in range(4)]
    >>> x = torch.cat(data)
    >>> gap = lambda m: float((m(x) - teacher(x)).abs().mean().detach())
    >>> trained = distill(student, teacher, data, epochs=20, lr=0.05, progress=False)
    >>> gap(trained) < gap(student)
    True
    """
    check_model(student, "student")
    check_model(teacher, "teacher")
    check_number(epochs, "epochs", positive=True)
    check_number(lr, "lr", positive=True)
    check_number(weight_decay, "weight_decay", low=0.0)
    check_number(temperature, "temperature", positive=True)
    check_number(alpha, "alpha", low=0.0)
    if seed is not None:
        check_int(seed, "seed", low=0)
    check_bool(inplace, "inplace")
    check_bool(progress, "progress")
    distillation_loss(torch.zeros(1, 1), torch.zeros(1, 1), temperature=temperature, alpha=alpha)
    data = training_batches(data, epochs=epochs)
    net = student if inplace else copy.deepcopy(student)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    first: list[torch.Tensor] = []

    def batch_loss(batch: Any) -> torch.Tensor:
        x = batch_input(batch)
        check_batch(x, len(first), first[0] if first else None, "data")
        first[:1] = first[:1] or [x]
        x = x.to(device)
        with torch.no_grad():
            t = _logits(teacher(x))
        y = batch_labels(batch, required=False)
        return distillation_loss(_logits(net(x)), t, y, temperature=temperature, alpha=alpha)

    teacher_modes = training_flags(teacher)
    teacher.eval()
    try:
        steps = adamw_cosine(
            net,
            data,
            batch_loss,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            progress=progress,
            desc="distill",
        )
    finally:
        restore_modes(teacher_modes)
    if not steps:
        raise DfcompressError(f"data={short(data)} yielded no batch: pass at least one batch")
    net.eval()
    return net


def distill_finetune(teacher: nn.Module, data: Iterable[Any], **kwargs: Any) -> Finetune:
    """A ``finetune(model, step)`` callback running :func:`distill` in place after each step.

    Args:
        teacher: The unpruned model (keep a copy: pruning in place changes the model).
        data: Training batches, as for :func:`distill`.
        **kwargs: Options of :func:`distill` (``epochs``, ``lr``, ``temperature``...).

    >>> import torch
    >>> from torch import nn
    >>> from dfcompress.prune import prune
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> x = torch.randn(8, 8)
    >>> ft = distill_finetune(net, [x], epochs=1, progress=False)
    >>> small = prune(net, 0.5, method="structured", steps=2, finetune=ft,
    ...               example_inputs=x, progress=False)
    >>> small[0].out_features
    8
    """
    if "inplace" in kwargs:
        raise DfcompressError("distill_finetune always trains in place: drop inplace=")
    check_model(teacher, "teacher")
    known = set(inspect.signature(distill).parameters) - {"student", "teacher", "data", "inplace"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise DfcompressError(
            f"distill_finetune got unknown options {unknown}: use {', '.join(sorted(known))}"
        )
    check_number(kwargs.get("epochs", 1.0), "epochs", positive=True)
    if isinstance(data, Iterator):
        raise DfcompressError(
            f"data={short(data)} is a one-shot iterator, but the callback distils after every "
            "pruning step: pass a list of batches or a DataLoader"
        )
    data = training_batches(data, epochs=1.0)
    frozen = copy.deepcopy(teacher).eval()

    def finetune(model: nn.Module, step: int) -> None:
        distill(model, frozen, data, inplace=True, **kwargs)

    return finetune
