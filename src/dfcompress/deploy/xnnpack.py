"""The ``"xnnpack"`` target: ExecuTorch ``.pte`` files run by the XNNPACK backend.

``quantize(model, "int8", calibration, target="xnnpack")`` exports the model with
``torch.export``, annotates it with ExecuTorch's ``XNNPACKQuantizer`` (int8
weights symmetric per output channel, int8 activations asymmetric per tensor,
requantization at every quantized op's output, conv+ReLU fused, add/mul/concat
with their own ranges), observes the ranges with dfcompress's observers on the
calibration data and converts: the eager model is the graph ExecuTorch lowers,
so it computes what the file computes. ``export`` lowers it (or a float model)
with the XNNPACK partitioner, writes the ``.pte`` and checks it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torchao.quantization.pt2e.constant_fold import constant_fold
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from dfcompress._calibration import calibration_inputs
from dfcompress._datafree import default_input_shape, synthesize_inputs
from dfcompress._summary import warn_float
from dfcompress._validate import check_bool, check_int, check_number
from dfcompress.deploy._artifact import Artifact, check_agreement
from dfcompress.deploy._pt2e_bias import (
    correct_bias,
    float_weights,
    mean_errors,
    shift_biases,
    snap_biases,
)
from dfcompress.deploy._pt2e_gptq import gptq_graph
from dfcompress.deploy._result import eager_outputs
from dfcompress.deploy._ste import drop_straight_through
from dfcompress.deploy._xnnpack_model import XnnpackQuantized
from dfcompress.deploy._xnnpack_plan import make_plan, make_quantizer, summary_rows
from dfcompress.deploy._xnnpack_rewrites import (
    _DQ,
    _QT,
    drop_single_concats,
    float_scalars,
    floor_pools,
    inferred_reshapes,
    keepdim_means,
    pools_as_convolutions,
    unshare_parameters,
)
from dfcompress.deploy._xnnpack_runtime import export_program, lower, runner
from dfcompress.deploy._xnnpack_sign import delegate_signs, float_signs
from dfcompress.errors import DfcompressError
from dfcompress.select import SelectorLike

__all__ = ["export_artifact", "load_artifact", "quantize"]

_log = logging.getLogger("dfcompress")

#: Default tolerances of the agreement check: (atol, rtol) for float and for int8 files.
FLOAT_TOL = (1e-4, 1e-3)
INT8_TOL = (1e-3, 0.1)
MIN_AGREEMENT = 0.995
MAX_BATCH = 16


def _calibration(
    model: nn.Module, calibration: Any, max_samples: int, input_shape: Sequence[int] | None
) -> tuple[list[torch.Tensor], bool]:
    data = calibration_inputs(calibration, limit=max_samples)
    if data is not None:
        return [x.to(torch.float32) for x in data], True
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    n = min(max_samples, 32)
    _log.warning(
        "dfcompress: no calibration data given; calibrating on %d inputs of shape %s "
        "synthesized from the BatchNorm statistics (pass calibration= for better accuracy)",
        n,
        shape,
    )
    return [synthesize_inputs(model, shape, n)], False


def _delegable(graph: fx.GraphModule) -> None:
    """Same values, in ops XNNPACK takes: floor-mode pools, no one-tensor concats,
    global means that keep their dimensions."""
    drop_single_concats(graph)
    floor_pools(graph)
    keepdim_means(graph)
    float_scalars(graph)


def _fold_constants(graph: fx.GraphModule) -> None:
    """Fold weights computed from parameters into constants, registered as parameters.

    PT2E's BatchNorm folding rewrites a conv weight in place and needs a parameter.
    """
    constant_fold(graph)
    # torch.export asserts the dtype of some intermediates; on a folded constant the
    # assertion only keeps the constant (a binary conv's float sign mask) in the file.
    check = torch.ops.aten._assert_tensor_metadata.default
    for node in list(graph.graph.find_nodes(op="call_function", target=check)):
        if all(a.op == "get_attr" for a in node.all_input_nodes):
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.delete_all_unused_submodules()
    used = {str(n.target) for n in graph.graph.find_nodes(op="get_attr")}
    for name in [n for n, _ in graph.named_buffers() if "." not in n and n not in used]:
        delattr(graph, name)
    for name in [n for n, _ in graph.named_parameters() if "." not in n and n not in used]:
        delattr(graph, name)
    graph.recompile()
    for node in graph.graph.find_nodes(op="get_attr"):
        name = str(node.target)
        if "." in name or name in graph._parameters:
            continue
        value = getattr(graph, name, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            delattr(graph, name)
            graph.register_parameter(name, nn.Parameter(value.detach(), requires_grad=False))


def quantize(
    model: nn.Module,
    config: Any = "int8",
    calibration: Iterable[Any] | torch.Tensor | None = None,
    *,
    select: SelectorLike | None = None,
    progress: bool = True,
    max_samples: int = 256,
    input_shape: Sequence[int] | None = None,
    bias_correction: bool | None = None,
    finetune: Callable[[nn.Module, int], None] | None = None,
    rounding: str = "nearest",
) -> nn.Module:
    """An int8 model that computes what XNNPACK computes (``quantize(..., target="xnnpack")``).

    Args:
        model: The float model (not changed); its forward must be ``torch.export``-able.
        config: ``"int8"`` (activation ranges at the 99.99th percentile, weights by
            min/max per channel), an
            ``IntQuant(8, activations=...)`` whose observers are used, or rules whose
            configs are such an ``IntQuant`` or ``Float()``. Equalization (``smoothing``)
            is not applied: it would add ops to the deployed graph.
        calibration: Data for the ranges; None synthesizes inputs from BatchNorm statistics.
        select: Which layers a single config applies to (default: every conv and linear).
        progress: Accepted for the common signature (calibration shows no bar here).
        max_samples: Calibration samples to use.
        input_shape: One sample's shape for synthesized inputs.
        bias_correction: Subtract each int8 layer's mean weight error from its bias
            (one more pass; with ``finetune``, before training). None: the default
            rule of :func:`dfcompress.quantize` (on for post-training quantization
            of a network with depthwise convolutions, from real data).
        finetune: Quantization-aware training: ``finetune(model, 0)`` trains the
            calibrated graph (fake quantizers with the calibrated ranges, kept fixed;
            BatchNorm with its running statistics, dropout off) in place before it
            is converted.
        rounding: ``"nearest"``, or ``"gptq"``: the int8 codes of each conv2d/linear
            layer are chosen GPTQ-style from the inputs the converted graph gives it
            (see :mod:`dfcompress.quant._gptq`); needs ``calibration``.

    Returns:
        An ``nn.Module`` running the converted graph on any batch size; ``summary``
        lists its layers; ``dfcompress.export`` writes its ``.pte``.
    """
    from dfcompress.quant.api import auto_bias_correction, check_calibration_options

    check_bool(progress, "progress")
    if rounding not in ("nearest", "gptq"):
        raise DfcompressError(
            f"rounding={rounding!r} is not available for the xnnpack target: use 'nearest' "
            "or 'gptq'"
        )
    input_shape = check_calibration_options(max_samples, bias_correction, input_shape, finetune)
    plan = make_plan(model, config, select)
    warn_float(
        {n: w for n, w in plan.left_float.items() if w != "kept by a rule"},
        verb="quantize",
        stacklevel=3,
    )
    data, real = _calibration(model, calibration, max_samples, input_shape)
    net = copy.deepcopy(model).eval()
    qat = finetune is not None
    if qat:
        from dfcompress.quant._bnfold import fold_batchnorms

        # QAT trains the folded weights the runtime runs. Left in the graph,
        # BatchNorm would be simulated with each training batch's statistics
        # (demo detector: -0.0037 AUC after one epoch of distillation; folded: -0.0002).
        fold_batchnorms(net, set(plan.int8))
    # PTQ traces the inference forward (a model's no-grad branch, as the file runs it);
    # QAT traces the training forward, and either graph loses its straight-through terms.
    program = export_program(net, data[0], 1 << 20, training=qat)
    graph = program.module()
    drop_straight_through(graph)
    _delegable(graph)
    # Weights computed from parameters (binarized, reparametrized) become constants,
    # so BatchNorm folds into the conv reading them.
    _fold_constants(graph)
    unshare_parameters(graph)
    quantizer = make_quantizer(plan, net, qat=qat)
    prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)
    if qat:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.fake_quantize import disable_fake_quant

        # Calibrate as PTQ does. The QAT graph's BatchNorm starts in training mode:
        # it would normalize each calibration batch by its own statistics (ranges
        # 2-10x PTQ's on a ResNet) and move its running statistics. And each range
        # is observed on the float values, not on values already rounded to the
        # ranges before it as they stood after the batches so far.
        move_exported_model_to_eval(prepared)
        prepared.apply(disable_fake_quant)
    with torch.no_grad(), _ranges_from_inputs(prepared):
        for x in data:
            prepared(x)
    use_bc = (
        auto_bias_correction(model, plan.int8, real, finetune)
        if bias_correction is None
        else bias_correction
    )
    corrected = 0
    if finetune is not None:
        from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_fake_quant

        if use_bc:
            corrected = _correct_before_training(prepared, data)
        prepared.apply(disable_observer)
        prepared.apply(enable_fake_quant)
        with _frozen_statistics(prepared):
            finetune(prepared, 0)
    weights = float_weights(prepared)
    converted: fx.GraphModule = convert_pt2e(prepared)
    rounded = gptq_graph(converted, weights, data) if rounding == "gptq" else 0
    if use_bc and not qat:
        corrected = correct_bias(converted, weights, data)
    # the int32 bias codes the file adds, so the graph adds the same
    snap_biases(converted)
    delegate_signs(converted)
    _break_average_ties(converted)
    pools_as_convolutions(converted)
    inferred_reshapes(converted)
    _split_shared_dequantize(converted)
    details = {
        "activation_observer": plan.act_observer,
        "weight_observer": plan.weight_observer,
        "bias_corrected_layers": corrected,
        "gptq_rounded_layers": rounded,
        "qat": qat,
        "calibration_samples": sum(int(x.shape[0]) for x in data),
    }
    return XnnpackQuantized(converted, summary_rows(model, plan), data[0], details)


def _correct_before_training(prepared: fx.GraphModule, data: Sequence[torch.Tensor]) -> int:
    """Bias correction of a calibrated QAT graph, before it trains; the layers corrected.

    The mean output error of each int8 layer is measured on a converted copy (the
    codes the calibrated ranges give) and subtracted from the prepared graph's bias,
    so QAT starts from the bias-corrected PTQ model, as the eager QAT path does.
    After training the error is not measured again: it would be taken against the
    trained latent weights, which QAT made to be right once rounded, not as they are
    (on the trained BNext, such a correction after one epoch of QAT moved the
    converted graph's AUC from 0.9303 to 0.9274).
    """
    trial: fx.GraphModule = convert_pt2e(copy.deepcopy(prepared))
    return shift_biases(prepared, mean_errors(trial, float_weights(prepared), data))


#: Name of the pass-through module that stands in for a shared observer while calibrating.
_UNOBSERVED = "_dfc_unobserved"


@contextlib.contextmanager
def _ranges_from_inputs(graph: fx.GraphModule) -> Iterator[None]:
    """While calibrating, a range an op shares with its input is observed on the input only.

    ExecuTorch's quantizer gives an average pool, a max pool or a concatenation one
    int8 range for its inputs and its output: the same observer is called at both
    places. The output holds nothing outside its inputs' range, but it counts in
    the observer's statistics: a global average pool's few narrow values halved
    the 99.99th percentile of the SiLU output it pools (a statistic averaged over
    calls), and clipped 12 % of that output in every squeeze-and-excitation block
    of a pruned EfficientNet-B0 (AUC 0.975 -> 0.911). Such output sites run a
    pass-through module during calibration and get their observer back afterwards
    (``convert_pt2e`` writes its range there, and QAT fake-quantizes with it).
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
    from torchao.quantization.pt2e.observer import ObserverBase

    def observer(node: fx.Node) -> int | None:
        if node.op != "call_module" or not isinstance(node.target, str):
            return None
        mod = getattr(graph, node.target, None)
        return id(mod) if isinstance(mod, (ObserverBase, FakeQuantizeBase)) else None

    outputs: list[tuple[fx.Node, str]] = []
    for node in graph.graph.nodes:
        key, src = observer(node), node.args[0] if node.args else None
        if key is None or not isinstance(src, fx.Node) or src.op != "call_function":
            continue
        near = [n for a in src.all_input_nodes for n in (a, *a.users) if n is not node]
        if any(observer(n) == key for n in near):
            outputs.append((node, str(node.target)))
    if not outputs:
        yield
        return
    graph.add_submodule(_UNOBSERVED, nn.Identity())
    for node, _ in outputs:
        node.target = _UNOBSERVED
    graph.recompile()
    try:
        yield
    finally:
        for node, target in outputs:
            node.target = target
        graph.delete_submodule(_UNOBSERVED)
        graph.recompile()


@contextlib.contextmanager
def _frozen_statistics(graph: fx.GraphModule) -> Iterator[None]:
    """Let ``finetune`` call ``graph.train()`` while the graph keeps its eval-mode ops.

    QAT starts from the calibrated model and fine-tunes it briefly: BatchNorm
    keeps the running statistics the ranges were calibrated with (in training
    mode it would normalize each batch by its own and move them; on the trained
    NPR + BNext detector that cost 0.012 AUC after one epoch of distillation,
    against 0.006 with them kept), and dropout stays off.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval

    def keep(self: fx.GraphModule, mode: bool = True) -> fx.GraphModule:
        return self

    move_exported_model_to_eval(graph)
    graph.train = types.MethodType(keep, graph)  # type: ignore[method-assign]
    graph.eval = types.MethodType(keep, graph)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del graph.train, graph.eval


#: Averages whose int8 output XNNPACK requantizes itself (delegated, or at the next
#: partition's input); their exact halves round differently there.
_AVERAGES = (
    torch.ops.aten.mean.dim,
    torch.ops.aten.adaptive_avg_pool2d.default,
    torch.ops.aten.avg_pool2d.default,
)
#: Relative change of an average's output scale that moves exact halves off the tie.
_TIE_NUDGE = 2.0**-10


def _break_average_ties(graph: fx.GraphModule) -> int:
    """Widen by 2**-10 the output scale of averages that share their input's; the count.

    An average of ``n`` int8 codes written with its input's scale and zero point
    lands exactly half-way between two codes for one in ``n`` sums when ``n`` is even
    (global pooling over 8x8: 1.6 % of the outputs). The graph rounds those halves to
    the even code; XNNPACK's own requantization rounds many of them to the other one
    (a conv then an 8x8 mean: 0.9 % of the file's outputs one code away), and a binary
    network's next sign() can flip. With the scale 0.1 % wider no sum lands on a half,
    and every code is the same in the graph and the file (0 of 2,048 differ).
    """
    done = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in _AVERAGES:
            continue
        src, users = node.args[0], list(node.users)
        if not isinstance(src, fx.Node) or src.target is not _DQ or len(users) != 1:
            continue
        q = users[0]
        if q.target is not _QT or tuple(q.args[1:3]) != tuple(src.args[1:3]):
            continue
        _rescale(q, tuple(q.args[1:3]), float(q.args[1]) * (1.0 + _TIE_NUDGE))
        done += 1
    if done:
        graph.recompile()
    return done


def _rescale(q: fx.Node, old: tuple[object, ...], scale: float) -> None:
    """Give ``q``, its dequantizes and the ranges shared downstream the new ``scale``.

    A one-input op that keeps its input's range (view, flatten, max pool) is quantized
    with that same range, and XNNPACK refuses the file where the two differ.
    """
    q.args = (q.args[0], scale, *q.args[2:])
    for d in [u for u in q.users if u.target is _DQ]:
        d.args = (d.args[0], scale, *d.args[2:])
        for op in list(d.users):
            inputs = [a for a in op.all_input_nodes if a.op != "get_attr"]
            nxt = list(op.users)
            if inputs != [d] or len(nxt) != 1 or nxt[0].target is not _QT:
                continue
            if tuple(nxt[0].args[1:3]) == old:
                _rescale(nxt[0], old, scale)


def _split_shared_dequantize(graph: fx.GraphModule) -> int:
    """Give each reader of a per-tensor dequantize its own copy; the count of copies.

    Same arithmetic. ExecuTorch 1.5.1's XNNPACK delegate cannot run a partition whose
    dequantized tensor is both one of its outputs and read inside it (BNext: the
    block input feeds a float PReLU and leaves the partition for an average pool the
    delegate does not take): the file fails to propagate shapes at its first run.
    """
    copies = 0
    for node in list(graph.graph.find_nodes(op="call_function", target=_DQ)):
        for user in list(node.users)[1:]:
            with graph.graph.inserting_after(node):
                twin = graph.graph.node_copy(node)
            user.replace_input_with(node, twin)
            copies += 1
    if copies:
        graph.recompile()
    return copies


def _refuse_plain_quantized(model: nn.Module) -> None:
    from dfcompress.quant.modules import QuantLayer

    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise DfcompressError(
            "this model holds dfcompress's own fake-quantized layers, which XNNPACK cannot "
            "run as int8: quantize the float model with dfcompress.quantize(model, 'int8', "
            "calibration=..., target='xnnpack') and export that"
        )


def _write(
    module: nn.Module, path: Path, example: torch.Tensor, max_batch: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = export_program(module, example, max_batch)
        buffer, details = lower(program)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer)
    except OSError as e:
        raise DfcompressError(f"path={str(path)!r} cannot be written: {e}") from e
    run, largest = runner(path)
    return run, largest, details


def export_artifact(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
    max_batch: int = MAX_BATCH,
) -> Artifact:
    """Write ``model`` as an XNNPACK ``.pte`` at ``path``, run it on ``example``, compare.

    Args:
        model: A float model or one from ``quantize(..., target="xnnpack")``.
        path: The file to write.
        example: An input batch; the agreement check runs on it.
        check: Compare the file's outputs with the eager model's.
        atol: Absolute tolerance (default 1e-4 float, 1e-3 int8).
        rtol: Tolerance relative to the largest output (default 1e-3 float, 0.1 int8:
            XNNPACK's integer requantization rounds some values one step away from the
            graph's float arithmetic, and deep nets carry those steps to the output;
            a ResNet-18-class net at 112 px differed by 4.7 % of its largest output).
        min_agreement: Smallest fraction of equal decisions (default 0.995).
        max_batch: Largest batch the file runs in one call (memory is planned for it);
            ``Artifact.run`` splits bigger batches. A graph XNNPACK cannot run with a
            dynamic batch is written with a static batch of one instead
            (``details["max_batch"] == 1``).
    """
    check_bool(check, "check")
    check_int(max_batch, "max_batch", low=1)
    _refuse_plain_quantized(model)
    quantized = isinstance(model, XnnpackQuantized)
    tol = INT8_TOL if quantized else FLOAT_TOL
    atol = tol[0] if atol is None else check_number(atol, "atol", low=0.0)
    rtol = tol[1] if rtol is None else check_number(rtol, "rtol", low=0.0)
    if min_agreement is None:
        min_agreement = MIN_AGREEMENT
    min_agreement = check_number(min_agreement, "min_agreement", low=0.0)
    if min_agreement > 1:
        raise DfcompressError(f"min_agreement={min_agreement!r} is out of range: use 0..1")
    if isinstance(model, XnnpackQuantized):
        module: nn.Module = model.graph
    else:  # weights computed from parameters (binarized) become constants XNNPACK takes
        module = export_program(copy.deepcopy(model).eval(), example, 1 << 20).module()
        _delegable(module)  # type: ignore[arg-type]
        inferred_reshapes(module)  # type: ignore[arg-type]
        float_signs(module)  # type: ignore[arg-type]
        _fold_constants(module)  # type: ignore[arg-type]
    run, largest, details = _write(module, path, example, max_batch)
    if max_batch > 1:
        one = example[:1].float()
        try:  # some graphs lower with a dynamic batch that XNNPACK cannot reshape
            for n in (1, largest, min(3, largest), 1):  # growing and shrinking
                run(one.expand(n, *one.shape[1:]))
            run(example)
        except Exception as e:
            _log.info("dfcompress: %s runs one sample per call (%s)", path.name, e)
            run, largest, details = _write(module, path, example, 1)
    details.update(quantized=quantized, max_batch=largest)
    agreement = None
    if check:
        # the eager model the caller holds: a quantized model's forward runs XNNPACK's
        # integer arithmetic, which its exported graph (q/dq in float) only approximates
        eager = model if isinstance(model, XnnpackQuantized) else module
        ref = eager_outputs(eager, example.float())
        got = [run(example).numpy()]
        agreement = check_agreement(
            ref, got, atol=atol, rtol=rtol, min_agreement=min_agreement, what=f"{path.name}"
        )
    return Artifact(path, "xnnpack", path.stat().st_size, agreement, details, run)


def load_artifact(path: str | Path) -> Artifact:
    """An existing ``.pte`` file with its ExecuTorch runner (no agreement figures)."""
    p = Path(path)
    if not p.is_file():
        raise DfcompressError(f"path={str(path)!r} is not a file: pass a .pte written by export")
    run, largest = runner(p)
    return Artifact(p, "xnnpack", p.stat().st_size, None, {"max_batch": largest}, run)
