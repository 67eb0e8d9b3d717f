"""Safe save and load of (compressed) models: safetensors plus a JSON manifest.

One file holds everything. Its tensors are stored with safetensors, and its
header metadata carries a JSON *manifest* under the key ``"dfcompress"``:

- how to build the model's skeleton: a registered factory or an ``nn.Module``
  class with JSON keyword arguments, or, for models made of ``torch.nn`` layers,
  the tree of containers and layers (see :func:`dfcompress.set_constructor` and
  :func:`register_factory`);
- the modules that compression swapped in (quantized wrappers, packed binary
  convolutions, ...) as ``kind`` + JSON ``spec`` (see
  :func:`dfcompress._rebuild.register_module`);
- the structural attributes of every module (``in_channels``,
  ``num_features``, ...) so that channel-pruned models come back with their
  smaller shapes;
- per tensor: shape, dtype and *encoding* (dense, bitmask + values, or CSR;
  one-byte parts zlib-compressed), see :mod:`dfcompress.io._encodings`;
- the compression history (recipes, configs) and a SHA-256 of the tensor data.

:func:`load` never unpickles and never calls anything a file names except a
registered factory or an ``nn.Module`` class from an allowed package; every
declared size is checked before allocation. See :doc:`/security`.

>>> import tempfile, os, torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
>>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
>>> _ = save(net, path)
>>> back = load(path)
>>> torch.equal(back[3].weight, net[3].weight)
True
"""

from __future__ import annotations

from dfcompress.io._format import FORMAT as FORMAT
from dfcompress.io._format import FORMAT_VERSION as FORMAT_VERSION
from dfcompress.io._format import read_manifest as read_manifest
from dfcompress.io._load import load as load
from dfcompress.io._registry import register_factory as register_factory
from dfcompress.io._save import save as save
from dfcompress.io._save import serialize as serialize
from dfcompress.io._save import serialized_size as serialized_size

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "load",
    "read_manifest",
    "register_factory",
    "save",
    "serialize",
    "serialized_size",
]
