"""Output fidelity on synthetic captures: KL, loss and perplexity against numpy with padding ignored,
identical up to padding is perfect, a planted degradation fails every claim."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from qcheck.analyses import fidelity

from .captures import GATED, LENGTHS, assert_baseline_json, garbage_in_padding, make_capture


def test_fidelity_matches_numpy_and_ignores_padding():
    fp = make_capture(0)
    quant = replace(fp, logits=make_capture(1).logits)
    result = fidelity.compare_outputs(fp, quant, seed=0)
    ce_fp, ce_q, kl = [], [], []
    for row, length in enumerate(LENGTHS):
        for p in range(length):
            lp = torch.log_softmax(fp.logits[row, p].double(), -1).numpy()
            lq = torch.log_softmax(quant.logits[row, p].double(), -1).numpy()
            kl.append((np.exp(lp) * (lp - lq)).sum())
            if p + 1 < length:  # the last real token predicts nothing
                ce_fp.append(-lp[fp.tokens[row, p + 1]])
                ce_q.append(-lq[fp.tokens[row, p + 1]])
    assert result.n_positions == sum(LENGTHS) and result.n_targets == sum(LENGTHS) - len(LENGTHS)
    assert result.kl == pytest.approx(np.mean(kl))
    assert result.loss_fp == pytest.approx(np.mean(ce_fp), rel=1e-6)
    assert result.loss_quant == pytest.approx(np.mean(ce_q), rel=1e-6)
    assert result.perplexity_fp == pytest.approx(math.exp(np.mean(ce_fp)), rel=1e-6)
    assert result.loss_increase_ci.low <= result.loss_increase <= result.loss_increase_ci.high


def test_fidelity_identical_up_to_padding_is_perfect():
    fp = make_capture()
    result = fidelity.compare_outputs(fp, garbage_in_padding(fp))
    assert result.kl == 0.0 and result.top1 == 1.0 and result.loss_increase == 0.0
    assert result.failures(GATED) == []
    assert_baseline_json(result.as_baseline())


def test_fidelity_planted_degradation_fails_every_claim():
    fp = make_capture()
    result = fidelity.compare_outputs(fp, replace(fp, logits=-fp.logits))
    kl_message, top1_message, loss_message = result.failures(GATED)
    assert kl_message.startswith("final next-token KL(FP‖quant)")
    assert top1_message.startswith("top-1 agreement 0 [0, 0] < 0.9")
    # negated logits raise some prompts' loss and lower others': over this capture's few prompts the
    # interval of the rise straddles the threshold, so that criterion is borderline, not failed
    assert loss_message.startswith("borderline: next-token loss rose") and " vs max 0.05" in loss_message
    assert loss_message.borderline and not kl_message.borderline and not top1_message.borderline
