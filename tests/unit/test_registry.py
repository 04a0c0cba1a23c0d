"""Model names -> models: zoo, local directories, hub ids. Bad names, broken directories and
pickles: the robustness catalogue (tests/robustness/test_catalogue.py)."""

import pytest
import torch

from qcheck.models import registry
from qcheck.models.load import load_model


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


def test_local_save_pretrained_directory_loads(tmp_path):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.spec.kind == "local"
    assert not loaded.hf.training
    tokens = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        assert torch.allclose(loaded.hf(tokens).logits, model(tokens).logits, atol=1e-5)
    assert loaded.tokenizer.encode("A")[1:] == [65]  # vocab 256 and no tokenizer files: bytes


def test_registry_refuses_duplicates():
    existing = registry.resolve(registry.zoo_names()[0]) if registry.zoo_names() else None
    spec = existing or registry.ModelSpec("gpt2", "hub", "gpt2")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(spec)
