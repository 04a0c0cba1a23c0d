"""The logit lens on synthetic captures: KL and top-5 against numpy, identical is perfect, a planted
layer is named, lens logits are required."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from qcheck.analyses import logit_lens

from .captures import GATED, LENGTHS, N_LAYERS, assert_baseline_json, make_capture


def test_logit_lens_matches_numpy_and_identical_is_perfect():
    fp = make_capture(0)
    quant = replace(fp, lens_logits=make_capture(1).lens_logits)
    result = logit_lens.compare_logit_lens(fp, quant)
    p = torch.softmax(fp.lens_logits.double(), -1).numpy()
    q = torch.softmax(quant.lens_logits.double(), -1).numpy()
    np.testing.assert_allclose(result.kl, (p * np.log(p / q)).sum(-1).mean(-1), rtol=1e-9)
    top5 = [[len(set(np.argsort(-p[l, b])[:5]) & set(np.argsort(-q[l, b])[:5])) / 5
             for b in range(len(LENGTHS))] for l in range(N_LAYERS)]
    assert result.top5 == pytest.approx(tuple(np.mean(top5, axis=1)))
    same = logit_lens.compare_logit_lens(fp, fp)
    assert same.kl == (0.0,) * N_LAYERS and same.top1 == (1.0,) * N_LAYERS and same.top5 == (1.0,) * N_LAYERS
    assert same.failures(GATED) == []
    assert_baseline_json(same.as_baseline())
    assert list(same.as_baseline()["layers"]) == ["L0", "L1"]


def test_logit_lens_planted_layer_is_named():
    fp = make_capture()
    lens = fp.lens_logits.clone()
    lens[1] = -lens[1]  # layer 1's prediction inverted
    result = logit_lens.compare_logit_lens(fp, replace(fp, lens_logits=lens))
    kl_message, top5_message = result.failures(GATED)
    assert kl_message.startswith("logit-lens KL(FP‖quant) above 0.1 nats at L1 (")
    assert "L0" not in kl_message
    assert top5_message.startswith("logit-lens top-5 agreement below 0.8 at L1 (")


def test_logit_lens_needs_lens_logits():
    fp = replace(make_capture(), lens_logits=None)
    with pytest.raises(ValueError, match="lens_logits"):
        logit_lens.compare_logit_lens(fp, fp)
