"""Real integer storage of quantized weights: int8 as is, two int4 codes per byte.

Codes of 2 to 4 bits are stored as nibbles (two per ``uint8``), 5 to 8 bits as
one byte each, 9 to 16 bits as ``int16``/``int32``. Packing is bit-exact:
``unpack(pack(q)) == q`` for every code in range.

>>> q = torch.tensor([-8, 7, 0, -1, 3], dtype=torch.int8)
>>> p = pack(q, bits=4, signed=True)
>>> p.dtype, p.numel(), packed_nbytes(5, bits=4)
(torch.uint8, 3, 3)
>>> unpack(p, bits=4, signed=True, shape=(5,))
tensor([-8,  7,  0, -1,  3], dtype=torch.int8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dfcompress.errors import DfcompressError
from dfcompress.quant.functional import check_bits, int_range, storage_dtype

__all__ = ["pack", "packed_dtype", "packed_nbytes", "packed_numel", "unpack"]


def packed_numel(numel: int, bits: int) -> int:
    """Number of storage elements for ``numel`` codes of ``bits`` bits.

    >>> packed_numel(7, 4), packed_numel(7, 8)
    (4, 7)
    """
    check_bits(bits)
    return (numel + 1) // 2 if bits <= 4 else numel


def packed_dtype(bits: int, signed: bool) -> torch.dtype:
    """The storage dtype of packed codes.

    >>> packed_dtype(4, True), packed_dtype(8, True), packed_dtype(8, False)
    (torch.uint8, torch.int8, torch.uint8)
    """
    check_bits(bits)
    if bits <= 4:
        return torch.uint8
    return storage_dtype(*int_range(bits, signed))


def packed_nbytes(numel: int, bits: int, signed: bool = True) -> int:
    """Exact bytes taken by ``numel`` packed codes.

    >>> packed_nbytes(1000, 8), packed_nbytes(1001, 4), packed_nbytes(10, 12)
    (1000, 501, 20)
    """
    elem = torch.empty((), dtype=packed_dtype(bits, signed)).element_size()
    return packed_numel(numel, bits) * elem


def pack(q: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Pack integer codes into their storage form (a flat tensor).

    Args:
        q: Integer codes within the ``bits``-wide signed or unsigned range.
        bits: Code width, 2..16.
        signed: Whether the codes are two's-complement signed.

    Returns:
        A 1-D tensor of :func:`packed_numel` elements of :func:`packed_dtype`.

    >>> pack(torch.tensor([1, 2, 3], dtype=torch.uint8), bits=4, signed=False)
    tensor([33,  3], dtype=torch.uint8)
    """
    qmin, qmax = int_range(bits, signed)
    flat = q.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < qmin or int(flat.max()) > qmax):
        raise DfcompressError(
            f"codes in [{int(flat.min())}, {int(flat.max())}] do not fit {bits}-bit "
            f"{'signed' if signed else 'unsigned'} range [{qmin}, {qmax}]"
        )
    if bits > 4:
        return flat.to(packed_dtype(bits, signed))
    nib = flat & 0xF  # two's complement low nibble for signed codes
    if nib.numel() % 2:
        nib = torch.cat([nib, nib.new_zeros(1)])
    pairs = nib.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, signed: bool, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack`: the codes in ``shape`` (smallest integer dtype of the range).

    >>> unpack(torch.tensor([33, 3], dtype=torch.uint8), bits=4, signed=False, shape=(3,))
    tensor([1, 2, 3], dtype=torch.int8)
    """
    numel = math.prod(shape)
    if packed.numel() != packed_numel(numel, bits):
        raise DfcompressError(
            f"packed tensor has {packed.numel()} elements; {numel} codes of {bits} bits "
            f"need {packed_numel(numel, bits)}"
        )
    out_dtype = storage_dtype(*int_range(bits, signed))
    if bits > 4:
        return packed.reshape(tuple(shape)).to(out_dtype)
    p = packed.reshape(-1).to(torch.int16)
    both = torch.stack([p & 0xF, (p >> 4) & 0xF], dim=1).reshape(-1)[:numel]
    if signed:
        both = torch.where(both >= 8, both - 16, both)
    return both.to(out_dtype).reshape(tuple(shape))
