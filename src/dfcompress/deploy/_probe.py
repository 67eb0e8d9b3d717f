"""Load one deployed file in this fresh process, run one image, print the peak memory.

``python -m dfcompress.deploy._probe MODULE PATH C,H,W [DTYPE [THREADS]]`` imports the
target module ``MODULE`` (e.g. ``dfcompress.deploy.onnxruntime``), calls its
``load_artifact(PATH)``, runs one sample of shape ``C,H,W`` and prints one JSON line
``{"peak_rss_bytes": ...}``: the high-water mark of this process's resident memory.
"""

from __future__ import annotations

import importlib
import json
import sys

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run the probe; returns the exit status."""
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    import torch

    module, path, shape = argv[0], argv[1], argv[2]
    dtype = getattr(torch, argv[3]) if len(argv) > 3 else torch.float32
    if len(argv) > 4:
        torch.set_num_threads(int(argv[4]))
    sizes = [int(s) for s in shape.split(",") if s]
    artifact = importlib.import_module(module).load_artifact(path)
    x = torch.rand((1, *sizes), generator=torch.Generator().manual_seed(0)).to(dtype)
    artifact.run(x)
    from dfcompress.evaluate.measure import peak_rss_bytes

    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
