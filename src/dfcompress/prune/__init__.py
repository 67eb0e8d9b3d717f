"""Pruning: L1 unstructured (local/global), iterative schedules, sensitivity allocation, channels.

Fine-tuning after pruning by distillation from the unpruned model: :func:`distill`.

The :func:`prune` verb covers the common cases; :class:`Pruner` holds one
configuration for repeated use; the functions below are the building blocks.
Structured pruning (:func:`prune_channels`) imports torch-pruning on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dfcompress.prune.api import prune as prune
from dfcompress.prune.distill import distill as distill
from dfcompress.prune.distill import distill_finetune as distill_finetune
from dfcompress.prune.distill import distillation_loss as distillation_loss
from dfcompress.prune.pruner import Method as Method
from dfcompress.prune.pruner import PruneConfig as PruneConfig
from dfcompress.prune.pruner import Pruner as Pruner
from dfcompress.prune.schedule import cubic as cubic
from dfcompress.prune.schedule import linear as linear
from dfcompress.prune.schedule import reestimate_bn as reestimate_bn
from dfcompress.prune.schedule import run_schedule as run_schedule
from dfcompress.prune.sensitivity import LayerSensitivity as LayerSensitivity
from dfcompress.prune.sensitivity import SensitivityResult as SensitivityResult
from dfcompress.prune.sensitivity import allocate as allocate
from dfcompress.prune.sensitivity import cosine_agreement as cosine_agreement
from dfcompress.prune.sensitivity import scan as scan
from dfcompress.prune.sensitivity import sign_agreement as sign_agreement
from dfcompress.prune.unstructured import apply_masks as apply_masks
from dfcompress.prune.unstructured import get_masks as get_masks
from dfcompress.prune.unstructured import l1_unstructured as l1_unstructured
from dfcompress.prune.unstructured import make_permanent as make_permanent
from dfcompress.prune.unstructured import sparsity as sparsity

if TYPE_CHECKING:
    from dfcompress.prune.structured import prune_channels as prune_channels

__all__ = [
    "LayerSensitivity",
    "Method",
    "PruneConfig",
    "Pruner",
    "SensitivityResult",
    "allocate",
    "apply_masks",
    "cosine_agreement",
    "cubic",
    "distill",
    "distill_finetune",
    "distillation_loss",
    "get_masks",
    "l1_unstructured",
    "linear",
    "make_permanent",
    "prune",
    "prune_channels",
    "reestimate_bn",
    "run_schedule",
    "scan",
    "sign_agreement",
    "sparsity",
]


def __getattr__(name: str) -> Any:
    if name == "prune_channels":
        from dfcompress.prune.structured import prune_channels

        return prune_channels
    raise AttributeError(f"module 'dfcompress.prune' has no attribute {name!r}")
