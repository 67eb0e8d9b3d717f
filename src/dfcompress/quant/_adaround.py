"""Adaptive rounding (AdaRound-style): choose up or down for each weight from calibration data.

Rounding every weight to its nearest code minimises the weights' own error,
not the layer's output error. For a layer ``y = W x``, AdaRound (Nagel et al.,
2020) learns for each weight whether to round down or up: the weight is
``s * clamp(floor(W / s) + h(V), qmin, qmax)`` with ``h(V) = clamp(sigmoid(V)
* 1.2 - 0.1, 0, 1)``, ``V`` is optimised with Adam to lower
``|W_soft x - W x|^2`` on inputs the layer sees during calibration, and a
regulariser ``sum(1 - |2 h - 1| ** beta)`` (``beta`` annealed from 20 to 2)
drives every ``h`` to 0 or 1. Scales stay those of nearest rounding. The
result is kept only when its output error on the sampled inputs is lower than
nearest rounding's.

Inputs are sampled, not stored whole: for a Conv2d, ``positions`` output
positions of the calibration inputs and the input patches they read; for a
Linear layer, ``positions`` input rows. Conv1d/Conv3d layers, and convs with a
string padding or a padding mode other than zeros, keep nearest rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant._passes import quant_layers, run
from dfcompress.quant.modules import QuantLayer

__all__ = ["adaround_layer", "adaround_model", "sample_columns"]

_ZETA, _GAMMA = 1.1, -0.1


def _supported(layer: QuantLayer) -> bool:
    if layer.weight is None or layer.inner is not None:
        return False
    if layer.layer_kind == "linear":
        return True
    args = layer.args
    return (
        layer.layer_kind == "conv2d"
        and not isinstance(args["padding"], str)
        and args["padding_mode"] == "zeros"
    )


def _layer_input(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """What the conv/linear computes on: ``x`` smoothed and, once frozen, quantized."""
    xs = layer.smoothed_input(x)
    iq = layer.input_quant
    if iq is not None and iq.mode == "fixed":
        xs = iq(xs)
    return xs


def float_weight(
    layer: QuantLayer, what: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``layer``'s weight, a float copy of it, and the scale and zero point (shaped
    like it) its codes will be chosen for; a tracking weight quantizer takes its
    scale from the weight first."""
    weight = layer.weight
    if weight is None:
        raise DfcompressError(f"{what} needs the float weights (before packing)")
    wq = layer.weight_quant
    with torch.no_grad():
        if wq.mode == "track":
            wq.track(weight)
        w = weight.detach().float()
        s, z = _scale_view(layer, w)
    return weight, w, s, z


def run_with_inputs(
    model: nn.Module,
    layers: dict[str, QuantLayer],
    data: Iterable[Any] | torch.Tensor,
    max_samples: int | None,
    desc: str,
    visit: Callable[[str, QuantLayer, torch.Tensor], None],
) -> None:
    """Run ``data`` through ``model``, calling ``visit(name, layer, x)`` with what each of
    ``layers``' matrix products reads (:func:`_layer_input`) on every batch."""
    handles = []
    for name, layer in layers.items():

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if not isinstance(mod, QuantLayer) or not args:
                return  # pragma: no cover
            visit(name, mod, _layer_input(mod, args[0]))

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        run(model, data, False, max_samples, desc)
    finally:
        for h in handles:
            h.remove()


def sample_columns(
    layer: QuantLayer, x: torch.Tensor, n: int, gen: torch.Generator
) -> torch.Tensor:
    """``n`` sampled inputs of ``layer``'s matrix product: ``(groups, in_per_group * k, n)``.

    For a Conv2d, each column is the patch of ``x`` one (randomly drawn) output
    position reads, flattened in the weight's order ``(channel, kh, kw)``.

    >>> from dfcompress.quant.config import IntQuant
    >>> conv = QuantLayer.__subclasses__()[1].from_float(nn.Conv2d(2, 4, 3), IntQuant(8))
    >>> sample_columns(conv, torch.randn(1, 2, 5, 5), 7, torch.Generator()).shape
    torch.Size([1, 18, 7])
    """
    x = x.detach().float()
    if layer.layer_kind == "linear":
        rows = x.reshape(-1, x.shape[-1])
        idx = torch.randint(rows.shape[0], (n,), generator=gen).to(rows.device)
        return rows[idx].T.unsqueeze(0)
    args = layer.args
    kh, kw = (int(k) for k in args["kernel_size"])
    sh, sw = (int(s) for s in args["stride"])
    dh, dw = (int(d) for d in args["dilation"])
    ph, pw = (int(p) for p in args["padding"])
    groups = int(args["groups"])
    xp = F.pad(x, (pw, pw, ph, ph))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    b = torch.randint(x.shape[0], (n,), generator=gen).to(x.device)
    i = torch.randint(oh, (n,), generator=gen).to(x.device) * sh
    j = torch.randint(ow, (n,), generator=gen).to(x.device) * sw
    taps = [xp[b, :, i + a * dh, j + c * dw] for a in range(kh) for c in range(kw)]  # (n, C) each
    cols = torch.stack(taps, dim=2)  # (n, C, kh * kw)
    c = x.shape[1]
    return cols.reshape(n, groups, (c // groups) * kh * kw).permute(1, 2, 0)


def _scale_view(layer: QuantLayer, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight's scale and zero point broadcast to ``w``'s shape."""
    wq = layer.weight_quant
    s, z = wq.scale.float(), wq.zero_point_int32().float()
    if wq.group_size is not None:
        g = wq.group_size
        shape = (w.shape[0], w.shape[1] // g, 1, -1)
        ones = torch.ones(w.shape[0], w.shape[1] // g, g, w[0, 0].numel(), device=w.device)
        s = (s.reshape(*shape[:2], 1, 1) * ones).reshape(w.shape)
        z = (z.reshape(*shape[:2], 1, 1) * ones).reshape(w.shape)
        return s, z
    if wq.axis is not None:
        view = [1] * w.dim()
        view[wq.axis] = -1
        return s.reshape(view).expand_as(w), z.reshape(view).expand_as(w)
    return s.reshape(()).expand_as(w), z.reshape(()).expand_as(w)


def _outputs(w: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    groups = cols.shape[0]
    return torch.bmm(w.reshape(groups, w.shape[0] // groups, -1), cols)


def adaround_layer(
    layer: QuantLayer,
    cols: torch.Tensor,
    *,
    iterations: int = 300,
    lr: float = 1e-2,
    reg: float = 0.01,
    warmup: float = 0.2,
) -> tuple[float, float]:
    """Learn the rounding of ``layer``'s weights from sampled input columns (in place).

    Args:
        layer: A quantized layer with float weights whose weight quantizer has
            its scale (it is frozen here: the chosen codes need it unchanged).
        cols: Input columns from :func:`sample_columns`.
        iterations: Adam steps.
        lr: Adam's learning rate.
        reg: Weight of the rounding regulariser relative to the output error
            (normalised by the float output's mean square).
        warmup: Fraction of the steps without the regulariser.

    Returns:
        The output mean squared error (on ``cols``) of nearest rounding and of
        the rounding kept. When the learned rounding is not better the weight
        is left as it was.
    """
    weight, w, s, z = float_weight(layer, "adaptive rounding")
    wq = layer.weight_quant
    with torch.no_grad():
        lo, hi = wq.qmin - z, wq.qmax - z
        ref = _outputs(w, cols)
        norm = float(ref.pow(2).mean().clamp_min(1e-30))
        nearest = torch.clamp(torch.round(w / s), lo, hi)
        err_nearest = float((_outputs(nearest * s, cols) - ref).pow(2).mean())
        floor = torch.floor(w / s)
        rest = (w / s - floor).clamp(1e-4, 1 - 1e-4)
        v0 = -torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)
    v = v0.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    start = int(warmup * iterations)
    with torch.enable_grad():
        for step in range(iterations):
            h = torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)
            soft = torch.clamp(floor + h, lo, hi) * s
            loss = (_outputs(soft, cols) - ref).pow(2).mean() / norm
            if step >= start:
                t = (step - start) / max(1, iterations - start)
                beta = 2 + 18 * 0.5 * (1 + math.cos(math.pi * t))  # 20 -> 2
                loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).mean()
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
    with torch.no_grad():
        up = (torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA) >= 0.5
        codes = torch.clamp(floor + up.float(), lo, hi)
        err = float((_outputs(codes * s, cols) - ref).pow(2).mean())
        if err >= err_nearest:
            return err_nearest, err_nearest
        weight.copy_((codes * s).to(weight.dtype))
        wq.mode = "fixed"  # the scale the codes were chosen for
        layer._cache = None
    return err_nearest, err


def adaround_model(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    progress: bool,
    max_samples: int | None,
    *,
    positions: int = 2048,
    iterations: int = 300,
) -> dict[str, torch.Tensor]:
    """Adaptive rounding of every supported quantized layer of a calibrated model (in place).

    One pass over ``data`` samples each layer's inputs (through the model as
    quantized so far), then each layer learns its rounding on its own sample.

    Returns:
        The float weights before rounding, by layer name, for bias correction
        to measure the weight error against.
    """
    layers = {n: m for n, m in quant_layers(model).items() if _supported(m)}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    gens = {n: torch.Generator().manual_seed(i) for i, n in enumerate(layers)}

    def visit(name: str, layer: QuantLayer, x: torch.Tensor) -> None:
        have = sum(c.shape[-1] for c in samples[name])
        if have < positions:
            samples[name].append(sample_columns(layer, x, positions - have, gens[name]))

    run_with_inputs(model, layers, data, max_samples, "adaptive rounding", visit)
    originals: dict[str, torch.Tensor] = {}
    from tqdm.auto import tqdm

    for name in tqdm(list(layers), desc="adaptive rounding", disable=not progress):
        if not samples[name]:
            continue
        layer = layers[name]
        if layer.weight is None:  # pragma: no cover - _supported checked it
            continue
        before = layer.weight.detach().clone()
        cols = torch.cat(samples[name], dim=-1)
        samples[name] = []
        e0, e1 = adaround_layer(layer, cols, iterations=iterations)
        if e1 < e0:
            originals[name] = before
    return originals
