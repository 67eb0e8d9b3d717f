"""Run a ``.pte`` file in ExecuTorch's C++ runtime alone, as a phone application does.

The ``xnnpack`` target's :class:`~dfcompress.deploy.Artifact` runs its file through
ExecuTorch's Python bindings, which load libtorch and need ``import torch``: a process
that does so holds some 370 MB before it reads a single weight. An application on a
phone links ExecuTorch's C++ runtime and nothing else. The ``executorch`` wheel ships
that runtime as plain shared libraries (``libexecutorch``, the XNNPACK backend, the
kernels, the thread pool; none of them links libtorch) with their headers, so this
module compiles a small C++ program against them and runs files in it:

.. code-block:: python

   from dfcompress.deploy.native import run_native

   result = run_native("detector.pte", images)
   result.outputs, result.peak_rss_bytes

:func:`run_native` returns the file's first output, computed by that program, and the
program's peak resident memory: the memory figure of the process that ships, without
Python or torch. The program's source is ``_native_runner.cpp`` beside this module;
it is built once per process in a private temporary folder. Building it needs a
C++17 compiler (``$CXX``, else ``c++``, ``g++`` or ``clang++``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfcompress._validate import check_tensor
from dfcompress.errors import DfcompressError

__all__ = ["NativeRun", "native_runner", "run_native"]

SOURCE = Path(__file__).with_name("_native_runner.cpp")
_LIBRARIES = (
    "executorch",
    "executorch_backend_xnnpack",
    "executorch_kernels_optimized",
    "executorch_threadpool",
)
# what the wheel's CMake package tells a consumer to compile with
_DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_EVENT_TRACER_ENABLED", "ET_USE_THREADPOOL")


@dataclass(frozen=True)
class NativeRun:
    """One run of a file in the C++ runtime.

    Attributes:
        outputs: the file's first output for the batch (float32).
        peak_rss_bytes: the runner process's peak resident memory (``VmHWM``, else
            ``ru_maxrss``) after loading the file and running the batch.
    """

    outputs: torch.Tensor
    peak_rss_bytes: int


def _executorch_root() -> Path:
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise DfcompressError(
            "the native runner needs the executorch package: pip install 'dfcompress[mobile]'"
        )
    for place in spec.submodule_search_locations:
        root = Path(place)
        if (root / "include" / "executorch" / "extension" / "module" / "module.h").is_file():
            return root
    raise DfcompressError(
        "the installed executorch package ships no C++ headers "
        f"(looked in {list(spec.submodule_search_locations)}): the native runner cannot be built"
    )


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (found := shutil.which(name)):
            return found
    raise DfcompressError(
        "no C++ compiler found ($CXX, c++, g++, clang++): the native runner is compiled "
        "against the executorch wheel's runtime libraries; install one or set CXX"
    )


@functools.cache
def _process_dir() -> Path:
    """A private folder for this process's runner, removed when the process exits.

    No runner is kept between processes by default: a program left in a shared
    cache could be replaced by anyone who can write there, and dfcompress would run it.
    """
    made = Path(tempfile.mkdtemp(prefix="dfcompress-native-"))  # mode 0700
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    return made


def native_runner(cache_dir: str | Path | None = None) -> Path:
    """The compiled runner program, built on first use (about a second).

    By default it is built once per process in a private temporary folder removed at
    exit. ``cache_dir`` keeps it in a folder of the caller's choosing instead, keyed by
    the runner's source, the executorch version and location and the compiler (an
    upgrade rebuilds it); dfcompress runs whatever program it finds there under that
    name, so give a folder only you can write to.

    Raises:
        DfcompressError: executorch (the ``mobile`` extra) or a C++ compiler is missing,
            or the build failed (the compiler's last lines are in the message).
    """
    root = _executorch_root()
    cxx = _compiler()
    lib = root / "lib"
    missing = [n for n in _LIBRARIES if not any(lib.glob(f"lib{n}.*"))]
    if missing:
        raise DfcompressError(
            f"the executorch package at {str(root)!r} lacks the runtime libraries {missing}"
        )
    try:
        version = importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    stamp = SOURCE.read_bytes() + f"\0{version}\0{root}\0{cxx}".encode()
    key = hashlib.sha256(stamp).hexdigest()[:16]
    where = Path(cache_dir) if cache_dir is not None else _process_dir()
    binary = where / f"runner-{key}"
    if binary.is_file():
        return binary
    where.mkdir(parents=True, exist_ok=True)
    include = root / "include"
    c10 = include / "executorch" / "runtime" / "core" / "portable_type" / "c10"
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        out = Path(tmp) / "runner"
        cmd = [cxx, "-std=c++17", "-O2", "-w", *(f"-D{d}" for d in _DEFINES), str(SOURCE)]
        cmd += ["-I", str(include), "-I", str(c10), "-L", str(lib)]
        # the backends register themselves when loaded: keep them although no symbol is used
        cmd += [] if sys.platform == "darwin" else ["-Wl,--no-as-needed"]
        cmd += [f"-l{n}" for n in _LIBRARIES] + [f"-Wl,-rpath,{lib}", "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not out.is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise DfcompressError(f"building the native runner with {cxx} failed: {tail}")
        # atomic: parallel callers race to the same name with the same program
        os.replace(out, binary)
    return binary


def run_native(
    path: str | Path,
    batch: torch.Tensor,
    *,
    timeout: float = 300.0,
    cache_dir: str | Path | None = None,
) -> NativeRun:
    """Run ``path`` (a ``.pte`` file) on ``batch`` in a fresh C++ runtime process.

    Args:
        path: an ExecuTorch program (e.g. written by ``export(..., target="xnnpack")``)
            whose ``forward`` takes one float tensor with the batch first.
        batch: the inputs, batch first; sent as float32. The file must accept its batch
            size (a file exported with ``max_batch=1`` takes one sample).
        timeout: seconds the process may take.
        cache_dir: where the compiled runner is kept (see :func:`native_runner`).

    Raises:
        DfcompressError: ``path`` is not a file, the runner cannot be built, or the
            process failed (its message is included).
    """
    p = Path(path)
    if not p.is_file():
        raise DfcompressError(f"path={str(path)!r} is not a file: pass a .pte written by export")
    check_tensor(batch, "batch")
    runner = native_runner(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "input.f32", Path(tmp) / "output.f32"
        batch.detach().to(torch.float32).contiguous().numpy().astype("<f4").tofile(src)
        try:
            done = subprocess.run(
                [str(runner), str(p), str(src), str(dst)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise DfcompressError(
                f"the native runner did not run {str(path)!r} within {timeout:g} s"
            ) from e
        if done.returncode != 0:
            # the runner's own messages, and the runtime's error-level log lines ("E ...")
            lines = done.stderr.splitlines()
            errors = [ln for ln in lines if "native runner" in ln or ln.startswith("E ")]
            last = (errors or done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DfcompressError(
                f"the native runner could not run {str(path)!r} on a batch of shape "
                f"{tuple(batch.shape)} (exit {done.returncode}): {last}"
            )
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1])
            shape = tuple(int(s) for s in report["shape"])
            peak = int(report["peak_rss_bytes"])
            values = np.fromfile(dst, dtype="<f4").astype(np.float32).reshape(shape)
        except (IndexError, KeyError, TypeError, ValueError, OSError) as e:
            raise DfcompressError(
                f"the native runner printed {done.stdout[-200:]!r} for {str(path)!r}, "
                "not its output's shape and peak memory"
            ) from e
    return NativeRun(torch.from_numpy(values), peak)
