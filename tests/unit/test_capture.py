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


def test_a_logit_window_serves_its_positions_and_refuses_others():
    import pytest

    logits = torch.arange(2 * 3 * 7, dtype=torch.float32).reshape(2, 3, 7)
    window = Capture(tokens=torch.zeros(2, 5, dtype=torch.long), mask=torch.ones(2, 5, dtype=torch.bool),
                     logits=logits, logit_start=2)
    assert torch.equal(window.logits_from(3, 5), logits[:, 1:3])
    with pytest.raises(ValueError, match="kept logits at positions 2..4, not 1..2"):
        window.logits_from(1, 3)
    none = Capture(tokens=torch.zeros(2, 5, dtype=torch.long), mask=torch.ones(2, 5, dtype=torch.bool), logits=None)
    with pytest.raises(ValueError, match="capture them with logit_positions"):
        none.logits_from(0, 5)


def test_the_in_context_loss_reads_the_same_numbers_from_a_window():
    import pytest

    from qcheck.analyses.circuits import repeated_half_loss

    half = 4
    tokens = torch.randint(0, 7, (3, 2 * half + 1), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(3, 2 * half + 1, 7, generator=torch.Generator().manual_seed(1))
    full = repeated_half_loss(logits, tokens, half)
    assert torch.equal(repeated_half_loss(logits[:, half + 1: 2 * half], tokens, half, start=half + 1), full)
    with pytest.raises(ValueError, match="do not cover"):
        repeated_half_loss(logits[:, half + 2: 2 * half], tokens, half, start=half + 2)
