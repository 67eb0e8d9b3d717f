"""What unstructured pruning would do to BNext's binary convolutions (a what-if, no fine-tune).

    python benchmarks/binary_sparsity.py

dfcompress never prunes :class:`~dfcompress.models.BinaryConv2d` weights: a binary
weight is ``alpha * sign(w)``, so a latent weight set to zero still acts as ``+1``.
This script measures the alternative, ternary weights: the smallest latent weights
(globally over all binary convolutions, or the same share in each) act as 0 and the
others keep ``alpha * sign(w)`` with the layer's original alpha. It reports the test
AUC of the BNext baseline without fine-tuning, and the bits per weight a ternary
layer needs (a presence bit plus a sign bit per kept weight) against the 1 bit of a
packed binary layer. Writes the "binary-sparsity" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine_line, markdown_table, update_section
from dfcompress.data import loader, predict
from dfcompress.evaluate.metrics import auc
from dfcompress.io import load
from dfcompress.models import BinaryConv2d

CHECKPOINT = Path.home() / ".cache" / "dfcompress" / "baselines" / "bnext.safetensors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--amounts", default="0.1,0.2,0.3,0.5")
    p.add_argument("--no-results", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not args.checkpoint.is_file():
        print(f"no BNext checkpoint at {args.checkpoint}: run benchmarks/train_baselines.py")
        return 1
    model = load(args.checkpoint).eval()
    test = loader("test", size=args.size, n=args.n_test, batch_size=100, seed=0)

    def test_auc() -> float:
        pred = predict(model, test, progress=False)
        return float(auc(pred.labels, pred.scores))

    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d) and m.weight is not None]
    latent = {m: m.weight.detach().clone() for m in convs if m.weight is not None}
    alpha = {m: w.abs().mean(dim=(1, 2, 3), keepdim=True) for m, w in latent.items()}
    magnitudes = torch.cat([w.abs().flatten() for w in latent.values()])
    base = test_auc()
    rows = [["none (binary)", "", f"{base:.4f}", "+0.0000", "1.00"]]
    for amount in (float(a) for a in args.amounts.split(",")):
        for scope in ("global", "local"):
            for m, w in latent.items():
                pool = magnitudes if scope == "global" else w.abs().flatten()
                k = max(1, round(amount * pool.numel()))
                threshold = pool.kthvalue(k).values
                ternary = alpha[m] * torch.sign(w) * (w.abs() > threshold)
                # what-if only: the layer convolves with the ternary weight
                m.binary_weight = lambda t=ternary: t  # type: ignore[method-assign]
            a = test_auc()
            bits = 1 + (1 - amount)  # presence bit + sign bit of each kept weight
            rows.append([f"{amount:.0%}", scope, f"{a:.4f}", f"{a - base:+.4f}", f"{bits:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    for m in convs:
        del m.binary_weight  # back to the class method
    table = markdown_table(
        ["binary weights zeroed", "scope", "test AUC", "diff", "bits per weight"], rows
    )
    print(table)
    if not args.no_results:
        n = sum(w.numel() for w in latent.values())
        notes = (
            f"BNext baseline ({args.checkpoint.name}, NPR + BNext-tiny), {args.n_test} proxy test "
            f"images at {args.size} px, no fine-tuning; {len(convs)} binary convolutions with "
            f"{n / 1e6:.1f}M weights. A zeroed weight contributes 0 instead of +-alpha; the "
            "others keep their sign and the layer's alpha. `global`: one magnitude threshold "
            "over all binary layers; `local`: the same share in each. Bits per weight: a "
            "presence bitmask plus one sign bit per kept weight, against 1 bit for a packed "
            "binary layer. This is why dfcompress leaves binary convolutions out of "
            "unstructured pruning: it costs AUC at every amount and cannot shrink a packed file."
        )
        update_section(
            "binary-sparsity",
            f"## Sparsity in binary convolutions (what-if)\n\n{table}\n\n{notes}\n\n"
            f"{machine_line()}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
