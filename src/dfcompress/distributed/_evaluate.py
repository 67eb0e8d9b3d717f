"""Scoring variants on Ray for :func:`dfcompress.compare`: one task per (variant, data shard).

A shard is a run of whole batches, so every sample is scored in the same batch
as in the local loop. In-memory data is put into Ray's object store once per
shard as numpy arrays; a :class:`DatasetShards` travels as its description and
each worker builds its own batches (and returns their labels and names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dfcompress.distributed._transfer import ModelBlob, load_blob, pack_model
from dfcompress.distributed.executor import RayExecutor, connect, run_units, workers
from dfcompress.distributed.shards import DatasetShards
from dfcompress.errors import DfcompressError

__all__ = ["LazyInputs", "score_on_ray", "shard_ranges"]


def shard_ranges(n_batches: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` contiguous, near-equal runs of batch indices covering ``0..n_batches - 1``.

    >>> shard_ranges(5, 2)
    [(0, 2), (2, 5)]
    """
    k = max(1, min(n_batches, n_shards))
    bounds = [i * n_batches // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def _as_array(x: torch.Tensor) -> npt.NDArray[Any]:
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        x = x.float()
    return x.contiguous().numpy()


def _score_unit(
    blob: ModelBlob,
    dtype: str,
    source: Mapping[str, Any],
    lo: int,
    hi: int,
    threads: int,
    where: str,
) -> dict[str, Any]:
    """In a worker: P(fake) of batches ``lo..hi - 1`` (and their labels and names)."""
    from dfcompress._data import batch_input, batch_labels
    from dfcompress.report._scoring import sample_names, score_batches

    torch.set_num_threads(threads)
    try:
        model = load_blob(blob)
        if "arrays" in source:
            batches = [torch.from_numpy(np.array(a)) for a in source["arrays"]]
            labels: Any = None
            names: Any = None
        else:
            shards = DatasetShards.from_dict(source["dataset"])
            batches, ys, names = [], [], []
            for b in range(lo, hi):
                raw = shards.batch(b)
                x = batch_input(raw)
                batches.append(x)
                ys.append(batch_labels(raw).flatten().long())
                names += sample_names(raw, x.shape[0], b * shards.batch_size)
            labels = torch.cat(ys).numpy()
        scores = score_batches(model, batches, dtype=getattr(torch, dtype))
    except Exception as e:
        raise DfcompressError(f"{where}: {type(e).__name__}: {e}") from e
    return {"scores": scores, "labels": labels, "names": names}


def score_on_ray(
    ex: RayExecutor,
    models: Mapping[str, tuple[nn.Module, torch.dtype]],
    data: Sequence[torch.Tensor] | DatasetShards,
    probe: torch.Tensor,
    *,
    progress: bool,
) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.int64] | None, list[str] | None]:
    """Scores of every variant on ``data``; with a DatasetShards also its labels and names.

    Models are checked on ``probe`` before they leave (see ``pack_model``).
    """
    from tqdm.auto import tqdm

    ray = connect(ex)
    blobs = {
        name: ray.put(pack_model(model, f"variant {name!r}", probe[:2]))
        for name, (model, _) in models.items()
    }
    if isinstance(data, DatasetShards):
        n_batches = data.num_batches
        label = f"{data.factory}({', '.join(f'{k}={v!r}' for k, v in data.kwargs.items())})"
    else:
        n_batches = len(data)
        label = "the evaluation data"
    ranges = shard_ranges(n_batches, workers(ray, ex))
    sources: list[Any] = []
    for lo, hi in ranges:
        if isinstance(data, DatasetShards):
            sources.append({"dataset": data.to_dict()})
        else:
            sources.append(ray.put({"arrays": [_as_array(x) for x in data[lo:hi]]}))
    units: list[tuple[Any, ...]] = []
    names_of: list[tuple[str, int]] = []
    for name, (_, dtype) in models.items():
        for k, (lo, hi) in enumerate(ranges):
            where = f"shard {k} (batches {lo}..{hi - 1} of {label})"
            dtype_name = str(dtype).removeprefix("torch.")
            units.append((blobs[name], dtype_name, sources[k], lo, hi, ex.threads, where))
            names_of.append((name, k))

    def describe(i: int) -> str:
        name, k = names_of[i]
        lo, hi = ranges[k]
        return f"evaluating variant {name!r} on shard {k} (batches {lo}..{hi - 1})"

    bar = tqdm(total=len(units), desc="evaluate (ray)", disable=not progress)
    try:
        out = run_units(ray, ex, _score_unit, units, describe, bar=bar)
    finally:
        bar.close()
    per = len(ranges)
    scores = {
        name: np.concatenate([r["scores"] for r in out[j * per : (j + 1) * per]])
        for j, name in enumerate(models)
    }
    if not isinstance(data, DatasetShards):
        return scores, None, None
    first = out[:per]
    labels = np.concatenate([r["labels"] for r in first]).astype(np.int64)
    names = [n for r in first for n in r["names"]]
    return scores, labels, names


class LazyInputs:
    """The inputs of a :class:`DatasetShards`, read from the dataset only where indexed.

    ``compare`` needs a few samples on the driver (latency example, Grad-CAM
    panels); the rest stays where the workers read it.
    """

    def __init__(self, data: DatasetShards) -> None:
        self.data = data

    def __getitem__(self, index: int | slice | list[int]) -> torch.Tensor:
        from dfcompress._data import batch_input

        n = len(self.data)
        if isinstance(index, slice):
            index = list(range(n))[index]
        if isinstance(index, int):
            return batch_input(self.data.samples([index]))[0]
        return batch_input(self.data.samples(list(index)))
