"""SAE features with a hand-made identity SAE, whose features are ReLU of the coordinates: both
survival rules by hand (positions with their rank slack, the study's token ids), dense features
left out, recall, repeated contexts counted once, the basis-quality precondition, the hook."""

import numpy as np
import pytest
import torch

from qcheck.analyses import features
from qcheck.sae.model import SAE, SAEConfig
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md

from .captures import D_MODEL, GATED, LENGTHS, N_LAYERS, assert_baseline_json, gen, make_capture


def identity_sae(d: int, hook: str = "blocks.1.hook_resid_post") -> SAE:
    sae = SAE(SAEConfig(d_in=d, d_sae=d, architecture="standard", apply_b_dec_to_input=False, hook_name=hook))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d)); sae.W_dec.copy_(torch.eye(d))
    return sae.eval()


def tagged(acts: torch.Tensor) -> torch.Tensor:
    """`acts` plus a last coordinate −1e-6·(1, 2, ...) that no feature reads as active (ReLU of it is
    0) and too small to move the variance explained: rows that are all zero would otherwise be one
    repeated context and be counted once."""
    return torch.cat([acts, -1e-6 * (1.0 + torch.arange(len(acts), dtype=acts.dtype))[:, None]], dim=1)


def widened(acts: torch.Tensor, width: int = 40) -> torch.Tensor:
    """`acts` with zero coordinates up to `width`: features that never fire, so that the basis's
    L0 is below 10 % of its width, as the quality targets ask."""
    return torch.cat([acts, torch.zeros(len(acts), width - acts.shape[1])], dim=1)


def compare(fp: torch.Tensor, quant: torch.Tensor, tokens: torch.Tensor, **kw):
    """compare_features of the identity SAE on tagged, widened rows."""
    fp, quant = widened(tagged(fp)), widened(tagged(quant))
    return features.compare_features(identity_sae(fp.shape[1]), fp, quant, tokens, **kw)


def sparse(n: int, d: int, seed: int, scale=None) -> torch.Tensor:
    """Non-negative activations, each coordinate active on about 30 % of the rows."""
    g = gen(seed)
    acts = torch.rand(n, d, generator=g) * (torch.rand(n, d, generator=g) < 0.3)
    return acts * (scale if scale is not None else 1.0)


def ids(n: int) -> torch.Tensor:
    return torch.arange(n)  # every position its own token: the study's rule reads as positions


def np_top(column: np.ndarray, k: int) -> list[int]:
    """The k largest active positions, stable (ties to the earlier one), as numpy sorts them."""
    order = np.argsort(-column, kind="stable")
    return order[: min(k, int((column > 0).sum()))].tolist()


def test_identical_is_perfect_under_both_rules():
    acts = sparse(200, 4, 0, torch.tensor([1.0, 4.0, 2.0, 3.0]))
    result = compare(acts, acts.clone(), ids(200))
    assert result.features == (1, 3, 2, 0)  # by FP mean activation
    assert result.positions == (1.0,) * 4 and result.token_overlap == (1.0,) * 4
    assert result.survival_by("positions") == result.survival_by("study") == 1.0
    assert result.pearson == pytest.approx((1.0,) * 4) and result.recall == (1.0,) * 4
    assert result.fp.fve == pytest.approx(1.0) and result.n_dense == 0
    # 4 of 4 cannot show a rate >= 0.8 (Wilson [0.51, 1]): borderline, which passes by default
    (failure,) = result.failures(GATED)
    assert failure.borderline and "survival 1 [0.5101, 1] straddles 0.8" in failure
    baseline = result.as_baseline()
    assert_baseline_json(baseline)
    assert list(baseline["features"]) == ["F1", "F3", "F2", "F0"]


def test_a_scrambled_feature_is_lost_under_both_rules_and_named():
    fp = sparse(200, 4, 1, torch.tensor([1.0, 4.0, 2.0, 3.0]))
    quant = fp.clone()
    quant[:, 2] = fp[:, 2].flip(0)  # feature 2 fires at mirrored positions
    result = compare(fp, quant, ids(200))
    x, y = fp[:, 2].numpy(), quant[:, 2].numpy()
    fp_top = np_top(x, 10)
    rank = result.features.index(2)
    assert result.positions[rank] == len(set(fp_top) & set(np_top(y, 20))) / 10 < 0.8
    assert result.token_overlap[rank] == len(set(fp_top) & set(np_top(y, 10))) / 10 < 0.8
    assert result.pearson[rank] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
    assert result.survival == 0.75
    # 3 of 4 features cannot say whether the rate is below 0.8: Wilson [0.30, 0.95]
    (failure,) = result.failures(GATED)
    assert failure.criterion == "min_feature_survival" and failure.borderline
    assert str(failure).startswith("borderline: SAE feature survival 0.75 [0.3006, 0.9544] straddles 0.8 (3/4 keep "
                                   ">= 80% of their top-10 positions within the top 20; Wilson interval over the 4 "
                                   "features); lost F2 (")


def test_survival_fails_when_its_wilson_interval_is_below_the_cut():
    fp = sparse(200, 4, 1, torch.tensor([1.0, 4.0, 2.0, 3.0]))
    result = compare(fp, fp.flip(0), ids(200))                 # every feature fires at mirrored positions
    assert result.survival == 0.0 and result.survival_ci_by("positions").high < 0.8
    (failure,) = result.failures(GATED)
    assert not failure.borderline and str(failure).startswith("SAE feature survival 0 [0, 0.4899] < 0.8 (0/4")
    wilson = result.intervals()
    assert wilson["summary"]["survival"] == [0.0, pytest.approx(0.4899, abs=1e-4)]
    assert wilson["summary"]["n_survived"] == [0.0, pytest.approx(4 * 0.4899, abs=1e-3)]
    for i, f in enumerate(result.features):                    # a share over its n_top positions
        low, high = wilson["features"][features.feature_key(f)]["positions"]
        assert low <= result.positions[i] <= high and high - low > 0.2


def test_the_positions_rule_keeps_a_top_position_still_within_rank_20():
    """Ranks 9-10 swap with ranks 11-12 (a plateau reordered): kept by positions; displaced
    beyond rank 20: lost."""
    fp = torch.zeros(60, 1)
    fp[:30, 0] = torch.linspace(3.0, 1.0, 30)      # positions 0..29 are ranks 0..29
    kept = fp.clone()
    kept[[8, 9], 0], kept[[10, 11], 0] = fp[[10, 11], 0], fp[[8, 9], 0]
    result = compare(fp, kept, ids(60))
    assert result.positions == (1.0,) and result.token_overlap == (0.8,)   # 2 of its 10 ids left the top 10
    displaced = fp.clone()
    displaced[[7, 8, 9], 0] = 0.5                  # ranks 7-9 fall below rank 29
    result = compare(fp, displaced, ids(60))
    assert result.positions == (0.7,) and result.survival == 0.0


def test_the_study_rule_compares_token_ids_not_positions():
    """A feature that moves to other positions holding the same tokens survives the study's rule
    and not the positions rule; the study's denominator is the number of distinct FP ids."""
    fp = torch.zeros(60, 1)
    fp[:10, 0] = torch.linspace(3.0, 2.0, 10)
    quant = torch.zeros(60, 1)
    quant[30:40, 0] = torch.linspace(3.0, 2.0, 10)
    tokens = torch.cat([torch.arange(10), torch.arange(20) + 100, torch.arange(10), torch.arange(20) + 200])
    result = compare(fp, quant, tokens)
    assert result.positions == (0.0,) and result.token_overlap == (1.0,)
    study = Thresholds().updated({"feature_survival_rule": "study"}, source="test")
    assert all(f.borderline for f in compare(fp, quant, tokens, rule="study").failures(study))  # 1/1: undecided
    tokens = torch.cat([torch.full((10,), 7), torch.arange(50) + 100])   # FP top 10 all token 7
    result = compare(fp, quant, tokens)
    assert result.token_overlap == (0.0,)          # |{7} ∩ {130..139}| / |{7}|


def test_a_feature_active_on_fewer_than_10_positions_is_followed_on_those():
    fp = torch.zeros(50, 1)
    fp[[3, 7, 11], 0] = torch.tensor([1.0, 2.0, 3.0])
    quant = fp.clone()
    quant[3, 0] = 0.0
    quant[20, 0] = 5.0
    result = compare(fp, quant, ids(50))
    assert result.n_top == (3,)
    assert result.positions == (pytest.approx(2 / 3),)   # 3 is inactive under quant: out of any top
    assert result.token_overlap == (pytest.approx(2 / 3),)   # quant top 3: 20, 11, 7
    assert result.recall == (pytest.approx(2 / 3),)


def test_dense_features_are_left_out_of_the_ranking_and_counted():
    g = gen(5)
    fp = torch.cat([torch.rand(100, 1, generator=g) + 5.0, sparse(100, 2, 6)], dim=1)  # feature 0 always on
    result = compare(fp, fp.clone(), ids(100))
    assert 0 not in result.features and result.n_dense == 1 and result.n_alive == 3
    assert result.as_baseline()["summary"]["n_dense"] == 1
    with pytest.raises(ValueError, match="every SAE feature active under FP is dense"):
        compare(fp[:, :1], fp[:, :1], ids(100))


def test_dead_and_killed_features():
    fp = sparse(100, 3, 2)
    fp[:, 0] = 0.0                 # feature 0 never fires under FP
    quant = fp.clone()
    quant[:, 1] = 0.0              # feature 1 is killed by quantization
    result = compare(fp, quant, ids(100))
    assert set(result.features) == {1, 2} and result.n_alive == 2
    rank = result.features.index(1)
    assert result.pearson[rank] == 0.0 and result.recall[rank] == 0.0 and result.positions[rank] == 0.0
    assert result.activation_recall == pytest.approx(int((fp[:, 2] > 0).sum()) / int((fp[:, 1:] > 0).sum()))


def test_repeated_contexts_are_counted_once():
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    assert features.distinct_rows(rows).tolist() == [0, 1, 3]
    # 12 prompts share a BOS residual on which feature 0 fires hardest: counted once
    fp = torch.cat([torch.full((12, 3), 5.0), tagged(sparse(60, 2, 4))])
    result = features.compare_features(identity_sae(3), fp, fp.clone(), ids(72))
    assert result.n_positions == 61 and result.survival == 1.0


def test_a_basis_that_misses_its_targets_fails_the_precondition():
    sae = identity_sae(4)
    with torch.no_grad():
        sae.W_dec.zero_()          # reconstructs nothing: FVE < 0
    acts = sparse(50, 4, 3)
    (failure,) = features.compare_features(sae, acts, acts.clone(), ids(50)).failures(GATED)
    assert failure.criterion == "sae_basis_quality"
    assert "fraction of variance explained" in failure and "--qcheck-sae" in failure


def test_the_judged_rule_must_be_the_thresholds_rule():
    acts = sparse(50, 2, 3)
    result = compare(acts, acts.clone(), ids(50), rule="study")
    with pytest.raises(ValueError, match="judged by rule 'study'"):
        result.failures(GATED)
    with pytest.raises(ValueError, match="rule 'nope'"):
        compare(acts, acts, ids(50), rule="nope")


def test_feature_acts_reads_the_sae_hook_on_real_tokens():
    fp = make_capture()
    got = features.feature_acts(fp, "blocks.1.hook_resid_post")
    assert torch.equal(got, fp.acts["blocks.1.hook_resid_post"][fp.mask])
    assert got.shape == (sum(LENGTHS), D_MODEL)
    # resid_pre of block 1 is resid_post of block 0
    assert torch.equal(features.feature_acts(fp, "blocks.1.hook_resid_pre"), fp.acts["blocks.0.hook_resid_post"][fp.mask])
    assert torch.equal(features.feature_acts(fp, "blocks.0.hook_mlp_out"), fp.acts["blocks.0.hook_mlp_out"][fp.mask])


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", f"blocks.{N_LAYERS}.hook_resid_post",
                                  "blocks.1.hook_resid_mid", "blocks.1.attn.hook_z", "hook_embed"])
def test_hooks_qcheck_does_not_capture_are_refused_by_name(hook):
    with pytest.raises(ValueError, match="is not one qcheck captures"):
        features.capture_key(hook, N_LAYERS)


def test_compare_feature_captures_uses_the_captures_token_ids():
    fp = make_capture()
    quant = make_capture(seed=1)
    quant = type(fp)(tokens=fp.tokens, mask=fp.mask, logits=None, acts=quant.acts)
    sae = identity_sae(D_MODEL, hook="blocks.1.hook_resid_post")
    result = features.compare_feature_captures(sae, fp, quant)
    direct = features.compare_features(sae, fp.acts["blocks.1.hook_resid_post"][fp.mask],
                                       quant.acts["blocks.1.hook_resid_post"][fp.mask], fp.tokens[fp.mask])
    assert result == direct


def reference_shares(h_fp: np.ndarray, h_q: np.ndarray, tokens: np.ndarray, k: int = 10, slack: int = 2):
    """Both rules' shares feature by feature, the way the rules are written down (numpy)."""
    positions, overlap, n_ids = [], [], []
    for f in range(h_fp.shape[1]):
        fp_top = np_top(h_fp[:, f], k)
        within = np_top(h_q[:, f], slack * len(fp_top))
        positions.append(sum(p in within for p in fp_top) / len(fp_top))
        fp_ids, q_ids = set(tokens[fp_top].tolist()), set(tokens[np_top(h_q[:, f], len(fp_top))].tolist())
        overlap.append(len(fp_ids & q_ids) / len(fp_ids))
        n_ids.append(len(fp_ids))
    return positions, overlap, n_ids


def test_top_shares_is_the_rules_feature_by_feature_ties_and_repeated_ids_included():
    from qcheck.analyses.feature_intervals import top_shares

    g = gen(5)
    # quantized values on a coarse grid (plateaus: ties), few token ids (repeats), some features
    # active on fewer than 10 positions
    h_fp = torch.rand(120, 12, generator=g) * (torch.rand(120, 12, generator=g) < torch.linspace(0.04, 0.5, 12))
    h_q = torch.round(h_fp * (0.3 + 1.4 * torch.rand(120, 12, generator=g)) * 4) / 4
    tokens = torch.randint(0, 15, (120,), generator=g)
    positions, overlap, n_top, n_ids = top_shares(h_fp, h_q, tokens, k=10, slack=2)
    ref_positions, ref_overlap, ref_ids = reference_shares(h_fp.numpy(), h_q.numpy(), tokens.numpy())
    assert positions.tolist() == pytest.approx(ref_positions) and overlap.tolist() == pytest.approx(ref_overlap)
    assert n_ids.tolist() == ref_ids and min(ref_ids) < min(n_top.tolist())     # repeated ids counted once
    assert n_top.tolist() == [min(10, int(c)) for c in (h_fp > 0).sum(dim=0)]
    assert min(n_top.tolist()) < 10 and min(ref_positions) < 1 and min(ref_overlap) < 1   # not vacuous


def prompts_of(n: int, n_prompts: int) -> torch.Tensor:
    return torch.arange(n) * n_prompts // n      # consecutive blocks of positions, one per prompt


def test_the_smooth_values_have_prompt_bootstrap_bounds_and_the_top_k_shares_none():
    fp = sparse(200, 4, 2, torch.tensor([1.0, 4.0, 2.0, 3.0]))
    quant = fp * (1 + 0.3 * torch.rand(fp.shape, generator=gen(3)))
    result = compare(fp, quant, ids(200), prompt_ids=prompts_of(200, 20))
    again = compare(fp, quant, ids(200), prompt_ids=prompts_of(200, 20))
    assert result.intervals() == again.intervals()               # seeded
    intervals = result.intervals()
    assert set(intervals["summary"]) == {"mean_pearson_top", "mean_pearson_alive", "activation_recall",
                                         "fve_fp", "fve_quant", "l0_fp", "l0_quant", "n_alive", "n_dense",
                                         "dead_fraction_fp", "survival", "survival_positions", "survival_study",
                                         "n_survived"}
    summary = result.as_baseline()["summary"]
    for key, (low, high) in intervals["summary"].items():
        assert low <= summary[key] <= high, key
    assert all(intervals["summary"][key][0] < intervals["summary"][key][1] for key in ("mean_pearson_alive", "fve_quant"))
    for i, f in enumerate(result.features):
        bounds = intervals["features"][features.feature_key(f)]
        assert set(bounds) == {"fp_mean", "quant_mean", "pearson", "recall", "positions", "token_overlap"}
        assert bounds["fp_mean"][0] <= result.fp_mean[i] <= bounds["fp_mean"][1]
        assert bounds["recall"] == [1.0, 1.0]                    # quantization scaled, never silenced
    bare = compare(fp, quant, ids(200)).intervals()             # no prompts: no bootstrap, Wilson still
    assert "seed" not in bare and set(bare["summary"]) == {"survival", "survival_positions", "survival_study",
                                                           "n_survived", "dead_fraction_fp", "n_alive"}


def test_the_bounds_are_those_of_resampling_the_prompts_by_hand():
    from qcheck import metrics
    from qcheck.analyses.feature_intervals import prompt_counts

    fp = sparse(120, 3, 4, torch.tensor([1.0, 3.0, 2.0]))
    quant = fp + 0.2 * torch.rand(fp.shape, generator=gen(6)) * (fp > 0)
    prompts = prompts_of(120, 12)
    result = compare(fp, quant, ids(120), prompt_ids=prompts)
    f = result.features[0]
    means, rs = [], []
    for row in prompt_counts(12, seed=metrics.BOOTSTRAP_SEED, n_resamples=metrics.N_RESAMPLES):
        rows = torch.repeat_interleave(torch.arange(120), torch.from_numpy(row)[prompts])
        means.append(float(fp[rows, f].double().mean()))
        rs.append(float(metrics.pearson(fp[rows, f].double(), quant[rows, f].double())))
    bounds = result.intervals()["features"][features.feature_key(f)]
    assert bounds["fp_mean"] == pytest.approx(np.percentile(means, [2.5, 97.5]).tolist(), rel=1e-9)
    assert bounds["pearson"] == pytest.approx(np.percentile(rs, [2.5, 97.5]).tolist(), rel=1e-6)
