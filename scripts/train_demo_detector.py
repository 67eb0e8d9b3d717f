"""Train the demo detector on the proxy task and write the checkpoint that ships with dfcompress.

    python scripts/train_demo_detector.py            # writes src/dfcompress/_assets/...

The binary convolutions are packed at 1 bit before saving; the validation AUC,
the training settings and the file size go into the checkpoint's metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dfcompress.data import loader, predict
from dfcompress.demo import DEMO_SIZE, checkpoint_path, train_demo_detector
from dfcompress.evaluate.metrics import auc
from dfcompress.io import save
from dfcompress.models import pack_binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=checkpoint_path())
    parser.add_argument("--size", type=int, default=DEMO_SIZE)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = train_demo_detector(
        size=args.size, n_train=args.n_train, epochs=args.epochs, seed=args.seed
    )
    seconds = time.perf_counter() - t0
    val = predict(model, loader("val", size=args.size, n=500, batch_size=250), progress=False)
    val_auc = auc(val.labels, val.scores)
    packed = pack_binary(model)
    metadata = {
        "task": "dfcompress proxy (real photo crops vs up-sampled fakes)",
        "size": args.size,
        "n_train": args.n_train,
        "epochs": args.epochs,
        "seed": args.seed,
        "val_auc": round(val_auc, 4),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    path = save(packed, args.out, metadata=metadata)
    print(
        f"val AUC {val_auc:.4f}, trained in {seconds:.0f} s, wrote {path} "
        f"({path.stat().st_size / 1e6:.3f} MB)"
    )


if __name__ == "__main__":
    main()
