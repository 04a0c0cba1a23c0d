"""`python -m qcheck.quantize.checkpoint MODEL SPEC DIR [--as compressed-tensors] [--format v1]
[--dtype float32]`: quantize a model with qcheck and export the result (export.py: GPTQ-packed;
export_compressed.py: compressed-tensors pack-quantized)."""

from __future__ import annotations

import argparse

from qcheck.quantize.checkpoint.export import DTYPES, export_checkpoint
from qcheck.quantize.checkpoint.export_compressed import export_compressed_tensors
from qcheck.quantize.packing import ZERO_OFFSET


def main(argv: list[str] | None = None) -> None:
    from qcheck.models.load import load_model
    from qcheck.quantize.spec import parse_quant_spec

    parser = argparse.ArgumentParser(prog="python -m qcheck.quantize.checkpoint",
                                     description="Quantize a model with qcheck and write a GPTQ-packed or "
                                                 "compressed-tensors (pack-quantized) checkpoint.")
    parser.add_argument("model", help="zoo name, Hugging Face id or save_pretrained directory")
    parser.add_argument("spec", type=parse_quant_spec, help="an rtn/gptq spec, e.g. gptq-w4-g16")
    parser.add_argument("out_dir", help="a new or empty directory")
    parser.add_argument("--as", dest="family", choices=("gptq", "compressed-tensors"), default="gptq",
                        help="gptq (AutoGPTQ/GPTQModel layout) or compressed-tensors (llm-compressor's "
                             "pack-quantized, what vLLM serves); default gptq")
    parser.add_argument("--format", choices=sorted(ZERO_OFFSET), default=None,
                        help="GPTQ only: v1 (AutoGPTQ, stores zero - 1) or v2 (GPTQModel); default v2")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="scales and unquantized tensors; float32 re-imports bit-identically. Default float16")
    parser.add_argument("--cache", default=None, help="qcheck cache (calibration tokens)")
    args = parser.parse_args(argv)
    if args.family == "compressed-tensors" and args.format is not None:
        parser.error("--format v1/v2 is a GPTQ option; compressed-tensors has one layout (pack-quantized)")
    model = load_model(args.model)
    options = dict(dtype=DTYPES[args.dtype], tokenizer=model.tokenizer.hf_tokenizer, cache_dir=args.cache)
    if args.family == "compressed-tensors":
        out = export_compressed_tensors(model.hf, args.spec, args.out_dir, **options)
        print(f"wrote {out} ({args.spec}, compressed-tensors pack-quantized, {args.dtype} scales)")
    else:
        out = export_checkpoint(model.hf, args.spec, args.out_dir, format=args.format or "v2", **options)
        print(f"wrote {out} ({args.spec}, format {args.format or 'v2'}, {args.dtype} scales)")
