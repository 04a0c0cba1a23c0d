"""Activation capture: run a TransformerBridge once over a prompt set and keep what the analyses
read. Collecting is separate from the math: analyses get a `Capture`, never a model or a hook.

Prompts of different lengths are right-padded into one batch; with causal attention the padding
never changes a real position, and `mask` says which positions are real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    (qcheck/pair.py), and a window larger than KEEP_LOGITS_BYTES is not kept at all:
    `recompute_logits(rows)` runs the model again on those prompts and returns their window
    (rows, logit_width, d_vocab). Analyses read logits through `logit_chunks` either way.
    """

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    logits: Float[Tensor, "batch logit_pos d_vocab"] | None
    acts: dict[str, Tensor] = field(default_factory=dict)
    lens_logits: Float[Tensor, "n_layers batch d_vocab"] | None = None
    logit_start: int = 0
    recompute_logits: Callable[[slice], Tensor] | None = field(default=None, repr=False, compare=False)
    logit_width: int = 0  # positions recompute_logits returns (when logits are not kept)

    def _kept_window(self) -> tuple[int, int]:
        if self.logits is not None:
            return self.logit_start, self.logit_start + self.logits.shape[1]
        if self.recompute_logits is not None:
            return self.logit_start, self.logit_start + self.logit_width
        return self.logit_start, self.logit_start

    def _check_window(self, start: int, stop: int) -> None:
        low, high = self._kept_window()
        if start < low or stop > high or low == high:
            raise ValueError(f"the capture kept logits at positions {low}..{high - 1}, not {start}..{stop - 1}: "
                             f"capture them with logit_positions covering the positions the analysis reads")

    def logit_chunks(self, start: int, stop: int) -> Iterator[tuple[slice, Float[Tensor, "rows window d_vocab"]]]:
        """(rows, the final logits of those prompts at positions start .. stop - 1), covering
        every prompt in order: one chunk when the logits were kept, STREAM_ROWS prompts at a time
        (recomputed) when they were not, so at most one chunk is in memory."""
        self._check_window(start, stop)
        if self.logits is not None:
            yield slice(0, len(self.tokens)), self.logits_from(start, stop)
            return
        for first in range(0, len(self.tokens), STREAM_ROWS):
            rows = slice(first, min(first + STREAM_ROWS, len(self.tokens)))
            yield rows, self.recompute_logits(rows)[:, start - self.logit_start: stop - self.logit_start]

    def logits_from(self, start: int, stop: int) -> Float[Tensor, "batch window d_vocab"]:
        """The final logits at positions start .. stop - 1; ValueError if they were not kept."""
        self._check_window(start, stop)
        if self.logits is None:
            raise ValueError("the capture did not keep its logits (larger than KEEP_LOGITS_BYTES): "
                             "read them with logit_chunks")
        return self.logits[:, start - self.logit_start: stop - self.logit_start]

    @property
    def n_layers(self) -> int:
        """Layers the capture covers: 1 + the highest `blocks.{layer}.` in `acts` (0 if none), so
        a capture of attention patterns only counts its layers too."""
        layers = [int(name.split(".")[1]) for name in self.acts if name.startswith("blocks.")]
        return max(layers) + 1 if layers else 0


# A logit window larger than this is recomputed in chunks rather than kept: the zoo's (vocabulary
# 256-512) are kept; GPT-2's natural set (40 prompts x 31 positions x 50,257) would be 238 MiB a side.
KEEP_LOGITS_BYTES = 64 * 2 ** 20
STREAM_ROWS = 4  # prompts per recomputed chunk (bridge outputs do not depend on the batch size on CPU)


def pad_prompts(prompts: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists into (tokens, mask), both (batch, max_len)."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[row, : len(prompt)] = True
    return tokens, mask


class _BlocksDone(Exception):
    """Raised at the final norm's input: everything the hooks want has been seen."""


def _blocks_only(bridge, chunk: Tensor, names: list[str]) -> dict[str, Tensor]:
    """The named hooks' activations on one batch, stopping before the final norm, so no
    (batch, pos, d_vocab) logits are made. (The bridge's stop_at_layer does not stop when it is
    n_layers: it would still unembed.)"""
    store: dict[str, Tensor] = {}

    def keep(name: str):  # stored under the name asked for: TL names like hook_resid_post are aliases
        def hook_fn(tensor: Tensor, hook) -> None:
            store[name] = tensor.detach()
        return hook_fn

    def stop(tensor: Tensor, hook) -> None:
        raise _BlocksDone

    try:
        bridge.run_with_hooks(chunk, fwd_hooks=[*((name, keep(name)) for name in names), ("ln_final.hook_in", stop)])
    except _BlocksDone:
        pass
    missing = [name for name in names if name not in store]
    if missing:
        raise ValueError(f"hooks {missing} did not fire before the final norm (unknown or after it)")
    return store


@torch.no_grad()
def capture(bridge, tokens: Tensor, mask: Tensor, *, names: list[str] | None = None,
            lens: bool = True, batch_size: int = 16, logit_positions: slice | None = slice(None),
            keep_logits_bytes: int = KEEP_LOGITS_BYTES) -> Capture:
    """Run `bridge` over `tokens` with an explicit names_filter (unknown names raise), keeping the
    final logits at `logit_positions` (a slice of positions; None keeps none), or, when they would
    take more than `keep_logits_bytes`, a function that recomputes them (Capture.logit_chunks)."""
    device = bridge.cfg.device
    n_layers = bridge.cfg.n_layers
    names = block_hooks(n_layers) if names is None else names
    window = None if logit_positions is None else range(tokens.shape[1])[logit_positions]
    keep = window is not None and len(tokens) * len(window) * bridge.cfg.d_vocab * 4 <= keep_logits_bytes
    logits_parts, lens_parts, acts_parts = [], [], {name: [] for name in names}
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size].to(device)
        last = mask[start:start + batch_size].sum(dim=1) - 1
        if keep:
            logits, cache = bridge.run_with_cache(chunk, names_filter=names)
            # a copy of the window: a view would keep the whole batch alive
            logits_parts.append(logits[:, logit_positions].float().cpu().clone(memory_format=torch.contiguous_format))
        else:  # no vocabulary-wide logits at all
            cache = _blocks_only(bridge, chunk, names)
        for name in names:
            acts_parts[name].append(cache[name].float().cpu())
        if lens:
            rows = torch.arange(len(chunk))
            resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][rows, last.to(device)]
                                 for l in range(n_layers)])  # (n_layers, batch, d_model)
            lens_parts.append(bridge.unembed(bridge.ln_final(resid)).float().cpu())
        del cache

    recompute = None
    if window is not None and not keep:
        @torch.no_grad()
        def recompute(rows: slice) -> Tensor:
            return bridge(tokens[rows].to(device))[:, logit_positions].float().cpu()

    return Capture(tokens=tokens, mask=mask, logits=torch.cat(logits_parts) if logits_parts else None,
                   acts={name: torch.cat(parts) for name, parts in acts_parts.items()},
                   lens_logits=torch.cat(lens_parts, dim=1) if lens else None,
                   logit_start=0 if window is None else window.start, recompute_logits=recompute,
                   logit_width=0 if window is None else len(window))
