"""The embedded zoo: every model loads by name, its card's heads are really there (recomputed
through TransformerBridge, not read back), and the bridge reproduces the HF logits."""

from pathlib import Path

import pytest
import torch

from qcheck.analyses.heads import induction_scores, previous_token_scores
from qcheck.data.induction import repeated_random_tokens
from qcheck.models.bridge import bridge_logit_error
from qcheck.models.registry import zoo_names
from qcheck.models.zoo.card import read_card

pytestmark = pytest.mark.zoo
ZOO = zoo_names()
HEAD_THRESHOLD = 0.4


def test_zoo_spans_both_families_and_sizes():
    cards = [read_card(name) for name in ZOO]
    params = {family: sorted(c["parameters"] for c in cards if c["architecture"] == arch)
              for family, arch in [("gpt2", "GPT2LMHeadModel"), ("pythia", "GPTNeoXForCausalLM")]}
    assert len(params["pythia"]) >= 3 and params["pythia"][-1] >= 8 * params["pythia"][0], params
    assert len(params["gpt2"]) >= 2 and params["gpt2"][-1] >= 4 * params["gpt2"][0], params


def test_zoo_has_a_grouped_query_llama():
    """A modern decoder (RMSNorm, SwiGLU, rotary) whose query heads share key/value heads."""
    import json

    from qcheck.models.registry import ZOO_DIR

    configs = [json.loads((ZOO_DIR / name / "config.json").read_text()) for name in ZOO
               if read_card(name)["architecture"] == "LlamaForCausalLM"]
    assert any(c["num_key_value_heads"] < c["num_attention_heads"] and c["hidden_act"] == "silu"
               for c in configs), configs


@pytest.mark.parametrize("fp_model", ZOO, indirect=True)
def test_zoo_model_loads_as_float32_eval(fp_model):
    assert fp_model.spec.kind == "zoo"
    assert not fp_model.hf.training
    assert {p.dtype for p in fp_model.hf.parameters()} == {torch.float32}
    assert fp_model.n_params == read_card(fp_model.spec.name)["parameters"]


@pytest.mark.parametrize("fp_model", ZOO, indirect=True)
def test_bridge_logits_equal_hf_logits(fp_model, fp_bridge):
    tokens = torch.randint(1, 256, (4, fp_model.n_ctx), generator=torch.Generator().manual_seed(0))
    assert bridge_logit_error(fp_model.hf, fp_bridge, tokens) < 1e-4


@pytest.mark.parametrize("fp_model", ZOO, indirect=True)
def test_card_heads_are_really_there(fp_model, fp_bridge):
    low, high = fp_model.tokenizer.random_range
    tokens = repeated_random_tokens(low=low, high=high, bos=fp_model.tokenizer.bos, seed=42)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(fp_bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = fp_bridge.run_with_cache(tokens, names_filter=names)
    induction = torch.stack([induction_scores(cache[n], half=25) for n in names])  # (layer, head)
    previous = torch.stack([previous_token_scores(cache[n]) for n in names])

    def above(scores):
        return {f"L{l}H{h}" for l, h in (scores > HEAD_THRESHOLD).nonzero().tolist()}

    card = read_card(fp_model.spec.name)
    assert len(above(induction)) >= 2, f"induction scores {induction.tolist()}"
    assert len(above(previous)) >= 1, f"previous-token scores {previous.tolist()}"
    assert above(induction) == set(card["induction_heads"])
    assert above(previous) == set(card["previous_token_heads"])
    recorded = torch.tensor(card["scores"]["induction"])
    assert torch.allclose(induction, recorded, atol=2e-3), (induction, recorded)


@pytest.mark.parametrize("fp_model", ZOO, indirect=True)
def test_shipped_sae_basis_is_pinned_to_these_weights(fp_model, qcheck_session):
    from qcheck.sae.basis import SAE_FILE, sae_metadata

    shipped = Path(fp_model.spec.location) / SAE_FILE
    assert sae_metadata(shipped)["weight_digest"] == qcheck_session.weight_digest(fp_model.spec.name)
    sae = qcheck_session.sae(fp_model.spec.name)  # loads the shipped file, checks its digest
    assert sae.cfg.d_model == fp_model.hf.config.hidden_size
