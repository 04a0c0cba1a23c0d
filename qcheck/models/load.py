"""Load a model by name: the FP HF module, its tokenizer and the facts tests need."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from qcheck.models import checks
from qcheck.models.context import CONTEXT_KEYS, context_of
from qcheck.models.directory import pickled_files
from qcheck.models.errors import ModelNotAvailable
from qcheck.models.registry import ModelSpec, how_to_provide, hub_has_local_copy, hub_offline, resolve
from qcheck.models.tokenizer import Tokenizer, tokenizer_for


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    hf: torch.nn.Module       # the FP model; read-only by convention (quantizers deep-copy it)
    tokenizer: Tokenizer

    @property
    def n_ctx(self) -> int:
        """The context length in tokens (qcheck/models/context.py)."""
        n_ctx = context_of(self.hf.config)
        if n_ctx is None:
            raise ValueError(f"model {self.spec.name!r}: its config names no context length "
                             f"(none of {', '.join(CONTEXT_KEYS)})")
        return n_ctx

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())


def load_model(name: str, *, device: str = "cpu") -> LoadedModel:
    spec = resolve(name)
    hf = load_hf_model(spec, device=device)
    tokenizer = tokenizer_for(spec.kind, spec.location, hf.config.vocab_size, local_only=True)
    return LoadedModel(spec=spec, hf=hf, tokenizer=tokenizer)


def load_hf_model(spec: ModelSpec, *, device: str = "cpu"):
    """The FP model as an HF module: float32, eval mode, eager attention (TL reads patterns).

    Weights load from safetensors only (`use_safetensors=True`): a directory holding only a
    pickled `pytorch_model.bin` is refused, never unpickled (one beside safetensors is ignored with
    a warning); remote code is never trusted. A config that does not match the weights and NaN/Inf
    weights are refused (qcheck/models/checks.py).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    where = f"model {spec.name!r}" if spec.kind == "hub" else f"model directory {spec.location!r}"
    if spec.kind != "hub":
        directory = Path(spec.location)
        checks.check_model_dir(directory)
        pickled = pickled_files(directory)
        if pickled:
            warnings.warn(f"{where}: ignoring {', '.join(pickled)} (pickled; qcheck loads only the "
                          f"safetensors weights and never unpickles a file)", UserWarning, stacklevel=2)
        checks.check_config_fits(AutoConfig.from_pretrained(directory, trust_remote_code=False), directory, where)
    local_only = spec.kind != "hub" or hub_has_local_copy(spec.location) or hub_offline()
    try:
        # ignore_mismatched_sizes: report every misshapen tensor in `info` (refused below) instead
        # of transformers' bare RuntimeError
        model, info = AutoModelForCausalLM.from_pretrained(
            spec.location, dtype="float32", attn_implementation="eager",
            use_safetensors=True, trust_remote_code=False, local_files_only=local_only,
            ignore_mismatched_sizes=True, output_loading_info=True)
    except OSError as error:
        if spec.kind == "hub":
            raise ModelNotAvailable(f"model {spec.name!r} could not be loaded: {error}; "
                                    f"{how_to_provide(spec.name)}") from None
        raise ModelNotAvailable(f"model directory {spec.location!r} could not be loaded: {error}. "
                                f"It needs config.json and model.safetensors (pickled .bin "
                                f"weights are refused); rewrite it with "
                                f"`model.save_pretrained(DIR, safe_serialization=True)`") from None
    hint = checks.kv_heads_hint(model.config, Path(spec.location)) if spec.kind != "hub" else ""
    checks.check_loading_info(info, where, hint)
    checks.check_finite(model, where)
    return model.float().to(device).eval()
