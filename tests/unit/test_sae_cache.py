"""A non-zoo model's SAE basis: trained on first use with progress, then read back from the cache
(keyed by the weight digest and the recipe), never retrained for the same weights and recipe."""

import pytest

from helpers import build_tiny
from qcheck.models.bridge import wrap
from qcheck.models.digest import model_digest
from qcheck.models.load import load_model
from qcheck.sae import basis
from qcheck.sae.train import Recipe


@pytest.fixture
def quick_recipe(monkeypatch):
    """The recipe's shape with fewer steps and samples: this tests the caching, not the SAE."""
    monkeypatch.setattr(basis, "RECIPE", Recipe(seed=0, steps=40, log_every=10))
    monkeypatch.setattr(basis, "SAE_SAMPLES", 16)


def test_a_hub_model_basis_is_trained_once_then_cached(quick_recipe, tmp_path):
    directory = tmp_path / "my-model"
    build_tiny("gpt2").save_pretrained(directory)
    model = load_model(str(directory))
    bridge, digest = wrap(model.hf), model_digest(model.hf)
    heard = []
    first = basis.sae_for(model, bridge, weight_digest=digest, cache_dir=tmp_path / "cache", progress=heard.append)
    assert first.origin.startswith("trained by qcheck's recipe in ")
    assert any(h.startswith("activations ") for h in heard) and any(h.startswith("training step ") for h in heard)
    assert first.cfg.hook_name == "blocks.1.hook_resid_post" and first.cfg.architecture == "topk"

    heard.clear()
    again = basis.sae_for(model, bridge, weight_digest=digest, cache_dir=tmp_path / "cache", progress=heard.append)
    assert heard == [] and again.origin.startswith("trained by qcheck's recipe, cached")
    assert again.digest() == first.digest()

    # other weights (as a digest) or another recipe: another key, so trained anew
    other = basis.sae_for(model, bridge, weight_digest="0" * 64, cache_dir=tmp_path / "cache", progress=heard.append)
    assert heard and other.origin.startswith("trained by qcheck's recipe in ")
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
