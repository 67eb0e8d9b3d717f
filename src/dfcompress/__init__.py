"""dfcompress: compression primitives for image and video deepfake detectors.

The top level reads as verbs::

    import dfcompress as dfc
    small = dfc.compress(model, "q8-p50", calibration=loader)
    dfc.save(small, "detector.safetensors")
"""

from __future__ import annotations

from dfcompress._rebuild import register_module as register_module
from dfcompress._rebuild import set_constructor as set_constructor
from dfcompress._version import __version__ as __version__
from dfcompress.errors import DfcompressError as DfcompressError
from dfcompress.evaluate.measure import Measurement as Measurement
from dfcompress.evaluate.measure import measure as measure
from dfcompress.io import load as load
from dfcompress.io import save as save
from dfcompress.select import Selector as Selector
from dfcompress.select import by_name as by_name
from dfcompress.select import by_type as by_type
from dfcompress.select import register_se as register_se
from dfcompress.select import select as select
from dfcompress.select import where as where

__all__ = [
    "DfcompressError",
    "Measurement",
    "Selector",
    "__version__",
    "by_name",
    "by_type",
    "load",
    "measure",
    "register_module",
    "register_se",
    "save",
    "select",
    "set_constructor",
    "where",
]
