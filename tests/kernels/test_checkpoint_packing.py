"""Properties of the GPTQ packed layout (qcheck/quantize/packing.py): packing is lossless, and a
quantized weight packed in either format and dequantized is the weight qcheck computed."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcheck.quantize.gptq import gptq
from qcheck.quantize.grid import GridSpec
from qcheck.quantize.packing import (SUPPORTED_BITS, dequantize, pack, pack_linear, packed_length, unpack,
                                     unpack_linear)
from qcheck.quantize.rtn import rtn

pytestmark = pytest.mark.kernels


def _multiple(bits: int) -> int:
    """The smallest count of b-bit values that fills whole 32-bit words."""
    return 32 // math.gcd(bits, 32)


@given(data=st.data())
def test_pack_then_unpack_is_the_identity(data):
    bits = data.draw(st.sampled_from(SUPPORTED_BITS), label="bits")
    n = _multiple(bits) * data.draw(st.integers(1, 4), label="words")
    m = data.draw(st.integers(1, 4), label="columns")
    values = torch.tensor(data.draw(st.lists(st.integers(0, 2 ** bits - 1), min_size=n * m, max_size=n * m)))
    values = values.reshape(n, m)
    words = pack(values, bits)
    assert words.dtype == torch.int32 and words.shape == (n * bits // 32, m)
    assert torch.equal(unpack(words, bits), values)


def test_3_bit_layout_is_autogptqs_interleaved_one():
    """32 values in 3 words; value 10 straddles words 0/1, value 21 words 1/2 (qlinear_cuda_old.py)."""
    values = torch.zeros(32, 1, dtype=torch.long)
    values[10], values[21], values[31] = 0b101, 0b011, 0b111
    words = pack(values, 3)[:, 0].long() & 0xFFFFFFFF
    assert int(words[0]) == 0b01 << 30                    # low two bits of value 10 at the top of word 0
    assert int(words[1]) == 0b1 | 0b1 << 31               # its third bit, then value 21's lowest bit
    assert int(words[2]) == 0b01 | 0b111 << 29            # value 21's upper bits, value 31 at bits 29..31


def test_words_with_the_sign_bit_set_unpack_to_their_values():
    values = torch.full((8, 2), 15)                       # every nibble set: the word is -1 as int32
    words = pack(values, 4)
    assert torch.equal(words, torch.full((1, 2), -1, dtype=torch.int32))
    assert torch.equal(unpack(words, 4), values)


def test_unsupported_widths_and_ragged_lengths_are_refused():
    with pytest.raises(ValueError, match="5-bit packing is not defined"):
        packed_length(32, 5)
    with pytest.raises(ValueError, match="need a multiple of 32"):
        packed_length(16, 3)
    with pytest.raises(ValueError, match="values must lie in 0..15"):
        pack(torch.full((8, 1), 16), 4)


def _quantized(draw, data, bits: int):
    """An RTN or GPTQ result (any group size, act-order, sym/asym) of packable shape."""
    d_in = 32 * data.draw(st.integers(1, 2), label="d_in / 32")
    d_out = _multiple(bits) * data.draw(st.integers(1, 2), label="d_out / multiple")
    grid = data.draw(st.builds(GridSpec, bits=st.just(bits), sym=st.booleans(),
                               kind=st.sampled_from(["study", "reference"])), label="grid")
    group_size = data.draw(st.one_of(st.none(), st.sampled_from([8, 16, 32]), st.integers(1, d_in)), label="group")
    w = draw.matrix(data, d_out, d_in)
    if data.draw(st.booleans(), label="gptq"):
        return gptq(w, draw.hessian(data, d_in), grid, group_size=group_size,
                    act_order=data.draw(st.booleans(), label="act_order"))
    return rtn(w, grid, group_size=group_size)


@given(data=st.data())
def test_packed_float32_scales_dequantize_to_the_quantized_weight_exactly(draw, data):
    bits = data.draw(st.sampled_from(SUPPORTED_BITS), label="bits")
    q = _quantized(draw, data, bits)
    fmt = "v2" if (q.zeros == 0).any() else data.draw(st.sampled_from(["v1", "v2"]), label="format")
    packed = pack_linear(q, bits, format=fmt, dtype=torch.float32)
    codes, zeros = unpack_linear(packed, bits, format=fmt)
    assert torch.equal(codes, q.codes.T) and torch.equal(zeros, q.zeros.T.long())
    assert torch.equal(packed.g_idx.long(), q.g_idx)      # act-order: g_idx as made, rows never permuted
    assert torch.equal(dequantize(codes, zeros, packed.scales, packed.g_idx), q.weight.T)


@given(data=st.data())
def test_packed_float16_scales_change_only_the_scales(draw, data):
    bits = data.draw(st.sampled_from(SUPPORTED_BITS), label="bits")
    q = _quantized(draw, data, bits)
    scales16 = q.scales.half()
    if ((scales16 == 0) | scales16.isinf()).any():        # float16 cannot hold them: refused, not rounded
        with pytest.raises(ValueError, match="do not fit torch.float16"):
            pack_linear(q, bits, format="v2")
        return
    packed = pack_linear(q, bits, format="v2")
    codes, zeros = unpack_linear(packed, bits, format="v2")
    weight = dequantize(codes, zeros, packed.scales, packed.g_idx)
    expected = scales16.float()[:, q.g_idx] * (q.codes - q.zeros[:, q.g_idx]).float()
    assert packed.scales.dtype == torch.float16 and torch.equal(weight, expected.T)
    # Rounding a normal float16 scale moves its weights by at most 2^-11 of themselves (11
    # significant bits); subnormal scales (< 2^-14) keep fewer bits.
    normal = (q.scales[:, q.g_idx] >= 2 ** -14).T
    assert ((weight - q.weight.T).abs() <= 2 ** -11 * q.weight.T.abs())[normal].all()


def test_v1_cannot_store_a_zero_point_of_0():
    w = torch.rand(8, 32) + 0.1                           # all positive: the asymmetric zero is 0
    q = rtn(w, GridSpec(4, sym=False))
    assert (q.zeros == 0).all()
    with pytest.raises(ValueError, match="format v1 stores zero − 1 and cannot hold a zero point of 0"):
        pack_linear(q, 4, format="v1")
    assert torch.equal(unpack_linear(pack_linear(q, 4, format="v2"), 4, format="v2")[1], q.zeros.T.long())


def test_scales_float16_cannot_hold_are_refused():
    q = rtn(torch.full((8, 32), 1e6), GridSpec(4))        # scale 1e6 / 7 > 65504
    with pytest.raises(ValueError, match="do not fit torch.float16.*dtype=torch.float32"):
        pack_linear(q, 4, format="v2")
