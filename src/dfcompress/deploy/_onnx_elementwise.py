"""Round the operators between convolutions as ONNX Runtime's integer kernels do.

ONNX Runtime has integer kernels for the cheap operators between two convolutions
(QLinearSigmoid, QLinearMul, QLinearAdd, QLinearGlobalAveragePool,
QLinearAveragePool) and runs one wherever the file holds ``DequantizeLinear -> op ->
QuantizeLinear``. Kept float, each such operator costs a dequantization, a float
pass and a quantization, and on SiLU / squeeze-and-excitation networks (every
activation is ``x * sigmoid(x)``, every block has a gate) the int8 file ran slower
than the float one.

:func:`round_elementwise` gives each such operator of the ``"onnxruntime"`` target's
eager model a uint8 output quantizer whose range is observed on the calibration
data (a sigmoid's too: its outputs rarely span [0, 1], and QLinearSigmoid takes any
output range).
The operators are found while the model runs, whatever module or function calls
them: a :class:`~torch.overrides.TorchFunctionMode`, entered and left by two hooks
on the root module, sees each call of ``torch.sigmoid`` / ``F.silu`` (computed as
``x * sigmoid(x)``, as the ONNX file writes it) / ``*`` / ``+`` /
``F.adaptive_avg_pool2d(x, 1)`` / ``F.avg_pool2d`` whose tensor inputs are all
int8 codes, and rounds its output with the quantizer the calling module holds for
that call (:class:`ElementwiseRounding`, the module's ``dfc_round`` child, in call
order). The rounding is :func:`torch.fake_quantize_per_tensor_affine`, which the ONNX
exporter writes as the QuantizeLinear/DequantizeLinear pair ONNX Runtime fuses, so
the file rounds where the eager model rounds, with its ranges.

Int8 codes are the outputs of quantized layers and of operators rounded here;
reshapes, flattening and dropout keep them codes. A ReLU or max pool of codes is
still on its input's grid but is not a dequantized tensor in the file: an
operator reading one first re-marks it with its input's scale (exact: no value
changes), so the file dequantizes it where ONNX Runtime looks for it; a ReLU of
codes that cannot be negative (zero point at the lowest code, as a range tied to a
ReLU's reader has) changes nothing and is dropped from the file
(:func:`dfcompress.deploy._onnx_chain.drop_identity_relu`), so it stays a
dequantized tensor. Operators inside dfcompress's quantized layers are left alone.

A rounded output read directly by a quantized layer takes that layer's input range
(:func:`_tie_to_layers`): the two roundings are then one, in the model and in the
file (whose exporter drops the repeated pair). An operator's output read by ReLUs
only (a residual sum before the global pool, say) keeps the top of its range and
starts it at 0 (:func:`_clamp_relu_only`): its codes then cannot be negative, the
ReLU is a no-op dropped from the file, and no float ReLU is left between the two
integer kernels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from dfcompress._rebuild import register_module
from dfcompress.errors import DfcompressError
from dfcompress.quant.config import IntQuant, config_from_dict, config_to_dict
from dfcompress.quant.fake_quantizer import FakeQuantizer

__all__ = ["ElementwiseRounding", "has_rounding", "install", "round_elementwise"]

CHILD = "dfc_round"
"""Name of the :class:`ElementwiseRounding` child of each module calling such operators."""

_Fn = Callable[..., Any]
_SIGMOID: frozenset[_Fn] = frozenset({torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid})
_SILU: frozenset[_Fn] = frozenset({F.silu})
_MUL: frozenset[_Fn] = frozenset(
    {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
)
_ADD: frozenset[_Fn] = frozenset(
    {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
)
_IADD: frozenset[_Fn] = frozenset({torch.Tensor.__iadd__})
_GLOBAL_POOL: frozenset[_Fn] = frozenset({F.adaptive_avg_pool2d})
_AVG_POOL: frozenset[_Fn] = frozenset({F.avg_pool2d})
#: keep a tensor's codes (same values, same quantizer)
_SAME: frozenset[_Fn] = frozenset(
    {
        torch.flatten,
        torch.Tensor.flatten,
        torch.reshape,
        torch.Tensor.reshape,
        torch.Tensor.view,
        torch.squeeze,
        torch.Tensor.squeeze,
        torch.unsqueeze,
        torch.Tensor.unsqueeze,
        F.dropout,
    }
)
_RELU: frozenset[_Fn] = frozenset(
    {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_}
)
_RELU_INPLACE: frozenset[_Fn] = frozenset({torch.relu_, torch.Tensor.relu_})
#: keep a tensor on its grid (a subset of its codes), not dequantized in the file
_ON_GRID: frozenset[_Fn] = _RELU | {F.max_pool2d}

#: The kinds of rounded operator, by the ONNX operator that computes them.
KINDS = ("Sigmoid", "Mul", "Add", "GlobalAveragePool", "AveragePool")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@register_module("deploy.elementwise_rounding")
class ElementwiseRounding(nn.Module):
    """Output quantizers of the operators one module calls between convolutions.

    Held as ``dfc_round`` by each module of the ``"onnxruntime"`` target's model that
    calls such operators; ``kinds[i]`` names the operator (its ONNX name) whose
    output ``quantizers[i]`` rounds, in the module's call order. The hooks
    :func:`install` puts on the model's root use them at every forward.
    """

    dfc_added_as = CHILD

    def __init__(self, config: IntQuant, kinds: Sequence[str] = ()) -> None:
        super().__init__()
        for k in kinds:
            if k not in KINDS:
                raise DfcompressError(f"kind={k!r} is not one of {', '.join(KINDS)}")
        self.config = config
        self.kinds = list(kinds)
        self.quantizers = nn.ModuleList([FakeQuantizer(config, (), mode="fixed") for _ in kinds])

    def add(self, kind: str) -> FakeQuantizer:
        """A new (observing) quantizer for the module's next operator."""
        fq = FakeQuantizer(self.config, (), mode="observe")
        self.kinds.append(kind)
        self.quantizers.append(fq)
        return fq

    def extra_repr(self) -> str:
        return ", ".join(self.kinds)

    def dfc_spec(self) -> dict[str, Any]:
        """Constructor arguments (JSON) for :func:`dfcompress.load`."""
        return {"config": config_to_dict(self.config), "kinds": list(self.kinds)}

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> ElementwiseRounding:
        """Empty fixed quantizers for the operators ``spec`` names."""
        config = config_from_dict(spec["config"])
        kinds = spec["kinds"]
        if not isinstance(config, IntQuant) or not isinstance(kinds, list):
            raise DfcompressError(f"spec={spec!r} is not an elementwise rounding")
        return cls(config, kinds)


_Coded = tuple[torch.Tensor, FakeQuantizer, bool]  # tensor, its quantizer, dequantized in file


class _Rounding(TorchFunctionMode):
    """Rounds the eligible operators of one forward (see the module docstring)."""

    def __init__(self, config: IntQuant | None) -> None:
        super().__init__()
        self.config = config  # set while calibrating: quantizers are created on first use
        self.stack: list[nn.Module] = []
        self.counts: dict[int, int] = {}
        self.inside = 0  # depth inside dfcompress's quantized layers
        self.coded: dict[int, _Coded] = {}  # kept alive: ids are reused otherwise
        self.reads: list[tuple[FakeQuantizer, nn.Module]] = []  # rounded output -> layer
        # while tying: what reads each rounded output ("relu" or "other"), by tensor id
        self.uses: dict[int, set[str]] | None = None
        self.rounded: list[tuple[torch.Tensor, FakeQuantizer]] = []

    def mark(self, t: Any, fq: FakeQuantizer, dequantized: bool = True) -> None:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            self.coded[id(t)] = (t, fq, dequantized)

    def code_of(self, t: Any) -> _Coded | None:
        c = self.coded.get(id(t)) if isinstance(t, torch.Tensor) else None
        return c if c is not None and c[0] is t else None

    def _quantizer(self, kind: str) -> FakeQuantizer | None:
        owner = self.stack[-1] if self.stack else None
        if owner is None or isinstance(owner, _CONTAINERS):
            return None
        i = self.counts.get(id(owner), 0)
        self.counts[id(owner)] = i + 1
        held = owner._modules.get(CHILD)
        if self.config is not None:  # calibrating
            if held is None:
                held = ElementwiseRounding(self.config)
                owner.add_module(CHILD, held)
            assert isinstance(held, ElementwiseRounding)
            if i == len(held.kinds):
                return held.add(kind)
        if not isinstance(held, ElementwiseRounding) or i >= len(held.kinds):
            return None  # not seen while calibrating: left float, as in the file
        if held.kinds[i] != kind:
            raise DfcompressError(
                f"{type(owner).__name__}'s operators between convolutions changed since "
                f"calibration: its call {i} is a {kind}, calibrated as a {held.kinds[i]}; "
                "the 'onnxruntime' target needs the same operators at every forward"
            )
        q = held.quantizers[i]
        assert isinstance(q, FakeQuantizer)
        return q

    def note_use(self, t: Any, how: str) -> None:
        """Record that ``t`` (if a coded tensor) is read ``how`` (while tying)."""
        if self.uses is not None and self.code_of(t) is not None:
            self.uses.setdefault(id(t), set()).add(how)

    def _dequantized(self, t: Any) -> Any:
        """``t`` as the file's DequantizeLinear output (a no-op on its values)."""
        c = self.code_of(t)
        if c is None or c[2] or c[1].mode != "fixed":
            return t
        fq = c[1]
        y = torch.fake_quantize_per_tensor_affine(
            t, float(fq.scale), int(fq.zero_point_int32()), fq.qmin, fq.qmax
        )
        self.mark(y, fq)
        return y

    def __torch_function__(
        self, func: _Fn, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        # The mode does not see the operators its own handler calls.
        kwargs = kwargs or {}
        if self.inside:
            return func(*args, **kwargs)
        if self.uses is not None:
            inplace = func in _RELU_INPLACE or kwargs.get("inplace") is True
            inplace = inplace or (len(args) > 1 and args[1] is True)
            how = "relu" if func in _RELU and not inplace else "other"
            for a in (*args, *kwargs.values()):
                for t in a if isinstance(a, (list, tuple)) else (a,):
                    self.note_use(t, how)
        if func in _SAME or func in _ON_GRID:
            out = func(*args, **kwargs)
            c = self.code_of(args[0]) if args else None
            if c is not None:
                self.mark(out, c[1], c[2] and (func in _SAME or _relu_of_nonnegative(func, c[1])))
            return out
        kind = self._kind(func, args, kwargs)
        fq = self._quantizer("Sigmoid" if kind == "SiLU" else kind) if kind else None
        if kind is None or fq is None:
            return func(*args, **kwargs)
        args = [self._dequantized(a) for a in args]
        if kind == "SiLU":  # as the ONNX file writes it: Mul(x, Sigmoid(x))
            s = self._round(fq, torch.sigmoid(args[0]))
            mul = self._quantizer("Mul")
            return torch.mul(args[0], s) if mul is None else self._round(mul, torch.mul(args[0], s))
        if func in _IADD:  # ``a += b``: the name is rebound to the rounded sum
            return self._round(fq, torch.add(args[0], args[1]))
        return self._round(fq, func(*args, **kwargs))

    def _round(self, fq: FakeQuantizer, out: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = fq(out)
        self.mark(y, fq)
        if self.uses is not None:
            self.rounded.append((y, fq))
        return y

    def _kind(self, func: _Fn, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        coded = self.code_of
        if func in _SIGMOID and not kwargs and len(args) == 1:
            return "Sigmoid" if coded(args[0]) else None
        if func in _SILU and len(args) == 1 and not kwargs.get("inplace", False):
            return "SiLU" if coded(args[0]) else None
        if func in _MUL or func in _ADD or func in _IADD:
            if kwargs or len(args) != 2 or not all(coded(a) for a in args):
                return None
            return "Mul" if func in _MUL else "Add"
        if func in _GLOBAL_POOL and len(args) + len(kwargs) == 2 and coded(args[0]):
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            return "GlobalAveragePool" if size in (1, (1, 1), [1, 1]) else None
        if func in _AVG_POOL and args and coded(args[0]):
            return "AveragePool"
        return None


def _relu_of_nonnegative(func: _Fn, fq: FakeQuantizer) -> bool:
    """A ReLU of codes whose least value is 0 (zero point at the lowest code): a no-op,
    which the exporter drops from the file (so the codes stay dequantized there)."""
    if func in _RELU and fq.mode == "fixed":
        z = fq.zero_point_int32()
        return z.numel() == 1 and int(z) == fq.qmin
    return False


def _layer_output(m: nn.Module) -> FakeQuantizer | None:
    """The quantizer rounding a quantized layer's output to codes, if any."""
    from dfcompress.models._binary import Int8BinaryConv2d
    from dfcompress.quant.modules import QuantLayer

    q: nn.Module | None = m.output_quant if isinstance(m, QuantLayer) else None
    q = m.output if isinstance(m, Int8BinaryConv2d) else q
    return q if isinstance(q, FakeQuantizer) and q.mode == "fixed" else None


def _is_quantized(m: nn.Module) -> bool:
    from dfcompress.models._binary import Int8BinaryConv2d
    from dfcompress.quant.modules import QuantLayer

    return isinstance(m, (QuantLayer, Int8BinaryConv2d, FakeQuantizer, ElementwiseRounding))


def _run_with(model: nn.Module, mode: _Rounding) -> list[Any]:
    """Hooks that keep ``mode``'s module stack and codes during one forward."""
    hooks = []
    for m in model.modules():
        if m is model:
            continue
        if _is_quantized(m):

            def enter_layer(m: nn.Module, args: Any) -> None:
                if not mode.inside and args:
                    mode.note_use(args[0], "other")
                    c = mode.code_of(args[0])
                    if c is not None and getattr(m, "input_quant", None) is not None:
                        mode.reads.append((c[1], m))
                mode.inside += 1

            def leave_layer(m: nn.Module, args: Any, out: Any) -> None:
                mode.inside -= 1
                q = _layer_output(m)
                if q is not None and not mode.inside:
                    mode.mark(out, q)

            hooks.append(m.register_forward_pre_hook(enter_layer))
            hooks.append(m.register_forward_hook(leave_layer, always_call=True))
        else:

            def push(m: nn.Module, args: Any) -> None:
                mode.stack.append(m)

            def pop(m: nn.Module, args: Any, out: Any) -> None:
                if mode.stack and mode.stack[-1] is m:
                    mode.stack.pop()

            hooks.append(m.register_forward_pre_hook(push))
            hooks.append(m.register_forward_hook(pop, always_call=True))
    return hooks


_ACTIVE = threading.local()  # id(root) -> (mode, hooks) of this thread's running forwards


def _active() -> dict[int, tuple[_Rounding, list[Any]]]:
    running: dict[int, tuple[_Rounding, list[Any]]] | None = getattr(_ACTIVE, "running", None)
    if running is None:
        running = _ACTIVE.running = {}
    return running


def _enter(module: nn.Module, args: Any) -> None:
    if id(module) in _active():
        return  # called again from inside its own forward
    config = module.__dict__.get("_dfc_calibrating")
    mode = _Rounding(config if isinstance(config, IntQuant) else None)
    reads = module.__dict__.get("_dfc_reads")
    if isinstance(reads, list):
        mode.reads = reads  # the readers of rounded outputs are wanted (tying)
        mode.uses = {}
        module.__dict__["_dfc_mode"] = mode  # read back by the tying pass
    hooks = _run_with(module, mode)
    mode.stack.append(module)  # the root's own hooks are already past
    mode.__enter__()  # type: ignore[no-untyped-call]
    _active()[id(module)] = (mode, hooks)


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    state = _active().pop(id(module), None)
    if state is None:
        return
    mode, hooks = state
    mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
    for h in hooks:
        h.remove()


def install(model: nn.Module) -> None:
    """Put on ``model`` the two hooks that make its ``dfc_round`` quantizers round."""
    if any(h is _enter for h in model._forward_pre_hooks.values()):
        return
    model.register_forward_pre_hook(_enter)
    model.register_forward_hook(_exit, always_call=True)


def has_rounding(model: nn.Module) -> bool:
    """Whether any module of ``model`` holds elementwise output quantizers."""
    return any(isinstance(m, ElementwiseRounding) for m in model.modules())


@torch.no_grad()
def round_elementwise(
    model: nn.Module, data: Sequence[torch.Tensor], config: IntQuant, probe: torch.Tensor
) -> int:
    """Give ``model``'s operators between convolutions calibrated uint8 output quantizers.

    ``data`` calibrates the ranges (``config``'s observer);
    ``probe`` (one input) finds the outputs read directly by a quantized layer,
    which take that layer's input range. The model rounds them at every forward
    from now on (also after :func:`copy.deepcopy` and :func:`dfcompress.load`).
    Returns the number of operators rounded.
    """
    install(model)
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), probe).device
    model.__dict__["_dfc_calibrating"] = config
    try:
        for x in data:
            model(x.to(device))
    finally:
        del model.__dict__["_dfc_calibrating"]
    made = [m for m in model.modules() if isinstance(m, ElementwiseRounding)]
    for held in made:
        for q in held.quantizers:
            assert isinstance(q, FakeQuantizer)
            q.freeze()
    _tie_to_layers(model, probe.to(device))
    model.train(was_training)
    return sum(len(h.kinds) for h in made)


def _tie_to_layers(model: nn.Module, probe: torch.Tensor) -> int:
    """A rounded output whose reader is a quantized layer takes that layer's input range.

    Rounded outputs are the operators' and the quantized layers' (whose readers
    :func:`~dfcompress.deploy._onnx_quant.tie_requantization` finds through
    activation modules only; here also through ``torch.relu`` calls, reshapes and
    dropout).
    """
    from dfcompress.quant.modules import QuantLayer

    reads: list[tuple[FakeQuantizer, nn.Module]] = []
    model.__dict__["_dfc_reads"] = reads
    try:
        out = model(probe)
        mode = model.__dict__.get("_dfc_mode")
    finally:
        del model.__dict__["_dfc_reads"]
        model.__dict__.pop("_dfc_mode", None)
    if isinstance(mode, _Rounding):
        _clamp_relu_only(mode, out)
    held = [m for m in model.modules() if isinstance(m, ElementwiseRounding)]
    ours = {id(q) for m in held for q in m.quantizers}
    ours |= {id(m.output_quant) for m in model.modules() if isinstance(m, QuantLayer)}
    tied = 0
    for out_q, layer in reads:
        in_q = getattr(layer, "input_quant", None)
        if id(out_q) not in ours or not isinstance(in_q, FakeQuantizer):
            continue
        if in_q.mode != "fixed" or in_q.zero_point is None or out_q.zero_point is None:
            continue
        if in_q.scale.numel() != 1 or (in_q.qmin, in_q.qmax) != (out_q.qmin, out_q.qmax):
            continue
        out_q._set(in_q.scale.detach().clone(), in_q.zero_point.detach().clone())
        tied += 1
    return tied


def _clamp_relu_only(mode: _Rounding, output: Any) -> int:
    """Rounded operator outputs that only ReLUs read start their range at 0; the count.

    Their negative codes are all zero after the ReLU, so the range keeps its top and
    drops its negative part (the zero point moves to the lowest code: a finer step
    for what the ReLU keeps). The ReLU is then a no-op on the codes, dropped from the
    file with the other identity ReLUs. Outputs of the model itself are left alone.
    """
    from dfcompress.deploy._artifact import flat_outputs

    uses = mode.uses or {}
    try:
        returned = {id(t) for t in flat_outputs(output)}
    except DfcompressError:  # an output holding other things: clamp nothing
        return 0
    clamped = 0
    for t, fq in mode.rounded:
        if id(t) in returned or uses.get(id(t)) != {"relu"} or fq.mode != "fixed":
            continue
        if fq.scale is None or fq.zero_point is None or fq.scale.numel() != 1:
            continue
        z = int(fq.zero_point_int32())
        top = (fq.qmax - z) * float(fq.scale)
        if z == fq.qmin or top <= 0:
            continue
        scale = torch.full_like(fq.scale, top / (fq.qmax - fq.qmin))
        fq._set(scale, torch.full_like(fq.zero_point, fq.qmin))
        clamped += 1
    return clamped
