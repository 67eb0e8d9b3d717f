"""Time deployed files in this fresh process and print the medians.

``python -m dfcompress.deploy._timer SPEC`` reads the JSON file ``SPEC`` that
:func:`dfcompress.deploy._measure.fresh_latencies` writes: the files (a name, the
target module, the path), the example batch (a ``.npy`` file, read without
pickle, and its torch dtype) and the arguments of
:func:`~dfcompress.deploy._measure.latencies`. Each file is loaded with its target
module's ``load_artifact``, as an application loads it, and timed here; the
process prints one JSON line ``{name: {batch: ms per image}}``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Time the files of one spec; returns the exit status."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import numpy as np
    import torch

    from dfcompress.deploy._measure import latencies

    spec = json.loads(Path(argv[0]).read_text())
    example = torch.from_numpy(np.load(spec["example"], allow_pickle=False))
    example = example.to(getattr(torch, spec["dtype"]))
    artifacts = {
        name: importlib.import_module(module).load_artifact(path)
        for name, module, path in spec["files"]
    }
    times = latencies(
        artifacts,
        example,
        batches=[int(b) for b in spec["batches"]],
        repeats=int(spec["repeats"]),
        warmup=int(spec["warmup"]),
        threads=spec["threads"],
        settle=int(spec["settle"]),
        seed=int(spec["seed"]),
    )
    print(json.dumps({k: {str(b): ms for b, ms in per.items()} for k, per in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
