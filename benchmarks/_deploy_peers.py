"""The peers of benchmarks/deploy.py, and plain runners for each runtime.

Peers quantize the same float checkpoint on the same calibration images with their
own tools, written here directly from their documented flows:

- ExecuTorch's ``XNNPACKQuantizer`` PT2E flow (symmetric per-channel int8 weights),
  lowered with the XNNPACK partitioner to a ``.pte``;
- ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8
  activations) on the float ``.onnx``;
- NNCF ``nncf.quantize`` on the OpenVINO model of the float ``.onnx`` (reference, only
  where ``nncf`` and ``openvino`` import).

The plain runners and the fresh-process child are used for every file of a runtime
whose dfcompress target module is not installed, so all rows of one runtime are always
run and measured the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfcompress.deploy import Artifact
from dfcompress.deploy._measure import fresh_latencies, latencies
from dfcompress.deploy._targets import TARGETS

MAX_BATCH = 32

CHILD = r"""
import json, re, sys
import numpy as np
kind, path, shape = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
if kind == "onnxruntime":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    s.run(None, {s.get_inputs()[0].name: x})
elif kind == "xnnpack":
    import torch
    from executorch.runtime import Runtime
    m = Runtime.get().load_program(path).load_method("forward")
    m.execute([torch.from_numpy(x)])
else:
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": "1"})
    c(x)
status = open("/proc/self/status").read()
print(json.dumps({"peak_rss_bytes": int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024}))
"""


def child_peak_rss(kind: str, path: Path, shape: tuple[int, ...]) -> int | None:
    """Peak RSS of a bare process (the runtime's own package only) running one image."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), ",".join(map(str, shape))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        print(f"  peak RSS of {path.name} failed: {out.stderr.strip()[-200:]}", flush=True)
        return None
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"])


def plain_artifact(kind: str, path: Path) -> Artifact:
    """An Artifact of ``path`` run by the runtime's package directly (1 thread)."""
    if kind == "onnxruntime":
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        o.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.float().numpy()})[0])

    elif kind == "xnnpack":
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method("forward")
        largest = int(next(iter(method.metadata.input_tensor_meta(0).sizes())))

        def run(x: torch.Tensor) -> torch.Tensor:
            x = x.float().contiguous()
            outs = [
                method.execute([x[i : i + largest].contiguous()])[0]
                for i in range(0, x.shape[0], largest)
            ]
            return torch.cat(outs)

    else:
        import openvino as ov

        # f32: on a CPU with bf16 instructions OpenVINO otherwise runs float layers in bf16
        config = {"INFERENCE_NUM_THREADS": "1", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = ov.Core().compile_model(str(path), "CPU", config)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(compiled(x.float().numpy())[0]))

    size = path.stat().st_size
    if kind == "openvino":  # the IR is the .xml graph and the .bin weights beside it
        size += path.with_suffix(".bin").stat().st_size
    return Artifact(path, kind, size, None, {"runner": "plain"}, run)


def timed(
    files: dict[str, Artifact], x: torch.Tensor, **options: Any
) -> dict[str, dict[int, float]]:
    """Latencies of one runtime's files.

    Files that a dfcompress target loads are timed in a fresh process that loads them
    (``fresh_latencies``); OpenVINO's IR files in this process, on their own runners.
    """
    if all(a.target in TARGETS for a in files.values()):
        return fresh_latencies(files, x, threads=1, **options)
    return latencies(files, x, threads=1, **options)


def constant_binary_weights(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy whose binary convolutions are plain convolutions holding their effective
    weight (``alpha * sign(w)``) as a constant; and how many were replaced.

    PT2E folds batch norms into convolution weights it can read as constants; a binary
    convolution computes its weight in forward, which PT2E refuses. The copy computes
    the same function.
    """
    import copy

    from dfcompress.models import BinaryConv2d

    twin = copy.deepcopy(model).eval()
    swaps = [(n, m) for n, m in twin.named_modules() if isinstance(m, BinaryConv2d)]
    for name, m in swaps:
        conv = nn.Conv2d(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=False
        )
        with torch.no_grad():
            conv.weight.copy_(m.binary_weight().detach())
        parent = twin.get_submodule(name.rpartition(".")[0]) if "." in name else twin
        setattr(parent, name.rpartition(".")[2], conv)
    return twin, len(swaps)


def pt2e_xnnpack(model: nn.Module, calib: torch.Tensor, path: Path) -> nn.Module:
    """ExecuTorch's own flow: XNNPACKQuantizer (per-channel), PT2E, XNNPACK partitioner.

    Writes the ``.pte`` at ``path``; returns the converted (eager, simulated) module.
    Binary convolutions enter as plain convolutions of their effective weights.
    """
    model, _ = constant_binary_weights(model)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("b", min=1, max=MAX_BATCH)
    x2 = calib[:2]
    gm = torch.export.export(model.eval(), (x2,), dynamic_shapes=({0: batch},)).module()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = prepare_pt2e(gm, quantizer)  # type: ignore[arg-type]
    for i in range(0, len(calib), MAX_BATCH):
        prepared(calib[i : i + MAX_BATCH])
    converted = convert_pt2e(prepared)
    program = torch.export.export(converted, (x2,), dynamic_shapes=({0: batch},))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path.write_bytes(lowered.to_executorch().buffer)
    return converted  # type: ignore[no-any-return]


def ort_quantize_static(src: Path, dst: Path, calib: torch.Tensor) -> None:
    """ONNX Runtime's static QDQ quantizer, per-channel int8 weights, uint8 activations."""
    import onnx
    from onnxruntime import quantization as oq

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(oq.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{name: calib[i : i + 8].numpy()} for i in range(0, len(calib), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    oq.quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=oq.QuantFormat.QDQ,
        per_channel=True,
        activation_type=oq.QuantType.QUInt8,
        weight_type=oq.QuantType.QInt8,
    )


def target_missing(target: str) -> str | None:
    """None when dfcompress's ``target`` runtime imports, else why not (one line)."""
    from dfcompress.deploy._targets import target_module
    from dfcompress.errors import DfcompressError

    try:
        target_module(target)
    except DfcompressError as e:
        return str(e).splitlines()[0]
    return None


def nncf_available() -> str | None:
    """None when NNCF and OpenVINO import, else why not."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        return f"NNCF + OpenVINO not installed ({e})"
    return None


def nncf_openvino(src: Path, out: Path, calib: torch.Tensor) -> dict[str, Path]:
    """The float ``.onnx`` as OpenVINO IR, and ``nncf.quantize`` of it (default preset)."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(src))
    files = {"float": out / f"{src.stem}-ov.xml", "NNCF int8": out / f"{src.stem}-nncf.xml"}
    # compress_to_fp16=False: the float IR keeps float32 weights (save_model's default halves them)
    ov.save_model(model, str(files["float"]), compress_to_fp16=False)
    data = nncf.Dataset([calib[i : i + 8].numpy() for i in range(0, len(calib), 8)])
    ov.save_model(nncf.quantize(model, data), str(files["NNCF int8"]), compress_to_fp16=False)
    return files


def cpu_flags() -> str:
    """The CPU model and its int8-relevant flags (avx2, avx512, vnni, amx)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "?"
    )
    flags_line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    wanted = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
    have = [f for f in wanted if f in flags]
    missing = [f for f in wanted if f not in flags]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni"))
    return (
        f"CPU {name}; flags: {', '.join(have) or 'none of ' + ', '.join(wanted)}"
        f" (absent: {', '.join(missing) or 'none'}); "
        + ("VNNI int8 dot products." if vnni else "no VNNI: int8 kernels sum pairs in 16 bits.")
    )
