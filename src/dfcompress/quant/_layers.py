"""Conv/linear hyper-parameters as JSON and the functional forward they imply."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.quant.config import IntQuant, PerGroup
from dfcompress.quant.observers import granularity_args

LAYER_TYPES: dict[str, type[nn.Module]] = {
    "conv1d": nn.Conv1d,
    "conv2d": nn.Conv2d,
    "conv3d": nn.Conv3d,
    "linear": nn.Linear,
}


def layer_kind(module: nn.Module) -> str | None:
    """``"conv1d"``/``"conv2d"``/``"conv3d"``/``"linear"`` for such a layer (or subclass)."""
    for name, cls in LAYER_TYPES.items():
        if isinstance(module, cls):
            return name
    return None


def has_own_forward(module: nn.Module) -> bool:
    """Whether ``module`` is a conv/linear subclass that overrides ``forward``."""
    kind = layer_kind(module)
    return kind is not None and type(module).forward is not LAYER_TYPES[kind].forward


def call_own_forward(
    inner: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Run ``inner``'s own forward with ``weight`` and ``bias`` standing in for its parameters.

    ``inner`` holds no ``weight``/``bias`` parameters (see :func:`detach_parameters`):
    they are set as plain attributes for the call, so its forward (padding and
    all) reads them as it read its parameters. Hooks of ``inner`` do not run.
    """
    d = inner.__dict__
    d["weight"], d["bias"] = weight, bias
    try:
        out: torch.Tensor = inner.forward(x)
    finally:
        d["weight"] = d["bias"] = None
    return out


def detach_parameters(module: nn.Module) -> None:
    """Remove ``weight``/``bias`` from ``module``'s parameters (a wrapper owns them now)."""
    for name in ("weight", "bias"):
        module._parameters.pop(name, None)
        module.__dict__[name] = None


def class_ref(module: nn.Module) -> str:
    """``"package.module:QualName"`` of ``module``'s class (recorded, never imported)."""
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def adopt_own_forward(kind: str, ref: Any, current: nn.Module | None, where: str) -> nn.Module:
    """The constructor's layer ``current`` as a wrapper's ``inner``, if it is of class ``ref``.

    A saved wrapper records the class of the layer whose own forward it runs
    (:func:`class_ref`), never its code. On load the model's constructor has built
    that layer where the wrapper goes; it is reused, without its weight and bias
    (the wrapper owns them), when its class is exactly the recorded one and it is
    a ``kind`` layer with its own forward. Nothing named by the file is imported.

    Raises:
        UnsafeFileError: ``current`` is missing or is not such a layer of class ``ref``.
    """
    found = "nothing" if current is None else repr(class_ref(current))
    if (
        not isinstance(ref, str)
        or current is None
        or class_ref(current) != ref
        or layer_kind(current) != kind
        or not has_own_forward(current)
    ):
        raise UnsafeFileError(
            f"the {where} runs the own forward of {ref!r}, and load reuses the layer the "
            f"model's constructor builds at its path, which is {found}: record the model's "
            "constructor (dfcompress.set_constructor or dfcompress.register_factory) so that "
            "it builds that layer there"
        )
    detach_parameters(current)
    return current


def _probe_input(kind: str, args: dict[str, Any], like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "linear":
        shape: tuple[int, ...] = (2, int(args["in_features"]))
    else:
        ks, st, dil = args["kernel_size"], args["stride"], args["dilation"]
        size = [
            max(8, int(d) * (int(k) - 1) + 1 + 2 * int(s))
            for k, s, d in zip(ks, st, dil, strict=True)
        ]
        shape = (2, int(args["in_channels"]), *size)
    return torch.randn(shape, generator=g).to(device=like.device, dtype=like.dtype)


def reads_own_weight(module: nn.Module) -> bool:
    """Whether a layer's forward computes with its own ``weight`` (and ``bias``).

    A probe: the forward is run on a fixed random input with the parameters as
    they are and with each of them perturbed; both must change the output. A
    forward that fails on the probe, or ignores either parameter, returns False.
    """
    kind = layer_kind(module)
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    if kind is None or not isinstance(w, torch.Tensor):
        return False
    params = module._parameters
    saved = {k: params.get(k) for k in ("weight", "bias")}

    def run(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        params["weight"], params["bias"] = weight, bias  # type: ignore[assignment]
        try:
            out: torch.Tensor = type(module).forward(module, x)
            return out
        finally:
            params.update(saved)

    try:
        x = _probe_input(kind, layer_args(module), w)
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            y = run(w, b)
            bump = (torch.randn(w.shape, generator=g) + 1).to(w)
            if torch.equal(run(w + bump, b), y):
                return False
            if isinstance(b, torch.Tensor) and torch.equal(run(w, b + 1), y):
                return False
    except Exception:  # any failure of the user's forward on the probe: not supported
        return False
    return isinstance(y, torch.Tensor)


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


def float_layer(
    kind: str, args: dict[str, Any], weight: nn.Parameter, bias: nn.Parameter | None
) -> nn.Module:
    """A plain ``nn.Conv*``/``nn.Linear`` with ``args`` holding ``weight`` and ``bias``."""
    layer: nn.Module
    if kind == "linear":
        layer = nn.Linear(
            int(args["in_features"]), int(args["out_features"]), bias=False, device="meta"
        )
    else:
        layer = LAYER_TYPES[kind](
            int(args["in_channels"]),
            int(args["out_channels"]),
            tuple(args["kernel_size"]),
            stride=tuple(args["stride"]),
            padding=args["padding"] if isinstance(args["padding"], str) else tuple(args["padding"]),
            dilation=tuple(args["dilation"]),
            groups=int(args["groups"]),
            bias=False,
            padding_mode=args["padding_mode"],
            device="meta",
        )
    layer.weight = weight
    layer.register_parameter("bias", bias)
    return layer


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
