"""What a deployed file costs in its runtime: latency per image, and peak memory of a fresh process.

Latency is timed on :meth:`Artifact.run`, i.e. in the runtime that ships, at batch 1
and at batch N; several artifacts are timed round by round (interleaved), so load
from other processes on the machine hits them all alike, and the median is kept.
Each timed run comes right after ``settle`` untimed runs of the same file: the
steady latency of an application that runs one detector frame after frame, not
the first run after another file pushed it out of the caches. By default the files
are timed in a fresh process that loads them (:func:`fresh_latencies`), as an
application does, not in the process that built, calibrated and exported them.

Peak memory is that of a *fresh* Python process that loads the file with its
target's ``load_artifact`` and runs one image (``python -m dfcompress.deploy._probe``):
the figure a process serving the file would show, not the resident size of the
process that built, calibrated and exported the model.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dfcompress._validate import check_int, check_tensor
from dfcompress.deploy._artifact import Artifact
from dfcompress.deploy._targets import TARGETS, check_target
from dfcompress.errors import DfcompressError

__all__ = [
    "DeployedCost",
    "batch_of",
    "fresh_latencies",
    "fresh_peak_rss",
    "latencies",
    "measure_artifacts",
]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class DeployedCost:
    """The cost of one exported file in its runtime.

    Attributes:
        size_bytes: Size of the file on disk.
        latency_ms_b1: Median milliseconds per image at batch 1 (None if not timed).
        latency_ms_bn: Median milliseconds per image at batch ``batch_n``.
        batch_n: The large batch.
        repeats: Timed runs per batch size (interleaved with the other files).
        threads: Threads during the timing: torch's intra-op threads and ExecuTorch's
            thread pool (``.pte`` files); ONNX Runtime sessions run one thread.
        peak_rss_bytes: Peak resident memory of a fresh process that loads the file and
            runs one image (None where it could not be measured).
        runtime_rss_bytes: The same for the runtime alone, as an application on a
            phone runs it: ``.pte`` files in ExecuTorch's C++ runtime
            (:func:`dfcompress.deploy.native.run_native`: no Python, no libtorch).
            None for other targets, or where the runner cannot be built (no C++
            compiler).
        settle: Untimed runs of the file right before each timed run (the timed run
            finds the file warm, as in an application that runs it over and over).
        fresh_process: Whether the file was timed in a fresh process that loaded it
            (else in the process that exported it).
    """

    size_bytes: int
    latency_ms_b1: float | None
    latency_ms_bn: float | None
    batch_n: int
    repeats: int
    threads: int
    peak_rss_bytes: int | None
    runtime_rss_bytes: int | None = None
    settle: int = 3
    fresh_process: bool = True

    @property
    def peak_rss_mb(self) -> float | None:
        """Peak RSS in MB (10^6 bytes)."""
        return None if self.peak_rss_bytes is None else self.peak_rss_bytes / 1e6

    @property
    def runtime_rss_mb(self) -> float | None:
        """Peak RSS of the runtime alone in MB (10^6 bytes)."""
        return None if self.runtime_rss_bytes is None else self.runtime_rss_bytes / 1e6

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the fields and the RSS figures in MB."""
        return {
            **asdict(self),
            "peak_rss_mb": self.peak_rss_mb,
            "runtime_rss_mb": self.runtime_rss_mb,
        }


def batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` samples made from ``example`` (its rows repeated as needed).

    >>> batch_of(torch.arange(3.0).reshape(3, 1), 5).flatten().tolist()
    [0.0, 1.0, 2.0, 0.0, 1.0]
    """
    check_int(n, "n", low=1)
    if example.dim() == 0 or example.shape[0] == 0:
        raise DfcompressError(
            f"example has shape {tuple(example.shape)}: give a batch of at least one sample"
        )
    reps = -(-n // int(example.shape[0]))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:n].contiguous()


def _check_timing(
    example: torch.Tensor,
    batches: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int | None,
    settle: int,
    seed: int,
) -> None:
    check_tensor(example, "example", finite=False)
    check_int(repeats, "repeats", low=1)
    check_int(warmup, "warmup", low=0)
    check_int(settle, "settle", low=0)
    check_int(seed, "seed", low=0)
    for b in batches:
        check_int(b, "batches", low=1)
    if threads is not None:
        check_int(threads, "threads", low=1)


def latencies(
    artifacts: Mapping[str, Artifact],
    example: torch.Tensor,
    *,
    batches: Sequence[int] = (1, 32),
    repeats: int = 10,
    warmup: int = 1,
    threads: int | None = None,
    settle: int = 3,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """Median milliseconds per image of each artifact at each batch size, interleaved.

    Every round runs each batch size on each artifact, so the files are timed under
    the same machine load, in an order shuffled anew each round (seeded), so none is
    always timed after a given other. Each timed run follows ``settle`` untimed runs
    of the same file on the same batch: what is timed is the file's steady latency,
    as an application that runs one model frame after frame sees it. On a 2-core
    server CPU an int8 EfficientNet-B0 ONNX Runtime file took 1.6 ms per image right
    after four other files and 0.95 ms from its fourth run in a row on; ``settle=0``
    times those first runs.

    Args:
        artifacts: ``{name: artifact}``.
        example: Samples the batches are made of (rows repeated as needed).
        batches: The batch sizes.
        repeats: Timed rounds (one timed run per file and batch size each); the
            median is kept.
        warmup: Untimed rounds first.
        threads: Threads during the timing, restored afterwards: torch's intra-op
            threads, and ExecuTorch's thread pool when a file is a ``.pte`` (XNNPACK
            runs on it; it starts with a thread per core). ``None`` leaves both as
            they are. ONNX Runtime sessions of dfcompress's files run one thread.
        settle: Untimed runs of a file right before each of its timed runs.
        seed: Seed of the order of the files in each round.

    Returns:
        ``{name: {batch: ms per image}}``.
    """
    _check_timing(example, batches, repeats, warmup, threads, settle, seed)
    inputs = {b: batch_of(example, b) for b in batches}
    times: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in artifacts}
    rng = random.Random(seed)
    old = torch.get_num_threads()
    with ExitStack() as stack:
        if threads is not None and any(a.target == "xnnpack" for a in artifacts.values()):
            from dfcompress.deploy._xnnpack_runtime import thread_pool

            stack.enter_context(thread_pool(threads))
        stack.callback(torch.set_num_threads, old)
        if threads is not None:
            torch.set_num_threads(threads)
        names = list(artifacts)
        for r in range(warmup + repeats):
            order = rng.sample(names, len(names))
            for b, x in inputs.items():
                for name in order:
                    art = artifacts[name]
                    for _ in range(settle if r >= warmup else 0):
                        art.run(x)
                    t0 = time.perf_counter()
                    art.run(x)
                    if r >= warmup:
                        times[name][b].append(time.perf_counter() - t0)
    return {
        k: {b: 1000.0 * statistics.median(v) / b for b, v in per.items()}
        for k, per in times.items()
    }


def fresh_latencies(
    artifacts: Mapping[str, Artifact],
    example: torch.Tensor,
    *,
    batches: Sequence[int] = (1, 32),
    repeats: int = 10,
    warmup: int = 1,
    threads: int | None = 1,
    settle: int = 3,
    seed: int = 0,
    timeout: float = 3600.0,
) -> dict[str, dict[int, float]]:
    """:func:`latencies` of the files, timed in a fresh process that loads them.

    The process (``python -m dfcompress.deploy._timer``) loads every file with its
    target's ``load_artifact``, as an application loads it, and times them as
    :func:`latencies` does. The process that built, calibrated and exported the
    models holds a large heap, other threads and the files' first sessions; in it,
    two files of one graph came out up to 7 % apart, where a fresh process timed
    two sessions of each within 3 %.

    Raises:
        DfcompressError: an artifact's target cannot be loaded by name (time it
            with :func:`latencies`), or the process failed (its last error line
            is in the message).
    """
    _check_timing(example, batches, repeats, warmup, threads, settle, seed)
    files = []
    for name, art in artifacts.items():
        if art.target not in TARGETS:
            raise DfcompressError(
                f"artifact {name!r} has target {art.target!r}: a fresh process loads "
                f"{sorted(TARGETS)} files only; time it with latencies()"
            )
        files.append([str(name), TARGETS[art.target], str(art.path)])
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="dfcompress-timer-") as tmp:
        where = Path(tmp)
        np.save(where / "example.npy", example.detach().cpu().float().numpy())
        spec = {
            "files": files,
            "example": str(where / "example.npy"),
            "dtype": str(example.dtype).removeprefix("torch."),
            "batches": [int(b) for b in batches],
            "repeats": repeats,
            "warmup": warmup,
            "threads": threads,
            "settle": settle,
            "seed": seed,
        }
        (where / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "dfcompress.deploy._timer", str(where / "spec.json")]
        stdout = _run_child(
            cmd,
            threads,
            timeout,
            late=f"timing {len(files)} files in a fresh process took over {timeout:g} s",
            failed=f"the process timing {[f[2] for f in files]} failed",
        )
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
        return {str(k): {int(b): float(ms) for b, ms in per.items()} for k, per in report.items()}
    except (IndexError, AttributeError, TypeError, ValueError) as e:
        raise DfcompressError(
            f"the timing process printed {stdout[-200:]!r}, not its latencies"
        ) from e


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # the child imports what this process imports (the same dfcompress, test targets)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if threads is not None:
        for var in _THREAD_VARS:
            env[var] = str(threads)
    return env


def _run_child(
    cmd: list[str], threads: int | None, timeout: float, *, late: str, failed: str
) -> str:
    """Run ``cmd`` with ``threads`` in its environment; its stdout, or an error saying why not.

    ``late`` is the message when it runs past ``timeout`` seconds; ``failed`` is
    followed by the last line the process wrote to stderr when it fails.
    """
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=_child_env(threads), timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise DfcompressError(late) from e
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DfcompressError(f"{failed}: {last}")
    return out.stdout


def fresh_peak_rss(
    target: str,
    path: str | Path,
    sample_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    threads: int | None = 1,
    timeout: float = 300.0,
) -> int:
    """Peak resident bytes of a fresh process that loads ``path`` and runs one image.

    The process runs ``python -m dfcompress.deploy._probe``: it imports the target's
    module, calls its ``load_artifact(path)`` and runs one sample of ``sample_shape``;
    its high-water mark (``VmHWM``, else ``ru_maxrss``) is the figure.

    Raises:
        DfcompressError: the process failed (its last error line is in the message).
    """
    name = check_target(target)
    if threads is not None:
        check_int(threads, "threads", low=1)
    shape = ",".join(str(int(s)) for s in sample_shape)
    cmd = [
        sys.executable,
        "-m",
        "dfcompress.deploy._probe",
        TARGETS[name],
        str(path),
        shape,
        str(dtype).removeprefix("torch."),
    ]
    if threads is not None:
        cmd.append(str(threads))
    stdout = _run_child(
        cmd,
        threads,
        timeout,
        late=f"the {name!r} file {str(path)!r} did not load and run one image within {timeout:g} s",
        failed=f"a fresh process could not load and run the {name!r} file {str(path)!r}",
    )
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
        return int(report["peak_rss_bytes"])
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise DfcompressError(
            f"the probe of {str(path)!r} printed {stdout[-200:]!r}, not its peak memory"
        ) from e


def measure_artifacts(
    artifacts: Mapping[str, Artifact],
    example: torch.Tensor,
    *,
    batch_n: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
    memory: bool = True,
    settle: int = 3,
    fresh_process: bool = True,
) -> dict[str, DeployedCost]:
    """Latency at batch 1 and ``batch_n`` (interleaved) and fresh-process peak RSS of each file.

    Latency as :func:`latencies` times it: each timed run after ``settle`` untimed
    runs of the same file; in a fresh process that loads the files
    (:func:`fresh_latencies`) unless ``fresh_process=False`` (then in this process,
    on the artifacts' own runners).

    A file whose fresh process fails gets ``peak_rss_bytes=None``; the timing errors of
    its runner propagate. The fresh process imports dfcompress (and so torch) to load
    the file with its target's ``load_artifact``: its peak includes them. ``.pte`` files
    are also run once in ExecuTorch's C++ runtime alone (``runtime_rss_bytes``), when
    its runner can be built.
    """
    check_int(batch_n, "batch_n", low=1)
    batches = sorted({1, batch_n})
    # two warm-up rounds: some runtimes (TorchScript's profiling executor) optimize
    # a graph only after its first calls at a shape
    timer = fresh_latencies if fresh_process else latencies
    lat = timer(
        artifacts,
        example,
        batches=batches,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        settle=settle,
    )
    used = threads if threads is not None else torch.get_num_threads()
    rss = _peak_rss_all(artifacts, example, threads) if memory else {}
    alone = _runtime_rss_all(artifacts, example) if memory else {}
    out: dict[str, DeployedCost] = {}
    for name, art in artifacts.items():
        out[name] = DeployedCost(
            size_bytes=art.size_bytes,
            latency_ms_b1=lat[name][1],
            latency_ms_bn=lat[name][batch_n],
            batch_n=batch_n,
            repeats=repeats,
            threads=used,
            peak_rss_bytes=rss.get(name),
            runtime_rss_bytes=alone.get(name),
            settle=settle,
            fresh_process=fresh_process,
        )
    return out


def _runtime_rss_all(
    artifacts: Mapping[str, Artifact], example: torch.Tensor
) -> dict[str, int | None]:
    """Peak RSS of the C++ runtime alone running each ``.pte`` file on one image."""
    from dfcompress.deploy.native import run_native

    out: dict[str, int | None] = {}
    for name, art in artifacts.items():
        if art.target != "xnnpack":
            continue
        try:
            out[name] = run_native(art.path, example[:1]).peak_rss_bytes
        except DfcompressError:  # no compiler, no headers: the Python figure stands
            out[name] = None
    return out


def _peak_rss_all(
    artifacts: Mapping[str, Artifact], example: torch.Tensor, threads: int | None
) -> dict[str, int | None]:
    """:func:`fresh_peak_rss` of every file (None where the process failed).

    The processes run side by side, as many as there are cores for their threads:
    each one's own high-water mark is the figure, so they do not disturb each other's.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(art: Artifact) -> int | None:
        try:
            return fresh_peak_rss(
                art.target,
                art.path,
                tuple(example.shape[1:]),
                dtype=example.dtype,
                threads=threads,
            )
        except DfcompressError:
            return None

    cores = os.cpu_count() or 1
    workers = max(1, min(len(artifacts), cores // max(1, threads or cores)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(artifacts, pool.map(one, artifacts.values()), strict=True))
    return done
