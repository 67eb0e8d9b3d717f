"""Scale-out benchmark: a sensitivity scan and a nine-variant compare, local vs 1 and 2 Ray workers.

    python benchmarks/scaleout.py                  # EfficientNet-B0 baseline, writes RESULTS.md
    python benchmarks/scaleout.py --quick          # tiny sizes: checks the script runs (no write)

The baseline is the ``efficientnet_b0`` checkpoint of ``benchmarks/train_baselines.py``
(``~/.cache/dfcompress/baselines/efficientnet_b0.safetensors``; needs timm, the
``zoo`` extra); without it the ``bnext`` checkpoint, and with ``--quick`` a small
untrained demo detector. Two tasks, each run with ``executor=None`` (this process,
one torch thread) and on a local Ray with 1 and 2 workers (one CPU and one
torch thread each):

- ``scan``: the sensitivity scan of every conv/linear layer at 9 amounts on
  ``--scan-samples`` proxy validation images;
- ``compare``: the baseline and the 8 demo recipes (:data:`dfcompress.demo.DEMO_RECIPES`)
  scored on the proxy test set (a :class:`~dfcompress.distributed.DatasetShards`, read
  by the workers), without Grad-CAM.

Ray is started, and its workers have imported dfcompress, before the clock
runs; each timed run includes sending the models (dfcompress files) and
collecting the results. "identical" compares every score (scan curves,
P(fake) of every sample) with the local run, bit for bit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_line, markdown_table, update_section

BASELINES = Path.home() / ".cache" / "dfcompress" / "baselines"
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TARGET = 1.6  # 2 Ray workers against 1 on a 2-core machine


def _baseline(name: str, quick: bool) -> tuple[nn.Module, str, int]:
    """The model, where it came from, and its input size."""
    import dfcompress

    if quick:
        from dfcompress.demo import demo_detector

        torch.manual_seed(0)
        return demo_detector((8, 16)).eval(), "untrained demo detector (8, 16)", 32
    for candidate in (name, "bnext"):
        ckpt = BASELINES / f"{candidate}.safetensors"
        if ckpt.exists():
            size = 64
            return dfcompress.load(ckpt).eval(), f"checkpoint {ckpt.name}", size
        print(f"no checkpoint {ckpt} (run benchmarks/train_baselines.py)", file=sys.stderr)
    raise SystemExit("no baseline checkpoint: run benchmarks/train_baselines.py first")


def _warm(ray: Any, n: int, data: dict[str, Any]) -> None:
    """Start ``n`` workers, import dfcompress and build the proxy test set in each."""

    def ready() -> int:
        import dfcompress.distributed._scan  # noqa: F401 - imported once, outside the timings
        from dfcompress.distributed import DatasetShards

        DatasetShards.from_dict(data).open()
        time.sleep(1.0)
        return os.getpid()

    ray.get([ray.remote(ready).remote() for _ in range(2 * n)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0", help="baseline checkpoint name")
    p.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    p.add_argument("--n-test", type=int, default=1000, help="proxy test images (compare)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--scan-samples", type=int, default=64)
    p.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--quick", action="store_true", help="tiny sizes; does not write RESULTS.md")
    p.add_argument("--section", default="scaleout", help="RESULTS.md section to write")
    p.add_argument("--no-results", action="store_true")
    args = p.parse_args(argv)
    import ray

    from dfcompress import compare, compress
    from dfcompress.data import make_proxy
    from dfcompress.demo import DEMO_RECIPES
    from dfcompress.distributed import DatasetShards, RayExecutor
    from dfcompress.prune import scan

    counts = [int(w) for w in args.workers.split(",")]
    grid = GRID
    if args.quick:
        args.n_test, args.batch_size, args.scan_samples, grid = 48, 8, 8, (0.3, 0.6, 0.9)
    torch.set_num_threads(1)  # the local rows: one thread, like one Ray worker
    base, source, size = _baseline(args.model, args.quick)
    calib = make_proxy("val", size=size, n=max(args.scan_samples, 32), seed=0).tensors()[0]
    data = DatasetShards.proxy("test", size=size, n=args.n_test, batch_size=args.batch_size)
    recipes = DEMO_RECIPES[:2] if args.quick else DEMO_RECIPES
    variants: dict[str, nn.Module | str] = {"baseline": base}
    for r in recipes:
        variants[r] = compress(base, r, calibration=[calib[:32]], progress=False)

    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address, logging_level="error")
    else:
        ray.init(num_cpus=max(counts), include_dashboard=False, logging_level="error")
    data.open()  # the proxy images stand in for files: built once per process, untimed
    _warm(ray, max(counts), data.to_dict())

    rows: list[list[object]] = []

    def run(task: str, fn: Any, same: Any) -> None:
        ref: Any = None
        local_s = 0.0
        one_worker_s: float | None = None
        for w in [0, *counts]:
            ex = None if w == 0 else RayExecutor(num_workers=w)
            t0 = time.perf_counter()
            out = fn(ex)
            secs = time.perf_counter() - t0
            if w == 0:
                ref, local_s = out, secs
            elif w == 1:
                one_worker_s = secs
            over_one = "" if w < 2 or one_worker_s is None else one_worker_s / secs
            rows.append(
                [
                    task,
                    "local loop" if w == 0 else "Ray",
                    w or 1,
                    f"{secs:.1f}",
                    f"{local_s / secs:.2f}x",
                    f"{over_one:.2f}x" + ("" if over_one >= TARGET else " **NO**")
                    if over_one
                    else "",
                    "yes" if same(ref, out) else "**NO**",
                ]
            )
            print(" | ".join(str(c) for c in rows[-1]), flush=True)

    def scan_with(ex: Any) -> Any:
        return scan(
            base,
            calibration=calib,
            amounts=grid,
            n_samples=args.scan_samples,
            progress=False,
            executor=ex,
        )

    def compare_with(ex: Any) -> Any:
        return compare(
            variants, data, gradcam=False, progress=False, measure_repeats=1, executor=ex
        )

    # first calls pay lazy imports and kernel set-up: warm the local loop on a sliver
    scan(base, calibration=calib[:2], amounts=(0.5,), n_samples=2, progress=False)
    sliver = [(calib[:2], torch.tensor([0, 1]))]
    compare(variants, sliver, gradcam=False, progress=False, measure_repeats=1)

    run("scan", scan_with, lambda a, b: a.layers == b.layers)
    run(
        f"compare ({len(variants)} variants)",
        compare_with,
        lambda a, b: all(
            np.array_equal(x.scores, y.scores) for x, y in zip(a.variants, b.variants, strict=True)
        ),
    )
    ray.shutdown()
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in base.modules())
    table = markdown_table(
        [
            "task",
            "executor",
            "workers",
            "seconds",
            "speed-up vs local",
            f"vs 1 Ray worker (target >= {TARGET}x)",
            "identical to local",
        ],
        rows,
    )
    body = "\n".join(
        [
            "## Scale-out on Ray",
            "",
            f"`benchmarks/scaleout.py`: {source}, {size} px. `scan`: {n_layers} conv/linear "
            f"layers x {len(grid)} amounts on {args.scan_samples} proxy validation images; "
            f"`compare`: baseline + {len(recipes)} recipes on {args.n_test} proxy test images "
            f"(batches of {args.batch_size}), no Grad-CAM. Local loop: this process, one torch "
            "thread; Ray: a local cluster, one CPU and one torch thread per worker, started and "
            "warmed before timing (model transfer included; the proxy images, which stand in "
            "for files, built in every process beforehand). Identical = every score equal to "
            "the local run's, bit for bit. The driver's own part (checking each model's file, "
            "the metrics and one latency measurement per variant) does not shrink with the "
            "workers.",
            "",
            table,
            "",
            machine_line(),
        ]
    )
    print(body)
    if not (args.quick or args.no_results):
        update_section(args.section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
