"""Attention on synthetic captures: JSD against numpy (query 0 and padding skipped), masked
previous-token scores, identical is perfect, planted damage names the heads, no previous-token head
is a note, not a failure."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from qcheck.analyses import attention
from qcheck.analyses.heads import previous_token_scores

from .captures import (GATED, LENGTHS, N_HEADS, POS, assert_baseline_json, causal_softmax, garbage_in_padding,
                       make_capture, with_acts)


def test_attention_jsd_matches_numpy_skipping_query_0_and_padding():
    fp = make_capture(0)
    quant = replace(make_capture(1), tokens=fp.tokens, mask=fp.mask)
    result = attention.compare_attention(fp, quant)
    name = "blocks.0.attn.hook_pattern"
    a, b = fp.acts[name].double().numpy(), quant.acts[name].double().numpy()
    for head in range(N_HEADS):
        per_query = []
        for row, length in enumerate(LENGTHS):
            for q in range(1, length):
                p, r = a[row, head, q], b[row, head, q]
                m = (p + r) / 2
                kl = lambda x: sum(x[k] * math.log2(x[k] / m[k]) for k in range(POS) if x[k] > 0)
                per_query.append((kl(p) + kl(r)) / 2)
        assert result.jsd[0][head] == pytest.approx(np.mean(per_query))
    assert result.n_queries == sum(LENGTHS) - len(LENGTHS)


def test_masked_previous_token_scores_equal_heads_when_unpadded_and_ignore_padding():
    fp = make_capture()
    pattern = fp.acts["blocks.1.attn.hook_pattern"]
    full = torch.ones(len(LENGTHS), POS, dtype=torch.bool)
    assert torch.allclose(attention.masked_previous_token_scores(pattern, full),
                          previous_token_scores(pattern).double())
    row = 1  # length 4: real queries 1..3
    expected = pattern[row, :, [1, 2, 3], [0, 1, 2]].double().mean(dim=-1)
    assert torch.allclose(attention.masked_previous_token_scores(pattern[row:row + 1], fp.mask[row:row + 1]),
                          expected)


def previous_token_pattern() -> torch.Tensor:
    """Every query attends to the token before it (query 0 to itself)."""
    pattern = torch.zeros(POS, POS)
    pattern[0, 0] = 1
    pattern[torch.arange(1, POS), torch.arange(POS - 1)] = 1
    return pattern


def test_attention_identical_up_to_padding_is_perfect():
    fp = make_capture()
    pattern = fp.acts["blocks.0.attn.hook_pattern"].clone()
    pattern[:, 1] = previous_token_pattern()
    fp = with_acts(fp, blocks__0__attn__hook_pattern=pattern)
    result = attention.compare_attention(fp, garbage_in_padding(fp))
    assert result.max_jsd == pytest.approx(0.0, abs=1e-12)
    assert result.prev_token_heads == [(0, 1)] and result.prev_token_survival == 1.0
    assert result.failures(GATED) == [] and result.notes() == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert list(baseline["heads"])[:4] == ["L0H0", "L0H1", "L0H2", "L1H0"]
    assert baseline["heads"]["L0H1"]["prev_token_fp"] == pytest.approx(1.0)


def test_attention_planted_damage_names_the_heads():
    fp = make_capture()
    fp_pattern = fp.acts["blocks.0.attn.hook_pattern"].clone()
    fp_pattern[:, 1] = previous_token_pattern()
    fp = with_acts(fp, blocks__0__attn__hook_pattern=fp_pattern)
    # quantized: L0H1 attends to BOS instead of the previous token; L1H2 attends uniformly
    broken0 = fp_pattern.clone()
    broken0[:, 1] = 0
    broken0[:, 1, :, 0] = 1
    broken1 = fp.acts["blocks.1.attn.hook_pattern"].clone()
    broken1[:, 2] = causal_softmax(torch.zeros(POS, POS))
    quant = with_acts(fp, blocks__0__attn__hook_pattern=broken0, blocks__1__attn__hook_pattern=broken1)
    result = attention.compare_attention(fp, quant)
    jsd_message, prev_message = result.failures(GATED)
    assert jsd_message.startswith("attention JSD above 0.05 bits at L0H1 (")
    assert "L1H2 (" in jsd_message and "L1H0" not in jsd_message
    # only query 1 still attends to p − 1 (= BOS): 3 of the 12 real queries >= 1
    assert prev_message.startswith("lost previous-token heads L0H1 1 [1, 1]→0.25 [0.2, 0.3333] (0/1 above 0.4 after")


def test_attention_without_previous_token_heads_notes_it_and_does_not_fail():
    fp = make_capture()
    result = attention.compare_attention(fp, fp)
    assert result.prev_token_heads == [] and result.prev_token_survival is None
    assert result.failures(GATED) == []
    (note,) = result.notes()
    assert note.startswith("FP model has no previous-token heads")
    assert result.as_baseline()["summary"]["prev_token_survival"] is None
