"""Model names -> models: zoo, local directories, hub ids, and the errors for each."""

import pytest
import torch

from qcheck.models import registry
from qcheck.models.load import load_model
from qcheck.models.registry import ModelNotAvailable, resolve


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setattr(registry, "_hub_offline", lambda: True)
    monkeypatch.setattr(registry, "_hub_has_local_copy", lambda repo_id: False)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(ModelNotAvailable, match=r"unknown zoo model 'zoo-nope'.*zoo-"):
        resolve("zoo-nope")


def test_nonsense_name_says_how_to_provide_a_model():
    with pytest.raises(ModelNotAvailable, match=r"'not a model!' is neither.*save_pretrained"):
        resolve("not a model!")


def test_missing_local_path_is_not_taken_for_a_hub_id():
    with pytest.raises(ModelNotAvailable, match="neither a zoo name, an existing directory"):
        resolve("./no/such/dir")


@pytest.mark.parametrize("name", registry.STUDY_MODELS)
def test_study_models_offline_without_weights_fail_at_once(name, offline_hub):
    with pytest.raises(ModelNotAvailable, match=rf"'{name}' has no local weights.*HF_HUB_OFFLINE=1"):
        resolve(name)


def test_any_hub_id_offline_fails_with_the_same_advice(offline_hub):
    with pytest.raises(ModelNotAvailable, match=r"'EleutherAI/pythia-70m' has no local weights.*zoo-"):
        resolve("EleutherAI/pythia-70m")


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


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailable, match="has no config.json"):
        resolve(str(tmp_path))


def test_pickled_weights_are_refused_not_unpickled(tmp_path):
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailable, match=r"pickled .bin weights are refused"):
        load_model(str(tmp_path))


def test_registry_refuses_duplicates():
    existing = registry.resolve(registry.zoo_names()[0]) if registry.zoo_names() else None
    spec = existing or registry.ModelSpec("gpt2", "hub", "gpt2")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(spec)
