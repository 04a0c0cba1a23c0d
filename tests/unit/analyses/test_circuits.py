"""Induction circuits on planted attention patterns over repeated random tokens: the repeated-half
loss, both detection rules, lost heads named worst first, no FP head, the in-context loss claim."""

import math

import numpy as np
import pytest
import torch

from qcheck.analyses import circuits
from qcheck.analyses.heads import induction_scores
from qcheck.capture import Capture
from qcheck.data.induction import repeated_random_tokens

from .captures import D_VOCAB, GATED, assert_baseline_json


HALF = 5
TOKENS = repeated_random_tokens(n_sequences=4, half=HALF, low=1, high=D_VOCAB, bos=0, seed=0)


def induction_patterns(scores: list[list[float]]) -> list[torch.Tensor]:
    """Per layer (batch, head_index, query_pos, key_pos) patterns whose induction score per head is
    exactly `scores[layer][head]`: second-half queries put that much on the induction key, the
    rest on BOS."""
    n_pos = 1 + 2 * HALF
    layers = []
    for layer_scores in scores:
        pattern = torch.zeros(len(TOKENS), len(layer_scores), n_pos, n_pos)
        pattern[..., 0] = 1.0
        for head, s in enumerate(layer_scores):
            for q in range(1 + HALF, n_pos):
                pattern[:, head, q, 0] = 1 - s
                pattern[:, head, q, q - HALF + 1] = s
        layers.append(pattern)
    return layers


def uniform_logits() -> torch.Tensor:
    return torch.zeros(len(TOKENS), TOKENS.shape[1], D_VOCAB)


def test_induction_patterns_helper_gives_the_planted_scores():
    (pattern,) = induction_patterns([[0.9, 0.25]])
    assert induction_scores(pattern, HALF).tolist() == pytest.approx([0.9, 0.25])


def test_repeated_half_loss_covers_exactly_the_inducible_tokens():
    confident = uniform_logits()
    for p in range(HALF + 1, 2 * HALF):  # logits at p predict the token at p + 1
        confident[torch.arange(len(TOKENS)), p, TOKENS[:, p + 1]] = 100.0
    assert circuits.repeated_half_loss(confident, TOKENS, HALF).tolist() == pytest.approx([0.0] * 4, abs=1e-9)
    # forget one inducible position: exactly one of the HALF − 1 targets costs ln(V)
    missing = confident.clone()
    missing[:, 2 * HALF - 1] = 0.0
    expected = math.log(D_VOCAB) / (HALF - 1)
    assert circuits.repeated_half_loss(missing, TOKENS, HALF).tolist() == pytest.approx([expected] * 4)
    # confidence anywhere else (e.g. the non-inducible first repeated token) does not count
    elsewhere = uniform_logits()
    elsewhere[torch.arange(len(TOKENS)), HALF, TOKENS[:, HALF + 1]] = 100.0
    uniform = [math.log(D_VOCAB)] * 4
    assert circuits.repeated_half_loss(elsewhere, TOKENS, HALF).tolist() == pytest.approx(uniform)


def compare(fp_scores, quant_scores, rule="fixed", fp_logits=None, quant_logits=None):
    losses = [circuits.repeated_half_loss(uniform_logits() if logits is None else logits, TOKENS, HALF)
              for logits in (fp_logits, quant_logits)]
    return circuits.compare_induction(induction_patterns(fp_scores), induction_patterns(quant_scores),
                                      *losses, TOKENS, HALF, rule=rule)


def test_induction_identical_is_perfect():
    scores = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.6]]
    result = compare(scores, scores)
    assert result.fixed.detected == ((0, 0), (1, 0), (1, 2)) and result.fixed.survival == 1.0
    assert result.correlation == pytest.approx(1.0) and result.icl_loss_increase == 0.0
    assert result.failures(GATED) == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert baseline["fixed"]["detected"] == ["L0H0", "L1H0", "L1H2"]
    assert baseline["heads"]["L1H2"] == {"fp": pytest.approx(0.6), "quant": pytest.approx(0.6)}


def test_induction_fixed_rule_names_lost_heads_worst_first():
    fp = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.62]]
    quant = [[0.85, 0.1, 0.05], [0.31, 0.2, 0.08]]
    result = compare(fp, quant)
    assert result.fixed.survived == ((0, 0),) and result.survival == pytest.approx(1 / 3)
    (message,) = result.failures(GATED)
    # every sequence is the same here, so each interval is its point
    assert message == ("lost induction heads L1H2 0.62 [0.62, 0.62]→0.08 [0.08, 0.08], L1H0 0.5 [0.5, 0.5]→0.31 "
                       "[0.31, 0.31] (1/3 survive; need 1; fixed rule: detected > 0.4, survives > 0.4)")
    assert result.correlation == pytest.approx(np.corrcoef(np.ravel(fp), np.ravel(quant))[0, 1])


def test_induction_relative_rule_is_the_studys_code():
    fp = [[0.9, 0.1, 0.05, 0.02], [0.3, 0.2, 0.15, 0.01]]
    quant = [[0.39, 0.1, 0.05, 0.02], [0.3, 0.2, 0.15, 0.01]]
    # population std (numpy's default): t = 0.7646, t / 2 = 0.3823 < 0.39 (sample std: 0.4012 > 0.39)
    threshold = np.mean(fp) + 2 * np.std(fp)
    result = compare(fp, quant, rule="relative")
    assert result.relative.detect_threshold == pytest.approx(threshold)
    assert result.relative.survive_threshold == pytest.approx(threshold / 2)
    assert result.relative.detected == result.relative.survived == ((0, 0),)
    assert result.fixed.detected == ((0, 0),) and result.fixed.survived == ()  # 0.39 < 0.4
    # 8 heads are too few for mean + 2σ to single out induction heads: the verdict says so
    (guard,) = result.failures(GATED.updated({'induction_rule': "relative"}))
    assert guard.criterion == "relative_rule_sample_size" and "needs at least 40 heads, this model has 8" in guard
    with pytest.raises(ValueError, match="rule='relative'"):
        result.failures(GATED)
    (message,) = compare(fp, quant, rule="fixed").failures(GATED)
    assert message.startswith("lost induction heads L0H0 0.9 [0.9, 0.9]→0.39 [0.39, 0.39] (0/1 survive")


def test_induction_without_fp_heads_fails_with_its_own_message():
    scores = [[0.1, 0.2, 0.05], [0.3, 0.2, 0.1]]
    (message,) = compare(scores, scores).failures(GATED)
    assert message == ("FP model has no induction heads under the fixed rule (score > 0.4; best L1H0 0.3 [0.3, 0.3]); "
                       "nothing to certify")
    assert compare(scores, scores).survival is None


def test_induction_loss_increase_fails_even_when_heads_survive():
    scores = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.6]]
    good = uniform_logits()
    for p in range(HALF + 1, 2 * HALF):
        good[torch.arange(len(TOKENS)), p, TOKENS[:, p + 1]] = 100.0
    result = compare(scores, scores, fp_logits=good, quant_logits=uniform_logits())
    assert result.icl_loss_fp == pytest.approx(0.0, abs=1e-9)
    assert result.icl_loss_quant == pytest.approx(math.log(D_VOCAB))
    (message,) = result.failures(GATED)
    assert message == "in-context loss on the repeated half rose 0→2.398 nats/token (+2.398 [2.398, 2.398] vs max 0.25)"


def test_induction_captures_wrapper_reads_patterns_and_logits():
    scores = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.6]]
    patterns = induction_patterns(scores)
    acts = {f"blocks.{l}.attn.hook_pattern": p for l, p in enumerate(patterns)}  # patterns only
    cap = Capture(tokens=TOKENS, mask=torch.ones_like(TOKENS, dtype=torch.bool), logits=uniform_logits(),
                  acts=acts)
    result = circuits.compare_induction_captures(cap, cap, HALF, rule="fixed")
    assert np.allclose(result.scores_fp, scores) and result.fixed.survival == 1.0


def spread(patterns: list[torch.Tensor], layer: int, head: int, per_sequence: list[float]) -> list[torch.Tensor]:
    """`patterns` with one head's induction score set per sequence (4 sequences)."""
    out = [p.clone() for p in patterns]
    for seq, s in enumerate(per_sequence):
        for q in range(1 + HALF, 1 + 2 * HALF):
            out[layer][seq, head, q, 0] = 1 - s
            out[layer][seq, head, q, q - HALF + 1] = s
    return out


def compare_patterns(fp, quant, *, rule="fixed"):
    losses = [circuits.repeated_half_loss(uniform_logits(), TOKENS, HALF)] * 2
    return circuits.compare_induction(fp, quant, *losses, TOKENS, HALF, rule=rule)


def test_a_head_whose_interval_straddles_the_cut_is_borderline_not_lost():
    """Quantized L0H0 scores 0.30 and 0.52 on alternate sequences: mean 0.41 > 0.4, but the
    interval over the 4 sequences reaches below 0.4, so the data cannot say it survived."""
    fp = induction_patterns([[0.9, 0.1]])
    quant = spread(induction_patterns([[0.9, 0.1]]), 0, 0, [0.30, 0.52, 0.30, 0.52])
    result = compare_patterns(fp, quant)
    calls = result.calls()
    assert calls.borderline == ((0, 0),) and calls.survived == calls.lost == ()
    assert calls.describe() == "0/1 (1 borderline)"
    (failure,) = result.failures(GATED)
    assert failure.borderline and failure.criterion == "min_induction_survival"
    assert failure.startswith("borderline induction heads L0H0 0.9 [0.9, 0.9]→0.41 [0.3, 0.52]")
    assert result.fixed.survived == ((0, 0),)  # the point rule alone would call it kept
    bounds = result.intervals()
    assert bounds["heads"]["L0H0"]["quant"] == [pytest.approx(0.30), pytest.approx(0.52)]
    assert bounds["calls"]["borderline"] == ["L0H0"] and bounds["summary"]["survival"] == [0.0, 1.0]


def test_a_head_surely_below_the_cut_is_lost_and_a_straddling_fp_head_is_never_surely_lost():
    fp = spread(induction_patterns([[0.9, 0.1]]), 0, 1, [0.2, 0.7, 0.2, 0.7])  # L0H1 FP 0.45 [0.2, 0.7]
    quant = induction_patterns([[0.2, 0.05]])
    calls = compare_patterns(fp, quant).calls()
    assert calls.lost == ((0, 0),) and calls.borderline == ((0, 1),)
    (failure,) = compare_patterns(fp, quant).failures(GATED)
    assert not failure.borderline
    assert failure == ("lost induction heads L0H0 0.9 [0.9, 0.9]→0.2 [0.2, 0.2]; borderline induction heads "
                       "L0H1 0.45 [0.2, 0.7]→0.05 [0.05, 0.05] (0/2 survive, 1 borderline; need 1; fixed rule: "
                       "detected > 0.4, survives > 0.4)")
