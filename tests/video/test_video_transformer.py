"""A VideoMAE-style video transformer (Hugging Face ``transformers``, the video extra).

A small random-init ``VideoMAEForVideoClassification`` (2 layers, width 64, 4
heads, 32 px, 16-frame clips, tubelet 2) goes through every verb; its output
is a ``ModelOutput`` (a dict with ``.logits``), not a tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import dfcompress as dfc
from dfcompress.evaluate.metrics import summarize
from dfcompress.evaluate.video import video_scores

transformers = pytest.importorskip("transformers")

N_LAYERS = 2
HIDDEN = 64
MLP = 128


def _videomae() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_frames=16,
        tubelet_size=2,
        hidden_size=HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        intermediate_size=MLP,
        num_labels=2,
    )
    model: nn.Module = transformers.VideoMAEForVideoClassification(config)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _videomae()


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 16, 3, 32, 32, generator=gen)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: Any = model(x)
    logits: torch.Tensor = out.logits
    return logits


def _layers(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, nn.Conv3d)) for m in model.modules())


@pytest.mark.parametrize(("config", "action"), [("int8", "int8"), ("int4", "int4")])
def test_quantize_covers_every_linear_and_conv3d(
    model: nn.Module, clips: torch.Tensor, config: str, action: str
) -> None:
    q = dfc.quantize(model, config, calibration=clips, progress=False)
    rows = list(dfc.summary(q))
    assert len(rows) == _layers(model) == 6 * N_LAYERS + 2
    done = [r.name for r in rows if r.action == action]
    assert len(done) >= 0.95 * len(rows), dfc.summary(q).to_markdown()
    ref, out = _logits(model, clips), _logits(q, clips)
    assert float((out - ref).norm() / ref.norm()) < (0.05 if config == "int8" else 0.3)


def test_quantize_without_data_says_to_pass_clips(model: nn.Module) -> None:
    # no BatchNorm statistics to synthesize inputs from: a clear error, not a guess
    with pytest.raises(dfc.DfcompressError, match="pass calibration data"):
        dfc.quantize(model, "int8", progress=False)


def test_l1_prune_reaches_the_amount_and_keeps_the_output_type(
    model: nn.Module, clips: torch.Tensor
) -> None:
    from dfcompress.prune import sparsity

    p = dfc.prune(model, 0.5, progress=False)
    assert sparsity(p) == pytest.approx(0.5, abs=0.01)
    assert all(r.action == "pruned" for r in dfc.summary(p))
    assert _logits(p, clips).shape == (8, 2)


def test_sensitivity_prune_runs_on_clips(model: nn.Module, clips: torch.Tensor) -> None:
    from dfcompress.prune import sparsity

    p = dfc.prune(model, 0.5, sensitivity=True, calibration=clips, progress=False)
    assert sparsity(p) == pytest.approx(0.5, abs=0.02)


def test_structured_prune_removes_head_dims_and_mlp_channels(
    model: nn.Module, clips: torch.Tensor
) -> None:
    before = sum(p.numel() for p in model.parameters())
    p = dfc.prune(model, 0.5, method="structured", example_inputs=clips[:2], progress=False)
    after = sum(p.numel() for p in p.parameters())
    assert after < 0.75 * before
    for layer in p.videomae.encoder.layer:
        attn = layer.attention.attention
        assert attn.query.out_features == attn.key.out_features == attn.value.out_features
        assert attn.query.out_features < HIDDEN
        # the sizes the attention reshapes with follow the pruned layers
        assert attn.all_head_size == attn.query.out_features
        assert attn.attention_head_size * attn.num_attention_heads == attn.all_head_size
        assert layer.intermediate.dense.out_features < MLP
    # the residual width is added to a fixed position table: it stays whole
    assert p.videomae.embeddings.patch_embeddings.projection.out_channels == HIDDEN
    assert _logits(p, clips).shape == (8, 2)


def test_int8_exports_to_onnx_and_agrees(
    model: nn.Module, clips: torch.Tensor, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    q = dfc.quantize(model, "int8", calibration=clips, progress=False)
    result = dfc.export_onnx(q, tmp_path / "videomae.onnx", example=clips[:2])
    assert result.kind == "int8"
    assert result.agreement == 1.0
    assert result.file_bytes < 0.6 * sum(p.numel() * 4 for p in model.parameters())


def test_clip_scores_aggregate_to_video_metrics(model: nn.Module, clips: torch.Tensor) -> None:
    q = dfc.quantize(model, "int8", calibration=clips, progress=False)
    # four videos of two clips each; the first two real, the last two fake
    names = [f"video{v}/clip{c}.mp4" for v in range(4) for c in range(2)]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    per_model = {}
    for name, net in (("float", model), ("int8", q)):
        scores = torch.softmax(_logits(net, clips), dim=1)[:, 1].numpy()
        per_model[name] = video_scores(names, labels, scores)
    v = per_model["float"]
    assert v.names == ["video0", "video1", "video2", "video3"]
    assert v.n_frames.tolist() == [2, 2, 2, 2]
    assert v.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(per_model["int8"].scores, v.scores, atol=0.02)
    metrics = summarize(v.labels, v.scores)
    assert 0.0 <= metrics.auc <= 1.0
