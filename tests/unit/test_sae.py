"""The SAE: deterministic training from an explicit seed, a working fit, and a save/load round
trip that refuses tampered weights."""

import json

import pytest
import torch

from qcheck.sae.model import SAE, SAEConfig, train_sae


def sparse_data(n: int = 600, d: int = 8, n_atoms: int = 16, seed: int = 0) -> torch.Tensor:
    """Activations that are sparse non-negative mixtures of a few directions, as an SAE assumes."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    codes = (torch.rand(n, n_atoms, generator=g) < 0.15) * torch.rand(n, n_atoms, generator=g) * 3
    return codes @ atoms


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    acts = sparse_data()
    before = torch.random.get_rng_state()
    a = train_sae(acts, seed=3, steps=60, batch_size=32)
    assert torch.equal(before, torch.random.get_rng_state())
    b = train_sae(acts, seed=3, steps=60, batch_size=32)
    c = train_sae(acts, seed=4, steps=60, batch_size=32)
    assert a.digest() == b.digest() and torch.equal(a.W_enc, b.W_enc)
    assert a.digest() != c.digest()
    assert a.cfg == SAEConfig(d_model=8, d_sae=32, seed=3, steps=60, batch_size=32, lr=1e-3, l1_coeff=1e-3)
    assert not a.training and not a.W_enc.requires_grad


def test_training_fits_the_data():
    acts = sparse_data()
    untrained = SAE(SAEConfig(d_model=8, d_sae=32, seed=0, steps=0, batch_size=1, lr=0.0, l1_coeff=0.0))
    sae = train_sae(acts, seed=0, steps=400, batch_size=64, lr=1e-2)
    assert untrained.fraction_of_variance_explained(acts) < 0.5
    assert sae.fraction_of_variance_explained(acts) > 0.9


def test_fraction_of_variance_explained_hand_values():
    acts = sparse_data(n=50)
    sae = SAE(SAEConfig(d_model=8, d_sae=8, seed=0, steps=0, batch_size=1, lr=0.0, l1_coeff=0.0))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(acts.mean(dim=0))  # predicts the mean: explains nothing
    assert sae.fraction_of_variance_explained(acts) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(8)); sae.W_dec.copy_(torch.eye(8)); sae.b_enc.fill_(100.0)
        sae.b_dec.fill_(-100.0)  # ReLU(x + 100) − 100 = x for |x| < 100: explains everything
    assert sae.fraction_of_variance_explained(acts) == pytest.approx(1.0, abs=1e-6)


def test_save_load_round_trip(tmp_path):
    acts = sparse_data()
    sae = train_sae(acts, seed=1, steps=20, batch_size=16)
    path = tmp_path / "sae" / "zoo-x.safetensors"
    sae.save(path, metadata={"hook": "blocks.1.hook_resid_post"})
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["config"]["d_sae"] == 32 and card["digest"] == sae.digest()
    assert card["metadata"] == {"hook": "blocks.1.hook_resid_post"}
    loaded = SAE.load(path)
    assert loaded.cfg == sae.cfg and loaded.digest() == sae.digest()
    assert torch.equal(loaded.encode(acts), sae.encode(acts))


def test_load_refuses_weights_that_do_not_match_the_digest(tmp_path):
    path = tmp_path / "sae.safetensors"
    train_sae(sparse_data(), seed=1, steps=5, batch_size=8).save(path)
    other = train_sae(sparse_data(), seed=2, steps=5, batch_size=8)
    card = path.with_suffix(".json").read_text()
    other.save(path)
    path.with_suffix(".json").write_text(card)
    with pytest.raises(ValueError, match="digest"):
        SAE.load(path)


def test_train_sae_rejects_bad_input():
    with pytest.raises(ValueError, match="n_tokens, d_model"):
        train_sae(torch.zeros(0, 4), seed=0)
