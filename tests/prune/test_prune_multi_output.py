"""Models with several outputs: the scan scores every output, structured pruning keeps every shape.

A face-detector-like model returns a large box regression and a small
two-logit decision head; judged by its first output alone, the decision head
looked free to prune.
"""

from __future__ import annotations

import copy

import pytest
import torch
from prune_nets import one_thread
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError
from dfcompress.prune import allocate, cosine_agreement, scan
from dfcompress.prune.sensitivity import output_tensors, score_outputs
from dfcompress.prune.structured import prune_channels

__all__ = ["one_thread"]

X = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
GRID = (0.5, 0.9)


class BoxesAndProb(nn.Module):
    """A trunk, a 64-value regression output (first) and a 2-logit decision head (second)."""

    def __init__(self, form: str = "tuple") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
        self.boxes = nn.Linear(16 * 6 * 6, 64)
        self.prob = nn.Linear(16 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> object:
        h = torch.relu(self.trunk(x)).flatten(1)
        boxes, prob = self.boxes(h) * 10, self.prob(h)
        if self.form == "dict":  # keys out of alphabetical order: the scan sorts them
            return {"prob": prob, "boxes": boxes}
        if self.form == "list":
            return [boxes, [prob]]
        return boxes, prob


@dfc.register_factory
def boxes_and_prob(form: str = "tuple") -> nn.Module:
    return dfc.set_constructor(BoxesAndProb(form), boxes_and_prob, form=form)


def _scores_by_hand(net: BoxesAndProb, layer: str, amount: float) -> float:
    """The worst cosine over both outputs with ``layer``'s smallest weights zeroed."""
    pruned = copy.deepcopy(net)
    w = pruned.get_submodule(layer).weight
    with torch.no_grad():
        order = torch.sort(w.abs().flatten(), stable=True).indices
        w.view(-1)[order[: round(amount * w.numel())]] = 0
        ref, out = net(X), pruned(X)
    return min(cosine_agreement(o, r) for o, r in zip(out, ref, strict=True))


def test_the_decision_head_is_scored() -> None:
    net = BoxesAndProb().eval()
    res = scan(net, calibration=X, amounts=GRID, progress=False)
    prob = next(ly for ly in res.layers if ly.name == "prob")
    assert prob.flag == ""  # judged by the first output alone it was "no effect"
    assert prob.scores[-1] == pytest.approx(_scores_by_hand(net, "prob", 0.9), abs=1e-6)
    assert prob.scores[-1] < 0.99
    boxes = next(ly for ly in res.layers if ly.name == "boxes")
    assert boxes.scores[-1] == pytest.approx(_scores_by_hand(net, "boxes", 0.9), abs=1e-6)


def test_the_decision_head_is_not_the_first_layer_cut() -> None:
    res = allocate(scan(BoxesAndProb().eval(), calibration=X, progress=False), 0.5)
    # With the second output unseen, the head scored as free and got the grid's maximum.
    assert res.amounts["prob"] < res.amounts["boxes"]


@pytest.mark.parametrize("form", ["dict", "list"])
def test_dict_and_nested_list_outputs_score_like_the_tuple(form: str) -> None:
    def scores(net: nn.Module) -> list[tuple[float, ...]]:
        return [ly.scores for ly in scan(net, calibration=X, amounts=GRID, progress=False).layers]

    assert scores(BoxesAndProb(form).eval()) == scores(BoxesAndProb().eval())


def test_output_tensors_order_and_refusals() -> None:
    a, b = torch.zeros(2), torch.ones(3)
    assert [t.numel() for t in output_tensors({"z": a, "a": (b, None, 7)})] == [3, 2]
    with pytest.raises(DfcompressError, match="holds no tensor"):
        output_tensors((None, 3))
    with pytest.raises(DfcompressError, match=r"returned 1 output tensors where .* returned 2"):
        score_outputs(cosine_agreement, [a], [a, b])


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_the_distributed_scan_unit_scores_every_output(form: str) -> None:
    """What each Ray task runs (here in this process) gives the local scan's scores."""
    from dfcompress.distributed._scan import _scan_unit
    from dfcompress.distributed._transfer import pack_model

    net = boxes_and_prob(form).eval()
    local = scan(net, calibration=X, amounts=GRID, progress=False)
    blob = pack_model(net, "the model", X[:2])
    unit = _scan_unit(blob, X.numpy(), None, ["boxes", "prob"], list(GRID), None, 1)
    assert unit["baseline"] == local.baseline
    got = {ly.name: list(ly.scores) for ly in local.layers if ly.name in unit["scores"]}
    assert unit["scores"] == got
    assert unit["scores"]["prob"][-1] < 0.99


class BoxesThenProb(nn.Module):
    """Returns boxes, then a two-logit head registered first (so not the ``"head"`` preset)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.prob = nn.Linear(16, 2)
        self.boxes = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).flatten(1)
        return self.boxes(h), self.prob(h)


def test_structured_checks_every_output_and_its_advice_works() -> None:
    net = BoxesThenProb().eval()
    x = X[:2]
    with pytest.raises(DfcompressError) as info:
        prune_channels(net, 0.5, example_inputs=x)
    msg = str(info.value)
    assert "output 1 of 2 from (2, 2) to (2, 1)" in msg  # the first output kept its shape
    assert "ignore=by_name('prob') | 'head'" in msg
    small = prune_channels(net, 0.5, example_inputs=x, ignore=dfc.by_name("prob") | "head")
    assert small.trunk[0].out_channels == 8
    with torch.no_grad():
        assert [t.shape for t in small(x)] == [t.shape for t in net(x)]
    via_verb = dfc.prune(
        net, 0.5, method="structured", ignore=dfc.by_name("prob") | "head", progress=False
    )
    assert via_verb.prob.out_features == 2 and via_verb.boxes.out_features == 4


def test_structured_taylor_importance_on_two_outputs() -> None:
    net = BoxesThenProb().eval()
    small = prune_channels(
        net, 0.5, importance="taylor", calibration=X, ignore=dfc.by_name("prob", "boxes")
    )
    assert small.trunk[0].out_channels == 8
    with torch.no_grad():
        assert [t.shape for t in small(X[:2])] == [(2, 4), (2, 2)]
