"""Bit packing: the pinned docstring example, exact sizes, round trips, bad input."""

import math

import pytest
import torch
from hypothesis import given

from fxquant import QuantConfig, pack, packed_nbytes, quantize_weight, unpack
from fxquant.core import packing
from fxquant.core.packing import _unpack_columns, _unpack_lanes
from tests.strategies import bit_widths, codes_and_bits, conv_weights


def _reference_pack(codes, bits):
    """Bit-by-bit reference of the documented layout (slow, obviously correct)."""
    stream = []
    for c in codes.tolist():
        stream += [(c >> i) & 1 for i in range(bits)]
    stream += [0] * (-len(stream) % 8)
    return [sum(stream[j + i] << i for i in range(8)) for j in range(0, len(stream), 8)]


def test_docstring_example_is_pinned():
    packed = pack(torch.tensor([5, 3, 7]), 3)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [221, 1]
    assert unpack(torch.tensor([221, 1], dtype=torch.uint8), 3, numel=3).tolist() == [5, 3, 7]


@given(codes_and_bits())
def test_round_trip_and_exact_size(cb):
    codes, bits = cb
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(codes.numel() * bits / 8) == packed_nbytes(codes.numel(), bits)
    assert torch.equal(unpack(packed, bits, codes.numel()), codes)


@given(conv_weights(), bit_widths)
def test_conv_shaped_codes_round_trip(w, bits):
    """A Conv1d/2d/3d weight's codes: packed to exactly ceil(n*b/8) bytes, unpacked to the same tensor."""
    codes = quantize_weight(w, QuantConfig(bits=bits)).codes
    packed = pack(codes, bits)
    assert packed.numel() == packed_nbytes(w.numel(), bits)
    assert torch.equal(unpack(packed, bits, codes.numel()).view(w.shape), codes)


@given(codes_and_bits(max_numel=40))
def test_matches_bit_level_reference(cb):
    codes, bits = cb
    assert pack(codes, bits).tolist() == _reference_pack(codes, bits)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 1001])
def test_small_and_tail_lengths(bits, numel):
    codes = torch.randint(0, 1 << bits, (numel,), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.numel() == math.ceil(numel * bits / 8)
    assert torch.equal(unpack(packed, bits, numel), codes)


def test_multidimensional_codes_flatten_in_row_major_order():
    codes = torch.arange(16, dtype=torch.uint8).view(4, 4)
    assert torch.equal(unpack(pack(codes, 4), 4, 16).view(4, 4), codes)


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        pack(torch.zeros(3, dtype=torch.uint8), bits)


def test_codes_out_of_range_and_wrong_dtypes():
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        pack(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="integer"):
        pack(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="uint8"):
        unpack(torch.tensor([1, 2]), 2, 4)
    with pytest.raises(ValueError, match="need"):
        unpack(torch.zeros(1, dtype=torch.uint8), 3, 8)


# ----------------------------------------------------------------------------- fast unpack path
# unpack() takes the lane (SWAR) path on little-endian hosts; the column path is
# the reference it must match bit for bit, at every width, length and offset.


@given(codes_and_bits(max_numel=2000))
def test_fast_unpack_matches_column_reference(cb):
    codes, bits = cb
    packed = pack(codes, bits)
    if bits < 8 and codes.numel():
        assert torch.equal(_unpack_lanes(packed, bits, codes.numel()),
                           _unpack_columns(packed, bits, codes.numel()))
    assert torch.equal(unpack(packed, bits, codes.numel()), codes)


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("numel", [1, 8, 9, 63, 64, 65, 200_003])
def test_fast_unpack_on_slices_with_trailing_bytes(bits, numel):
    # Packed bytes inside a bigger buffer, at an odd offset, with garbage after
    # them: the strided 8-byte loads of odd widths must not read the garbage into codes.
    codes = torch.randint(0, 1 << bits, (numel,), dtype=torch.uint8)
    packed = pack(codes, bits)
    buffer = torch.full((packed.numel() + 20,), 0xFF, dtype=torch.uint8)
    buffer[3:3 + packed.numel()] = packed
    assert torch.equal(unpack(buffer[3:], bits, numel), codes)
    assert torch.equal(unpack(buffer[3:3 + packed.numel()], bits, numel), codes)
    with torch.inference_mode():
        assert torch.equal(unpack(packed, bits, numel), codes)


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_fast_unpack_across_chunks(bits, monkeypatch):
    # Tiny chunks: every chunk boundary (and a partial last chunk) is exercised.
    monkeypatch.setattr(packing, "_CHUNK_BYTES", 24)
    codes = torch.randint(0, 1 << bits, (1001,), dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, bits), bits, 1001), codes)


def test_column_path_is_used_on_big_endian_hosts(monkeypatch):
    monkeypatch.setattr(packing, "_LITTLE_ENDIAN", False)

    def lanes_read_bytes_in_host_order(*_):
        raise AssertionError("the lane path assumes little-endian bytes")

    monkeypatch.setattr(packing, "_unpack_lanes", lanes_read_bytes_in_host_order)
    codes = torch.randint(0, 8, (77,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack(pack(codes, 3), 3, 77), codes)
