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

Run `python -m qcheck.quantize.checkpoint MODEL SPEC DIR [--format v1] [--dtype float32]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    from qcheck.models.digest import model_digest
    from qcheck.quantize.cache import cache_root, resolve_calibration

    if spec.method not in ("rtn", "gptq", "gptq-study"):
        raise ValueError(f"export_checkpoint: {spec} is not a quantizer qcheck runs; export rtn or gptq")
    if spec.bits not in SUPPORTED_BITS:
        raise ValueError(f"export_checkpoint: {spec.bits}-bit codes have no GPTQ packing; use bits in {SUPPORTED_BITS}")
    if format not in ZERO_OFFSET:
        raise ValueError(f"export_checkpoint: format={format!r}; expected 'v1' or 'v2'")
    if dtype not in DTYPES.values():
        raise ValueError(f"export_checkpoint: dtype={dtype}; expected torch.float16 or torch.float32")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"export_checkpoint: {out} exists and is not an empty directory")
    # Before calibration or any quantizer runs: the format packs codes along d_in and zero points
    # along d_out, 32 bits a word. A grouped-query model's k/v projections have n_kv_heads x d_head
    # rows, which at 3 bits must be a multiple of 32 (tests/helpers.py sizes its tiny Llama for it).
    for name, module in named_block_linears(hf_model):
        d_out, d_in = get_rows(module).shape
        for what, n in (("input columns", d_in), ("output rows", d_out)):
            try:
                packed_length(n, spec.bits)
            except ValueError as error:
                raise ValueError(f"export_checkpoint({spec}): {name} ({d_out}x{d_in}) has {n} {what}: {error}; "
                                 f"the GPTQ format cannot store this linear at {spec.bits} bits: export at "
                                 f"4 or 8 bits") from None
    weight_digest = weight_digest or model_digest(hf_model)
    calibration = resolve_calibration(hf_model, spec, calibration, weight_digest=weight_digest,
                                      cache_dir=cache_root(cache_dir), tokenizer=tokenizer)

    tensors: dict[str, Tensor] = {}

    def keep(name: str, q: QuantizedWeight) -> None:
        try:
            tensors.update(pack_linear(q, spec.bits, format=format, dtype=dtype).tensors(name))
        except ValueError as error:
            raise ValueError(f"export_checkpoint({spec}): {name}: {error}") from None

    quantize_model(hf_model, spec, calibration.tokens if calibration is not None else None, on_layer=keep)
    tensors.update(_unquantized(hf_model, dtype))
    meta = {"quantizer": [f"qcheck:{_version()}"],
            "qcheck": {"spec": str(spec), "weight_digest": weight_digest, "scale_dtype": str(dtype).removeprefix("torch."),
                       "calibration_source": getattr(calibration, "source", None),
                       "calibration_digest": getattr(calibration, "digest", None)}}
    quant_config = _quant_config(spec, format, meta)
    _write(out, tensors, quant_config, {**hf_model.config.to_dict(), "quantization_config": quant_config})
    return out


def _unquantized(hf_model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
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


def _write(out: Path, tensors: dict[str, Tensor], quant_config: dict, config: dict) -> None:
    """All files into a sibling temporary folder, then one rename: no half-written checkpoint."""
    from safetensors.torch import save_file

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "quantize_config.json").write_text(json.dumps(quant_config, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _version() -> str:
    from importlib.metadata import version

    return version("qcheck")


def main(argv: list[str] | None = None) -> None:
    from qcheck.models.load import load_model
    from qcheck.quantize.spec import parse_quant_spec

    parser = argparse.ArgumentParser(prog="python -m qcheck.quantize.checkpoint",
                                     description="Quantize a model with qcheck and write a GPTQ-packed checkpoint.")
    parser.add_argument("model", help="zoo name, Hugging Face id or save_pretrained directory")
    parser.add_argument("spec", type=parse_quant_spec, help="an rtn/gptq spec, e.g. gptq-w4-g16")
    parser.add_argument("out_dir", help="a new or empty directory")
    parser.add_argument("--format", choices=sorted(ZERO_OFFSET), default="v2",
                        help="v1 (AutoGPTQ, stores zero - 1) or v2 (GPTQModel); default v2")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="scales and unquantized tensors; float32 re-imports bit-identically. Default float16")
    parser.add_argument("--cache", default=None, help="qcheck cache (calibration tokens)")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    out = export_checkpoint(model.hf, args.spec, args.out_dir, format=args.format, dtype=DTYPES[args.dtype],
                            tokenizer=model.tokenizer.hf_tokenizer, cache_dir=args.cache)
    print(f"wrote {out} ({args.spec}, format {args.format}, {args.dtype} scales)")


if __name__ == "__main__":
    main()
