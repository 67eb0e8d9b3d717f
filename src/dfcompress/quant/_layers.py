"""Conv/linear hyper-parameters as JSON and the functional forward they imply."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant.config import IntQuant, PerGroup
from dfcompress.quant.observers import granularity_args

LAYER_TYPES: dict[str, type[nn.Module]] = {
    "conv1d": nn.Conv1d,
    "conv2d": nn.Conv2d,
    "conv3d": nn.Conv3d,
    "linear": nn.Linear,
}


def layer_kind(module: nn.Module) -> str | None:
    """``"conv1d"``/``"conv2d"``/``"conv3d"``/``"linear"`` for a plain layer, else None."""
    for name, cls in LAYER_TYPES.items():
        if isinstance(module, cls):
            return name
    return None


def layer_args(module: nn.Module) -> dict[str, Any]:
    """The JSON-able constructor arguments of a conv or linear layer."""
    if isinstance(module, nn.Linear):
        return {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
    raise DfcompressError(f"{type(module).__name__} is not a Conv1d/2d/3d or Linear layer")


def check_args(kind: str, args: Any) -> None:
    """Refuse ``args`` that :func:`layer_args` of a real layer of ``kind`` would not give.

    A saved file's arguments are rebuilt into the torch layer they describe (on
    the meta device: nothing is allocated), which validates them, and must read
    back unchanged: a missing, extra or mistyped value fails here, not in forward.
    """
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise DfcompressError(f"unknown layer kind {kind!r}: use one of {sorted(LAYER_TYPES)}")
    try:
        with torch.device("meta"):
            again = layer_args(cls(**args))
    except Exception as e:
        raise DfcompressError(f"{kind} arguments {args!r} do not build a layer: {e}") from e
    if again != args:
        raise DfcompressError(f"{kind} arguments {args!r} are not what such a layer has: {again!r}")


def weight_shape(kind: str, args: dict[str, Any]) -> tuple[int, ...]:
    """The weight shape implied by the arguments."""
    if kind == "linear":
        return (int(args["out_features"]), int(args["in_features"]))
    return (
        int(args["out_channels"]),
        int(args["in_channels"]) // int(args["groups"]),
        *(int(k) for k in args["kernel_size"]),
    )


def out_features(kind: str, args: dict[str, Any]) -> int:
    """Output channels/features."""
    return int(args["out_features"] if kind == "linear" else args["out_channels"])


def layer_forward(
    kind: str,
    args: dict[str, Any],
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``F.linear``/``F.conv*`` with the layer's hyper-parameters (padding modes included)."""
    if kind == "linear":
        return F.linear(x, weight, bias)
    conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[kind]
    padding: Any = args["padding"]
    if args["padding_mode"] != "zeros":
        if isinstance(padding, str):
            raise DfcompressError(f"padding={padding!r} with padding_mode is not supported")
        pads = [p for p in reversed(padding) for _ in range(2)]
        x = F.pad(x, pads, mode=args["padding_mode"])
        padding = 0
    elif not isinstance(padding, str):
        padding = tuple(padding)
    return conv(
        x, weight, bias, tuple(args["stride"]), padding, tuple(args["dilation"]), args["groups"]
    )


def mirror_attrs(module: nn.Module, args: dict[str, Any]) -> None:
    """Expose the hyper-parameters as the attributes ``nn.Conv*``/``nn.Linear`` have.

    Model code often reads them (``self.stem.in_channels``), so a wrapper must answer.
    """
    for k, v in args.items():
        if k == "bias":
            continue
        setattr(module, k, tuple(v) if isinstance(v, list) else v)


def resolve_granularity(
    config: IntQuant, shape: tuple[int, ...], name: str = ""
) -> tuple[int | None, int | None]:
    """``(axis, group_size)`` for a weight of ``shape``, applying a PerGroup fallback."""
    g = config.granularity
    if isinstance(g, PerGroup) and shape[1] % g.size:
        if g.fallback is None:
            raise DfcompressError(
                f"PerGroup(size={g.size}) does not divide the input size {shape[1]} of layer "
                f"{name or '?'} (weight {tuple(shape)}): use a divisor of {shape[1]}, or "
                "PerGroup(size, fallback=PerChannel(0))"
            )
        g = g.fallback
    axis, group = granularity_args(g)
    if axis is not None and not -len(shape) <= axis < len(shape):
        raise DfcompressError(f"PerChannel axis={axis} is out of range for weight {tuple(shape)}")
    return (axis % len(shape) if axis is not None else None), group


def qshape(shape: tuple[int, ...], axis: int | None, group: int | None) -> tuple[int, ...]:
    """Shape of the weight scale: ``()``, ``(out,)`` or ``(out, in // group)``."""
    if group is not None:
        return (shape[0], shape[1] // group)
    if axis is not None:
        return (shape[axis],)
    return ()
