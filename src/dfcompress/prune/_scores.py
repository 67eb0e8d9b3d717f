"""Scores of a pruned model's outputs against the unpruned model's (label-free)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from dfcompress.errors import DfcompressError

__all__ = ["Metric", "cosine_agreement", "output_tensors", "score_outputs", "sign_agreement"]

Metric = Callable[[torch.Tensor, torch.Tensor], float]
"""``metric(output, reference) -> float``, higher is better, on the calibration batch.

A model with several outputs (tensors in tuples, lists or dicts) is scored on
each (:func:`output_tensors`) and its score is the worst of them.
"""


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output, in a fixed order.

    A tensor is itself; tuples and lists are flattened in order, dicts (and
    dict-like outputs such as ``transformers``' ``ModelOutput``) by sorted key,
    recursively; other values (``None``, ints) are skipped. An object with a
    ``.logits`` tensor gives that tensor.

    >>> import torch
    >>> a, b, c = torch.zeros(1), torch.ones(2), torch.ones(3)
    >>> [t.numel() for t in output_tensors((a, {"box": c, "cls": b}, None))]
    [1, 3, 2]
    """
    found: list[torch.Tensor] = []

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            found.append(o)
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v)
        elif isinstance(o, Mapping):
            for k in sorted(o, key=str):
                walk(o[k])
        else:
            logits = getattr(o, "logits", None)
            if isinstance(logits, torch.Tensor):
                found.append(logits)

    walk(out)
    if not found:
        raise DfcompressError(
            f"cannot score a model output of type {type(out).__name__}: it holds no tensor "
            "(a tensor, or tensors in tuples, lists or dicts, are scored)"
        )
    return found


def score_outputs(
    score_fn: Metric, outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor]
) -> float:
    """The worst ``score_fn(output, reference)`` over the outputs of a model.

    Each output is scored on its own, so a small head (two class logits) next to
    a large one (box regression) counts as much as the large one.

    >>> import torch
    >>> ref = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])]
    >>> round(score_outputs(cosine_agreement, [ref[0], -ref[1]], ref), 6)
    -1.0
    """
    if len(outputs) != len(references):
        raise DfcompressError(
            f"the model returned {len(outputs)} output tensors where the unpruned model "
            f"returned {len(references)}: outputs cannot be paired for scoring"
        )
    return min(float(score_fn(o, r)) for o, r in zip(outputs, references, strict=True))


def cosine_agreement(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine similarity of the whole batch's outputs with the reference's (1 = same).

    >>> import torch
    >>> ref = torch.tensor([[1.0], [-2.0], [3.0]])
    >>> cosine_agreement(ref, ref), round(cosine_agreement(-ref, ref), 3)
    (1.0, -1.0)
    """
    a, b = output.detach().double().flatten(), reference.detach().double().flatten()
    na, nb = a.norm(), b.norm()
    if float(na) == 0.0 or float(nb) == 0.0:
        return 1.0 if float(na) == float(nb) else 0.0
    cos = float(a @ b / (na * nb))
    return -1.0 if math.isnan(cos) else min(1.0, cos)  # NaN output: as far off as it gets


def sign_agreement(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of samples with the same decision: sign of a single logit, else argmax.

    >>> import torch
    >>> sign_agreement(torch.tensor([[1.0], [-1.0]]), torch.tensor([[2.0], [1.0]]))
    0.5
    """
    a, b = output.detach().reshape(output.shape[0], -1), reference.detach()
    b = b.reshape(b.shape[0], -1)
    if a.shape[1] == 1:
        return float(((a[:, 0] > 0) == (b[:, 0] > 0)).double().mean())
    return float((a.argmax(1) == b.argmax(1)).double().mean())
