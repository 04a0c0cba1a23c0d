"""The SAE: each architecture's encoding by hand, deterministic TopK training from an explicit
seed that meets the basis targets on sparse data, quality measures, and refusals of tensors that
do not fit the config."""

import pytest
import torch

from qcheck.sae.model import SAE, SAEConfig
from qcheck.sae.train import MAX_DEAD_FRACTION, MIN_FVE, BasisQuality, Recipe, basis_quality, k_for, train_topk


def sparse_data(n: int = 2000, d: int = 16, n_atoms: int = 64, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Activations that are sums of `active` of `n_atoms` directions with positive weights, plus
    an offset: the data a TopK SAE assumes."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    codes = torch.zeros(n, n_atoms)
    picks = torch.stack([torch.randperm(n_atoms, generator=g)[:active] for _ in range(n)])
    codes.scatter_(1, picks, torch.rand(n, active, generator=g) * 2 + 0.5)
    return codes @ atoms + 3.0


def hand_sae(architecture: str, **cfg) -> SAE:
    d = 4
    sae = SAE(SAEConfig(d_in=d, d_sae=d, architecture=architecture, **cfg))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d)); sae.W_dec.copy_(torch.eye(d))
        sae.b_dec.fill_(1.0); sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0, 0.0]))
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.tensor([0.5, 0.0, 2.0, 0.0]))
    return sae.eval()


def test_each_architecture_encodes_as_written():
    x = torch.tensor([[2.0, 3.0, 0.0, 4.0]])
    # apply_b_dec_to_input: pre = (x − 1) + b_enc = [1, 1.5, −1, 3]
    assert hand_sae("standard").encode(x).tolist() == [[1.0, 1.5, 0.0, 3.0]]
    assert hand_sae("topk", k=2).encode(x).tolist() == [[0.0, 1.5, 0.0, 3.0]]
    # jumprelu keeps pre where pre > threshold: 1 > 0.5, 1.5 > 0, −1 ≤ 2, 3 > 0
    assert hand_sae("jumprelu").encode(x).tolist() == [[1.0, 1.5, 0.0, 3.0]]
    assert hand_sae("standard", apply_b_dec_to_input=False).encode(x).tolist() == [[2.0, 2.5, 0.0, 4.0]]
    # topk never activates a negative pre-activation, even among the k largest
    assert hand_sae("topk", k=4).encode(torch.tensor([[0.0, 0.0, -5.0, 0.0]])).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_constant_norm_rescale_scales_the_input_to_norm_sqrt_d_and_back():
    sae = hand_sae("standard", normalize_activations="constant_norm_rescale", apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.b_enc.fill_(10.0); sae.b_dec.fill_(-10.0)     # x̂ = ReLU(x' + 10) − 10 = x' for |x'| < 10
    x = torch.tensor([[30.0, 40.0, 0.0, 0.0]])           # norm 50 → x' = x · 2 / 50
    assert torch.allclose(sae.encode(x), torch.tensor([[11.2, 11.6, 10.0, 10.0]]))
    assert torch.allclose(sae(x), x, atol=1e-4)


def test_config_refusals_name_the_field():
    with pytest.raises(ValueError, match="architecture 'gated'"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(ValueError, match="k must be set"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")
    with pytest.raises(ValueError, match="k 9 must be in 1..d_sae"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk", k=9)
    with pytest.raises(ValueError, match="normalize_activations 'layer_norm'"):
        SAEConfig(d_in=4, d_sae=8, architecture="standard", normalize_activations="layer_norm")


def test_from_tensors_refuses_missing_misshapen_and_nan_tensors():
    cfg = SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2)
    good = SAE(cfg).tensors()
    with pytest.raises(ValueError, match=r"missing \['b_dec'\]"):
        SAE.from_tensors(cfg, {k: v for k, v in good.items() if k != "b_dec"}, source="x")
    with pytest.raises(ValueError, match=r"W_enc has shape \(8, 4\), expected \(4, 8\)"):
        SAE.from_tensors(cfg, {**good, "W_enc": good["W_enc"].T}, source="x")
    with pytest.raises(ValueError, match="b_enc holds NaN"):
        SAE.from_tensors(cfg, {**good, "b_enc": torch.full((8,), float("nan"))}, source="x")
    with pytest.raises(ValueError, match=r"unexpected \['threshold'\]"):
        SAE.from_tensors(cfg, {**good, "threshold": torch.zeros(8)}, source="x")


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    acts = sparse_data(n=500)
    recipe = Recipe(steps=60, batch_size=32)
    before = torch.random.get_rng_state()
    a, curve = train_topk(acts, recipe)
    assert torch.equal(before, torch.random.get_rng_state())
    b, _ = train_topk(acts, recipe)
    c, _ = train_topk(acts, Recipe(steps=60, batch_size=32, seed=1))
    assert a.digest() == b.digest() and torch.equal(a.W_enc, b.W_enc)
    assert a.digest() != c.digest()
    assert a.cfg == SAEConfig(d_in=16, d_sae=64, architecture="topk", k=k_for(64))
    assert not a.training and not a.W_enc.requires_grad
    assert [p.step for p in curve] == [0, 59]


def test_training_meets_the_basis_targets_on_sparse_data():
    acts = sparse_data()
    sae, curve = train_topk(acts, Recipe(steps=1500))
    quality = basis_quality(sae, acts)
    assert quality.l0 <= sae.cfg.k and quality.misses() == [], quality
    assert quality.fve >= MIN_FVE and quality.dead_fraction <= MAX_DEAD_FRACTION
    assert curve[-1].nmse < curve[0].nmse / 10
    # decoder rows stay unit norm (the constraint the trainer keeps after every step)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae), atol=1e-5)


def test_the_activation_scale_is_folded_back():
    """Trained on x or on 100·x: the same features, activations 100× (stream units)."""
    acts = sparse_data(n=500)
    a, _ = train_topk(acts, Recipe(steps=50, batch_size=32))
    b, _ = train_topk(acts * 100, Recipe(steps=50, batch_size=32))
    assert torch.allclose(b.encode(acts * 100), 100 * a.encode(acts), rtol=1e-3, atol=1e-3)


def test_basis_quality_hand_values_and_misses():
    sae = hand_sae("standard")
    x = torch.tensor([[2.0, 3.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]])  # second row: pre [0, −0.5, 0, 0]
    q = basis_quality(sae, x)
    assert q.l0 == 1.5 and q.dead_fraction == 0.25 and q.d_sae == 4 and q.n_rows == 2
    assert BasisQuality(l0=40, fve=0.5, dead_fraction=0.2, d_sae=1000, n_rows=1).misses() == [
        "L0 40.0 > 32 (min of 10% of d_sae 1000 and 32)", "fraction of variance explained 0.500 < 0.9",
        "dead features 20.0% > 10%"]
    assert BasisQuality(l0=40, fve=0.95, dead_fraction=0.2, d_sae=100, n_rows=1).misses(dead=False) == [
        "L0 40.0 > 10 (min of 10% of d_sae 100 and 32)"]


def test_train_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="n_tokens, d_in"):
        train_topk(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="constant"):
        train_topk(torch.ones(10, 4))
