"""qcheck.metrics against hand-computed values, numpy references and the metrics' own laws."""

import math

import numpy as np
import pytest
import torch

from qcheck import metrics


def rows(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def softmax_rows(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.softmax(rows(seed, shape) * 3, dim=-1)


# cosine, L2, Pearson

def test_cosine_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [2.0, 4.0], [-1.0, -2.0], [1.0, 1.0]])
    assert metrics.cosine(a, b).tolist() == pytest.approx([1 / math.sqrt(2), 1.0, -1.0, 0.0])


def test_cosine_keeps_leading_dims_and_matches_numpy():
    a, b = rows(0, (2, 3, 5)), rows(1, (2, 3, 5))
    x, y = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    expected = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
    got = metrics.cosine(a, b)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_l2_and_relative_l2_hand_values():
    a, b = torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert metrics.l2(a, b).tolist() == pytest.approx([5.0, 0.0])
    assert metrics.relative_l2(a, b).tolist() == pytest.approx([1.0, 0.0])
    # relative to the first argument (FP): ‖(6,8) − (3,4)‖ / ‖(6,8)‖ = 5 / 10
    fp, quant = torch.tensor([6.0, 8.0]), torch.tensor([3.0, 4.0])
    assert float(metrics.relative_l2(fp, quant)) == pytest.approx(0.5)


def test_pearson_matches_numpy_and_is_affine_invariant():
    a, b = rows(2, (4, 7)), rows(3, (4, 7))
    expected = [np.corrcoef(x, y)[0, 1] for x, y in zip(a.double().numpy(), b.double().numpy())]
    np.testing.assert_allclose(metrics.pearson(a, b).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(metrics.pearson(a, 3 * b + 2).numpy(), expected, rtol=1e-6)
    assert metrics.pearson(a, -a).tolist() == pytest.approx([-1.0] * 4)


def test_pearson_of_a_constant_row_is_undefined():
    r = metrics.pearson(torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]] * 2))
    assert math.isnan(r[0]) and r[1] == pytest.approx(1.0)


# KL from logits

def test_kl_hand_value_in_nats():
    p_logits = torch.tensor([0.0, 0.0])                       # p = (1/2, 1/2)
    q_logits = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))  # q = (1/4, 3/4)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(metrics.kl_from_logits(p_logits, q_logits)) == pytest.approx(expected, rel=1e-9)


def test_kl_matches_numpy_is_nonnegative_and_zero_on_equal():
    p, q = rows(4, (6, 9)) * 2, rows(5, (6, 9)) * 2
    pp = np.exp(p.double().numpy()); pp /= pp.sum(-1, keepdims=True)
    qq = np.exp(q.double().numpy()); qq /= qq.sum(-1, keepdims=True)
    got = metrics.kl_from_logits(p, q)
    np.testing.assert_allclose(got.numpy(), (pp * np.log(pp / qq)).sum(-1), rtol=1e-6)
    assert (got > 0).all()
    assert metrics.kl_from_logits(p, p).abs().max() == 0
    assert metrics.kl_from_logits(p, p + 7.0).abs().max() < 1e-12  # logits are shift-invariant


def test_kl_handles_zero_probabilities_and_extreme_logits():
    p = torch.tensor([[0.0, -math.inf, 1.0], [1000.0, -1000.0, 0.0]])
    q = torch.tensor([[0.0, 0.0, 1.0], [-1000.0, 1000.0, 0.0]])
    got = metrics.kl_from_logits(p, q)
    assert torch.isfinite(got).all()
    assert float(got[1]) == pytest.approx(2000.0, rel=1e-9)  # p ≈ one-hot on 0, log q[0] ≈ −2000


def test_kl_chunking_does_not_change_values(monkeypatch):
    p, q = rows(6, (5, 4, 13)), rows(7, (5, 4, 13))
    whole = metrics.kl_from_logits(p, q)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 30)  # 2 rows per chunk
    chunked = metrics.kl_from_logits(p, q)
    assert chunked.shape == (5, 4) and torch.equal(whole, chunked)


# JSD

def numpy_jsd_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(p > 0, p * np.log2(p / m), 0.0).sum(-1)
        kq = np.where(q > 0, q * np.log2(q / m), 0.0).sum(-1)
    return (kp + kq) / 2


def test_jsd_hand_values_in_bits():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.25, 0.75]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.25, 0.75]])
    # disjoint = 1 bit; [1,0] vs [½,½]: m = [¾,¼],
    # JSD = ½·log2(4/3) + ½·(½·log2(2/3) + ½·log2(2)) ≈ 0.3113
    second = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert metrics.jsd(p, q).tolist() == pytest.approx([1.0, second, 0.0])


def test_jsd_laws_on_patterns_with_zeros():
    p, q = softmax_rows(8, (3, 8, 8)), softmax_rows(9, (3, 8, 8))
    causal = torch.tril(torch.ones(8, 8, dtype=torch.bool))
    p, q = p * causal / (p * causal).sum(-1, keepdim=True), q * causal / (q * causal).sum(-1, keepdim=True)
    got = metrics.jsd(p, q)
    expected = numpy_jsd_bits(p.double().numpy(), q.double().numpy())
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    assert torch.equal(got, metrics.jsd(q, p))
    assert metrics.jsd(p, p).abs().max() < 1e-12
    assert ((got >= 0) & (got <= 1)).all()
    assert torch.allclose(got[:, 0], torch.zeros(3, dtype=torch.float64))  # query 0 is one-hot in both


# top-k agreement

def test_topk_agreement_hand_values():
    p = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    q = torch.tensor([[0.0, 4.0, 3.0, 2.0, 1.0, 5.0]])
    assert metrics.topk_agreement(p, q, 1).tolist() == [0.0]
    assert metrics.topk_agreement(p, q, 2).tolist() == [0.5]   # {0, 1} vs {5, 1}
    assert metrics.topk_agreement(p, q, 5).tolist() == [0.8]   # 0 is missing from q's top 5
    assert metrics.topk_agreement(p, p, 3).tolist() == [1.0]


# bootstrap

def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = rows(10, (200,))
    a = metrics.bootstrap_ci(values, seed=1)
    assert a == metrics.bootstrap_ci(values, seed=1)
    assert a != metrics.bootstrap_ci(values, seed=2)
    assert a.estimate == pytest.approx(float(values.double().mean()))
    assert a.low < a.estimate < a.high
    # the standard error of a mean of 200 N(0, 1) draws is ~0.071: a 95% interval is ~0.28 wide
    assert 0.2 < a.high - a.low < 0.36


def test_bootstrap_of_constant_data_is_a_point_and_statistic_is_pluggable():
    ci = metrics.bootstrap_ci(np.full(10, 3.0), seed=0)
    assert (ci.low, ci.estimate, ci.high) == (3.0, 3.0, 3.0)
    med = metrics.bootstrap_ci(np.arange(11.0), seed=0, statistic=lambda x: np.median(x, axis=-1))
    assert med.estimate == 5.0
    with pytest.raises(ValueError):
        metrics.bootstrap_ci(np.array([]), seed=0)


# --- bootstrap over sampled units and the three-way side ---------------------------------------

def test_bootstrap_means_resample_whole_units_token_weighted():
    sums = np.array([[2.0], [9.0]])      # unit 0: 2 tokens summing to 2; unit 1: 3 tokens summing to 9
    counts = np.array([2.0, 3.0])
    boot = metrics.bootstrap_means(sums, counts, seed=0, n_resamples=200)
    index = metrics.resample_units(2, seed=0, n_resamples=200)
    expected = sums[index, 0].sum(axis=1) / counts[index].sum(axis=1)
    assert np.allclose(boot[:, 0], expected)
    # only the three values a resample of 2 units can take: 1 (0, 0), 11/5 (0, 1) and 3 (1, 1)
    assert set(np.round(boot[:, 0], 6)) <= {1.0, 2.2, 3.0}
    assert np.array_equal(boot, metrics.bootstrap_means(sums, counts, seed=0, n_resamples=200))


def test_identical_units_give_a_point_interval():
    boot = metrics.bootstrap_means(np.full((5, 3), 0.25), seed=1)
    interval = metrics.percentile_interval(boot[:, 0], 0.25)
    assert (interval.low, interval.high) == (0.25, 0.25)


@pytest.mark.parametrize("low, high, minimum, side", [
    (0.96, 0.97, True, "pass"), (0.93, 0.94, True, "fail"), (0.94, 0.96, True, "borderline"),
    (0.95, 0.96, True, "pass"),     # the cut itself passes a minimum (>=), as fails_min does
    (0.01, 0.04, False, "pass"), (0.06, 0.07, False, "fail"), (0.04, 0.06, False, "borderline"),
    (0.04, 0.05, False, "pass"),    # and a maximum (<=)
])
def test_an_interval_is_on_one_side_of_a_cut_or_straddles_it(low, high, minimum, side):
    cut = 0.95 if minimum else 0.05
    assert metrics.Interval((low + high) / 2, low, high, 0.95).side(cut, minimum=minimum) == side


def test_nan_anywhere_fails():
    assert metrics.Interval(math.nan, 0.9, 1.0, 0.95).side(0.5, minimum=True) == "fail"
