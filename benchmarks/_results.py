"""Shared helpers for the benchmark scripts: time side by side, print a table, update RESULTS.md."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).with_name("RESULTS.md")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def latency_ratio(model: nn.Module, base: nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median eager latency of ``model`` over ``base``'s, timed alternately in one run
    (one warm-up call each), so machine noise hits both alike."""
    model.eval()
    base.eval()
    mine: list[float] = []
    theirs: list[float] = []
    with torch.no_grad():
        for m in (model, base):
            m(x)
        for _ in range(reps):
            for m, out in ((model, mine), (base, theirs)):
                t = time.perf_counter()
                m(x)
                out.append(time.perf_counter() - t)
    return statistics.median(mine) / statistics.median(theirs)


def machine_line() -> str:
    """One line naming where the figures were measured."""
    return (
        f"Measured on {platform.machine()} / {platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads."
    )


def update_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section between ``<!-- begin:name -->`` and ``<!-- end:name -->``.

    The section is appended if it is not there yet; other sections are untouched.
    """
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
