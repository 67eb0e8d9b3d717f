"""Packed integer storage: exact round trips and byte counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dfcompress.errors import DfcompressError
from dfcompress.quant.functional import int_range
from dfcompress.quant.pack import pack, packed_nbytes, unpack


@given(data=st.data(), bits=st.integers(2, 16), signed=st.booleans())
def test_round_trip_any_bits_odd_sizes(data: st.DataObject, bits: int, signed: bool) -> None:
    qmin, qmax = int_range(bits, signed)
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    n = math.prod(shape)
    codes = torch.tensor(data.draw(st.lists(st.integers(qmin, qmax), min_size=n, max_size=n)))
    p = pack(codes.reshape(shape), bits, signed)
    assert p.numel() * p.element_size() == packed_nbytes(n, bits, signed)
    assert torch.equal(unpack(p, bits, signed, shape).to(torch.int64), codes.reshape(shape))


def test_int4_is_two_codes_per_byte_and_int8_one() -> None:
    assert packed_nbytes(1001, 4) == 501
    assert packed_nbytes(1001, 8) == 1001


def test_out_of_range_codes_are_refused() -> None:
    with pytest.raises(DfcompressError, match="do not fit 4-bit"):
        pack(torch.tensor([8]), 4, signed=True)
    with pytest.raises(DfcompressError, match="packed tensor has"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, True, (7,))
