"""Train the baseline detectors the other benchmarks compress, on the built-in proxy task.

    python benchmarks/train_baselines.py                 # both baselines, defaults below
    python benchmarks/train_baselines.py --models bnext  # only the BNext-tiny + NPR detector

Baselines:

- ``bnext``: :func:`dfcompress.data.detectors.npr_bnext` (NPR features into
  BNext-tiny, one logit);
- ``efficientnet_b0``: :func:`dfcompress.data.detectors.npr_efficientnet` (the
  same NPR front end into EfficientNet-B0, one logit; its parameter names are
  timm's ``efficientnet_b0``'s, and it needs no extra).

Each is trained on the proxy train split, scored on the test split, and saved
with :func:`dfcompress.save` to ``--out`` (default
``~/.cache/dfcompress/baselines``) as ``<name>.safetensors``, next to a
``baselines.json`` with the figures and the proxy settings used. The table is
printed and written to the "baselines" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dfcompress
from _results import machine_line, markdown_table, update_section
from dfcompress.data import loader, predict, train_detector
from dfcompress.data.detectors import npr_bnext, npr_efficientnet
from dfcompress.evaluate.metrics import fmt, summarize

DEFAULT_OUT = Path.home() / ".cache" / "dfcompress" / "baselines"
MODELS = ("bnext", "efficientnet_b0")
# Per-model training settings (overridden by --epochs / --lr): the binary network
# converges in a few epochs (5 reached test AUC 0.926 with torch 2.14.1 and 0.895
# with torch 2.13.0, 8 reached 0.929); EfficientNet-B0 from scratch needs more steps
# and a higher learning rate at this resolution.
SETTINGS: dict[str, dict[str, float]] = {
    "bnext": {"epochs": 8, "lr": 1e-3},
    "efficientnet_b0": {"epochs": 10, "lr": 3e-3},
}
HEADERS = [
    "model",
    "input",
    "train n",
    "epochs",
    "test AUC",
    "EER",
    "acc@0.5",
    "float32 MB",
    "train s",
    "AUC in 0.90..0.99",
]


def build(name: str) -> nn.Module:
    """The untrained model."""
    if name == "bnext":
        return npr_bnext("tiny", num_classes=1)
    return npr_efficientnet("b0", num_classes=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of MODELS")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=None, help="default: per model, see SETTINGS")
    p.add_argument("--lr", type=float, default=None, help="default: per model, see SETTINGS")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}: use some of {MODELS}")
    train = loader(
        "train", size=args.size, n=args.n_train, batch_size=args.batch_size, seed=args.seed
    )
    test = loader("test", size=args.size, n=args.n_test, batch_size=100, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    for name in names:
        model = build(name)
        epochs = int(args.epochs or SETTINGS[name]["epochs"])
        lr = args.lr or SETTINGS[name]["lr"]
        t0 = time.perf_counter()
        trained = train_detector(
            model, train, epochs=epochs, lr=lr, progress=not args.quiet, seed=args.seed
        )
        train_s = time.perf_counter() - t0
        pred = predict(trained, test, progress=not args.quiet)
        m = summarize(pred.labels, pred.scores)
        info = {
            "auc": m.auc,
            "eer": m.eer,
            "accuracy": m.confusion.accuracy,
            "size": args.size,
            "n_train": args.n_train,
            "n_test": args.n_test,
            "epochs": epochs,
            "lr": lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
        path = dfcompress.save(trained, args.out / f"{name}.safetensors", metadata=info)
        mb = path.stat().st_size / 1e6
        info |= {"file_mb": mb, "train_s": train_s, "path": str(path)}
        print(f"{name}: test AUC {m.auc:.4f}, float32 file {mb:.2f} MB, trained in {train_s:.0f} s")
        # merge with earlier runs so that models can be trained one at a time
        index = args.out / "baselines.json"
        record = json.loads(index.read_text()) if index.exists() else {}
        record[name] = info
        index.write_text(json.dumps(record, indent=2))

    index = args.out / "baselines.json"
    record = json.loads(index.read_text()) if index.exists() else {}
    rows = [_row(k, v) for k, v in record.items()]
    table = markdown_table(HEADERS, rows)
    print(table)
    if not args.no_results and rows:
        notes = (
            "Proxy task (docs/proxy_task.rst), AdamW with a cosine learning rate, binary "
            f"cross-entropy on one logit, {args.threads} torch thread(s). Small resolution and "
            "sample counts keep each model to minutes on a 2-core CPU; the figures are for this "
            "proxy, not for a deepfake data set. Checkpoints: `<out>/<model>.safetensors` "
            'written by `dfcompress.save`, settings in `<out>/baselines.json`. "train s" is '
            "wall-clock time, inflated when the machine is shared. `--models ''` re-renders "
            "this table from `baselines.json` without training. Models: `npr_bnext('tiny')` "
            "and `npr_efficientnet('b0')` (dfcompress's EfficientNet-B0, timm's parameter "
            "names and layout, randomly initialised as dfcompress initialises it)."
        )
        update_section("baselines", f"## Baselines\n\n{table}\n\n{notes}\n\n{machine_line()}")
    return 0


def _row(name: str, info: dict[str, Any]) -> list[Any]:
    auc = float(info["auc"])
    return [
        name,
        f"{info['size']}px",
        info["n_train"],
        info["epochs"],
        fmt(auc),
        fmt(info["eer"]),
        fmt(info["accuracy"]),
        f"{info['file_mb']:.2f}",
        f"{info['train_s']:.0f}",
        "yes" if 0.90 <= auc <= 0.99 else "NO",
    ]


if __name__ == "__main__":
    sys.exit(main())
