"""Write qcheck's own RTN/GPTQ result as a compressed-tensors `pack-quantized` checkpoint (what
llm-compressor writes and vLLM serves), so a certified quantization can be deployed as certified.

qcheck's grid maps onto the format without a second rounding (layout: compressed.py). A qcheck
code c in 0..2^b − 1 with zero point z is stored as the code c (the format's q + 2^(b−1), q = c −
2^(b−1) signed) and z as the zero point (the same offset form), so the library's (q − zp) · scale
is qcheck's scale · (c − z): with float32 scales the import is the in-memory model bit for bit,
with float16 ones (the default) each weight is that product rounded to float16, as the library
and vLLM compute it. Symmetric specs store no zero point, which the format reads as z = 2^(b−1):
every qcheck symmetric grid has that zero (the `study` grid, scale max|w|/7 at 4 bits, and the
`-ref` grid, max|w|/7.5, which is compressed-tensors' own symmetric grid), and the export checks it.
act-order: a g_idx other than contiguous groups is written as `weight_g_idx` with `actorder:
"group"`, the setting that stored it. compressed-tensors 0.19 refuses that setting (it dropped
grouped act-order: tests/fixtures/checkpoints/README.md section 5, problem 8), so such a checkpoint
is read by qcheck and by readers of the older format only; export without -act (or with -static)
for today's library.

The config lists the block linears by name as the one group's `targets`, so nothing else (lm_head,
embeddings) is quantized. Tensor names are written as `save_pretrained` writes them (transformers'
conversion mapping reversed: GPT-NeoX's `embed_out.weight`), as llm-compressor does.
tests/fixtures/checkpoints/scripts/check_qcheck_export_llmc.py checks an export with the library.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from qcheck.quantize.checkpoint.compressed import FORMAT, QUANT_METHOD
from qcheck.quantize.checkpoint.export import (DTYPES, empty_directory, quantize_for_export, runnable,
                                               unquantized_tensors, version, write_checkpoint)
from qcheck.quantize.grid import QuantizedWeight, group_index
from qcheck.quantize.linears import named_block_linears
from qcheck.quantize.packing import SUPPORTED_BITS, pack_rows
from qcheck.quantize.spec import QuantSpec

FORMAT_VERSION = "0.19.0"   # the compressed-tensors version whose layout this follows and was checked with


def export_compressed_tensors(hf_model: nn.Module, spec: QuantSpec, out_dir: str | Path, *,
                              dtype: torch.dtype = torch.float16, calibration=None, tokenizer=None,
                              cache_dir: str | Path | None = None, weight_digest: str | None = None) -> Path:
    """Quantize `hf_model` (untouched) with `spec` and write a pack-quantized checkpoint to `out_dir`.

    out_dir must not exist or be empty. Writes model.safetensors (weight_packed / weight_scale /
    weight_shape [/ weight_zero_point] [/ weight_g_idx] per block linear; every other tensor in
    `dtype`, tied ones once) and config.json (the model's config with `quantization_config`).
    calibration / tokenizer / cache_dir: as for cache.load_or_quantize (GPTQ only).
    """
    caller = "export_compressed_tensors"
    runnable(spec, caller)
    if spec.bits not in SUPPORTED_BITS:
        raise ValueError(f"{caller}: {spec.bits}-bit codes are not unpacked by qcheck; use bits in {SUPPORTED_BITS}")
    if dtype not in DTYPES.values():
        raise ValueError(f"{caller}: dtype={dtype}; expected torch.float16 or torch.float32")
    out = empty_directory(out_dir, caller)
    modules: list[str] = []

    def storable(name: str, module: nn.Module) -> None:
        if not isinstance(module, nn.Linear):  # compressors/base.py COMPRESSIBLE_MODULE_TYPES (README problem 5)
            raise ValueError(f"{caller}({spec}): {name} is a {type(module).__name__}, not an nn.Linear: "
                             f"compressed-tensors compresses nn.Linear only; export this model with "
                             f"export_checkpoint (GPTQ-packed)")
        d_in = module.weight.shape[1]
        if spec.group_size is not None and d_in % spec.group_size:  # forward_helpers.py _process_group
            raise ValueError(f"{caller}({spec}): {name} has d_in={d_in}, not a multiple of group size "
                             f"{spec.group_size}: compressed-tensors needs whole groups; use a group size "
                             f"that divides it, or per-row scales")
        modules.append(name)

    def pack(name: str, q: QuantizedWeight) -> dict[str, Tensor]:
        return {f"{name}.{part}": tensor for part, tensor in pack_linear_compressed(q, spec, dtype).items()}

    run = quantize_for_export(hf_model, spec, caller, storable, pack, calibration=calibration,
                              tokenizer=tokenizer, cache_dir=cache_dir, weight_digest=weight_digest)
    grouped = any(f"{name}.weight_g_idx" in run.tensors for name in modules)
    if grouped:  # actorder "group" gives every linear a g_idx; one group of d_in columns is contiguous too
        for name, module in named_block_linears(hf_model):
            run.tensors.setdefault(f"{name}.weight_g_idx",
                                   group_index(module.weight.shape[1], spec.group_size).to(torch.int32))
    tensors = on_disk_names(hf_model, {**run.tensors, **unquantized_tensors(hf_model, dtype)})
    quant_config = compressed_config(spec, modules, grouped,
                                     {"quantizer": f"qcheck:{version()}", **run.meta(dtype)})
    # `dtype` says what the unquantized tensors are stored as, so loaders ("auto") run the model in it
    config = {**hf_model.config.to_dict(), "dtype": str(dtype).removeprefix("torch."), "quantization_config": quant_config}
    write_checkpoint(out, tensors, {"config.json": config})
    return out


def pack_linear_compressed(q: QuantizedWeight, spec: QuantSpec, dtype: torch.dtype) -> dict[str, Tensor]:
    """One linear's pack-quantized tensors (shapes: compressed.py), from qcheck's grid."""
    d_out, d_in = q.codes.shape
    half = 2 ** (spec.bits - 1)
    zeros = q.zeros.round().long()                                    # (d_out, n_groups)
    scales = q.scales.to(dtype).contiguous()                          # (d_out, n_groups)
    bad = (scales == 0) & (q.scales != 0) | ~torch.isfinite(scales)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} scale(s) do not fit {dtype} (largest {float(q.scales.abs().max()):.3g}, "
                         f"smallest {float(q.scales.abs().min()):.3g}); export with dtype=torch.float32")
    tensors = {"weight_packed": pack_rows(q.codes, spec.bits),       # (d_out, ceil(d_in·b/32))
               "weight_scale": scales,
               "weight_shape": torch.tensor([d_out, d_in], dtype=torch.int64)}
    if spec.sym:
        if (zeros != half).any():
            raise ValueError(f"a symmetric grid with {int((zeros != half).sum())} zero point(s) other than {half}: "
                             f"the format's symmetric scheme stores none; this is a bug in qcheck's grid")
    else:                                                             # packed along d_out
        tensors["weight_zero_point"] = pack_rows(zeros.T.contiguous(), spec.bits).T.contiguous()
    contiguous = group_index(d_in, spec.group_size)
    if not torch.equal(q.g_idx.long(), contiguous):
        counts = torch.bincount(q.g_idx.long(), minlength=scales.shape[1])
        if (counts != d_in // scales.shape[1]).any():
            raise ValueError(f"g_idx groups hold {int(counts.min())}..{int(counts.max())} columns; the format's "
                             f"act-order needs {d_in // scales.shape[1]} in each")
        tensors["weight_g_idx"] = q.g_idx.to(torch.int32)
    return tensors


def compressed_config(spec: QuantSpec, modules: list[str], grouped_order: bool, meta: dict) -> dict:
    """config.json's quantization_config, as compressed-tensors 0.19 writes it (keys of
    QuantizationConfig / QuantizationScheme / QuantizationArgs), plus qcheck's `qcheck` block
    (the library ignores unknown top-level keys: quant_config.py `extra="ignore"`)."""
    weights = {"actorder": "group" if grouped_order else None, "block_structure": None, "dynamic": False,
               "group_size": spec.group_size, "num_bits": spec.bits, "observer": None, "observer_kwargs": {},
               "scale_dtype": None, "strategy": "channel" if spec.group_size is None else "group",
               "symmetric": spec.sym, "type": "int", "zp_dtype": None if spec.sym else "torch.int8"}
    return {"config_groups": {"group_0": {"format": FORMAT, "input_activations": None, "output_activations": None,
                                          "targets": list(modules), "weights": weights}},
            "format": FORMAT, "global_compression_ratio": None, "ignore": [], "kv_cache_scheme": None,
            "quant_method": QUANT_METHOD, "quantization_status": "compressed", "sparsity_config": {},
            "transform_config": {}, "version": FORMAT_VERSION, "qcheck": meta}


def on_disk_names(hf_model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The names `save_pretrained` would write (transformers 5 reverses its load-time conversion
    mapping: GPT-NeoX `lm_head.*` -> `embed_out.*`); the state-dict names with transformers 4."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return tensors
    return dict(revert_weight_conversion(hf_model, dict(tensors)))
