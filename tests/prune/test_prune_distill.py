"""Distillation fine-tuning: the loss, the training loop and the schedule callback."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import TinyResNet, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune import distill, distill_finetune, distillation_loss, prune

logits = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-8, 8), min_size=n, max_size=n),
        st.lists(st.floats(-8, 8), min_size=n, max_size=n),
    )
)


@settings(max_examples=50, deadline=None)
@given(pair=logits, classes=st.sampled_from([1, 2]), temp=st.floats(0.5, 4.0))
def test_soft_loss_is_never_below_its_value_at_a_perfect_match(
    pair: tuple[list[float], list[float]], classes: int, temp: float
) -> None:
    s = torch.tensor(pair[0]).reshape(-1, 1).repeat(1, classes)
    t = torch.tensor(pair[1]).reshape(-1, 1).repeat(1, classes)
    if classes == 2:
        s[:, 1] = 0.0
        t[:, 1] = 0.0
    at_match = float(distillation_loss(t, t, temperature=temp, alpha=1.0))
    assert at_match == pytest.approx(0.0, abs=1e-5)
    assert float(distillation_loss(s, t, temperature=temp, alpha=1.0)) >= at_match - 1e-5


def test_label_term_is_used_only_with_labels_and_alpha_below_one() -> None:
    t = torch.tensor([[3.0], [-3.0]])
    s = torch.tensor([[-3.0], [3.0]])
    wrong = torch.tensor([0, 1])
    soft = distillation_loss(s, t, alpha=1.0)
    assert torch.equal(distillation_loss(s, t, wrong, alpha=1.0), soft)
    assert float(distillation_loss(s, t, wrong, alpha=0.0)) < float(soft)  # labels agree with s
    assert float(distillation_loss(s, t, wrong, alpha=0.0)) == pytest.approx(
        float(nn.functional.binary_cross_entropy_with_logits(s[:, 0], wrong.float()))
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"epochs": 0}, "epochs=0"),
        ({"lr": -1.0}, "lr=-1.0"),
    ],
)
def test_bad_options_name_the_value(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        distill(nn.Linear(2, 1), nn.Linear(2, 1), [torch.randn(4, 2)], progress=False, **kwargs)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(DfcompressError, match=r"\(2, 1\).*\(2, 3\)"):
        distillation_loss(torch.zeros(2, 1), torch.zeros(2, 3))


def test_distill_brings_the_student_to_the_teacher_and_leaves_inputs_alone() -> None:
    torch.manual_seed(0)
    teacher = TinyResNet().eval()
    student = prune(
        teacher, 0.5, method="structured", example_inputs=torch.randn(2, 3, 8, 8), progress=False
    )
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))) for _ in range(4)]
    x = torch.cat([b[0] for b in data])
    before_student = copy.deepcopy(student.state_dict())
    before_teacher = copy.deepcopy(teacher.state_dict())
    teacher.train()
    with torch.no_grad():
        gap0 = float((student.eval()(x) - teacher.eval()(x)).abs().mean())
    teacher.train()
    trained = distill(student, teacher, data, epochs=15, lr=3e-3, alpha=1.0, progress=False)
    assert teacher.training  # its mode is restored
    teacher.eval()
    with torch.no_grad():
        gap1 = float((trained(x) - teacher(x)).abs().mean())
    assert gap1 < 0.8 * gap0
    assert not trained.training
    same = [torch.equal(v, student.state_dict()[k]) for k, v in before_student.items()]
    assert all(same)  # the caller's student is untouched (inplace=False)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())


def test_fractional_epochs_run_that_share_of_the_batches() -> None:
    seen = []
    teacher = nn.Linear(2, 1)
    teacher.register_forward_hook(lambda *_: seen.append(1))
    data = [torch.randn(4, 2) for _ in range(8)]
    distill(nn.Linear(2, 1), teacher, data, epochs=0.5, progress=False)
    assert len(seen) == 4
    with pytest.raises(DfcompressError, match="fractional"):
        distill(nn.Linear(2, 1), teacher, iter(data), epochs=0.5, progress=False)


def test_distill_finetune_runs_after_every_structured_step() -> None:
    torch.manual_seed(0)
    net = TinyResNet().eval()
    x = torch.randn(8, 3, 8, 8)
    calls = []
    kd = distill_finetune(net, [x], epochs=1, progress=False)

    def counting(model: nn.Module, step: int) -> None:
        calls.append(step)
        kd(model, step)

    plain = prune(net, 0.5, method="structured", steps=2, example_inputs=x[:2], progress=False)
    tuned = prune(
        net,
        0.5,
        method="structured",
        steps=2,
        finetune=counting,
        example_inputs=x[:2],
        progress=False,
    )
    assert calls == [1, 2]
    assert [p.shape for p in plain.parameters()] == [p.shape for p in tuned.parameters()]
    assert any(
        not torch.equal(a, b) for a, b in zip(plain.parameters(), tuned.parameters(), strict=True)
    )
    with pytest.raises(DfcompressError, match="inplace"):
        distill_finetune(net, [x], inplace=True)


__all__ = ["one_thread"]
