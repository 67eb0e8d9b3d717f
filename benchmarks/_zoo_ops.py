"""The zoo's operations on one model, each a function returning a note for its cell."""

from __future__ import annotations

import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from _zoo_models import ZooModel, build

__all__ = ["OPS", "TARGETS", "Timeout", "Wrong", "describe", "operations", "time_limit"]

OPS = ("q8", "q4", "p50", "p50 sens", "s30", "save/load", "onnx")
TARGETS = {
    "q8": 95.0,
    "q4": 95.0,
    "p50": 95.0,
    "p50 sens": 95.0,
    "s30": 85.0,
    "save/load": 95.0,
    "onnx": 85.0,
}
FLIP_SLACK = 0.005  # p50 with sensitivity may flip this many more held-out decisions


class Timeout(Exception):
    """An operation ran past its time limit."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def on_alarm(_sig: int, _frame: FrameType | None) -> None:
        raise Timeout(f"over the {seconds} s limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Wrong(Exception):
    """The operation ran but its result failed a check."""


def describe(e: BaseException) -> dict[str, str]:
    from dfcompress.errors import DfcompressError

    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        inner = frames[-1]
        where = f"{Path(inner.filename).name}:{inner.lineno} in {inner.name}"
        own = [f for f in frames if "dfcompress" in f.filename and "benchmarks" not in f.filename]
        if own and own[-1] is not inner:
            where += f" (from {Path(own[-1].filename).name}:{own[-1].lineno})"
    chain: list[BaseException] = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    if any(isinstance(c, Timeout) for c in chain) or "Timeout" in str(e):
        status = "timeout"
    elif isinstance(e, Wrong):
        status = "wrong"
    elif isinstance(e, DfcompressError):
        status = "clear"
    else:
        status = "raw"
    return {"status": status, "error": f"{type(e).__name__}: {first}"[:300], "where": where}


def _first_tensor(y: Any) -> Any:
    """The score tensor of an output: itself, or ``.logits`` (Hugging Face outputs)."""
    logits = getattr(y, "logits", None)
    return logits if logits is not None else y


def _decisions(y: Any) -> Any:
    y = y.reshape(y.shape[0], -1)
    return y[:, 0] > 0 if y.shape[1] == 1 else y.argmax(1)


def _float_left(model: Any) -> tuple[str, bool]:
    """``"n/total (reason count, ...)"`` of the layers left float, and whether any is silent."""
    import dfcompress as dfc

    rows = list(dfc.summary(model))
    left = [r for r in rows if r.action == "float"]
    reasons: dict[str, int] = {}
    for r in left:
        why = r.reason or "no reason"
        reasons[why] = reasons.get(why, 0) + 1
    detail = ", ".join(f"{why} {n}" for why, n in sorted(reasons.items()))
    text = f"{len(left)}/{len(rows)}" + (f" ({detail})" if detail else "")
    return text, any(r.reason is None for r in left)


def operations(spec: ZooModel) -> dict[str, Callable[[], Any]]:
    """Build ``spec``'s model and return its operations by name.

    Each returns the note of its cell, or ``(note, extra)`` with more columns
    for the row (q8 gives ``float_left``).
    """
    import torch

    import dfcompress as dfc
    from dfcompress.deploy import export_onnx
    from dfcompress.prune import prune, sparsity
    from dfcompress.quant import QuantLayer, quantize

    torch.manual_seed(0)
    model = build(spec)
    shape = spec.sample_shape
    x = torch.randn(2, *shape)
    calib = torch.randn(12, *shape)
    held = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = _first_tensor(model(x))
        held_ref = _decisions(_first_tensor(model(held)))
    made: dict[str, torch.nn.Module] = {}
    tmp = Path(tempfile.mkdtemp(prefix="dfc-zoo-"))

    def checked_output(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            y = _first_tensor(m(x))
        if not isinstance(y, torch.Tensor) or y.shape != ref.shape:
            raise Wrong(f"output {getattr(y, 'shape', type(y))} != {tuple(ref.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise Wrong("output has NaN/Inf")
        return y

    def flips(m: torch.nn.Module) -> float:
        with torch.no_grad():
            d = _decisions(_first_tensor(m(held)))
        return float((d != held_ref).float().mean())

    def quantized(config: str) -> tuple[str, dict[str, Any]]:
        q = quantize(model, config, calibration=calib, progress=False)
        n = sum(isinstance(m, QuantLayer) for m in q.modules())
        if n == 0:
            raise Wrong("no layer was quantized")
        left, silent = _float_left(q)
        if silent:
            raise Wrong(f"layers left float without a reason: {left}")
        checked_output(q)
        made[config] = q
        return f"{n} layers", {"float_left": left}

    def p50() -> str:
        p = prune(model, 0.5, progress=False)
        s = sparsity(p)
        if not 0.45 <= s <= 0.55:
            raise Wrong(f"sparsity {s:.3f}, asked 0.5")
        checked_output(p)
        made["p50"] = p
        return f"sparsity {s:.2f}, flips {flips(p):.3f}"

    def p50_sens() -> str:
        p = prune(model, 0.5, sensitivity=True, calibration=calib, progress=False)
        s = sparsity(p)
        if not 0.45 <= s <= 0.55:
            raise Wrong(f"sparsity {s:.3f}, asked 0.5")
        checked_output(p)
        plain = made.get("p50") or prune(model, 0.5, progress=False)
        f_sens, f_plain = flips(p), flips(plain)
        if f_sens > f_plain + FLIP_SLACK:
            raise Wrong(f"flips {f_sens:.3f} held-out decisions, global L1 p50 {f_plain:.3f}")
        return f"flips {f_sens:.3f} (L1 {f_plain:.3f})"

    def s30() -> str:
        s = prune(model, 0.3, method="structured", example_inputs=x, progress=False)
        left = sum(p.numel() for p in s.parameters())
        if left >= params:
            raise Wrong("no parameter was removed")
        checked_output(s)
        return f"params {left / params:.2f}x"

    def save_load() -> str:
        sizes = []
        for tag, m in (("float", model), *((t, made[t]) for t in ("p50", "int8") if t in made)):
            path = dfc.save(m, tmp / f"{tag}.safetensors")
            back = dfc.load(path, allow=["timm"])
            with torch.no_grad():
                a, b = _first_tensor(m(x)), _first_tensor(back(x))
            if not torch.equal(a, b):
                raise Wrong(f"{tag}: loaded output differs by {(a - b).abs().max():.3g}")
            sizes.append(f"{tag} {path.stat().st_size / 1e6:.2f} MB")
        return ", ".join(sizes)

    def onnx() -> str:
        r = export_onnx(model, tmp / "model.onnx", x)
        return f"{r.exporter}, max diff {r.max_abs_diff:.1e}"

    return {
        "q8": lambda: quantized("int8"),
        "q4": lambda: quantized("int4"),
        "p50": p50,
        "p50 sens": p50_sens,
        "s30": s30,
        "save/load": save_load,
        "onnx": onnx,
    }
