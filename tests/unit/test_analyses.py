"""The analyses on small synthetic captures: values against independent numpy computations,
identical FP/quantized gives perfect scores and no failures, padding never counts, and a planted
degradation fails with a message naming the planted layer / head / feature."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from qcheck.analyses import activations, attention, circuits, features, fidelity, logit_lens
from qcheck.analyses._common import listing
from qcheck.analyses.heads import induction_scores, previous_token_scores
from qcheck.sae.model import SAE, SAEConfig
from qcheck.capture import Capture
from qcheck.thresholds import Thresholds
from qcheck.data.induction import repeated_random_tokens

N_LAYERS, N_HEADS, D_MODEL, D_VOCAB = 2, 3, 8, 11
LENGTHS = (6, 4, 5)  # right-padded to POS
POS = max(LENGTHS)
DEFAULT = Thresholds()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[-1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)


def make_capture(seed: int = 0) -> Capture:
    g = gen(seed)
    batch = len(LENGTHS)
    mask = torch.arange(POS)[None, :] < torch.tensor(LENGTHS)[:, None]
    tokens = torch.randint(1, D_VOCAB, (batch, POS), generator=g).masked_fill(~mask, 0)
    acts = {}
    for l in range(N_LAYERS):
        for hook in ("hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            acts[f"blocks.{l}.{hook}"] = torch.randn(batch, POS, D_MODEL, generator=g)
        # random heads, steered away from p − 1 so that none is a previous-token head by chance
        scores = torch.randn(batch, N_HEADS, POS, POS, generator=g) * 2 - 4 * torch.eye(POS).roll(-1, 1)
        acts[f"blocks.{l}.attn.hook_pattern"] = causal_softmax(scores)
    return Capture(tokens=tokens, mask=mask, logits=torch.randn(batch, POS, D_VOCAB, generator=g) * 2,
                   acts=acts, lens_logits=torch.randn(N_LAYERS, batch, D_VOCAB, generator=g) * 2)


def with_acts(capture: Capture, **changes: torch.Tensor) -> Capture:
    return replace(capture, acts={**capture.acts, **{k.replace("__", "."): v for k, v in changes.items()}})


def garbage_in_padding(capture: Capture) -> Capture:
    """The same capture with nonsense at every padded position (what padding must not affect)."""
    g, pad = gen(99), ~capture.mask
    acts = {}
    for name, value in capture.acts.items():
        value = value.clone()
        noise = torch.rand(value.shape, generator=g) * 50
        if name.endswith("hook_pattern"):
            value[pad.unsqueeze(1).expand(-1, value.shape[1], -1)] = causal_softmax(noise)[
                pad.unsqueeze(1).expand(-1, value.shape[1], -1)]
        else:
            value[pad] = noise[pad]
        acts[name] = value
    logits = capture.logits.clone()
    logits[pad] = torch.randn(logits.shape, generator=g)[pad] * 50
    return replace(capture, acts=acts, logits=logits)


def assert_baseline_json(baseline: dict) -> None:
    text = json.dumps(baseline, allow_nan=False)
    assert json.loads(text) == baseline


# shared helpers

def test_listing_caps_with_and_n_more():
    assert listing(["a", "b"]) == "a, b"
    assert listing([str(i) for i in range(8)]) == "0, 1, 2, 3, 4 and 3 more"


def test_mismatched_inputs_are_refused():
    fp = make_capture()
    other = replace(fp, tokens=fp.tokens.roll(1, dims=1))
    with pytest.raises(ValueError, match="different tokens"):
        activations.compare_activations(fp, other)


# activations

def test_activations_match_numpy_over_real_tokens():
    fp, quant = make_capture(0), make_capture(1)
    quant = replace(quant, tokens=fp.tokens, mask=fp.mask)
    result = activations.compare_activations(fp, quant)
    name = "blocks.1.hook_mlp_out"
    a, b = fp.acts[name].double().numpy(), quant.acts[name].double().numpy()
    cos, l2, rel, r = [], [], [], []
    for row, length in enumerate(LENGTHS):
        for p in range(length):
            x, y = a[row, p], b[row, p]
            cos.append(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
            l2.append(np.linalg.norm(x - y))
            rel.append(np.linalg.norm(x - y) / np.linalg.norm(x))
            r.append(np.corrcoef(x, y)[0, 1])
    got = result.values["hook_mlp_out"]
    assert got["cosine"][1] == pytest.approx(np.mean(cos))
    assert got["l2"][1] == pytest.approx(np.mean(l2))
    assert got["relative_l2"][1] == pytest.approx(np.mean(rel))
    assert got["pearson"][1] == pytest.approx(np.mean(r))
    assert result.n_tokens == sum(LENGTHS)


def test_activations_identical_up_to_padding_are_perfect():
    fp = make_capture()
    result = activations.compare_activations(fp, garbage_in_padding(fp))
    for hook in activations.HOOKS:
        assert result.values[hook]["cosine"] == pytest.approx((1.0,) * N_LAYERS)
        assert result.values[hook]["pearson"] == pytest.approx((1.0,) * N_LAYERS)
        assert result.values[hook]["l2"] == (0.0,) * N_LAYERS
    assert result.failures(DEFAULT) == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert list(baseline["hook_resid_post"]) == ["L0", "L1"]
    assert baseline["summary"]["min_resid_cosine"] == pytest.approx(1.0)


def test_activations_planted_degradation_names_the_layer():
    fp = make_capture()
    resid = fp.acts["blocks.1.hook_resid_post"]
    noisy = resid + torch.randn(resid.shape, generator=gen(5)) * resid.norm(dim=-1, keepdim=True) / 3
    result = activations.compare_activations(fp, with_acts(fp, blocks__1__hook_resid_post=noisy))
    (message,) = result.failures(DEFAULT)
    assert message.startswith("resid_post cosine below 0.95 at L1 (") and "L0" not in message
    assert result.min_resid_cosine == result.resid_cosine[1] < 0.95


def test_activation_failures_sort_worst_first_and_cap():
    cosines = (0.99, 0.5, 0.9, 0.3, 0.8, 0.7, 0.6, 0.94)
    values = {"hook_resid_post": {m: cosines for m in activations.METRICS}}
    (message,) = activations.ActivationResult(values=values, n_tokens=1).failures(DEFAULT)
    assert message == ("resid_post cosine below 0.95 at L3 (0.3), L1 (0.5), L6 (0.6), L5 (0.7), "
                       "L4 (0.8) and 2 more")


# attention

def test_attention_jsd_matches_numpy_skipping_query_0_and_padding():
    fp = make_capture(0)
    quant = replace(make_capture(1), tokens=fp.tokens, mask=fp.mask)
    result = attention.compare_attention(fp, quant)
    name = "blocks.0.attn.hook_pattern"
    a, b = fp.acts[name].double().numpy(), quant.acts[name].double().numpy()
    for head in range(N_HEADS):
        per_query = []
        for row, length in enumerate(LENGTHS):
            for q in range(1, length):
                p, r = a[row, head, q], b[row, head, q]
                m = (p + r) / 2
                kl = lambda x: sum(x[k] * math.log2(x[k] / m[k]) for k in range(POS) if x[k] > 0)
                per_query.append((kl(p) + kl(r)) / 2)
        assert result.jsd[0][head] == pytest.approx(np.mean(per_query))
    assert result.n_queries == sum(LENGTHS) - len(LENGTHS)


def test_masked_previous_token_scores_equal_heads_when_unpadded_and_ignore_padding():
    fp = make_capture()
    pattern = fp.acts["blocks.1.attn.hook_pattern"]
    full = torch.ones(len(LENGTHS), POS, dtype=torch.bool)
    assert torch.allclose(attention.masked_previous_token_scores(pattern, full),
                          previous_token_scores(pattern).double())
    row = 1  # length 4: real queries 1..3
    expected = pattern[row, :, [1, 2, 3], [0, 1, 2]].double().mean(dim=-1)
    assert torch.allclose(attention.masked_previous_token_scores(pattern[row:row + 1], fp.mask[row:row + 1]),
                          expected)


def previous_token_pattern() -> torch.Tensor:
    """Every query attends to the token before it (query 0 to itself)."""
    pattern = torch.zeros(POS, POS)
    pattern[0, 0] = 1
    pattern[torch.arange(1, POS), torch.arange(POS - 1)] = 1
    return pattern


def test_attention_identical_up_to_padding_is_perfect():
    fp = make_capture()
    pattern = fp.acts["blocks.0.attn.hook_pattern"].clone()
    pattern[:, 1] = previous_token_pattern()
    fp = with_acts(fp, blocks__0__attn__hook_pattern=pattern)
    result = attention.compare_attention(fp, garbage_in_padding(fp))
    assert result.max_jsd == pytest.approx(0.0, abs=1e-12)
    assert result.prev_token_heads == [(0, 1)] and result.prev_token_survival == 1.0
    assert result.failures(DEFAULT) == [] and result.notes() == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert list(baseline["heads"])[:4] == ["L0H0", "L0H1", "L0H2", "L1H0"]
    assert baseline["heads"]["L0H1"]["prev_token_fp"] == pytest.approx(1.0)


def test_attention_planted_damage_names_the_heads():
    fp = make_capture()
    fp_pattern = fp.acts["blocks.0.attn.hook_pattern"].clone()
    fp_pattern[:, 1] = previous_token_pattern()
    fp = with_acts(fp, blocks__0__attn__hook_pattern=fp_pattern)
    # quantized: L0H1 attends to BOS instead of the previous token; L1H2 attends uniformly
    broken0 = fp_pattern.clone()
    broken0[:, 1] = 0
    broken0[:, 1, :, 0] = 1
    broken1 = fp.acts["blocks.1.attn.hook_pattern"].clone()
    broken1[:, 2] = causal_softmax(torch.zeros(POS, POS))
    quant = with_acts(fp, blocks__0__attn__hook_pattern=broken0, blocks__1__attn__hook_pattern=broken1)
    result = attention.compare_attention(fp, quant)
    jsd_message, prev_message = result.failures(DEFAULT)
    assert jsd_message.startswith("attention JSD above 0.05 bits at L0H1 (")
    assert "L1H2 (" in jsd_message and "L1H0" not in jsd_message
    # only query 1 still attends to p − 1 (= BOS): 3 of the 12 real queries >= 1
    assert prev_message.startswith("lost previous-token heads L0H1 1→0.25 (0/1 above 0.4 after")


def test_attention_without_previous_token_heads_notes_it_and_does_not_fail():
    fp = make_capture()
    result = attention.compare_attention(fp, fp)
    assert result.prev_token_heads == [] and result.prev_token_survival is None
    assert result.failures(DEFAULT) == []
    (note,) = result.notes()
    assert note.startswith("FP model has no previous-token heads")
    assert result.as_baseline()["summary"]["prev_token_survival"] is None


# features

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


# logit lens

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
    assert same.failures(DEFAULT) == []
    assert_baseline_json(same.as_baseline())
    assert list(same.as_baseline()["layers"]) == ["L0", "L1"]


def test_logit_lens_planted_layer_is_named():
    fp = make_capture()
    lens = fp.lens_logits.clone()
    lens[1] = -lens[1]  # layer 1's prediction inverted
    result = logit_lens.compare_logit_lens(fp, replace(fp, lens_logits=lens))
    kl_message, top5_message = result.failures(DEFAULT)
    assert kl_message.startswith("logit-lens KL(FP‖quant) above 0.1 nats at L1 (")
    assert "L0" not in kl_message
    assert top5_message.startswith("logit-lens top-5 agreement below 0.8 at L1 (")


def test_logit_lens_needs_lens_logits():
    fp = replace(make_capture(), lens_logits=None)
    with pytest.raises(ValueError, match="lens_logits"):
        logit_lens.compare_logit_lens(fp, fp)


# circuits

HALF = 5
TOKENS = repeated_random_tokens(n_sequences=4, half=HALF, low=1, high=D_VOCAB, bos=0, seed=0)


def induction_patterns(scores: list[list[float]]) -> list[torch.Tensor]:
    """Per layer (batch, head_index, query_pos, key_pos) patterns whose induction score per head is
    exactly `scores[layer][head]`: second-half queries put that much on the induction key, the
    rest on BOS."""
    n_pos = 1 + 2 * HALF
    layers = []
    for layer_scores in scores:
        pattern = torch.zeros(len(TOKENS), len(layer_scores), n_pos, n_pos)
        pattern[..., 0] = 1.0
        for head, s in enumerate(layer_scores):
            for q in range(1 + HALF, n_pos):
                pattern[:, head, q, 0] = 1 - s
                pattern[:, head, q, q - HALF + 1] = s
        layers.append(pattern)
    return layers


def uniform_logits() -> torch.Tensor:
    return torch.zeros(len(TOKENS), TOKENS.shape[1], D_VOCAB)


def test_induction_patterns_helper_gives_the_planted_scores():
    (pattern,) = induction_patterns([[0.9, 0.25]])
    assert induction_scores(pattern, HALF).tolist() == pytest.approx([0.9, 0.25])


def test_repeated_half_loss_covers_exactly_the_inducible_tokens():
    confident = uniform_logits()
    for p in range(HALF + 1, 2 * HALF):  # logits at p predict the token at p + 1
        confident[torch.arange(len(TOKENS)), p, TOKENS[:, p + 1]] = 100.0
    assert circuits.repeated_half_loss(confident, TOKENS, HALF).tolist() == pytest.approx([0.0] * 4, abs=1e-9)
    # forget one inducible position: exactly one of the HALF − 1 targets costs ln(V)
    missing = confident.clone()
    missing[:, 2 * HALF - 1] = 0.0
    expected = math.log(D_VOCAB) / (HALF - 1)
    assert circuits.repeated_half_loss(missing, TOKENS, HALF).tolist() == pytest.approx([expected] * 4)
    # confidence anywhere else (e.g. the non-inducible first repeated token) does not count
    elsewhere = uniform_logits()
    elsewhere[torch.arange(len(TOKENS)), HALF, TOKENS[:, HALF + 1]] = 100.0
    uniform = [math.log(D_VOCAB)] * 4
    assert circuits.repeated_half_loss(elsewhere, TOKENS, HALF).tolist() == pytest.approx(uniform)


def compare(fp_scores, quant_scores, rule="fixed", fp_logits=None, quant_logits=None):
    return circuits.compare_induction(induction_patterns(fp_scores), induction_patterns(quant_scores),
                                      uniform_logits() if fp_logits is None else fp_logits,
                                      uniform_logits() if quant_logits is None else quant_logits,
                                      TOKENS, HALF, rule=rule)


def test_induction_identical_is_perfect():
    scores = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.6]]
    result = compare(scores, scores)
    assert result.fixed.detected == ((0, 0), (1, 0), (1, 2)) and result.fixed.survival == 1.0
    assert result.correlation == pytest.approx(1.0) and result.icl_loss_increase == 0.0
    assert result.failures(DEFAULT) == []
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert baseline["fixed"]["detected"] == ["L0H0", "L1H0", "L1H2"]
    assert baseline["heads"]["L1H2"] == {"fp": pytest.approx(0.6), "quant": pytest.approx(0.6)}


def test_induction_fixed_rule_names_lost_heads_worst_first():
    fp = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.62]]
    quant = [[0.85, 0.1, 0.05], [0.31, 0.2, 0.08]]
    result = compare(fp, quant)
    assert result.fixed.survived == ((0, 0),) and result.survival == pytest.approx(1 / 3)
    (message,) = result.failures(DEFAULT)
    assert message == ("lost induction heads L1H2 0.62→0.08, L1H0 0.5→0.31 (1/3 survive; fixed rule: "
                       "detected > 0.4, survives > 0.4)")
    assert result.correlation == pytest.approx(np.corrcoef(np.ravel(fp), np.ravel(quant))[0, 1])


def test_induction_relative_rule_is_the_studys_code():
    fp = [[0.9, 0.1, 0.05, 0.02], [0.3, 0.2, 0.15, 0.01]]
    quant = [[0.39, 0.1, 0.05, 0.02], [0.3, 0.2, 0.15, 0.01]]
    # population std (numpy's default): t = 0.7646, t / 2 = 0.3823 < 0.39 (sample std: 0.4012 > 0.39)
    threshold = np.mean(fp) + 2 * np.std(fp)
    result = compare(fp, quant, rule="relative")
    assert result.relative.detect_threshold == pytest.approx(threshold)
    assert result.relative.survive_threshold == pytest.approx(threshold / 2)
    assert result.relative.detected == result.relative.survived == ((0, 0),)
    assert result.fixed.detected == ((0, 0),) and result.fixed.survived == ()  # 0.39 < 0.4
    assert result.failures(DEFAULT.updated({'induction_rule': "relative"})) == []
    with pytest.raises(ValueError, match="rule='relative'"):
        result.failures(DEFAULT)
    (message,) = compare(fp, quant, rule="fixed").failures(DEFAULT)
    assert message.startswith("lost induction heads L0H0 0.9→0.39 (0/1 survive")


def test_induction_without_fp_heads_fails_with_its_own_message():
    scores = [[0.1, 0.2, 0.05], [0.3, 0.2, 0.1]]
    (message,) = compare(scores, scores).failures(DEFAULT)
    assert message == ("FP model has no induction heads under the fixed rule (score > 0.4; best L1H0 0.3); "
                       "nothing to certify")
    assert compare(scores, scores).survival is None


def test_induction_loss_increase_fails_even_when_heads_survive():
    scores = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.6]]
    good = uniform_logits()
    for p in range(HALF + 1, 2 * HALF):
        good[torch.arange(len(TOKENS)), p, TOKENS[:, p + 1]] = 100.0
    result = compare(scores, scores, fp_logits=good, quant_logits=uniform_logits())
    assert result.icl_loss_fp == pytest.approx(0.0, abs=1e-9)
    assert result.icl_loss_quant == pytest.approx(math.log(D_VOCAB))
    (message,) = result.failures(DEFAULT)
    assert message == "in-context loss on the repeated half rose 0→2.398 nats/token (+2.398 > 0.25)"


def test_induction_captures_wrapper_reads_patterns_and_logits():
    scores = [[0.9, 0.1, 0.05], [0.5, 0.2, 0.6]]
    patterns = induction_patterns(scores)
    acts = {f"blocks.{l}.attn.hook_pattern": p for l, p in enumerate(patterns)}  # patterns only
    cap = Capture(tokens=TOKENS, mask=torch.ones_like(TOKENS, dtype=torch.bool), logits=uniform_logits(),
                  acts=acts)
    result = circuits.compare_induction_captures(cap, cap, HALF, rule="fixed")
    assert np.allclose(result.scores_fp, scores) and result.fixed.survival == 1.0


# fidelity

def test_fidelity_matches_numpy_and_ignores_padding():
    fp = make_capture(0)
    quant = replace(fp, logits=make_capture(1).logits)
    result = fidelity.compare_outputs(fp, quant, seed=0)
    ce_fp, ce_q, kl = [], [], []
    for row, length in enumerate(LENGTHS):
        for p in range(length):
            lp = torch.log_softmax(fp.logits[row, p].double(), -1).numpy()
            lq = torch.log_softmax(quant.logits[row, p].double(), -1).numpy()
            kl.append((np.exp(lp) * (lp - lq)).sum())
            if p + 1 < length:  # the last real token predicts nothing
                ce_fp.append(-lp[fp.tokens[row, p + 1]])
                ce_q.append(-lq[fp.tokens[row, p + 1]])
    assert result.n_positions == sum(LENGTHS) and result.n_targets == sum(LENGTHS) - len(LENGTHS)
    assert result.kl == pytest.approx(np.mean(kl))
    assert result.loss_fp == pytest.approx(np.mean(ce_fp), rel=1e-6)
    assert result.loss_quant == pytest.approx(np.mean(ce_q), rel=1e-6)
    assert result.perplexity_fp == pytest.approx(math.exp(np.mean(ce_fp)), rel=1e-6)
    assert result.loss_increase_ci.low <= result.loss_increase <= result.loss_increase_ci.high


def test_fidelity_identical_up_to_padding_is_perfect():
    fp = make_capture()
    result = fidelity.compare_outputs(fp, garbage_in_padding(fp))
    assert result.kl == 0.0 and result.top1 == 1.0 and result.loss_increase == 0.0
    assert result.failures(DEFAULT) == []
    assert_baseline_json(result.as_baseline())


def test_fidelity_planted_degradation_fails_every_claim():
    fp = make_capture()
    result = fidelity.compare_outputs(fp, replace(fp, logits=-fp.logits))
    kl_message, top1_message, loss_message = result.failures(DEFAULT)
    assert kl_message.startswith("final next-token KL(FP‖quant)")
    assert top1_message.startswith("top-1 agreement 0 < 0.9")
    assert loss_message.startswith("next-token loss rose") and "95% CI" in loss_message
