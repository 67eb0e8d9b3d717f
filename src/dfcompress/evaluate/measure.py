"""What a model costs: file size, parameters, sparsity, MACs, latency and peak memory.

Size is measured on the bytes :func:`dfcompress.save` writes, not on
``numel * 4``: that is what showed that pruning without sparse storage leaves
the file exactly as large. MACs come from PyTorch's own FLOP counter on one
forward of the example (one multiply-accumulate = two FLOPs), so they count
what the model really computes, including the dense kernels a pruned but
unshrunk model still runs.

>>> import torch
>>> from torch import nn
>>> m = measure(nn.Linear(10, 4), torch.zeros(1, 10), repeats=2)
>>> m.params, m.macs
(44, 40)
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dfcompress._modes import eval_mode, restore_modes, training_flags
from dfcompress._validate import check_bool, check_int, check_model, check_tensor, refused_input
from dfcompress.errors import DfcompressError

__all__ = ["Measurement", "count_macs", "measure", "peak_rss_during"]

_THREAD_COUNT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Measurement:
    """The cost of one model. Sizes in bytes; ``size_mb`` uses MB = 10^6 bytes.

    Attributes:
        serialized_bytes: size of the file :func:`dfcompress.save` writes.
        params: number of parameter elements.
        nonzero_params: parameter elements that are not zero.
        sparsity: ``1 - nonzero_params / params``.
        macs: multiply-accumulates of one forward of ``example`` (None without it).
        latency_ms: median wall time of one forward divided by the batch size.
        batch_size: the example's batch size used for latency.
        threads: torch intra-op threads during the timing.
        peak_rss_bytes: the process's peak resident memory during one forward.
    """

    serialized_bytes: int
    params: int
    nonzero_params: int
    sparsity: float
    macs: int | None = None
    latency_ms: float | None = None
    batch_size: int | None = None
    threads: int | None = None
    peak_rss_bytes: int | None = None

    @property
    def size_mb(self) -> float:
        """File size in MB (10^6 bytes)."""
        return self.serialized_bytes / 1e6

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)

    def table(self) -> str:
        """A two-column markdown table."""

        def fmt(v: int | float | None, unit: str = "") -> str:
            if v is None:
                return "n/a"
            if isinstance(v, float):
                return f"{v:.4g}{unit}"
            return f"{v:,}{unit}"

        rows = [
            ("File size", f"{self.size_mb:.3f} MB ({self.serialized_bytes:,} bytes)"),
            ("Parameters", fmt(self.params)),
            ("Non-zero parameters", fmt(self.nonzero_params)),
            ("Sparsity", f"{self.sparsity:.2%}"),
            ("MACs", fmt(self.macs)),
            (
                "Latency per sample",
                fmt(self.latency_ms, " ms")
                + (
                    f" (batch {self.batch_size}, {self.threads} threads)" if self.batch_size else ""
                ),
            ),
            (
                "Peak RSS",
                "n/a" if self.peak_rss_bytes is None else f"{self.peak_rss_bytes / 1e6:.1f} MB",
            ),
        ]
        head = ["| quantity | value |", "|---|---|"]
        return "\n".join(head + [f"| {a} | {b} |" for a, b in rows])

    def __str__(self) -> str:
        return self.table()


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``example`` (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(example)
    return int(counter.get_total_flops()) // 2


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_during(model: nn.Module, example: torch.Tensor) -> int:
    """Peak resident memory of this process while running one forward of ``example``.

    On Linux the high-water mark is reset first, so the figure is the peak of
    this forward (model, input, activations and the interpreter itself).
    Elsewhere it is the process's lifetime peak.
    """
    with torch.inference_mode():
        if _reset_hwm():
            model(example)
            hwm = _vm_hwm()
            if hwm is not None:
                return hwm
        model(example)
    return _ru_maxrss()


def _ru_maxrss() -> int:
    import resource  # POSIX only; imported here so the module imports everywhere

    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far: ``VmHWM``, else ``ru_maxrss``."""
    hwm = _vm_hwm()
    return hwm if hwm is not None else _ru_maxrss()


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor a model holds (parameters, buffers, tensor attributes).

    >>> tensor_bytes(nn.Linear(4, 2))  # 8 weights + 2 biases in float32
    40
    """
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        tensors = [*m._parameters.values(), *m._buffers.values(), *vars(m).values()]
        for t in tensors:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def measure(
    model: nn.Module,
    example: torch.Tensor | None = None,
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    memory: bool = True,
) -> Measurement:
    """Measure ``model``: size on disk, parameters, sparsity and, given an example, MACs,
    latency and peak memory.

    The model is left as it was (its train/eval mode is restored).

    Args:
        model: the model.
        example: one input batch; without it only the static figures are measured.
        repeats: timed forwards; the median is reported.
        warmup: untimed forwards before timing.
        threads: torch intra-op threads for the timing (restored afterwards).
        memory: also measure peak RSS.
    """
    from dfcompress.io import serialized_size

    check_model(model)
    check_int(repeats, "repeats", low=1)
    check_int(warmup, "warmup", low=0)
    if threads is not None:
        check_int(threads, "threads", low=1)
    check_bool(memory, "memory")
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    if example is not None:
        check_tensor(example, "example", finite=False)
    try:
        size = serialized_size(model)
    except DfcompressError:  # a form save refuses (an exported graph): its tensors' bytes
        size = tensor_bytes(model)
    if example is None:
        return Measurement(size, params, nonzero, 1.0 - nonzero / params if params else 0.0)

    # The thread count is process-wide: calls that set it take turns.
    locked = threads is not None and _THREAD_COUNT_LOCK.acquire()
    old_threads = torch.get_num_threads()
    flags = training_flags(model)
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with refused_input("example", example, model):
            macs = count_macs(model, example)
        times: list[float] = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(example)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(example)
                times.append(time.perf_counter() - t0)
        batch = int(example.shape[0]) if example.dim() else 1
        latency = statistics.median(times) * 1000.0 / max(batch, 1)
        rss = peak_rss_during(model, example) if memory else None
        used_threads = torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
        restore_modes(flags)
        if locked:
            _THREAD_COUNT_LOCK.release()
    return Measurement(
        serialized_bytes=size,
        params=params,
        nonzero_params=nonzero,
        sparsity=1.0 - nonzero / params if params else 0.0,
        macs=macs,
        latency_ms=latency if math.isfinite(latency) else None,
        batch_size=batch,
        threads=used_threads,
        peak_rss_bytes=rss,
    )
