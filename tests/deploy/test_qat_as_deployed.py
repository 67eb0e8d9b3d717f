"""QAT trains the model a target's file computes: the returned model is the one trained.

A finetune callback records what the model it trains computes once training ends;
the model ``quantize`` returns must compute that (up to the rounding of the biases
onto the runtime's int32 grid), with bias correction on. Before, the xnnpack target
corrected the biases again after training (against the trained latent weights), and
the onnxruntime target added its roundings (tied requantizations, elementwise
operators, int8 binary convolutions) after training: the returned model then was
not the one trained.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _xnnpack_nets import randomize_bn, resnet_like
from torch import nn

import dfcompress

G = torch.Generator().manual_seed(0)
CALIB = torch.randn(16, 3, 32, 32, generator=G)
TRAIN = [torch.randn(16, 3, 32, 32, generator=G) for _ in range(4)]
TEST = torch.randn(24, 3, 32, 32, generator=G)


def recording_finetune(
    teacher: nn.Module, seen: dict[str, torch.Tensor], lr: float = 1e-3
) -> Callable[[nn.Module, int], None]:
    train = dfcompress.distill_finetune(teacher, TRAIN, epochs=1, lr=lr, progress=False)

    def finetune(model: nn.Module, step: int) -> None:
        with torch.no_grad():
            seen["before"] = model(TEST)
        train(model, step)
        model.eval()
        with torch.no_grad():
            seen["after"] = model(TEST)

    return finetune


@pytest.mark.parametrize("target", [None, "xnnpack", "onnxruntime"])
def test_the_returned_model_is_the_one_qat_trained(target: str | None) -> None:
    if target == "xnnpack":
        pytest.importorskip("executorch")
    net = randomize_bn(resnet_like())
    seen: dict[str, torch.Tensor] = {}
    q = dfcompress.quantize(
        net,
        "int8",
        calibration=CALIB,
        target=target,
        bias_correction=True,
        finetune=recording_finetune(net, seen),
        progress=False,
    )
    if target == "xnnpack":  # corrected before training, not skipped
        assert q.details["bias_corrected_layers"] > 0  # type: ignore[index,operator]
    with torch.no_grad():
        got = q(TEST)
    trained = (seen["after"] - seen["before"]).abs().mean()
    assert trained > 1e-3  # training changed the model
    gap = (got - seen["after"]).abs()
    assert gap.mean() < 0.03 * trained, (gap.mean(), trained)  # was 0.044 and 0.077
