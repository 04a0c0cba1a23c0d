"""SAE features with a hand-made identity SAE: identical is perfect, a planted scramble is lost and
named, dead and killed features, repeated contexts counted once, a bad SAE is noted."""

import numpy as np
import pytest
import torch

from qcheck.analyses import features
from qcheck.sae.model import SAE, SAEConfig

from .captures import D_MODEL, DEFAULT, LENGTHS, N_LAYERS, assert_baseline_json, gen, make_capture


def identity_sae(d: int) -> SAE:
    """An SAE whose features are ReLU of the coordinates: its top positions are known by hand."""
    sae = SAE(SAEConfig(d_model=d, d_sae=d, seed=0, steps=0, batch_size=1, lr=0.0, l1_coeff=0.0))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d)); sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_(); sae.b_dec.zero_()
    return sae.eval()


def numpy_top(column: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-column, kind="stable")[:k].tolist())


def test_features_identical_are_perfect():
    acts = torch.rand(40, 4, generator=gen(0)) * torch.tensor([1.0, 4.0, 2.0, 3.0])
    result = features.compare_features(identity_sae(4), acts, acts.clone())
    assert result.features == (1, 3, 2, 0)  # by FP mean activation
    assert result.shared == (10, 10, 10, 10) and result.survival == 1.0
    assert result.pearson == pytest.approx((1.0,) * 4) and result.fve_fp == pytest.approx(1.0)
    assert result.failures(DEFAULT) == [] and result.notes() == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert list(baseline["features"]) == ["F1", "F3", "F2", "F0"]


def test_features_planted_scramble_is_lost_and_named():
    fp = torch.rand(40, 4, generator=gen(1)) * torch.tensor([1.0, 4.0, 2.0, 3.0])
    quant = fp.clone()
    quant[:, 2] = fp[:, 2].flip(0)  # feature 2 fires at mirrored positions
    result = features.compare_features(identity_sae(4), fp, quant)
    x, y = fp.numpy(), quant.numpy()
    expected_shared = len(numpy_top(x[:, 2], 10) & numpy_top(y[:, 2], 10))
    rank = result.features.index(2)
    assert result.shared[rank] == expected_shared < 8
    assert result.pearson[rank] == pytest.approx(np.corrcoef(x[:, 2], y[:, 2])[0, 1], abs=1e-6)
    assert result.survival == 0.75
    (message,) = result.failures(DEFAULT)
    assert message.startswith("SAE feature survival 0.75 < 0.8 (3/4 keep >= 8 of their top-10 "
                              "positions): lost F2 (")


def test_features_rank_alive_features_only_and_count_killed_as_uncorrelated():
    fp = torch.rand(30, 3, generator=gen(2))
    fp[:, 0] = -1.0  # feature 0 never fires under FP
    quant = fp.clone()
    quant[:, 1] = -1.0  # feature 1 is killed by quantization
    result = features.compare_features(identity_sae(3), fp, quant)
    assert set(result.features) == {1, 2} and result.n_alive == 2
    assert result.pearson[result.features.index(1)] == 0.0
    assert result.mean_pearson_alive == pytest.approx(0.5)


def test_features_count_repeated_contexts_once():
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    assert features.distinct_rows(rows).tolist() == [0, 1, 3]
    # 12 prompts share a BOS residual on which feature 0 fires hardest: counted once, its top 10
    # is BOS plus the 9 strongest distinct contexts, not 10 copies of BOS
    fp = torch.cat([torch.full((12, 2), 5.0), torch.rand(30, 2, generator=gen(4))])
    result = features.compare_features(identity_sae(2), fp, fp.clone())
    assert result.n_positions == 31 and result.survival == 1.0


def test_feature_acts_reads_the_middle_layer_on_real_tokens():
    fp = make_capture()
    got = features.feature_acts(fp)
    assert torch.equal(got, fp.acts[f"blocks.{N_LAYERS // 2}.hook_resid_post"][fp.mask])
    assert got.shape == (sum(LENGTHS), D_MODEL)


def test_bad_sae_is_noted():
    sae = identity_sae(4)
    with torch.no_grad():
        sae.W_dec.zero_()
    acts = torch.rand(20, 4, generator=gen(3))
    result = features.compare_features(sae, acts, acts.clone())
    (note,) = result.notes()
    assert note.startswith("the SAE explains only")
