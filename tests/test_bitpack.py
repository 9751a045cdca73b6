"""Bit-packing: golden bytes for the spec's bit order, and property-based round trips."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slc.format.bitpack import pack_bits, packed_size, unpack_bits
from slc.errors import SlcFormatError


@pytest.mark.parametrize("codes,bits,golden", [
    ([1, 2, 3], 2, "39"),        # 01 | 10 << 2 | 11 << 4, LSB first
    ([5], 3, "05"),
    ([0x1FF, 0], 9, "ff0100"),   # the 9th bit of code 0 is bit 0 of byte 1
    ([1, 0, 0, 0, 0, 0, 0, 0, 1], 1, "0101"),
    ([0xABCDE], 20, "debc0a"),
])
def test_golden_bit_order(codes, bits, golden):
    assert pack_bits(np.array(codes), bits).hex() == golden
    assert unpack_bits(bytes.fromhex(golden), len(codes), bits).tolist() == codes


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 32).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, (1 << b) - 1),
                                                                            max_size=300))))
def test_roundtrip(case):
    bits, codes = case
    data = pack_bits(np.array(codes, dtype=np.int64), bits)
    assert len(data) == packed_size(len(codes), bits)
    assert unpack_bits(data, len(codes), bits).tolist() == codes


def test_rejects_out_of_range_codes_and_widths():
    with pytest.raises(ValueError):
        pack_bits(np.array([4]), 2)
    with pytest.raises(ValueError):
        pack_bits(np.array([-1]), 8)
    with pytest.raises(ValueError):
        pack_bits(np.array([1]), 33)


def test_unpack_validates_length_and_padding():
    with pytest.raises(SlcFormatError, match="expected 2 bytes"):
        unpack_bits(b"\x00", 3, 5)
    with pytest.raises(SlcFormatError, match="padding"):
        unpack_bits(b"\xff", 1, 3)
