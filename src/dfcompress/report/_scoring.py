"""Reading labelled data once and scoring a model on it: P(fake) per sample, video metrics.

Label 1 = fake. The score of a sample is ``P(fake)``: the sigmoid of a one-logit
head, or ``softmax[:, 1]`` of a two-logit head, computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dfcompress._calibration import check_batch
from dfcompress._data import batch_input, batch_labels
from dfcompress._modes import restore_modes, training_flags
from dfcompress._validate import refused_input, short
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.gradcam import fake_logodds
from dfcompress.evaluate.metrics import Metrics, summarize
from dfcompress.evaluate.video import Aggregation, video_key, video_scores

__all__ = ["check_labels", "collect", "sample_names", "score_batches", "scores_of", "video_metrics"]

_NAME_KEYS = ("name", "names", "path", "paths", "file", "filename")


def sample_names(batch: Any, n: int, start: int) -> list[str]:
    names: Any = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        names = batch[2]
    elif isinstance(batch, Mapping):
        names = next((batch[k] for k in _NAME_KEYS if k in batch), None)
    if isinstance(names, str):
        names = [names]
    if isinstance(names, (list, tuple)) and len(names) == n:
        return [str(v) for v in names]
    return [f"sample_{start + i:05d}" for i in range(n)]


def collect(
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
) -> tuple[list[torch.Tensor], npt.NDArray[np.int64], list[str]]:
    """Read the whole data once: input batches, labels and sample names.

    ``data`` yields ``(image, label)``, ``(image, label, name)`` batches or dicts
    (``image``/``label``/``name``); a pair of tensors ``(images, labels)`` is one batch.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = [data]
    batches: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    names: list[str] = []
    if isinstance(data, (str, bytes, Mapping, torch.Tensor)) or not isinstance(data, Iterable):
        raise DfcompressError(
            f"data={short(data)} is not labelled data: pass (images, labels) or an iterable of "
            "(image, label[, name]) batches or dicts"
        )
    for batch in data:
        x = batch_input(batch)
        check_batch(x, len(batches), batches[0] if batches else None, "data")
        y = batch_labels(batch).flatten().long()
        if y.shape[0] != x.shape[0]:
            raise DfcompressError(f"a batch has {x.shape[0]} inputs but {y.shape[0]} labels")
        names += sample_names(batch, x.shape[0], len(names))
        batches.append(x.detach())
        labels.append(y)
    if not batches:
        raise DfcompressError("the data yielded no batches")
    return batches, check_labels(torch.cat(labels).numpy()), names


def check_labels(y: Any) -> npt.NDArray[np.int64]:
    y_all = np.asarray(y).astype(np.int64)
    if not np.isin(y_all, (0, 1)).all():
        raise DfcompressError(
            f"labels must be 0 (real) or 1 (fake); got {sorted(set(y_all.tolist()))[:5]}"
        )
    return y_all


def scores_of(logits: torch.Tensor) -> torch.Tensor:
    """P(fake) in float64 of a batch of logits (one-logit or two-logit head)."""
    return torch.sigmoid(fake_logodds(logits.float()).double().flatten())


def score_batches(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    bar: Any = None,
) -> npt.NDArray[np.float64]:
    """P(fake) of every sample, in float64 (inputs cast to ``dtype``, outputs to float)."""
    out: list[torch.Tensor] = []
    flags = training_flags(model)
    model.eval()
    try:
        with torch.inference_mode():
            for x in batches:
                with refused_input("data", x, model):
                    logits = model(x.to(dtype))
                if not isinstance(logits, torch.Tensor):
                    raise DfcompressError(
                        f"the model returned {type(logits).__name__}; compare needs logits"
                    )
                out.append(scores_of(logits))
                if bar is not None:
                    bar.update(1)
    finally:
        restore_modes(flags)
    return torch.cat(out).numpy()


def video_metrics(
    names: Sequence[str],
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    video: bool | Aggregation | None,
    threshold: float,
) -> tuple[Metrics | None, str | None]:
    if video is False:
        return None, None
    agg: Aggregation = video if isinstance(video, str) else "mean"
    keys = [video_key(n) for n in names]
    if video is None:
        per_class: dict[int, set[str]] = {0: set(), 1: set()}
        for k, y in zip(keys, labels, strict=True):
            per_class[int(y)].add(k)
        grouped = len(set(keys)) < len(keys)
        if not grouped or min(len(v) for v in per_class.values()) < 2:
            return None, None
    try:
        v = video_scores(names, labels, scores, agg=agg)
    except DfcompressError as e:
        if video is None:
            return None, f"video-level metrics skipped: {e}"
        raise
    return summarize(v.labels, v.scores, threshold=threshold), None
