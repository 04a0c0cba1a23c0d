"""Capture: what one model did on one prompt set."""

import pytest
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


def test_a_large_logit_window_is_recomputed_in_chunks_with_the_same_numbers_and_analyses_agree():
    """keep_logits_bytes=0 makes any window "large": the capture keeps no logits, runs the blocks
    only (stop_at_layer), and Capture.logit_chunks recomputes them STREAM_ROWS prompts at a time.
    Activations, lens and logits equal the kept capture's; so do fidelity's and circuits' results."""
    from qcheck.analyses import circuits, fidelity
    from qcheck.capture import STREAM_ROWS, capture, pad_prompts
    from qcheck.models.bridge import wrap
    from tests.helpers import build_tiny

    for family in ("gpt2", "neox", "llama"):
        fp_bridge, quant_bridge = wrap(build_tiny(family, seed=0)), wrap(build_tiny(family, seed=1))
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (5, 9, 7, 3, 9, 6)]
        tokens, mask = pad_prompts(prompts, pad=0)
        kept = [capture(b, tokens, mask) for b in (fp_bridge, quant_bridge)]
        streamed = [capture(b, tokens, mask, keep_logits_bytes=0) for b in (fp_bridge, quant_bridge)]
        for k, s in zip(kept, streamed):
            assert s.logits is None and k.logits is not None
            assert k.acts.keys() == s.acts.keys() and all(torch.equal(k.acts[n], s.acts[n]) for n in k.acts)
            assert torch.equal(k.lens_logits, s.lens_logits)
            chunks = list(s.logit_chunks(0, tokens.shape[1]))
            assert len(chunks) == -(-len(tokens) // STREAM_ROWS)
            assert torch.allclose(torch.cat([c for _, c in chunks]), k.logits, atol=1e-5)
        a, b = fidelity.compare_outputs(*kept), fidelity.compare_outputs(*streamed)
        assert (a.n_positions, a.n_targets, a.top1) == (b.n_positions, b.n_targets, b.top1)
        assert [a.kl, a.loss_fp, a.loss_quant, a.loss_increase_ci.low] == pytest.approx(
            [b.kl, b.loss_fp, b.loss_quant, b.loss_increase_ci.low], rel=1e-5)

        half = 4
        induction = torch.cat([torch.zeros(5, 1, dtype=torch.long), torch.randint(1, 256, (5, half), generator=g)], 1)
        induction = torch.cat([induction, induction[:, 1:]], 1)
        full = torch.ones_like(induction, dtype=torch.bool)
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(2)]
        window = slice(half + 1, 2 * half)
        kept = [capture(b, induction, full, names=names, lens=False, logit_positions=window)
                for b in (fp_bridge, quant_bridge)]
        streamed = [capture(b, induction, full, names=names, lens=False, logit_positions=window, keep_logits_bytes=0)
                    for b in (fp_bridge, quant_bridge)]
        a, b = (circuits.compare_induction_captures(*c, half) for c in (kept, streamed))
        assert (a.icl_loss_fp, a.icl_loss_quant) == pytest.approx((b.icl_loss_fp, b.icl_loss_quant))
        assert a.scores_fp == b.scores_fp and a.scores_quant == b.scores_quant
