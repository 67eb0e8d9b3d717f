"""Key insights and the summary table on hand-made figures."""

from __future__ import annotations

import math

import pytest

from dfcompress.errors import DfcompressError
from dfcompress.report import key_insights, summary_rows

MB = 1_000_000


def _insights(names: list[str], sizes: list[int], aucs: list[float], **kw: object) -> list[str]:
    rows = summary_rows(names, sizes, aucs, names[0], 0.01)
    return key_insights(rows, 0.01, **kw)  # type: ignore[arg-type]


def test_ties_name_every_tied_variant() -> None:
    out = _insights(["base", "a", "b", "c"], [4 * MB, 2 * MB, 2 * MB, MB], [0.9, 0.95, 0.95, 0.7])
    assert out[0] == "Highest AUC: a, b (0.9500, tied)."
    best = next(s for s in out if s.startswith("Best compression"))
    assert "a, b" in best and "tied in size" in best
    assert next(s for s in out if s.startswith("Largest drop")).startswith("Largest drop: c ")


def test_tied_drops_are_all_named() -> None:
    out = _insights(["base", "x", "y"], [4 * MB, 2 * MB, MB], [0.9, 0.8, 0.8])
    assert "Largest drop: x, y (-0.1000 AUC, to 0.8000, tied)." in out
    assert "No variant stays within 0.01 AUC of the baseline." in out


def test_better_than_the_baseline_only_outside_the_interval() -> None:
    names, sizes, aucs = ["base", "q16", "q8"], [4 * MB, 2 * MB, MB], [0.90, 0.93, 0.905]
    rows = summary_rows(
        names, sizes, aucs, "base", diff_intervals=[(0, 0), (0.01, 0.05), (-0.01, 0.02)]
    )
    out = key_insights(rows, 0.01)
    assert out[0].startswith("Highest AUC: q16 ")
    better = next(s for s in out if s.startswith("Better than the baseline"))
    assert better.startswith("Better than the baseline: q16 (") and "+0.0100..+0.0500" in better
    assert "Above the baseline within noise: q8 (" in " ".join(out)
    assert "No variant lost AUC against the baseline." in out
    best = next(s for s in out if s.startswith("Best compression"))
    assert best.startswith("Best compression within 0.01 AUC of the baseline: q8 ")
    assert not any(s.startswith("Largest drop") for s in out)


def test_status_uses_the_absolute_tolerance() -> None:
    rows = summary_rows(["b", "ok", "edge", "bad"], [4, 3, 2, 1], [0.9, 0.895, 0.89, 0.889], "b")
    assert [r.status for r in rows] == ["Baseline", "Stable", "Stable", "Degraded"]
    assert rows[3].reduction_pct == pytest.approx(75.0)


def test_single_class_data_gives_nan_auc_with_the_reason() -> None:
    reason = "all 10 samples are fake (label 1): AUC, EER and AP are undefined"
    rows = summary_rows(["b", "q8"], [4 * MB, MB], [math.nan, math.nan], "b")
    assert all(r.status in ("Baseline", "n/a") for r in rows)
    assert math.isnan(rows[1].diff)
    out = key_insights(rows, undefined_reason=reason)
    assert out == [f"AUC is undefined for every variant: {reason}."]


def test_bigger_variants_are_not_called_best_compression() -> None:
    out = _insights(["base", "q8"], [MB, 2 * MB], [0.9, 0.9])
    assert not any(s.startswith("Best compression within") for s in out)
    assert any("smaller than the baseline" in s for s in out)


def test_bad_input_is_refused() -> None:
    with pytest.raises(DfcompressError, match="baseline 'z'"):
        summary_rows(["a"], [1], [0.5], "z")
    with pytest.raises(DfcompressError, match="tolerance"):
        summary_rows(["a"], [1], [0.5], "a", tolerance=-1)


def test_no_variant_is_called_better_without_an_interval() -> None:
    out = _insights(["base", "q16"], [4 * MB, 2 * MB], [0.90, 0.902])
    assert not any(s.startswith("Better than the baseline") for s in out)
    assert any(s.startswith("Above the baseline within noise: q16") for s in out)


def test_worse_beyond_noise_and_the_speed_line() -> None:
    rows = summary_rows(
        ["base", "q8", "p50"],
        [4 * MB, MB, 2 * MB],
        [0.90, 0.895, 0.85],
        "base",
        intervals=[(0.88, 0.92), (0.87, 0.92), (0.82, 0.88)],
        diff_intervals=[(0, 0), (-0.012, 0.002), (-0.07, -0.03)],
        latencies=[2.0, 0.8, 2.5],
    )
    assert rows[0].speedup == 1.0 and rows[1].speedup == pytest.approx(2.5)
    assert math.isnan(rows[0].diff_low) and rows[2].significant and not rows[1].significant
    out = key_insights(rows, 0.01)
    assert "Worse than the baseline beyond noise: p50 (" in " ".join(out)
    best = next(s for s in out if s.startswith("Best compression"))
    assert "2.50x the baseline's speed" in best
    assert (
        "Fastest: q8 (2.50x the baseline's speed, AUC 0.8950); slower than the baseline: p50."
        in out
    )
    slower = summary_rows(["base", "q8"], [2, 1], [0.9, 0.9], "base", latencies=[1.0, 1.25])
    assert "No variant is faster than the baseline; slower: q8." in key_insights(slower)
    with pytest.raises(DfcompressError, match="latencies has 1 entries for 3 variants"):
        summary_rows(["base", "q8", "p50"], [1, 1, 1], [0.9, 0.9, 0.9], "base", latencies=[1.0])
