"""HF module <-> TransformerBridge.

Wrapping rewrites the HF module tree in place (docs/notes/ecosystem.md), so `wrap` wraps a copy of
the tree unless the caller gives the module up (`copy_model=False`, for a quantized copy nobody
else reads): the FP model stays a plain HF model that quantizers can copy and edit. The copy is of
the modules only: its parameters and buffers are the FP model's own tensors (the bridge reads
them and never writes them; tests/unit/test_bridge_shares_weights.py checks both), so an FP model
and its bridge cost one set of weights, not two. FP and
quantized models are wrapped the same way (no compatibility mode, no LayerNorm folding), so their
residual streams are comparable.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor


def wrap(hf_model: torch.nn.Module, *, copy_model: bool = True):
    """A read-only TransformerBridge (eval mode) around a copy of `hf_model`'s module tree that
    shares its tensors, or around `hf_model` itself with copy_model=False (it is rewritten: read
    it only through the bridge)."""
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    module = (_copy_modules(hf_model) if copy_model else hf_model).eval()
    bridge = build_bridge_from_module(module, type(module).__name__, hf_config=module.config)
    bridge.eval()
    for parameter in bridge.parameters():
        parameter.requires_grad_(False)
    return bridge


def _copy_modules(hf_model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the module tree whose parameters and buffers are `hf_model`'s own objects."""
    shared = {id(t): t for t in (*hf_model.parameters(), *hf_model.buffers())}
    return copy.deepcopy(hf_model, memo=shared)


@torch.no_grad()
def bridge_logit_error(hf_model: torch.nn.Module, bridge, tokens: Tensor) -> float:
    """Max |bridge logits - HF logits| on `tokens` (batch, pos): the per-architecture self-check."""
    device = next(hf_model.parameters()).device
    reference = hf_model(tokens.to(device)).logits.float()
    wrapped = bridge(tokens.to(device)).float()
    return (wrapped - reference).abs().max().item()
