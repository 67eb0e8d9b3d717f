"""Train the demo detector on the proxy task and write the checkpoint that ships with dfcompress.

    nice -n 15 python scripts/train_demo_detector.py   # writes src/dfcompress/_assets/...

The detector is :func:`dfcompress.data.detectors.npr_resnet` (NPR features into
a 1.24M-parameter SE-ResNet) at :data:`dfcompress.demo.DEMO_SIZE` pixels, with
the settings of :data:`dfcompress.demo.DEMO_TRAIN`; its head's bias is then
shifted so that P(fake) = 0.5 is the most accurate threshold on the validation
split (no change of AUC). Its weights are stored in
float16 (half the file; the float32 model loads them exactly); the validation
and test AUC, the training settings and the time go into the checkpoint's
metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dfcompress.data import loader, predict
from dfcompress.demo import DEMO_SIZE, DEMO_TRAIN, checkpoint_path, train_demo_detector
from dfcompress.evaluate.metrics import auc
from dfcompress.io import save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=checkpoint_path())
    parser.add_argument("--size", type=int, default=DEMO_SIZE)
    parser.add_argument("--n-train", type=int, default=DEMO_TRAIN["n_train"])
    parser.add_argument("--epochs", type=int, default=DEMO_TRAIN["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = train_demo_detector(
        size=args.size, n_train=args.n_train, epochs=args.epochs, seed=args.seed
    )
    seconds = time.perf_counter() - t0
    aucs = {}
    for split, n in (("val", 500), ("test", 1000)):
        p = predict(model, loader(split, size=args.size, n=n, batch_size=250), progress=False)
        aucs[split] = auc(p.labels, p.scores)
    metadata = {
        "task": "dfcompress proxy (real photo crops vs up-sampled fakes)",
        "size": args.size,
        "n_train": args.n_train,
        "epochs": args.epochs,
        "seed": args.seed,
        "val_auc": round(aucs["val"], 4),
        "test_auc": round(aucs["test"], 4),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    path = save(model.half(), args.out, metadata=metadata)
    print(
        f"val AUC {aucs['val']:.4f}, test AUC {aucs['test']:.4f}, trained in {seconds:.0f} s, "
        f"wrote {path} ({path.stat().st_size / 1e6:.3f} MB)"
    )


if __name__ == "__main__":
    main()
