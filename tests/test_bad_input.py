"""Every public verb refuses bad input with a DfcompressError, leaves the model alone, never hangs.

One property over all verbs: a valid call with one argument replaced by a bad
value (drawn from the shared strategies) raises :class:`DfcompressError` (no
raw TypeError, RuntimeError, ...), returns within a time limit, and the
caller's model (train mode with a BatchNorm frozen in eval, a frozen
parameter, a user hook) is exactly as before.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dfcompress as dfc
from _guard import Net, snapshot, time_limit, user_model
from dfcompress.errors import DfcompressError
from strategies import (
    BAD_RECIPES,
    BAD_SELECTORS,
    NOT_BOOLS,
    WRONG_TYPES,
    bad_calibration,
    bad_counts,
    bad_fractions,
    bad_models,
)

X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 0, 1])
_TMP = Path(tempfile.mkdtemp(prefix="dfc-bad-input-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)  # one per worker process
_A_FILE = _TMP / "a_file"
_A_FILE.write_bytes(b"")


MODEL = user_model()


def tied_model() -> nn.Module:
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    m[2].weight = m[0].weight
    return m


def _quantizer_calibrate(model: nn.Module, kw: dict[str, Any]) -> Any:
    qz = dfc.Quantizer([("conv", "int8")])
    prepared = qz.prepare(model)
    return qz.calibrate(prepared, **{"data": X, "progress": False, **kw})


VERBS: dict[str, Callable[[nn.Module, dict[str, Any]], Any]] = {
    "quantize": lambda m, kw: dfc.quantize(
        **{"model": m, "config": "int8", "calibration": X, "progress": False, **kw}
    ),
    "Quantizer": lambda m, kw: dfc.Quantizer(**{"rules": [("conv", "int8")], **kw}).prepare(m),
    "Quantizer.calibrate": _quantizer_calibrate,
    "prune": lambda m, kw: dfc.prune(**{"model": m, "amount": 0.5, "progress": False, **kw}),
    "Pruner": lambda m, kw: dfc.Pruner(**kw).apply(m, calibration=X, progress=False),
    "compress": lambda m, kw: dfc.compress(
        **{"model": m, "recipe": "q8-p50", "calibration": X, "progress": False, **kw}
    ),
    "distill": lambda m, kw: dfc.distill(
        **{"student": Net(), "teacher": m, "data": [X], "progress": False, **kw}
    ),
    "distill_finetune": lambda m, kw: dfc.distill_finetune(**{"teacher": m, "data": [X], **kw}),
    "compare": lambda m, kw: dfc.compare(
        **{
            "variants": {"baseline": m},
            "data": (X, Y),
            "progress": False,
            "gradcam": False,
            "measure_repeats": 1,
            **kw,
        }
    ),
    "measure": lambda m, kw: dfc.measure(
        **{"model": m, "example": X, "repeats": 1, "warmup": 0, "memory": False, **kw}
    ),
    "export_onnx": lambda m, kw: dfc.export_onnx(
        **{"model": m, "path": _TMP / "net.onnx", "example": X, **kw}
    ),
    "export_torchscript": lambda m, kw: dfc.export_torchscript(
        **{"model": m, "path": _TMP / "net.pt", "example": X, **kw}
    ),
    "parse_recipe": lambda m, kw: dfc.parse_recipe(**kw),
    "select": lambda m, kw: dfc.select(**{"model": m, **kw}),
    "by_name": lambda m, kw: dfc.by_name(*kw["patterns"]),
    "by_type": lambda m, kw: dfc.by_type(*kw["types"]),
    "where": lambda m, kw: dfc.where(**kw),
    "presets.ise": lambda m, kw: dfc.presets.ise(**{"i": 8, "se": 8, "o": 8, **kw}),
}


def arg(
    name: str, values: st.SearchStrategy[Any], **fixed: Any
) -> st.SearchStrategy[dict[str, Any]]:
    """``{name: value}`` (plus ``fixed`` options the bad value needs to be reached)."""
    return values.map(lambda v: {name: v, **fixed})


NOT_CALLABLE = st.sampled_from([3, "fn", [print]])
BAD_EXAMPLES = st.sampled_from(
    ["x", None, 3, torch.empty(0, 3, 8, 8), torch.tensor(1.0), torch.rand(2, 5, 8, 8)]
)
BAD_PATHS = st.sampled_from([None, 5, b"\0", _TMP, _A_FILE / "net.out", ""])
UNKNOWN_NAME = st.sampled_from(["nope", "", None, 3])

CASES: list[tuple[str, st.SearchStrategy[dict[str, Any]]]] = [
    ("quantize", arg("model", bad_models())),
    ("quantize", arg("config", st.sampled_from(["int3", "foo", 3, object(), [], [("conv",)]]))),
    ("quantize", arg("calibration", bad_calibration())),
    ("quantize", arg("calibration", bad_calibration(), bias_correction=True, fold_bn=False)),
    ("quantize", arg("calibration", bad_calibration(), config="int8-weight", bn_reestimation=True)),
    ("quantize", arg("select", BAD_SELECTORS)),
    ("quantize", arg("max_samples", st.one_of(bad_counts(), st.none()))),
    (
        "quantize",
        arg(
            "input_shape",
            st.sampled_from([(0, 8, 8), "abc", (3, -1), 5, (3, 2**14, 2**14)]),
            calibration=None,
        ),
    ),
    ("quantize", arg("inplace", NOT_BOOLS)),
    ("quantize", arg("pack", NOT_BOOLS)),
    ("quantize", arg("finetune", NOT_CALLABLE)),
    (
        "Quantizer",
        arg(
            "rules",
            st.sampled_from(
                [[], "int8", [("conv",)], [("conv", "int3")], [("nope", "int8")], 5, None]
            ),
        ),
    ),
    ("Quantizer", arg("fold_bn", NOT_BOOLS)),
    ("Quantizer.calibrate", arg("data", bad_calibration())),
    ("Quantizer.calibrate", arg("max_samples", bad_counts())),
    ("prune", arg("model", bad_models())),
    (
        "prune",
        arg(
            "amount",
            st.one_of(
                bad_fractions(), st.sampled_from([{}, {"nope": 0.5}, {"conv": 1.5}, {3: 0.5}])
            ),
        ),
    ),
    ("prune", arg("method", UNKNOWN_NAME)),
    ("prune", arg("scope", UNKNOWN_NAME)),
    ("prune", arg("strategy", UNKNOWN_NAME, sensitivity=True)),
    ("prune", arg("importance", UNKNOWN_NAME, method="structured")),
    ("prune", arg("steps", bad_counts())),
    ("prune", arg("calibration", bad_calibration(), sensitivity=True)),
    ("prune", arg("calibration", bad_calibration(), method="structured", recalibrate_bn=True)),
    ("prune", arg("calibration", bad_calibration(), method="structured", importance="taylor")),
    ("prune", arg("select", BAD_SELECTORS)),
    ("prune", arg("finetune", NOT_CALLABLE)),
    ("prune", arg("schedule", NOT_CALLABLE)),
    ("prune", arg("metric", NOT_CALLABLE, sensitivity=True)),
    (
        "prune",
        arg("example_inputs", BAD_EXAMPLES.filter(lambda v: v is not None), method="structured"),
    ),
    ("prune", arg("model", st.builds(tied_model), method="structured")),
    ("prune", arg("inplace", NOT_BOOLS)),
    ("Pruner", st.sampled_from([{"bogus": 1}, {"config": 5}, {"grid": [0.5, 0.2]}, {"grid": []}])),
    ("Pruner", arg("amount", bad_fractions())),
    ("Pruner", arg("n_samples", bad_counts())),
    ("Pruner", arg("keep_masks", NOT_BOOLS)),
    ("compress", arg("model", bad_models())),
    ("compress", arg("recipe", BAD_RECIPES)),
    ("compress", arg("calibration", bad_calibration())),
    ("compress", arg("calibration", bad_calibration(), recipe="s50")),
    ("compress", arg("bogus", st.just(1))),
    ("compress", arg("max_samples", bad_counts())),
    ("compress", arg("progress", NOT_BOOLS)),
    ("distill", arg("teacher", WRONG_TYPES)),
    ("distill", arg("student", WRONG_TYPES)),
    ("distill", arg("data", bad_calibration())),
    ("distill", arg("epochs", st.sampled_from([0, -1, float("nan"), float("inf"), "1", None]))),
    ("distill", arg("lr", st.sampled_from([0, -1e-3, float("nan"), "1e-3", None]))),
    ("distill", arg("temperature", st.sampled_from([0, -1.0, float("nan"), "2"]))),
    ("distill", arg("alpha", st.sampled_from([1.5, -0.1, float("nan"), "0.5"]))),
    ("distill_finetune", arg("teacher", WRONG_TYPES)),
    ("distill_finetune", arg("data", bad_calibration())),
    ("distill_finetune", arg("bogus", st.just(1))),
    (
        "compare",
        arg(
            "variants",
            st.sampled_from([{}, [MODEL], 5, "x", {"baseline": "q8"}, {"baseline": MODEL, "v": 5}]),
        ),
    ),
    (
        "compare",
        arg(
            "data",
            st.one_of(
                bad_calibration(),
                st.sampled_from(
                    [(X, Y[:2]), (X, Y * 3), [(X, Y), (X[:, :, :6, :6], Y)], (X[:, :2], Y)]
                ),
            ),
        ),
    ),
    ("compare", arg("threshold", st.sampled_from([2.0, -1.0, float("nan"), "0.5", None]))),
    (
        "compare",
        arg("tolerance", st.sampled_from([-1.0, float("nan"), float("inf"), "0.01", None])),
    ),
    ("compare", arg("baseline", UNKNOWN_NAME)),
    ("compare", arg("measure_repeats", bad_counts())),
    ("compare", arg("top_k", bad_counts())),
    ("compare", arg("gradcam", NOT_BOOLS)),
    ("compare", arg("example", BAD_EXAMPLES.filter(lambda v: v is not None))),
    ("compare", arg("calibration", bad_calibration(), variants={"baseline": MODEL, "q8": "q8"})),
    ("measure", arg("model", bad_models(needs_layers=False))),
    ("measure", arg("example", BAD_EXAMPLES.filter(lambda v: v is not None))),
    ("measure", arg("repeats", bad_counts())),
    ("measure", arg("warmup", bad_counts(0))),
    ("measure", arg("threads", bad_counts())),
    ("export_onnx", arg("model", bad_models(needs_layers=False))),
    ("export_onnx", arg("path", BAD_PATHS)),
    ("export_onnx", arg("example", BAD_EXAMPLES)),
    ("export_onnx", arg("opset", st.sampled_from([3, 99, "17", 17.5]))),
    ("export_onnx", arg("calibration", bad_calibration())),
    ("export_onnx", arg("dynamic_batch", NOT_BOOLS)),
    ("export_onnx", arg("exporter", UNKNOWN_NAME)),
    ("export_torchscript", arg("model", bad_models(needs_layers=False))),
    ("export_torchscript", arg("path", BAD_PATHS)),
    ("export_torchscript", arg("example", BAD_EXAMPLES)),
    ("export_torchscript", arg("method", UNKNOWN_NAME)),
    ("parse_recipe", arg("text", BAD_RECIPES)),
    ("select", arg("selector", BAD_SELECTORS)),
    ("select", arg("model", WRONG_TYPES, selector="conv")),
    ("by_name", arg("patterns", st.sampled_from([(), (5,), (None,)]))),
    ("by_type", arg("types", st.sampled_from([(), (int,), ("conv",), (nn.Linear(2, 2),)]))),
    ("where", arg("fn", st.sampled_from([5, "conv", None]))),
    ("presets.ise", arg("i", st.sampled_from([3, 64, "8", None, True]))),
    ("presets.ise", arg("observer", UNKNOWN_NAME)),
]


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.data())
def test_bad_input_raises_dfcompress_error_and_leaves_the_model_alone(data: st.DataObject) -> None:
    verb, case = data.draw(st.sampled_from(CASES), label="case")
    kw = data.draw(case, label="arguments")
    before = snapshot(MODEL)
    with time_limit(20), pytest.raises(DfcompressError):
        VERBS[verb](MODEL, kw)
    assert snapshot(MODEL) == before
