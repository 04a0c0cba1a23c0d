"""Activation capture: run a TransformerBridge once over a prompt set and keep what the analyses
read. Collecting is separate from the math: analyses get a `Capture`, never a model or a hook.

Prompts of different lengths are right-padded into one batch; with causal attention the padding
never changes a real position, and `mask` says which positions are real.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def block_hooks(n_layers: int) -> list[str]:
    """The per-layer hooks every analysis shares (TransformerLens names, verbatim)."""
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_attn_out",
                  f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_pattern"]
    return names


@dataclass(frozen=True)
class Capture:
    """What one model did on one prompt set. All tensors float32 on the CPU.

    acts: TL hook name -> activation; `hook_resid_post`, `hook_attn_out`, `hook_mlp_out` are
    (batch, pos, d_model), `attn.hook_pattern` is (batch, head_index, query_pos, key_pos).
    lens_logits: unembed(ln_final(resid_post of layer l)) at each prompt's last real position,
    (n_layers, batch, d_vocab); the last layer's equals logits at that position.
    """

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    logits: Float[Tensor, "batch pos d_vocab"]
    acts: dict[str, Tensor] = field(default_factory=dict)
    lens_logits: Float[Tensor, "n_layers batch d_vocab"] | None = None

    @property
    def n_layers(self) -> int:
        """Layers the capture covers: 1 + the highest `blocks.{layer}.` in `acts` (0 if none), so
        a capture of attention patterns only counts its layers too."""
        layers = [int(name.split(".")[1]) for name in self.acts if name.startswith("blocks.")]
        return max(layers) + 1 if layers else 0


def pad_prompts(prompts: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists into (tokens, mask), both (batch, max_len)."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[row, : len(prompt)] = True
    return tokens, mask


@torch.no_grad()
def capture(bridge, tokens: Tensor, mask: Tensor, *, names: list[str] | None = None,
            lens: bool = True, batch_size: int = 16) -> Capture:
    """Run `bridge` over `tokens` with an explicit names_filter (unknown names raise)."""
    device = bridge.cfg.device
    names = block_hooks(bridge.cfg.n_layers) if names is None else names
    logits_parts, lens_parts, acts_parts = [], [], {name: [] for name in names}
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size].to(device)
        last = mask[start:start + batch_size].sum(dim=1) - 1
        logits, cache = bridge.run_with_cache(chunk, names_filter=names)
        logits_parts.append(logits.float().cpu())
        for name in names:
            acts_parts[name].append(cache[name].float().cpu())
        if lens:
            rows = torch.arange(len(chunk))
            resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][rows, last.to(device)]
                                 for l in range(bridge.cfg.n_layers)])  # (n_layers, batch, d_model)
            lens_parts.append(bridge.unembed(bridge.ln_final(resid)).float().cpu())
    return Capture(tokens=tokens, mask=mask, logits=torch.cat(logits_parts),
                   acts={name: torch.cat(parts) for name, parts in acts_parts.items()},
                   lens_logits=torch.cat(lens_parts, dim=1) if lens else None)
