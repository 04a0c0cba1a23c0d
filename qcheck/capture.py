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
    logits: the final logits at positions logit_start .. logit_start + logit_pos - 1 only, or None:
    a vocabulary-wide row per position is the largest thing a capture holds (50,257 floats per
    token for GPT-2), so each prompt set keeps just the positions its analyses read
    (qcheck/pair.py).
    """

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    logits: Float[Tensor, "batch logit_pos d_vocab"] | None
    acts: dict[str, Tensor] = field(default_factory=dict)
    lens_logits: Float[Tensor, "n_layers batch d_vocab"] | None = None
    logit_start: int = 0

    def logits_from(self, start: int, stop: int) -> Float[Tensor, "batch window d_vocab"]:
        """The final logits at positions start .. stop - 1; ValueError if they were not kept."""
        kept = 0 if self.logits is None else self.logits.shape[1]
        if self.logits is None or start < self.logit_start or stop > self.logit_start + kept:
            raise ValueError(f"the capture kept logits at positions {self.logit_start}.."
                             f"{self.logit_start + kept - 1}, not {start}..{stop - 1}: capture them "
                             f"with logit_positions covering the positions the analysis reads")
        return self.logits[:, start - self.logit_start: stop - self.logit_start]

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
            lens: bool = True, batch_size: int = 16, logit_positions: slice | None = slice(None)) -> Capture:
    """Run `bridge` over `tokens` with an explicit names_filter (unknown names raise), keeping the
    final logits at `logit_positions` (a slice of positions; None keeps none)."""
    device = bridge.cfg.device
    names = block_hooks(bridge.cfg.n_layers) if names is None else names
    logits_parts, lens_parts, acts_parts = [], [], {name: [] for name in names}
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size].to(device)
        last = mask[start:start + batch_size].sum(dim=1) - 1
        logits, cache = bridge.run_with_cache(chunk, names_filter=names)
        if logit_positions is not None:  # a copy of the window: a view would keep the whole batch alive
            logits_parts.append(logits[:, logit_positions].float().cpu().clone(memory_format=torch.contiguous_format))
        for name in names:
            acts_parts[name].append(cache[name].float().cpu())
        if lens:
            rows = torch.arange(len(chunk))
            resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][rows, last.to(device)]
                                 for l in range(bridge.cfg.n_layers)])  # (n_layers, batch, d_model)
            lens_parts.append(bridge.unembed(bridge.ln_final(resid)).float().cpu())
    start = 0 if logit_positions is None else range(tokens.shape[1])[logit_positions].start
    return Capture(tokens=tokens, mask=mask, logits=torch.cat(logits_parts) if logits_parts else None,
                   acts={name: torch.cat(parts) for name, parts in acts_parts.items()},
                   lens_logits=torch.cat(lens_parts, dim=1) if lens else None, logit_start=start)
