"""GPTQ's packed layout (AutoGPTQ / GPTQModel checkpoints): integer codes <-> int32 words.

One rule covers every bit width: along the packed axis the values form a little-endian bit
stream, value k in stream bits [b·k, b·k + b), and word w holds stream bits [32·w, 32·w + 32).
For b = 2, 4, 8 that is "value j of word r is element (32/b)·r + j". For b = 3, 32 values fill
three words and values 10 and 21 straddle a word boundary: exactly AutoGPTQ's interleaved 3-bit
layout (qlinear_cuda_old.py `pack`, the `bits == 3` branch: value 10 split over bits 30-31 of
word 0 and bit 0 of word 1, value 21 over bit 31 of word 1 and bits 0-1 of word 2).

Per linear layer (`pack_linear` / `unpack_linear`), with the input dimension first:
    qweight int32 (d_in·b/32, d_out)       codes packed along d_in
    qzeros  int32 (n_groups, d_out·b/32)   zero points packed along d_out
    scales  fp16  (n_groups, d_out)
    g_idx   int32 (d_in,)                  the group of every input row (act-order: not monotone)
    W[i, o] = scales[g_idx[i], o] · (q[i, o] − zero[g_idx[i], o])
The zero convention: format v1 ("gptq", AutoGPTQ) stores zero − 1, v2 ("gptq_v2", GPTQModel)
stores the zero itself. v1 cannot hold a zero point of 0 (it would be −1), which asymmetric
grids produce, hence v2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from qcheck.quantize.grid import QuantizedWeight

SUPPORTED_BITS = (2, 3, 4, 8)   # what the format defines (AutoGPTQ QuantLinear refuses the rest)
WORD = 32                       # bits per packed word (pack_dtype int32)
ZERO_OFFSET = {"v1": 1, "v2": 0}  # stored zero = zero − offset


def packed_length(n: int, bits: int) -> int:
    """Words needed for n b-bit values; ValueError unless they fill whole words."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{bits}-bit packing is not defined by the GPTQ format; use one of {SUPPORTED_BITS}")
    if n * bits % WORD:
        raise ValueError(f"{n} values of {bits} bits do not fill whole {WORD}-bit words "
                         f"(need a multiple of {WORD // _gcd(bits, WORD)})")
    return n * bits // WORD


def pack_rows(values: Int[Tensor, "m n"], bits: int) -> Int[Tensor, "m n_words"]:
    """Pack values 0..2^b − 1 along dim 1 into ceil(n·b/32) int32 words per row: the same bit stream
    as `pack`, the last word's unused high bits 0 (compressed-tensors' pack-quantized layout,
    checkpoint/compressed.py, which does not need n·b to fill whole words)."""
    n = values.shape[1]
    step = WORD // _gcd(bits, WORD)                       # values that fill whole words
    padded = torch.zeros((values.shape[0], -(-n // step) * step), dtype=torch.int64)
    padded[:, :n] = values
    return pack(padded.T, bits).T[:, :-(-n * bits // WORD)].contiguous()


def unpack_rows(words: Int[Tensor, "m n_words"], bits: int, n: int) -> Int[Tensor, "m n"]:
    """The first n values packed along dim 1 of `words` (inverse of `pack_rows`), int64."""
    step = WORD // _gcd(bits, WORD)
    step_words = step * bits // WORD                      # words that hold `step` values exactly
    n_words = -(-words.shape[1] // step_words) * step_words
    padded = torch.zeros((words.shape[0], n_words), dtype=torch.int32)
    padded[:, :words.shape[1]] = words
    return unpack(padded.T.contiguous(), bits).T[:, :n]


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _stream(n: int, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each of n values: its word, its bit offset in that word, and whether it spills over."""
    start = torch.arange(n, dtype=torch.int64) * bits
    word, shift = start // WORD, start % WORD
    return word, shift, shift + bits > WORD


def pack(values: Int[Tensor, "n m"], bits: int) -> Int[Tensor, "n_words m"]:
    """Pack integer values 0..2^b − 1 along dim 0 into int32 words (two's complement, as stored)."""
    n_words = packed_length(values.shape[0], bits)
    v = values.to(torch.int64)
    if v.numel() and (v.min() < 0 or v.max() >= 2 ** bits):
        raise ValueError(f"pack: values must lie in 0..{2 ** bits - 1} for {bits} bits, "
                         f"got {int(v.min())}..{int(v.max())}")
    word, shift, spills = _stream(v.shape[0], bits)
    out = torch.zeros((n_words, *v.shape[1:]), dtype=torch.int64)
    # The bit ranges are disjoint, so adding is or-ing.
    out.index_add_(0, word, (v << shift[:, None]) & 0xFFFFFFFF)
    if spills.any():
        out.index_add_(0, word[spills] + 1, v[spills] >> (WORD - shift[spills])[:, None])
    return torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32)


def unpack(words: Int[Tensor, "n_words m"], bits: int) -> Int[Tensor, "n m"]:
    """The int64 values packed along dim 0 of `words` (inverse of `pack`)."""
    if words.dtype != torch.int32:
        raise ValueError(f"unpack: packed words must be int32, got {words.dtype}")
    n = words.shape[0] * WORD // bits
    packed_length(n, bits)  # validates bits
    # Widen and mask first: an int32 word with its top bit set is negative, and shifting it
    # right would drag the sign into the value.
    u = words.to(torch.int64) & 0xFFFFFFFF
    word, shift, spills = _stream(n, bits)
    value = u[word] >> shift[:, None]
    if spills.any():
        value[spills] |= u[word[spills] + 1] << (WORD - shift[spills])[:, None]
    return value & (2 ** bits - 1)


@dataclass(frozen=True)
class PackedLinear:
    """The checkpoint tensors of one linear layer (shapes in the module docstring)."""

    qweight: Int[Tensor, "d_in_words d_out"]
    qzeros: Int[Tensor, "n_groups d_out_words"]
    scales: Float[Tensor, "n_groups d_out"]
    g_idx: Int[Tensor, "d_in"]

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.{name}": getattr(self, name) for name in ("qweight", "qzeros", "scales", "g_idx")}


def pack_linear(q: QuantizedWeight, bits: int, *, format: str, dtype: torch.dtype = torch.float16) -> PackedLinear:
    """A QuantizedWeight (nn.Linear layout, rows are outputs) in the packed layout.

    format: "v1" (stores zero − 1) or "v2". dtype: the scales' dtype, float16 as the format
    defines; scales that float16 cannot hold (0 or inf after rounding) are refused.
    """
    offset = ZERO_OFFSET[format]
    zeros = q.zeros.T.round().to(torch.int64) - offset      # (n_groups, d_out)
    if (zeros < 0).any():
        raise ValueError(f"format {format} stores zero − {offset} and cannot hold a zero point of "
                         f"{offset - 1} ({int((zeros < 0).sum())} group(s)); use format v2")
    scales = q.scales.T.to(dtype).contiguous()              # (n_groups, d_out)
    bad = (scales == 0) & (q.scales.T != 0) | ~torch.isfinite(scales)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} scale(s) do not fit {dtype} (largest {float(q.scales.abs().max()):.3g}, "
                         f"smallest {float(q.scales.abs().min()):.3g}); export with dtype=torch.float32")
    return PackedLinear(qweight=pack(q.codes.T, bits), qzeros=pack(zeros.T, bits).T.contiguous(),
                        scales=scales, g_idx=q.g_idx.to(torch.int32))


def unpack_linear(packed: PackedLinear, bits: int, *, format: str) -> tuple[Tensor, Tensor]:
    """(codes (d_in, d_out), zeros (n_groups, d_out)), int64, zeros with the format's offset undone."""
    codes = unpack(packed.qweight, bits)
    zeros = unpack(packed.qzeros.T.contiguous(), bits).T + ZERO_OFFSET[format]
    return codes, zeros


def dequantize(codes: Int[Tensor, "d_in d_out"], zeros: Int[Tensor, "n_groups d_out"],
               scales: Float[Tensor, "n_groups d_out"], g_idx: Int[Tensor, "d_in"]) -> Float[Tensor, "d_in d_out"]:
    """W[i, o] = scales[g_idx[i], o] · (q[i, o] − zero[g_idx[i], o]) in float32, (d_in, d_out).

    One rounding, in the multiply, as in grid.assemble: with float32 scales the result equals the
    QuantizedWeight that was packed, bit for bit; with float16 scales it is exact (11 significant
    bits times |q − zero| ≤ 2^8 fits float32's 24).
    """
    g = g_idx.long()
    return scales.float()[g] * (codes - zeros[g]).float()
