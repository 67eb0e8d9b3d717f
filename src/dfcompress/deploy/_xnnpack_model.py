"""The eager model ``quantize(..., target="xnnpack")`` returns: the PT2E-converted graph.

The graph is what ExecuTorch lowers to XNNPACK (a quantize/dequantize pair at
every int8 tensor, float ops where nothing is quantized). The eager model runs a
copy of it whose int8 convolutions, linear layers, additions and multiplications
compute XNNPACK's integer arithmetic (:mod:`dfcompress.deploy._xnnpack_emulate`),
so it rounds every such output to the code the ``.pte`` file gives.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from dfcompress._summary import LayerRow
from dfcompress.deploy._xnnpack_emulate import emulated_graph

__all__ = ["SAVE_REFUSAL", "XnnpackQuantized"]

SAVE_REFUSAL = (
    "a model quantized with target='xnnpack' is an exported graph and cannot be saved with "
    "dfcompress.save: export it with dfcompress.export(model, 'model.pte', example), or save "
    "the float model and quantize it again"
)


class XnnpackQuantized(nn.Module):
    """An int8 model made for ExecuTorch's XNNPACK backend (any batch size).

    Attributes:
        graph: The converted graph (``torch.fx.GraphModule``), as it is exported.
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
        # The graph the forward runs: ``graph`` with XNNPACK's integer arithmetic at
        # each int8 layer, addition and multiplication (tensors shared, not a module
        # of this one: the state dict and parameters stay the exported graph's).
        emulated, count = emulated_graph(graph)
        self.__dict__["emulated"] = emulated
        self.details["emulated_ops"] = count
        # One input sample (float32, batch 1): export traces with it.
        self.register_buffer("sample", sample[:1].detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the int8 graph, with XNNPACK's integer arithmetic, on a batch of any size."""
        out: torch.Tensor = self.__dict__["emulated"](x)
        return out

    def train(self, mode: bool = True) -> XnnpackQuantized:
        # The converted graph has no training form; only the flag changes.
        self.training = mode
        return self

    def extra_repr(self) -> str:
        n = sum(1 for r in self.dfc_summary_rows if r.action == "int8")
        return f"target='xnnpack', int8 layers={n}/{len(self.dfc_summary_rows)}"
