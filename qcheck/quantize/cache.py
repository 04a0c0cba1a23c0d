"""The quantized-model cache: the second run loads instead of requantizing (docs/design.md, "Quantizers").

An entry holds the quantized weights of the block linears (safetensors, float32, exactly what
the quantizer produced) and a JSON sidecar with the report, the spec string and the digests. Its
key is sha256 over (cache format, model weight digest, canonical spec string, calibration digest).
Sampled calibration tokens are cached too (keyed by model digest and the calibration fields of
the spec), because the key needs their digest and sampling costs a model run per token.

Location: the `cache_dir` argument, else $QCHECK_CACHE_DIR, else ~/.cache/qcheck (outside the
repo). Writes are atomic and locked per entry (store.py), so xdist workers share it safely.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from qcheck.data.calibration import Calibration, calibration_for, resolve_seq_len, token_digest
from qcheck.models.digest import model_digest
from qcheck.quantize.apply import QuantReport, quantize_model
from qcheck.quantize.linears import copy_with_own_linears, named_block_linears
from qcheck.quantize.result import QuantizedModel
from qcheck.quantize.spec import QuantSpec
from qcheck.quantize.store import FORMAT, Entry


def default_cache_dir() -> Path:
    """$QCHECK_CACHE_DIR, else ~/.cache/qcheck."""
    return Path(os.environ.get("QCHECK_CACHE_DIR") or Path.home() / ".cache" / "qcheck").expanduser()


def cache_root(cache_dir: str | Path | None) -> Path:
    """`cache_dir` (user-expanded), else default_cache_dir()."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_key(weight_digest: str, spec: QuantSpec, calibration_digest: str | None) -> str:
    parts = [f"format={FORMAT}", f"model={weight_digest}", f"spec={spec}", f"calibration={calibration_digest}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def load_or_quantize(hf_model: nn.Module, spec: QuantSpec, *, calibration: Calibration | Tensor | None = None,
                     tokenizer=None, cache_dir: str | Path | None = None, weight_digest: str | None = None,
                     lock_timeout: float = -1, progress: Callable[[str], None] | None = None) -> QuantizedModel:
    """The quantized copy of `hf_model` for `spec`, from the cache or computed and stored.

    calibration: a Calibration (qcheck.data.calibration), a raw (n_samples, seq_len) token tensor,
    or None to build the one the spec names (sampled tokens are cached). Ignored by RTN.
    weight_digest: model_digest(hf_model) if the caller already has it. lock_timeout: seconds to
    wait for another process computing the same entry (-1: for ever). progress(text) hears what
    a long computation is doing ("calibration", "block 3/12").
    """
    if spec.method not in ("rtn", "gptq", "gptq-study"):
        raise ValueError(f"load_or_quantize: {spec} names a checkpoint to load or a user quantizer, not one "
                         "of qcheck's; use qcheck.quantize.checkpoint or qcheck.quantize.user_apply")
    root = cache_root(cache_dir)
    weight_digest = weight_digest or model_digest(hf_model)
    if progress is not None and spec.needs_calibration and calibration is None:
        progress("calibration")
    calibration = resolve_calibration(hf_model, spec, calibration, weight_digest=weight_digest, cache_dir=root,
                                      tokenizer=tokenizer, lock_timeout=lock_timeout)
    calibration_digest = calibration.digest if calibration is not None else None
    key = cache_key(weight_digest, spec, calibration_digest)
    entry = Entry(root, "quant", key)
    common = dict(spec=spec, weight_digest=weight_digest, key=key, calibration_digest=calibration_digest,
                  calibration_source=calibration.source if calibration is not None else None)
    with entry.lock(lock_timeout):
        found = entry.read()
        if found is not None:
            model = _load_weights(hf_model, found[0])
            if model is not None:
                return QuantizedModel(model=model, from_cache=True,
                                      report=QuantReport.from_dict(found[1]["report"]), **common)
            entry.problem = "its tensors do not match this model's block linears"
        note = entry.problem
        model, report = quantize_model(hf_model, spec, calibration.tokens if calibration is not None else None,
                                       progress=progress)
        entry.write(_block_weights(model), {"spec": str(spec), "weight_digest": weight_digest,
                                            "calibration_digest": calibration_digest,
                                            "calibration_source": common["calibration_source"],
                                            "report": report.to_dict(), "versions": _versions()})
    return QuantizedModel(model=model, from_cache=False, report=report, cache_note=note, **common)


def resolve_calibration(hf_model: nn.Module, spec: QuantSpec, calibration: Calibration | Tensor | None, *,
                        weight_digest: str, cache_dir: Path, tokenizer=None,
                        lock_timeout: float = -1) -> Calibration | None:
    """What `spec` is quantized with: None if it needs no calibration (RTN); else `calibration`
    as given, a raw (n_samples, seq_len) token tensor wrapped as a Calibration, or for None the
    one the spec names (cached_calibration)."""
    if not spec.needs_calibration:
        return None
    if calibration is None:
        return cached_calibration(hf_model, spec, weight_digest=weight_digest, cache_dir=cache_dir,
                                  tokenizer=tokenizer, lock_timeout=lock_timeout)
    if isinstance(calibration, Tensor):
        return Calibration(calibration, "tokens given by the caller", token_digest(calibration))
    return calibration


def cached_calibration(hf_model: nn.Module, spec: QuantSpec, *, weight_digest: str, cache_dir: str | Path,
                       tokenizer=None, lock_timeout: float = -1) -> Calibration:
    """calibration_for(spec, hf_model), with `sampled` tokens kept on disk (others are recomputed:
    a file may change, and datasets caches WikiText-2 itself)."""
    if spec.calibration != "sampled":
        return calibration_for(spec, hf_model, tokenizer=tokenizer)
    seq_len = resolve_seq_len(hf_model, spec.seq_len)
    recipe = f"format={FORMAT}\nmodel={weight_digest}\nsampled n={spec.n_samples} len={seq_len} seed={spec.seed}"
    entry = Entry(cache_dir, "calibration", hashlib.sha256(recipe.encode()).hexdigest())
    with entry.lock(lock_timeout):
        found = entry.read()
        tokens = found[0]["tokens"] if found is not None else None
        if tokens is not None and token_digest(tokens) == found[1]["digest"]:
            return Calibration(tokens, found[1]["source"], found[1]["digest"])
        calibration = calibration_for(spec, hf_model, tokenizer=tokenizer)
        entry.write({"tokens": calibration.tokens}, {"source": calibration.source, "digest": calibration.digest})
    return calibration


def _block_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weights of every block linear (detached, not copied), by state_dict name, in the
    module's own layout (Conv1D: [in, out])."""
    return {f"{name}.weight": module.weight.detach() for name, module in named_block_linears(model)}


def _load_weights(hf_model: nn.Module, tensors: Mapping[str, Tensor]) -> nn.Module | None:
    """A copy of `hf_model` (linears.copy_with_own_linears) with `tensors` loaded, or None if names
    or shapes do not match. Each tensor is read (store.StoredTensors), copied in and dropped in
    turn: the entry is never held beside the model."""
    expected = _block_weights(hf_model)
    if expected.keys() != set(tensors):
        return None
    model = copy_with_own_linears(hf_model).eval()
    with torch.no_grad():
        for name in expected:
            tensor, parameter = tensors[name], model.get_parameter(name)
            if tensor.shape != parameter.shape:
                return None
            parameter.copy_(tensor.to(device=parameter.device, dtype=parameter.dtype))
            del tensor
    return model


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "qcheck")}
