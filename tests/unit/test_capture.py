"""Capture: what one model did on one prompt set."""

import torch

from qcheck.capture import Capture, block_hooks


def _capture(names: list[str]) -> Capture:
    tokens = torch.zeros(2, 5, dtype=torch.long)
    return Capture(tokens=tokens, mask=torch.ones_like(tokens, dtype=torch.bool), logits=torch.zeros(2, 5, 7),
                   acts={name: torch.zeros(1) for name in names})


def test_n_layers_counts_the_layers_whatever_was_captured():
    assert _capture(block_hooks(3)).n_layers == 3
    assert _capture([f"blocks.{l}.hook_resid_post" for l in range(4)]).n_layers == 4
    assert _capture([f"blocks.{l}.attn.hook_pattern" for l in range(2)]).n_layers == 2  # the induction capture
    assert _capture([]).n_layers == 0
