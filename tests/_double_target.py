"""A deploy target for tests: the file is what ``dfcompress.save`` writes, run eagerly.

Registered only inside tests (``monkeypatch.setitem(TARGETS, "torchscript", __name__)``),
so the deploy machinery (export, fresh-process probe, compare) can be checked without
any runtime installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfcompress.deploy._artifact import Artifact, check_agreement, flat_outputs
from dfcompress.io import load, save

EXPORTS: list[Path] = []


def _runner(model: nn.Module) -> Any:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return flat_outputs(model(x))[0].clone()

    return run


def export_artifact(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
    **options: Any,
) -> Artifact:
    save(model, path)
    EXPORTS.append(Path(path))
    loaded = load(path).eval()
    run = _runner(loaded)
    agreement = None
    if check:
        with torch.inference_mode():
            ref = [t.float().numpy() for t in flat_outputs(model.eval()(example))]
        got = [run(example).float().numpy()]
        agreement = check_agreement(
            ref,
            got,
            atol=1e-5 if atol is None else atol,
            rtol=1e-4 if rtol is None else rtol,
            min_agreement=0.99 if min_agreement is None else min_agreement,
            what=f"the test file {path}",
        )
    return Artifact(Path(path), "torchscript", Path(path).stat().st_size, agreement, {}, run)


def load_artifact(path: str | Path) -> Artifact:
    p = Path(path)
    return Artifact(p, "torchscript", p.stat().st_size, None, {}, _runner(load(p).eval()))


__all__ = ["EXPORTS", "export_artifact", "load_artifact"]
