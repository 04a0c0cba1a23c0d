"""Llama (grouped-query attention: 4 query heads on 2 key/value heads; RMSNorm, SwiGLU, rotary)
and Qwen2 (Llama's layout with q/k/v biases) through qcheck's whole path on tiny random-init
models (tests/helpers.py): quantize (RTN, GPTQ) -> TransformerBridge -> the captures of
qcheck/pair.py -> every registered analysis. The quantizer's own tests (test_apply.py,
test_checkpoint.py, ...) run on these families through the `tiny_model` fixture; this file checks
what the bridge and the analyses see.
"""

from __future__ import annotations

import json
import pytest
import torch

from qcheck.analyses import ANALYSES
from qcheck.analyses.base import PROMPT_SETS, Context
from qcheck.models.bridge import bridge_logit_error, wrap
from qcheck.models.load import LoadedModel
from qcheck.models.registry import ModelSpec
from qcheck.models.tokenizer import byte_tokenizer
from qcheck.pair import capture_prompt_set
from qcheck.quantize.apply import quantize_model
from qcheck.quantize.spec import parse_quant_spec
from qcheck.sae.basis import feature_hook, training_activations
from qcheck.sae.train import Recipe, train_topk
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md

from helpers import build_tiny

FAMILIES = ("llama", "qwen2")
QUANTS = ("rtn-w4", "gptq-w4")
TOKENS = torch.randint(1, 256, (4, 64), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=FAMILIES)
def fp(request) -> LoadedModel:
    """The tiny FP model as the session loads one (byte tokenizer, like the zoo's)."""
    return LoadedModel(spec=ModelSpec(f"tiny-{request.param}", "local", "(in memory)"),
                       hf=build_tiny(request.param), tokenizer=byte_tokenizer())


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    tokens = torch.randint(1, 256, (32, 32), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 0
    return tokens


@pytest.fixture(scope="module")
def quantized(fp, calibration) -> dict[str, torch.nn.Module]:
    return {quant: quantize_model(fp.hf, parse_quant_spec(quant), calibration)[0] for quant in QUANTS}


@pytest.fixture(scope="module")
def fp_bridge(fp):
    return wrap(fp.hf)


def test_tiny_models_have_the_architecture_they_claim(fp):
    config = fp.hf.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)   # grouped-query attention
    attn = fp.hf.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 64)                              # n_kv_heads x d_head rows
    has_bias = fp.spec.name == "tiny-qwen2"
    assert all((getattr(attn, p).bias is not None) == has_bias for p in ("q_proj", "k_proj", "v_proj"))
    assert attn.o_proj.bias is None


@pytest.mark.parametrize("quant", QUANTS)
def test_bridge_sees_the_quantized_weights(fp, quantized, fp_bridge, quant):
    """Bridge logits equal the HF module's, FP and quantized; and the quantized bridge differs from
    the FP one, so the quantized weights (not a stale copy) are what the analyses measure."""
    model = quantized[quant]
    bridge = wrap(model)
    assert bridge_logit_error(fp.hf, fp_bridge, TOKENS) < 1e-4
    assert bridge_logit_error(model, bridge, TOKENS) < 1e-4
    with torch.no_grad():
        assert (bridge(TOKENS) - fp_bridge(TOKENS)).abs().max() > 1e-3


def test_hook_pattern_is_per_query_head(fp, fp_bridge):
    """With GQA, query heads 2k and 2k+1 read key/value head k, yet `hook_pattern` holds one
    pattern per *query* head (n_heads), equal to HF's attention weights head by head; so per-head
    analyses (JSD, induction and previous-token scores) are per query head (docs/analyses.md)."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(2)]
    with torch.no_grad():
        _, cache = fp_bridge.run_with_cache(TOKENS, names_filter=names + ["blocks.1.hook_resid_post"])
        hf = fp.hf(TOKENS, output_attentions=True, output_hidden_states=True)
    assert fp_bridge.cfg.n_heads == 4
    for l, name in enumerate(names):
        assert cache[name].shape == (4, 4, 64, 64)
        assert torch.allclose(cache[name], hf.attentions[l], atol=1e-5), name
    # The query heads sharing a key/value head still attend differently (their queries differ),
    # so a pattern per kv head would have merged two distinct patterns.
    assert not torch.allclose(cache[names[0]][:, 0], cache[names[0]][:, 1], atol=1e-3)
    # hidden_states[-1] is after the final norm; compare the block output before it
    assert torch.allclose(fp.hf.model.norm(cache["blocks.1.hook_resid_post"]), hf.hidden_states[-1], atol=1e-5)


def test_logit_lens_of_the_last_layer_is_the_models_logits(fp, fp_bridge):
    """The lens applies the bridge's ln_final (here RMSNorm, no centring) and unembedding; at the
    last layer it must give the model's own logits, else every lens KL measures the lens."""
    lens = capture_prompt_set(fp_bridge, fp, "lens")  # keeps lens_logits only, not the final logits
    last = lens.mask.sum(dim=1) - 1
    with torch.no_grad():
        final = fp_bridge(lens.tokens).float()[torch.arange(len(last)), last]
    assert torch.allclose(lens.lens_logits[-1], final, atol=1e-4)
    assert not torch.allclose(lens.lens_logits[0], final, atol=1e-2)  # layer 0 is not the output


@pytest.fixture(scope="module")
def sae(fp, fp_bridge):
    """The basis by qcheck's recipe (qcheck/sae/train.py), trained on this random-init model."""
    acts = training_activations(fp.hf, fp_bridge, fp.n_ctx)
    return train_topk(acts, Recipe(), hook_name=feature_hook(fp_bridge.cfg.n_layers))[0]


def _results(fp_capture, quant_capture, sae) -> dict[str, object]:
    context = Context(Thresholds(), sae)
    return {name: analysis.compare(fp_capture(analysis.prompt_set), quant_capture(analysis.prompt_set), context)
            for name, analysis in ANALYSES.items()}


def _captures(bridge, fp):
    made = {prompt_set: capture_prompt_set(bridge, fp, prompt_set) for prompt_set in PROMPT_SETS}
    return made.__getitem__


@pytest.mark.parametrize("quant", QUANTS)
def test_every_analysis_runs_on_the_pair(fp, quantized, fp_bridge, sae, quant):
    fp_captures = _captures(fp_bridge, fp)
    results = _results(fp_captures, _captures(wrap(quantized[quant]), fp), sae)
    assert list(results) == list(ANALYSES)
    for name, result in results.items():
        baseline = result.as_baseline()
        text = json.dumps(baseline, allow_nan=False)   # finite numbers only (None where undefined)
        assert json.loads(text) == baseline, name
    # per-head results have one entry per query head of every layer
    heads = {f"L{l}H{h}" for l in range(2) for h in range(4)}
    assert set(results["attention"].as_baseline()["heads"]) == heads
    assert set(results["circuits"].as_baseline()["heads"]) == heads
    # 4 bits moves this random-init model's activations measurably: the comparison is not vacuous
    assert results["activations"].as_baseline() != _results(fp_captures, fp_captures, sae)["activations"].as_baseline()


def test_an_identical_twin_passes_every_analysis(fp, fp_bridge, sae):
    """FP against itself: every criterion holds, except that a random-init model has no
    induction head to certify and no sparse features: its residual stream is near Gaussian, so
    the SAE explains < 0.9 of it at L0 8 % of d_sae and the features verdict says its basis
    misses the targets (the zoo tier checks circuits and features on the trained zoo-llama-2l64)."""
    captures = _captures(fp_bridge, fp)
    results = _results(captures, captures, sae)
    failures = {name: [f.criterion for f in result.failures(Thresholds())] for name, result in results.items()}
    assert failures == {**{name: [] for name in ANALYSES}, "circuits": ["induction_heads_detected"],
                        "features": ["sae_basis_quality"]}


def test_two_bit_rtn_fails_the_activation_and_output_criteria(fp, fp_bridge, sae):
    """The other side: a 2-bit RTN twin fails (so the pass above can fail)."""
    twin = quantize_model(fp.hf, parse_quant_spec("rtn-w2"))[0]
    results = _results(_captures(fp_bridge, fp), _captures(wrap(twin), fp), sae)
    assert "min_resid_cosine" in [f.criterion for f in results["activations"].failures(Thresholds())]
    assert results["fidelity"].failures(Thresholds.suggested())     # output fidelity is gated only when set
