"""The eager model ``quantize(..., target="xnnpack")`` returns: the PT2E-converted graph.

The graph is what ExecuTorch lowers to XNNPACK (a quantize/dequantize pair at
every int8 tensor, float ops where nothing is quantized), so the eager model
computes what the ``.pte`` file computes by construction.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from dfcompress._summary import LayerRow

__all__ = ["SAVE_REFUSAL", "XnnpackQuantized"]

SAVE_REFUSAL = (
    "a model quantized with target='xnnpack' is an exported graph and cannot be saved with "
    "dfcompress.save: export it with dfcompress.export(model, 'model.pte', example), or save "
    "the float model and quantize it again"
)


class XnnpackQuantized(nn.Module):
    """An int8 model made for ExecuTorch's XNNPACK backend (any batch size).

    Attributes:
        graph: The converted graph (``torch.fx.GraphModule``).
        dfc_target: ``"xnnpack"``: :func:`dfcompress.export` writes a ``.pte`` for it.
        dfc_summary_rows: The conv/linear layers of the float model and what was done
            to each (read by :func:`dfcompress.summary`).
        details: How it was made (observers, bias correction, QAT).
    """

    dfc_target = "xnnpack"
    dfc_save_refusal = SAVE_REFUSAL

    def __init__(
        self,
        graph: fx.GraphModule,
        rows: tuple[LayerRow, ...],
        sample: torch.Tensor,
        details: dict[str, object],
    ) -> None:
        super().__init__()
        self.graph = graph
        self.dfc_summary_rows = rows
        self.details = dict(details)
        # One input sample (float32, batch 1): export traces with it.
        self.register_buffer("sample", sample[:1].detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the int8 graph on a batch of any size."""
        out: torch.Tensor = self.graph(x)
        return out

    def train(self, mode: bool = True) -> XnnpackQuantized:
        # The converted graph has no training form; only the flag changes.
        self.training = mode
        return self

    def extra_repr(self) -> str:
        n = sum(1 for r in self.dfc_summary_rows if r.action == "int8")
        return f"target='xnnpack', int8 layers={n}/{len(self.dfc_summary_rows)}"
