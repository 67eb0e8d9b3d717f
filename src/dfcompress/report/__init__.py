"""Compare compressed variants of a detector: tables, insights, plots, Grad-CAM, mismatches.

>>> import dfcompress.report as r
>>> sorted(n for n in r.__all__ if n[0].isupper())
['Report', 'SummaryRow', 'VariantResult']
"""

from __future__ import annotations

from dfcompress.report._insights import SummaryRow as SummaryRow
from dfcompress.report._insights import key_insights as key_insights
from dfcompress.report._insights import summary_rows as summary_rows
from dfcompress.report.compare import compare as compare
from dfcompress.report.report import Report as Report
from dfcompress.report.result import VariantResult as VariantResult

__all__ = ["Report", "SummaryRow", "VariantResult", "compare", "key_insights", "summary_rows"]
