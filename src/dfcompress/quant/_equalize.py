"""Activation equalization: move per-input-channel ranges from activations into weights.

A per-tensor activation scale is set by the widest input channel, so narrow
channels get few codes. For a conv/linear ``y = W x`` and positive factors
``s`` (one per input channel), ``y = (W diag(s)) (x / s)`` exactly; choosing
``s_j = max|x_j| ** alpha / max|W_:j| ** (1 - alpha)`` evens out the channels
the activation quantizer sees, at some cost to the weights (SmoothQuant's
migration strength ``alpha``). When every group of a conv has a single input
channel (a depthwise conv) and weights are quantized per output channel, the
factor of a channel lands on its own output rows, whose scale absorbs it
exactly: there ``alpha = 1`` costs the weights nothing.

:func:`auto_factors` picks ``alpha`` per layer instead (``smoothing="auto"``):
for each strength of a grid it predicts the layer's output error from rounding
noise (per-tensor activation step, per-output-channel weight steps, and each
input channel's mean square) and keeps the lowest. The prediction needs no
forward pass; :func:`search_factors` measures the same error on a sample of
inputs and serves as its reference.

>>> w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
>>> x = torch.tensor([[10.0, 0.5]])
>>> s = smoothing_factors(x.abs().amax(0), weight_column_max(w, 1), 0.5)
>>> ws = scale_weight_columns(w, s, 1)
>>> torch.allclose((x / s) @ ws.T, x @ w.T)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dfcompress.quant.functional import calc_qparams, fake_quantize, int_range

#: The strengths :func:`search_factors` tries (``smoothing="auto"``).
AUTO_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

__all__ = [
    "AUTO_ALPHAS",
    "auto_factors",
    "channel_dim",
    "channel_minmax",
    "predicted_errors",
    "scale_weight_columns",
    "search_factors",
    "smoothing_factors",
    "stored_factors",
    "weight_column_max",
]


def channel_dim(kind: str, x: torch.Tensor) -> int:
    """The input-channel dimension of ``x`` for a layer kind (last for linear, 1 for conv)."""
    return x.dim() - 1 if kind == "linear" else 1


def channel_minmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minimum and maximum of ``x`` along every dimension but ``dim``."""
    dims = tuple(d for d in range(x.dim()) if d != dim)
    x = x.detach()
    if not dims:
        return x, x
    # Two strided reductions in place: cheaper than a channels-last copy for aminmax.
    return x.amin(dim=dims), x.amax(dim=dims)


def weight_column_max(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``max |W|`` over the weights that read each input channel; shape ``(in,)``.

    ``w`` is ``(out, in // groups, *kernel)`` (conv) or ``(out, in)`` (linear).
    """
    out, cin_g = w.shape[0], w.shape[1]
    v = w.detach().abs().reshape(groups, out // groups, cin_g, -1).amax(dim=(1, 3))
    return v.reshape(-1)


def smoothing_factors(x_absmax: torch.Tensor, w_colmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|x| ** alpha / max|W| ** (1 - alpha)``, normalised to a maximum of 1.

    Channels that were never non-zero (or read by all-zero weights) get factor 1.
    """
    eps = torch.finfo(torch.float32).tiny ** 0.25
    xa = x_absmax.to(torch.float32)
    wa = w_colmax.to(torch.float32)
    dead = (xa <= eps) | (wa <= eps)
    s = xa.clamp_min(eps) ** alpha / wa.clamp_min(eps) ** (1.0 - alpha)
    s = torch.where(dead, torch.ones_like(s), s)
    peak = s.max()
    s = s / peak if bool(peak > 0) else torch.ones_like(s)
    # Keep factors within float32's comfortable range, whatever the statistics.
    return s.clamp_min(1e-6)


def scale_weight_columns(w: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    """``W diag(s)``: each weight multiplied by the factor of the input channel it reads."""
    out, cin_g = w.shape[0], w.shape[1]
    shaped = w.reshape(groups, out // groups, cin_g, -1)
    return (shaped * s.to(w.dtype).reshape(groups, 1, cin_g, 1)).reshape(w.shape)


def stored_factors(s: torch.Tensor) -> torch.Tensor:
    """The factors as a layer stores them: at least ``2**-14`` and rounded to float16."""
    return s.clamp_min(2.0**-14).to(torch.float16).to(torch.float32)


def fake_quant_range(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Asymmetric per-tensor fake quantization of ``x`` to ``bits`` over ``[lo, hi]`` (0 kept)."""
    qmin, qmax = int_range(bits, signed=False)
    scale, zero = calc_qparams(torch.tensor(lo), torch.tensor(hi), qmin, qmax, symmetric=False)
    return fake_quantize(x, scale, zero, qmin, qmax)


def fake_quant_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel (dim 0) fake quantization of ``w`` to ``bits``."""
    qmin, qmax = int_range(bits, signed=True)
    m = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale, zero = calc_qparams(-m, m, qmin, qmax, True, restricted=True)  # the layers' own step
    return fake_quantize(w, scale, zero, qmin, qmax, axis=0)


def search_factors(
    x: torch.Tensor,
    w: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    dim: int,
    groups: int = 1,
    alphas: Sequence[float] = AUTO_ALPHAS,
    act_bits: int = 8,
    weight_bits: int = 8,
) -> tuple[torch.Tensor, float, list[float]]:
    """Equalization factors with the strength that minimises this layer's quantized output error.

    For each ``alpha`` the factors of :func:`smoothing_factors` (as stored:
    float16) divide a sample ``x`` of the layer's input, which is fake-quantized
    per tensor (unsigned, over the observed per-channel range ``lo``..``hi``
    divided by the factors); the rescaled weights are fake-quantized per output
    channel. The error is the mean squared difference between
    ``forward(x_q, w_q)`` and the float ``forward(x, w)``.

    Args:
        x: A sample of the layer's calibration input (float).
        w: The float weight, ``(out, in // groups, *kernel)`` or ``(out, in)``.
        lo: Per-input-channel minimum over all calibration inputs.
        hi: Per-input-channel maximum over all calibration inputs.
        forward: The layer without bias: ``forward(input, weight) -> output``.
        dim: The channel dimension of ``x``.
        groups: The conv's groups (1 for linear).
        alphas: The strengths to try (each in [0, 1]).
        act_bits: Activation code width.
        weight_bits: Weight code width.

    Returns:
        The chosen factors ``s`` (normalised, float16-exact), the chosen
        ``alpha`` and the error of every ``alpha`` in ``alphas``. Ties go to
        the earlier ``alpha``.

    >>> w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    >>> x = torch.randn(64, 2) * torch.tensor([50.0, 0.1])
    >>> lo, hi = x.amin(0), x.amax(0)
    >>> s, alpha, errs = search_factors(x, w, lo, hi, lambda a, b: a @ b.T, dim=1)
    >>> errs[list((0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)).index(alpha)] == min(errs)
    True
    """
    x = x.detach().float()
    w = w.detach().float()
    xa = torch.maximum(lo.abs(), hi.abs()).float()
    wa = weight_column_max(w, groups)
    shape = [1] * x.dim()
    shape[dim] = -1
    with torch.no_grad():
        ref = forward(x, w)
        best: tuple[float, torch.Tensor, float] | None = None
        errors: list[float] = []
        for alpha in alphas:
            s = stored_factors(smoothing_factors(xa, wa, float(alpha)))
            xs = x / s.reshape(shape)
            lo_s, hi_s = float((lo.float() / s).min()), float((hi.float() / s).max())
            xq = fake_quant_range(xs, lo_s, hi_s, act_bits)
            wq = fake_quant_rows(scale_weight_columns(w, s, groups), weight_bits)
            err = float((forward(xq, wq) - ref).pow(2).mean())
            errors.append(err)
            if best is None or err < best[0]:
                best = (err, s, float(alpha))
    if best is None:
        raise ValueError("alphas is empty")
    return best[1], best[2], errors


def predicted_errors(
    x_sq: torch.Tensor,
    w: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    groups: int = 1,
    alphas: Sequence[float] = AUTO_ALPHAS,
    act_bits: int = 8,
    weight_bits: int = 8,
) -> list[float]:
    """The output error of each ``alpha`` predicted from statistics, without any forward.

    Rounding noise is modelled as independent and uniform: the activation step
    ``dx`` adds ``dx**2 / 12 * sum(W_s**2)`` to an output's variance and the
    weight step ``dw_o`` of output ``o`` adds ``dw_o**2 / 12 * sum(E[x_s**2])``
    over the inputs it reads (``W_s = W diag(s)``, ``x_s = x / s``).

    Args:
        x_sq: Per-input-channel mean of ``x**2``, shape ``(in,)``.
        w: The float weight.
        lo: Per-input-channel minimum of the input.
        hi: Per-input-channel maximum of the input.
        groups: The conv's groups (1 for linear).
        alphas: The strengths to score.
        act_bits: Activation code width (unsigned, per tensor).
        weight_bits: Weight code width (symmetric, per output channel).

    >>> w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    >>> lo, hi = torch.tensor([-50.0, -0.1]), torch.tensor([50.0, 0.1])
    >>> e = predicted_errors(torch.tensor([400.0, 0.001]), w, lo, hi, alphas=[0.0, 0.5])
    >>> e[1] < e[0]
    True
    """
    w = w.detach().float()
    out, cin_g = w.shape[0], w.shape[1]
    k = w[0, 0].numel()
    xa = torch.maximum(lo.abs(), hi.abs()).float()
    wa = weight_column_max(w, groups)
    errors: list[float] = []
    for alpha in alphas:
        s = stored_factors(smoothing_factors(xa, wa, float(alpha)))
        ws = scale_weight_columns(w, s, groups)
        dx = float((hi.float() / s).max().clamp_min(0) - (lo.float() / s).min().clamp_max(0))
        dx /= 2**act_bits - 1
        # the weight quantizer's step: max|w| over qmax (127 at 8 bits)
        dw = ws.abs().reshape(out, -1).amax(dim=1) / (2 ** (weight_bits - 1) - 1)
        xs = (x_sq.float() / s**2).reshape(groups, cin_g).sum(dim=1)
        xs = xs.repeat_interleave(out // groups) * k
        act_term = dx**2 * ws.pow(2).reshape(out, -1).sum(dim=1)
        errors.append(float((act_term + dw.pow(2) * xs).mean() / 12.0))
    return errors


def auto_factors(
    x_sq: torch.Tensor,
    w: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    groups: int = 1,
    alphas: Sequence[float] = AUTO_ALPHAS,
    act_bits: int = 8,
    weight_bits: int = 8,
) -> tuple[torch.Tensor, float]:
    """Factors (as stored) and strength with the lowest :func:`predicted_errors` (``"auto"``).

    Ties go to the earlier ``alpha``.

    >>> w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    >>> lo, hi = torch.tensor([-50.0, -0.1]), torch.tensor([50.0, 0.1])
    >>> s, alpha = auto_factors(torch.tensor([400.0, 0.001]), w, lo, hi)
    >>> alpha > 0.0 and bool(s[1] < s[0])
    True
    """
    errs = predicted_errors(
        x_sq, w, lo, hi, groups=groups, alphas=alphas, act_bits=act_bits, weight_bits=weight_bits
    )
    best = min(range(len(errs)), key=errs.__getitem__)
    alpha = float(alphas[best])
    xa = torch.maximum(lo.abs(), hi.abs())
    return stored_factors(smoothing_factors(xa, weight_column_max(w, groups), alpha)), alpha
