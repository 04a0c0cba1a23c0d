"""compressed-tensors `pack-quantized` checkpoints (llm-compressor; what vLLM serves as WNA16): the
config and the tensors.

Read with safetensors alone, not with the `compressed-tensors` package: that package comes with
llm-compressor's pins (transformers, torch), which qcheck must not pull into a user's environment,
and the format is a few tensors per linear. What guards this reading is the test against the
library's own decompression (tests/unit/test_compressed_tensors.py, on the fixtures of
tests/fixtures/checkpoints/, README.md sections 3 and 6: bit for bit).

Per quantized linear (nn.Linear layout, rows are outputs; b = num_bits):
    weight_packed     int32 (d_out, ceil(d_in·b/32))   codes along d_in, LSB first (packing.pack_rows)
    weight_scale      F32/F16/BF16 (d_out, n_groups)   n_groups = d_in / group_size, 1 for channel
    weight_shape      int64 (2,) = (d_out, d_in)
    weight_zero_point int32 (ceil(d_out·b/32), n_groups)   asymmetric only: packed along d_out
    weight_g_idx      int32 (d_in,)                     optional: the group of each input column
The stored code is c = q + 2^(b−1) for the signed level q, and so is the stored zero point: the
library computes (q − zp) · scale = (c − z) · scale, in the scale's dtype. Symmetric schemes store
no zero point (z = 2^(b−1)). Without weight_g_idx group g is columns g·group_size ..; with it,
column i is in group g_idx[i] (activation ordering "group", which compressed-tensors 0.19 no
longer writes: README.md section 5, problem 8).

Which modules are quantized is the config's: `config_groups[*].targets` (a module name, `re:` and a
regex matched from the start of the name, or a class name such as `Linear`) minus `ignore`, over
the in-memory module names (`lm_head`, not the on-disk `embed_out`), as compressed-tensors'
utils/match.py does. Only nn.Linear and nn.Embedding are compressible (README.md problem 5).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qcheck.quantize.checkpoint.gptq_packed import Expected
from qcheck.quantize.packing import SUPPORTED_BITS, WORD, unpack_rows
from qcheck.quantize.spec import GROUP_SIZES, QuantSpec

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
PARTS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")
SCALE_DTYPES = ("F32", "F16", "BF16")
COMPRESSIBLE = ("Linear", "Embedding")       # class names (compressors/base.py COMPRESSIBLE_MODULE_TYPES)
GROUPED_ORDER = ("group", "dynamic", True)   # actorder values that stored weight_g_idx
OTHER_ORDER = (None, False, "static", "weight")
# Keys that, when set, mean something qcheck does not read: (key, what it is, the fix).
EMPTY_KEYS = (("sparsity_config", "sparsity (pruned weights)", "certify the dense quantized model"),
              ("transform_config", "weight transforms (rotations, e.g. SpinQuant/QuIP)", "save without transforms"),
              ("kv_cache_scheme", "KV-cache quantization", "quantize weights only"))


@dataclass(frozen=True)
class CompressedConfig:
    """A pack-quantized weight-only config: one scheme for every group. group_size None: channel."""

    bits: int
    group_size: int | None
    sym: bool
    grouped_order: bool                    # actorder "group": weight_g_idx is stored
    targets: dict[str, tuple[str, ...]]    # config group -> its targets
    ignore: tuple[str, ...]
    source: str
    meta: dict = field(default_factory=dict)
    format: str = FORMAT

    parts = PARTS  # not a field: the tensors of one quantized linear, weight_packed always stored

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec("checkpoint", bits=self.bits, group_size=self.group_size, sym=self.sym)

    def expected_tensors(self, d_in: int, d_out: int) -> dict[str, Expected]:
        n_groups = 1 if self.group_size is None else d_in // self.group_size
        return {"weight_packed": Expected((d_out, -(-d_in * self.bits // WORD)), ("I32",)),
                "weight_scale": Expected((d_out, n_groups), SCALE_DTYPES),
                "weight_shape": Expected((2,), ("I64", "I32")),
                "weight_zero_point": Expected((-(-d_out * self.bits // WORD), n_groups), ("I32",), not self.sym),
                "weight_g_idx": Expected((d_in,), ("I32", "I64"), self.grouped_order)}

    def packing_problems(self, module: str, d_in: int, d_out: int) -> list[str]:
        if self.group_size is not None and d_in % self.group_size:  # forward_helpers.py _process_group
            return [f"{module}: d_in={d_in} is not a multiple of group_size {self.group_size} "
                    f"(compressed-tensors needs whole groups)"]
        return []

    def unexpected_part(self, part: str) -> str | None:
        """Why a stored part is not read, if the scheme says it is not stored (None: it may be)."""
        if part == "weight_zero_point" and self.sym:
            return f"{self.source} says symmetric: true, which stores no zero point; set it false if the grid is asymmetric"
        return None

    def quantized_modules(self, module_classes: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
        """{module: the config groups that quantize it} over the compressible modules."""
        found: dict[str, list[str]] = {}
        for module, classes in module_classes.items():
            if not module or not set(classes) & set(COMPRESSIBLE) or _matches(module, classes, self.ignore):
                continue
            groups = [group for group, targets in self.targets.items() if _matches(module, classes, targets)]
            if groups:
                found[module] = groups
        return found

    def module_problems(self, layout) -> list[str]:
        """Every block linear quantized by exactly one config group, and nothing else quantized."""
        quantized, problems = self.quantized_modules(layout.module_classes), []
        for module in layout.linears:
            classes = layout.module_classes.get(module, ())
            if "Linear" not in classes:
                problems.append(f"{module} is a {classes[0] if classes else 'module'}, not an nn.Linear: "
                                f"compressed-tensors compresses nn.Linear only")
            elif module not in quantized:
                problems.append(f"{module} is not quantized by {self.source} (targets "
                                f"{_listing(self.targets)}, ignore {list(self.ignore)}): partial quantization "
                                f"is not supported")
            elif len(quantized[module]) > 1:
                problems.append(f"{module} is targeted by config groups {', '.join(quantized[module])}: "
                                f"keep it in one")
        for module in quantized:
            if module not in layout.linears:
                problems.append(f"{self.source} quantizes {module} (targets {_listing(self.targets)}), which is "
                                f"not a linear map inside the transformer blocks: qcheck certifies block "
                                f"linears only, the unembedding and embeddings in full precision; add "
                                f"{module!r} to ignore")
        return problems

    def dequantize(self, refuse: Callable[[str], ValueError], prefix: str, tensors: dict[str, Tensor],
                   d_in: int, d_out: int) -> Tensor:
        """One linear's weight (d_out, d_in) as compressed-tensors computes it, (c − z) · scale in the
        scale's dtype, then float32; after checking the values the layout can't."""
        scale = tensors[f"{prefix}.weight_scale"]                        # (d_out, n_groups)
        n_groups = scale.shape[1]
        shape = tensors[f"{prefix}.weight_shape"].tolist()
        if shape != [d_out, d_in]:
            raise refuse(f"{prefix}.weight_shape holds {shape}, but the FP model's linear is [{d_out}, {d_in}] "
                         f"(d_out, d_in); the file is corrupt or for another model")
        if not torch.isfinite(scale).all():
            raise refuse(f"{prefix}.weight_scale holds {int((~torch.isfinite(scale)).sum())} NaN/inf "
                         f"value(s); the quantization failed or the file is corrupt")
        codes = unpack_rows(tensors[f"{prefix}.weight_packed"], self.bits, d_in)   # (d_out, d_in), 0..2^b-1
        half = 2 ** (self.bits - 1)
        if self.sym:
            zeros = torch.full((d_out, n_groups), half, dtype=torch.int64)
        else:                                                             # packed along d_out
            zeros = unpack_rows(tensors[f"{prefix}.weight_zero_point"].T.contiguous(), self.bits, d_out).T
        g_idx = self.group_index(refuse, prefix, tensors, d_in, n_groups)
        levels = (codes - zeros[:, g_idx]).to(scale.dtype)               # exact: |c − z| < 2^8
        return (levels * scale[:, g_idx]).float()

    def group_index(self, refuse: Callable[[str], ValueError], prefix: str, tensors: dict[str, Tensor],
                    d_in: int, n_groups: int) -> Tensor:
        """The group of each input column (d_in,): weight_g_idx if stored, else contiguous groups."""
        contiguous = torch.arange(d_in) // (self.group_size or d_in)
        stored = tensors.get(f"{prefix}.weight_g_idx")
        if stored is None:
            return contiguous
        g_idx = stored.long()
        if (g_idx == -1).all():   # registered but never filled: the library reads column order
            return contiguous
        counts = torch.bincount(g_idx.clamp(min=0), minlength=n_groups)
        if g_idx.min() < 0 or g_idx.max() >= n_groups or (counts != d_in // n_groups).any():
            raise refuse(f"{prefix}.weight_g_idx holds groups {int(g_idx.min())}..{int(g_idx.max())} with "
                         f"{counts.min()}..{counts.max()} columns each; expected each of 0..{n_groups - 1} "
                         f"exactly {d_in // n_groups} times (the library sorts columns by g_idx into whole "
                         f"groups); the file is corrupt")
        return g_idx


def _matches(module: str, classes: tuple[str, ...], targets) -> bool:
    """compressed-tensors' match: the exact name, `re:` + a regex matched at the start, or a class name."""
    return any(re.match(t[3:], module) is not None if t.startswith("re:") else t == module or t in classes
               for t in targets)


def _listing(targets: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{group}: {list(names)}" for group, names in targets.items())


def parse_compressed_config(cfg: dict, source: str) -> CompressedConfig:
    """config.json's quantization_config with quant_method compressed-tensors; ValueError naming
    `source`, the key, its value and the fix for everything qcheck does not read."""
    def refuse(key: str, value, problem: str) -> ValueError:
        return ValueError(f"{source}: {key} {value!r} is not supported: {problem}")

    status = cfg.get("quantization_status")
    if status != "compressed":
        raise refuse("quantization_status", status, "the weights are not stored compressed; save the model "
                     "with llm-compressor's `save_pretrained(DIR, save_compressed=True)`")
    for key, what, fix in EMPTY_KEYS:
        if cfg.get(key):
            raise refuse(key, cfg[key], f"{what} is not read by qcheck; {fix}")
    top_format = cfg.get("format", FORMAT)
    groups = cfg.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise refuse("config_groups", groups, "expected an object of named schemes, e.g. {'group_0': "
                     "{'targets': ['Linear'], 'weights': {...}}}")
    ignore = cfg.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(name, str) for name in ignore):
        raise refuse("ignore", ignore, "expected a list of module names or 're:' patterns")
    schemes, targets = {}, {}
    for name, group in groups.items():
        key = f"config_groups.{name}"
        if not isinstance(group, dict):
            raise refuse(key, group, "a bare list of targets has no scheme; expected targets and weights")
        fmt = group.get("format") or top_format
        if fmt != FORMAT:
            raise refuse(f"{key}.format", fmt, f"qcheck reads {FORMAT!r} (integer weights packed in int32); "
                         f"naive/int/float-quantized, nvfp4, mxfp4 and sparse formats are not read")
        for act in ("input_activations", "output_activations"):
            if group.get(act) is not None:
                raise refuse(f"{key}.{act}", group[act], "activation quantization; qcheck certifies "
                             "weight-only quantization (W4A16-style schemes)")
        names = group.get("targets")
        if not isinstance(names, list) or not names or not all(isinstance(t, str) for t in names):
            raise refuse(f"{key}.targets", names, "expected a non-empty list of module names, 're:' patterns "
                         "or class names")
        targets[name] = tuple(names)
        schemes[name] = _weights_scheme(group.get("weights"), f"{key}.weights", refuse)
    first, *rest = schemes.items()
    for name, scheme in rest:
        if scheme != first[1]:
            raise ValueError(f"{source}: config groups {first[0]} and {name} quantize with different schemes "
                             f"({first[1]} vs {scheme}): qcheck certifies one scheme per checkpoint")
    bits, group_size, sym, grouped = first[1]
    meta = cfg.get("qcheck") if isinstance(cfg.get("qcheck"), dict) else {}
    return CompressedConfig(bits=bits, group_size=group_size, sym=sym, grouped_order=grouped, targets=targets,
                            ignore=tuple(ignore), source=source, meta={"qcheck": meta} if meta else {})


def _weights_scheme(weights, key: str, refuse) -> tuple[int, int | None, bool, bool]:
    """(bits, group_size, symmetric, grouped act-order) of one group's `weights` args."""
    if not isinstance(weights, dict):
        raise refuse(key, weights, "expected the weights' quantization args (num_bits, type, strategy, ...)")
    kind = weights.get("type", "int")
    if kind != "int":
        raise refuse(f"{key}.type", kind, "float weights (fp8, nvfp4, mxfp4) have no integer grid; qcheck "
                     "reads integer weights ('int')")
    bits = weights.get("num_bits", 8)
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise refuse(f"{key}.num_bits", bits, f"qcheck unpacks {', '.join(map(str, SUPPORTED_BITS))} bits")
    strategy, group_size = weights.get("strategy"), weights.get("group_size")
    if strategy not in ("group", "channel"):
        raise refuse(f"{key}.strategy", strategy, "qcheck reads per-group ('group') and per-output-row "
                     "('channel') scales; tensor, block, token and tensor_group are not read")
    if strategy == "group" and group_size not in GROUP_SIZES:
        raise refuse(f"{key}.group_size", group_size, f"qcheck's QuantSpec knows {', '.join(map(str, GROUP_SIZES))}")
    if strategy == "channel" and group_size not in (None, -1):
        raise refuse(f"{key}.group_size", group_size, "strategy 'channel' has one group per row (null or -1)")
    for name in ("dynamic", "block_structure"):
        if weights.get(name):
            raise refuse(f"{key}.{name}", weights[name], "dynamic or block-structured weight scales are not "
                         "stored per group; qcheck reads static group/channel scales")
    sym, order = weights.get("symmetric", True), weights.get("actorder")
    if not isinstance(sym, bool):
        raise refuse(f"{key}.symmetric", sym, "expected true or false")
    if order not in GROUPED_ORDER + OTHER_ORDER:
        raise refuse(f"{key}.actorder", order, "expected null, 'static', 'weight' or 'group'")
    return bits, group_size if strategy == "group" else None, sym, order in GROUPED_ORDER
