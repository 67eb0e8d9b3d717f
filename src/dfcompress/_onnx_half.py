"""Store an ONNX graph's float weights in 16 bits while it computes in float32."""

from __future__ import annotations

from typing import Any

import numpy as np

from dfcompress.errors import require

__all__ = ["store_weights_16bit"]


def store_weights_16bit(model: Any, dtype: str) -> Any:
    """Replace float32 initializers by float16/bfloat16 ones read through a Cast.

    ONNX Runtime's CPU provider has few half-precision kernels, so a model whose
    parameters are 16-bit is exported computing in float32: the file keeps the
    weights at 2 bytes each and ONNX Runtime folds the Casts once at load time.
    Scalars and one-element tensors stay in float32. ``model`` is modified in place.
    """
    onnx = require("onnx", "onnx")
    helper, nh, tp = onnx.helper, onnx.numpy_helper, onnx.TensorProto  # type: ignore[attr-defined]
    target = tp.FLOAT16 if dtype == "float16" else tp.BFLOAT16
    casts = []
    for init in list(model.graph.initializer):
        if init.data_type != tp.FLOAT or int(np.prod(init.dims)) <= 1:
            continue
        arr = nh.to_array(init)
        half_name = init.name + "__16bit"
        if target == tp.FLOAT16:
            half = nh.from_array(arr.astype(np.float16), half_name)
        else:
            half = helper.make_tensor(half_name, tp.BFLOAT16, arr.shape, arr.reshape(-1).tolist())
        model.graph.initializer.remove(init)
        model.graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half_name], [init.name], to=tp.FLOAT))
    for i, node in enumerate(casts):
        model.graph.node.insert(i, node)
    return model
