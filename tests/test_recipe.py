"""Recipe strings: parsing, round trips, typo errors, and the compress verb."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import dfcompress.io as dio
from dfcompress.errors import DfcompressError
from dfcompress.recipe import (
    ISE_BITS,
    QUANT_TOKENS,
    MixedPrecision,
    Prune,
    Quantize,
    Recipe,
    compress,
    parse_recipe,
)


@st.composite
def recipe_tokens(draw: st.DrawFn) -> list[str]:
    """A valid combination: at most one quantization token, at most one pNN and one sNN."""
    tokens: list[str] = []
    if draw(st.booleans()):
        tokens.append(f"p{draw(st.integers(1, 99))}")
    if draw(st.booleans()):
        tokens.append(f"s{draw(st.integers(1, 99))}")
    quant = draw(st.sampled_from([None, "ise", *QUANT_TOKENS]))
    if quant == "ise":
        bits = draw(st.lists(st.sampled_from(ISE_BITS), min_size=3, max_size=3))
        tokens.append("ise{}-{}-{}".format(*bits))
    elif quant is not None:
        tokens.append(quant)
    order = draw(st.permutations(tokens))
    return list(order)


@given(recipe_tokens())
def test_parse_and_str_round_trip(tokens: list[str]) -> None:
    text = "-".join(tokens) if tokens else "baseline"
    recipe = parse_recipe(text)
    assert str(recipe) == text
    assert parse_recipe(str(recipe)) == recipe
    assert len(recipe.steps) == len(tokens)


@given(recipe_tokens())
def test_pruning_is_applied_before_quantization(tokens: list[str]) -> None:
    ordered = parse_recipe("-".join(tokens) or "baseline").ordered()
    kinds = [isinstance(s, Prune) for s in ordered]
    assert kinds == sorted(kinds, reverse=True)


def test_ise_token_spans_three_pieces_and_combines() -> None:
    r = parse_recipe("ise8-4-8-p50")
    assert r.steps == (MixedPrecision(8, 4, 8), Prune(50, "l1"))
    assert parse_recipe("s30-ise8-32-16").steps == (
        Prune(30, "structured"),
        MixedPrecision(8, 32, 16),
    )


@pytest.mark.parametrize("text", ["q9", "p50-q7", "int8", "q8_p50", "qq8"])
def test_typo_lists_the_valid_tokens(text: str) -> None:
    with pytest.raises(DfcompressError) as e:
        parse_recipe(text)
    msg = str(e.value)
    assert "unknown recipe token" in msg
    for token in ("q16", "bf16", "q8", "q4", "pNN", "sNN", "iseI-SE-O"):
        assert token in msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("p0", "1..99"),
        ("s100", "1..99"),
        ("ise8-4", "incomplete"),
        ("ise8-3-8", "4, 8, 16 or 32"),
        ("q8-q4", "at most one quantization token"),
        ("p20-p30", "at most one pNN"),
        ("", "empty"),
    ],
)
def test_invalid_recipes_say_what_is_allowed(text: str, fragment: str) -> None:
    with pytest.raises(DfcompressError, match=re.escape(fragment)):
        parse_recipe(text)


def test_step_types_validate() -> None:
    with pytest.raises(DfcompressError, match=r"int4|q16"):
        Quantize("int4")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match=r"1\.\.99"):
        Prune(0)
    assert Recipe(()).ordered() == ()
    assert str(Recipe(())) == "baseline"


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 1),
    )
    return net.eval()


@pytest.mark.parametrize("recipe", ["q16", "q8", "q4", "p50", "s50", "q8-p50", "ise8-4-8"])
def test_compress_never_mutates_the_callers_model(recipe: str) -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(8, 3, 16, 16)
    small = compress(net, recipe, x, progress=False)
    assert small is not net
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert small(x).shape == net(x).shape
    assert small.dfc_history[-1]["recipe"] == recipe


def test_compress_prunes_and_quantizes_what_it_says() -> None:
    net = _net()
    x = torch.rand(16, 3, 16, 16)
    pruned = compress(net, "p50", x, progress=False)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(0.5, abs=0.05)
    channels = compress(net, "s50", x, progress=False)
    assert channels[0].out_channels < net[0].out_channels
    q8 = compress(net, "q8", x, progress=False)
    assert not any(type(m) is nn.Conv2d for m in q8.modules())
    # the quantized model still tracks the float one
    assert torch.corrcoef(torch.stack([q8(x).flatten(), net(x).flatten()]))[0, 1] > 0.9


def test_history_survives_save_and_load(tmp_path: Path) -> None:
    small = compress(_net(), "q4-p50", torch.rand(8, 3, 16, 16), progress=False)
    path = dio.save(small, tmp_path / "small.safetensors")
    manifest = dio.read_manifest(path)
    assert manifest["history"][-1]["recipe"] == "q4-p50"
    assert [s["op"] for s in manifest["history"][-1]["steps"]] == ["prune", "quantize"]
    assert dio.load(path).dfc_history == manifest["history"]


def test_compress_rejects_unknown_options() -> None:
    with pytest.raises(DfcompressError, match="unknown option 'colour'"):
        compress(_net(), "q16", colour="red")


def test_quant_finetune_trains_the_calibrated_model_before_packing() -> None:
    from dfcompress.quant import QuantLayer

    net = _net()
    x = torch.rand(8, 3, 16, 16)
    seen: list[tuple[int, bool, int]] = []

    def finetune(model: nn.Module, step: int) -> None:
        layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
        seen.append((step, all(m.weight is not None for m in layers), len(layers)))
        with torch.no_grad():  # a "training" the packed file must reflect
            layers[-1].weight.mul_(-1)

    # an untrained run with the same weight scales as a trained one (half the code range)
    plain = compress(net, "q8-p50", x, progress=False, quant_finetune=lambda m, s: None)
    tuned = compress(net, "q8-p50", x, progress=False, quant_finetune=finetune)
    # called once, on the calibrated model whose float weights are not yet packed
    assert seen == [(0, True, 3)]
    with torch.no_grad():
        assert torch.allclose(tuned(x), 2 * tuned[-1].bias - plain(x), atol=1e-5)
