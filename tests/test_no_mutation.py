"""Valid calls leave the caller's model exactly as it was, and valid inputs are not refused.

The model is held as a user holds it mid-training: train mode with one
BatchNorm frozen in eval, a frozen parameter and a forward hook. Generators
serve multi-step recipes; NaN/Inf data is refused by every path that reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import dfcompress as dfc
from _guard import Net, snapshot, user_model
from dfcompress._datafree import synthesize_inputs
from dfcompress.errors import DfcompressError
from dfcompress.prune.sensitivity import cosine_agreement

X = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1] * 4)


def batches() -> Iterator[torch.Tensor]:
    """A one-shot generator of the same data as ``X`` in two batches."""
    yield X[:4]
    yield X[4:]


VALID_CALLS: dict[str, Callable[[nn.Module, Path], Any]] = {
    "quantize": lambda m, _: dfc.quantize(m, "int8", X, progress=False),
    "quantize data-free": lambda m, _: dfc.quantize(
        m, "int8", input_shape=(3, 8, 8), progress=False
    ),
    "quantize bias correction": lambda m, _: dfc.quantize(
        m,
        "int8-weight",
        X,
        bias_correction=True,
        bn_reestimation=True,
        fold_bn=False,
        progress=False,
    ),
    "prune sensitivity": lambda m, _: dfc.prune(
        m, 0.5, sensitivity=True, calibration=X, progress=False
    ),
    "prune structured": lambda m, _: dfc.prune(
        m, 0.5, method="structured", calibration=X, recalibrate_bn=True, progress=False
    ),
    "compress q8-p50": lambda m, _: dfc.compress(m, "q8-p50", X, progress=False),
    "compress s50": lambda m, _: dfc.compress(m, "s50", X, progress=False),
    "measure": lambda m, _: dfc.measure(m, X, repeats=1, warmup=0, memory=False),
    "compare": lambda m, _: dfc.compare(
        {"baseline": m, "q8": "q8"}, (X, Y), progress=False, measure_repeats=1, top_k=1
    ),
    "distill teacher": lambda m, _: dfc.distill(Net(), m, [X], progress=False),
    "distill student": lambda m, _: dfc.distill(m, Net(), [X], progress=False),
    "export_onnx": lambda m, tmp: dfc.export_onnx(m, tmp / "net.onnx", X),
    "export_torchscript": lambda m, tmp: dfc.export_torchscript(m, tmp / "net.pt", X),
}


@pytest.mark.parametrize("verb", list(VALID_CALLS))
def test_a_valid_call_leaves_the_callers_model_alone(verb: str, tmp_path: Path) -> None:
    model = user_model()
    before = snapshot(model)
    VALID_CALLS[verb](model, tmp_path)
    after = snapshot(model)
    assert after["modules"] == before["modules"]  # train/eval flags per module, hooks, attributes
    assert after == before


def tied() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    m[2].weight = m[0].weight
    return m


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: dfc.prune(m, 0.5, progress=False),
        lambda m, x: dfc.prune(m, 0.5, sensitivity=True, calibration=x, progress=False),
        lambda m, x: dfc.quantize(m, "int8", x, progress=False),
        lambda m, x: dfc.compress(m, "q8-p50", x, progress=False),
    ],
    ids=["l1", "l1 sensitivity", "int8", "q8-p50"],
)
def test_tied_weights_are_accepted_where_they_are_kept(call: Callable[..., nn.Module]) -> None:
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    out = call(tied(), x)
    assert torch.isfinite(out(x)).all()


def test_structured_pruning_refuses_tied_weights_it_would_untie() -> None:
    x = torch.randn(16, 8)
    with pytest.raises(DfcompressError, match=r"ties weights between '0' and '2'"):
        dfc.prune(tied(), 0.5, method="structured", example_inputs=x, progress=False)


@pytest.mark.parametrize(
    "run",
    [
        lambda data: dfc.compress(user_model(), "q8-p50", data, progress=False),
        lambda data: dfc.compress(user_model(), "s50-q8", data, progress=False),
        lambda data: dfc.quantize(
            user_model().eval(), "int8", data, bias_correction=True, progress=False
        ),
        lambda data: dfc.compare(
            {"baseline": user_model(), "a": "q8", "b": "p50"},
            (X, Y),
            calibration=data,
            progress=False,
            gradcam=False,
            measure_repeats=1,
        ).summary(),
    ],
    ids=["q8-p50", "s50-q8", "int8 bias correction", "compare two recipes"],
)
def test_a_generator_serves_every_step_like_a_list(run: Callable[[Any], Any]) -> None:
    from_list = run([X[:4], X[4:]])
    from_generator = run(batches())
    if isinstance(from_list, nn.Module):
        assert torch.equal(from_list.eval()(X), from_generator.eval()(X))
    else:
        assert [(r.name, r.auc, r.size_bytes) for r in from_list] == [
            (r.name, r.auc, r.size_bytes) for r in from_generator
        ]


def _nan_data() -> torch.Tensor:
    x = X.clone()
    x[3, 1, 2, 2] = float("nan")
    return x


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: dfc.compress(m, "s50", d, progress=False),
        lambda m, d: dfc.quantize(m, "int8-weight", d, bias_correction=True, progress=False),
        lambda m, d: dfc.quantize(
            m, "int8-weight", d, bn_reestimation=True, fold_bn=False, progress=False
        ),
        lambda m, d: dfc.distill(Net(), m, d, progress=False),
        lambda m, d: dfc.prune(m, 0.5, sensitivity=True, calibration=d, progress=False),
    ],
    ids=["s50", "bias correction", "bn re-estimation", "distill", "sensitivity"],
)
def test_non_finite_data_is_refused_by_every_path_that_reads_it(
    call: Callable[[nn.Module, Any], Any], bad: float
) -> None:
    data = X.clone()
    data[3, 1, 2, 2] = bad
    with pytest.raises(DfcompressError, match="NaN or Inf"):
        call(user_model(), [X[:2], data])


def test_distill_refuses_no_data() -> None:
    with pytest.raises(DfcompressError, match=r"data=\[\] is empty"):
        dfc.distill(Net(), user_model(), [], progress=False)


def test_a_nan_output_scores_worst_in_the_sensitivity_metric() -> None:
    ref = torch.ones(4, 1)
    assert cosine_agreement(torch.full((4, 1), float("nan")), ref) == -1.0


def test_data_free_synthesis_keeps_to_its_time_budget() -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()).eval()
    start = time.perf_counter()
    x = synthesize_inputs(net, (3, 64, 64), 32, steps=500, max_seconds=0.2)
    assert time.perf_counter() - start < 5.0  # 500 full steps take minutes on one core
    assert x.shape[1:] == (3, 64, 64) and 1 <= x.shape[0] <= 32
    assert torch.isfinite(x).all()
