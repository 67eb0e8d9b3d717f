"""Sensitivity-scan speed: a 21M-parameter ResNet-34-style detector at 64 px.

One scan of every conv/linear layer at 5 amounts on 64 calibration images, the
way ``prune(..., sensitivity=True)`` runs it, timed on this machine::

    python benchmarks/scan_speed.py            # the 21M network (prints the time)
    python benchmarks/scan_speed.py --quick    # a narrow network, a smoke run

Random weights with BatchNorm statistics from a few batches of noise, so the
activations are in a realistic range; the layer count and shapes are those of
ResNet-34 (basic blocks 3-4-6-3, widths 64-512) with one output logit.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from _resnets import resnet
from dfcompress.prune import scan

AMOUNTS = (0.1, 0.3, 0.5, 0.7, 0.9)


def resnet34_like(width: int = 64) -> nn.Module:
    """ResNet-34's layout (21.3M parameters at width 64) with a one-logit head."""
    return resnet((3, 4, 6, 3), width)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 8, 8 images: a smoke run")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    width, n, px = (8, 8, 32) if args.quick else (64, 64, 64)
    net = resnet34_like(width)
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(16, 3, px, px))
    net.eval()
    x = torch.randn(n, 3, px, px)
    params = sum(p.numel() for p in net.parameters())
    start = time.perf_counter()
    res = scan(net, calibration=x, amounts=AMOUNTS, n_samples=n, progress=False)
    seconds = time.perf_counter() - start
    print(
        f"scan of {len(res.layers)} layers x {len(AMOUNTS)} amounts, {params / 1e6:.1f}M "
        f"params, {n} images at {px} px, {torch.get_num_threads()} threads: {seconds:.1f} s, "
        f"{res.forward_passes} passes ({res.full_pass_equivalent:.1f} full-pass equivalents)"
    )


if __name__ == "__main__":
    main()
