"""Video-level aggregation and Celeb-DF name parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import summarize
from dfcompress.evaluate.video import video_key, video_scores


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("id0_id16_0003_0042.png", "id0_id16_0003"),
        ("id0_id16_0003.mp4", "id0_id16_0003"),
        ("id7_0005_12.jpg", "id7_0005"),
        ("id7_0005_frame12.jpg", "id7_0005"),
        ("id7_0005", "id7_0005"),
        ("00123_7.png", "00123"),
        ("00123.png", "00123"),
        ("Celeb-real/id3_0007/frame_0012.png", "Celeb-real/id3_0007"),
        ("Celeb-real\\id3_0007\\0012.png", "Celeb-real/id3_0007"),
        ("clip_a_0012.png", "clip_a"),
        ("clip-b-7.png", "clip-b"),
        ("single.png", "single"),
    ],
)
def test_video_key_rules(name: str, key: str) -> None:
    assert video_key(name) == key


def test_celeb_df_frames_group_into_their_videos() -> None:
    names = [
        "id0_id1_0000_000.png",
        "id0_id1_0000_001.png",
        "id0_0000_000.png",
        "id0_0000_001.png",
        "id0_0001_000.png",
        "00007_000.png",
    ]
    labels = [1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.5, 0.3, 0.1, 0.6, 0.2]
    v = video_scores(names, labels, scores)
    assert v.names == ["id0_id1_0000", "id0_0000", "id0_0001", "00007"]
    assert v.labels.tolist() == [1, 0, 0, 0]
    assert v.scores.tolist() == pytest.approx([0.7, 0.2, 0.6, 0.2])
    assert v.n_frames.tolist() == [2, 2, 1, 1]


def test_aggregations() -> None:
    names = ["v/0", "v/1", "v/2", "v/3"]
    scores = [0.1, 0.2, 0.9, 0.4]
    got = {
        a: video_scores(names, [1] * 4, scores, agg=a, k=2).scores[0]
        for a in ("mean", "median", "max", "topk")
    }
    assert got["mean"] == pytest.approx(0.4)
    assert got["median"] == pytest.approx(0.3)
    assert got["max"] == pytest.approx(0.9)
    assert got["topk"] == pytest.approx(0.65)
    # k larger than the video: mean of all its frames
    assert video_scores(names, [1] * 4, scores, agg="topk", k=50).scores[0] == pytest.approx(0.4)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.integers(1, 12))
def test_topk_lies_between_mean_and_max(scores: list[float], k: int) -> None:
    names = ["v/x"] * len(scores)
    top = video_scores(names, [0] * len(scores), scores, agg="topk", k=k).scores[0]
    assert np.mean(scores) - 1e-12 <= top <= max(scores) + 1e-12


def test_mixed_labels_in_a_video_name_the_video() -> None:
    with pytest.raises(DfcompressError, match="'id0_0003' mixes labels: 1 fake and 1 real"):
        video_scores(["id0_0003_1.png", "id0_0003_2.png"], [1, 0], [0.2, 0.3])


def test_nonfinite_frames_dropped_and_empty_video_is_nan() -> None:
    nan = float("nan")
    v = video_scores(["a/0", "a/1", "b/0"], [1, 1, 0], [nan, 0.8, nan])
    assert v.scores[0] == pytest.approx(0.8) and v.n_frames.tolist() == [1, 0]
    assert math.isnan(v.scores[1])
    m = summarize(v.labels, v.scores)
    assert m.n_dropped == 1 and math.isnan(m.auc)
    with pytest.raises(DfcompressError, match="'a/0'"):
        video_scores(["a/0", "a/1"], [1, 1], [nan, 0.8], nonfinite="raise")


def test_custom_key_and_bad_options() -> None:
    v = video_scores(["A-1", "A-2", "B-1"], [0, 0, 1], [0.1, 0.3, 0.9], key=lambda n: n[0])
    assert v.names == ["A", "B"]
    with pytest.raises(DfcompressError, match="agg='mode'"):
        video_scores(["a"], [0], [0.1], agg="mode")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="k=0"):
        video_scores(["a"], [0], [0.1], agg="topk", k=0)
    with pytest.raises(DfcompressError, match="differ in length"):
        video_scores(["a", "b"], [0], [0.1])
