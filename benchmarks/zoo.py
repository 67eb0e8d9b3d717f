"""Model-zoo coverage: which dfcompress operations work on which architectures.

timm architectures are built by ``timm.create_model(name, pretrained=False,
num_classes=1)`` at a small input size (64 px unless the network needs more);
beside them efficientnet_pytorch B0/B4, torchvision's ResNet-50, MobileNetV3,
EfficientNet-B0 and ViT-B/16, and a small Hugging Face VideoMAE on 16-frame clips
(the list is in ``_zoo_models.py``), all with random weights. Each goes through
seven operations (``_zoo_ops.py``):

- ``q8`` / ``q4``: :func:`dfcompress.quantize` to int8 / int4 weight-only with
  random calibration inputs; a layer left float without a reason fails the cell,
  and the layers q8 leaves float are counted with their reasons;
- ``p50``: 50 % global L1 unstructured pruning (:func:`dfcompress.prune.prune`);
- ``p50 sens``: 50 % with sensitivity allocation, failed when it flips more
  held-out decisions than ``p50`` plus 0.5 percentage points;
- ``s30``: 30 % structured channel pruning (parameters must really drop);
- ``save/load``: :func:`dfcompress.save` then :func:`dfcompress.load` of the float,
  p50 and q8 models through the recorded constructor; the loaded models must
  reproduce the outputs bit for bit;
- ``onnx``: :func:`dfcompress.export_onnx` of the float model, checked in ONNX Runtime.

The models run in worker processes (imports are paid once per worker; a crashed or
stuck worker is replaced) and each operation under a time limit, so one bad
architecture cannot stall the run. A cell is ``ok``, ``clear`` (a
:class:`~dfcompress.DfcompressError` that says what is wrong), ``raw`` (any other
exception: a defect to fix), ``wrong`` (it ran but the result failed a check),
``timeout`` or ``setup`` (the library could not build the model, or is not installed).

Usage (needs the ``zoo`` and ``video`` extras and torchvision)::

    python benchmarks/zoo.py                       # the whole list, updates RESULTS.md
    python benchmarks/zoo.py --quick               # one model per library, prints only
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
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _zoo_models import ALL_MODELS, QUICK, ZooModel, key
from _zoo_ops import OPS, TARGETS, describe, operations, time_limit

SYMBOL = {"ok": "ok", "clear": "clear", "raw": "**raw**", "wrong": "**wrong**"}


# ----------------------------------------------------------------- worker side


def _worker(specs: list[ZooModel], limit: int) -> None:
    """Run every model of ``specs`` in this process (imports are paid once)."""
    for spec in specs:
        print(json.dumps({"model": key(spec), "op": "_start"}), flush=True)
        for row in _run_model(spec, limit):
            print(json.dumps(row), flush=True)


def _run_model(spec: ZooModel, limit: int) -> Iterator[dict[str, Any]]:
    """One row per operation of ``spec`` (JSON values only)."""
    import torch

    torch.set_num_threads(1)
    try:
        with time_limit(limit):
            ops = operations(spec)
    except Exception as e:
        bad = describe(e)
        bad["status"] = "setup"
        bad["error"] = f"(building the model) {bad['error']}"
        for op in OPS:
            yield {**bad, "model": key(spec), "op": op}
        return
    for op, fn in ops.items():
        t0 = time.perf_counter()
        try:
            with time_limit(limit):
                out = fn()
            note, extra = out if isinstance(out, tuple) else (out, {})
            row: dict[str, Any] = {"status": "ok", "note": note, **extra}
        except Exception as e:
            row = dict(describe(e))
        row.update(model=key(spec), op=op, seconds=round(time.perf_counter() - t0, 2))
        yield row


# ----------------------------------------------------------------- driver side


def _run_shard(
    specs: list[ZooModel], limit: int, results: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Run ``specs`` in worker processes; restart past a crash or a stuck operation."""
    todo = list(specs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    while todo:
        names = ",".join(key(s) for s in todo)
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
        todo = [s for s in todo if key(s) not in done]


def _ray_model(
    name: str, kwargs: dict[str, Any], px: int, family: str, source: str, limit: int
) -> Any:
    """A Ray task: the rows of one model (arguments and result are plain data)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return list(_run_model(ZooModel(name, kwargs, px, family, source), limit))


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
            ref = remote.remote(s.name, dict(s.kwargs), s.px, s.family, s.source, limit)
            pending[ref] = (s, time.perf_counter())
        done, _ = ray.wait(list(pending), num_returns=1)
        spec, started = pending.pop(done[0])
        try:
            rows = ray.get(done[0])
        except ray.exceptions.RayError as e:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            rows = [
                {"model": key(spec), "op": op, "status": "raw", "error": f"worker lost: {why}"}
                for op in OPS
            ]
        results[key(spec)] = {row.pop("op"): row for row in rows}
        for row in results[key(spec)].values():
            row.pop("model", None)
        results[key(spec)]["_seconds"] = {"seconds": time.perf_counter() - started, "limit": limit}
        _progress(key(spec), results)


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
        r = results[key(s)]
        secs = f"{r['_seconds']['seconds']:.0f}"
        left = r.get("q8", {}).get("float_left", "")
        rows.append([f"`{key(s)}`", s.family, s.px, *(_cell(r[op]) for op in OPS), left, secs])
    n = len(specs)
    totals = []
    for op in OPS:
        ok = sum(results[key(s)][op]["status"] == "ok" for s in specs)
        totals.append(f"{100 * ok / n:.0f} %" if n else "n/a")
    rows.append(["**passed**", "", "", *(f"**{t}**" for t in totals), "", ""])
    target_row: list[object] = [
        "target",
        "",
        "",
        *(f">= {TARGETS[op]:.0f} %" for op in OPS),
        "",
        "",
    ]
    rows.append(target_row)
    table = markdown_table(["model", "family", "px", *OPS, "layers left float (q8)", "s"], rows)
    limits = " or ".join(
        sorted({str(results[key(s)]["_seconds"].get("limit", "?")) for s in specs}, key=len)
    )
    fails = []
    for s in specs:
        for op in OPS:
            c = results[key(s)][op]
            if c["status"] != "ok":
                err = str(c.get("error", "")).replace("|", "\\|").replace("`", "'")
                fails.append([f"`{key(s)}`", op, c["status"], err[:160]])
    raw = sum(results[key(s)][op]["status"] == "raw" for s in specs for op in OPS)
    total_s = sum(results[key(s)]["_seconds"]["seconds"] for s in specs)
    parts = [
        "## Model-zoo coverage (timm and other libraries)",
        "",
        f"`benchmarks/zoo.py`: {n} architectures, timm's built with `pretrained=False, "
        "num_classes=1`, and efficientnet_pytorch (`ep:`), torchvision (`tv:`) and a "
        "small Hugging Face VideoMAE on 16-frame clips (`hf:`), at a small input size "
        "(column px), random weights and random inputs (coverage, not accuracy). "
        "Operations: `q8` int8 and `q4` int4 weight-only quantization calibrated on 12 "
        "random inputs (a layer left float without a reason is **wrong**; column "
        "'layers left float' counts q8's, with the reasons `dfcompress.summary` gives); "
        "`p50` 50 % global L1 pruning; `p50 sens` 50 % with sensitivity allocation, "
        "**wrong** when it flips more of 32 held-out decisions than `p50` plus 0.5 pp; "
        "`s30` 30 % structured channel pruning (parameters must drop); `save/load` of "
        "the float, p50 and q8 models through the recorded constructor, outputs "
        "bit-exact; "
        "`onnx` float export checked in ONNX Runtime. `clear` = a DfcompressError naming "
        "the problem; **raw** = another exception (a defect); **wrong** = it ran but a "
        f"check failed; `timeout` = over the per-operation limit ({limits} s); `setup` = "
        "the library could not build the model (or is not installed). Column s: seconds "
        "for the whole row on this loaded machine.",
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
    ap.add_argument(
        "--quick", action="store_true", help="one model per library, 300 s limit, no write"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    by_name = {key(s): s for s in ALL_MODELS}
    if args.worker:
        _worker([by_name.get(n, ZooModel(n)) for n in args.worker.split(",")], args.limit)
        return
    if args.quick:
        args.models = args.models or ",".join(QUICK)
        args.no_write = True
        args.limit = max(args.limit, 300)
    specs = list(ALL_MODELS)
    if args.models:
        specs = [by_name.get(n, ZooModel(n)) for n in args.models.split(",")]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if args.resume:
        # keep an earlier run's rows and rerun only --models (e.g. with a longer --limit)
        earlier = json.loads(args.resume.read_text())
        keep = {key(s) for s in specs} if args.models else set()
        specs, run = list(ALL_MODELS), [s for s in specs if key(s) in keep]
        results.update({k: v for k, v in earlier.items() if k not in keep})
        run += [s for s in specs if key(s) not in results and key(s) not in keep]
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
    body = _render(results, specs, [key(s) for s in run] if args.resume else [])
    print(body)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_write:
        from _results import update_section

        update_section("zoo", body)


if __name__ == "__main__":
    main()
