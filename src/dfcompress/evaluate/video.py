"""Video-level evaluation: group frame scores into one score per video.

A detector scores frames; a data set such as Celeb-DF is judged per video.
:func:`video_scores` groups frames by a *video key* taken from each sample's
name and aggregates their scores. The default key, :func:`video_key`, follows
these rules (backslashes count as ``/``):

1. A name with a directory part belongs to its folder: the key is the whole
   parent path, ``"Celeb-real/id3_0007/frame_0012.png"`` -> ``"Celeb-real/id3_0007"``.
2. Otherwise the file stem is parsed as a Celeb-DF video id followed by an
   optional frame index, which is stripped:

   - fake ``idA_idB_NNNN``: ``"id0_id16_0003_0042.png"`` -> ``"id0_id16_0003"``;
   - real ``idA_NNNN``: ``"id7_0005_12.jpg"`` -> ``"id7_0005"``;
   - YouTube real ``NNNNN``: ``"00123_frame7.png"`` -> ``"00123"``.

3. Any other stem loses a trailing ``_N`` / ``-N`` / ``_frameN`` frame index if
   it has one (``"clip_a_0012.png"`` -> ``"clip_a"``), else it is its own key.

Pass ``key=`` to :func:`video_scores` for any other naming scheme.

>>> v = video_scores(["a/0.png", "a/1.png", "b/0.png"], [1, 1, 0], [0.9, 0.7, 0.2])
>>> v.names, v.scores.tolist(), v.n_frames.tolist()
(['a', 'b'], [0.8, 0.2], [2, 1])
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import ArrayLike, Nonfinite, _to_numpy

__all__ = ["Aggregation", "VideoScores", "video_key", "video_scores"]

Aggregation: TypeAlias = Literal["mean", "median", "max", "topk"]
"""How frame scores become a video score; ``"topk"`` is the mean of the k highest."""

_CELEB_DF = re.compile(r"^(id\d+_id\d+_\d+|id\d+_\d+|\d{5})(?:[_\-.](?:frame)?\d+)?$", re.I)
_FRAME_SUFFIX = re.compile(r"^(.+?)[_\-](?:frame)?\d+$", re.I)
_AGGREGATIONS = ("mean", "median", "max", "topk")


def video_key(name: str) -> str:
    """The video a frame belongs to, from its name (rules in the module docstring).

    >>> video_key("fake/id0_id1_0003/0012.png")
    'fake/id0_id1_0003'
    >>> video_key("id0_id1_0003_0012.png"), video_key("id2_0004_7.jpg"), video_key("00042_3.png")
    ('id0_id1_0003', 'id2_0004', '00042')
    """
    path = name.replace("\\", "/")
    if "/" in path.strip("/"):
        return path.strip("/").rsplit("/", 1)[0]
    base = path.strip("/")
    stem = base.rsplit(".", 1)[0] if "." in base else base
    m = _CELEB_DF.match(stem)
    if m:
        return m.group(1)
    m = _FRAME_SUFFIX.match(stem)
    return m.group(1) if m else stem


class VideoScores(NamedTuple):
    """One row per video, in order of first appearance.

    Attributes:
        names: Video keys.
        labels: The label shared by all frames of each video.
        scores: Aggregated score (``nan`` if none of its frames had a finite score).
        n_frames: Frames with a finite score that entered each video's score.
    """

    names: list[str]
    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    n_frames: npt.NDArray[np.int64]


def _aggregate(values: npt.NDArray[np.float64], agg: Aggregation, k: int) -> float:
    if values.shape[0] == 0:
        return math.nan
    if agg == "mean":
        return float(values.mean())
    if agg == "median":
        return float(np.median(values))
    if agg == "max":
        return float(values.max())
    top = np.sort(values)[::-1][:k]
    return float(top.mean())


def video_scores(
    names: Sequence[str],
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    agg: Aggregation = "mean",
    k: int = 5,
    key: Callable[[str], str] = video_key,
    nonfinite: Nonfinite = "drop",
) -> VideoScores:
    """Aggregate frame scores into video scores.

    Args:
        names: One sample name (file name or relative path) per frame.
        labels: Frame labels, 1 = fake. All frames of a video must agree.
        scores: Frame scores, higher = more likely fake.
        agg: ``"mean"`` (default), ``"median"``, ``"max"`` or ``"topk"`` (mean of
            the ``k`` highest frame scores, or of all frames if fewer).
        k: Frames averaged by ``"topk"``.
        key: Maps a frame name to its video; :func:`video_key` by default.
        nonfinite: ``"drop"`` NaN/infinite frame scores or ``"raise"``.

    Returns:
        A :class:`VideoScores`; feed ``labels`` and ``scores`` to
        :func:`dfcompress.evaluate.metrics.summarize` for video-level metrics.

    Raises:
        DfcompressError: Mixed labels within one video, mismatched lengths,
            an unknown ``agg`` or a ``k`` below 1.

    >>> v = video_scores(["x_1", "x_2", "y_1"], [0, 0, 1], [0.1, 0.5, 0.8], agg="max")
    >>> v.names, v.scores.tolist()
    (['x', 'y'], [0.5, 0.8])
    """
    if agg not in _AGGREGATIONS:
        raise DfcompressError(f"agg={agg!r} is not supported: use one of {_AGGREGATIONS}")
    if k < 1:
        raise DfcompressError(f"k={k} must be at least 1")
    if nonfinite not in ("drop", "raise"):
        raise DfcompressError(f"nonfinite={nonfinite!r} is not supported: use 'drop' or 'raise'")
    y = _to_numpy(labels, "labels")
    s = _to_numpy(scores, "scores").astype(np.float64)
    if not (len(names) == y.shape[0] == s.shape[0]):
        raise DfcompressError(
            f"names, labels and scores differ in length: {len(names)}, {y.shape[0]}, {s.shape[0]}"
        )
    if not np.isin(y, (0, 1)).all():
        raise DfcompressError(f"labels must be 0 (real) or 1 (fake); got {np.unique(y).tolist()}")
    if nonfinite == "raise" and not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise DfcompressError(f"score of frame {names[i]!r} is {s[i]}; pass nonfinite='drop'")

    frames: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        frames.setdefault(key(name), []).append(i)

    out_labels: list[int] = []
    out_scores: list[float] = []
    out_counts: list[int] = []
    for video, idx in frames.items():
        video_labels = np.unique(y[idx])
        if video_labels.shape[0] > 1:
            n_fake = int((y[idx] == 1).sum())
            raise DfcompressError(
                f"video {video!r} mixes labels: {n_fake} fake and {len(idx) - n_fake} real "
                f"frames; every frame of a video must share its label (check the names or key=)"
            )
        vals = s[idx]
        vals = vals[np.isfinite(vals)]
        out_labels.append(int(video_labels[0]))
        out_scores.append(_aggregate(vals, agg, k))
        out_counts.append(int(vals.shape[0]))
    return VideoScores(
        names=list(frames),
        labels=np.asarray(out_labels, dtype=np.int64),
        scores=np.asarray(out_scores, dtype=np.float64),
        n_frames=np.asarray(out_counts, dtype=np.int64),
    )
