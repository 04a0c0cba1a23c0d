"""Load a GPTQ-packed checkpoint into a float32 copy of its FP model (docs/design.md, "Quantizers").

The block linears get the dequantized weights W = scales[g_idx] · (q − zero[g_idx]), g_idx used
as stored (act-order: never a row permutation). Everything else stays the FP model's: the
checkpoint's unquantized tensors (embeddings, norms, biases, usually float16) are checked
against it, not loaded, so a certificate measures the quantized linears only, as for qcheck's own
quantizers. A checkpoint whose unquantized tensors differ from the FP model's beyond float16/
bfloat16 rounding was made from another model and is refused.
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
from qcheck.quantize.checkpoint.format import Checkpoint, check_layout, layout_of, open_checkpoint
from qcheck.quantize.linears import get_rows, named_block_linears, set_rows
from qcheck.quantize.packing import PackedLinear, dequantize, unpack_linear
from qcheck.quantize.result import QuantizedModel

# Unquantized tensors must match the FP model to within bfloat16 rounding (2^-8 relative per
# element, so at most that in Frobenius norm); another model's tensors differ by O(1).
VALUE_RTOL = 1e-2


def load_checkpoint(hf_model: nn.Module, directory: str | Path | Checkpoint, *, name: str | None = None,
                    weight_digest: str | None = None) -> QuantizedModel:
    """The checkpoint dequantized into a float32 deep copy of `hf_model` (left untouched).

    name: the FP model's name, for messages. weight_digest: model_digest(hf_model) if known.
    Returns a QuantizedModel as cache.load_or_quantize does: spec `checkpoint-wB[-gG][-asym]`, the
    FP weight digest, calibration from the config's qcheck meta (None for other tools), key = the
    sha256 of the checkpoint's files, and a report with each linear's ‖W − Q‖ / ‖W‖.
    """
    start = time.perf_counter()
    ckpt = directory if isinstance(directory, Checkpoint) else open_checkpoint(directory)
    name = name or type(hf_model).__name__
    check_layout(ckpt, layout_of(hf_model, name))
    tensors = _read_tensors(ckpt)
    _check_unquantized(ckpt, hf_model, tensors, name)
    model = copy.deepcopy(hf_model).float().eval()
    layers = []
    for prefix, module in named_block_linears(model):
        tick = time.perf_counter()
        W = get_rows(module).float().clone()                  # (d_out, d_in), FP
        Q = _dequantize(ckpt, prefix, tensors).T              # (d_out, d_in)
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
                          key=checkpoint_digest(ckpt))


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


def _dequantize(ckpt: Checkpoint, prefix: str, tensors: dict[str, Tensor]) -> Tensor:
    """One linear's float32 weight (d_in, d_out), after checking the values the layout can't."""
    q = ckpt.quant
    scales = tensors[f"{prefix}.scales"]
    n_groups, d_in = scales.shape[0], tensors[f"{prefix}.g_idx"].shape[0]
    packed = PackedLinear(qweight=tensors[f"{prefix}.qweight"], qzeros=tensors[f"{prefix}.qzeros"],
                          scales=scales, g_idx=tensors[f"{prefix}.g_idx"])
    g_idx = packed.g_idx.long()
    if d_in and (g_idx.min() < 0 or g_idx.max() >= n_groups):
        raise ckpt.refuse(f"{prefix}.g_idx holds groups {int(g_idx.min())}..{int(g_idx.max())}, outside "
                          f"0..{n_groups - 1} ({n_groups} groups of scales); the file is corrupt")
    if not torch.isfinite(scales).all():
        raise ckpt.refuse(f"{prefix}.scales holds {int((~torch.isfinite(scales)).sum())} NaN/inf value(s); "
                          f"the quantization failed or the file is corrupt")
    codes, zeros = unpack_linear(packed, q.bits, format=q.format)
    maxq = 2 ** q.bits - 1
    if (zeros > maxq).any():  # only v1: a stored all-ones field reads as zero − 1 = maxq
        raise ckpt.refuse(f"{prefix}.qzeros: {int((zeros > maxq).sum())} zero point(s) read as {maxq + 1}, "
                          f"outside 0..{maxq}: format v1 stores zero − 1 and overflows for a zero point "
                          f"of 0 (asymmetric grids); re-save the checkpoint as checkpoint_format 'gptq_v2'")
    if q.sym and (zeros != 2 ** (q.bits - 1)).any():
        raise ckpt.refuse(f"{prefix}.qzeros: {q.source} says sym=true but {int((zeros != 2 ** (q.bits - 1)).sum())} "
                          f"zero point(s) differ from {2 ** (q.bits - 1)} (kernels that assume symmetric "
                          f"grids would ignore them); set sym to false if the grid is asymmetric")
    return dequantize(codes, zeros, scales, g_idx)


def _check_unquantized(ckpt: Checkpoint, hf_model: nn.Module, tensors: dict[str, Tensor], name: str) -> None:
    fp = hf_model.state_dict()
    for key, tensor in sorted(tensors.items()):
        if key not in fp or key.rpartition(".")[2] in ("qweight", "qzeros", "scales", "g_idx"):
            continue  # buffers the checkpoint carries are ignored; quantized parts checked above
        reference = fp[key].detach().float().cpu()
        difference = float((tensor.float() - reference).norm())
        if not difference <= VALUE_RTOL * float(reference.norm()):  # `not <=`: NaN fails too
            raise ckpt.refuse(f"{key} differs from the FP model {name}'s (relative difference "
                              f"{difference / max(float(reference.norm()), 1e-30):.3g}, more than rounding "
                              f"to 16 bits): the checkpoint was made from another model; pass the FP model "
                              f"it was quantized from with --qcheck-model")


def checkpoint_digest(ckpt: Checkpoint) -> str:
    """sha256 over the config files and the tensor files, in name order: which checkpoint exactly."""
    h = hashlib.sha256()
    for file in [*ckpt.config_files(), *sorted({info.file for info in ckpt.tensors.values()})]:
        h.update(f"{file.name}\n".encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
