"""The "Model" section: what the detector is and what each variant's compression changed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from dfcompress.evaluate.params import logical_params

__all__ = ["ModelInfo", "describe_changes", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """The baseline detector.

    Attributes:
        architecture: Its class, ``module.QualName``.
        params: Parameter elements, packed weights at their logical count.
        input_shape: One sample's shape, e.g. ``(3, 224, 224)``.
    """

    architecture: str
    params: int
    input_shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures."""
        return {
            "architecture": self.architecture,
            "params": self.params,
            "input_shape": list(self.input_shape),
        }


def model_info(model: nn.Module, sample_shape: Sequence[int]) -> ModelInfo:
    """The :class:`ModelInfo` of ``model`` fed samples of ``sample_shape``.

    >>> model_info(nn.Linear(3, 1), (3,))
    ModelInfo(architecture='torch.nn.modules.linear.Linear', params=4, input_shape=(3,))
    """
    cls = type(model)
    return ModelInfo(
        f"{cls.__module__}.{cls.__qualname__}",
        logical_params(model),
        tuple(int(s) for s in sample_shape),
    )


def describe_changes(model: nn.Module) -> str:
    """What compression did to the conv/linear layers of ``model``, from :func:`dfcompress.summary`.

    >>> describe_changes(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)))
    '2 layers float (not selected: 2)'
    """
    from dfcompress._summary import summary

    s = summary(model)
    if not len(s):
        return "no conv/linear layers"
    counts = s.counts()
    order = sorted(counts, key=lambda a: (a == "float", a == "pruned", a))
    parts = [f"{counts[a]} layer{'s' if counts[a] > 1 else ''} {a}" for a in order]
    reasons = Counter(str(r) for r in s.float_layers.values())
    if reasons:
        why = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
        parts[-1] += f" ({why})"
    sparse = [r for r in s if r.sparsity > 0]
    if sparse:
        total = sum(r.params for r in s)
        zeros = sum(r.params * r.sparsity for r in s)
        parts.append(f"{zeros / total:.1%} of conv/linear weights zero")
    return ", ".join(parts)
