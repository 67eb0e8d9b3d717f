"""Fuzzing ``dfcompress.load`` with corrupted files: only DfcompressError, no hang, bounded memory.

Valid files of three models (float, pruned with sparse encoding, int4 packed)
get byte flips, truncations, insertions and manifest field changes. Each load
either returns a model that runs, or raises a DfcompressError subclass. The
suite runs ``DFC_FUZZ_EXAMPLES`` cases per model (default 200); ``nox -s fuzz``
runs many more and prints the tally.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from io_files import tiny_net
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError
from dfcompress.quant import quantize
from strategies import apply_file_edit, file_edits

EXAMPLES = int(os.environ.get("DFC_FUZZ_EXAMPLES", "200"))
MAX_SECONDS = 5.0
MAX_GROWTH_MB = 300.0


def _float() -> nn.Module:
    return tiny_net()


def _pruned() -> nn.Module:
    return dfc.prune(tiny_net(), 0.8, progress=False)


def _int4() -> nn.Module:
    torch.manual_seed(0)
    return quantize(
        tiny_net(), "int4", calibration=torch.rand(8, 3, 8, 8), pack=True, progress=False
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("build", [_float, _pruned, _int4], ids=["float", "pruned", "int4"])
def test_corrupted_files_raise_only_dfcompress_errors(build: Callable[[], nn.Module]) -> None:
    model = build().eval()
    x = torch.rand(1, 3, 8, 8)
    with tempfile.TemporaryDirectory() as tmp:
        raw = dfc.save(model, Path(tmp) / "m.safetensors").read_bytes()
        target = Path(tmp) / "fuzzed.safetensors"
        tally: Counter[str] = Counter()
        start_peak = _peak_mb()
        slowest = 0.0

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        )
        @given(edit=file_edits())
        def fuzz(edit: tuple[str, object]) -> None:
            nonlocal slowest
            target.write_bytes(apply_file_edit(raw, edit))  # type: ignore[arg-type]
            t0 = time.perf_counter()
            try:
                back = dfc.load(target)
                with torch.no_grad():
                    back(x)
                tally["loaded"] += 1
            except DfcompressError:
                tally["refused"] += 1
            elapsed = time.perf_counter() - t0
            slowest = max(slowest, elapsed)
            assert elapsed < MAX_SECONDS, (edit, elapsed)

        fuzz()
    growth = _peak_mb() - start_peak
    cases = tally["loaded"] + tally["refused"]
    print(
        f"\n{build.__name__}: {cases} cases, {tally['refused']} clear errors, "
        f"{tally['loaded']} loaded and ran, 0 raw exceptions, slowest {slowest:.2f} s, "
        f"peak RSS {_peak_mb():.0f} MB (+{growth:.0f} MB)"
    )
    assert tally["refused"] > 0
    assert growth < MAX_GROWTH_MB
