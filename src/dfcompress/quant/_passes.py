"""The Quantizer's passes over data: calibration runs, bias correction, BN re-estimation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dfcompress._data import iter_inputs, sample_count
from dfcompress._modes import eval_mode
from dfcompress.errors import DfcompressError
from dfcompress.quant import _layers
from dfcompress.quant.modules import QuantLayer

__all__ = ["correct_biases", "quant_layers", "reestimate_bn", "run"]


def _device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The quantized wrappers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def run(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    progress: bool,
    max_samples: int | None,
    desc: str,
) -> int:
    from tqdm.auto import tqdm

    device = _device(model)
    seen = 0
    with eval_mode(model), torch.no_grad():
        total = sample_count(data, max_samples)
        bar = tqdm(total=total, desc=desc, unit="sample", disable=not progress)
        for x in iter_inputs(data, limit=max_samples):
            model(x.to(device))
            seen += x.shape[0]
            bar.update(x.shape[0])
        bar.close()
    return seen


def _float_weight(mod: QuantLayer) -> torch.Tensor:
    if mod.weight is None:  # pragma: no cover - calibration happens before packing
        raise DfcompressError("bias correction needs the float weights (before packing)")
    return mod.weight


def _output(mod: QuantLayer, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mod``'s conv/linear (or own forward) on its smoothed input ``x`` with ``weight``."""
    xs = mod.smoothed_input(x)
    if mod.inner is None:
        return _layers.layer_forward(mod.layer_kind, mod.args, xs, weight, mod.bias)
    return _layers.call_own_forward(mod.inner, xs, weight, mod.bias)


def correct_biases(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    progress: bool,
    max_samples: int | None,
    *,
    activations: bool = True,
    reference: dict[str, torch.Tensor] | None = None,
    skip: set[str] | None = None,
) -> None:
    """Empirical bias correction, all layers in one pass over ``data``.

    Each quantized layer's bias loses the mean, per output channel, of the error
    its own quantization adds to its output given its input: the weight's
    rounding, and with ``activations`` the rounding of its input and output
    where those are quantized. Errors coming from earlier layers are theirs to
    correct, so one pass serves every layer. ``reference`` gives the float
    weights of layers whose weight already holds its rounded values (adaptive
    rounding), by name. Layers in ``skip`` without an output quantizer are left
    as they are (their weights were already fitted to the float model's output,
    mean included).
    """
    refs = reference or {}
    skipped = skip or set()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, layer in quant_layers(model).items():
        if layer.weight is None or (name in skipped and layer.output_quant is None):
            continue

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            if not isinstance(mod, QuantLayer) or not isinstance(out, torch.Tensor):
                return  # pragma: no cover
            ref = _output(mod, args[0], refs.get(name, _float_weight(mod)))
            if not activations:
                out = _output(mod, args[0], mod.quantized_weight())
            diff = out - ref
            dim = -1 if mod.layer_kind == "linear" else 1
            d = diff.movedim(dim, 0).reshape(diff.shape[dim], -1)
            sums[name] = sums.get(name, torch.zeros_like(d[:, 0])) + d.sum(1)
            counts[name] = counts.get(name, 0) + d.shape[1]

        handles.append(layer.register_forward_hook(hook))
    try:
        run(model, data, progress, max_samples, "bias correction")
    finally:
        for h in handles:
            h.remove()
    layers = quant_layers(model)
    with torch.no_grad():
        for name, total in sums.items():
            layer = layers[name]
            shift = total / max(counts[name], 1)
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(shift))
                layer.args["bias"] = True
            layer.bias.sub_(shift.to(layer.bias.dtype))


def reestimate_bn(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    progress: bool,
    max_samples: int | None,
) -> None:
    """Recompute BatchNorm running statistics (cumulative average) through the quantized model."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns = [b for b in bns if b.track_running_stats]
    if not bns:
        return
    saved = [(b.momentum, b.training) for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative moving average over the whole pass

    def to_train(mod: nn.Module, args: tuple[Any, ...]) -> None:
        mod.train()

    handles = [b.register_forward_pre_hook(to_train) for b in bns]
    try:
        run(model, data, progress, max_samples, "BatchNorm re-estimation")
    finally:
        for h in handles:
            h.remove()
        for b, (momentum, training) in zip(bns, saved, strict=True):
            b.momentum = momentum
            b.train(training)
