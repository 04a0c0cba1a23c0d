"""The GPTQ-packed format (AutoGPTQ / GPTQModel, formats v1 and v2): its config and its tensors.

Per quantized linear, `<module>.qweight/.qzeros/.scales/.g_idx` (layout: qcheck/quantize/packing.py).
The config (GPTQModel config.py): `checkpoint_format` "gptq" is v1 (zero − 1 stored), "gptq_v2" is
v2; a missing key means v1. Kernel-specific repackings (marlin, bitblas) and other methods (AWQ,
its `version` key "gemm"...) are refused.

`GPTQConfig` is one of the format configs a Checkpoint carries (format.py, "Format configs"):
`spec`, `parts`, `expected_tensors`, `packing_problems`, `unexpected_part`, `module_problems`,
`dequantize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil
from typing import NamedTuple

import torch
from torch import Tensor

from qcheck.quantize.packing import SUPPORTED_BITS, WORD, PackedLinear, dequantize, unpack_linear
from qcheck.quantize.spec import GROUP_SIZES, QuantSpec

FORMATS = {"gptq": "v1", "gptq_v2": "v2"}
QUANTIZED_PARTS = ("qweight", "qzeros", "scales", "g_idx")
SCALE_DTYPES = ("F16", "BF16", "F32")


class Expected(NamedTuple):
    """A quantized part's shape and the safetensors dtypes it may have (the first is the usual one)."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...]
    required: bool = True


@dataclass(frozen=True)
class GPTQConfig:
    """The quantization config of a GPTQ-packed checkpoint. group_size None: one group per output row."""

    bits: int
    group_size: int | None
    sym: bool
    desc_act: bool
    format: str       # "v1" | "v2" (packing.ZERO_OFFSET)
    source: str       # the file it was read from
    meta: dict = field(default_factory=dict)

    parts = QUANTIZED_PARTS  # not a field: the tensors of one quantized linear, qweight always stored

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec("checkpoint", bits=self.bits, group_size=self.group_size, sym=self.sym)

    def expected_tensors(self, d_in: int, d_out: int) -> dict[str, Expected]:
        n_groups = 1 if self.group_size is None else ceil(d_in / self.group_size)
        bits = self.bits
        return {"qweight": Expected((d_in * bits // WORD, d_out), ("I32",)),
                "qzeros": Expected((n_groups, d_out * bits // WORD), ("I32",)),
                "scales": Expected((n_groups, d_out), SCALE_DTYPES),
                "g_idx": Expected((d_in,), ("I32", "I64"))}

    def packing_problems(self, module: str, d_in: int, d_out: int) -> list[str]:
        return [f"{module}: {what}={size} cannot be packed at {self.bits} bits (the GPTQ layout needs "
                f"{what}·bits to be a multiple of {WORD})"
                for size, what in ((d_in, "d_in"), (d_out, "d_out")) if size * self.bits % WORD]

    def unexpected_part(self, part: str) -> str | None:
        """None: every part is always stored."""
        return None

    def module_problems(self, layout) -> list[str]:
        """Nothing: which linears are quantized is read from the tensors (every block linear must be)."""
        return []

    def dequantize(self, refuse: Callable[[str], ValueError], prefix: str, tensors: dict[str, Tensor],
                   d_in: int, d_out: int) -> Tensor:
        """One linear's float32 weight (d_out, d_in), after checking the values the layout can't."""
        scales = tensors[f"{prefix}.scales"]
        n_groups, d_in = scales.shape[0], tensors[f"{prefix}.g_idx"].shape[0]
        packed = PackedLinear(qweight=tensors[f"{prefix}.qweight"], qzeros=tensors[f"{prefix}.qzeros"],
                              scales=scales, g_idx=tensors[f"{prefix}.g_idx"])
        g_idx = packed.g_idx.long()
        if d_in and (g_idx.min() < 0 or g_idx.max() >= n_groups):
            raise refuse(f"{prefix}.g_idx holds groups {int(g_idx.min())}..{int(g_idx.max())}, outside "
                         f"0..{n_groups - 1} ({n_groups} groups of scales); the file is corrupt")
        if not torch.isfinite(scales).all():
            raise refuse(f"{prefix}.scales holds {int((~torch.isfinite(scales)).sum())} NaN/inf value(s); "
                         f"the quantization failed or the file is corrupt")
        codes, zeros = unpack_linear(packed, self.bits, format=self.format)
        maxq = 2 ** self.bits - 1
        if (zeros > maxq).any():  # only v1: a stored all-ones field reads as zero − 1 = maxq
            raise refuse(f"{prefix}.qzeros: {int((zeros > maxq).sum())} zero point(s) read as {maxq + 1}, "
                         f"outside 0..{maxq}: format v1 stores zero − 1 and overflows for a zero point "
                         f"of 0 (asymmetric grids); re-save the checkpoint as checkpoint_format 'gptq_v2'")
        if self.sym and (zeros != 2 ** (self.bits - 1)).any():
            raise refuse(f"{prefix}.qzeros: {self.source} says sym=true but "
                         f"{int((zeros != 2 ** (self.bits - 1)).sum())} zero point(s) differ from "
                         f"{2 ** (self.bits - 1)} (kernels that assume symmetric grids would ignore them); "
                         f"set sym to false if the grid is asymmetric")
        return dequantize(codes, zeros, scales, g_idx).T


def parse_gptq_config(cfg: dict, source: str) -> GPTQConfig:
    """A GPTQ quantize_config (quant_method "gptq" or absent); ValueError naming `source`, the key and the fix."""
    def refuse(problem: str) -> ValueError:
        return ValueError(f"{source}: {problem}")

    if cfg.get("is_marlin_format"):
        raise refuse("is_marlin_format: the weights are repacked for the Marlin kernel; save the model "
                     "in the plain GPTQ layout (checkpoint_format 'gptq' or 'gptq_v2')")
    raw = cfg.get("checkpoint_format", cfg.get("format", cfg.get("version", "gptq")))
    if str(raw).lower() not in FORMATS:
        raise refuse(f"checkpoint_format {raw!r} is not supported; expected 'gptq' (v1) or 'gptq_v2' (v2) "
                     f"— kernel repackings (marlin, bitblas) and AWQ layouts (gemm, gemv) are not read")
    if str(cfg.get("pack_dtype", "int32")).lower() != "int32":
        raise refuse(f"pack_dtype {cfg['pack_dtype']!r} is not supported; qcheck reads int32 packing")
    if cfg.get("dynamic"):
        raise refuse("per-module overrides (`dynamic`) are not supported: every block linear must share "
                     "one bits/group_size/sym")
    if cfg.get("lm_head"):
        raise refuse("lm_head: true — the unembedding is quantized; qcheck certifies quantized block "
                     "linears only (the study's setting), with embeddings and unembedding in full precision")
    bits = cfg.get("bits", cfg.get("w_bit", cfg.get("wbits")))
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise refuse(f"bits={bits!r} is not supported; the GPTQ format defines {SUPPORTED_BITS}")
    group_size = cfg.get("group_size", -1)
    if group_size != -1 and group_size not in GROUP_SIZES:
        raise refuse(f"group_size={group_size!r} is not supported; qcheck's QuantSpec knows -1 (one group per "
                     f"row) and {', '.join(map(str, GROUP_SIZES))}")
    sym, desc_act = cfg.get("sym", True), cfg.get("desc_act", False)
    if not isinstance(sym, bool) or not isinstance(desc_act, bool):
        raise refuse(f"sym={sym!r} and desc_act={desc_act!r} must be true or false")
    meta = cfg.get("meta") if isinstance(cfg.get("meta"), dict) else {}
    return GPTQConfig(bits=bits, group_size=None if group_size == -1 else group_size, sym=sym,
                      desc_act=desc_act, format=FORMATS[str(raw).lower()], source=source, meta=meta)
