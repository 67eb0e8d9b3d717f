"""The model-zoo list: timm architectures and models from other libraries, and their builders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ALL_MODELS", "MODELS", "QUICK", "THIRD_PARTY", "ZooModel", "build", "key"]


@dataclass(frozen=True)
class ZooModel:
    """One architecture: its name, extra constructor arguments, input size and library.

    ``source`` is the library that builds it: ``"timm"``, ``"efficientnet_pytorch"``,
    ``"torchvision"`` or ``"transformers"`` (a VideoMAE video transformer, whose
    input is a 16-frame clip).
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    px: int = 64
    family: str = "cnn"
    source: str = "timm"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One input sample's shape."""
        if self.source == "transformers":
            return (16, 3, self.px, self.px)
        return (3, self.px, self.px)


def _vit(name: str, family: str = "vit", px: int = 64) -> ZooModel:
    return ZooModel(name, {"img_size": px}, px, family)


MODELS: tuple[ZooModel, ...] = (
    # EfficientNet family and other depthwise / NAS nets
    *(ZooModel(f"efficientnet_b{i}", family="depthwise") for i in range(5)),
    ZooModel("tf_efficientnet_b0", family="depthwise"),
    ZooModel("tf_efficientnet_lite0", family="depthwise"),
    ZooModel("efficientnetv2_rw_t", family="depthwise"),
    ZooModel("tf_efficientnetv2_b0", family="depthwise"),
    ZooModel("mobilenetv2_100", family="depthwise"),
    ZooModel("mobilenetv3_small_100", family="depthwise"),
    ZooModel("mobilenetv3_large_100", family="depthwise"),
    ZooModel("mobilenetv4_conv_small", family="depthwise"),
    ZooModel("mnasnet_100", family="depthwise"),
    ZooModel("fbnetc_100", family="depthwise"),
    ZooModel("spnasnet_100", family="depthwise"),
    ZooModel("mixnet_s", family="depthwise"),
    ZooModel("lcnet_050", family="depthwise"),
    ZooModel("tinynet_a", family="depthwise"),
    ZooModel("ghostnet_100", family="depthwise"),
    ZooModel("rexnet_100", family="depthwise"),
    ZooModel("legacy_xception", family="depthwise"),
    ZooModel("xception41", family="depthwise"),
    ZooModel("mobileone_s0", family="depthwise"),
    ZooModel("edgenext_xx_small", family="depthwise"),
    # plain, residual and grouped CNNs
    ZooModel("resnet18"),
    ZooModel("resnet50"),
    ZooModel("resnet26d"),
    ZooModel("seresnet18"),
    ZooModel("resnext26ts"),
    ZooModel("eca_resnet33ts"),
    ZooModel("resnest14d"),
    ZooModel("convnext_atto"),
    ZooModel("convnext_nano"),
    ZooModel("convnextv2_atto"),
    ZooModel("regnetx_002"),
    ZooModel("regnetx_004"),
    ZooModel("regnety_002"),
    ZooModel("regnety_004"),
    ZooModel("densenet121"),
    ZooModel("dla34"),
    ZooModel("dla46_c"),
    ZooModel("cspresnet50"),
    ZooModel("repvgg_a0"),
    ZooModel("darknet17"),
    ZooModel("hrnet_w18_small"),
    ZooModel("dpn68"),
    ZooModel("ese_vovnet19b_dw"),
    ZooModel("gernet_s"),
    ZooModel("inception_v3", px=96),
    ZooModel("hgnetv2_b0"),
    # transformers and hybrids
    _vit("vit_tiny_patch16_224"),
    _vit("deit_tiny_patch16_224"),
    _vit("deit_tiny_distilled_patch16_224"),
    _vit("swin_tiny_patch4_window7_224", px=64),
    _vit("levit_128s", "hybrid"),
    ZooModel("efficientformerv2_s0", {"img_size": 64}, 64, "hybrid"),
    ZooModel("mobilevit_xxs", family="hybrid"),
    ZooModel("mobilevitv2_050", family="hybrid"),
    ZooModel("fastvit_t8", family="hybrid"),
    ZooModel("poolformer_s12", family="hybrid"),
    ZooModel("convit_tiny", {"img_size": 64}, 64, "vit"),
    ZooModel("pit_ti_224", {"img_size": 64}, 64, "vit"),
    ZooModel("mixer_s16_224", {"img_size": 64}, 64, "mlp"),
    ZooModel("resmlp_12_224", {"img_size": 64}, 64, "mlp"),
    ZooModel("efficientvit_b0", family="hybrid"),
    ZooModel("mobilevit_xs", family="hybrid"),
)

THIRD_PARTY: tuple[ZooModel, ...] = (
    ZooModel("efficientnet-b0", family="depthwise", source="efficientnet_pytorch"),
    ZooModel("efficientnet-b4", family="depthwise", source="efficientnet_pytorch"),
    ZooModel("resnet50", source="torchvision"),
    ZooModel("mobilenet_v3_large", family="depthwise", source="torchvision"),
    ZooModel("efficientnet_b0", family="depthwise", source="torchvision"),
    # torchvision's ViT checks the input size against its image_size argument
    ZooModel("vit_b_16", {"image_size": 64}, 64, "vit", "torchvision"),
    ZooModel("videomae", {}, 32, "video", "transformers"),
)
"""Models from other libraries, through the same operations."""

ALL_MODELS: tuple[ZooModel, ...] = MODELS + THIRD_PARTY
QUICK: tuple[str, ...] = ("resnet18", "tv:mobilenet_v3_large", "ep:efficientnet-b0", "hf:videomae")
"""``--quick``: one model of each library, a smoke run."""

_PREFIX = {"timm": "", "torchvision": "tv:", "efficientnet_pytorch": "ep:", "transformers": "hf:"}


def key(spec: ZooModel) -> str:
    """The row name of ``spec``: its name, prefixed by its library unless timm."""
    return _PREFIX[spec.source] + spec.name


# ----------------------------------------------------------------- builders
# Registered as factories in the worker so that dfcompress.load can rebuild the
# models from the constructor recorded in the file.


def build_torchvision(name: str, num_classes: int = 1, image_size: int | None = None) -> nn.Module:
    """A torchvision classifier by name, random weights."""
    import torchvision

    extra = {} if image_size is None else {"image_size": image_size}
    model: nn.Module = torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, **extra
    )
    return model


def build_efficientnet_pytorch(name: str, num_classes: int = 1) -> nn.Module:
    """An ``efficientnet_pytorch`` EfficientNet by name (``"efficientnet-b0"``), random weights."""
    from efficientnet_pytorch import EfficientNet

    model: nn.Module = EfficientNet.from_name(name, num_classes=num_classes)
    return model


def build_videomae(image_size: int = 32, num_labels: int = 2) -> nn.Module:
    """A small random-init VideoMAE video classifier: 16-frame clips, tubelet 2."""
    import transformers

    config = transformers.VideoMAEConfig(
        image_size=image_size,
        patch_size=8,
        num_frames=16,
        tubelet_size=2,
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=num_labels,
    )
    model: nn.Module = transformers.VideoMAEForVideoClassification(config)
    return model


def build(spec: ZooModel) -> nn.Module:
    """``spec``'s model in eval mode, its constructor recorded for dfcompress.save."""
    import dfcompress as dfc

    if spec.source == "timm":
        import timm

        ctor = {"model_name": spec.name, "pretrained": False, "num_classes": 1, **spec.kwargs}
        model: nn.Module = timm.create_model(**ctor)
        dfc.set_constructor(model, "timm:create_model", **ctor)
        return model.eval()
    factory: Any
    if spec.source == "torchvision":
        factory, kwargs = build_torchvision, {"name": spec.name, **spec.kwargs}
    elif spec.source == "efficientnet_pytorch":
        factory, kwargs = build_efficientnet_pytorch, {"name": spec.name}
    elif spec.source == "transformers":
        factory, kwargs = build_videomae, {"image_size": spec.px}
    else:
        raise ValueError(f"unknown source {spec.source!r}")
    dfc.register_factory(factory, name=f"_zoo_models:{factory.__name__}")
    model = factory(**kwargs)
    dfc.set_constructor(model, factory, **kwargs)
    return model.eval()
