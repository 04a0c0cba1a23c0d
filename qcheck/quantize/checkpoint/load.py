"""Load a quantized checkpoint into a float32 copy of its FP model (docs/design.md, "Quantizers").

The block linears get the dequantized weights of the checkpoint's format (format.py, "Format
configs"): GPTQ-packed W = scales[g_idx] · (q − zero[g_idx]), g_idx used as stored (act-order:
never a row permutation); compressed-tensors W = (c − z) · scale per group, as that library
computes it (compressed.py). Everything else stays the FP model's: the
checkpoint's unquantized tensors (embeddings, norms, biases; float16 or bfloat16 as tools save
them) are checked against it, not loaded, so a certificate measures the quantized linears only,
as for qcheck's own quantizers.

Each unquantized value must equal the FP model's up to the roundings it went through (`tolerance`):
half an ulp of its stored dtype at its magnitude, plus half an ulp of the dtype the tool held the
model in (config.json `dtype` / `torch_dtype`) when that is coarser than float32. GPTQModel 7.6
holds a float32 model as bfloat16 and saves norms and embeddings as BF16 but the quantized
linears' biases as F16: those biases are bfloat16 values, off by up to half a bfloat16 ulp, which
float16's own half ulp (8x smaller) would refuse. Another model's values differ by O(1) and are
refused, naming the tensor, the worst element and the fix; so are NaN/inf values.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from qcheck.quantize.apply import LayerReport, QuantReport
from qcheck.models.digest import model_digest
from qcheck.quantize.checkpoint.format import Checkpoint, check_layout, layout_of, memory_names, open_checkpoint
from qcheck.quantize.linears import get_rows, named_block_linears, set_rows
from qcheck.quantize.result import QuantizedModel

# Significand bits (the leading one included) and the smallest normal exponent of each float
# dtype a checkpoint may hold: half an ulp of x is 2^(floor(log2|x|) - bits), no less than the
# subnormal spacing's half, 2^(min_exponent - bits).
FLOAT_BITS = {torch.float16: (11, -14), torch.bfloat16: (8, -126), torch.float32: (24, -126)}
WORKING_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def load_checkpoint(hf_model: nn.Module, directory: str | Path | Checkpoint, *, name: str | None = None,
                    weight_digest: str | None = None) -> QuantizedModel:
    """The checkpoint dequantized into a float32 deep copy of `hf_model` (left untouched).

    name: the FP model's name, for messages. weight_digest: model_digest(hf_model) if known.
    Returns a QuantizedModel as cache.load_or_quantize does: spec `checkpoint-wB[-gG][-asym]`, the
    FP weight digest, calibration from the config's qcheck meta (None for other tools), key = the
    sha256 of the checkpoint's files, a report with each linear's ‖W − Q‖ / ‖W‖, and notes: what
    was ignored (a tokenizer the tool synthesised) and how the unquantized tensors were checked.
    """
    start = time.perf_counter()
    ckpt = directory if isinstance(directory, Checkpoint) else open_checkpoint(directory)
    name = name or type(hf_model).__name__
    layout = layout_of(hf_model, name)
    check_layout(ckpt, layout)
    stored = _read_tensors(ckpt)
    names = memory_names(ckpt, layout)                        # state_dict name -> stored name
    tensors = {memory: stored[disk] for memory, disk in names.items()}
    notes = [*ckpt.notes, _check_unquantized(ckpt, hf_model, tensors, names, name)]
    model = copy.deepcopy(hf_model).float().eval()
    layers = []
    for prefix, module in named_block_linears(model):
        tick = time.perf_counter()
        W = get_rows(module).float().clone()                  # (d_out, d_in), FP
        Q = ckpt.quant.dequantize(ckpt.refuse, prefix, tensors, W.shape[1], W.shape[0])  # (d_out, d_in)
        set_rows(module, Q.to(module.weight.dtype))
        layers.append(LayerReport(name=prefix, d_out=W.shape[0], d_in=W.shape[1],
                                  weight_rel_error=float((W - Q).norm() / W.norm().clamp(min=1e-30)),
                                  seconds=time.perf_counter() - tick))
    qcheck_meta = ckpt.quant.meta.get("qcheck") if isinstance(ckpt.quant.meta.get("qcheck"), dict) else {}
    spec = ckpt.quant.spec
    return QuantizedModel(model=model, spec=spec, weight_digest=weight_digest or model_digest(hf_model),
                          calibration_source=qcheck_meta.get("calibration_source"),
                          calibration_digest=qcheck_meta.get("calibration_digest"), from_cache=False,
                          report=QuantReport(str(spec), layers, time.perf_counter() - start),
                          key=checkpoint_digest(ckpt), notes=tuple(note for note in notes if note))


def _read_tensors(ckpt: Checkpoint) -> dict[str, Tensor]:
    from safetensors import safe_open

    tensors: dict[str, Tensor] = {}
    for file in sorted({info.file for info in ckpt.tensors.values()}):
        try:
            with safe_open(str(file), framework="pt") as f:
                tensors.update({name: f.get_tensor(name) for name in f.keys()})
        except Exception as error:  # SafetensorError: data that does not match its header
            raise ckpt.refuse(f"{file.name} could not be read ({error}); it is corrupt, copy it again") from None
    return tensors


def working_dtype(ckpt: Checkpoint) -> torch.dtype | None:
    """The dtype the tool held the model in, from config.json (`dtype`, transformers 4: `torch_dtype`)."""
    config = ckpt.model_config or {}
    value = config.get("dtype", config.get("torch_dtype"))
    return WORKING_DTYPES.get(str(value).removeprefix("torch.")) if value is not None else None


def half_ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Half the spacing of `dtype` at |x| (float32 x): the largest error of rounding x to it."""
    bits, min_exponent = FLOAT_BITS[dtype]
    _, exponent = torch.frexp(x)                   # x = m · 2^exponent, 0.5 <= |m| < 1; 0 -> (0, 0)
    exponent = torch.where(x == 0, torch.full_like(exponent, min_exponent), exponent - 1)
    return torch.ldexp(torch.ones_like(x), exponent.clamp(min=min_exponent) - bits)


def tolerance(reference: Tensor, stored: torch.dtype, working: torch.dtype | None) -> Tensor:
    """How far a value may be from the FP model's `reference` (float32) after the tool rounded it
    to `working` (if coarser than float32) and saved it as `stored`: the sum of half an ulp of
    each, at the reference's magnitude (the larger binade when rounding crossed a power of two)."""
    magnitude = reference.abs() * (1 + 2.0 ** -7)   # the binade above when rounding crosses 2^k
    bound = torch.zeros_like(reference)
    for dtype in {d for d in (stored, working) if d in FLOAT_BITS and d != torch.float32}:
        bound = bound + half_ulp(magnitude, dtype)
    return bound


def _check_unquantized(ckpt: Checkpoint, hf_model: nn.Module, tensors: dict[str, Tensor],
                       names: dict[str, str], name: str) -> str | None:
    """Refuse an unquantized tensor that is not the FP model's up to its dtype's rounding; a note
    saying what was checked (None if nothing was)."""
    fp = hf_model.state_dict()
    working = working_dtype(ckpt)
    checked: dict[str, int] = {}
    worst = 0.0
    for key, tensor in sorted(tensors.items()):
        if key not in fp or key.rpartition(".")[2] in ckpt.quant.parts:
            continue  # buffers the checkpoint carries are ignored; quantized parts checked above
        stored = names.get(key, key)
        where = stored if stored == key else f"{stored} (read as {key})"
        reference = fp[key].detach().float().cpu()
        value = tensor.float()
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise ckpt.refuse(f"{where} holds {bad} NaN/inf value(s) where the FP model {name}'s are finite: "
                              f"the tool's save failed or the file is corrupt; quantize and save it again")
        if not tensor.is_floating_point():
            if not torch.equal(tensor.long(), fp[key].long()):
                raise ckpt.refuse(f"{where} differs from the FP model {name}'s: the checkpoint was made from "
                                  f"another model; pass the FP model it was quantized from with --qcheck-model")
            continue
        bound = tolerance(reference, tensor.dtype, working)
        excess = (value - reference).abs() - bound
        if (excess > 0).any():
            i = int(excess.flatten().argmax())
            index = list(torch.unravel_index(torch.tensor(i), value.shape)) if value.dim() else []
            at = f"[{', '.join(str(int(k)) for k in index)}]"
            n_bad = int((excess > 0).sum())
            rounding = " + ".join(f"half an ulp of {str(d).removeprefix('torch.')}"
                                  for d in dict.fromkeys((working, tensor.dtype))
                                  if d in FLOAT_BITS and d != torch.float32) or "none (float32)"
            raise ckpt.refuse(
                f"{where} differs from the FP model {name}'s at {n_bad} of {value.numel()} values, more than "
                f"rounding to its dtype allows: worst {where}{at} = {float(value.flatten()[i]):.8g} vs "
                f"{float(reference.flatten()[i]):.8g} in the FP model (|difference| "
                f"{float((value - reference).abs().flatten()[i]):.3g} > {float(bound.flatten()[i]):.3g}, "
                f"{rounding}; stored {str(tensor.dtype).removeprefix('torch.')}, config.json dtype "
                f"{str(working).removeprefix('torch.') if working else 'not set'}): the checkpoint was made "
                f"from another model; pass the FP model it was quantized from with --qcheck-model")
        dtype = str(tensor.dtype).removeprefix("torch.")
        checked[dtype] = checked.get(dtype, 0) + 1
        worst = max(worst, float((value - reference).abs().max()) if value.numel() else 0.0)
    if not checked:
        return None
    held = f"held as {str(working).removeprefix('torch.')} (config.json dtype), " if working else ""
    return (f"checkpoint {ckpt.path.name}: {sum(checked.values())} unquantized tensors "
            f"({', '.join(f'{n} {d}' for d, n in sorted(checked.items()))}; {held}max |difference| {worst:.3g}) "
            f"equal the FP model {name}'s to their dtype's rounding; the FP model's values are used")


def checkpoint_digest(ckpt: Checkpoint) -> str:
    """sha256 over the config files and the tensor files, in name order: which checkpoint exactly."""
    h = hashlib.sha256()
    for file in [*ckpt.config_files(), *sorted({info.file for info in ckpt.tensors.values()})]:
        h.update(f"{file.name}\n".encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
