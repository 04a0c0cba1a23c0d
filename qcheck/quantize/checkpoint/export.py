"""Write qcheck's own RTN/GPTQ result as a GPTQ-packed checkpoint (format v1 or v2), so that
import(export(x)) is tested here without other tools (docs/design.md, "Quantizers").

The quantizer runs again (quantize_model with an `on_layer` hook): the cache keeps dequantized
weights only, and a checkpoint needs the codes, scales, zeros and g_idx. On one machine and torch
build the run is deterministic: the codes are the ones the in-memory quantized model holds.

Scales: the format stores them as float16 (`dtype=torch.float16`, the default, what other tools
read). qcheck's scales are float32, so the imported weights are scales16[g] · (q − zero[g])
instead of scales32[g] · (q − zero[g]): the same codes, each weight moved by at most 2^-11 of
itself (scales ≥ 2^-14, float16's normal range; smaller ones keep fewer bits). With
`dtype=torch.float32` the scales (and the unquantized tensors) are stored as float32 and the
import is bit-identical to the in-memory model; qcheck reads both.

Run `python -m qcheck.quantize.checkpoint MODEL SPEC DIR [--format v1] [--dtype float32]` (cli.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from qcheck.quantize.apply import quantize_model
from qcheck.quantize.grid import QuantizedWeight
from qcheck.quantize.linears import get_rows, named_block_linears
from qcheck.quantize.packing import SUPPORTED_BITS, ZERO_OFFSET, pack_linear, packed_length
from qcheck.quantize.spec import QuantSpec

CHECKPOINT_FORMAT = {"v1": "gptq", "v2": "gptq_v2"}  # quantize_config.json `checkpoint_format`
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def export_checkpoint(hf_model: nn.Module, spec: QuantSpec, out_dir: str | Path, *, format: str = "v2",
                      dtype: torch.dtype = torch.float16, calibration=None, tokenizer=None,
                      cache_dir: str | Path | None = None, weight_digest: str | None = None) -> Path:
    """Quantize `hf_model` (untouched) with `spec` and write the checkpoint to `out_dir`.

    out_dir must not exist or be empty. Writes model.safetensors (qweight/qzeros/scales/g_idx
    per block linear, every other tensor of the state dict in `dtype`, tied ones once),
    quantize_config.json and config.json (the model's config with `quantization_config`).
    calibration / tokenizer / cache_dir: as for cache.load_or_quantize (GPTQ only).
    """
    runnable(spec, "export_checkpoint")
    if spec.bits not in SUPPORTED_BITS:
        raise ValueError(f"export_checkpoint: {spec.bits}-bit codes have no GPTQ packing; use bits in {SUPPORTED_BITS}")
    if format not in ZERO_OFFSET:
        raise ValueError(f"export_checkpoint: format={format!r}; expected 'v1' or 'v2'")
    if dtype not in DTYPES.values():
        raise ValueError(f"export_checkpoint: dtype={dtype}; expected torch.float16 or torch.float32")
    out = empty_directory(out_dir, "export_checkpoint")

    def storable(name: str, module: nn.Module) -> None:
        # The format packs codes along d_in and zero points along d_out, 32 bits a word. A grouped-query
        # model's k/v projections have n_kv_heads x d_head rows, which at 3 bits must be a multiple of
        # 32 (tests/helpers.py sizes its tiny Llama for it).
        d_out, d_in = get_rows(module).shape
        for what, n in (("input columns", d_in), ("output rows", d_out)):
            try:
                packed_length(n, spec.bits)
            except ValueError as error:
                raise ValueError(f"export_checkpoint({spec}): {name} ({d_out}x{d_in}) has {n} {what}: {error}; "
                                 f"the GPTQ format cannot store this linear at {spec.bits} bits: export at "
                                 f"4 or 8 bits") from None

    def pack(name: str, q: QuantizedWeight) -> dict[str, Tensor]:
        return pack_linear(q, spec.bits, format=format, dtype=dtype).tensors(name)

    run = quantize_for_export(hf_model, spec, "export_checkpoint", storable, pack, calibration=calibration,
                              tokenizer=tokenizer, cache_dir=cache_dir, weight_digest=weight_digest)
    tensors = {**run.tensors, **unquantized_tensors(hf_model, dtype)}
    quant_config = _quant_config(spec, format, {"quantizer": [f"qcheck:{version()}"], "qcheck": run.meta(dtype)})
    write_checkpoint(out, tensors, {"quantize_config.json": quant_config,
                                    "config.json": {**hf_model.config.to_dict(), "quantization_config": quant_config}})
    return out


@dataclass
class ExportRun:
    """What one quantizer run for an export gives: the packed tensors of every block linear, and
    where the weights and calibration came from."""

    tensors: dict[str, Tensor]
    weight_digest: str
    spec: QuantSpec
    calibration: object

    def meta(self, dtype: torch.dtype) -> dict:
        """The `qcheck` block of the quantization config (load.py reads the calibration from it)."""
        return {"spec": str(self.spec), "weight_digest": self.weight_digest,
                "scale_dtype": str(dtype).removeprefix("torch."),
                "calibration_source": getattr(self.calibration, "source", None),
                "calibration_digest": getattr(self.calibration, "digest", None)}


def quantize_for_export(hf_model: nn.Module, spec: QuantSpec, caller: str,
                        storable: Callable[[str, nn.Module], None], pack: Callable[[str, QuantizedWeight], dict],
                        *, calibration=None, tokenizer=None, cache_dir: str | Path | None = None,
                        weight_digest: str | None = None) -> ExportRun:
    """Run the quantizer again with an `on_layer` hook that packs each linear (`pack(name, q)` ->
    its tensors) without keeping the codes. storable(name, module) raises ValueError for a block
    linear the format cannot hold; it runs first, before calibration or any quantizer."""
    from qcheck.models.digest import model_digest
    from qcheck.quantize.cache import cache_root, resolve_calibration

    runnable(spec, caller)
    for name, module in named_block_linears(hf_model):
        storable(name, module)
    weight_digest = weight_digest or model_digest(hf_model)
    calibration = resolve_calibration(hf_model, spec, calibration, weight_digest=weight_digest,
                                      cache_dir=cache_root(cache_dir), tokenizer=tokenizer)
    tensors: dict[str, Tensor] = {}

    def keep(name: str, q: QuantizedWeight) -> None:
        try:
            tensors.update(pack(name, q))
        except ValueError as error:
            raise ValueError(f"{caller}({spec}): {name}: {error}") from None

    quantize_model(hf_model, spec, calibration.tokens if calibration is not None else None, on_layer=keep)
    return ExportRun(tensors=tensors, weight_digest=weight_digest, spec=spec, calibration=calibration)


def runnable(spec: QuantSpec, caller: str) -> None:
    if spec.method not in ("rtn", "gptq", "gptq-study"):
        raise ValueError(f"{caller}: {spec} is not a quantizer qcheck runs; export rtn or gptq")


def empty_directory(out_dir: str | Path, caller: str) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{caller}: {out} exists and is not an empty directory")
    return out


def unquantized_tensors(hf_model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """Every state-dict tensor but the block linears' weights; tied tensors (one storage) once."""
    quantized = {f"{name}.weight" for name, _ in named_block_linears(hf_model)}
    out, storages = {}, set()
    for key, tensor in hf_model.state_dict().items():
        if key in quantized or tensor.untyped_storage().data_ptr() in storages:
            continue
        storages.add(tensor.untyped_storage().data_ptr())
        tensor = tensor.detach().cpu()
        out[key] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous().clone()
    return out


def _quant_config(spec: QuantSpec, format: str, meta: dict) -> dict:
    """quantize_config.json, with the keys AutoGPTQ and GPTQModel write."""
    config = {"bits": spec.bits, "group_size": spec.group_size or -1, "desc_act": spec.act_order, "sym": spec.sym,
              "lm_head": False, "quant_method": "gptq", "checkpoint_format": CHECKPOINT_FORMAT[format],
              "pack_dtype": "int32", "meta": meta}
    if spec.needs_calibration:
        config.update(static_groups=spec.static_groups, true_sequential=spec.true_sequential, damp_percent=spec.damp)
    return config


def write_checkpoint(out: Path, tensors: dict[str, Tensor], configs: dict[str, dict]) -> None:
    """model.safetensors and the JSON `configs` {file name: content} into a sibling temporary
    folder, then one rename: no half-written checkpoint."""
    from safetensors.torch import save_file

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, content in configs.items():
            (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=name == "config.json", default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def version() -> str:
    from importlib.metadata import version

    return version("qcheck")
