"""The ``dfcompress`` command line: ``demo``, ``compress``, ``report``, ``sensitivity``.

Models are given as a file written by :func:`dfcompress.save` or as a
``package.module:function`` factory returning an ``nn.Module``. Data (for
calibration, evaluation or a sensitivity scan) is ``proxy`` (the built-in
proxy task), or a ``package.module:function`` returning a loader of
``(image, label[, name])`` batches; without data, ``compress`` and
``sensitivity`` synthesize inputs of the guessed shape or of
``--input-shape``. The working directory is importable. An error prints one
line and exits with status 2; no traceback.

>>> main(["--version"]) == 0  # doctest: +ELLIPSIS
dfcompress ...
True
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dfcompress.deploy._targets import TARGETS
from dfcompress.errors import DfcompressError

__all__ = ["build_parser", "main"]

_DATA_HELP = (
    "'proxy' (the built-in proxy task) or 'package.module:function' returning a loader "
    "of (image, label[, name]) batches"
)


def _function(ref: str, what: str) -> Any:
    """The ``module:function`` named on the command line: the user's own choice.

    Only a command-line argument reaches here; a file's constructor goes
    through :func:`dfcompress.load` and its rules. The working directory is
    importable, so a factory in ``./mymodels.py`` is ``mymodels:build``.
    """
    from dfcompress._imports import import_attr

    _cwd_importable()
    obj = import_attr(ref, what)
    if not callable(obj):
        raise DfcompressError(f"{what} {ref!r} does not name a function")
    return obj


def _cwd_importable() -> None:
    # An installed console script puts its own folder first on sys.path, not the
    # working directory, where a user's factories (and --allow packages) live.
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def _factory(ref: str) -> Any:
    """Call the ``module:function`` named on the command line."""
    return _function(ref, "the factory")()


def load_model(ref: str, allow: Sequence[str] = (), factory: str | None = None) -> Any:
    """A model from a saved file or a ``module:function`` factory.

    ``factory`` (``--factory``) builds a file's skeleton instead of the
    constructor the file names (see :func:`dfcompress.load`).
    """
    from torch import nn

    from dfcompress.io import load

    if Path(ref).is_file():
        build = _function(factory, "--factory") if factory is not None else None
        if allow:
            _cwd_importable()
        return load(ref, allow=allow, factory=build)
    if ":" not in ref or Path(ref).suffix in (".safetensors", ".pt", ".pth"):
        raise DfcompressError(f"no such model file: {ref}")
    if factory is not None:
        raise DfcompressError(
            f"--factory {factory!r} builds the skeleton of a model file; the model {ref!r} "
            "is a factory itself: drop --factory"
        )
    model = _factory(ref)
    if not isinstance(model, nn.Module):
        raise DfcompressError(f"{ref!r} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def _input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape 3,224,224`` (or ``3x224x224``): one sample's shape."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give one sample's sizes without the batch, e.g. 3,224,224"
        )
    return shape


def _shape_hint(e: DfcompressError, model: Any, data_flag: str) -> DfcompressError | None:
    """``e`` with the options to pass, when the model's input shape cannot be guessed."""
    from dfcompress.prune._calib import guess_input_shape

    try:
        guess_input_shape(model)
    except DfcompressError:
        return DfcompressError(
            f"{e}. On the command line: --input-shape C,H,W (one sample, e.g. 3,224,224) "
            f"or {data_flag} DATA"
        )
    return None


def load_data(ref: str, split: str, n: int, size: int, batch_size: int = 64) -> Any:
    """A loader: the proxy task's ``split`` or what a factory returns."""
    if ref == "proxy":
        from dfcompress.data import loader

        return loader(split, size=size, n=n, batch_size=batch_size)  # type: ignore[arg-type]
    return _factory(ref)


def _require(what: str, *extras: str, data: Sequence[str | None] = ()) -> None:
    """Fail before any work when an extra the command needs is missing.

    ``data`` are the command's data arguments: ``proxy`` needs the ``demo`` extra.
    """
    from dfcompress._extras import require_extras

    proxy = ("demo",) if "proxy" in data else ()
    require_extras(*extras, *proxy, what=what)


def _demo(args: argparse.Namespace) -> int:
    from dfcompress.demo import DEMO_RECIPES, run_demo

    _require("dfcompress demo", "report", "demo", *(() if args.eager else ("mobile",)))

    recipes = args.recipes.split(",") if args.recipes else list(DEMO_RECIPES)
    report = run_demo(
        args.out,
        train=args.train,
        quick=args.quick,
        recipes=recipes,
        n_test=args.n_test,
        threads=args.threads,
        progress=not args.no_progress,
        deployed=not args.eager,
    )
    print("\n".join(report.insights()))
    print(f"report written to {Path(args.out) / 'report.html'}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from dfcompress.io import save
    from dfcompress.recipe import compress, parse_recipe

    _require("dfcompress compress", data=[args.calibration])
    recipe = parse_recipe(args.recipe)
    model = load_model(args.model, args.allow, args.factory)
    calib = None
    options: dict[str, Any] = {}
    if args.calibration:
        calib = load_data(args.calibration, "val", args.calibration_samples, args.size)
    if args.input_shape is not None:
        import torch

        options["input_shape"] = args.input_shape
        options["example_inputs"] = torch.zeros((2, *args.input_shape))
    try:
        small = compress(model, recipe, calib, progress=not args.no_progress, **options)
    except DfcompressError as e:
        given = calib is not None or args.input_shape is not None
        hint = None if given else _shape_hint(e, model, "--calibration")
        if hint is None:
            raise
        raise hint from e
    path = save(small, args.out)
    print(f"{recipe}: wrote {path} ({path.stat().st_size / 1e6:.3f} MB)")
    return 0


def _report(args: argparse.Namespace) -> int:
    _require("dfcompress report", "report", data=[args.data, args.calibration])
    from dfcompress.report import compare

    variants: dict[str, Any] = {"baseline": load_model(args.model, args.allow, args.factory)}
    for item in args.variant or []:
        name, sep, ref = item.partition("=")
        if not sep or not name:
            raise DfcompressError(f"--variant {item!r} must look like NAME=FILE or NAME=RECIPE")
        if Path(ref).is_file() or ":" in ref:
            variants[name] = load_model(ref, args.allow, args.factory)
        else:
            variants[name] = ref
    for recipe in args.recipes.split(",") if args.recipes else []:
        variants[recipe] = recipe
    if len(variants) < 2:
        raise DfcompressError("nothing to compare: give --recipes q8,p50 or --variant NAME=FILE")
    data = load_data(args.data, "test", args.samples, args.size)
    calib = None
    if args.calibration:
        calib = load_data(args.calibration, "val", args.calibration_samples, args.size)
    report = compare(
        variants,
        data,
        tolerance=args.tolerance,
        threshold=args.threshold,
        gradcam=not args.no_gradcam,
        calibration=calib,
        progress=not args.no_progress,
        deployed=args.deployed or args.target is not None,
        target=args.target,
    )
    report.save(args.out)
    print("\n".join(report.insights()))
    print(f"report written to {Path(args.out) / 'report.html'}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    extras = ("report",) if args.plot else ()
    _require("dfcompress sensitivity", *extras, data=[args.data])
    from dfcompress.prune.sensitivity import allocate, scan

    model = load_model(args.model, args.allow, args.factory)
    calib = load_data(args.data, "val", args.samples, args.size) if args.data else None
    example = None
    if args.input_shape is not None:
        import torch

        example = torch.zeros((1, *args.input_shape))
    try:
        result = scan(
            model,
            calibration=calib,
            n_samples=args.samples,
            example_inputs=example,
            progress=not args.no_progress,
        )
    except DfcompressError as e:
        given = calib is not None or example is not None
        hint = None if given else _shape_hint(e, model, "--data")
        if hint is None:
            raise
        raise hint from e
    result = allocate(result, args.target)
    print(result.to_markdown())
    if args.plot:
        print(f"plot written to {result.plot(args.plot)}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="a file written by dfcompress.save, or a 'package.module:function' factory"
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PKG",
        help="let a model file name nn.Module classes from this package (repeatable)",
    )
    p.add_argument(
        "--factory",
        metavar="MODULE:FUNCTION",
        help="build a model file's skeleton with this function (given the file's stored "
        "keyword arguments) instead of the constructor the file names",
    )
    p.add_argument("--size", type=int, default=64, help="image side for the proxy task")


def _shape_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        type=_input_shape,
        metavar="C,H,W",
        help="one sample's shape for data-free runs (inputs synthesized from the model), "
        "e.g. 3,224,224; needed when it cannot be guessed",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dfcompress`` command."""
    from dfcompress._version import __version__

    parser = argparse.ArgumentParser(
        prog="dfcompress",
        description="Compress deepfake detectors and report what it cost in AUC, size and speed.",
    )
    parser.add_argument("--version", action="version", version=f"dfcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="compress the shipped NPR + SE-ResNet detector and write a comparison report",
        description="Load (or train) an NPR + SE-ResNet detector (1.24M parameters) for the "
        "built-in proxy task, build "
        "the variants baseline, q16, q8, q4, p50, s50, q16-p50, q8-p50, ise8-4-8 and write "
        "report.md, report.html, report.json and plots into --out.",
    )
    demo.add_argument("--out", default="dfcompress-demo", help="report folder")
    demo.add_argument(
        "--train",
        action="store_true",
        help="train the detector instead of loading the shipped checkpoint",
    )
    demo.add_argument("--quick", action="store_true", help="small subsets: a smoke test")
    demo.add_argument("--recipes", help="comma-separated recipes instead of the default set")
    demo.add_argument("--n-test", type=int, help="test samples (default 400; 64 with --quick)")
    demo.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    demo.add_argument(
        "--eager",
        action="store_true",
        help="evaluate the eager models only (default: the deployed files, needs [mobile,onnx])",
    )
    _common(demo)
    demo.set_defaults(func=_demo)

    comp = sub.add_parser(
        "compress",
        help="apply a recipe such as q8-p50 to a model and save it",
        description="Apply a recipe (q16, bf16, q8, q4, pNN, sNN, iseI-SE-O joined by '-') "
        "and save the result with dfcompress.save; the file records the recipe.",
    )
    _model_args(comp)
    comp.add_argument("--recipe", required=True, help="e.g. q8-p50 or ise8-4-8")
    comp.add_argument("--out", required=True, help="output .safetensors file")
    comp.add_argument("--calibration", help=f"calibration data: {_DATA_HELP}")
    comp.add_argument("--calibration-samples", type=int, default=128)
    _shape_arg(comp)
    _common(comp)
    comp.set_defaults(func=_compress)

    rep = sub.add_parser(
        "report",
        help="compare a model with compressed variants and write a report",
        description="Evaluate the baseline MODEL and its variants on the same data and write "
        "report.md, report.html, report.json and plots into --out.",
    )
    _model_args(rep)
    rep.add_argument("--recipes", help="comma-separated recipes applied to MODEL, e.g. q8,p50")
    rep.add_argument(
        "--variant",
        action="append",
        metavar="NAME=FILE|RECIPE",
        help="a named variant: a saved file, a factory or a recipe (repeatable)",
    )
    rep.add_argument("--data", default="proxy", help=f"evaluation data: {_DATA_HELP}")
    rep.add_argument("--samples", type=int, default=400, help="proxy test samples")
    rep.add_argument("--calibration", help=f"calibration data for recipes: {_DATA_HELP}")
    rep.add_argument("--calibration-samples", type=int, default=128)
    rep.add_argument("--tolerance", type=float, default=0.01, help="absolute AUC tolerance")
    rep.add_argument("--threshold", type=float, default=0.5, help="threshold on P(fake)")
    rep.add_argument("--no-gradcam", action="store_true", help="skip Grad-CAM panels")
    rep.add_argument(
        "--deployed",
        action="store_true",
        help="evaluate the exported files in their runtime (AUC, latency, fresh-process RSS)",
    )
    rep.add_argument(
        "--target",
        choices=sorted(TARGETS),
        help="runtime of variants not quantized for one (default: the variants' own, "
        "else xnnpack); implies --deployed",
    )
    rep.add_argument("--out", default="dfcompress-report", help="report folder")
    _common(rep)
    rep.set_defaults(func=_report)

    sens = sub.add_parser(
        "sensitivity",
        help="scan how much each layer can be pruned and allocate per-layer amounts",
        description="Prune one layer at a time over a grid of amounts, score agreement with "
        "the unpruned model on calibration data, and allocate amounts for --target.",
    )
    _model_args(sens)
    sens.add_argument("--data", help=f"calibration data: {_DATA_HELP} (default: data-free)")
    sens.add_argument("--samples", type=int, default=32, help="calibration samples")
    sens.add_argument("--target", type=float, default=0.5, help="overall fraction to prune")
    sens.add_argument("--plot", help="also write the sensitivity plot to this PNG")
    _shape_arg(sens)
    _common(sens)
    sens.set_defaults(func=_sensitivity)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 on an error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse printed
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status: int = args.func(args)
    except DfcompressError as e:
        print(f"dfcompress: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dfcompress: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
