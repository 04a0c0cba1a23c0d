"""Load a model by name: the FP HF module, its tokenizer and the facts tests need."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcheck.models.registry import ModelSpec, load_hf_model, resolve
from qcheck.models.tokenizer import Tokenizer, tokenizer_for


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    hf: torch.nn.Module       # the FP model; read-only by convention (quantizers deep-copy it)
    tokenizer: Tokenizer

    @property
    def n_ctx(self) -> int:
        config = self.hf.config
        return getattr(config, "n_positions", None) or config.max_position_embeddings

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())


def load_model(name: str, *, device: str = "cpu") -> LoadedModel:
    spec = resolve(name)
    hf = load_hf_model(spec, device=device)
    tokenizer = tokenizer_for(spec.kind, spec.location, hf.config.vocab_size, local_only=True)
    return LoadedModel(spec=spec, hf=hf, tokenizer=tokenizer)
