"""The ``"torchscript"`` target: a ``.pt`` file run by ``torch.jit``, checked against the model.

Kept for older apps (TorchScript is deprecated in recent PyTorch); there is no
TorchScript-specific quantized form, so a quantized model exports its fake-quantized
arithmetic as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dfcompress._data import model_float_dtype
from dfcompress._validate import check_bool, refused_input, short
from dfcompress.deploy._artifact import Agreement, Artifact, flat_outputs
from dfcompress.deploy._result import (
    ExportResult,
    check_file,
    check_paths,
    check_tolerances,
    eager_outputs,
    input_for,
    to_artifact,
)
from dfcompress.errors import DfcompressError

__all__ = ["export_artifact", "export_torchscript", "load_artifact"]

TARGET = "torchscript"


def _write(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    method: str,
    check: bool,
    atol: float | None,
    rtol: float | None,
    min_agreement: float | None,
) -> tuple[ExportResult, Agreement | None]:
    if method not in ("trace", "script"):
        raise DfcompressError(f"method={short(method)} is unknown: use 'trace' or 'script'")
    check_bool(check, "check")
    check_tolerances(atol=atol, rtol=rtol, min_agreement=min_agreement)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).eval()
    x = input_for(work, example.detach().cpu())
    with refused_input("example", example, model):
        eager_outputs(work, x)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if method == "trace":
                compiled = torch.jit.trace(work, (x,), check_trace=False)  # type: ignore[no-untyped-call]
            else:
                compiled = torch.jit.script(work)
    except Exception as e:  # jit raises many types; re-raised as ours below
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DfcompressError(
            f"cannot {method} {type(model).__name__} with torch.jit: {first}; "
            f"try method={'script' if method == 'trace' else 'trace'!r}"
        ) from e
    torch.jit.save(compiled, str(path))
    kind: Literal["float", "16bit"] = (
        "float" if model_float_dtype(work) == torch.float32 else "16bit"
    )
    result = ExportResult(path, "torchscript", kind, path.stat().st_size, None, method)
    if not check:
        return result, None
    got = [o.detach().float().numpy() for o in flat_outputs(_load(path)(x))]
    agreement = check_file(
        eager_outputs(work, x),
        got,
        kind=kind,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
        what=f"the TorchScript file {path}",
    )
    return dataclasses.replace(
        result, max_abs_diff=agreement.max_abs_diff, agreement=agreement.agreement
    ), agreement


def _load(path: Path) -> Any:
    loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]

    def run(batch: torch.Tensor) -> Any:
        with torch.no_grad():
            return loaded(batch)

    return run


def _runner(path: Path) -> Any:
    run = _load(path)

    def first(batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = flat_outputs(run(batch))[0]
        return out

    return first


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    *,
    method: Literal["trace", "script"] = "trace",
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> ExportResult:
    """Write ``model`` as TorchScript; reload the file and compare with the eager model.

    The same export as ``dfcompress.export(model, path, example, target="torchscript")``,
    returning an :class:`ExportResult` instead of an :class:`~dfcompress.Artifact`.

    Args:
        model: The model to export (deep-copied, eval mode; the caller's is untouched).
        path: Where to write the ``.pt`` file.
        example: An input batch, used for tracing and for the check.
        method: ``"trace"`` (records one forward) or ``"script"`` (compiles the code).
        check: ``torch.jit.load`` the file and compare its output on ``example``.
        atol: Absolute tolerance (default 1e-4).
        rtol: Tolerance relative to the largest eager output (default 1e-3).

    Returns:
        An :class:`ExportResult` (``format="torchscript"``).

    Raises:
        DfcompressError: Scripting/tracing failed or the file does not reproduce the model.

    >>> import tempfile, torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     r = export_torchscript(net, f"{d}/net.pt", torch.randn(3, 4))
    >>> r.format, r.agreement
    ('torchscript', 1.0)
    """
    p = check_paths(model, path, example)
    return _write(
        model,
        p,
        example,
        method=method,
        check=check,
        atol=atol,
        rtol=rtol,
        min_agreement=None,
    )[0]


def export_artifact(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
    method: Literal["trace", "script"] = "trace",
) -> Artifact:
    """Write ``model`` as TorchScript and check it (see :func:`export_torchscript`)."""
    p = check_paths(model, path, example)
    result, agreement = _write(
        model,
        p,
        example,
        method=method,
        check=check,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
    )
    return to_artifact(result, TARGET, agreement, _runner(p))


def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """An existing ``.pt`` file with its ``torch.jit`` runner (no agreement figures)."""
    p = Path(path)
    if not p.is_file():
        raise DfcompressError(f"path={str(p)!r} is not a file: pass a TorchScript .pt file")
    return Artifact(p, TARGET, p.stat().st_size, None, {}, _runner(p))
