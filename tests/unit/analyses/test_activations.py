"""Activations on synthetic captures: values against numpy over real tokens only, identical up to
padding is perfect, a planted degradation names its layer, failures list the worst first."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from qcheck.analyses import activations

from .captures import (GATED, LENGTHS, N_LAYERS, assert_baseline_json, garbage_in_padding, gen, make_capture,
                       with_acts)


def test_activations_match_numpy_over_real_tokens():
    fp, quant = make_capture(0), make_capture(1)
    quant = replace(quant, tokens=fp.tokens, mask=fp.mask)
    result = activations.compare_activations(fp, quant)
    name = "blocks.1.hook_mlp_out"
    a, b = fp.acts[name].double().numpy(), quant.acts[name].double().numpy()
    cos, l2, rel, r = [], [], [], []
    for row, length in enumerate(LENGTHS):
        for p in range(length):
            x, y = a[row, p], b[row, p]
            cos.append(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
            l2.append(np.linalg.norm(x - y))
            rel.append(np.linalg.norm(x - y) / np.linalg.norm(x))
            r.append(np.corrcoef(x, y)[0, 1])
    got = result.values["hook_mlp_out"]
    assert got["cosine"][1] == pytest.approx(np.mean(cos))
    assert got["l2"][1] == pytest.approx(np.mean(l2))
    assert got["relative_l2"][1] == pytest.approx(np.mean(rel))
    assert got["pearson"][1] == pytest.approx(np.mean(r))
    assert result.n_tokens == sum(LENGTHS)


def test_activations_identical_up_to_padding_are_perfect():
    fp = make_capture()
    result = activations.compare_activations(fp, garbage_in_padding(fp))
    for hook in activations.HOOKS:
        assert result.values[hook]["cosine"] == pytest.approx((1.0,) * N_LAYERS)
        assert result.values[hook]["pearson"] == pytest.approx((1.0,) * N_LAYERS)
        assert result.values[hook]["l2"] == (0.0,) * N_LAYERS
    assert result.failures(GATED) == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert list(baseline["hook_resid_post"]) == ["L0", "L1"]
    assert baseline["summary"]["min_resid_cosine"] == pytest.approx(1.0)


def test_activations_planted_degradation_names_the_layer():
    fp = make_capture()
    resid = fp.acts["blocks.1.hook_resid_post"]
    noisy = resid + torch.randn(resid.shape, generator=gen(5)) * resid.norm(dim=-1, keepdim=True) / 3
    result = activations.compare_activations(fp, with_acts(fp, blocks__1__hook_resid_post=noisy))
    (message,) = result.failures(GATED)
    assert message.startswith("resid_post cosine below 0.95 at L1 (") and "L0" not in message
    assert result.min_resid_cosine == result.resid_cosine[1] < 0.95


def test_activation_failures_sort_worst_first_and_cap():
    cosines = (0.99, 0.5, 0.9, 0.3, 0.8, 0.7, 0.6, 0.94)
    values = {"hook_resid_post": {m: cosines for m in activations.METRICS}}
    (message,) = activations.ActivationResult(values=values, n_tokens=1).failures(GATED)
    assert message == ("resid_post cosine below 0.95 at L3 (0.3), L1 (0.5), L6 (0.6), L5 (0.7), "
                       "L4 (0.8) and 2 more")
