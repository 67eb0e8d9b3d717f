"""dfcompress: compression primitives for image and video deepfake detectors.

The top level reads as verbs::

    import dfcompress as dfc
    small = dfc.compress(model, "q8-p50", calibration=loader)
    report = dfc.compare({"baseline": model, "q8-p50": small}, test_loader)
    report.save("report/")
    dfc.export(small, "detector.onnx", example=x)

Subpackages: :mod:`dfcompress.quant`, :mod:`dfcompress.prune`,
:mod:`dfcompress.features`, :mod:`dfcompress.models`,
:mod:`dfcompress.evaluate`, :mod:`dfcompress.report`, :mod:`dfcompress.data`.
"""

from __future__ import annotations

from dfcompress import presets as presets
from dfcompress._rebuild import register_module as register_module
from dfcompress._rebuild import set_constructor as set_constructor
from dfcompress._summary import FloatLayersWarning as FloatLayersWarning
from dfcompress._summary import ModelSummary as ModelSummary
from dfcompress._summary import summary as summary
from dfcompress._version import __version__ as __version__
from dfcompress.deploy import Artifact as Artifact
from dfcompress.deploy import ExportResult as ExportResult
from dfcompress.deploy import export as export
from dfcompress.deploy import export_onnx as export_onnx
from dfcompress.deploy import export_torchscript as export_torchscript
from dfcompress.errors import DfcompressError as DfcompressError
from dfcompress.evaluate.measure import Measurement as Measurement
from dfcompress.evaluate.measure import measure as measure
from dfcompress.io import load as load
from dfcompress.io import register_factory as register_factory
from dfcompress.io import save as save
from dfcompress.prune import PruneConfig as PruneConfig
from dfcompress.prune import Pruner as Pruner
from dfcompress.prune import distill as distill
from dfcompress.prune import distill_finetune as distill_finetune
from dfcompress.prune import prune as prune
from dfcompress.quant import BF16 as BF16
from dfcompress.quant import FP16 as FP16
from dfcompress.quant import Float as Float
from dfcompress.quant import IntQuant as IntQuant
from dfcompress.quant import PerChannel as PerChannel
from dfcompress.quant import PerGroup as PerGroup
from dfcompress.quant import PerTensor as PerTensor
from dfcompress.quant import Quantizer as Quantizer
from dfcompress.quant import quantize as quantize
from dfcompress.recipe import Recipe as Recipe
from dfcompress.recipe import compress as compress
from dfcompress.recipe import parse_recipe as parse_recipe
from dfcompress.report import Report as Report
from dfcompress.report import compare as compare
from dfcompress.select import Selector as Selector
from dfcompress.select import by_name as by_name
from dfcompress.select import by_type as by_type
from dfcompress.select import register_se as register_se
from dfcompress.select import select as select
from dfcompress.select import where as where

__all__ = [
    "BF16",
    "FP16",
    "DfcompressError",
    "ExportResult",
    "Float",
    "FloatLayersWarning",
    "IntQuant",
    "Measurement",
    "ModelSummary",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PruneConfig",
    "Pruner",
    "Quantizer",
    "Recipe",
    "Report",
    "Selector",
    "__version__",
    "by_name",
    "by_type",
    "compare",
    "compress",
    "distill",
    "distill_finetune",
    "export_onnx",
    "export_torchscript",
    "load",
    "measure",
    "parse_recipe",
    "presets",
    "prune",
    "quantize",
    "register_factory",
    "register_module",
    "register_se",
    "save",
    "select",
    "set_constructor",
    "summary",
    "where",
]
