"""Render a :class:`~dfcompress.report.Report` as markdown and as HTML.

Sample and variant names come from files and users and may be hostile: the
markdown escapes HTML and table syntax, and the HTML goes through a jinja2
environment with autoescaping on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dfcompress.errors import require
from dfcompress.evaluate.metrics import fmt
from dfcompress.report.result import CATEGORIES

if TYPE_CHECKING:
    from dfcompress.report.report import Report

__all__ = ["html", "markdown", "md_escape", "model_lines", "tables"]

_MD_SPECIAL = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "|": "\\|",
        "*": "\\*",
        "_": "\\_",
        "`": "\\`",
        "[": "\\[",
        "]": "\\]",
        "\\": "\\\\",
        "\n": " ",
        "\r": " ",
    }
)


def md_escape(text: object) -> str:
    """Escape text for a markdown table cell (HTML and markdown syntax neutralized).

    >>> md_escape("<script>alert(1)</script>|x_1")
    '&lt;script&gt;alert(1)&lt;/script&gt;\\\\|x\\\\_1'
    """
    return str(text).translate(_MD_SPECIAL)


def _signed(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:+.4f}"


def _interval(low: float, high: float, *, signed: bool = True) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"{low:+.4f}..{high:+.4f}" if signed else f"{low:.4f}..{high:.4f}"


def model_lines(report: Report) -> list[str]:
    """Plain lines describing the baseline detector (architecture, parameters, input)."""
    m = report.model
    if m is None:
        return []
    shape = "x".join(str(s) for s in m.input_shape)
    return [
        f"Architecture: {m.architecture}",
        f"Parameters: {m.params:,} (packed weights at their logical count)",
        f"Input: {shape} per sample",
    ]


def tables(report: Report) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report as ``{key: (headers, rows)}`` of plain (unescaped) strings."""
    pct = f"{report.level:.0%}"
    summary = (
        [
            "Model",
            "Size MB",
            "Reduction %",
            "AUC",
            f"AUC {pct} CI",
            "Diff vs baseline",
            f"Diff {pct} CI",
            "Speed-up vs baseline",
            "Status",
        ],
        [
            [
                r.name,
                f"{r.size_mb:.3f}",
                "n/a" if not math.isfinite(r.reduction_pct) else f"{r.reduction_pct:.1f}",
                fmt(r.auc),
                _interval(r.auc_low, r.auc_high, signed=False),
                "-" if r.status == "Baseline" else _signed(r.diff),
                "-" if r.status == "Baseline" else _interval(r.diff_low, r.diff_high),
                "n/a" if not math.isfinite(r.speedup) else f"{r.speedup:.2f}x",
                r.status,
            ]
            for r in report.summary()
        ],
    )
    mr = report.model_rows()
    model = (list(mr[0]) if mr else [], [list(r.values()) for r in mr])
    q = report.quality()
    quality = (list(q[0]), [list(r.values()) for r in q])
    c = report.cost()
    heads = list(dict.fromkeys(h for r in c for h in r))
    cost = (heads, [[r.get(h, "n/a") for h in heads] for r in c])
    d = report.deployment()
    deployment = (list(d[0]) if d else [], [list(r.values()) for r in d])
    v = report.video()
    video = (list(v[0]) if v else [], [list(r.values()) for r in v])
    flips = report.flips()
    mismatch = (
        ["Variant", "Sample", "Label", "Baseline P(fake)", "Variant P(fake)", "Change", "Flip"],
        [
            [
                m.variant,
                m.name,
                "fake" if m.label == 1 else "real",
                fmt(m.baseline_score),
                fmt(m.score),
                _signed(m.change),
                "yes" if m.flip else "no",
            ]
            for m in report.mismatches()
        ],
    )
    flip_table = (
        ["Variant", "Prediction flips vs baseline"],
        [[k, str(n)] for k, n in flips.items()],
    )
    return {
        "summary": summary,
        "model": model,
        "quality": quality,
        "cost": cost,
        "deployment": deployment,
        "video": video,
        "flips": flip_table,
        "mismatches": mismatch,
    }


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    out = ["| " + " | ".join(md_escape(h) for h in headers) + " |"]
    out.append("|" + "|".join("---" for _ in headers) + "|")
    out += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return [*out, ""]


def _threshold_line(report: Report) -> str:
    return (
        f"Score = P(fake); a sample is called fake when P(fake) > {report.threshold:g}. "
        f"Stable = AUC within {report.tolerance:g} (absolute) of the baseline "
        f"{report.baseline!r}. "
        + (
            "AUC, confusion and sizes are those of the exported files, run in their runtime"
            if any(v.deployed is not None for v in report.variants)
            else "Sizes are the files dfcompress.save writes"
        )
        + f", in MB = 10^6 bytes. AUC intervals: DeLong, {report.level:.0%} (paired for "
        "differences); a variant is called better or worse than the baseline only when the "
        "interval of its difference excludes 0."
    )


def markdown(report: Report, figures: Mapping[str, Any]) -> str:
    """The report as markdown; ``figures`` maps plot keys to relative image paths."""
    t = tables(report)
    lines = [f"# {md_escape(report.title)}", ""]
    lines += [f"- {md_escape(n)}" for n in report.notes] + ([""] if report.notes else [])
    lines += [md_escape(_threshold_line(report)), ""]
    if report.model is not None or t["model"][1]:
        lines += ["## Model", ""] + [f"- {md_escape(x)}" for x in model_lines(report)]
        lines += ["", *_md_table(*t["model"])]
    lines += ["## Performance summary", ""]
    lines += _md_table(*t["summary"])
    lines += ["## Key insights", ""] + [f"- {md_escape(s)}" for s in report.insights()] + [""]
    lines += ["## Classification quality", "", *_md_table(*t["quality"])]
    lines += ["## Cost: latency per sample and peak memory", "", *_md_table(*t["cost"])]
    if t["deployment"][1]:
        lines += ["## Deployed files against their eager models", "", *_md_table(*t["deployment"])]
    if t["video"][1]:
        lines += ["## Video level", "", *_md_table(*t["video"])]
    if "size_auc" in figures or "roc" in figures:
        lines += ["## Plots", ""]
        if "size_auc" in figures:
            lines += [f"![Size vs AUC]({figures['size_auc']})", ""]
        if "roc" in figures:
            lines += [f"![ROC curves]({figures['roc']})", ""]
    lines += ["## Worst mismatches against the baseline", ""]
    lines += _md_table(*t["flips"]) + _md_table(*t["mismatches"])
    cams = figures.get("cams", {})
    if any(v.cams for v in report.variants):
        lines += ["## Grad-CAM (fake-vs-real log-odds)", ""]
        for v in report.variants:
            if not v.cams:
                continue
            lines += [f"### {md_escape(v.name)}", ""]
            path = cams.get(v.name)
            if path:
                lines += [f"![Grad-CAM of {md_escape(v.name)}]({path})", ""]
            for cat, title in CATEGORIES.items():
                panels = v.cams.get(cat, [])
                if not panels:
                    lines += [f"- {title}: none", ""]
                    continue
                lines += [f"**{title}**", ""]
                lines += [
                    f"{k + 1}. {md_escape(p.name)}: P(fake) {fmt(p.score)}"
                    + (" (flat map)" if p.flat else "")
                    for k, p in enumerate(panels)
                ] + [""]
    notes = [(v.name, n) for v in report.variants for n in v.notes]
    if notes:
        lines += ["## Notes", ""] + [f"- {md_escape(a)}: {md_escape(b)}" for a, b in notes]
        lines += [""]
    return "\n".join(lines)


def html(report: Report, figures: Mapping[str, Any]) -> str:
    """The report as a standalone HTML page (jinja2, autoescaped)."""
    jinja2: Any = require("jinja2", "report")
    from pathlib import Path

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    cams = figures.get("cams", {})
    gradcam = []
    for v in report.variants:
        if not v.cams:
            continue
        cats = []
        for cat, title in CATEGORIES.items():
            panels = v.cams.get(cat, [])
            cats.append(
                {
                    "title": title,
                    "samples": [
                        {"name": p.name, "score": fmt(p.score), "flat": p.flat} for p in panels
                    ],
                }
            )
        gradcam.append({"name": v.name, "image": cams.get(v.name), "categories": cats})
    return str(
        env.get_template("report.html.j2").render(
            title=report.title,
            notes=report.notes,
            threshold_line=_threshold_line(report),
            model_lines=model_lines(report),
            tables=tables(report),
            insights=report.insights(),
            figures=figures,
            gradcam=gradcam,
            variant_notes=[(v.name, n) for v in report.variants for n in v.notes],
        )
    )
