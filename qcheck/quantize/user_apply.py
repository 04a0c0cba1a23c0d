"""Run a user quantizer (user.py) and take what it returns as the quantized twin, or refuse it.

The contract (README, "Your own quantizer"):

    quantize(model, calibration, options) -> nn.Module | dict[str, Tensor]

- model: a deep copy of the FP HF model (float32, eval mode), the function's own: it may quantize
  it in place and return it. The FP model itself, shared by every case of the run, is never
  handed out.
- calibration: LongTensor (n_samples, seq_len) of token ids, the batches qcheck's GPTQ gets for
  the same calibration options (the `sampled` default, `file:PATH`, `wikitext2`, -nN -lenN
  -seedN), a copy of them. Always passed, also to a quantizer that ignores them: resolving them
  lazily would make the argument something other than a tensor, and the sampled default is
  cached on disk after the first run (cache.py cached_calibration).
- options: the QuantSpec of `user:NAME-w4-g32-...` (bits, group_size, sym, grid, damp, ...).

What it returns is checked as a checkpoint's tensors are (checkpoint/load.py): the same class
and architecture as the FP model; every block linear's weight (linears.py) present, floating
point, finite and of the FP shape (in the module's own layout: GPT-2's Conv1D is [d_in, d_out]);
no tensor the FP model lacks; every other tensor (embeddings, norms, biases, buffers) equal to
the FP model's up to the rounding of the dtype it is returned in (load.py `tolerance`), since
qcheck certifies the block linears only. Only the block linears' weights are taken, as float32,
into a twin that shares everything else with the FP model (linears.copy_with_own_linears).

Nothing is cached on disk: the user's code may change between runs while its name and options
stay the same, so a cache keyed by them would serve stale weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from qcheck.data.calibration import Calibration
from qcheck.models.digest import model_digest
from qcheck.quantize.apply import LayerReport, QuantReport
from qcheck.quantize.checkpoint.format import STRUCTURAL
from qcheck.quantize.checkpoint.load import tolerance
from qcheck.quantize.linears import copy_with_own_linears, get_rows, named_block_linears
from qcheck.quantize.result import QuantizedModel
from qcheck.quantize.spec import QuantSpec
from qcheck.quantize.user import UserQuantizer

FIX = ("return the model you were given, quantized in place, or its state dict, with only the "
       "block linears' weights changed, dequantized to floats")


class ReturnRefused(ValueError):
    """What a user quantizer returned cannot be certified; the message names it and the fix."""


def run_user_quantizer(quantizer: UserQuantizer, hf_model: nn.Module, spec: QuantSpec, calibration: Calibration,
                       *, name: str | None = None, weight_digest: str | None = None) -> QuantizedModel:
    """The quantized twin of `hf_model` (left untouched) that `quantizer` returns for `spec`.

    name: the FP model's, for messages. weight_digest: model_digest(hf_model) if known.
    Returns a QuantizedModel as load_checkpoint does: a report with each block linear's
    ‖W − Q‖ / ‖W‖, key = model_digest of the twin (the returned weights), never from a cache.
    Raises ReturnRefused naming what was returned, the tensor and the fix.
    """
    if spec.method != "user" or spec.name != quantizer.name:
        raise ValueError(f"run_user_quantizer: {spec} is not the user quantizer {quantizer.name}")
    start = time.perf_counter()
    where = f"user quantizer {spec} ({quantizer.target}) on {name or type(hf_model).__name__}"
    returned = quantizer.fn(copy.deepcopy(hf_model), calibration.tokens.clone(), spec)
    tensors, what = returned_tensors(returned, hf_model, where)
    n_rounded = check_returned(tensors, hf_model, where)
    model = copy_with_own_linears(hf_model).eval()
    layers = []
    with torch.no_grad():
        for prefix, module in named_block_linears(model):
            W = get_rows(module).float().clone()             # (d_out, d_in), FP
            module.weight.copy_(tensors[f"{prefix}.weight"].detach().to(module.weight.device, torch.float32))
            Q = get_rows(module).float()                     # (d_out, d_in), quantized
            layers.append(LayerReport(name=prefix, d_out=W.shape[0], d_in=W.shape[1],
                                      weight_rel_error=float((W - Q).norm() / W.norm().clamp(min=1e-30))))
    n_other = len(tensors) - len(layers)
    rounding = f" ({n_rounded} of them to their dtype's rounding)" if n_rounded else ""
    note = (f"user quantizer {spec.name} = {quantizer.target} returned {what}: its {len(layers)} block linears "
            f"are used (as float32); " + (f"its {n_other} other tensors equal the FP model's{rounding}, whose "
                                           f"values are used; " if n_other else "")
            + "not cached (its code may change between runs)")
    return QuantizedModel(model=model, spec=spec, weight_digest=weight_digest or model_digest(hf_model),
                          calibration_source=calibration.source, calibration_digest=calibration.digest,
                          from_cache=False, report=QuantReport(str(spec), layers, time.perf_counter() - start),
                          key=model_digest(model), notes=(note,))


def returned_tensors(returned: object, hf_model: nn.Module, where: str) -> tuple[dict[str, Tensor], str]:
    """(state dict, what it was) of a user quantizer's return value, or ReturnRefused: the FP
    model itself, another class or configuration, not a module or a mapping of tensors."""
    if returned is hf_model:
        raise ReturnRefused(f"{where}: returned the FP model itself, which every case of the run shares; "
                            f"quantize the copy it is given as `model` and {FIX}")
    if isinstance(returned, nn.Module):
        if type(returned) is not type(hf_model):
            raise ReturnRefused(f"{where}: returned a {type(returned).__name__} but the FP model is a "
                                f"{type(hf_model).__name__}: another architecture; {FIX}")
        mine, theirs = _config(returned), _config(hf_model)
        differ = [f"{key} {mine.get(key)!r} vs {theirs.get(key)!r}" for key in ("model_type", *STRUCTURAL)
                  if mine.get(key) != theirs.get(key)]
        if differ:
            raise ReturnRefused(f"{where}: returned a model of another configuration (returned vs FP: "
                                f"{'; '.join(differ[:5])}); {FIX}")
        return returned.state_dict(), "the model"
    if isinstance(returned, Mapping):
        bad = next(((k, v) for k, v in returned.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
        if bad is not None:
            raise ReturnRefused(f"{where}: returned a mapping whose entry {bad[0]!r} is a {type(bad[1]).__name__}, "
                                f"not a state dict (tensor name -> Tensor); {FIX}")
        return dict(returned), f"a state dict of {len(returned)} tensors"
    hint = " (a function that quantizes in place must still return the model)" if returned is None else ""
    raise ReturnRefused(f"{where}: returned {type(returned).__name__}{hint}, neither an nn.Module nor a state "
                        f"dict; {FIX}")


def check_returned(tensors: dict[str, Tensor], hf_model: nn.Module, where: str) -> int:
    """ReturnRefused unless `tensors` (state_dict names) holds every block-linear weight of
    `hf_model`, floating point, finite and of its shape, nothing the FP model lacks, and every
    other tensor equal to the FP model's up to its dtype's rounding. Returns how many of those
    other tensors are not float32 (equal only to that rounding)."""
    fp = hf_model.state_dict()
    linears = [f"{prefix}.weight" for prefix, _ in named_block_linears(hf_model)]
    unexpected = sorted(tensors.keys() - fp.keys())
    missing = [key for key in linears if key not in tensors]
    if len(missing) == len(linears):
        has = f"; it has {', '.join(unexpected[:2])}, ..." if unexpected else ""
        raise ReturnRefused(f"{where}: what it returned holds none of the FP model's {len(linears)} block linear "
                            f"weights ({linears[0]}, ...){has}: another architecture; {FIX}")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} of the {len(linears)} block linear weights ({missing[0]}, ...)")
    if unexpected:
        problems.append(f"unexpected tensor(s) {', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''}: "
                        f"the FP model has no such tensor (packed weights such as qweight/scales are not read: "
                        f"dequantize them into the module's weight)")
    rounded = 0
    for key, tensor in sorted((k, t) for k, t in tensors.items() if k in fp):
        if tuple(tensor.shape) != tuple(fp[key].shape):
            problems.append(f"{key} is {list(tensor.shape)}, the FP model's is {list(fp[key].shape)}")
        elif not tensor.is_floating_point():
            if key in linears:
                problems.append(f"{key} is {str(tensor.dtype).removeprefix('torch.')}: a block linear's "
                                f"weight must be floats (the dequantized values)")
            elif not torch.equal(tensor.detach().cpu(), fp[key].detach().cpu()):
                problems.append(f"{key} differs from the FP model's")
        elif not torch.isfinite(tensor).all():
            problems.append(f"{key} holds {int((~torch.isfinite(tensor)).sum())} NaN/inf value(s)")
        elif key not in linears:
            problem = _unchanged(key, tensor, fp[key])
            problems += [problem] if problem else []
            rounded += tensor.dtype != torch.float32
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ReturnRefused(f"{where}: what it returned does not fit the FP model: {'; '.join(problems[:5])}{more}; "
                            f"{FIX}")
    return rounded


def _unchanged(key: str, tensor: Tensor, fp: Tensor) -> str | None:
    """Why a tensor that is not a block linear's weight is not the FP model's (None: it is),
    allowing the rounding to its dtype (checkpoint/load.py `tolerance`, no working dtype)."""
    reference, value = fp.detach().float().cpu(), tensor.detach().float().cpu()
    bound = tolerance(reference, tensor.dtype, None)
    excess = (value - reference).abs() - bound
    if not (excess > 0).any():
        return None
    i = int(excess.flatten().argmax())
    at = [int(k) for k in torch.unravel_index(torch.tensor(i), value.shape)] if value.dim() else []
    dtype = str(tensor.dtype).removeprefix("torch.")
    return (f"{key} differs from the FP model's at {int((excess > 0).sum())} of {value.numel()} values, more than "
            f"rounding to {dtype} allows (worst {key}{at} = {float(value.flatten()[i]):.8g} vs "
            f"{float(reference.flatten()[i]):.8g}): qcheck certifies the block linears only, so leave embeddings, "
            f"norms and biases as they are (or return them in the float16/bfloat16 dtype they were rounded to)")


def _config(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}
