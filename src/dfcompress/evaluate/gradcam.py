"""Grad-CAM heat maps of a detector's fake-vs-real evidence, by forward hooks.

The map explains the *log-odds* that a sample is fake: the logit of a
one-logit head, or ``logit[1] - logit[0]`` of a two-logit head. A softmax or
sigmoid output would saturate at confident samples and give near-zero
gradients, i.e. empty maps exactly where the report needs them.

For the chosen layer's activation ``A`` (channels ``c``) and the target ``y``:
``weights_c = mean_hw(dy/dA_c)``, ``cam = relu(sum_c weights_c * A_c)``, upsampled
bilinearly to the input size and scaled to [0, 1] per image. A map with no
variation (all zero after the ReLU, or constant) is returned as zeros and
flagged in :attr:`GradCam.flat` instead of being normalized into noise.

The model is left as it was: hooks are removed, train/eval flags restored,
parameters' ``requires_grad`` and ``.grad`` untouched (gradients are taken
with :func:`torch.autograd.grad` with respect to the activation only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.errors import DfcompressError

__all__ = [
    "GradCam",
    "NoFeatureMapError",
    "Target",
    "default_target_layer",
    "fake_logodds",
    "grad_cam",
]

Target: TypeAlias = "Literal['logodds'] | int | Callable[[torch.Tensor], torch.Tensor]"
"""``"logodds"`` (fake vs real), a class index, or a function output -> one value per sample."""


class GradCam(NamedTuple):
    """Grad-CAM result for a batch.

    Attributes:
        maps: ``[N, H, W]`` float maps in [0, 1] at the input resolution.
        flat: ``[N]`` bool, True where the map had no variation (its row is all 0).
        target: ``[N]`` the explained value per sample (the log-odds by default).
        layer: Name of the layer the map was taken from.
    """

    maps: torch.Tensor
    flat: torch.Tensor
    target: torch.Tensor
    layer: str


def fake_logodds(output: torch.Tensor) -> torch.Tensor:
    """Fake-vs-real log-odds from a detector's raw output (logits, not probabilities).

    One logit per sample (shape ``[N]`` or ``[N, 1]``): the logit itself. Two
    logits (``[N, 2]``, class 1 = fake): ``logit[1] - logit[0]``.

    >>> fake_logodds(torch.tensor([[0.0, 2.0], [1.0, -1.0]])).tolist()
    [2.0, -2.0]
    >>> fake_logodds(torch.tensor([[3.0]])).tolist()
    [3.0]
    """
    if output.dim() == 1:
        return output
    if output.dim() == 2 and output.shape[1] == 1:
        return output[:, 0]
    if output.dim() == 2 and output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    raise DfcompressError(
        f"cannot read fake-vs-real log-odds from an output of shape {tuple(output.shape)}: "
        f"expected [N], [N, 1] or [N, 2] logits (pass target=<class index> or a function)"
    )


def _target_values(output: torch.Tensor, target: Target) -> torch.Tensor:
    if isinstance(target, str):
        if target != "logodds":
            raise DfcompressError(
                f"target={target!r} is not supported: use 'logodds', a class index or a function"
            )
        return fake_logodds(output)
    if isinstance(target, int):
        if output.dim() != 2 or not 0 <= target < output.shape[1]:
            raise DfcompressError(
                f"target={target} is not a class of an output of shape {tuple(output.shape)}"
            )
        return output[:, target]
    values = target(output)
    if values.dim() != 1 or values.shape[0] != output.shape[0]:
        raise DfcompressError(
            f"the target function must return one value per sample, shape "
            f"[{output.shape[0]}]; got {tuple(values.shape)}"
        )
    return values


def _record_4d_outputs(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Run ``model(x)`` and collect every module's 4-D output in completion order."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                seen.append((name, out))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        output = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(output, torch.Tensor):
        raise DfcompressError(
            f"the model returned {type(output).__name__}; grad_cam needs a logits tensor"
        )
    return output, seen


class NoFeatureMapError(DfcompressError):
    """No module of the model produced a 4-D ``[N, C, H, W]`` activation to explain
    (a token model, or an exported graph whose operators are not modules)."""


def _pick_default(seen: list[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor]:
    if not seen:
        raise NoFeatureMapError(
            "no module produced a 4-D [N, C, H, W] activation: pass target_layer= "
            "(models on tokens need a layer whose output is reshaped to a map)"
        )
    spatial = [(n, t) for n, t in seen if t.shape[2] * t.shape[3] > 1]
    # the last spatial activation comes before global pooling; 1x1 outputs are SE
    # branches or pooled features, whose maps carry no location
    return (spatial or seen)[-1]


def default_target_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the layer :func:`grad_cam` uses by default for input ``x``.

    It is the last module, in execution order, whose output is a 4-D
    activation with more than one spatial position: the last conv block (or
    activation) before global pooling.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 1))
    >>> default_target_layer(net, torch.rand(1, 3, 8, 8))
    '1'
    """
    with torch.no_grad():
        _, seen = _record_4d_outputs(model, x)
    return _pick_default(seen)[0]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: str | nn.Module | None = None,
    target: Target = "logodds",
) -> GradCam:
    """Grad-CAM maps of ``x`` (``[N, C, H, W]``) for the fake-vs-real log-odds.

    Args:
        model: The detector; run in eval mode here, its flags restored after.
        x: A batch of inputs.
        target_layer: Module name (as in ``named_modules``) or module whose 4-D
            output is explained; default: see :func:`default_target_layer`.
        target: ``"logodds"`` (default, see :func:`fake_logodds`), a class
            index for multi-class heads, or a function ``output -> [N]``.

    Returns:
        A :class:`GradCam` with ``maps`` ``[N, H, W]`` in [0, 1] and ``flat``.

    Raises:
        DfcompressError: Unknown layer, a layer that did not run or is not 4-D,
            or an output the target cannot read.

    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> cam = grad_cam(net, torch.rand(2, 3, 16, 16))
    >>> cam.maps.shape, cam.layer, bool(cam.maps.max() <= 1)
    (torch.Size([2, 16, 16]), '1', True)
    """
    if x.dim() != 4:
        raise DfcompressError(f"x must be a [N, C, H, W] batch, got shape {tuple(x.shape)}")
    modules = dict(model.named_modules())
    layer_name: str | None
    if target_layer is None or isinstance(target_layer, str):
        layer_name = target_layer
        if layer_name is not None and layer_name not in modules:
            close = [n for n in modules if n.endswith(layer_name.rsplit(".", 1)[-1])][:5]
            raise DfcompressError(
                f"target_layer={layer_name!r} is not a module of the model"
                + (f"; similar names: {close}" if close else "")
            )
    else:
        found = [n for n, m in modules.items() if m is target_layer]
        if not found:
            raise DfcompressError("target_layer is not a module of this model")
        layer_name = found[0]

    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.enable_grad():
            xin = x.detach().clone().requires_grad_(True)
            output, seen = _record_4d_outputs(model, xin)
            if layer_name is None:
                layer_name, act = _pick_default(seen)
            else:
                mine = [t for n, t in seen if n == layer_name]
                if not mine:
                    raise DfcompressError(
                        f"target_layer={layer_name!r} did not produce a 4-D activation "
                        f"[N, C, H, W] during the forward pass"
                    )
                act = mine[-1]
            values = _target_values(output, target)
            (grads,) = torch.autograd.grad(values.sum(), act, allow_unused=True)
    finally:
        for m, was_training in flags.items():
            m.train(was_training)
    if grads is None:
        grads = torch.zeros_like(act)
    with torch.no_grad():
        weights = grads.float().mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act.float()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.amin(dim=(1, 2), keepdim=True)
        hi = cam.amax(dim=(1, 2), keepdim=True)
        span = hi - lo
        flat = (span <= 1e-6 * hi.abs().clamp_min(1e-12)) | (hi <= 0)
        maps = torch.where(flat, torch.zeros_like(cam), (cam - lo) / span.clamp_min(1e-30))
    return GradCam(maps=maps, flat=flat.flatten(), target=values.detach(), layer=layer_name)
