"""The training loop and scoring pass on the proxy task."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dfcompress.data import ProxyConfig, loader, predict, train_detector
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import auc

pytest.importorskip("skimage")

EASY = ProxyConfig(upsamplers=("nearest",), fake_noise=0.0, noise=0.0, blur_p=0.0)


def _tiny(n_logits: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, n_logits),
    )


@pytest.mark.parametrize("n_logits", [1, 2])
def test_training_learns_easy_fakes_and_leaves_input_model(n_logits: int) -> None:
    model = _tiny(n_logits)
    before = copy.deepcopy(model.state_dict())
    train = loader("train", size=32, n=512, batch_size=32, config=EASY)
    trained = train_detector(model, train, epochs=8, lr=5e-3, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    p = predict(trained, loader("val", size=32, n=128, batch_size=64, config=EASY), progress=False)
    assert auc(p.labels, p.scores) > 0.8
    assert p.labels.sum() == 64 and np.all((p.scores >= 0) & (p.scores <= 1))
    assert p.names[0].startswith(("real/", "fake/"))


def test_inplace_training_and_predict_limit() -> None:
    model = _tiny(1)
    out = train_detector(
        model, loader("val", size=32, n=16), epochs=1, inplace=True, progress=False
    )
    assert out is model and not model.training
    model.train()
    p = predict(model, loader("val", size=32, n=20, batch_size=8), limit=10, progress=False)
    assert p.scores.shape == (10,) and len(p.names) == 10
    assert model.training  # flags restored


def test_bad_arguments() -> None:
    with pytest.raises(DfcompressError, match="epochs=0"):
        train_detector(_tiny(1), [], epochs=0)
    with pytest.raises(DfcompressError, match="labels"):
        train_detector(_tiny(1), [torch.zeros(2, 3, 8, 8)], progress=False)
