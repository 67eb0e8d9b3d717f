"""Model-zoo coverage: which dfcompress operations work on which timm architectures.

Every architecture is built by ``timm.create_model(name, pretrained=False,
num_classes=1)`` at a small input size (64 px unless the network needs more)
and put through five operations:

- ``q8``: :func:`dfcompress.quant.quantize` to int8 with a few random calibration batches;
- ``p50``: 50 % global L1 unstructured pruning (:func:`dfcompress.prune.prune`);
- ``s30``: 30 % structured channel pruning (parameters must really drop);
- ``save/load``: :func:`dfcompress.save` then :func:`dfcompress.load` of the float,
  p50 and q8 models through the recorded constructor ``timm:create_model``; the
  loaded models must reproduce the outputs bit for bit;
- ``onnx``: :func:`dfcompress.export_onnx` of the float model, checked in ONNX Runtime.

The models run in worker processes (imports are paid once per worker; a crashed or
stuck worker is replaced) and each operation under a time limit, so one bad
architecture cannot stall the run. A cell is ``ok``, ``clear`` (a
:class:`~dfcompress.DfcompressError` that says what is wrong), ``raw`` (any other
exception: a defect to fix), ``wrong`` (it ran but the result failed a check),
``timeout`` or ``setup`` (timm could not build the model with these arguments).

Usage (needs timm, i.e. the ``zoo`` extra)::

    python benchmarks/zoo.py                       # the whole list, updates RESULTS.md
    python benchmarks/zoo.py --models resnet18,vit_tiny_patch16_224 --no-write
    python benchmarks/zoo.py --executor ray        # one Ray task per model (RAY_ADDRESS or local)

With ``--executor ray`` each architecture is one Ray task (timm must be installed
on the workers); a task whose worker dies is retried, then its row is ``raw``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPS = ("q8", "p50", "s30", "save/load", "onnx")
TARGETS = {"q8": 95.0, "p50": 95.0, "s30": 85.0, "save/load": 95.0, "onnx": 85.0}
SYMBOL = {"ok": "ok", "clear": "clear", "raw": "**raw**", "wrong": "**wrong**"}


@dataclass(frozen=True)
class ZooModel:
    """One architecture: its timm name, extra constructor arguments, and input size."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    px: int = 64
    family: str = "cnn"


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


# ----------------------------------------------------------------- worker side


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def on_alarm(_sig: int, _frame: FrameType | None) -> None:
        raise _Timeout(f"over the {seconds} s limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class _Wrong(Exception):
    """The operation ran but its result failed a check."""


def _describe(e: BaseException) -> dict[str, str]:
    from dfcompress.errors import DfcompressError

    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        inner = frames[-1]
        where = f"{Path(inner.filename).name}:{inner.lineno} in {inner.name}"
        own = [f for f in frames if "dfcompress" in f.filename and "benchmarks" not in f.filename]
        if own and own[-1] is not inner:
            where += f" (from {Path(own[-1].filename).name}:{own[-1].lineno})"
    chain: list[BaseException] = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    if any(isinstance(c, _Timeout) for c in chain) or "_Timeout" in str(e):
        status = "timeout"
    elif isinstance(e, _Wrong):
        status = "wrong"
    elif isinstance(e, DfcompressError):
        status = "clear"
    else:
        status = "raw"
    return {"status": status, "error": f"{type(e).__name__}: {first}"[:300], "where": where}


def _worker(specs: list[ZooModel], limit: int) -> None:
    """Run every model of ``specs`` in this process (imports are paid once)."""
    for spec in specs:
        print(json.dumps({"model": spec.name, "op": "_start"}), flush=True)
        for row in _run_model(spec, limit):
            print(json.dumps(row), flush=True)


def _run_model(spec: ZooModel, limit: int) -> Iterator[dict[str, Any]]:
    """One row per operation of ``spec`` (JSON values only)."""
    import torch

    torch.set_num_threads(1)
    try:
        with _time_limit(limit):
            ops = _setup(spec)
    except Exception as e:
        bad = _describe(e)
        bad["status"] = "setup"
        bad["error"] = f"(building the model) {bad['error']}"
        for op in OPS:
            yield {**bad, "model": spec.name, "op": op}
        return
    for op, fn in ops.items():
        t0 = time.perf_counter()
        try:
            with _time_limit(limit):
                note = fn()
            row: dict[str, Any] = {"status": "ok", "note": note}
        except Exception as e:
            row = dict(_describe(e))
        row.update(model=spec.name, op=op, seconds=round(time.perf_counter() - t0, 2))
        yield row


def _setup(spec: ZooModel) -> dict[str, Callable[[], str]]:
    import timm
    import torch

    import dfcompress as dfc
    from dfcompress.deploy import export_onnx
    from dfcompress.prune import prune, sparsity
    from dfcompress.quant import QuantLayer, quantize

    torch.manual_seed(0)
    ctor = {"model_name": spec.name, "pretrained": False, "num_classes": 1, **spec.kwargs}
    model = timm.create_model(**ctor).eval()
    dfc.set_constructor(model, "timm:create_model", **ctor)
    x = torch.randn(2, 3, spec.px, spec.px)
    calib = [torch.randn(4, 3, spec.px, spec.px) for _ in range(3)]
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = model(x)
    made: dict[str, torch.nn.Module] = {}
    tmp = Path(tempfile.mkdtemp(prefix="dfc-zoo-"))

    def checked_output(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            y = m(x)
        if not isinstance(y, torch.Tensor) or y.shape != ref.shape:
            raise _Wrong(f"output {getattr(y, 'shape', type(y))} != {tuple(ref.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise _Wrong("output has NaN/Inf")
        return y

    def q8() -> str:
        q = quantize(model, "int8", calibration=calib, progress=False)
        n = sum(isinstance(m, QuantLayer) for m in q.modules())
        if n == 0:
            raise _Wrong("no layer was quantized")
        checked_output(q)
        made["q8"] = q
        return f"{n} layers"

    def p50() -> str:
        p = prune(model, 0.5, progress=False)
        s = sparsity(p)
        if not 0.45 <= s <= 0.55:
            raise _Wrong(f"sparsity {s:.3f}, asked 0.5")
        checked_output(p)
        made["p50"] = p
        return f"sparsity {s:.2f}"

    def s30() -> str:
        s = prune(model, 0.3, method="structured", example_inputs=x, progress=False)
        left = sum(p.numel() for p in s.parameters())
        if left >= params:
            raise _Wrong("no parameter was removed")
        checked_output(s)
        return f"params {left / params:.2f}x"

    def save_load() -> str:
        sizes = []
        for tag, m in (("float", model), *made.items()):
            path = dfc.save(m, tmp / f"{tag}.safetensors")
            back = dfc.load(path, allow=["timm"])
            with torch.no_grad():
                a, b = m(x), back(x)
            if not torch.equal(a, b):
                raise _Wrong(f"{tag}: loaded output differs by {(a - b).abs().max():.3g}")
            sizes.append(f"{tag} {path.stat().st_size / 1e6:.2f} MB")
        return ", ".join(sizes)

    def onnx() -> str:
        r = export_onnx(model, tmp / "model.onnx", x)
        return f"{r.exporter}, max diff {r.max_abs_diff:.1e}"

    return {"q8": q8, "p50": p50, "s30": s30, "save/load": save_load, "onnx": onnx}


# ----------------------------------------------------------------- driver side


def _run_shard(
    specs: list[ZooModel], limit: int, results: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Run ``specs`` in worker processes; restart past a crash or a stuck operation."""
    todo = list(specs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    while todo:
        names = ",".join(s.name for s in todo)
        cmd = [sys.executable, __file__, "--worker", names, "--limit", str(limit)]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        lines: queue.Queue[str | None] = queue.Queue()

        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current: str | None = None
        started = time.perf_counter()
        while True:
            try:
                line = lines.get(timeout=limit + 60)
            except queue.Empty:
                line = "stuck"
            if line is None or line == "stuck":
                proc.kill()
                proc.wait()
                break
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            model, op = row.pop("model"), row.pop("op")
            if op == "_start":
                if current is not None:
                    results[current]["_seconds"] = {
                        "seconds": time.perf_counter() - started,
                        "limit": limit,
                    }
                    _progress(current, results)
                current, started = model, time.perf_counter()
                results[model] = {}
                continue
            results[model][op] = row
        if current is not None:
            missing = [op for op in OPS if op not in results[current]]
            status = "timeout" if line == "stuck" else "raw"
            why = "no answer within the limit" if line == "stuck" else "the process died"
            for op in missing:
                results[current][op] = {
                    "status": status,
                    "error": f"{why} (exit {proc.returncode})",
                }
            results[current]["_seconds"] = {
                "seconds": time.perf_counter() - started,
                "limit": limit,
            }
            _progress(current, results)
        done = set(results)
        todo = [s for s in todo if s.name not in done]


def _ray_model(name: str, kwargs: dict[str, Any], px: int, family: str, limit: int) -> Any:
    """A Ray task: the rows of one model (arguments and result are plain data)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return list(_run_model(ZooModel(name, kwargs, px, family), limit))


def _run_ray(
    specs: list[ZooModel],
    limit: int,
    executor: Any,
    results: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """Run each model as one Ray task; a worker that dies is retried, then its row is ``raw``."""
    from dfcompress.distributed.executor import connect, workers

    ray = connect(executor)
    remote = ray.remote(_ray_model).options(**executor.task_options())
    todo = list(specs)
    pending: dict[Any, tuple[ZooModel, float]] = {}
    while todo or pending:
        while todo and len(pending) < workers(ray, executor):
            s = todo.pop(0)
            ref = remote.remote(s.name, dict(s.kwargs), s.px, s.family, limit)
            pending[ref] = (s, time.perf_counter())
        done, _ = ray.wait(list(pending), num_returns=1)
        spec, started = pending.pop(done[0])
        try:
            rows = ray.get(done[0])
        except ray.exceptions.RayError as e:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            rows = [
                {"model": spec.name, "op": op, "status": "raw", "error": f"worker lost: {why}"}
                for op in OPS
            ]
        results[spec.name] = {row.pop("op"): row for row in rows}
        for row in results[spec.name].values():
            row.pop("model", None)
        results[spec.name]["_seconds"] = {"seconds": time.perf_counter() - started, "limit": limit}
        _progress(spec.name, results)


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _progress(name: str, results: dict[str, dict[str, dict[str, Any]]]) -> None:
    r = results[name]
    line = " ".join(f"{op}={r.get(op, {}).get('status', '?')}" for op in OPS)
    print(
        f"[{len(results)}] {name}: {line} ({r['_seconds']['seconds']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def _cell(c: dict[str, Any]) -> str:
    status = str(c["status"])
    return SYMBOL.get(status, status)


def _render(
    results: dict[str, dict[str, dict[str, Any]]], specs: list[ZooModel], rerun: list[str]
) -> str:
    from _results import machine_line, markdown_table

    rows: list[list[object]] = []
    for s in specs:
        r = results[s.name]
        secs = f"{r['_seconds']['seconds']:.0f}"
        rows.append([f"`{s.name}`", s.family, s.px, *(_cell(r[op]) for op in OPS), secs])
    n = len(specs)
    totals = []
    for op in OPS:
        ok = sum(results[s.name][op]["status"] == "ok" for s in specs)
        totals.append(f"{100 * ok / n:.0f} %" if n else "n/a")
    rows.append(["**passed**", "", "", *(f"**{t}**" for t in totals), ""])
    target_row: list[object] = ["target", "", "", *(f">= {TARGETS[op]:.0f} %" for op in OPS), ""]
    rows.append(target_row)
    table = markdown_table(["model", "family", "px", *OPS, "s"], rows)
    limits = " or ".join(
        sorted({str(results[s.name]["_seconds"].get("limit", "?")) for s in specs}, key=len)
    )
    fails = []
    for s in specs:
        for op in OPS:
            c = results[s.name][op]
            if c["status"] != "ok":
                err = str(c.get("error", "")).replace("|", "\\|").replace("`", "'")
                fails.append([f"`{s.name}`", op, c["status"], err[:160]])
    raw = sum(results[s.name][op]["status"] == "raw" for s in specs for op in OPS)
    total_s = sum(results[s.name]["_seconds"]["seconds"] for s in specs)
    parts = [
        "## Model-zoo coverage (timm)",
        "",
        f"`benchmarks/zoo.py`: {n} timm architectures built with `pretrained=False, "
        "num_classes=1` at a small input size (column px), random weights and random "
        "inputs (coverage, not accuracy). Operations: `q8` int8 quantization calibrated "
        "on 3 random batches; `p50` 50 % global L1 pruning; `s30` 30 % structured channel "
        "pruning (parameters must drop); `save/load` of the float, p50 and q8 models "
        "through the recorded constructor `timm:create_model`, outputs bit-exact; "
        "`onnx` float export checked in ONNX Runtime. `clear` = a DfcompressError naming "
        "the problem; **raw** = another exception (a defect); **wrong** = it ran but a "
        f"check failed; `timeout` = over the per-operation limit ({limits} s); `setup` = timm "
        "could not build the model. Column s: seconds for the whole row on this loaded "
        "machine.",
        "",
        table,
        "",
        f"{raw} raw errors; {total_s / 60:.1f} min of model time (1-thread workers). "
        f"{machine_line()}",
    ]
    if rerun:
        parts[-1] += (
            f" Rows rerun in the last invocation ({', '.join(f'`{n}`' for n in rerun)}); "
            "the other rows come from an earlier run of this script, kept with --resume."
        )
    if fails:
        parts += ["", "Failures (first line of the error):", ""]
        parts.append(markdown_table(["model", "op", "kind", "error"], fails))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Run the zoo (or one worker), print the table and update RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated subset of the model list")
    ap.add_argument("--limit", type=int, default=120, help="seconds per operation")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes in parallel")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--resume", type=Path, help="results JSON of an earlier run to complete")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local worker processes (--jobs) or one Ray task per model (RAY_ADDRESS or local)",
    )
    ap.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    by_name = {s.name: s for s in MODELS}
    if args.worker:
        _worker([by_name.get(n, ZooModel(n)) for n in args.worker.split(",")], args.limit)
        return
    specs = list(MODELS)
    if args.models:
        specs = [by_name.get(n, ZooModel(n)) for n in args.models.split(",")]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if args.resume:
        # keep an earlier run's rows and rerun only --models (e.g. with a longer --limit)
        earlier = json.loads(args.resume.read_text())
        keep = {s.name for s in specs} if args.models else set()
        specs, run = list(MODELS), [s for s in specs if s.name in keep]
        results.update({k: v for k, v in earlier.items() if k not in keep})
        run += [s for s in specs if s.name not in results and s.name not in keep]
    else:
        run = specs
    if args.executor == "ray":
        from dfcompress.distributed import RayExecutor

        _run_ray(run, args.limit, RayExecutor(address=args.address), results)
    else:
        shards = [run[i :: args.jobs] for i in range(args.jobs)]
        threads = [
            threading.Thread(target=_run_shard, args=(sh, args.limit, results)) for sh in shards
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    body = _render(results, specs, [s.name for s in run] if args.resume else [])
    print(body)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_write:
        from _results import update_section

        update_section("zoo", body)


if __name__ == "__main__":
    main()
