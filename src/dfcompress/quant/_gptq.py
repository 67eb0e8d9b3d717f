"""GPTQ-style rounding: round the weights one input column at a time, correcting the rest.

Nearest rounding minimises each weight's own error; what matters is the
layer's output error ``|(W - Q) x|^2`` on the inputs the layer sees. With
``H = sum x x^T`` over the calibration inputs that error is
``tr((W - Q) H (W - Q)^T)``, and the optimal-brain-quantizer update (Frantar
et al., GPTQ, 2022) lowers it greedily: the columns of ``W`` are rounded in
turn, and the rounding error of each column is spread over the columns not yet
rounded in proportion to the inverse of ``H``, so that they compensate for it.
Columns are visited in decreasing order of ``H``'s diagonal (inputs with the
most energy first), and ``H`` is damped by 1 % of its mean diagonal. Scales and
zero points stay those of nearest rounding; every code lies on the grid, so
packing and export see an ordinary quantized weight.

It needs no training, only ``H`` per layer (per group of a grouped
convolution), accumulated over every output position of the calibration data,
so it takes seconds where adaptive rounding takes minutes. It helps most on
depthwise convolutions, whose nine weights per filter make nearest rounding
shift the filter's response to flat regions (a rounding error of the filter's
sum that the BatchNorm after it amplifies), and at 4 bits.

The result is kept per group only where its output error on the calibration
inputs is lower than nearest rounding's. Layers that adaptive rounding cannot
take (Conv1d/Conv3d, string padding, padding modes other than zeros, layers
with their own forward) keep nearest rounding, as do layers with more than
``max_columns`` inputs per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfcompress.quant._adaround import float_weight
from dfcompress.quant.modules import QuantLayer

__all__ = ["Geometry", "geometry", "gptq_layer", "gptq_round", "gram", "input_gram"]

#: Layers with more inputs per output than this keep nearest rounding (H is columns^2).
MAX_COLUMNS = 8192
_DAMP = 0.01
_BLOCK = 128
_CHUNK = 1 << 24  # elements of unfolded input handled at once


#: A convolution's geometry: ``(kernel_size, stride, padding, dilation, groups)``;
#: None for a linear layer.
Geometry = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], int] | None


def geometry(layer: QuantLayer) -> Geometry:
    """The geometry :func:`gram` needs for ``layer`` (None for a Linear layer)."""
    if layer.layer_kind == "linear":
        return None
    a = layer.args
    return (
        tuple(int(k) for k in a["kernel_size"]),
        tuple(int(s) for s in a["stride"]),
        tuple(int(p) for p in a["padding"]),
        tuple(int(d) for d in a["dilation"]),
        int(a["groups"]),
    )


def _columns(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Every input column a layer's matrix product reads: ``(groups, per_group, n)``."""
    x = x.detach().float()
    if geom is None:
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    kernel, stride, padding, dilation, groups = geom
    # (N, C * kh * kw, L), rows in the weight's (channel, kh, kw) order
    u = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    n, rows, length = u.shape
    u = u.reshape(n, groups, rows // groups, length).permute(1, 2, 0, 3)
    return u.reshape(groups, -1, n * length)


def gram(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """``sum c c^T`` over every input column ``c`` of a layer on ``x``: ``(groups, per, per)``.

    >>> gram(torch.ones(1, 4, 5, 5), ((3, 3), (1, 1), (0, 0), (1, 1), 2)).shape
    torch.Size([2, 18, 18])
    """
    kernel = 1 if geom is None else int(torch.tensor(geom[0]).prod())
    step = max(1, _CHUNK // max(1, x[0].numel() * kernel))
    total: torch.Tensor | None = None
    for i in range(0, x.shape[0], step):
        cols = _columns(x[i : i + step], geom)
        g = torch.bmm(cols, cols.transpose(1, 2)).double()
        total = g if total is None else total + g
    assert total is not None
    return total


def cross_gram(a: torch.Tensor, b: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """``sum c_a c_b^T`` over the matching input columns of a layer on ``a`` and on ``b``.

    >>> x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    >>> g = ((3, 3), (1, 1), (1, 1), (1, 1), 1)
    >>> torch.allclose(cross_gram(x, x, g), gram(x, g))
    True
    """
    kernel = 1 if geom is None else int(torch.tensor(geom[0]).prod())
    step = max(1, _CHUNK // max(1, a[0].numel() * kernel))
    total: torch.Tensor | None = None
    for i in range(0, a.shape[0], step):
        ca, cb = _columns(a[i : i + step], geom), _columns(b[i : i + step], geom)
        g = torch.bmm(ca, cb.transpose(1, 2)).double()
        total = g if total is None else total + g
    assert total is not None
    return total


def input_gram(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """:func:`gram` of ``layer``'s matrix product on its input ``x``."""
    return gram(x, geometry(layer))


def _inverse_factor(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + damping)^-1`` per group, and which groups succeeded."""
    n = h.shape[-1]
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    damp = _DAMP * h.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    ok = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    factor = torch.zeros_like(h)
    for _ in range(4):  # more damping for groups whose factorisation failed
        todo = ~ok
        if not bool(todo.any()):
            break
        hd = h[todo] + damp[todo, None, None] * eye
        low, info = torch.linalg.cholesky_ex(hd)
        inv = torch.cholesky_inverse(low)
        up, info2 = torch.linalg.cholesky_ex(inv, upper=True)
        good = (info == 0) & (info2 == 0) & torch.isfinite(up).flatten(1).all(1)
        idx = todo.nonzero().flatten()
        factor[idx[good]] = up[good]
        ok[idx[good]] = True
        damp = damp * 10
    return factor, ok


def _output_error(delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``tr(delta H delta^T)`` per group, for ``delta`` ``(groups, rows, per)``."""
    return (torch.bmm(delta, h) * delta).sum((1, 2))


def gptq_round(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    h: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ rounding of ``w`` for the input Gram matrix ``h``, group by group.

    Args:
        w: The float weight, ``(out, ...)``; its rows are split evenly into
            ``h.shape[0]`` groups (a grouped convolution's).
        scale, zero_point: Broadcast to ``w``'s shape; codes are
            ``clamp(round(w / scale), qmin - zero_point, qmax - zero_point)``.
        h: ``(groups, per, per)`` from :func:`gram`.

    Returns:
        The rounded weight (on the grid ``codes * scale``, shaped like ``w``:
        GPTQ's in the groups where it lowers the output error, nearest
        rounding's elsewhere), and the output error ``tr(dW H dW^T)`` per group
        of nearest rounding and of the rounding returned.
    """
    groups = h.shape[0]
    rows = w.shape[0] // groups

    def grouped(t: torch.Tensor) -> torch.Tensor:
        return t.expand_as(w).reshape(groups, rows, -1).double()

    wg, sg, zg = grouped(w.float()), grouped(scale.float()), grouped(zero_point.float())
    lo, hi = qmin - zg, qmax - zg
    nearest = torch.clamp(torch.round(wg / sg), lo, hi) * sg
    h = h.double()
    err_nearest = _output_error(wg - nearest, h)

    # Inputs never seen (dead channels, padding only) carry no information: unit diagonal.
    hd = h.clone()
    hd.diagonal(dim1=-2, dim2=-1).masked_fill_(h.diagonal(dim1=-2, dim2=-1) == 0, 1.0)
    order = torch.argsort(hd.diagonal(dim1=-2, dim2=-1), dim=-1, descending=True)

    def cols(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 2, idx[:, None, :].expand(-1, t.shape[1], -1))

    hp = torch.gather(hd, 1, order[:, :, None].expand(-1, -1, hd.shape[2]))
    hp = torch.gather(hp, 2, order[:, None, :].expand(-1, hd.shape[1], -1))
    factor, ok = _inverse_factor(hp)
    work, sp, lop, hip = (cols(t, order) for t in (wg, sg, lo, hi))
    q = torch.zeros_like(work)
    n = work.shape[2]
    for i1 in range(0, n, _BLOCK):
        i2 = min(i1 + _BLOCK, n)
        block = work[:, :, i1:i2].clone()
        errs = torch.zeros_like(block)
        fb = factor[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            col = block[:, :, i]
            qc = (
                torch.clamp(torch.round(col / sp[:, :, j]), lop[:, :, j], hip[:, :, j])
                * sp[:, :, j]
            )
            q[:, :, j] = qc
            e = (col - qc) / fb[:, i, i].clamp_min(1e-30)[:, None]
            block[:, :, i:] -= e[:, :, None] * fb[:, i, i:][:, None, :]
            errs[:, :, i] = e
        work[:, :, i2:] -= torch.bmm(errs, factor[:, i1:i2, i2:])
    q = cols(q, torch.argsort(order, dim=-1))
    err_gptq = _output_error(wg - q, h)
    better = ok & torch.isfinite(err_gptq) & (err_gptq < err_nearest)
    chosen = torch.where(better[:, None, None], q, nearest)
    kept = torch.where(better, err_gptq, err_nearest)
    return chosen.reshape(w.shape).to(w.dtype), err_nearest, kept


def gptq_layer(layer: QuantLayer, h: torch.Tensor) -> tuple[float, float]:
    """Round ``layer``'s weights GPTQ-style for the input Gram matrix ``h`` (in place).

    Args:
        layer: A quantized layer with float weights (its weight quantizer is
            frozen here: the codes are chosen for its scale).
        h: ``(groups, per, per)`` from :func:`input_gram`, summed over the
            calibration data.

    Returns:
        The output error ``tr(dW H dW^T)`` of nearest rounding and of the
        rounding kept (groups where GPTQ does no better keep nearest rounding).
    """
    weight, w, s, z = float_weight(layer, "GPTQ rounding")
    wq = layer.weight_quant
    with torch.no_grad():
        chosen, e_near, e_kept = gptq_round(w, s, z, wq.qmin, wq.qmax, h)
        if bool((e_kept < e_near).any()):
            weight.copy_(chosen.to(weight.dtype))
            wq.mode = "fixed"  # the scale the codes were chosen for
            layer._cache = None
    return float(e_near.sum()), float(e_kept.sum())
